"""SIGTERM / SIGINT to a running command never orphan its ffmpeg children (issue 16 item 1).

ffmpeg runs in its own session (so a timeout can kill its whole group); Python's default SIGTERM action ended the
command at once and left it running. The codec layer's ``$VRPSR_FFMPEG`` points here to a stand-in that lists
the encoders and then hangs in an encode, recording its pid, so the test knows exactly which child to look for.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from vrpsr_plugin.atomic_io import write_png
from vrpsr_plugin.data.demo_images import write_demo_images

HUNG_FFMPEG = '''#!/bin/sh
for a in "$@"; do
  if [ "$a" = -encoders ]; then
    echo " V....D libx264 H.264"; echo " V....D libx265 H.265"; echo " V....D libvvenc H.266"; exit 0
  fi
done
echo $$ >> "$HUNG_FFMPEG_PIDS"
exec sleep 300
'''


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not running
        with open(f'/proc/{pid}/stat') as handle:
            return handle.read().split(')')[-1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def start(tmp_path: Path, args: list, children: int = 1) -> tuple:
    fake = tmp_path / 'ffmpeg'
    fake.write_text(HUNG_FFMPEG)
    fake.chmod(0o755)
    pids = tmp_path / 'ffmpeg.pids'
    env = {**os.environ, 'VRPSR_FFMPEG': str(fake), 'HUNG_FFMPEG_PIDS': str(pids), 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': str(REPO), 'VRPSR_ROOT': str(tmp_path)}
    # SIGINT as in a terminal, even where pytest itself inherited it ignored (a shell's background job)
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (pids.exists() and len(pids.read_text().split()) >= children):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f'ffmpeg never started:\n{proc.communicate()[0][-3000:]}')
        time.sleep(0.2)
    return proc, pids


def stop(proc: subprocess.Popen, pids: Path, signum: int) -> str:
    """Send ``signum`` while ffmpeg hangs; the command must exit promptly and no ffmpeg may survive."""
    children = [int(p) for p in pids.read_text().split()]
    assert all(alive(pid) for pid in children)
    proc.send_signal(signum)
    try:
        out = proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    survivors = [pid for pid in children if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f'ffmpeg children {survivors} outlived the command:\n{out[-3000:]}'
    assert proc.returncode == 128 + signum, out[-3000:]
    return out


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_vrpsr_compress_kills_its_ffmpeg(tmp_path, photo, signum):
    write_png(tmp_path / 'in.png', photo)
    proc, pids = start(tmp_path, ['-m', 'vrpsr_plugin.cli', 'compress', 'in.png', 'out.png', '--codec', 'libvvenc',
                                  '--qp', '32'])
    out = stop(proc, pids, signum)
    assert 'vrpsr compress: ' in out and not (tmp_path / 'out.png').exists()


@pytest.mark.parametrize('workers', [0, 1])
def test_training_kills_its_ffmpeg(tmp_path, workers):
    """In the training process itself, and in a DataLoader worker (torch's worker SIGTERM handler exits at once)."""
    write_demo_images(tmp_path / 'datasets/demo/train', size=48, per_photo=1, names=['astronaut', 'coffee'])
    write_demo_images(tmp_path / 'datasets/demo/val', size=48, per_photo=1, names=['chelsea'])
    proc, pids = start(tmp_path, ['-m', 'vrpsr_plugin.train', '-opt', str(REPO / 'options/smoke/train_simulator.yml'),
                                  '--force_yml', "datasets:train:codecs=['libvvenc']", 'datasets:train:gt_size=32',
                                  f'datasets:train:num_worker_per_gpu={workers}'])
    out = stop(proc, pids, signal.SIGTERM)
    assert 'train.py: terminated' in out


def test_vrpsr_eval_workers_kill_their_ffmpeg(tmp_path, photo):
    """With --workers 2 each pool worker runs an ffmpeg; SIGTERM to the command stops the workers first."""
    (tmp_path / 'data').mkdir()
    for name, top in (('a', 0), ('b', 40)):
        write_png(tmp_path / f'data/{name}.png', photo[top:top + 64, :64])
    proc, pids = start(tmp_path, ['-m', 'vrpsr_plugin.cli', 'eval', '--data', 'data', '--models', 'identity',
                                  '--out', 'out', '--codecs', 'libvvenc', '--qps', '32', '--size', '32',
                                  '--metrics', 'psnr', '--fid', 'off', '--workers', '2', '--no-progress'], children=2)
    assert 'vrpsr eval: terminated' in stop(proc, pids, signal.SIGTERM)


def children_of(pid: int) -> list:
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as handle:
                    if int(handle.read().split(')')[-1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def test_main_job_stops_its_training(tmp_path):
    """The main job's training subprocess gets SIGTERM (and so kills its own ffmpeg), not SIGKILL or nothing."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen([sys.executable, '-m', 'vrpsr_plugin.main_job', '--out', str(tmp_path / 'job'),
                             '--scale-iters', '0.001'], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not children_of(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f'no training started:\n{proc.communicate()[0][-3000:]}')
        time.sleep(0.2)
    training = children_of(proc.pid)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    survivors = [pid for pid in training if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors and proc.returncode == 128 + signal.SIGTERM and 'main_job: terminated' in out, out[-3000:]


SWALLOWING_WORKER = '''
import os, sys, time
from vrpsr_plugin.commands import stop_with_parent
stop_with_parent(os.getppid())
while True:
    try:
        print('ready', flush=True)
        time.sleep(60)
    except BaseException:  # as a process pool's worker loop does with an error between its tasks
        pass
'''


def test_a_worker_that_swallows_the_termination_still_exits():
    """A worker (``stop_with_parent``) whose code catches the SIGTERM exception exits WORKER_EXIT_GRACE s later."""
    from vrpsr_plugin.commands import WORKER_EXIT_GRACE
    proc = subprocess.Popen([sys.executable, '-c', SWALLOWING_WORKER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, 'PYTHONPATH': str(REPO)})
    try:
        assert proc.stdout.readline().strip() == 'ready'
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WORKER_EXIT_GRACE + 30) == 128 + signal.SIGTERM
        assert time.monotonic() - start >= WORKER_EXIT_GRACE - 1  # it did unwind first: the exception was caught
    finally:
        proc.kill()
        proc.wait()
