"""UCIPNet (seed 003): shapes, gradients, grid_sample offset sampling vs a direct computation, codec heads."""
import math

import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.registry import MODEL_REGISTRY

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict
from vrpsr_plugin.archs.offset_sampling import axial_offset_sample
from vrpsr_plugin.archs.ucip_arch import UCIPNet
from vrpsr_plugin.codecs.condition import CodecCondition
from tests.conftest import REPO

TINY = dict(embed_dim=16, num_blocks=2, num_layers=3, num_prompts=4, num_feat=16, mlp_ratio=2.0)


def image_batch(photo: np.ndarray, size: int, height: int = None) -> torch.Tensor:
    """1 x 3 x height x size crop of the real photo in [0, 1]."""
    crop = photo[:height or size, :size]
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0


def direct_axial_sample(x: torch.Tensor, offset: torch.Tensor, axis: str) -> torch.Tensor:
    """Loop-based bilinear (linear along one axis) sampling with zeros outside, as deform_conv2d does."""
    out = torch.zeros_like(x)
    b_, c_, h_, w_ = x.shape
    for b in range(b_):
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    o = float(offset[b, c, i, j])
                    pos = (j if axis == 'horizontal' else i) + o
                    lo = math.floor(pos)
                    frac = pos - lo
                    size = w_ if axis == 'horizontal' else h_
                    value = 0.0
                    for k, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
                        if 0 <= k < size:
                            value += weight * float(x[b, c, i, k] if axis == 'horizontal' else x[b, c, k, j])
                    out[b, c, i, j] = value
    return out


@pytest.mark.parametrize('axis', ['horizontal', 'vertical'])
def test_offset_sampling_matches_direct_bilinear(axis):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    offset = (torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64) - 0.5) * 8  # reaches outside the map
    got = axial_offset_sample(x, offset, axis)
    assert torch.allclose(got, direct_axial_sample(x, offset, axis), atol=1e-10)


def test_offset_sampling_identity_shift_and_gradients():
    gen = torch.Generator().manual_seed(1)
    for shape in ((1, 2, 5, 7), (1, 1, 1, 4), (2, 3, 6, 1)):
        x = torch.rand(*shape, generator=gen)
        for axis in ('horizontal', 'vertical'):
            assert torch.allclose(axial_offset_sample(x, torch.zeros_like(x), axis), x, atol=1e-6)
    x = torch.rand(1, 2, 5, 7, generator=gen)
    # offset +1 along the width reads the right neighbour; the last column reads zeros
    shifted = axial_offset_sample(x, torch.ones_like(x), 'horizontal')
    assert torch.allclose(shifted[..., :-1], x[..., 1:], atol=1e-6) and shifted[..., -1].abs().max() == 0
    shifted = axial_offset_sample(x, -torch.ones_like(x), 'vertical')
    assert torch.allclose(shifted[..., 1:, :], x[..., :-1, :], atol=1e-6) and shifted[..., 0, :].abs().max() == 0
    # differentiable in the features and the offsets (the offsets are learned)
    xd = torch.rand(1, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    od = ((torch.rand(1, 2, 3, 4, generator=gen, dtype=torch.float64) - 0.5) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, o: axial_offset_sample(a, o, 'vertical'), (xd, od))


def test_offset_sampling_rejects_bad_input():
    x = torch.rand(1, 2, 3, 4)
    with pytest.raises(ValueError, match='axis'):
        axial_offset_sample(x, torch.zeros_like(x), 'diagonal')
    with pytest.raises(ValueError, match='shape'):
        axial_offset_sample(x, torch.zeros(1, 2, 3, 5), 'horizontal')


@pytest.mark.parametrize('scale', [1, 2, 4])
def test_ucip_shapes_every_scale_and_odd_sizes(photo, scale):
    torch.manual_seed(0)
    net = build_network({'type': 'UCIPNet', 'scale': scale, **TINY}).eval()
    assert isinstance(net, UCIPNet) and not net.codec_aware
    for height, width in ((24, 32), (17, 23)):
        x = image_batch(photo, width, height)
        with torch.no_grad():
            out = net(x)
        assert out.shape == (1, 3, height * scale, width * scale)
        assert torch.isfinite(out).all()


def test_ucip_rejects_bad_options_and_inputs():
    with pytest.raises(ValueError, match='scales'):
        UCIPNet(scale=3, **TINY)
    with pytest.raises(ValueError, match='img_residual'):
        UCIPNet(num_in_ch=1, num_out_ch=3, img_residual=True, **TINY)
    net = UCIPNet(scale=1, **TINY)
    with pytest.raises(ValueError, match='not codec-conditioned'):
        net(torch.rand(1, 3, 8, 8), torch.zeros(1, 4))


def test_ucip_gradients_reach_every_parameter(photo):
    torch.manual_seed(0)
    net = UCIPNet(scale=2, **TINY)
    x = image_batch(photo, 20, 18)
    target = torch.nn.functional.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False)
    torch.nn.functional.l1_loss(net(x), target).backward()
    no_grad = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not no_grad, f'parameters without gradient: {no_grad}'
    # the offsets are predicted from features and the dynamic prompt: both get gradients through grid_sample
    assert net.blocks[0].layers[0].mixer.offset.weight.grad.abs().sum() > 0
    assert net.blocks[0].dpm.prompts.grad.abs().sum() > 0


def test_img_residual_starts_as_identity_and_learns(photo):
    x = image_batch(photo, 20, 18)
    post = UCIPNet(scale=1, img_residual=True, **TINY)
    with torch.no_grad():
        assert torch.equal(post(x), x)  # h(X^) = X^ before training
        up = UCIPNet(scale=2, img_residual=True, **TINY)(x)
    assert torch.allclose(up, torch.nn.functional.interpolate(x, scale_factor=2, mode='bilinear'), atol=1e-6)
    post(x).sub(x.flip(-1)).abs().mean().backward()
    assert post.conv_last.weight.grad.abs().sum() > 0


def test_ucip_offsets_shared_by_pairs_of_ptmms():
    net = UCIPNet(scale=1, **TINY)
    flags = [layer.mixer.offset is not None for layer in net.blocks[0].layers]
    assert flags == [True, False, True]


def test_codec_conditioned_equals_unconditioned_at_init(photo):
    torch.manual_seed(0)
    plain = UCIPNet(scale=1, **TINY).eval()
    cond_net = UCIPNet(scale=1, codec_conditioned=True, **TINY).eval()
    assert cond_net.codec_aware and not plain.codec_aware and not UCIPNet.codec_aware
    # a plain checkpoint loads strictly; only the condition heads are missing
    load_state_dict_strict(cond_net, plain.state_dict(), allowed_missing_prefixes=UCIPNet.CONDITION_PREFIXES)
    with pytest.raises(RuntimeError, match='missing'):
        load_state_dict_strict(cond_net, plain.state_dict())
    x = image_batch(photo, 24).repeat(2, 1, 1, 1)
    cond = CodecCondition.collate([CodecCondition('libx264', 0.2), CodecCondition('libvvenc', 0.05)])
    with torch.no_grad():
        assert torch.equal(cond_net(x, cond), plain(x))
        assert torch.equal(cond_net(x), plain(x))  # cond=None: the plain net
        # the heads are live: once they leave zero, the two codecs get different outputs
        for head in cond_net.cond_heads.heads:
            torch.nn.init.normal_(head[2].weight, std=0.5)
        out = cond_net(x, cond)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    with pytest.raises(ValueError, match='batch'):
        cond_net(x, cond[:1])


@pytest.mark.parametrize('name', ['ucip_sr.yml', 'ucip_post.yml', 'smoke/ucip_sr.yml', 'smoke/ucip_post.yml'])
def test_option_files_build_their_ucip(name):
    with open(REPO / 'options' / name) as f:
        opt = yaml.safe_load(f)
    assert opt['model_type'] in MODEL_REGISTRY
    net = build_network(dict(opt['network_g']))
    assert isinstance(net, UCIPNet) and net.scale == opt['scale']
    # the post-processing nets read the codec condition and start as the identity (Eq. 9)
    assert net.codec_aware == (opt['model_type'] == 'VRPSRPostModel') == net.img_residual
