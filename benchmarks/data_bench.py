"""Data throughput per CPU core at the paper's 512x512 crops (issue 12.6), for each training stage and codec.

Samples/second of one DataLoader worker on one core (torch and the encoders limited to one thread each, as
``vrpsr_plugin.distributed`` does per rank), median of ``--runs`` passes of ``--samples`` samples:

- stage 1, ``CodecSimulatorDataset`` encoding on the fly (crop, codec at a grid QP, decode);
- stage 1, the same dataset reading a prepared codec bank (``vrpsr prepare-bank``);
- stage 2, ``RecompressionSRDataset``: Real-ESRGAN's degradation chain plus two real encodes (X~ at q, X at q-10).

The encodes use the paper options' encoder profile (``--profile``, default 'authors'). Sources: scikit-image's
photos resized to 640x640 (real photos; the crops are 512x512). The last lines print the cores needed to feed
``--need`` samples/s (a GPU's consumption: its steps/s x per-GPU batch).

    python benchmarks/data_bench.py [--runs 3] [--samples 3] [--need 8]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

os.environ.setdefault('VRPSR_CODEC_THREADS', '1')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(make: Callable[[], object], runs: int, samples: int) -> float:
    """Median samples/s of ``runs`` passes over fresh indices (one warm-up sample first); NaN (error printed)
    when the dataset cannot be built."""
    try:
        dataset = make()
    except Exception as err:  # e.g. a bank layout the dataset does not read: report it, measure the rest
        print(f'cannot build the dataset: {type(err).__name__}: {err}', file=sys.stderr)
        return float('nan')
    dataset[0]
    passes = []
    for run in range(runs):
        start = time.perf_counter()
        for i in range(samples):
            dataset[1 + run * samples + i]
        passes.append(samples / (time.perf_counter() - start))
    return statistics.median(passes)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--samples', type=int, default=3)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--profile', default='authors')
    parser.add_argument('--need', type=float, default=8.0, help='samples/s one GPU consumes')
    args = parser.parse_args(argv)
    import cv2
    import torch
    import vrpsr_plugin  # noqa: F401
    import basicsr  # noqa: F401  (registers the plugin)
    from skimage import data as skdata
    from vrpsr_plugin.atomic_io import write_png
    from vrpsr_plugin.codecs import available_codecs
    from vrpsr_plugin.data.codec_bank import prepare_bank
    from vrpsr_plugin.data.codec_simulator_dataset import CodecSimulatorDataset
    from vrpsr_plugin.data.recompression_sr_dataset import RecompressionSRDataset
    torch.set_num_threads(1)
    codecs = [c for c in ('libx264', 'libx265', 'libvvenc') if c in available_codecs()]
    encode_kwargs = {'profile': args.profile} if args.profile else {}
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / 'photos'
        for name in ('astronaut', 'coffee', 'chelsea', 'rocket'):
            side = args.size + 128
            write_png(photos / f'{name}.png', cv2.resize(getattr(skdata, name)()[..., :3], (side, side),
                                                         interpolation=cv2.INTER_AREA))
        grid = [17, 22, 27, 32, 37, 42, 47]
        start = time.perf_counter()
        prepare_bank(str(photos), str(Path(tmp) / 'bank'), codecs, grid, progress=False, profile=args.profile)
        bank_s = time.perf_counter() - start
        common = {'dataroot_gt': str(photos), 'io_backend': {'type': 'disk'}, 'gt_size': args.size, 'seed': 0,
                  'encode_kwargs': encode_kwargs}
        rows: Dict[str, Dict[str, float]] = {}
        for codec in codecs:
            rows[codec] = {
                'stage 1 on the fly': rate(lambda: CodecSimulatorDataset({**common, 'codecs': [codec], 'qps': grid}),
                                           args.runs, args.samples),
                'stage 1 bank': rate(lambda: CodecSimulatorDataset({**common, 'codecs': [codec], 'qps': grid,
                                                                    'dataroot_bank': str(Path(tmp) / 'bank')}),
                                     args.runs, args.samples),
                'stage 2 (degrade + 2 encodes)': rate(
                    lambda: RecompressionSRDataset({**common, 'codecs': [codec], 'qp_range': [27, 42],
                                                    'target_qp_offset': 10, 'scale': 1, 'degradation': {}}),
                    args.runs, args.samples),
            }
    print(f'{args.size}x{args.size} crops, one core per worker (torch 1 thread, VRPSR_CODEC_THREADS='
          f'{os.environ["VRPSR_CODEC_THREADS"]}), profile {args.profile!r}, median of {args.runs} x {args.samples} '
          f'samples; bank of 4 photos x {len(codecs)} codecs x {len(grid)} QPs built in {bank_s:.1f} s')
    columns = list(next(iter(rows.values())))
    print(f'{"codec":<10}' + ''.join(f'{c:>32}' for c in columns))
    for codec, row in rows.items():
        print(f'{codec:<10}' + ''.join(f'{row[c]:>28.2f} /s ' for c in columns))
    print(f'cores to feed {args.need:g} samples/s (one GPU), per stage and codec:')
    for codec, row in rows.items():
        print(f'{codec:<10}' + ''.join(f'{args.need / row[c]:>31.1f} ' for c in columns))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
