"""Codec-aware backbones and post-processing net (App. B.3, §3.4): zero-init equivalence with basicsr's nets,
strict loading of plain checkpoints, condition effect, gradients, odd sizes, input checks."""
import pytest
import torch
from basicsr.archs import build_network
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from torch.nn import functional as F

from tests.conftest import crop
from vrpsr_plugin.archs.codec_aware_rrdbnet_arch import CodecAwareRRDBNet
from vrpsr_plugin.archs.codec_aware_srvgg_arch import CodecAwareSRVGGNetCompact
from vrpsr_plugin.archs.post_process_arch import CodecPostProcessNet
from vrpsr_plugin.codecs.condition import CodecCondition

TINY_RRDB = dict(num_feat=16, num_block=2, num_grow_ch=8)
TINY_SRVGG = dict(num_feat=16, num_conv=4, upscale=4)


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def conditions(*pairs) -> torch.Tensor:
    return CodecCondition.collate([CodecCondition(codec, bpp) for codec, bpp in pairs])


def perturb_heads(model: torch.nn.Module, std: float = 0.1) -> None:
    """Give the zero-initialised last layers of the heads non-zero weights, as training would."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in model.cond_heads.heads:
            head[2].weight.copy_(torch.randn(head[2].weight.shape, generator=generator) * std)


def plain_copy(model: torch.nn.Module, plain: torch.nn.Module) -> torch.nn.Module:
    """``plain`` loaded strictly with ``model``'s base parameters (all but the heads)."""
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('cond_heads.')})
    return plain.eval()


@pytest.mark.parametrize('scale', [1, 2, 4])
def test_rrdbnet_zero_init_equals_basicsr(photo, scale):
    torch.manual_seed(scale)
    model = CodecAwareRRDBNet(scale=scale, **TINY_RRDB).eval()
    plain = plain_copy(model, RRDBNet(3, 3, scale=scale, **TINY_RRDB))
    x = to_tensor(crop(photo, 32, 40, 40))
    with torch.no_grad():
        reference = plain(x)
        assert torch.equal(model(x), reference)
        assert torch.equal(model(x, conditions(('libx265', 0.2))), reference)
    assert reference.shape == (1, 3, 32 * scale, 32 * scale)


def test_srvgg_zero_init_equals_basicsr(photo):
    torch.manual_seed(0)
    model = CodecAwareSRVGGNetCompact(**TINY_SRVGG).eval()
    plain = plain_copy(model, SRVGGNetCompact(**TINY_SRVGG))
    x = to_tensor(crop(photo, 24))
    with torch.no_grad():
        assert torch.equal(model(x, conditions(('libvvenc', 0.05))), plain(x))


def test_real_esrgan_x4plus_loads_and_matches_basicsr(photo, shared_weight):
    path = shared_weight('RealESRGAN_x4plus.pth')
    model = CodecAwareRRDBNet.from_plain_checkpoint(str(path)).eval()
    plain = RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32).eval()
    plain.load_state_dict(torch.load(path, map_location='cpu', weights_only=True)['params_ema'])
    x = to_tensor(crop(photo, 16, 56, 56))
    with torch.no_grad():
        assert torch.equal(model(x, conditions(('libx264', 0.3))), plain(x))


def test_realesr_animevideov3_loads_and_matches_basicsr(photo, shared_weight):
    path = shared_weight('realesr-animevideov3.pth')
    model = CodecAwareSRVGGNetCompact.from_plain_checkpoint(str(path), num_conv=16).eval()
    plain = SRVGGNetCompact(num_conv=16).eval()
    plain.load_state_dict(torch.load(path, map_location='cpu', weights_only=True)['params_ema'])
    x = to_tensor(crop(photo, 32, 30, 30))
    with torch.no_grad():
        assert torch.equal(model(x, conditions(('libx265', 0.1))), plain(x))


@pytest.mark.parametrize('wrapper', ['params_ema', 'params', None])
def test_plain_checkpoint_strict_accounting(tmp_path, wrapper):
    state = RRDBNet(3, 3, scale=2, **TINY_RRDB).state_dict()
    path = tmp_path / 'plain.pth'
    torch.save({wrapper: state} if wrapper else state, path)
    model = CodecAwareRRDBNet.from_plain_checkpoint(str(path), scale=2, **TINY_RRDB)
    assert torch.equal(model.conv_first.weight, state['conv_first.weight'])
    assert all(float(h[2].weight.detach().abs().sum()) == 0 for h in model.cond_heads.heads)

    broken = dict(state)
    del broken['body.1.rdb2.conv3.weight']
    torch.save(broken, path)
    with pytest.raises(RuntimeError, match=r'missing \(1\): body\.1\.rdb2\.conv3\.weight'):
        CodecAwareRRDBNet.from_plain_checkpoint(str(path), scale=2, **TINY_RRDB)
    torch.save({**state, 'extra.weight': torch.zeros(3)}, path)
    with pytest.raises(RuntimeError, match=r'unexpected \(1\): extra\.weight'):
        CodecAwareRRDBNet.from_plain_checkpoint(str(path), scale=2, **TINY_RRDB)
    with pytest.raises(RuntimeError, match=r'shape mismatch.*conv_first\.weight'):  # scale-2 weights, scale 4
        torch.save(state, path)
        CodecAwareRRDBNet.from_plain_checkpoint(str(path), scale=4, **TINY_RRDB)


def test_condition_changes_output_once_heads_are_trained(photo):
    torch.manual_seed(0)
    x = to_tensor(crop(photo, 24)).repeat(3, 1, 1, 1)
    cond = conditions(('libx264', 0.1), ('libx265', 0.1), ('libx265', 0.8))
    for model in (CodecAwareRRDBNet(scale=2, **TINY_RRDB), CodecAwareSRVGGNetCompact(**TINY_SRVGG)):
        perturb_heads(model.eval())
        with torch.no_grad():
            out, plain = model(x, cond), model(x)
        assert (out - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every condition moves the output
        assert (out[0] - out[1]).abs().max() > 1e-4  # codec matters
        assert (out[1] - out[2]).abs().max() > 1e-4  # bpp matters


@pytest.mark.parametrize('make', [lambda: CodecAwareRRDBNet(scale=1, **TINY_RRDB),
                                  lambda: CodecAwareSRVGGNetCompact(**TINY_SRVGG),
                                  lambda: CodecPostProcessNet(num_feat=8, num_block=2)])
def test_gradients_reach_the_heads(photo, make):
    torch.manual_seed(0)
    model = make()
    if isinstance(model, CodecPostProcessNet):  # its residual starts at zero too: open it as training would
        torch.nn.init.normal_(model.conv_last.weight, std=0.01)
    x = to_tensor(crop(photo, 16))
    out = model(x, conditions(('libx265', 0.2)))
    F.mse_loss(out, torch.rand_like(out)).backward()
    last_layers = [head[2].weight.grad for head in model.cond_heads.heads]
    assert all(g is not None and g.abs().sum() > 0 for g in last_layers)
    # the first layers get gradient only through the (zero) last layers, as with any zero-initialised head
    assert all(float(head[0].weight.grad.abs().sum()) == 0 for head in model.cond_heads.heads)


@pytest.mark.parametrize('scale,size', [(1, (13, 11)), (1, (2, 3)), (2, (15, 9))])
def test_rrdbnet_odd_sizes_pad_and_crop(photo, scale, size):
    torch.manual_seed(0)
    model = CodecAwareRRDBNet(scale=scale, **TINY_RRDB).eval()
    plain = plain_copy(model, RRDBNet(3, 3, scale=scale, **TINY_RRDB))
    x = to_tensor(photo[:size[0], :size[1]].copy())
    factor = 4 // scale
    pad_h, pad_w = (-size[0]) % factor, (-size[1]) % factor
    mode = 'reflect' if pad_h < size[0] and pad_w < size[1] else 'replicate'
    with torch.no_grad():
        out = model(x, conditions(('libx264', 0.5)))
        reference = plain(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))[..., :size[0] * scale, :size[1] * scale]
    assert out.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert torch.equal(out, reference)


def test_post_process_is_identity_at_init_and_conditioned_after(photo):
    torch.manual_seed(0)
    model = CodecPostProcessNet().eval()
    x = to_tensor(crop(photo, 40))[..., :37, :29]
    cond = conditions(('libx264', 0.05), ('libvvenc', 0.05))
    with torch.no_grad():
        assert torch.equal(model(x.repeat(2, 1, 1, 1), cond), x.repeat(2, 1, 1, 1))
        torch.nn.init.normal_(model.conv_last.weight, std=0.01)
        perturb_heads(model)
        out = model(x.repeat(2, 1, 1, 1), cond)
    assert out.shape == (2, 3, 37, 29)
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[0] - model(x)[0]).abs().max() > 1e-4


def test_condition_errors_name_the_problem(photo):
    model = CodecAwareSRVGGNetCompact(**TINY_SRVGG)
    x = to_tensor(crop(photo, 16)).repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match=r'shape \(B, 4\)'):
        model(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match='batch size 1 but the input has 2'):
        model(x, conditions(('libx264', 0.1)))
    with pytest.raises(ValueError, match='NaN or inf'):
        model(x, torch.tensor([[1.0, 0, 0, float('nan')]] * 2))
    with pytest.raises(TypeError, match='torch.Tensor'):
        model(x, [1, 0, 0, 0.2])
    with pytest.raises(ValueError, match='scale 1, 2 or 4'):
        CodecAwareRRDBNet(scale=3)


def test_custom_codec_list_widens_the_condition(photo):
    codecs = ('libx264', 'libx265', 'libvvenc', 'libsvtav1')
    model = CodecAwareRRDBNet(scale=4, codecs=codecs, **TINY_RRDB).eval()
    perturb_heads(model)
    cond = CodecCondition.collate([CodecCondition('libsvtav1', 0.2)], codecs=codecs)
    with torch.no_grad():
        assert model(to_tensor(crop(photo, 8)), cond).shape == (1, 3, 32, 32)
    assert model.codecs == codecs and model.arch_spec['codecs'] == list(codecs)


def test_registry_builds_all_archs_and_basicsr_discriminator():
    opts = [dict(type='CodecAwareRRDBNet', scale=2, **TINY_RRDB), dict(type='CodecAwareSRVGGNetCompact', **TINY_SRVGG),
            dict(type='CodecPostProcessNet', num_feat=8, num_block=1)]
    for opt in opts:
        net = build_network(dict(opt))
        assert type(net).__name__ == opt['type'] and net.codec_aware
        assert net.arch_spec == {**net.arch_spec, **opt}
    disc = build_network({'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 8, 'skip_connection': True})
    assert type(disc).__name__ == 'UNetDiscriminatorSN'
    assert disc(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_condition_is_embedded_in_fp32_under_bf16():
    """A bf16 feature map must not round the condition before the sinusoidal embedding (0.8765 bpp -> 0.875)."""
    from vrpsr_plugin.archs.condition_heads import ConditionHeads
    torch.manual_seed(0)
    heads = ConditionHeads([16])
    torch.nn.init.normal_(heads.heads[0][2].weight)
    cond = CodecCondition.collate([CodecCondition('libx265', 0.8765)])
    x = torch.zeros(1, 16, 4, 4)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ref, got = heads(cond, x)[0].float(), heads(cond, x.bfloat16())[0].float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
