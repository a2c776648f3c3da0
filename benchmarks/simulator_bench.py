"""Speed and memory of every codec simulator (Table 6 set + the diffusion simulator of Eq. 5).

For each simulator and image size: median forward ms (eval, no grad), median forward+backward ms with the
simulator frozen and the gradient taken w.r.t. the input (how the SR model trains through it, §3.3.3), and peak
memory of the forward+backward (CUDA: max_memory_allocated; CPU: peak RSS growth via /proc/self/status). Ratios
are against CNNCodecSimulator measured in the same run.

    python benchmarks/simulator_bench.py                 # CPU: tiny random diffusion config + baselines
    python benchmarks/simulator_bench.py --full --device cuda --autocast bf16   # SD-Turbo-sized, random weights
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

import vrpsr_plugin  # noqa: F401  (registers the archs)
from vrpsr_plugin.archs.baseline_simulators_arch import CNNCodecSimulator, DiffJPEGSimulator, HyperpriorSimulator
from vrpsr_plugin.archs.diffusion_simulator_arch import DiffusionCodecSimulator
from vrpsr_plugin.archs.tiny_sd import build_sd_folder
from vrpsr_plugin.codecs.condition import CodecCondition


def _proc_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def peak_memory_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Peak memory growth of one call of ``fn`` in MiB."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
    with open('/proc/self/clear_refs', 'w') as f:  # resets VmHWM to the current RSS
        f.write('5')
    start = _proc_kib('VmRSS')
    fn()
    return (_proc_kib('VmHWM') - start) / 1024


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench(sim: torch.nn.Module, size: int, batch: int, device: torch.device, repeats: int) -> Dict[str, float]:
    sim.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(device)
    cond = CodecCondition.collate([CodecCondition('libx264', 0.2)] * batch).to(device)

    def forward() -> None:
        with torch.no_grad():
            sim(x, cond)

    def forward_backward() -> None:
        xg = x.clone().requires_grad_(True)
        sim(xg, cond).mean().backward()

    return dict(fwd=median_ms(forward, device, repeats), fwd_bwd=median_ms(forward_backward, device, repeats),
                mem=peak_memory_mib(forward_backward, device))


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--full', action='store_true', help="SD-Turbo-sized diffusion config (random weights)")
    parser.add_argument('--autocast', default=None, choices=['bf16', 'fp16'])
    parser.add_argument('--gradient-checkpointing', action='store_true')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = 'full' if args.full else 'tiny'
    print(f'device {device} ({torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}), '
          f'torch threads {torch.get_num_threads()}, batch {args.batch}, median of {args.repeats}, '
          f'diffusion config {config}, autocast {args.autocast}, checkpointing {args.gradient_checkpointing}')
    with tempfile.TemporaryDirectory() as tmp:
        path = build_sd_folder(os.path.join(tmp, config), config)
        torch.manual_seed(0)
        sims = {'CNNCodecSimulator': CNNCodecSimulator(), 'DiffJPEGSimulator': DiffJPEGSimulator(),
                'HyperpriorSimulator': HyperpriorSimulator(),
                f'DiffusionCodecSimulator[{config}]': DiffusionCodecSimulator(
                    path, autocast_dtype=args.autocast, gradient_checkpointing=args.gradient_checkpointing)}
    for size in args.sizes:
        results = {name: bench(sim.to(device), size, args.batch, device, args.repeats) for name, sim in sims.items()}
        ref = results['CNNCodecSimulator']
        print(f'\n{size}x{size}')
        print(f'{"simulator":34s} {"fwd ms":>9s} {"x CNN":>7s} {"fwd+bwd ms":>11s} {"x CNN":>7s} {"peak MiB":>9s}')
        for name, r in results.items():
            print(f'{name:34s} {r["fwd"]:9.1f} {r["fwd"] / ref["fwd"]:7.2f} {r["fwd_bwd"]:11.1f} '
                  f'{r["fwd_bwd"] / ref["fwd_bwd"]:7.2f} {r["mem"]:9.1f}')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
