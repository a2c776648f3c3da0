"""S3Diff's degradation-guided LoRA, its released checkpoint layout and its degradation estimator (de_net.pth),
on tiny files written in those layouts (tiny random SD-Turbo-layout base; same peft adapters and key names as
S3Diff's save_model; DEResNet's key names as S3Diff's src/de_net.py builds them)."""
import basicsr  # noqa: F401  (first: applies the torchvision compat before diffusers imports it)
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from tests.conftest import REPO
from vrpsr_plugin.archs.checkpoint import CheckpointError
from vrpsr_plugin.archs.degradation_estimator_arch import DegradationEstimator
from vrpsr_plugin.archs.one_step_diffusion import UNET_LORA_TARGETS, VAE_LORA_TARGETS
from vrpsr_plugin.archs.s3diff_arch import CodecAwareS3Diff
from vrpsr_plugin.archs.tiny_sd import build_sd_folder
from vrpsr_plugin.codecs.condition import CodecCondition

COND = CodecCondition.collate([CodecCondition('libx264', 0.3), CodecCondition('libvvenc', 0.12)])
RANK = 4
# S3Diff's DEResNet defaults (its released de_net.pth) and a tiny variant with both kinds of stage transition
DEFAULT = dict(num_feats=(64, 64, 64, 128), num_blocks=(2, 2, 2, 2), downscales=(1, 1, 2, 1))
TINY = dict(num_feats=(4, 8, 8), num_blocks=(1, 1, 1), downscales=(1, 2, 1))


@pytest.fixture(scope='module')
def sd_path(tmp_path_factory):
    return build_sd_folder(str(tmp_path_factory.mktemp('tiny_sd')), 'tiny', seed=0)


def deresnet_state(num_feats, num_blocks, downscales, num_in_ch=3, num_degradation=2, seed=0):
    """A state dict named as S3Diff's DEResNet names it: per branch i, ``conv_first.i``; ``body.i.j`` counting
    every stage's ResidualBlockNoBNs (``conv1``/``conv2``), then a conv where the stage downscales or the width
    changes before the next stage; ``fc_degree.i.0`` (-> 512) and ``fc_degree.i.2`` (-> 1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def layer(name, *shape):
        state[f'{name}.weight'] = torch.randn(shape, generator=gen) * 0.05
        state[f'{name}.bias'] = torch.randn(shape[0], generator=gen) * 0.05

    last = len(num_feats) - 1
    for i in range(num_degradation):
        layer(f'conv_first.{i}', num_feats[0], num_in_ch, 3, 3)
        j = 0
        for stage in range(last + 1):
            for _ in range(num_blocks[stage]):
                layer(f'body.{i}.{j}.conv1', num_feats[stage], num_feats[stage], 3, 3)
                layer(f'body.{i}.{j}.conv2', num_feats[stage], num_feats[stage], 3, 3)
                j += 1
            if downscales[stage] == 2 or (stage < last and num_feats[stage] != num_feats[stage + 1]):
                layer(f'body.{i}.{j}', num_feats[min(stage + 1, last)], num_feats[stage], 3, 3)
                j += 1
        layer(f'fc_degree.{i}.0', 512, num_feats[-1])
        layer(f'fc_degree.{i}.2', 1, 512)
    return state


def deresnet_forward(state, x, num_blocks, downscales, num_degradation=2):
    """S3Diff's DEResNet.forward written out on its state dict: conv, residual blocks (x + conv2(relu(conv1 x))),
    stage convs (stride = downscale), global average pool, Linear-ReLU-Linear-sigmoid; degrees stacked."""
    degrees = []
    for i in range(num_degradation):
        h = F.conv2d(x, state[f'conv_first.{i}.weight'], state[f'conv_first.{i}.bias'], padding=1)
        j = 0
        for blocks, down in zip(num_blocks, downscales):
            for _ in range(blocks):
                p = f'body.{i}.{j}'
                r = F.relu(F.conv2d(h, state[f'{p}.conv1.weight'], state[f'{p}.conv1.bias'], padding=1))
                h = h + F.conv2d(r, state[f'{p}.conv2.weight'], state[f'{p}.conv2.bias'], padding=1)
                j += 1
            if f'body.{i}.{j}.weight' in state:
                h = F.conv2d(h, state[f'body.{i}.{j}.weight'], state[f'body.{i}.{j}.bias'], stride=down, padding=1)
                j += 1
        hidden = F.relu(F.linear(h.mean(dim=(2, 3)), state[f'fc_degree.{i}.0.weight'], state[f'fc_degree.{i}.0.bias']))
        degrees.append(torch.sigmoid(F.linear(hidden, state[f'fc_degree.{i}.2.weight'],
                                              state[f'fc_degree.{i}.2.bias'])).squeeze(-1))
    return torch.stack(degrees, dim=1)


@pytest.fixture(scope='module')
def de_net(tmp_path_factory):
    """S3Diff's de_net.pth layout at its default size (a bare state dict, as S3Diff's load_model reads it)."""
    path = tmp_path_factory.mktemp('de_net') / 'de_net.pth'
    torch.save(deresnet_state(**DEFAULT), path)
    return str(path)


def s3diff_file(sd_path, path, unet_blocks=6, vae_blocks=5):
    """A checkpoint with S3Diff's layout: peft adapters on UNet/VAE (VAE adapter 'vae_skip'), trained conv_in."""
    gen = torch.Generator().manual_seed(7)
    unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder='unet')
    vae = AutoencoderKL.from_pretrained(sd_path, subfolder='vae')
    unet.add_adapter(LoraConfig(r=RANK, init_lora_weights='gaussian', target_modules=UNET_LORA_TARGETS))
    vae.add_adapter(LoraConfig(r=RANK, init_lora_weights='gaussian', target_modules=VAE_LORA_TARGETS),
                    adapter_name='vae_skip')

    def rand(t):
        return torch.randn(t.shape, generator=gen) * 0.05

    sd = {'unet_lora_target_modules': UNET_LORA_TARGETS, 'vae_lora_target_modules': VAE_LORA_TARGETS,
          'rank_unet': RANK, 'rank_vae': RANK,
          'state_dict_unet': {k: rand(v) for k, v in unet.state_dict().items() if 'lora' in k or 'conv_in' in k},
          'state_dict_vae': {k: rand(v) for k, v in vae.state_dict().items() if 'lora' in k or 'skip_conv' in k},
          'w': nn.Parameter(torch.randn(64, generator=gen), requires_grad=False),
          'state_embeddings': {'state_dict_unet_block': {'weight': torch.randn(unet_blocks, 64, generator=gen)},
                               'state_dict_vae_block': {'weight': torch.randn(vae_blocks, 64, generator=gen)}}}
    for part in ('unet', 'vae'):
        for name, module in (('de_mlp', nn.Sequential(nn.Linear(256, 256))),
                             ('block_mlp', nn.Sequential(nn.Linear(64, 64))), ('fuse_mlp', nn.Linear(320, RANK ** 2))):
            sd[f'state_dict_{part}_{name}'] = {k: rand(v) for k, v in module.state_dict().items()}
    torch.save(sd, path)
    return sd


def test_s3diff_checkpoint_loads_strictly_and_modulates_lora(sd_path, tmp_path):
    raw = s3diff_file(sd_path, tmp_path / 's3diff.pkl')
    net = CodecAwareS3Diff.from_s3diff_checkpoint(str(tmp_path / 's3diff.pkl'), sd_path, scale=2).eval()
    state = net.state_dict()
    for k, v in raw['state_dict_unet'].items():
        assert torch.equal(state[f'unet.{k}'], v), k
    for k, v in raw['state_dict_vae'].items():
        assert torch.equal(state[f'vae.{k}'.replace('.vae_skip.', '.default.')], v), k
    assert torch.equal(state['deg_modulation.unet_fuse_mlp.weight'], raw['state_dict_unet_fuse_mlp']['weight'])
    assert torch.equal(state['deg_modulation.frequencies'], raw['w'])
    assert net.is_trainable_key('unet.conv_in.weight')  # S3Diff trains conv_in in full
    # the modulated LoRA of one layer: base(x) + B(A(x) M) * alpha/r, with M this block's r x r matrix
    layer = net.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    scores = torch.tensor([[0.2, 0.7], [0.9, 0.1]])
    with torch.no_grad():
        m = net.deg_modulation(scores)['unet'][:, 0]
        net._deg_context.update(net.deg_modulation(scores))
        x = torch.randn(2, 5, layer.in_features)
        a_x = nn.functional.linear(x, layer.lora_A['default'].weight)  # not the module: its hook applies M
        want = layer.base_layer(x) + layer.lora_B['default'](a_x @ m) * (8 / RANK)
        torch.testing.assert_close(layer(x), want)
        lq = torch.rand(2, 3, 8, 8)
        a, b = net(lq, COND, deg_score=scores), net(lq, COND, deg_score=scores.flip(0))
    assert a.shape == (2, 3, 16, 16) and (a - b).abs().max() > 1e-5  # the degradation guides the LoRA
    with pytest.raises(ValueError, match='deg_score'):
        net(lq, COND)


def test_s3diff_loading_is_strict_and_round_trips(sd_path, tmp_path):
    from vrpsr_plugin.inference import load_model, save_model
    raw = s3diff_file(sd_path, tmp_path / 's3diff.pkl')
    net = CodecAwareS3Diff.from_s3diff_checkpoint(str(tmp_path / 's3diff.pkl'), sd_path, scale=2).eval()
    save_model(net, str(tmp_path / 'ours.safetensors'))  # conv_in and the modulation travel with the LoRA
    again = load_model(str(tmp_path / 'ours.safetensors'))
    lq, scores = torch.rand(1, 3, 8, 8), torch.tensor([[0.3, 0.4]])
    with torch.no_grad():
        torch.testing.assert_close(again(lq, COND[:1], deg_score=scores), net(lq, COND[:1], deg_score=scores))
    raw['state_dict_unet']['down_blocks.9.lora_A.default.weight'] = torch.zeros(1)
    torch.save(raw, tmp_path / 'bad.pkl')
    with pytest.raises(RuntimeError, match=r'unexpected \(1\): unet\.down_blocks\.9\.lora_A\.default\.weight'):
        CodecAwareS3Diff.from_s3diff_checkpoint(str(tmp_path / 'bad.pkl'), sd_path)
    raw = s3diff_file(sd_path, tmp_path / 's3diff.pkl')
    raw['unet_lora_target_modules'] = ['to_q']
    torch.save(raw, tmp_path / 'bad.pkl')
    with pytest.raises(ValueError, match='unet_lora_target_modules'):
        CodecAwareS3Diff.from_s3diff_checkpoint(str(tmp_path / 'bad.pkl'), sd_path)


def test_degradation_estimator_has_s3diffs_keys_and_loads_de_net_strictly(tmp_path):
    default = DegradationEstimator().state_dict()
    want = deresnet_state(**DEFAULT)
    assert {k: tuple(v.shape) for k, v in default.items()} == {k: tuple(v.shape) for k, v in want.items()}
    # S3Diff's default body: 6 blocks of 64, the stride-2 conv 64 -> 128 at index 6, 2 blocks of 128
    assert tuple(default['body.1.6.weight'].shape) == (128, 64, 3, 3)
    assert tuple(default['body.0.8.conv2.weight'].shape) == (128, 128, 3, 3)
    assert tuple(default['fc_degree.1.2.weight'].shape) == (1, 512)

    state = deresnet_state(**TINY)
    torch.save(state, tmp_path / 'de_net.pth')
    net = DegradationEstimator.from_pretrained(str(tmp_path / 'de_net.pth'), **TINY)
    assert not net.training and all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    x = torch.rand(3, 3, 12, 10)
    with torch.no_grad():
        degrees = net(x)
    assert degrees.shape == (3, 2) and ((degrees > 0) & (degrees < 1)).all()  # sigmoid degrees
    torch.testing.assert_close(degrees, deresnet_forward(state, x, TINY['num_blocks'], TINY['downscales']))

    for change, message in ((lambda s: s.pop('fc_degree.1.2.bias'), r'missing \(1\): fc_degree\.1\.2\.bias'),
                            (lambda s: s.update({'body.0.9.weight': torch.zeros(1)}),
                             r'unexpected \(1\): body\.0\.9\.weight')):
        bad = dict(state)
        change(bad)
        torch.save(bad, tmp_path / 'bad.pth')
        with pytest.raises(CheckpointError, match=rf'bad\.pth does not match .*DegradationEstimator.*{message}'):
            DegradationEstimator.from_pretrained(str(tmp_path / 'bad.pth'), **TINY)
    (tmp_path / 'not.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match=r"not\.pth.*not a PyTorch checkpoint"):
        DegradationEstimator.from_pretrained(str(tmp_path / 'not.pth'))


def test_s3diff_estimates_its_degradation_frozen(sd_path, de_net):
    net = CodecAwareS3Diff(sd_path, scale=2, lora_rank=RANK, lora_rank_vae=RANK, degradation_guided=True,
                           degradation_estimator=de_net).train()
    estimator = net.degradation_estimator
    assert not estimator.training
    lq = torch.rand(2, 3, 8, 8)
    out = net(lq, COND)  # deg_score = estimator(lq)
    out.mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in estimator.parameters())
    assert any(p.grad is not None for p in net.deg_modulation.parameters())
    with torch.no_grad():
        scores = estimator(lq)
        torch.testing.assert_close(out.detach(), net(lq, COND, deg_score=scores))
        with torch.autocast('cpu', dtype=torch.bfloat16):  # a mixed-precision run: the estimator stays in fp32
            torch.testing.assert_close(net.estimate_degradation(lq), scores, rtol=0, atol=0)
    trainable = {id(p) for p in net.trainable_parameters()}
    assert not any(id(p) in trainable for p in estimator.parameters())
    assert not any(k.startswith('degradation_estimator.') for k in net.state_dict())  # never saved
    assert net.arch_spec['degradation_estimator'] == de_net
    with pytest.raises(ValueError, match='degradation_guided'):
        CodecAwareS3Diff(sd_path, degradation_estimator=de_net)


def test_s3diff_checkpoint_with_estimator_round_trips(sd_path, de_net, tmp_path):
    from vrpsr_plugin.inference import load_model, save_model
    s3diff_file(sd_path, tmp_path / 's3diff.pkl')
    net = CodecAwareS3Diff.from_s3diff_checkpoint(str(tmp_path / 's3diff.pkl'), sd_path, scale=2,
                                                  degradation_estimator=de_net).eval()
    save_model(net, str(tmp_path / 'ours.pth'))
    assert torch.load(tmp_path / 'ours.pth', weights_only=True)['arch']['degradation_estimator'] == de_net
    again = load_model(str(tmp_path / 'ours.pth'))  # rebuilds the estimator from the stored path
    lq = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again(lq, COND[:1]), net(lq, COND[:1]))
        other = 1 - net.estimate_degradation(lq)
        assert (net(lq, COND[:1], deg_score=other) - net(lq, COND[:1])).abs().max() > 1e-5  # a given score wins


def test_paper_option_network_loads_converted_s3diff_strictly(sd_path, de_net, tmp_path):
    """options/vrpsr_s3diff.yml's network_g (tiny base and ranks) takes S3Diff's release, converted as its comment
    says, as pretrain_network_g with strict loading."""
    import yaml
    from basicsr.archs import build_network
    from vrpsr_plugin.inference import save_model
    with open(REPO / 'options/vrpsr_s3diff.yml') as handle:
        spec = yaml.safe_load(handle)['network_g']
    s3diff_file(sd_path, tmp_path / 's3diff.pkl')
    save_model(CodecAwareS3Diff.from_s3diff_checkpoint(str(tmp_path / 's3diff.pkl'), sd_path, scale=1,
                                                       degradation_estimator=de_net), str(tmp_path / 'x1.pth'))
    net = build_network({**spec, 'pretrained_model_name_or_path': sd_path, 'degradation_estimator': de_net,
                         'lora_rank': RANK, 'lora_rank_vae': RANK, 'gradient_checkpointing': False})
    net.load_state_dict(torch.load(tmp_path / 'x1.pth', weights_only=True)['params_ema'], strict=True)
