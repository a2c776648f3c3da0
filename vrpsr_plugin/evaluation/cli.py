"""``vrpsr eval``: the rate-matched recompression benchmark of §4.1 (see docs/evaluation.md)."""
import argparse
import contextlib
from pathlib import Path

import torch

from vrpsr_plugin.engine import Engine, add_engine_arguments
from vrpsr_plugin.evaluation.bdrate import METHODS
from vrpsr_plugin.evaluation.degrade import DEGRADATION_KINDS, DegradationConfig
from vrpsr_plugin.evaluation.metric_suite import FID_MODES, METRICS, MetricSuite
from vrpsr_plugin.evaluation.protocol import EvalConfig, Protocol, default_loader, parse_models
from vrpsr_plugin.evaluation.run import evaluate, run_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vrpsr eval``."""
    parser.add_argument('--data', required=True, type=Path, help='folder of test images (e.g. Kodak)')
    parser.add_argument('--models', required=True, nargs='+', metavar='NAME=PATH',
                        help='methods: NAME=checkpoint (.pth), BasicSR option (.yml) or save_pretrained folder; '
                             '"identity" = no SR (bicubic). The first is the baseline unless --baseline')
    parser.add_argument('--out', required=True, type=Path, help='results folder (its cache/ makes runs resumable)')
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265', 'libvvenc'])
    parser.add_argument('--qps', nargs='+', type=int, default=[27, 32, 37, 42], help='source QPs (Table 1)')
    parser.add_argument('--crf', nargs='*', type=int, default=[], help='source CRFs (Table S4), e.g. 26 28 32 36')
    parser.add_argument('--size', type=int, default=512, help='center-crop size of the clean image X')
    parser.add_argument('--scale', type=int, default=None, help='SR scale (default: the models\'; 1 for identity)')
    parser.add_argument('--baseline', default=None, help='method the BD-rates and t-tests compare against')
    parser.add_argument('--post', nargs='+', default=[], metavar='NAME=PATH',
                        help='post-processing net h applied after the codec for method NAME (§3.4, Eq. 9)')
    parser.add_argument('--degradation', choices=DEGRADATION_KINDS, default='realesrgan',
                        help="X~: Real-ESRGAN's first-order chain, or 'mild' (light blur/noise/JPEG, as the "
                             "datasets' degradation_type: mild)")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--tile', type=int, default=0, help='restore in tiles of this size (0 = whole image)')
    parser.add_argument('--metrics', nargs='+', default=list(METRICS), choices=METRICS)
    parser.add_argument('--lpips-weights', default=None, help='torchvision AlexNet file (alexnet-owt-7be5be79.pth)')
    parser.add_argument('--dists-weights', nargs='+', default=[], metavar='PATH',
                        help='dists_weights.pt [and vgg16-397923af.pth]')
    parser.add_argument('--fid-weights', default=None, help='pt_inception-2015-12-05-6726825d.pth')
    parser.add_argument('--fid', choices=FID_MODES, default='patch', help='patch-FID (default), full FID or off')
    parser.add_argument('--fid-patch', type=int, default=None, help='patch size (default min(256, size/2))')
    parser.add_argument('--bd-method', choices=METHODS, default='pchip', help='BD-rate interpolation')
    parser.add_argument('--color-fix', action='store_true',
                        help='also report metrics after an AdaIN colour fix applied after the codec')
    parser.add_argument('--simulator', default=None, help='also evaluate this codec simulator (Table 3, left)')
    parser.add_argument('--rate-model', default=None, metavar='SIM.pth',
                        help='a RateAwareCodecSimulator checkpoint whose rate model guesses each rate match\'s '
                             'first QP (fewer encodes, same results)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (1 is often fastest on a busy machine: small convolutions); '
                             'each worker\'s (default 1) with --workers > 1 or --engine ray')
    add_engine_arguments(parser, default_workers='1 with --engine local (this process), the cluster\'s CPUs '
                                                 'with --engine ray')
    parser.add_argument('--no-progress', action='store_true')


def run(args: argparse.Namespace) -> int:
    """Run or resume the benchmark and print where the results are."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f'--threads must be >= 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    sharded = args.engine == 'ray' or (args.workers or 1) > 1  # else: every item in this process
    with Engine(args.engine, args.workers, args.address) if sharded else contextlib.nullcontext() as engine:
        cfg = EvalConfig(data=args.data, out=args.out, models=parse_models(args.models), codecs=args.codecs,
                         qps=args.qps, crfs=args.crf, size=args.size, scale=args.scale, baseline=args.baseline,
                         device=args.device, tile=args.tile, color_fix=args.color_fix, bd_method=args.bd_method,
                         degradation=DegradationConfig(kind=args.degradation), post=parse_models(args.post),
                         rate_model=args.rate_model)
        suite_kwargs = dict(names=args.metrics, device=args.device, lpips_weights=args.lpips_weights,
                            dists_weights=args.dists_weights, fid_weights=args.fid_weights, fid_mode=args.fid,
                            fid_patch=args.fid_patch or min(256, args.size // 2))
        suite = MetricSuite.load(**suite_kwargs)
        for name, reason in suite.unavailable.items():
            print(f'[vrpsr eval] {name} unavailable: {reason}')
        protocol = Protocol.from_config(cfg, suite)
        simulator = default_loader(args.simulator, args.device).eval() if args.simulator else None
        if engine is not None:
            run_shards(protocol, engine, suite_kwargs, args.threads or 1, progress=not args.no_progress)
        evaluate(protocol, simulator, progress=not args.no_progress)
    print(f'[vrpsr eval] wrote {args.out / "results.md"}, results.json, per_image.csv and rd_*.png')
    return 0
