"""The transform-quantisation proxy D(X, codec, q) of the rate-aware simulator and its fit on real decodes."""
import numpy as np
import pytest
import torch

from vrpsr_plugin.archs.quantization_proxy import DCTQuantizationProxy
from vrpsr_plugin.archs.rate_aware_simulator_arch import RateAwareCodecSimulator
from vrpsr_plugin.archs.rate_model import block_dct, block_idct
from vrpsr_plugin.codecs import CodecCondition, encode
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.models.quantization_fit import fit_quantization_proxy
from vrpsr_plugin.models.rate_fit import collect_rate_samples, fit_rate_model

X264 = torch.tensor([[1.0, 0.0, 0.0]])


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean())


def drawn(proxy: DCTQuantizationProxy, x: torch.Tensor, qp: float) -> torch.Tensor:
    """One noisy output, as when training through the proxy or on its output (autograd on)."""
    return proxy(x, X264, torch.tensor([qp])).detach()


@pytest.fixture(scope='module')
def fitted_proxy(photos):
    """A proxy fitted on real x264 decodes of crops of two photos (the third is held out)."""
    proxy = DCTQuantizationProxy()  # x264, x265, vvenc
    samples = collect_rate_samples(photos[:2] * 2, ['libx264'], [22, 32, 42], [64, 96], seed=0, keep_decodes=True)
    return proxy, fit_quantization_proxy(proxy, samples), samples


def test_block_idct_inverts_the_transform_at_any_size():
    x = torch.rand(2, 3, 37, 45)
    assert torch.allclose(block_idct(block_dct(x, predict_dc=False), 37, 45), x, atol=1e-5)


def test_fit_sets_only_the_codecs_it_saw_and_predicts_real_decodes(fitted_proxy, photos):
    proxy, fit, _ = fitted_proxy
    assert fit['count'] > 0 and float(proxy.fitted) == 1.0
    # small coefficients mostly dropped, large ones kept; noise of the order of a uniform quantiser's (0.29 Qstep)
    assert fit['mean_shrink_below_1'] < 0.8 * fit['mean_shrink_above_1'] and 0.05 < fit['mean_noise_std'] < 1.0
    assert torch.equal(proxy.shrink[1], torch.ones_like(proxy.shrink[1]))  # x265 not in the samples
    x = rgb_to_tensor(photos[2])[None]  # held out
    for qp in (32, 42):
        real = rgb_to_tensor(encode(photos[2], 'libx264', qp=qp).image)[None]
        assert mse(drawn(proxy, x, qp), x) == pytest.approx(mse(real, x), rel=0.35), qp  # the codec's error energy
        with torch.no_grad():
            mean = proxy(x, X264, torch.tensor([float(qp)]))
        # the conditional mean predicts the real decode better than a draw and than X itself
        assert mse(mean, real) < 0.8 * min(mse(drawn(proxy, x, qp), real), mse(x, real)), qp


def test_noise_is_mostly_removed_as_the_real_codec_removes_it(fitted_proxy, photos):
    """Noise in the input (sigma 8): the real codec's 4:2:0 round trip and dead zone remove much of it; the proxy's
    output is as close to the clean picture as the real decode is (within 1 dB), far closer than the noisy input."""
    proxy, _, _ = fitted_proxy
    clean = photos[2]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    x = rgb_to_tensor(clean)[None]
    real = rgb_to_tensor(encode(noisy, 'libx264', qp=28).image)[None]
    simulated = drawn(proxy, rgb_to_tensor(noisy)[None], 28.0)
    db = lambda a: -10 * np.log10(mse(a, x))  # noqa: E731
    assert db(real) > db(rgb_to_tensor(noisy)[None]) + 1 and abs(db(simulated) - db(real)) < 1.0


def test_distortion_grows_with_qp_noise_is_drawn_with_autograd_and_the_mean_without(fitted_proxy, photo):
    proxy, _, _ = fitted_proxy
    x = rgb_to_tensor(photo)[None]
    errors = [mse(drawn(proxy, x, q), x) for q in (12.0, 27.0, 37.0, 47.0)]
    assert errors == sorted(errors) and errors[0] < 0.05 * errors[-1]
    with torch.no_grad():
        mean = proxy(x, X264, torch.tensor([37.0]))
        assert torch.equal(mean, proxy(x, X264, torch.tensor([37.0])))  # no gradient: deterministic
    draws = [drawn(proxy, x, 37.0) for _ in range(15)] + [drawn(proxy, x.clone().requires_grad_(True), 37.0)]
    assert not torch.equal(draws[0], draws[1])  # fresh draws with autograd on, whether or not x needs gradients
    # ... around the conditional mean that the proxy returns without gradients
    assert mse(torch.stack(draws).mean(0), mean) < 0.1 * mse(draws[0], mean)
    assert mse(mean, x) < mse(draws[0], x)


def rate_aware_simulator(samples) -> RateAwareCodecSimulator:
    """A rate-aware simulator with ``distortion: dct``, its rate model fitted on x264 encodes of the samples' crops
    and its proxy not yet fitted."""
    sim = RateAwareCodecSimulator(qp_range=(17, 51), distortion='dct')
    fit_rate_model(sim.rate_model, collect_rate_samples([s.image for s in samples], ['libx264'], [17, 27, 37, 47],
                                                        [64], seed=0), steps=100)
    sim.bpp_range.copy_(torch.tensor([0.05, 5.0]))
    return sim


def test_simulator_with_the_proxy_charges_bits_and_refuses_an_unfitted_proxy(fitted_proxy, photo):
    proxy, _, samples = fitted_proxy
    sim = rate_aware_simulator(samples)
    with pytest.raises(ValueError, match='quantisation proxy was never fitted'):
        sim.load_state_dict(sim.state_dict())
    sim.distortion.load_state_dict(proxy.state_dict())
    sim.load_state_dict(sim.state_dict())
    x = rgb_to_tensor(photo[:64, :64])[None]
    cond = CodecCondition('libx264', encode(photo[:64, :64], 'libx264', qp=32).bpp).vector()[None]
    noisy = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        # the same budget for busier content: a coarser QP, so more of X is lost (the coupling of Eq. 2)
        assert float(sim.solve_qp(noisy, cond)) > float(sim.solve_qp(x, cond)) + 1
        at_own_qp = sim.at_qp(noisy, cond[:, :-1], sim.solve_qp(x, cond))
        assert mse(sim(noisy, cond), x) > 1.02 * mse(at_own_qp, x)
    x.requires_grad_(True)
    sim(x, cond).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='distortion must be one of'):
        RateAwareCodecSimulator(distortion='jpeg')
    cnn = RateAwareCodecSimulator(qp_range=(17, 51))
    cnn.rate_model.load_state_dict(sim.rate_model.state_dict())
    cnn.bpp_range.copy_(sim.bpp_range)
    with pytest.raises(KeyError, match='made with distortion: cnn'):
        sim.load_state_dict(cnn.state_dict())


def test_proxy_is_numerically_stable_in_bf16(fitted_proxy, photo):
    proxy, _, _ = fitted_proxy
    x = rgb_to_tensor(photo)[None]
    with torch.no_grad():
        full = proxy(x, X264, torch.tensor([37.0]))
        half = proxy(x.bfloat16(), X264, torch.tensor([37.0]))
    assert half.dtype == torch.bfloat16 and np.isclose(mse(half.float(), full), 0.0, atol=1e-4)


def test_fidelity_reports_the_simulator_that_stage_2_trains_through(fitted_proxy, photos):
    """On a held-out photo the proxy's no-grad output (its conditional mean) is closer to X than the real decode;
    the drawn output, what stage 2 trains through, loses about what the decode loses, and fidelity reports it."""
    from vrpsr_plugin.evaluation.simulator_fidelity import _psnr, _simulate, fidelity, format_fidelity
    proxy, _, samples = fitted_proxy
    sim = rate_aware_simulator(samples)
    sim.distortion.load_state_dict(proxy.state_dict())
    report = fidelity(sim, [photos[2]], codecs=['libx264'], qps=[37], noise_qps=[37])
    drawn, noise = report['libx264']['drawn'][37], report['libx264']['noise'][37]
    real = encode(photos[2], 'libx264', qp=37)
    real_db, mean_db = (_psnr(photos[2], y) for y in (real.image, _simulate(sim, photos[2], 'libx264', real.bpp)))
    assert report['libx264']['psnr'][37]['identity_vs_real'] == pytest.approx(real_db)
    assert mean_db > real_db + 1 and abs(drawn - real_db) < 1
    assert noise['drawn_db'] != noise['sim_db'] and 'as stage 2 trains through it' in format_fidelity(report)
