"""Training runs that end and resume (issue 16 items 3, 4, 7, 8 and the double final validation of item 12):
exact resume mid-epoch with EMA, discriminator and scheduler; fallback from a truncated state; atomic checkpoint
writes; clean start-up errors that leave no folders; option paths under $VRPSR_ROOT."""
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import REPO
from vrpsr_plugin import basicsr_fixes, train as train_entry
from vrpsr_plugin.data.demo_images import write_demo_images

SIMULATOR = REPO / 'options' / 'smoke' / 'train_simulator.yml'
# 3 images, batch 1: 3 iterations per epoch, so iterations 2 and 4 are mid-epoch; a checkpoint every iteration
TINY = ['train:scheduler:total_steps=5', 'logger:save_checkpoint_freq=1', 'logger:print_freq=1', 'val:val_freq=5',
        'datasets:train:batch_size_per_gpu=1', 'datasets:train:gt_size=32']


def train(root: Path, name: str, total_iter: int, auto_resume: bool = False) -> str:
    args = [sys.executable, '-m', 'vrpsr_plugin.train', '-opt', str(SIMULATOR), '--force_yml', f'name={name}',
            f'train:total_iter={total_iter}', *TINY] + (['--auto_resume'] if auto_resume else [])
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(root)}
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def assert_same_run(root: Path, a: str, b: str, it: int) -> None:
    """Networks (params, EMA, discriminator), optimisers and schedulers of runs a and b equal at iteration it."""
    for net in ('net_g', 'net_d'):
        x = torch.load(root / f'experiments/{a}/models/{net}_{it}.pth', weights_only=True)
        y = torch.load(root / f'experiments/{b}/models/{net}_{it}.pth', weights_only=True)
        assert x.keys() == y.keys()
        for key in x:
            if key == 'arch':  # the net's arch spec, not weights
                assert x[key] == y[key]
                continue
            for param, tensor in x[key].items():
                assert torch.equal(tensor, y[key][param]), (net, key, param)
    sa, sb = (torch.load(root / f'experiments/{n}/training_states/{it}.state', weights_only=False) for n in (a, b))
    assert sa['schedulers'] == sb['schedulers'] and sa['epoch'] == sb['epoch']
    for oa, ob in zip(sa['optimizers'], sb['optimizers']):
        for key, state in oa['state'].items():
            assert all(torch.equal(v, ob['state'][key][k]) for k, v in state.items())


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('resume')
    write_demo_images(root / 'datasets/demo/train', size=64, per_photo=1, names=['astronaut', 'coffee', 'rocket'])
    write_demo_images(root / 'datasets/demo/val', size=48, per_photo=1, names=['chelsea'])
    root.joinpath('straight.log').write_text(train(root, 'straight', 5))
    root.joinpath('resumed.log').write_text(train(root, 'resumed', 2) + train(root, 'resumed', 5, True))
    return root


def test_resume_is_exact_mid_epoch(runs):
    """Stopped at iteration 2 (mid epoch 0) and resumed: the networks (with EMA and the discriminator),
    optimisers and cosine scheduler equal the straight run's bit for bit, at every iteration."""
    for it in range(1, 6):
        assert_same_run(runs, 'straight', 'resumed', it)
    log = (runs / 'resumed.log').read_text()
    assert 'Resuming training from epoch: 0, iter: 2.' in log
    straight = (runs / 'straight.log').read_text()
    pattern = r'\[epoch:\s+(\d+), iter:\s+(\d+), lr:\(([^)]*)\)\].* l_total: (\S+)'
    assert re.findall(pattern, log) == re.findall(pattern, straight)  # epochs, lrs and losses line by line
    assert [e for e, *_ in re.findall(pattern, straight)] == ['0', '0', '0', '1', '1']
    state = torch.load(runs / 'experiments/resumed/training_states/4.state', weights_only=False)
    assert {'python', 'numpy', 'torch', 'cuda'} <= set(state['rng'])


def test_last_iteration_is_validated_once(runs):
    log = (runs / 'straight.log').read_text()
    assert len(re.findall(r'Validation demo_val @ iter 5:', log)) == 1


def test_truncated_newest_state_falls_back_to_the_previous_one(runs):
    """A second resume, mid epoch 1, from the state before a truncated newest one: still exact."""
    states = runs / 'experiments/resumed/training_states'
    newest = states / '5.state'
    newest.write_bytes(newest.read_bytes()[:200])
    log = train(runs, 'resumed', 5, auto_resume=True)
    assert re.search(r"WARNING: cannot load training state '[^']*5\.state'.*falling back", log)
    assert 'Resuming training from epoch: 1, iter: 4.' in log
    assert_same_run(runs, 'straight', 'resumed', 5)  # iteration 5 trained again from 4, identically


class _Interrupted(KeyboardInterrupt):
    pass


def test_only_rank_0_writes_checkpoints(tmp_path, monkeypatch):
    """Under DDP every rank calls save(); as in basicsr only rank 0 writes (the atomic replacements keep that)."""
    import basicsr.utils.dist_util as dist_util
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    models.mkdir()
    states.mkdir()
    model = types.SimpleNamespace(opt={'path': {'models': str(models), 'training_states': str(states)}},
                                  get_bare_model=lambda net: net, optimizers=[], schedulers=[])
    monkeypatch.setattr(dist_util, 'get_dist_info', lambda: (1, 2))
    basicsr_fixes.save_network(model, nn.Conv2d(3, 3, 3), 'net_g', 7)
    basicsr_fixes.save_training_state(model, 0, 7)
    assert os.listdir(models) == [] and os.listdir(states) == []
    monkeypatch.setattr(dist_util, 'get_dist_info', lambda: (0, 2))
    basicsr_fixes.save_network(model, nn.Conv2d(3, 3, 3), 'net_g', 7)
    basicsr_fixes.save_training_state(model, 0, 7)
    assert os.listdir(models) == ['net_g_7.pth'] and os.listdir(states) == ['7.state']


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A write killed half-way leaves the previous complete file (or none) under the final name, never a
    truncated one, and no temporary file (basicsr writes in place, retries, then only logs)."""
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    models.mkdir()
    states.mkdir()
    model = types.SimpleNamespace(opt={'path': {'models': str(models), 'training_states': str(states)}},
                                  get_bare_model=lambda net: net, optimizers=[], schedulers=[])
    net = nn.Conv2d(3, 3, 3)
    basicsr_fixes.save_network(model, net, 'net_g', 7)
    good = (models / 'net_g_7.pth').read_bytes()
    real_save = torch.save

    def dies_half_way(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(100)
        raise _Interrupted

    monkeypatch.setattr(torch, 'save', dies_half_way)
    with torch.no_grad():
        net.weight.add_(1)
    for call in (lambda: basicsr_fixes.save_network(model, net, 'net_g', 7),
                 lambda: basicsr_fixes.save_network(model, net, 'net_g', 8),
                 lambda: basicsr_fixes.save_training_state(model, 0, 8)):
        with pytest.raises(_Interrupted):
            call()
    assert sorted(os.listdir(models)) == ['net_g_7.pth'] and os.listdir(states) == []
    assert (models / 'net_g_7.pth').read_bytes() == good


def test_relative_option_paths_resolve_under_vrpsr_root(tmp_path, monkeypatch):
    """Stage 2's ``pretrain_network_sim: experiments/...`` finds stage 1 under $VRPSR_ROOT from any directory."""
    root, elsewhere = tmp_path / 'root', tmp_path / 'elsewhere'
    (root / 'experiments/sim/models').mkdir(parents=True)
    (root / 'experiments/sim/models/net_g_latest.pth').write_bytes(b'x')
    (elsewhere / 'weights').mkdir(parents=True)
    (elsewhere / 'weights/local.pth').write_bytes(b'x')
    monkeypatch.chdir(elsewhere)
    path = {'pretrain_network_sim': 'experiments/sim/models/net_g_latest.pth', 'pretrain_network_g': 'weights/local.pth',
            'pretrain_network_d': str(tmp_path / 'abs.pth'), 'resume_state': None, 'strict_load_g': True}
    monkeypatch.setenv('VRPSR_ROOT', str(root))
    opt = {'path': dict(path)}
    basicsr_fixes.resolve_option_paths(opt, str(root))
    assert opt['path']['pretrain_network_sim'] == str(root / 'experiments/sim/models/net_g_latest.pth')
    assert opt['path']['pretrain_network_g'] == 'weights/local.pth'  # found only relative to the working directory
    assert opt['path']['pretrain_network_d'] == str(tmp_path / 'abs.pth')
    monkeypatch.delenv('VRPSR_ROOT')
    opt = {'path': dict(path)}
    basicsr_fixes.resolve_option_paths(opt, str(root))
    assert opt['path'] == path  # without VRPSR_ROOT, basicsr's behaviour (relative to the working directory)


@pytest.fixture
def in_process_train(tmp_path, monkeypatch):
    """Run ``train.py`` in this process (fast) with $VRPSR_ROOT = tmp_path; restores the signal handlers."""
    import signal
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    write_demo_images(tmp_path / 'datasets/demo/train', size=48, per_photo=1, names=['astronaut', 'coffee'])
    write_demo_images(tmp_path / 'datasets/demo/val', size=48, per_photo=1, names=['chelsea'])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('VRPSR_ROOT', str(tmp_path))

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', *args])
        for handler in logging.getLogger('basicsr').handlers:  # basicsr's console handler: this test's stderr
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr
        return train_entry.main()

    yield run
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize('case,args,message', [
    ('bad YAML', ['bad.yml'], 'mapping values are not allowed'),
    ('missing dataroot', [str(SIMULATOR), '--force_yml', 'datasets:train:dataroot_gt=nowhere'],
     "dataroot_gt 'nowhere' is not a folder"),
    ('unknown arch', [str(SIMULATOR), '--force_yml', 'network_g:type=NoSuchNet'],
     "No object named 'NoSuchNet' found in 'arch' registry"),
    ('missing model', [str(SIMULATOR), '--force_yml', 'path:pretrain_network_g=missing.pth'],
     'checkpoint not found: '),
    ('corrupt checkpoint', [str(SIMULATOR), '--force_yml', 'path:pretrain_network_g=corrupt.pth'],
     "cannot read checkpoint '.*corrupt.pth' \\(corrupt, truncated or not a checkpoint\\): not a PyTorch"),
    ('unknown option key', [str(SIMULATOR), '--force_yml', 'nokey:x=1'], "the option file has no 'nokey' entry"),
])
def test_failed_start_is_one_error_line_and_leaves_no_folders(in_process_train, tmp_path, capsys, case, args,
                                                               message):
    (tmp_path / 'bad.yml').write_text('name: x\n  bad: [\n')
    (tmp_path / 'corrupt.pth').write_bytes(b'junk\n')
    assert in_process_train(*args) == 2, case
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'error' in line.lower()]
    assert len(lines) == 1 and lines[0].startswith('train.py: error: ') and re.search(message, err), err
    assert 'Traceback' not in err and 'weights_only' not in err
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'tb_logger').exists()
