"""S3Diff's degradation-guided LoRA and its released checkpoint layout, on a tiny file written in that layout
(tiny random SD-Turbo-layout base; same peft adapters and key names as S3Diff's save_model)."""
import basicsr  # noqa: F401  (first: applies the torchvision compat before diffusers imports it)
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from vrpsr_plugin.archs.one_step_diffusion import UNET_LORA_TARGETS, VAE_LORA_TARGETS
from vrpsr_plugin.archs.s3diff_arch import CodecAwareS3Diff
from vrpsr_plugin.archs.tiny_sd import build_sd_folder
from vrpsr_plugin.codecs.condition import CodecCondition

COND = CodecCondition.collate([CodecCondition('libx264', 0.3), CodecCondition('libvvenc', 0.12)])
RANK = 4


@pytest.fixture(scope='module')
def sd_path(tmp_path_factory):
    return build_sd_folder(str(tmp_path_factory.mktemp('tiny_sd')), 'tiny', seed=0)


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
