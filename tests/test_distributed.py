"""DDP through BasicSR's launcher on CPUs (gloo): torchrun with 2 ranks of batch B reaches the weights of one
process with batch 2B; encoder threads per rank (vrpsr_plugin.distributed)."""
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import psutil
import pytest
import torch

from tests.conftest import REPO, crop
from vrpsr_plugin.data.demo_images import write_demo_images

OPTION = str(REPO / 'options' / 'smoke' / 'train_simulator.yml')
# 3 optimiser steps at a non-zero lr; LPIPS off: with lpips_pretrained_backbone false (offline smoke) each rank draws
# its own random LPIPS backbone (basicsr seeds rank r with manual_seed + r); the real pretrained LPIPS is the same
COMMON = ['train:total_iter=3', 'train:scheduler:total_steps=10', 'logger:save_checkpoint_freq=3',
          'logger:print_freq=1', 'val:val_freq=1000', 'logger:use_tb_logger=false',
          'train:perceptual_opt:lpips_weight=0']


class Hung(Exception):
    """A run still going after its time limit; the message holds the stack of every thread of its processes."""


def run(root, args, timeout=240):
    """Run ``python args`` (the ranks talk over the loopback interface). A run still going after ``timeout`` s
    raises :class:`Hung` with the stack of every thread of every process it started (faulthandler, on SIGABRT);
    they are killed."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(root),
           'GLOO_SOCKET_IFNAME': 'lo', 'PYTHONFAULTHANDLER': '1'}
    proc = subprocess.Popen([sys.executable, *args], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
        for process in tree:
            process.send_signal(signal.SIGABRT)
        psutil.wait_procs(tree, timeout=10)
        for process in tree:
            if process.is_running():
                process.kill()
        raise Hung(f'{args} still ran after {timeout} s; the stacks:\n{proc.communicate()[0][-12000:]}')
    assert proc.returncode == 0, out[-4000:]


def test_two_gloo_ranks_equal_one_process_with_the_double_batch(tmp_path):
    write_demo_images(tmp_path / 'datasets/demo/train', size=96, per_photo=1,
                      names=['astronaut', 'coffee', 'chelsea', 'rocket'])
    write_demo_images(tmp_path / 'datasets/demo/val', size=64, per_photo=1, names=['chelsea'])
    torchrun = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'vrpsr_plugin.train', '-opt',
           OPTION, '--launcher', 'pytorch', '--force_yml', 'name=ddp', 'datasets:train:batch_size_per_gpu=1', *COMMON]
    try:
        run(tmp_path, torchrun)
    except Hung as hang:  # seen once in CI: keep the stacks, try once more
        warnings.warn(str(hang))
        run(tmp_path, torchrun)
    run(tmp_path, ['-m', 'vrpsr_plugin.train', '-opt', OPTION,
                   '--force_yml', 'name=single', 'datasets:train:batch_size_per_gpu=2', *COMMON])
    for net, keys in (('net_g', ('params', 'params_ema')), ('net_d', ('params',))):
        ddp, single = (torch.load(tmp_path / f'experiments/{name}/models/{net}_3.pth', weights_only=True)
                       for name in ('ddp', 'single'))
        for key in keys:
            for name, tensor in single[key].items():
                torch.testing.assert_close(ddp[key][name], tensor, atol=1e-5, rtol=0)
        if net == 'net_g':  # the weights moved (EMA lags them), so the comparison covers training
            assert any(not torch.equal(t, single['params_ema'][n]) for n, t in single['params'].items())


def test_encoder_threads_per_rank(monkeypatch, photo):
    """VRPSR_CODEC_THREADS reaches the encoder (ffmpeg -threads, PyAV thread_count) and changes no bit; a bad
    value is an error naming the variable."""
    from vrpsr_plugin.codecs import encode, ffmpeg_route
    image = crop(photo, 64)
    default = {route: encode(image, 'libx265', qp=32, route=route) for route in ('ffmpeg', 'pyav')}
    calls = []
    real_run = ffmpeg_route.run_ffmpeg
    monkeypatch.setattr(ffmpeg_route, 'run_ffmpeg', lambda ffmpeg, args, *rest: calls.append(args) or
                        real_run(ffmpeg, args, *rest))
    monkeypatch.setenv('VRPSR_CODEC_THREADS', '1')
    for route, ref in default.items():
        got = encode(image, 'libx265', qp=32, route=route)
        assert got.num_bytes == ref.num_bytes and np.array_equal(got.image, ref.image)
    assert any(args[args.index('-threads') + 1] == '1' for args in calls if '-threads' in args)
    monkeypatch.setenv('VRPSR_CODEC_THREADS', 'all')
    with pytest.raises(ValueError, match='VRPSR_CODEC_THREADS'):
        encode(image, 'libx265', qp=32, route='ffmpeg')
