"""The rate model R(X, q), its differentiable QP solve and the rate-aware simulator (beyond the paper)."""
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vrpsr_plugin.archs.rate_aware_simulator_arch import RateAwareCodecSimulator
from vrpsr_plugin.archs.rate_model import DCTRateModel, solve_qp
from vrpsr_plugin.codecs import CodecCondition, encode
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.models.rate_fit import collect_rate_samples, fit_rate_model, rate_errors

REPO = Path(__file__).resolve().parents[1]
X264 = torch.tensor([[1.0, 0.0, 0.0]])


@pytest.fixture(scope='module')
def fitted(photos):
    """A rate model fitted on real x264 encodes of 64/96-px crops of two photos (held out: the third)."""
    model = DCTRateModel(qp_range=(17, 51))
    samples = collect_rate_samples(photos[:2] * 3, ['libx264'], [17, 27, 37, 47], [64, 96], seed=0)
    errors = fit_rate_model(model, samples, steps=150)
    return model, errors


def test_rate_model_fits_real_encodes_and_generalises(fitted, photos):
    model, errors = fitted
    assert errors['count'] == 24 and errors['mean_rel_error'] < 0.15
    held_out = collect_rate_samples(photos[2:], ['libx264'], [22, 32, 42], [96], seed=1)
    assert rate_errors(model, held_out)['mean_rel_error'] < 0.3  # 2 photos to fit 4 params per frequency


def test_rate_falls_with_qp_grows_with_detail_and_refuses_other_qps(fitted, photo):
    model, _ = fitted
    x = rgb_to_tensor(photo)[None]
    with torch.no_grad():
        rates = [float(model(x, X264, torch.tensor([q]))) for q in (17.0, 27.5, 38.0, 51.0)]
        noisy = float(model((x + 0.03 * torch.randn_like(x)).clamp(0, 1), X264, torch.tensor([27.5])))
    assert rates == sorted(rates, reverse=True) and noisy > rates[1]
    with pytest.raises(ValueError, match='fitted on QP 17..51'):
        model(x, X264, torch.tensor([12.0]))


def test_solved_qp_hits_the_rate_and_its_gradient_is_the_implicit_one(fitted, photo):
    model, _ = fitted
    x = rgb_to_tensor(photo[:64, :64])[None].requires_grad_(True)
    with torch.no_grad():
        target = model(x, X264, torch.tensor([30.3]))
    q, reachable = solve_qp(model, x, X264, target)
    assert bool(reachable) and float(q.detach()) == pytest.approx(30.3, abs=1e-3)
    q.sum().backward()
    detail = x.detach() - torch.nn.functional.avg_pool2d(x.detach(), 3, 1, 1, count_include_pad=False)
    direction = detail  # sharpen/soften: a first-order move (random noise only adds bits, to second order)
    eps = 0.05
    with torch.no_grad():
        plus = solve_qp(model, x + eps * direction, X264, target)[0]
        minus = solve_qp(model, x - eps * direction, X264, target)[0]
    numeric = float(plus - minus) / (2 * eps)
    analytic = float((x.grad * direction).sum())
    assert analytic == pytest.approx(numeric, rel=0.1)
    out_of_reach, ok = solve_qp(model, x.detach(), X264, target * 100)
    assert not bool(ok) and float(out_of_reach) == pytest.approx(17.0, abs=1e-3)


def test_rate_aware_simulator_charges_costly_content(fitted, photo):
    """At a fixed bpp, noise raises the solved QP, and the gradient reaches X' through the rate."""
    model, _ = fitted
    sim = RateAwareCodecSimulator(num_feat=8, num_block=1, qp_range=(17, 51))
    sim.rate_model.load_state_dict(model.state_dict())
    sim.bpp_range.copy_(torch.tensor([0.05, 5.0]))
    x = rgb_to_tensor(photo[:64, :64])[None]
    cond = CodecCondition('libx264', encode(photo[:64, :64], 'libx264', qp=32).bpp).vector()[None]
    noisy = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        assert float(sim.solve_qp(noisy, cond)) > float(sim.solve_qp(x, cond)) + 1
    x.requires_grad_(True)
    sim.solve_qp(x, cond).sum().backward()
    assert x.grad.abs().sum() > 0  # the untrained D is the identity: this gradient is the rate path's
    with pytest.warns(RuntimeWarning, match='outside the range the simulator was fitted on'):
        sim(x.detach(), CodecCondition('libx264', 0.01).vector()[None])


def test_qp_hint_starts_find_qp_at_the_rate_models_qp(fitted, photos):
    """The rate model's q* as find_qp's first guess: fewer encodes, the same (closest) QP; None where unfitted."""
    from vrpsr_plugin.archs.rate_model import qp_hint
    from vrpsr_plugin.codecs import find_qp
    model, _ = fitted
    assert model.fitted_codecs == ('libx264',)  # the fit saw x264 only
    assert qp_hint(model, photos[2], 'libx265', 0.3) is None
    plain, hinted = [], []
    for image in photos[2:]:
        for target in (0.2, 0.5, 1.0):
            hint = qp_hint(model, image, 'libx264', target)
            a, b = find_qp(image, 'libx264', target), find_qp(image, 'libx264', target, first_qp=hint)
            assert a.qp == b.qp and abs(hint - a.qp) <= 2
            plain.append(a.num_encodes)
            hinted.append(b.num_encodes)
    assert sum(hinted) < sum(plain) and max(hinted) <= 3, (plain, hinted)
    # calibrated on a real encode (Eq. 2: X~ at its QP), the model's error on that picture cancels: on the
    # picture itself the guess is that QP exactly, wherever the uncalibrated q* lands
    plain_hits = 0
    for image in photos[2:]:
        for qp in (24, 33, 42):
            real = encode(image, 'libx264', qp=qp)
            assert qp_hint(model, image, 'libx264', real.bpp, reference=(image, qp, real.bpp)) == qp
            plain_hits += qp_hint(model, image, 'libx264', real.bpp) == qp
    assert plain_hits < 3  # the model fitted on two photos misses some of these by itself
    assert qp_hint(model, image, 'libx264', real.bpp, reference=(image, 60, real.bpp)) == \
        qp_hint(model, image, 'libx264', real.bpp)  # a reference outside the fitted QPs is not used
    again = DCTRateModel(qp_range=(17, 51))
    assert again.fitted_codecs == ()
    again.load_state_dict(model.state_dict())
    assert again.fitted_codecs == ('libx264',)  # known from the weights alone: older checkpoints too


def test_checkpoint_without_rate_model_fails_by_name():
    sim = RateAwareCodecSimulator(num_feat=8, num_block=1)
    state = {k: v for k, v in sim.state_dict().items() if not k.startswith('rate_model.')}
    with pytest.raises(KeyError, match='rate model'):
        sim.load_state_dict(state)
    with pytest.raises(ValueError, match='never fitted'):
        sim.load_state_dict(sim.state_dict())  # bpp_range still unset: no fit happened


def test_stage1_fits_then_trains_and_stage2_trains_through_it(tmp_path):
    """Smoke: train.py fits the rate model (logged), trains D; stage 2 loads the checkpoint (the fit kept)."""
    write_demo_images(tmp_path / 'datasets/demo/train', size=96, per_photo=1, names=['astronaut', 'coffee'])
    write_demo_images(tmp_path / 'datasets/demo/val', size=64, per_photo=1, names=['chelsea'])
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(tmp_path)}
    short = ['train:total_iter=3', 'train:scheduler:total_steps=3', 'logger:save_checkpoint_freq=3',
             'val:val_freq=3', 'datasets:train:batch_size_per_gpu=2', 'logger:print_freq=1']
    proc = subprocess.run([sys.executable, '-m', 'vrpsr_plugin.train', '-opt',
                           str(REPO / 'options/smoke/train_rate_simulator.yml'), '--force_yml', *short],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'rate model fitted on 20 real encodes of 2 crops' in log  # 2 photos x 2 codecs x 5 QPs
    checkpoint = tmp_path / 'experiments/smoke_train_rate_simulator/models/net_g_latest.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert torch.isfinite(state['params_ema']['bpp_range']).all() and state['arch']['type'] == 'RateAwareCodecSimulator'
    opt = yaml.safe_load((REPO / 'options/smoke/vrpsr.yml').read_text())
    opt['name'] = 'smoke_vrpsr_rate'
    opt['network_sim'] = dict(state['arch'])
    opt['path']['pretrain_network_sim'] = str(checkpoint)
    opt['train'].update(pre_codec_weight=1.0, supervision='clean')
    for split in ('train', 'val'):
        opt['datasets'][split].update(degradation_type='mild', degradation={})
    (tmp_path / 'stage2.yml').write_text(yaml.safe_dump(opt))
    proc = subprocess.run([sys.executable, '-m', 'vrpsr_plugin.train', '-opt', str(tmp_path / 'stage2.yml'),
                           '--force_yml', *short], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert (tmp_path / 'experiments/smoke_vrpsr_rate/models/net_g_latest.pth').is_file()
    totals = [float(v) for v in re.findall(r'l_total: ([-+0-9.e]+)', log)]
    anchors = [float(v) for v in re.findall(r'l_pre_codec: ([-+0-9.e]+)', log)]
    assert totals and np.isfinite(totals).all() and len(anchors) == len(totals) and all(a > 0 for a in anchors)


def test_stage1_with_the_dct_proxy_fits_saves_and_has_nothing_to_train(tmp_path):
    """``distortion: dct``: train.py fits the rate model and the proxy, validates and saves with total_iter 0; asking
    it to train is a clear error."""
    from vrpsr_plugin.inference import load_model
    write_demo_images(tmp_path / 'datasets/demo/train', size=96, per_photo=1, names=['astronaut', 'coffee'])
    write_demo_images(tmp_path / 'datasets/demo/val', size=64, per_photo=1, names=['chelsea'])
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(tmp_path)}

    def run(iters: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', 'vrpsr_plugin.train', '-opt',
                               str(REPO / 'options/smoke/train_rate_simulator.yml'), '--force_yml',
                               'network_g:distortion=dct', f'train:total_iter={iters}', 'val:val_freq=1',
                               'logger:save_checkpoint_freq=1'], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
    proc = run(0)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'quantisation proxy fitted on' in log and 'Validation demo_val' in log
    sim = load_model(str(tmp_path / 'experiments/smoke_train_rate_simulator/models/net_g_latest.pth'))
    assert float(sim.distortion.fitted) == 1.0 and sim.arch_spec['distortion'] == 'dct'
    proc = run(3)
    assert proc.returncode != 0 and 'set train.total_iter: 0' in proc.stdout + proc.stderr


def test_fidelity_of_an_identity_simulator_is_the_identity_row(photo):
    """The fidelity checks on the untrained CNN simulator (the identity): PSNR(simulator, real) equals the identity
    row at every QP, the bpp sweep loses nothing (infinite PSNR), and noise costs it something."""
    from vrpsr_plugin.archs.baseline_simulators_arch import CNNCodecSimulator
    from vrpsr_plugin.evaluation.simulator_fidelity import fidelity, format_fidelity
    report = fidelity(CNNCodecSimulator(num_feat=8, num_block=1), [photo[:64, :64]], codecs=['libx264'],
                      qps=[27, 37], noise_sigma=6.0, noise_qps=[37])
    row = report['libx264']
    assert all(v['sim_vs_real'] == pytest.approx(v['identity_vs_real']) for v in row['psnr'].values())
    assert row['rate'] is None and all(v == float('inf') for v in row['sweep']['psnr_vs_x'])
    assert row['noise'][37]['sim_db'] > 0 and 'noise (sigma 6) at the bpp of QP 37' in format_fidelity(report)
    assert row['noise'][37]['drawn_db'] == pytest.approx(row['noise'][37]['sim_db'])  # a CNN draws no noise
