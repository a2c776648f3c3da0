"""vrpsr_plugin.inference: load_model (option files, checkpoints with detected or stored arch, save_pretrained
directories) and restore (validation, condition passing, tiling with blending, out-of-memory retry)."""
import json

import pytest
import torch
import yaml
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from torch import nn

from tests.conftest import crop
from tests.test_archs import TINY_RRDB, conditions, perturb_heads, to_tensor
from vrpsr_plugin.archs.codec_aware_rrdbnet_arch import CodecAwareRRDBNet
from vrpsr_plugin.archs.codec_aware_srvgg_arch import CodecAwareSRVGGNetCompact
from vrpsr_plugin.archs.post_process_arch import CodecPostProcessNet
from vrpsr_plugin.inference import detect_arch, load_model, restore, save_model, tile_geometry, tile_starts

COND = conditions(('libx265', 0.2))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_inference_ready(model: nn.Module) -> None:
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_detects_released_real_esrgan_checkpoints(shared_weight):
    rrdb = load_model(str(shared_weight('RealESRGAN_x4plus_anime_6B.pth')))
    assert type(rrdb) is RRDBNet and rrdb.scale == 4 and len(rrdb.body) == 6
    assert rrdb.conv_first.out_channels == 64 and rrdb.body[0].rdb1.conv1.out_channels == 32
    srvgg = load_model(str(shared_weight('realesr-animevideov3.pth')))
    assert type(srvgg) is SRVGGNetCompact
    assert (srvgg.num_feat, srvgg.num_conv, srvgg.upscale, srvgg.act_type) == (64, 16, 4, 'prelu')
    for model in (rrdb, srvgg):
        assert_inference_ready(model)


@pytest.mark.parametrize('scale', [1, 2, 4])
def test_detects_plain_rrdbnet_scale_and_blocks(tmp_path, scale):
    net = RRDBNet(3, 3, scale=scale, num_feat=8, num_block=3, num_grow_ch=4)
    torch.save(net.state_dict(), tmp_path / 'bare.pth')
    model = load_model(str(tmp_path / 'bare.pth'))
    assert type(model) is RRDBNet and model.scale == scale and same_weights(model, net)
    assert detect_arch(net.state_dict()) == dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, scale=scale, num_feat=8,
                                                 num_block=3, num_grow_ch=4)


def test_srvgg_without_prelu_needs_act_type(tmp_path):
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2, act_type='leakyrelu')
    torch.save({'params': net.state_dict()}, tmp_path / 'lrelu.pth')
    with pytest.raises(ValueError, match="pass act_type='relu' or 'leakyrelu'"):
        load_model(str(tmp_path / 'lrelu.pth'))
    model = load_model(str(tmp_path / 'lrelu.pth'), act_type='leakyrelu')
    assert model.act_type == 'leakyrelu' and model.upscale == 2 and model.num_conv == 2 and same_weights(model, net)


@pytest.mark.parametrize('make', [lambda: CodecAwareRRDBNet(scale=2, **TINY_RRDB),
                                  lambda: CodecAwareSRVGGNetCompact(num_feat=8, num_conv=2, upscale=3),
                                  lambda: CodecPostProcessNet(num_feat=8, num_block=2, unshuffle=4)])
def test_codec_aware_checkpoints_with_and_without_arch_spec(tmp_path, make):
    torch.manual_seed(0)
    net = make()
    perturb_heads(net)
    save_model(net, str(tmp_path / 'spec.pth'))
    torch.save({'params_ema': net.state_dict()}, tmp_path / 'basicsr_style.pth')  # what basicsr's save_network writes
    for path in ('spec.pth', 'basicsr_style.pth'):
        model = load_model(str(tmp_path / path))
        assert type(model) is type(net) and model.arch_spec == net.arch_spec and same_weights(model, net)
        assert_inference_ready(model)


def test_stored_arch_spec_keeps_a_custom_codec_order(tmp_path):
    codecs = ('libx265', 'libx264', 'libvvenc', 'libsvtav1')
    net = CodecAwareRRDBNet(scale=4, codecs=codecs, **TINY_RRDB)
    save_model(net, str(tmp_path / 'net.pth'))
    assert load_model(str(tmp_path / 'net.pth')).codecs == codecs
    torch.save(net.state_dict(), tmp_path / 'bare.pth')
    with pytest.raises(ValueError, match='pass codecs='):
        load_model(str(tmp_path / 'bare.pth'))  # 5 scalars: the codec names cannot be guessed from shapes
    assert load_model(str(tmp_path / 'bare.pth'), codecs=list(codecs)).codecs == codecs


def test_option_file_and_checkpoint_load_the_same_weights(tmp_path):
    """One rule for .yml and .pth routes (and so the ComfyUI loader): params_ema when present, else params."""
    torch.manual_seed(0)
    nets = [CodecAwareRRDBNet(scale=1, **TINY_RRDB) for _ in range(2)]
    perturb_heads(nets[1])
    torch.save({'params': nets[0].state_dict(), 'params_ema': nets[1].state_dict()}, tmp_path / 'net_g.pth')
    opt = {'name': 'x', 'network_g': {'type': 'CodecAwareRRDBNet', 'scale': 1, **TINY_RRDB},
           'path': {'pretrain_network_g': str(tmp_path / 'net_g.pth')}}
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    assert same_weights(load_model(str(tmp_path / 'opt.yml')), nets[1])
    assert same_weights(load_model(str(tmp_path / 'net_g.pth')), nets[1])
    opt['path']['param_key_g'] = 'params'  # an explicit key picks that entry
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    assert same_weights(load_model(str(tmp_path / 'opt.yml')), nets[0])


def test_option_file(tmp_path):
    torch.manual_seed(0)
    net = CodecAwareRRDBNet(scale=1, **TINY_RRDB)
    perturb_heads(net)
    torch.save({'params': net.state_dict()}, tmp_path / 'net_g.pth')
    opt = {'name': 'x', 'network_g': {'type': 'CodecAwareRRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 1,
                                      **TINY_RRDB},
           'path': {'pretrain_network_g': str(tmp_path / 'net_g.pth'), 'param_key_g': 'params'}}
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    model = load_model(str(tmp_path / 'opt.yml'))
    assert type(model) is CodecAwareRRDBNet and same_weights(model, net)
    # a plain RRDBNet checkpoint (no heads at all) initialises the codec-aware net: heads stay zero
    torch.save({'params_ema': RRDBNet(3, 3, scale=1, **TINY_RRDB).state_dict()}, tmp_path / 'net_g.pth')
    assert all(float(h[2].weight.sum()) == 0 for h in load_model(str(tmp_path / 'opt.yml')).cond_heads.heads)
    # ... but a checkpoint with some heads must have all of them
    state = net.state_dict()
    del state['cond_heads.heads.3.2.weight']
    torch.save({'params': state}, tmp_path / 'net_g.pth')
    with pytest.raises(RuntimeError, match=r'missing \(1\): cond_heads\.heads\.3\.2\.weight'):
        load_model(str(tmp_path / 'opt.yml'))
    del opt['path']['pretrain_network_g']
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt))
    with pytest.raises(ValueError, match='pretrain_network_g is not set'):
        load_model(str(tmp_path / 'opt.yml'))


def test_pretrained_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match='no config.json'):
        load_model(str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps({'type': 'NoSuchArch'}))
    with pytest.raises(KeyError, match='NoSuchArch'):
        load_model(str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps({'type': 'CodecAwareRRDBNet'}))
    with pytest.raises(TypeError, match='has no from_pretrained'):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='no model file'):
        load_model(str(tmp_path / 'absent.pth'))


def test_pretrained_directory_of_the_diffusion_simulator(tmp_path):
    tiny_sd = pytest.importorskip('vrpsr_plugin.archs.tiny_sd')
    from basicsr.utils.registry import ARCH_REGISTRY
    if 'DiffusionCodecSimulator' not in ARCH_REGISTRY:
        pytest.skip('DiffusionCodecSimulator is not registered')
    sim = ARCH_REGISTRY.get('DiffusionCodecSimulator')(tiny_sd.build_sd_folder(str(tmp_path / 'sd'), 'tiny'),
                                                        lora_rank=2, lora_rank_vae=2)
    sim.save_pretrained(str(tmp_path / 'sim'))
    model = load_model(str(tmp_path / 'sim'))
    assert type(model) is type(sim) and model.codec_aware
    assert_inference_ready(model)


def test_unreadable_and_unknown_checkpoints(tmp_path):
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match='junk.pth'):
        load_model(str(tmp_path / 'junk.pth'))
    torch.save({'params': nn.Conv2d(3, 3, 3).state_dict()}, tmp_path / 'conv.pth')
    with pytest.raises(ValueError, match='cannot detect the arch'):
        load_model(str(tmp_path / 'conv.pth'))


def test_restore_validates_images():
    model = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2).eval()
    good = torch.rand(1, 3, 8, 8)
    for bad, error, message in [(good[0], ValueError, r'shape \(B, 3, H, W\)'),
                                (good[:, :2], ValueError, r'shape \(B, 3, H, W\)'),
                                ((good * 255).to(torch.uint8), TypeError, 'float tensor'),
                                (good * 2, ValueError, r'in \[0, 1\]'),
                                (good.clone().fill_(float('nan')), ValueError, 'NaN'),
                                (good.numpy(), TypeError, 'torch.Tensor')]:
        with pytest.raises(error, match=message):
            restore(model, bad)
    with pytest.raises(ValueError, match='tile and tile_overlap'):
        restore(model, good, tile=-1)


def test_restore_passes_the_condition_only_to_codec_aware_models(photo):
    torch.manual_seed(0)
    aware = CodecAwareSRVGGNetCompact(num_feat=8, num_conv=2).eval()
    perturb_heads(aware, std=0.5)
    plain = SRVGGNetCompact(num_feat=8, num_conv=2).eval()
    plain.load_state_dict({k: v for k, v in aware.state_dict().items() if not k.startswith('cond_heads.')})
    x = to_tensor(crop(photo, 16))
    with torch.no_grad():
        expected = aware(x, COND).clamp(0, 1)
    out = restore(aware, x, COND)
    assert torch.equal(out, expected) and out.min() >= 0 and out.max() <= 1
    assert (restore(aware, x) - expected).abs().max() > 1e-3  # None = the plain base
    assert torch.equal(restore(plain, x, COND), restore(plain, x))
    out.add_(0)  # a normal tensor, usable outside inference mode
    with pytest.raises(ValueError, match='batch size 1 but the input has 2'):
        restore(aware, x.repeat(2, 1, 1, 1), COND)


def test_tiled_equals_untiled_srvgg_scale4(photo):
    """4 feature convs + 1: receptive-field radius 6 input px < the 8-px unblended margin of a 32-px overlap,
    so every output pixel with non-zero blend weight sees exactly the untiled context."""
    torch.manual_seed(0)
    model = CodecAwareSRVGGNetCompact(num_feat=16, num_conv=4).eval()
    perturb_heads(model)
    x = to_tensor(crop(photo, 100, 10, 10))
    reference = restore(model, x, COND)
    tiled = restore(model, x, COND, tile=48, tile_overlap=32)
    assert tiled.shape == (1, 3, 400, 400)
    assert (tiled - reference).abs().max() < 1e-5


def test_tiled_equals_untiled_rrdbnet_scale1(photo):
    """Scale 1 pixel-unshuffles by 4: tile origins are multiples of 8, so tiles see the untiled grid. The nominal
    receptive field of this net is ~70 px, but beyond the 16-px unblended margin (overlap 64) the context reaches
    the output only through the RRDB trunk, scaled by 0.1 (init) x 0.2 x 0.2 (residuals) per block; measured
    differences are ~1e-7, so 1e-5 is tight yet safe. A 32-px overlap is measurably worse (seams ~1e-3)."""
    torch.manual_seed(0)
    model = CodecAwareRRDBNet(scale=1, num_feat=16, num_block=1, num_grow_ch=8).eval()
    perturb_heads(model)
    x = to_tensor(photo)[..., :120, :]  # 120 x 128: the last row of tiles is shorter
    reference = restore(model, x, COND)
    assert (restore(model, x, COND, tile=64, tile_overlap=64) - reference).abs().max() < 1e-5
    assert (restore(model, x, COND, tile=64, tile_overlap=16) - reference).abs().max() > 1e-5


def test_tile_geometry():
    assert tile_geometry(100, 30) == (96, 32)
    assert tile_geometry(8, 64) == (32, 24)
    tile, overlap = tile_geometry(64, 16)
    starts = tile_starts(200, tile, overlap)
    assert starts == [0, 48, 96, 144] and starts[-1] + tile >= 200 and starts[-2] + tile < 200


class OutOfMemoryAbove(nn.Module):
    """A real conv net that raises torch.OutOfMemoryError for inputs larger than ``limit`` px, as a GPU would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.sizes = limit, []
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError('CUDA out of memory (simulated)')
        return self.conv(x)


def test_restore_halves_the_tile_on_out_of_memory():
    model = OutOfMemoryAbove(limit=64).eval()
    x = torch.rand(1, 3, 150, 150)
    out = restore(model, x, tile=256, tile_overlap=16)
    assert out.shape == x.shape
    assert model.sizes[0] == 150 and model.sizes[1] == 128 and max(model.sizes[2:]) <= 64
    with torch.no_grad():
        assert (out - model.conv(x).clamp(0, 1)).abs().max() < 1e-5
    with pytest.raises(torch.OutOfMemoryError):
        restore(OutOfMemoryAbove(limit=8).eval(), x, tile=64)
