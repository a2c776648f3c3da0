"""Codec-bank read cost against bank size (issue 14): a lookup should not grow with the number of shards.

    python benchmarks/bank_lookup_bench.py [--shards 16 256 1024 4096] [--lookups 2000] [--runs 5]

For each size, builds a bank of that many shards (one 32x32 crop of a real photo per shard, libx264 at one QP,
in this process), then times ``CodecBank.coded(key, codec, qp)`` on random keys (median of ``--runs`` passes of
``--lookups``; banks of more shards than the reader keeps indexes of also read a shard index on most lookups) and
``CodecBank(root)`` itself (opening lists every key: it grows with the bank). Ratios are against the smallest bank.
"""
import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vrpsr_plugin.data.codec_bank import CodecBank, prepare_bank
from vrpsr_plugin.data.demo_images import PHOTOS

CROP = 32


def write_crops(folder: Path, count: int) -> None:
    """``count`` distinct 32x32 crops of the bundled real photos."""
    folder.mkdir()
    photos = [np.asarray(load())[..., :3] for _, load in PHOTOS]
    rng = np.random.default_rng(0)
    for i in range(count):
        image = photos[i % len(photos)]
        top, left = (int(rng.integers(0, n - CROP)) for n in image.shape[:2])
        cv2.imwrite(str(folder / f'img{i:05d}.png'), image[top:top + CROP, left:left + CROP, ::-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shards', nargs='+', type=int, default=[16, 256, 1024, 4096])
    parser.add_argument('--lookups', type=int, default=2000)
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='bank_lookup_'))
    rows = []
    try:
        for shards in args.shards:
            write_crops(tmp / f'data{shards}', shards)
            root = str(tmp / f'bank{shards}')
            prepare_bank(str(tmp / f'data{shards}'), root, ['libx264'], [32], workers=1, progress=False,
                         shard_size=1)
            opens, lookups = [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                bank = CodecBank(root)
                opens.append(time.perf_counter() - start)
                keys = np.random.default_rng(len(lookups)).choice(bank.keys, args.lookups)
                start = time.perf_counter()
                for key in keys:
                    bank.coded(key, 'libx264', 32)
                lookups.append((time.perf_counter() - start) / args.lookups)
            rows.append((shards, statistics.median(lookups), statistics.median(opens)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f'{"shards":>8}{"us/lookup":>12}{"x smallest":>12}{"open ms":>10}{"x smallest":>12}')
    for shards, lookup, opened in rows:
        print(f'{shards:>8}{1e6 * lookup:>12.1f}{lookup / rows[0][1]:>11.2f}x{1e3 * opened:>10.1f}'
              f'{opened / rows[0][2]:>11.2f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
