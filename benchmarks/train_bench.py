"""Training benchmark: cost of the codec in the loop, and data-loading throughput with and without the codec bank.

    python benchmarks/train_bench.py [--runs 5] [--iters 6] [--size 64] [--batch 2] [--samples 8]

1. Seconds per iteration (median of ``--runs`` timed windows of ``--iters`` optimiser steps, after one warm-up
   step) and peak memory (CUDA: max allocated; CPU: peak RSS during the steps minus the RSS of the built model (Linux
   clear_refs): activations, gradients, optimiser state; each variant in its own process) of baseline fine-tuning (Delta_S(g(X~), X), ``codec_in_loop: false``) vs VRPSR
   (Delta_S(f(g(X~), c), f(X, c'))): same backbone (options/smoke's SRVGGNetCompact), batch, loss and
   discriminator. Ratio VRPSR / baseline.
2. Dataset samples per second for one worker (num_workers=0, as each DataLoader worker runs) per codec: the
   CodecSimulatorDataset encoding on the fly vs reading a prepared codec bank; median of ``--runs`` passes,
   ratio bank / on-the-fly. Data: the bundled real photos (demo_images).
"""
import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load_opt(option: str, size: int, batch: int, data: str) -> Dict:
    import yaml
    from basicsr.utils.options import ordered_yaml
    with open(REPO / 'options' / 'smoke' / option) as handle:
        opt = yaml.load(handle, Loader=ordered_yaml()[0])
    opt.update(is_train=True, dist=False, num_gpu=torch.cuda.device_count(), rank=0, world_size=1)
    opt['datasets']['train'].update(dataroot_gt=data, gt_size=size, phase='train')
    opt['train']['scheduler'] = {'type': 'constant', 'total_steps': 10 ** 6}
    return opt


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ':'))


def _reset_peak_rss() -> int:
    """Reset the peak RSS (Linux: clear_refs 5) and return the current RSS in KiB."""
    try:
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')
        return _status_kb('VmRSS')
    except OSError:  # not Linux: the lifetime peak is all we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss() -> int:
    try:
        return _status_kb('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _train_variant(option: str, sim_ckpt: str, data: str, size: int, batch: int, iters: int, runs: int,
                   queue: mp.Queue) -> None:
    """Child process: time optimize_parameters of one variant; report (median s/iter, peak MB)."""
    import vrpsr_plugin  # noqa: F401
    from basicsr.data import build_dataset
    from basicsr.models import build_model
    torch.manual_seed(0)
    opt = _load_opt(option, size, batch, data)
    if 'pretrain_network_sim' in opt['path']:
        opt['path']['pretrain_network_sim'] = sim_ckpt
        opt['path']['param_key_sim'] = 'params'
    dataset = build_dataset(opt['datasets']['train'])
    samples = [dataset[i % len(dataset)] for i in range(batch)]
    batch_data = {k: (torch.stack([s[k] for s in samples]) if torch.is_tensor(samples[0][k]) else
                      [s[k] for s in samples]) for k in samples[0]}
    model = build_model(opt)
    cuda = model.device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _reset_peak_rss()  # model and data built, no step taken yet
    model.feed_data(batch_data)
    model.optimize_parameters(1)  # warm-up (its allocations count towards the peak)
    times = []
    step = 2
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(iters):
            model.feed_data(batch_data)
            model.optimize_parameters(step)
            step += 1
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / iters)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if cuda
            else (_peak_rss() - rss0) / 1024)
    queue.put((statistics.median(times), peak, 'cuda' if cuda else 'cpu'))


def run_in_child(target, *args) -> tuple:
    """``target(*args, queue)`` in a fresh spawned process (its own peak memory); return what it put on the queue."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_training(args, tmp: Path, data: str) -> None:
    import vrpsr_plugin  # noqa: F401
    from basicsr.archs import build_network
    from basicsr.utils.options import ordered_yaml
    import yaml
    with open(REPO / 'options' / 'smoke' / 'vrpsr.yml') as handle:
        sim_opt = yaml.load(handle, Loader=ordered_yaml()[0])['network_sim']
    sim_ckpt = str(tmp / 'sim.pth')  # an (untrained) simulator checkpoint: cost does not depend on its weights
    torch.save({'params': build_network(sim_opt).state_dict()}, sim_ckpt)
    rows = {}
    for name, option in (('baseline fine-tuning', 'baseline.yml'), ('VRPSR (codec in the loop)', 'vrpsr.yml')):
        rows[name] = run_in_child(_train_variant, option, sim_ckpt, data, args.size, args.batch, args.iters, args.runs)
    device = next(iter(rows.values()))[2]
    print(f'\n[1] training step, SRVGGNetCompact (smoke size) + UNetDiscriminatorSN + Delta_S, batch {args.batch} x '
          f'{args.size}x{args.size}, device {device}, median of {args.runs} x {args.iters} steps')
    mem = 'peak CUDA MB' if device == 'cuda' else 'RSS growth MB'
    print(f'{"variant":<28}{"s/iter":>10}{mem:>16}')
    for name, (sec, peak, _) in rows.items():
        print(f'{name:<28}{sec:>10.4f}{peak:>16.1f}')
    (b_s, b_m, _), (v_s, v_m, _) = rows.values()
    print(f'ratio VRPSR / baseline: time {v_s / b_s:.2f}x, memory {v_m / b_m if b_m > 0 else float("nan"):.2f}x')


def bench_data(args, tmp: Path, data: str) -> None:
    from vrpsr_plugin.codecs import available_codecs
    from vrpsr_plugin.data.codec_bank import prepare_bank
    from vrpsr_plugin.data.codec_simulator_dataset import CodecSimulatorDataset
    codecs = [c for c in ('libx264', 'libx265', 'libvvenc') if c in available_codecs()]
    qps = [32, 37]
    t0 = time.perf_counter()
    prepare_bank(data, str(tmp / 'bank'), codecs, qps, crop=None, progress=False)
    prep = time.perf_counter() - t0
    print(f'\n[2] CodecSimulatorDataset, one worker, {args.size}x{args.size} crops of 96x96 photos, QPs {qps}; '
          f'bank prepared in {prep:.1f} s (all cores)')
    print(f'{"codec":<10}{"on the fly /s":>16}{"bank /s":>12}{"bank / fly":>12}')
    for codec in codecs:
        rates = {}
        for label, bank in (('fly', None), ('bank', str(tmp / 'bank'))):
            ds = CodecSimulatorDataset({'dataroot_gt': data, 'dataroot_bank': bank, 'io_backend': {'type': 'disk'},
                                        'codecs': [codec], 'qps': qps, 'gt_size': args.size, 'seed': 0})
            ds[0]  # warm-up (file client, codec route)
            passes = []
            for run in range(args.runs):
                start = time.perf_counter()
                for i in range(args.samples):
                    ds[run * args.samples + i]
                passes.append(args.samples / (time.perf_counter() - start))
            rates[label] = statistics.median(passes)
        print(f'{codec:<10}{rates["fly"]:>16.1f}{rates["bank"]:>12.1f}{rates["bank"] / rates["fly"]:>11.1f}x')


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--iters', type=int, default=6)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--samples', type=int, default=8, help='samples per timed data pass')
    args = parser.parse_args(argv)
    from vrpsr_plugin.data.demo_images import write_demo_images
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = str(tmp / 'photos')
        write_demo_images(data, size=96, per_photo=2)
        print(f'torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS")}')
        bench_training(args, tmp, data)
        bench_data(args, tmp, data)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
