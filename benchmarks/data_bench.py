"""Data throughput per CPU core at the paper's 512x512 crops (issue 12.6), for each training stage and codec.

Samples/second of one DataLoader worker on one core (torch and the encoders limited to one thread each, as
``vrpsr_plugin.distributed`` does per rank), median of ``--runs`` passes of ``--samples`` samples:

- stage 1, ``CodecSimulatorDataset`` encoding on the fly (crop, codec at a grid QP, decode);
- stage 1, the same dataset reading a prepared codec bank (``vrpsr prepare-bank``);
- stage 2, ``RecompressionSRDataset``: Real-ESRGAN's degradation chain plus two real encodes (X~ at q, X at q-10);
- stage 2 with ``degrade_on: model``: what is left in the worker (crop, the encode of X at q-10), and, per codec,
  what the model's process then does per sample: the encode of X~ at q (``--batch`` encodes at a time on
  ``--encode-cores``, reported per core).

Then the Real-ESRGAN degradation of a batch of ``--batch`` crops on the model's device (CUDA when present, else
this CPU with all its threads), with our ``SeparableUSMSharp`` and, as the reference measured in the same run, with
BasicSR's ``USMSharp``: samples/s and their ratio.

The encodes use the paper options' encoder profile (``--profile``, default 'authors'). Sources: scikit-image's
photos resized to 640x640 (real photos; the crops are 512x512). The last lines print the cores needed to feed
``--need`` samples/s (a GPU's consumption: its steps/s x per-GPU batch).

    python benchmarks/data_bench.py [--runs 3] [--samples 3] [--need 8] [--batch 8] [--codecs libx264 ...]
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


def batch_rate(work: Callable[[int], object], runs: int, batch: int) -> float:
    """Median samples/s of ``runs`` calls ``work(run)`` that each handle ``batch`` samples (one warm-up call)."""
    work(-1)
    passes = []
    for run in range(runs):
        start = time.perf_counter()
        work(run)
        passes.append(batch / (time.perf_counter() - start))
    return statistics.median(passes)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--samples', type=int, default=3)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--profile', default='authors')
    parser.add_argument('--need', type=float, default=8.0, help='samples/s one GPU consumes')
    parser.add_argument('--batch', type=int, default=8, help='batch of the model-side degradation and encodes')
    parser.add_argument('--encode-cores', type=int, default=1, help='cores for the model-side encodes')
    parser.add_argument('--codecs', nargs='+', help='default: x264, x265 and vvenc where available')
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
    from vrpsr_plugin.data.degradation import HighOrderDegradation, seeded
    from vrpsr_plugin.data.recompression_sr_dataset import DegradeAndEncode, RecompressionSRDataset
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    codecs = [c for c in (args.codecs or ('libx264', 'libx265', 'libvvenc')) if c in available_codecs()]
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
        stage2 = {**common, 'qp_range': [27, 42], 'target_qp_offset': 10, 'scale': 1, 'degradation': {},
                  'encode_workers': args.encode_cores}
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        complete = DegradeAndEncode(stage2, device)
        crops = torch.stack([RecompressionSRDataset({**stage2, 'degrade_on': 'model', 'codecs': codecs})[i]['gt']
                             for i in range(args.batch)]).to(device)
        lq = complete.degrade(crops, [0])
        qps = [27 + 15 * i // max(1, args.batch - 1) for i in range(args.batch)]
        for codec in codecs:
            rows[codec] = {
                'stage 1 on the fly': rate(lambda: CodecSimulatorDataset({**common, 'codecs': [codec], 'qps': grid}),
                                           args.runs, args.samples),
                'stage 1 bank': rate(lambda: CodecSimulatorDataset({**common, 'codecs': [codec], 'qps': grid,
                                                                    'dataroot_bank': str(Path(tmp) / 'bank')}),
                                     args.runs, args.samples),
                'stage 2 (degrade + 2 encodes)': rate(lambda: RecompressionSRDataset({**stage2, 'codecs': [codec]}),
                                                      args.runs, args.samples),
                'stage 2 worker, degrade_on model': rate(
                    lambda: RecompressionSRDataset({**stage2, 'codecs': [codec], 'degrade_on': 'model'}),
                    args.runs, args.samples),
                'stage 2 model-side encode of X~': batch_rate(
                    lambda run: complete.encode(lq, [codec] * args.batch, qps), args.runs, args.batch
                ) / args.encode_cores,
            }
    print(f'{args.size}x{args.size} crops, one core per worker (torch 1 thread, VRPSR_CODEC_THREADS='
          f'{os.environ["VRPSR_CODEC_THREADS"]}), profile {args.profile!r}, median of {args.runs} x {args.samples} '
          f'samples; bank of 4 photos x {len(codecs)} codecs x {len(grid)} QPs built in {bank_s:.1f} s')
    columns = list(next(iter(rows.values())))
    print(f'{"samples/s per core":<20}' + ''.join(f'{c:>34}' for c in columns))
    for codec, row in rows.items():
        print(f'{codec:<20}' + ''.join(f'{row[c]:>30.2f} /s ' for c in columns))
    print(f'cores to feed {args.need:g} samples/s (one GPU), per stage and codec:')
    for codec, row in rows.items():
        print(f'{codec:<20}' + ''.join(f'{args.need / row[c]:>33.1f} ' for c in columns))
    print('stage 2 with degrade_on: model, CPU cores in all (worker + encode of X~; the degradation is on the device):')
    for codec, row in rows.items():
        cores = args.need / row['stage 2 worker, degrade_on model'] + args.need / row['stage 2 model-side encode of X~']
        print(f'{codec:<20}{cores:.1f}')
    if device.type == 'cpu':
        torch.set_num_threads(threads)
    from basicsr.utils import USMSharp
    degradations = {'SeparableUSMSharp (ours)': complete.degradation}
    reference = HighOrderDegradation({}, device=device)
    reference.usm_sharpener = USMSharp().to(device)
    degradations['BasicSR USMSharp (reference)'] = reference
    speed = {}
    for name, degradation in degradations.items():
        def degrade(run: int) -> None:
            with seeded([run + 1]):
                degradation(crops)
            if device.type == 'cuda':
                torch.cuda.synchronize()
        speed[name] = batch_rate(degrade, args.runs, args.batch)
    print(f'Real-ESRGAN degradation, batches of {args.batch} on {device} '
          f'({torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"}):')
    for name, value in speed.items():
        print(f'  {name:<30} {value:8.2f} samples/s')
    values = list(speed.values())
    print(f'  ratio ours / reference: {values[0] / values[1]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
