"""The two-stage training (§3.3) through BasicSR's train pipeline on small real photos (CPU).

Each smoke option runs in a subprocess through ``python -m vrpsr_plugin.train`` with ``VRPSR_ROOT`` = a temporary
folder, so experiments, logs and tensorboard files stay out of the repository.
"""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml

from tests.conftest import REPO
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.models.vrpsr_model import real_codec

SMOKE = REPO / 'options' / 'smoke'


def train(root: Path, option: str, *force: str, auto_resume: bool = False) -> str:
    """Run one smoke option through BasicSR's train pipeline in ``root``; return its log."""
    args = [sys.executable, '-m', 'vrpsr_plugin.train', '-opt', str(SMOKE / option)]
    if force:
        args += ['--force_yml', *force]
    if auto_resume:
        args.append('--auto_resume')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(root)}
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def losses(log: str, name: str = 'l_total') -> List[float]:
    return [float(v) for v in re.findall(rf'{name}: ([-+0-9.e]+)', log)]


def short(iters: int, name: str) -> List[str]:
    return [f'name={name}', f'train:total_iter={iters}', f'train:scheduler:total_steps={iters}',
            'logger:save_checkpoint_freq=2', 'logger:print_freq=1', f'val:val_freq={iters}',
            'datasets:train:batch_size_per_gpu=1', 'datasets:train:dataroot_gt=datasets/demo/one']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    """Demo photos + a 4-iteration stage-1 simulator (the checkpoint stage 2 starts from)."""
    root = tmp_path_factory.mktemp('train')
    write_demo_images(root / 'datasets/demo/train', size=96, per_photo=1, names=['astronaut', 'coffee'])
    write_demo_images(root / 'datasets/demo/val', size=64, per_photo=1, names=['chelsea'])
    write_demo_images(root / 'datasets/demo/one', size=96, per_photo=1, names=['rocket'])
    root.joinpath('sim.log').write_text(train(root, 'train_simulator.yml', *short(4, 'smoke_train_simulator')))
    return root


def load_opt(option: str, **train_updates) -> Dict:
    with open(SMOKE / option) as handle:
        opt = yaml.load(handle, Loader=ordered_yaml()[0])
    opt.update(is_train=True, dist=False, num_gpu=0, rank=0, world_size=1, auto_resume=False)
    opt['train'].update(train_updates)
    opt.pop('network_d', None)
    opt['train'].pop('optim_d', None)
    opt['train']['perceptual_opt']['gan_weight'] = 0  # no discriminator: a fixed batch must see its loss fall
    return opt


def test_simulator_stage(workdir):
    log = (workdir / 'sim.log').read_text()
    values = losses(log)
    assert len(values) == 4 and all(map(lambda v: v == v and abs(v) < 1e3, values))
    assert re.search(r'Validation demo_val @ iter \d+: .*psnr_libx264: [0-9.]+', log)
    models = workdir / 'experiments/smoke_train_simulator/models'
    assert {'net_g_4.pth', 'net_d_4.pth', 'net_g_latest.pth'} <= set(os.listdir(models))
    assert any((workdir / 'tb_logger/smoke_train_simulator').iterdir())  # tensorboard events


def test_stage2_frozen_simulator_and_identical_resume(workdir):
    straight = train(workdir, 'vrpsr.yml', *short(4, 'vrpsr_a'))
    train(workdir, 'vrpsr.yml', *short(4, 'vrpsr_b'), 'train:total_iter=2')
    resumed = train(workdir, 'vrpsr.yml', *short(4, 'vrpsr_b'), auto_resume=True)
    assert 'Resuming training from epoch' in resumed and 'iter: 2' in resumed
    assert all(map(lambda v: v == v, losses(straight)))
    assert re.search(r'Validation demo_val @ iter \d+: bpp: [0-9.]+, lpips: [0-9.]+, psnr: [0-9.]+', straight)
    a = torch.load(workdir / 'experiments/vrpsr_a/models/net_g_4.pth', map_location='cpu')
    b = torch.load(workdir / 'experiments/vrpsr_b/models/net_g_4.pth', map_location='cpu')
    for key in ('params', 'params_ema'):
        for name, tensor in a[key].items():
            assert torch.allclose(tensor, b[key][name], atol=1e-6, rtol=0), (key, name)
    start = torch.load(workdir / 'experiments/smoke_train_simulator/models/net_g_latest.pth',
                       map_location='cpu')['params_ema']
    sim = torch.load(workdir / 'experiments/vrpsr_a/models/net_sim_4.pth', map_location='cpu')['params']
    assert start.keys() == sim.keys() and all(torch.equal(start[k], sim[k]) for k in start)
    g0 = a['params']['body.0.weight']
    assert not torch.equal(g0, torch.load(workdir / 'experiments/vrpsr_a/models/net_g_2.pth')['params']['body.0.weight'])
    # degrade_on: model (the batch degraded and encoded by the model) trains the same net at batch 1
    train(workdir, 'vrpsr.yml', *short(4, 'vrpsr_c'), 'datasets:train:degrade_on=model')
    c = torch.load(workdir / 'experiments/vrpsr_c/models/net_g_4.pth', map_location='cpu')
    for name, tensor in a['params'].items():
        assert torch.allclose(tensor, c['params'][name], atol=1e-6, rtol=0), name


@pytest.mark.parametrize('option', ['baseline.yml', 'vrpsr_post_joint.yml'])
def test_other_smoke_options(workdir, option):
    name = option[:-4]
    log = train(workdir, option, *short(2, name))
    assert len(losses(log)) == 2 and all(map(lambda v: v == v, losses(log)))
    models = set(os.listdir(workdir / f'experiments/{name}/models'))
    assert 'net_g_2.pth' in models
    assert ('net_sim_2.pth' in models) == (option != 'baseline.yml')  # the baseline has no codec in the loop
    if option == 'vrpsr_post_joint.yml':
        assert 'net_sr_2.pth' in models


def _batch(opt):
    dataset_opt = dict(opt['datasets']['train'], dataroot_gt='datasets/demo/one', phase='train')
    sample = build_dataset(dataset_opt)[0]
    return {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in sample.items()}


@pytest.mark.parametrize('seed', [0, 1])
def test_losses_decrease_on_a_fixed_batch(workdir, monkeypatch, seed):
    monkeypatch.chdir(workdir)
    for option in ('train_simulator.yml', 'vrpsr.yml'):
        opt = load_opt(option, total_iter=12, scheduler={'type': 'constant', 'total_steps': 12})
        if option == 'train_simulator.yml':
            opt['datasets']['train']['dataroot_gt'] = 'datasets/demo/one'
        opt['path']['pretrain_network_sim'] = 'experiments/smoke_train_simulator/models/net_g_latest.pth'
        torch.manual_seed(seed)
        model = build_model(opt)
        batch = _batch(opt)
        values = []
        for it in range(1, 13):
            model.feed_data(batch)
            model.optimize_parameters(it)
            values.append(float(model.log_dict['l_total']))
        assert all(map(lambda v: v == v, values))
        assert sum(values[-3:]) / 3 < 0.9 * values[0], (option, values)


def test_ste_forward_is_the_real_codec_and_gradient_the_simulator(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    for rate in ('qp', 'find_qp'):
        opt = load_opt('vrpsr.yml', ste=True, ste_rate=rate)
        opt['path']['pretrain_network_sim'] = 'experiments/smoke_train_simulator/models/net_g_latest.pth'
        model = build_model(opt)
        model.feed_data(_batch(opt))
        x_prime = model.sr_forward(model.net_g)
        out = model.through_codec(x_prime)
        if rate == 'qp':
            real, _ = real_codec(x_prime, model.codecs, qps=model.qps)
        else:
            real, _ = real_codec(x_prime, model.codecs, bpps=model.cond[:, -1])
        assert torch.allclose(out, real, atol=1e-6)  # Eq. 8: forward value = real codec output
        sim = model.net_sim(x_prime, model.cond)
        assert not torch.allclose(sim, real, atol=1e-3)
        out.mean().backward()
        grad = model.net_g.body[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0  # gradient through the simulator
        assert all(p.grad is None for p in model.net_sim.parameters())


@pytest.mark.parametrize('gan_on', ['codec_output', 'sr_output'])
def test_discriminator_judges_the_image_gan_on_names(workdir, monkeypatch, gan_on):
    """gan_on: codec_output (Eq. 3) gives the discriminator f(g(X~), c); sr_output gives it g(X~, c) itself, for
    the generator's term and the discriminator's fake term alike."""
    monkeypatch.chdir(workdir)
    opt = load_opt('vrpsr.yml', gan_on=gan_on, scheduler={'type': 'constant', 'total_steps': 4})
    with open(SMOKE / 'vrpsr.yml') as handle:
        smoke = yaml.load(handle, Loader=ordered_yaml()[0])
    opt['network_d'], opt['train']['optim_d'] = smoke['network_d'], smoke['train']['optim_d']
    opt['train']['perceptual_opt']['gan_weight'] = 0.1
    opt['path']['pretrain_network_sim'] = 'experiments/smoke_train_simulator/models/net_g_latest.pth'
    model = build_model(opt)
    seen = []
    model.net_d.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    model.feed_data(_batch(opt))
    model.optimize_parameters(1)
    fake = model.x_prime if gan_on == 'sr_output' else model.output
    other = model.output if gan_on == 'sr_output' else model.x_prime
    assert len(seen) == 3 and not torch.allclose(fake, other, atol=1e-4)
    assert torch.equal(seen[0], fake.detach()) and torch.equal(seen[2], fake.detach())  # generator, D fake
    assert torch.equal(seen[1], model.target())  # D real: the target X_s
    opt['train']['gan_on'] = 'decoded'
    with pytest.raises(ValueError, match='gan_on'):
        build_model(opt)
    if gan_on == 'sr_output':  # with a post net, g's output is not what the viewer sees: refused, not ignored
        post = load_opt('vrpsr_post_joint.yml', gan_on=gan_on)
        with pytest.raises(ValueError, match="judges h's output"):
            build_model(post)


def test_gradient_accumulation_steps_every_n(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    opt = load_opt('vrpsr.yml', accumulate_grad_batches=2, scheduler={'type': 'constant', 'total_steps': 4})
    opt['logger']['save_checkpoint_freq'] = 4
    opt['path']['pretrain_network_sim'] = 'experiments/smoke_train_simulator/models/net_g_latest.pth'
    model = build_model(opt)
    batch = _batch(opt)
    before = model.net_g.body[0].weight.detach().clone()
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert torch.equal(before, model.net_g.body[0].weight) and model.net_g.body[0].weight.grad is not None
    model.feed_data(batch)
    model.optimize_parameters(2)
    assert not torch.equal(before, model.net_g.body[0].weight) and model.net_g.body[0].weight.grad is None
    opt['logger']['save_checkpoint_freq'] = 3
    with pytest.raises(ValueError, match='multiple of'):
        build_model(opt)


def test_post_processing_modes_and_joint_simulator(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    sim = 'experiments/smoke_train_simulator/models/net_g_latest.pth'
    sr_opt = load_opt('vrpsr_post_joint.yml')['network_sr']
    torch.save({'params': build_network(sr_opt).state_dict()}, workdir / 'sr.pth')
    for mode in ('post_only', 'sr_then_post', 'joint'):
        opt = load_opt('vrpsr_post_joint.yml', mode=mode, scheduler={'type': 'constant', 'total_steps': 4})
        opt['path'].update(pretrain_network_sim=sim, pretrain_network_sr='sr.pth')
        model = build_model(opt)
        batch = _batch(opt)
        h0 = [p.detach().clone() for p in model.net_g.parameters()]
        sr0 = None if model.net_sr is None else [p.detach().clone() for p in model.net_sr.parameters()]
        model.feed_data(batch)
        model.optimize_parameters(1)
        assert any(not torch.equal(a, b) for a, b in zip(h0, model.net_g.parameters())), mode  # h always trains
        if mode == 'post_only':
            assert model.net_sr is None
        else:
            changed = any(not torch.equal(a, b) for a, b in zip(sr0, model.net_sr.parameters()))
            assert changed == (mode == 'joint'), mode
    opt = load_opt('vrpsr_post_joint.yml', mode='joint', sr_lr=1e-5, scheduler={'type': 'constant', 'total_steps': 4})
    opt['path'].update(pretrain_network_sim=sim, pretrain_network_sr='sr.pth')
    model = build_model(opt)  # the pre-trained g gets its own learning rate, h keeps optim_g's
    groups = model.optimizer_g.param_groups
    assert [g['lr'] for g in groups] == [opt['train']['optim_g']['lr'], 1e-5]
    assert {id(p) for p in groups[1]['params']} == {id(p) for p in model.net_sr.parameters()}
    assert not {id(p) for p in groups[0]['params']} & {id(p) for p in groups[1]['params']}
    opt = load_opt('vrpsr_post_joint.yml', mode='sr_then_post')
    opt['path'].update(pretrain_network_sim=sim)
    with pytest.raises(ValueError, match='pretrain_network_sr'):
        build_model(opt)
    opt = load_opt('vrpsr.yml', joint=True, scheduler={'type': 'constant', 'total_steps': 4})
    opt['path']['pretrain_network_sim'] = sim
    model = build_model(opt)
    before = [p.detach().clone() for p in model.net_sim.parameters()]
    model.feed_data(_batch(opt))
    model.optimize_parameters(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_sim.parameters()))  # Table 5: joint


def test_test_pipeline_runs_vrpsr_model_and_saves_images(tmp_path):
    """``vrpsr_plugin/test.py`` with ``model_type: VRPSRModel`` (no ``train`` section) validates through the real
    codec and writes X' and the recompressed image of every test image (val.save_img)."""
    write_demo_images(tmp_path / 'datasets/demo/val', size=64, per_photo=1, names=['chelsea'])
    with open(SMOKE / 'test_vrpsr.yml') as handle:
        net_opt = yaml.load(handle, Loader=ordered_yaml()[0])['network_g']
    net = build_network(net_opt)
    models = tmp_path / 'experiments/smoke_vrpsr/models'
    models.mkdir(parents=True)
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, models / 'net_g_latest.pth')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(tmp_path)}
    proc = subprocess.run([sys.executable, '-m', 'vrpsr_plugin.test', '-opt', str(SMOKE / 'test_vrpsr.yml')],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r'Validation demo_val .*bpp: [0-9.]+, lpips: [0-9.]+, psnr: [0-9.]+', log), log[-2000:]
    folder = tmp_path / 'results/smoke_test_vrpsr/visualization/demo_val'
    names = sorted(p.name for p in folder.glob('*.png'))
    assert len(names) == 2 and names[0].endswith('_recompressed.png') and names[1].endswith('_sr.png'), names


def _main_job_option(name):
    return yaml.safe_load((REPO / 'options' / 'main_job' / f'{name}.yml').read_text())


@pytest.mark.parametrize('suffix', ['', '_gan'])
def test_main_job_pairs_differ_only_by_the_codec_in_the_loop(suffix):
    """VRPSR and its non-aware baseline: same net, data, losses, optimiser, steps and seed (the ablation)."""
    aware, plain = _main_job_option(f'vrpsr{suffix}'), _main_job_option(f'baseline{suffix}')
    assert aware.pop('name') == f'main_vrpsr{suffix}' and plain.pop('name') == f'main_baseline{suffix}'
    assert aware.pop('network_sim')['type'] == 'RateAwareCodecSimulator'
    for key in ('pretrain_network_sim', 'param_key_sim'):
        aware['path'].pop(key)
    assert aware['train'].pop('codec_in_loop') and not plain['train'].pop('codec_in_loop')
    assert aware['train'].pop('condition_embedding') and not plain['train'].pop('condition_embedding')
    aware['train'].pop('pre_codec_weight')
    assert aware == plain


def test_main_job_reports_the_encodes_per_rate_match(tmp_path):
    """The mean find_qp encodes per codec over every evaluation's items; the identity's (X' = X~) left out."""
    import json

    from vrpsr_plugin.main_job import rate_match_cost
    rows = [('sr', 'baseline', 'libx264', 2), ('sr', 'vrpsr', 'libx264', 3), ('sr', 'identity', 'libx264', 1),
            ('gan', 'baseline_gan', 'libx265', 2)]
    for i, (run, method, codec, encodes) in enumerate(rows):
        file = tmp_path / run / 'cache' / 'items' / method / codec / 'qp27' / f'{i}.json'
        file.parent.mkdir(parents=True)
        file.write_text(json.dumps({'method': method, 'codec': codec, 'num_encodes': encodes}))
    line = rate_match_cost([tmp_path / 'sr', tmp_path / 'gan'])
    assert 'libx264 2.50 encodes per call (2 calls)' in line and 'libx265 2.00 encodes per call (1 calls)' in line


def test_main_job_gan_pair_adds_only_the_discriminator():
    for name in ('vrpsr', 'baseline'):
        gan, mse = _main_job_option(f'{name}_gan'), _main_job_option(name)
        assert gan.pop('network_d')['type'] == 'UNetDiscriminatorSN' and gan['train'].pop('optim_d')
        assert gan['train'].pop('perceptual_opt')['gan_weight'] > 0 and mse['train'].pop('perceptual_opt')['mse_only']
        assert gan.pop('name') == mse.pop('name') + '_gan' and gan == mse
    sr_side, codec_side = _main_job_option('vrpsr_gan_sr'), _main_job_option('vrpsr_gan')
    assert sr_side['train'].pop('gan_on') == 'sr_output' and 'gan_on' not in codec_side['train']
    assert sr_side.pop('name') == codec_side.pop('name') + '_sr' and sr_side == codec_side
