"""Sharded `vrpsr prepare-bank` / `vrpsr eval` on the local process pool and on Ray (one shared local Ray cluster,
num_cpus=2): same bytes / numbers as the in-process run, resume after a killed worker or driver, no leftover
temporary files, no orphaned worker, and a clear message where Ray is not installed."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from vrpsr_plugin.cli import main as vrpsr_main
from vrpsr_plugin.data.codec_bank import CodecBank, prepare_bank
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.engine import Engine

REPO = Path(__file__).resolve().parents[1]
BANK = dict(codecs=['libx264', 'libx265'], qps=[27, 37], crop=32, shard_size=1, progress=False)


@pytest.fixture(scope='module')
def ray_cluster():
    """One local Ray cluster for the module (2 CPUs, no dashboard); the engine joins it."""
    ray = pytest.importorskip('ray')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp('demo')
    write_demo_images(folder, size=96, per_photo=1, names=['astronaut', 'coffee', 'chelsea'])
    return folder


@pytest.fixture(scope='module')
def reference_bank(demo, tmp_path_factory):
    """The bank built in this process (local engine, 1 worker)."""
    out = tmp_path_factory.mktemp('ref') / 'bank'
    prepare_bank(str(demo), str(out), workers=1, **BANK)
    return out


def tree(root: Path) -> dict:
    """relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def temp_files(root: Path) -> list:
    return [p for p in root.rglob('*.tmp')]


def test_reference_bank_reads_back(reference_bank, demo):
    bank = CodecBank(str(reference_bank))
    assert len(bank.keys) == 27 and bank.missing(BANK['codecs'], BANK['qps']) == []  # 3 images x 9 tiles
    image, record = bank.coded('coffee_00_s002', 'libx265', 37)
    assert image.shape == bank.gt('coffee_00_s002').shape == (32, 32, 3)
    assert record['bpp'] == 8 * record['num_bytes'] / 32 ** 2 and record['qp'] == 37
    with pytest.raises(KeyError, match='not in bank'):
        bank.gt('nope')


def test_bank_on_ray_is_byte_identical(ray_cluster, demo, reference_bank, tmp_path):
    out = tmp_path / 'bank'
    prepare_bank(str(demo), str(out), workers=2, engine='ray', **BANK)
    assert tree(out) == tree(reference_bank)


def worker_running(engine: str, tasks: tuple = ('_encode_shard',)):
    """A worker process of ``engine`` running one of ``tasks`` (Ray titles its workers ``ray::<task>``); pool
    workers are this process's spawned children."""
    if engine == 'ray':
        titles = tuple(f'ray::{task}' for task in tasks)
        procs = psutil.process_iter(['cmdline'])
        return next((p for p in procs if ' '.join(p.info['cmdline'] or ()).startswith(titles)), None)
    procs = psutil.Process().children()
    return next((p for p in procs if 'spawn_main' in ' '.join(p.cmdline())), None)


class KillOneWorker(threading.Thread):
    """Background thread: SIGKILL the first worker found running one of ``tasks`` once ``ready()``; ``pid`` says
    which."""

    def __init__(self, engine: str, ready, tasks: tuple = ('_encode_shard',)) -> None:
        super().__init__()
        self.engine, self.ready, self.tasks, self.pid, self.stop = engine, ready, tasks, None, False

    def run(self) -> None:
        deadline = time.time() + 120
        while self.pid is None and not self.stop and time.time() < deadline:
            proc = worker_running(self.engine, self.tasks) if self.ready() else None
            if proc is not None:
                os.kill(proc.pid, signal.SIGKILL)
                self.pid = proc.pid
            time.sleep(0.005)

    def __enter__(self) -> 'KillOneWorker':
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.join()


@pytest.mark.parametrize('engine', [pytest.param('local', marks=pytest.mark.slow), 'ray'])
def test_worker_killed_mid_run_is_retried(engine, request, demo, reference_bank, tmp_path):
    """SIGKILL one worker while the encode shards run: the engine re-runs its task; the bank is complete and the
    same as the in-process one, with no temporary file left."""
    if engine == 'ray':
        request.getfixturevalue('ray_cluster')
    out = tmp_path / 'bank'
    with KillOneWorker(engine, lambda: list(out.glob('gt/*.json'))) as killer:
        prepare_bank(str(demo), str(out), workers=2, engine=engine, **BANK)
    assert killer.pid is not None, f'no {engine} worker was seen running a shard'
    assert tree(out) == tree(reference_bank) and not temp_files(out)


@pytest.mark.slow
def test_local_pool_driver_killed_then_resumed(demo, reference_bank, tmp_path):
    """SIGKILL `vrpsr prepare-bank` (2 pool workers) mid-run: its workers die with it; the re-run completes the
    same bank without redoing finished shards and leaves no temporary file."""
    out = tmp_path / 'bank'
    cmd = [sys.executable, '-m', 'vrpsr_plugin.cli', 'prepare-bank', str(demo), str(out), '--codecs',
           *BANK['codecs'], '--qps', *map(str, BANK['qps']), '--crop', '32', '--shard-size', '1', '--workers', '2',
           '--no-progress']
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(out.glob('libx26*/qp*/*.json')) and time.time() < deadline:
            time.sleep(0.02)
        workers = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    done = {p: p.stat().st_mtime_ns for p in out.glob('libx26*/qp*/*.json')}
    assert done and len(done) < 12  # killed mid-run: some encode shards complete, not all
    gone, alive = psutil.wait_procs(workers, timeout=60)  # one may still be importing torch (slow when loaded)
    assert workers and not alive, f'pool workers outlived the driver: {alive}'
    prepare_bank(str(demo), str(out), workers=1, **BANK)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished shards are not redone
    assert tree(out) == tree(reference_bank) and not temp_files(out)


@pytest.mark.slow
def test_eval_on_ray_with_a_killed_worker_equals_in_process(ray_cluster, tmp_path, photos):
    import cv2
    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    data = tmp_path / 'data'
    data.mkdir()
    for name, image in zip(('astronaut', 'coffee'), photos):
        cv2.imwrite(str(data / f'{name}.png'), image[..., ::-1])
    torch.manual_seed(0)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'params': SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict()}, ckpt)
    args = ['eval', '--data', str(data), '--models', f'tiny={ckpt}', 'identity', '--codecs', 'libx264', '--qps',
            '30', '38', '--size', '96', '--metrics', 'psnr', 'ssim', '--threads', '1', '--no-progress']
    outputs = {}
    for tag, extra in (('in_process', []), ('ray', ['--engine', 'ray', '--workers', '2'])):
        with KillOneWorker(tag, lambda: tag == 'ray', ('_source_task', '_item_task')) as killer:  # Ray re-runs it
            assert vrpsr_main(args + ['--out', str(tmp_path / tag)] + extra) == 0
        outputs[tag] = {f: (tmp_path / tag / f).read_bytes() for f in ('results.json', 'per_image.csv', 'results.md')}
        assert not temp_files(tmp_path / tag)
    assert killer.pid is not None, 'no Ray worker was seen running an eval task'
    for name, data in outputs['ray'].items():
        assert data == outputs['in_process'][name], name
    assert b'tiny' in outputs['ray']['per_image.csv']


def test_engine_errors_are_clear():
    with pytest.raises(ValueError, match='engine must be one of'):
        Engine('dask')
    with pytest.raises(ValueError, match='needs --engine ray'):
        Engine('local', address='auto')
    with pytest.raises(ValueError, match='workers must be >= 1'):
        Engine('local', workers=0)


@pytest.mark.slow
def test_without_ray_installed(demo, reference_bank, tmp_path):
    """A Python where `import ray` fails: the commands work on the local engine; --engine ray says how to install."""
    run = ('import sys; sys.modules["ray"] = None\n'  # import ray -> ImportError, as when it is not installed
           'from vrpsr_plugin.cli import main; sys.exit(main(sys.argv[1:]))')
    args = [sys.executable, '-c', run, 'prepare-bank', str(demo), str(tmp_path / 'bank'), '--codecs',
            *BANK['codecs'], '--qps', *map(str, BANK['qps']), '--crop', '32', '--shard-size', '1', '--no-progress']
    proc = subprocess.run(args + ['--workers', '1'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tree(tmp_path / 'bank') == tree(reference_bank)
    proc = subprocess.run(args + ['--engine', 'ray'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('vrpsr prepare-bank: error: --engine ray needs Ray, which is not installed: '
                                   'pip install "vrpsr_plugin[cluster]" (or pip install "ray>=2.9")')
