"""Engine benchmark (issue 14): codec-bank encodes per second against workers, local pool and Ray, and the engine's
per-encode overhead against a plain in-process ``encode``.

    python benchmarks/engine_bench.py [--codec libx265] [--size 512] [--images 16] [--runs 3] [--no-ray]

Images: scikit-image's real photos, resized so the short side is ``--size``, centre-cropped, each also flipped and
rotated to make ``--images`` distinct pictures. Every row encodes all of them once per run (median of ``--runs``):

- ``plain encode``: ``codecs.encode`` in a loop in this process, the reference;
- ``bank task, in process``: the bank's shard task (read the ground truth from its tar shard, encode, PNG, write the
  shard atomically) run here: the bank's own I/O, no engine;
- ``local pool`` / ``ray`` with 1 and 2 workers: the same tasks (one image per shard: the most dispatches per
  encode) through :class:`vrpsr_plugin.engine.Engine`, started and warmed up before timing.

Printed: ms per encode, encodes/s, the ratio to the reference (per-encode cost, 1 worker: target <= 1.1x) and the
scaling efficiency of 2 workers (rate(2) / (2 x rate(1))).
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vrpsr_plugin.codecs import encode
from vrpsr_plugin.data import codec_bank
from vrpsr_plugin.data.demo_images import PHOTOS
from vrpsr_plugin.engine import Engine

QP = 32


def photos(size: int, count: int) -> list:
    """``count`` distinct ``size`` x ``size`` RGB crops of real photos (resized, flipped and rotated)."""
    base = []
    for _, load in PHOTOS:
        image = np.asarray(load())[..., :3]
        h, w = image.shape[:2]
        scale = size / min(h, w)
        if scale > 1:
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
        h, w = image.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        base.append(np.ascontiguousarray(image[top:top + size, left:left + size]))
    variants = (lambda x: x, lambda x: x[:, ::-1], lambda x: x[::-1], lambda x: np.rot90(x))
    return [np.ascontiguousarray(variants[i // len(base) % len(variants)](base[i % len(base)]))
            for i in range(count)]


def wall(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--codec', default='libx265')
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--images', type=int, default=16)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--no-ray', action='store_true', help='skip the Ray rows')
    args = parser.parse_args()
    images = photos(args.size, args.images)
    tmp = Path(tempfile.mkdtemp(prefix='engine_bench_'))
    try:
        data = tmp / 'data'
        data.mkdir()
        for i, image in enumerate(images):
            cv2.imwrite(str(data / f'img{i:03d}.png'), image[..., ::-1])
        bank = str(tmp / 'bank')
        codec_bank.prepare_bank(str(data), bank, [args.codec], [QP], workers=1, progress=False, shard_size=1)
        jobs = [(bank, sid, args.codec, QP) for sid in range(len(images))]

        def clear() -> None:
            shutil.rmtree(os.path.join(bank, args.codec))

        def through(engine: Engine):
            def run() -> None:
                clear()
                engine.map(codec_bank._encode_shard, jobs, progress=False)
            return run

        print(f'{len(images)} real photos at {args.size}x{args.size}, {args.codec} QP {QP}, median of {args.runs} '
              f'interleaved runs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}', flush=True)
        pool_of_one = Engine('local', 2)
        pool_of_one.workers = 1  # a pool of one process (Engine('local', 1) would run in this process)
        engines = {'bank task, in process': Engine('local', 1), 'local pool, 1 worker': pool_of_one,
                   'local pool, 2 workers': Engine('local', 2)}
        if not args.no_ray:  # one Ray session of 2 CPUs; the 1-worker engine joins it and runs 1 task at a time
            engines['ray, 2 workers'] = Engine('ray', 2)
            engines['ray, 1 worker'] = Engine('ray', 1)
        runners = {'plain encode (reference)': lambda: [encode(x, args.codec, qp=QP) for x in images]}
        for label, engine in engines.items():
            runners[label] = through(engine)
            runners[label]()  # start and warm up the workers (imports, first encode)
        times = {label: [] for label in runners}
        for _ in range(args.runs):  # interleaved, so that the shared machine's load drifts over every row alike
            for label, run in runners.items():
                times[label].append(wall(run))
        for engine in reversed(list(engines.values())):
            engine.close()
        rows = [(label, statistics.median(t)) for label, t in times.items()]
        ref = rows[0][1]
        print(f'{"":<28}{"ms/encode":>11}{"encodes/s":>11}{"x reference":>13}')
        for label, seconds in rows:
            print(f'{label:<28}{1000 * seconds / len(images):>11.1f}{len(images) / seconds:>11.2f}'
                  f'{seconds / ref:>12.2f}x')
        for label in ('local pool', 'ray')[:1 if args.no_ray else 2]:
            one, two = dict(rows)[f'{label}, 1 worker'], dict(rows)[f'{label}, 2 workers']
            print(f'{label}: 2 workers are {one / two:.2f}x the rate of 1 (scaling efficiency '
                  f'{one / two / 2:.0%})')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
