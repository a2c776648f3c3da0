"""Baseline simulators of Table 6 (DiffJPEG, hyperprior-style, small CNN): call signature, gradients, conditioning."""
import pytest
import torch
from basicsr.archs import build_network

from vrpsr_plugin.archs.baseline_simulators_arch import (JPEG_QUALITY_TABLE, CNNCodecSimulator, DiffJPEGSimulator,
                                                         HyperpriorSimulator, fit_jpeg_quality_table,
                                                         jpeg_quality_for_bpp)
from vrpsr_plugin.codecs.condition import CodecCondition

COND = CodecCondition.collate([CodecCondition('libx264', 0.3), CodecCondition('libx265', 1.2)])
NAMES = ('DiffJPEGSimulator', 'HyperpriorSimulator', 'CNNCodecSimulator')


@pytest.fixture
def image(photo):
    """Two real 37 x 45 crops (odd sizes) in [0, 1]."""
    x = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    return torch.stack([x[:, :37, :45], x[:, 50:87, 60:105]])


@pytest.mark.parametrize('name', NAMES)
def test_forward_backward_and_gradients_to_input(name, image):
    torch.manual_seed(0)
    sim = build_network({'type': name})
    assert sim.codec_aware
    sim.requires_grad_(False)  # frozen as in stage 2 (§3.3.3): the gradient must still reach x
    for mode in ('train', 'eval'):
        getattr(sim, mode)()
        x = image.clone().requires_grad_(True)
        y = sim(x, COND)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
        y.mean().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('name', NAMES[1:])
def test_learned_simulators_train(name, image):
    torch.manual_seed(0)
    sim = build_network({'type': name}).train()
    target = image.flip(-1)
    loss = (sim(image, COND) - target).abs().mean()
    loss.backward()
    assert all(p.grad is not None for p in sim.parameters())
    optim = torch.optim.Adam(sim.parameters(), lr=1e-3)
    for _ in range(3):
        optim.zero_grad()
        (sim(image, COND) - target).abs().mean().backward()
        optim.step()
    sim.eval()
    with torch.no_grad():
        assert (sim(image, COND) - target).abs().mean() < loss
        assert torch.equal(sim(image, COND), sim(image, COND))  # deterministic evaluation


def test_cnn_simulator_is_identity_at_init_and_conditioned_after_training(image):
    torch.manual_seed(0)
    sim = CNNCodecSimulator().eval()
    with torch.no_grad():
        torch.testing.assert_close(sim(image, COND), image)
        for block in sim.blocks:
            torch.nn.init.normal_(block.film.weight, std=0.1)
        torch.nn.init.normal_(sim.conv_last.weight, std=0.1)
        other = COND.clone()
        other[:, -1] = 0.05
        assert (sim(image, COND) - sim(image, other)).abs().max() > 1e-3


def test_hyperprior_rate_condition_sets_quantisation_step(image):
    torch.manual_seed(0)
    sim = HyperpriorSimulator().eval()
    x = image[..., :32, :32]
    with torch.no_grad():
        torch.nn.init.normal_(sim.step_head.weight, std=0.5)
        torch.nn.init.constant_(sim.step_head.bias, -4.0)  # fine steps: the random latent is not all rounded to 0
        other = COND.clone()
        other[:, -1] = 0.05
        fine = sim.quantised_latent(x, sim.trunk(sim.embedding(COND)))
        coarse = sim.quantised_latent(x, sim.trunk(sim.embedding(other)))
        assert (fine != 0).float().mean() > 0.1 and (fine - coarse).abs().max() > 1e-3
        sim.train()
        assert not torch.equal(sim(image, COND), sim(image, COND))  # uniform noise in training


def test_jpeg_quality_map_is_monotone_and_fitted_on_real_encodes(photos):
    rates = torch.logspace(-2, 1, 200)
    quality = jpeg_quality_for_bpp(rates)
    assert (quality.diff() >= 0).all() and quality[0] >= 1 and quality[-1] <= 100
    assert quality.diff().sum() > 90  # not constant: spans the table
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(JPEG_QUALITY_TABLE, JPEG_QUALITY_TABLE[1:]))
    for bpp, q in JPEG_QUALITY_TABLE:
        assert abs(jpeg_quality_for_bpp(torch.tensor([bpp]))[0].item() - q) < 1e-3
    table = fit_jpeg_quality_table(photos, qualities=(10, 50, 90))
    assert table[0][0] < table[1][0] < table[2][0]


def test_diffjpeg_simulator_is_closer_to_input_at_higher_rate(image):
    sim = DiffJPEGSimulator()
    low, high = COND.clone(), COND.clone()
    low[:, -1], high[:, -1] = 0.25, 3.0
    with torch.no_grad():
        assert (sim(image, high) - image).abs().mean() < 0.5 * (sim(image, low) - image).abs().mean()


@pytest.mark.parametrize('cls', [DiffJPEGSimulator, HyperpriorSimulator, CNNCodecSimulator])
def test_condition_shape_errors(cls, image):
    sim = cls()
    with pytest.raises(ValueError, match='B x 4'):
        sim(image, COND[:, :3])
    with pytest.raises(ValueError, match='batch sizes'):
        sim(image, COND[:1])
    with pytest.raises(ValueError, match='bpp'):
        sim(image, -COND)
