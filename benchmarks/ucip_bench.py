"""UCIPNet vs CodecAwareRRDBNet: forward time and parameter count, measured in the same run.

    python benchmarks/ucip_bench.py [--out-size 256] [--scales 4 1] [--runs 5] [--device auto]

Both nets at their paper scale (UCIP: C=128, 6 PTMBs x 6 PTMMs, 8 prompts, seed 003 §4; Real-ESRGAN's RRDBNet:
23 RRDBs, 64 features), both codec-conditioned and given the same B x 4 condition, batch 1, output
``out-size`` x ``out-size`` (input out-size / scale), no_grad, eval mode. Runs of the two nets are interleaved
(A, B, A, B, ...) after one warm-up each, so load from other processes hits both alike; printed: median ms of
``--runs`` and the ratio UCIP / RRDB. Falls back to basicsr's RRDBNet (unconditioned, same options) if
CodecAwareRRDBNet is not registered, and says so.
"""
import argparse
import statistics
import time
from typing import Callable, List, Tuple

import torch

import vrpsr_plugin  # noqa: F401  (first: CPU compat for torchvision/basicsr; registers the archs)
from basicsr.archs import build_network  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402
from vrpsr_plugin.codecs.condition import CodecCondition  # noqa: E402

UCIP_OPTIONS = dict(embed_dim=128, num_blocks=6, num_layers=6, num_prompts=8, mlp_ratio=4.0, num_feat=64,
                    codec_conditioned=True)
RRDB_OPTIONS = dict(num_feat=64, num_block=23, num_grow_ch=32)


def reference_net(scale: int) -> Tuple[torch.nn.Module, str, bool]:
    """CodecAwareRRDBNet when registered, else basicsr's RRDBNet; returns (net, label, reads cond)."""
    if 'CodecAwareRRDBNet' in ARCH_REGISTRY:
        return build_network({'type': 'CodecAwareRRDBNet', 'scale': scale, **RRDB_OPTIONS}), 'CodecAwareRRDBNet', True
    return (build_network({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': scale, **RRDB_OPTIONS}),
            'RRDBNet (CodecAwareRRDBNet not registered)', False)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_ms(fns: List[Callable[[], torch.Tensor]], runs: int, device: torch.device) -> List[List[float]]:
    """One warm-up per function, then ``runs`` rounds calling each function once per round; ms per call."""
    times: List[List[float]] = [[] for _ in fns]
    with torch.no_grad():
        for fn in fns:
            fn()
        for _ in range(runs):
            for i, fn in enumerate(fns):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[i].append(1000.0 * (time.perf_counter() - start))
    return times


def count(net: torch.nn.Module) -> float:
    return sum(p.numel() for p in net.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-size', type=int, default=256, help='output height and width')
    parser.add_argument('--scales', type=int, nargs='+', default=[4, 1])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda'")
    args = parser.parse_args()
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto'
                          else args.device)
    print(f'device={device} torch={torch.__version__} threads={torch.get_num_threads()} runs={args.runs} '
          f'(median ms, batch 1, no_grad)', flush=True)
    cond = CodecCondition.collate([CodecCondition('libx265', 0.1)]).to(device)
    for scale in args.scales:
        if args.out_size % scale:
            raise SystemExit(f'--out-size {args.out_size} is not divisible by scale {scale}')
        torch.manual_seed(0)
        ucip = build_network({'type': 'UCIPNet', 'scale': scale, **UCIP_OPTIONS}).to(device).eval()
        rrdb, label, rrdb_cond = reference_net(scale)
        rrdb = rrdb.to(device).eval()
        size = args.out_size // scale
        x = torch.rand(1, 3, size, size, device=device)
        ucip_ms, rrdb_ms = interleaved_ms([lambda: ucip(x, cond), lambda: rrdb(x, cond) if rrdb_cond else rrdb(x)],
                                          args.runs, device)
        u, r = statistics.median(ucip_ms), statistics.median(rrdb_ms)
        print(f'scale x{scale}: input {size}x{size} -> output {args.out_size}x{args.out_size}')
        print(f'  UCIPNet            {u:10.1f} ms  {count(ucip):6.2f} M params')
        print(f'  {label:18s} {r:10.1f} ms  {count(rrdb):6.2f} M params')
        print(f'  ratio UCIP/RRDB    time x{u / r:.2f}   params x{count(ucip) / count(rrdb):.2f}', flush=True)


if __name__ == '__main__':
    main()
