"""DiffusionCodecSimulator / CodecAwareS3Diff on a tiny random SD-Turbo-layout folder (same code path as the
full model: the components' real from_pretrained)."""
import copy
import json
import os

import pytest
import torch
from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from vrpsr_plugin.archs.diffusion_simulator_arch import DiffusionCodecSimulator
from vrpsr_plugin.archs.one_step_diffusion import TRAINABLE_FILE
from vrpsr_plugin.archs.s3diff_arch import CodecAwareS3Diff
from vrpsr_plugin.archs.tiny_sd import CONFIGS, build_sd_folder
from vrpsr_plugin.codecs.condition import CodecCondition

OPTS = dict(lora_rank=4, lora_rank_vae=4, film_hidden=32)


@pytest.fixture(scope='module')
def sd_path(tmp_path_factory):
    return build_sd_folder(str(tmp_path_factory.mktemp('tiny_sd')), 'tiny', seed=0)


@pytest.fixture(scope='module')
def sim(sd_path):
    torch.manual_seed(0)
    return DiffusionCodecSimulator(sd_path, **OPTS).eval()


@pytest.fixture
def image(photo):
    """Two real 32x32 crops in [0, 1]."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    return torch.stack([x[:, :32, :32], x[:, 64:96, 40:72]])


@pytest.fixture
def small(image):
    """Two real 16x16 crops: gradient tests stay cheap on a CPU."""
    return image[..., 8:24, 8:24].contiguous()


COND = CodecCondition.collate([CodecCondition('libx264', 0.3), CodecCondition('libvvenc', 0.12)])


def perturb_trainable(model, seed=1, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def test_tiny_folder_reloads_through_from_pretrained(sd_path, sim):
    for sub in ('scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae'):
        assert os.path.isdir(os.path.join(sd_path, sub)), sub
    unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder='unet')
    assert tuple(unet.config.block_out_channels) == CONFIGS['tiny']['unet']['block_out_channels']
    assert torch.equal(unet.conv_in.weight, sim.unet.conv_in.weight)
    tokenizer = CLIPTokenizer.from_pretrained(sd_path, subfolder='tokenizer')
    ids = tokenizer(['A libx265 0.2500 bpp compressed image.']).input_ids[0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert 'libx265' in tokenizer.decode(ids).replace(' ', '')


def test_forward_backward_reaches_lora_film_and_input(sd_path, small):
    torch.manual_seed(0)
    model = DiffusionCodecSimulator(sd_path, **OPTS).train()
    x = small.clone().requires_grad_(True)
    y = model(x, COND)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    (y - small.flip(-1)).abs().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == {n for n, _ in model.named_parameters() if model.is_trainable_key(n)}
    for part in ('unet.', 'vae.encoder.'):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part) and 'lora_B' in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith('film_heads.'))
    assert grads['time_head.weight'].abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not model.is_trainable_key(n))


def test_frozen_simulator_still_passes_gradients_to_input(sim, small):
    sim.requires_grad_(False)
    x = small.clone().requires_grad_(True)
    sim(x, COND).mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in sim.parameters())
    sim.requires_grad_(True)  # re-enables the trainable part only; the base stays frozen
    assert {n for n, p in sim.named_parameters() if p.requires_grad} == \
        {n for n, _ in sim.named_parameters() if sim.is_trainable_key(n)}
    sim.requires_grad_(False)


def test_zero_init_equals_plain_one_step_pipeline(sd_path, sim, image):
    """LoRA B = 0 and zero FiLM/time heads: the model is exactly SD-Turbo's one step on the same components."""
    vae = AutoencoderKL.from_pretrained(sd_path, subfolder='vae')
    unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder='unet')
    text_encoder = CLIPTextModel.from_pretrained(sd_path, subfolder='text_encoder')
    tokenizer = CLIPTokenizer.from_pretrained(sd_path, subfolder='tokenizer')
    alpha = DDPMScheduler.from_pretrained(sd_path, subfolder='scheduler').alphas_cumprod[999]
    prompts = [c.prompt() for c in (CodecCondition('libx264', 0.3), CodecCondition('libvvenc', 0.12))]
    with torch.no_grad():
        ids = tokenizer(prompts, padding='max_length', max_length=77, truncation=True, return_tensors='pt').input_ids
        latent = vae.encode(image * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        eps = unet(latent, 999, encoder_hidden_states=text_encoder(ids)[0]).sample
        x0 = (latent - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        decoded = (vae.decode(x0 / vae.config.scaling_factor).sample + 1) / 2
        ref = decoded.clamp(0, 1)
        out = sim(image, COND)
    assert ((decoded > 0.01) & (decoded < 0.99)).float().mean() > 0.2  # the comparison is not all-saturated
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    changed = copy.deepcopy(sim)
    perturb_trainable(changed)
    with torch.no_grad():
        assert (changed(image, COND) - ref).abs().max() > 1e-3
        other = COND.clone()
        other[:, -1] = torch.tensor([1.5, 0.9])
        assert (changed(image, COND) - changed(image, other)).abs().max() > 1e-4  # bpp reaches FiLM


def test_trainable_part_saves_and_loads_exactly(sd_path, sim, small, tmp_path):
    model = copy.deepcopy(sim)
    perturb_trainable(model, seed=3)
    model.save_pretrained(str(tmp_path / 'ckpt'))
    saved = load_file(str(tmp_path / 'ckpt' / TRAINABLE_FILE))
    assert set(saved) == set(model.state_dict()) and all(model.is_trainable_key(k) for k in saved)
    assert not any(k in model._base_keys for k in saved)
    trainable_bytes = sum(v.numel() * v.element_size() for v in saved.values())
    assert os.path.getsize(tmp_path / 'ckpt' / TRAINABLE_FILE) < trainable_bytes + 64 * 1024
    base_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n in model._base_keys)
    assert trainable_bytes < base_bytes / 4
    loaded = DiffusionCodecSimulator.from_pretrained(str(tmp_path / 'ckpt')).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(small, COND), model(small, COND), atol=1e-5, rtol=0)


def test_loading_is_strict(sim):
    state = sim.state_dict()
    model = copy.deepcopy(sim)
    with pytest.raises(RuntimeError, match='Missing key'):
        model.load_state_dict({k: v for k, v in list(state.items())[1:]})
    with pytest.raises(RuntimeError, match='Unexpected key'):
        model.load_state_dict({**state, 'film_heads.nope.weight': torch.zeros(1)})
    base_key = "unet.conv_out.base_layer.weight"
    with pytest.raises(RuntimeError, match='Unexpected key.*conv_out.base_layer'):
        model.load_state_dict({**state, base_key: model.unet.conv_out.base_layer.weight.detach()})
    parent = torch.nn.ModuleDict({'sim': model})  # nested: the parent's strict load sees the trainable part only
    parent.load_state_dict({f'sim.{k}': v for k, v in state.items()})
    assert set(parent.state_dict()) == {f'sim.{k}' for k in state}


def test_prompt_and_condition_errors(sim, small):
    with pytest.raises(ValueError, match='disagrees'):
        sim(small, COND, prompts=['A libx265 0.3000 bpp compressed small.', CodecCondition('libvvenc', 0.12).prompt()])
    with pytest.raises(ValueError, match='disagrees'):
        sim(small, COND, prompts=['A libx264 0.5 bpp compressed small.', CodecCondition('libvvenc', 0.12).prompt()])
    with pytest.raises(ValueError, match='list of 2'):
        sim(small, COND, prompts=['A libx264 0.3 bpp compressed small.'])
    with pytest.raises(ValueError, match='B x 4'):
        sim(small, COND[:, :3])
    with pytest.raises(ValueError, match='batch sizes'):
        sim(small, COND[:1])
    with pytest.raises(ValueError, match='B x 3 x H x W'):
        sim(small[:, :1], COND)
    with torch.no_grad():  # other wording that names the same codec and rate is accepted
        custom = sim(small, COND, prompts=['A libx264 0.3 bpp compressed photo.', 'A libvvenc 0.12 bpp small.'])
        assert custom.shape == small.shape


def test_prompt_embeddings_are_cached(sim):
    sim._prompt_cache.clear()
    first = sim.encode_prompts(['A libx264 0.3000 bpp compressed image.'] * 2)
    assert len(sim._prompt_cache) == 1
    assert torch.equal(first[0], first[1])
    assert torch.equal(sim.encode_prompts(['A libx264 0.3000 bpp compressed image.'])[0], first[0])


def test_prompt_cache_is_a_bounded_cpu_lru_with_stats(sd_path):
    """The cache holds at most prompt_cache_size standalone CPU tensors (never the accelerator's memory, never a
    view of a whole batch), evicts the least recently used prompt and counts hits/misses; cached and fresh
    embeddings agree."""
    model = DiffusionCodecSimulator(sd_path, prompt_cache_size=2, **OPTS)
    prompts = [CodecCondition('libx264', b).prompt() for b in (0.1, 0.2, 0.3)]
    fresh = model.encode_prompts(prompts[:2] + prompts[:1])
    assert model.prompt_cache_stats == {'hits': 0, 'misses': 2}
    model.encode_prompts(prompts[2:])  # evicts prompts[0]
    assert list(model._prompt_cache) == prompts[1:]
    again = model.encode_prompts(prompts[1:2])
    assert model.prompt_cache_stats == {'hits': 1, 'misses': 3}
    torch.testing.assert_close(again[0], fresh[1])
    for emb in model._prompt_cache.values():
        assert emb.device.type == 'cpu' and emb.untyped_storage().nbytes() == emb.numel() * emb.element_size()


def test_tiles_reproduce_untiled_regions(sd_path, photo):
    torch.manual_seed(0)
    tiled = DiffusionCodecSimulator(sd_path, tile_size=32, tile_overlap=8, **OPTS).eval()
    x = (torch.from_numpy(photo[:40, :48]).permute(2, 0, 1).float() / 255)[None]
    cond = COND[:1]
    with torch.no_grad():
        out = tiled(x, cond)
        first_tile = tiled._one_step(x[..., :32, :32], cond, tiled.encode_prompts(tiled.prompts_for(cond)))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # tiles start at rows (0, 8) and columns (0, 16): the top-left 8 x 16 pixels come from the first tile only
    torch.testing.assert_close(out[..., :8, :16], first_tile[..., :8, :16])
    assert (out[..., 8:32, 16:32] - first_tile[..., 8:, 16:]).abs().max() > 1e-4  # blended with neighbours


def test_gradient_checkpointing_keeps_gradients(sd_path, small):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = DiffusionCodecSimulator(sd_path, gradient_checkpointing=checkpointing, **OPTS).train()
        perturb_trainable(model)
        x = small[:1].clone().requires_grad_(True)
        model(x, COND[:1]).mean().backward()
        grads.append((x.grad, model.film_heads['down_blocks_0_resnets_0'].weight.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize('frozen', [True, False])
def test_gradient_checkpointing_with_interleaved_conditions(sd_path, small, frozen):
    """Stage 2 runs f(X', c), then f(X, c') for the target, then backward: blocks recomputed during backward must
    read c (the FiLM parameters of their own call), not the c' of the last call (frozen simulator or trained)."""
    other = CodecCondition.collate([CodecCondition('libx265', 1.7), CodecCondition('libx264', 0.02)])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = DiffusionCodecSimulator(sd_path, gradient_checkpointing=checkpointing, **OPTS).train()
        perturb_trainable(model, scale=0.5)
        model.requires_grad_(not frozen)
        x = small.clone().requires_grad_(True)
        y = model(x, COND)
        with torch.no_grad():
            model(small.flip(-1), other)
        y.square().mean().backward()
        grads.append([x.grad] + ([] if frozen else [model.film_heads['up_blocks_1_resnets_0'].weight.grad]))
    for got, want in zip(grads[1], grads[0]):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_one_step_x0_is_computed_in_fp32_under_bf16(sd_path, small):
    """x0 = (z - sqrt(1 - a) eps) / sqrt(a) amplifies eps ~15x at t=999: from the bf16 UNet output it must be
    computed in fp32, so the decoder gets x0 to bf16 rounding (2^-8), not to bf16 arithmetic on a cancellation."""
    torch.manual_seed(0)
    model = DiffusionCodecSimulator(sd_path, autocast_dtype='bf16', **OPTS).eval()
    seen = {}

    def keep(name, value):
        seen[name] = value  # returns None: the hooks change nothing
    model.unet.register_forward_pre_hook(lambda m, args: keep('latent', args[0]))
    model.unet.register_forward_hook(lambda m, args, out: keep('eps', out.sample))
    model.vae.post_quant_conv.register_forward_pre_hook(lambda m, args: keep('x0', args[0]))
    with torch.no_grad():
        model(small, COND)
    assert seen['eps'].dtype == torch.bfloat16
    alpha = model.scheduler.alphas_cumprod[model.timestep].double()
    ref = (seen['latent'].double() - (1 - alpha).sqrt() * seen['eps'].double()) / alpha.sqrt()
    ref = ref / model.vae.config.scaling_factor
    err = (seen['x0'].double() - ref).abs() / ref.abs().clamp_min(1e-2)
    assert err.max() <= 2 ** -8


def training_opt(sd_path, **network):
    """A CodecSimulatorModel option dict around the tiny diffusion simulator (no data, no discriminator)."""
    return {'model_type': 'CodecSimulatorModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
            'world_size': 1, 'scale': 1, 'path': {'pretrain_network_g': None},
            'network_g': {'type': 'DiffusionCodecSimulator', 'pretrained_model_name_or_path': sd_path,
                          **OPTS, **network},
            'train': {'ema_decay': 0.9, 'optim_g': {'type': 'AdamW', 'lr': 1e-3},
                      'scheduler': {'type': 'constant', 'total_steps': 10},
                      'perceptual_opt': {'type': 'VRPSRPerceptualLoss', 'gan_weight': 0, 'mse_only': True,
                                         'lpips_pretrained_backbone': False}},
            'logger': {}}


def test_fp16_training_scales_the_loss_and_skips_overflowing_steps(sd_path, small, tmp_path):
    """fp16 needs a GradScaler: a step whose gradients overflow is skipped (weights stay finite and unchanged)
    and the scale is lowered; bf16/fp32 training gets a disabled (no-op) scaler."""
    from basicsr.models import build_model
    torch.manual_seed(0)
    model = build_model(training_opt(sd_path, autocast_dtype='fp16'))
    assert model.grad_scaler.is_enabled()
    model.net_g.autocast_dtype = torch.bfloat16
    model.setup_grad_scaler([model.net_g], model.device)
    assert not model.grad_scaler.is_enabled()
    model.net_g.autocast_dtype = torch.float16
    model.setup_grad_scaler([model.net_g], model.device)
    batch = {'gt': small, 'cond': COND, 'codec_out': small.flip(-1)}
    model.feed_data(batch)
    model.optimize_parameters(1)  # a normal step
    scale = model.grad_scaler.get_scale()
    lora = next(p for n, p in model.net_g.named_parameters() if 'lora_B' in n)
    before = lora.detach().clone()
    lora.register_hook(lambda grad: torch.full_like(grad, float('inf')))
    model.feed_data(batch)
    model.optimize_parameters(2)
    assert torch.equal(lora.detach(), before)
    assert model.grad_scaler.get_scale() < scale
    # the loss scale is part of the training state: a resumed fp16 run continues with it
    from vrpsr_plugin import basicsr_fixes
    basicsr_fixes.apply()
    model.opt['path']['training_states'] = str(tmp_path)
    model.save_training_state(0, 2)
    resumed = build_model(training_opt(sd_path, autocast_dtype='fp16'))
    resumed.resume_training(torch.load(tmp_path / '2.state', weights_only=False))
    assert resumed.grad_scaler.get_scale() == model.grad_scaler.get_scale() < 65536.0


def test_ema_copies_only_what_trains(sd_path, small):
    """net_g_ema shares the frozen SD base with net_g (no second copy) and averages the LoRA/FiLM weights only."""
    from basicsr.models import build_model
    torch.manual_seed(0)
    model = build_model(training_opt(sd_path))
    net, ema = model.net_g, model.net_g_ema
    own = {n: p for n, p in net.named_parameters()}
    for name, param in ema.named_parameters():
        assert (param is own[name]) == (not net.is_trainable_key(name)), name
        assert not param.requires_grad or param is own[name]
    extra = sum(p.numel() for p in ema.parameters() if all(p is not q for q in net.parameters()))
    assert extra == sum(p.numel() for p in net.trainable_parameters())
    with torch.no_grad():
        torch.testing.assert_close(ema(small, COND), net.eval()(small, COND))
    net.train()
    before = {n: p.detach().clone() for n, p in ema.named_parameters() if net.is_trainable_key(n)}
    model.feed_data({'gt': small, 'cond': COND, 'codec_out': small.flip(-1)})
    model.optimize_parameters(1)
    for name, old in before.items():  # ema = 0.9 ema + 0.1 param
        torch.testing.assert_close(dict(ema.named_parameters())[name], 0.9 * old + 0.1 * own[name].detach())
    assert any(not torch.equal(before[n], own[n]) for n in before)


def test_basicsr_build_save_load_round_trip(sd_path, small, tmp_path):
    opt = {'type': 'DiffusionCodecSimulator', 'pretrained_model_name_or_path': sd_path, **OPTS}
    torch.manual_seed(0)
    net = build_network(dict(opt))
    perturb_trainable(net, seed=5)
    model = BaseModel({'num_gpu': 0, 'is_train': False, 'dist': False, 'path': {'models': str(tmp_path)}})
    model.save_network(net, 'net_g', 7)
    path = tmp_path / 'net_g_7.pth'
    saved = torch.load(path, weights_only=True)['params']
    assert set(saved) == set(net.state_dict())
    torch.manual_seed(1)
    fresh = build_network(dict(opt))
    model.load_network(fresh, str(path), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(small, COND), net.eval()(small, COND), atol=1e-5, rtol=0)


@pytest.mark.parametrize('route', ['training_pth', 'safetensors', 'save_pretrained_file'])
def test_trained_checkpoint_rebuilds_without_an_option_file(sd_path, small, tmp_path, route):
    """A LoRA/FiLM-only checkpoint carries its arch spec (base path, ranks, codecs...): a training checkpoint
    (BasicSR save_network), a save_model .safetensors (JSON metadata) and save_pretrained's trainable file all load
    with inference.load_model alone, strictly."""
    from vrpsr_plugin import basicsr_fixes
    from vrpsr_plugin.inference import load_model, save_model
    torch.manual_seed(0)
    net = CodecAwareS3Diff(sd_path, scale=2, lora_alpha=8, **OPTS)
    perturb_trainable(net, seed=3)
    if route == 'training_pth':
        basicsr_fixes.apply()
        model = BaseModel({'num_gpu': 0, 'is_train': False, 'dist': False, 'path': {'models': str(tmp_path)}})
        model.save_network([net, net], 'net_g', 5, param_key=['params', 'params_ema'])
        path = tmp_path / 'net_g_5.pth'
    elif route == 'safetensors':
        save_model(net, str(tmp_path / 'net.safetensors'))
        path = tmp_path / 'net.safetensors'
    else:
        net.save_pretrained(str(tmp_path / 'dir'))
        path = tmp_path / 'dir' / TRAINABLE_FILE
    loaded = load_model(str(path))
    assert type(loaded) is CodecAwareS3Diff and loaded.config == net.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(small[..., :8, :8], COND), net.eval()(small[..., :8, :8], COND))
    if route == 'safetensors':  # strict: a foreign key is an error naming it
        from safetensors.torch import load_file, save_file
        from vrpsr_plugin.inference import stored_arch_spec
        state = {**load_file(str(path)), 'unet.extra.lora_A.weight': torch.zeros(1)}
        save_file(state, str(path), metadata={'arch': json.dumps(stored_arch_spec(str(path), None))})
        with pytest.raises(RuntimeError, match=r'unexpected \(1\): unet\.extra\.lora_A\.weight'):
            load_model(str(path))


def test_s3diff_backbone_upsamples_and_is_conditioned(sd_path, small):
    torch.manual_seed(0)
    net = build_network({'type': 'CodecAwareS3Diff', 'pretrained_model_name_or_path': sd_path, 'scale': 2, **OPTS})
    assert isinstance(net, CodecAwareS3Diff) and net.codec_aware
    lq = small[..., :8, :8].clone().requires_grad_(True)
    out = net.train()(lq, COND)
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    out.mean().backward()
    assert lq.grad.abs().sum() > 0 and net.time_head.weight.grad.abs().sum() > 0
