"""ASSR-EIC speed (seed 002): encode + decode of one 512x512 photo, split by stage, on this machine's CPU.

    python benchmarks/eic_bench.py [--runs 3] [--bpp 0.05] [--threads 2] [--scales 1,1.5,2,3,4,6,8]

Encode = rate control over the s grid (down-scaling, ``find_qp`` encodes, one decoder run per candidate to
measure it); decode = parse + codec decode + decoder. Medians of ``--runs``; the reference measured in the same run
is plain x265 at the same bpp (``find_qp`` + its decode), so the ratio says what the rescaling and decoder cost.
"""
import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import vrpsr_plugin  # noqa: F401  (compat shims before basicsr)

SHARED = Path(__file__).resolve().parents[2] / 'shared'


def main() -> int:
    import numpy as np
    import torch
    from skimage import data as skdata

    from vrpsr_plugin.codecs import decode, find_qp, load_image
    from vrpsr_plugin.eic.container import EICFile
    from vrpsr_plugin.eic.pipeline import encode_image, load_decoder
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--bpp', type=float, default=0.05)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--scales', default='1,1.5,2,3,4,6,8')
    parser.add_argument('--decoder', help='decoder .safetensors (default: the shipped one)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lenna = SHARED / 'data' / 'CSet14' / 'lenna.png'
    rgb = load_image(lenna)[0] if lenna.is_file() else np.ascontiguousarray(skdata.astronaut()[:512, :512])
    decoder = load_decoder(args.decoder)
    scales = [float(s) for s in args.scales.split(',')]
    stages = {k: [] for k in ('encode: downscale', 'encode: codec (find_qp)', 'encode: decoder (candidates)',
                              'encode total', 'decode: codec', 'decode: decoder', 'decode total', 'x265 reference')}
    for _ in range(args.runs):
        start = time.perf_counter()
        enc = encode_image(rgb, 'libx265', decoder, bpp=args.bpp, scales=scales)
        stages['encode total'].append(time.perf_counter() - start)
        for key, name in (('downscale', 'encode: downscale'), ('codec', 'encode: codec (find_qp)'),
                          ('decoder', 'encode: decoder (candidates)')):
            stages[name].append(enc.seconds[key])
        start = time.perf_counter()
        eic = EICFile.from_bytes(enc.data)
        coded = decode(eic.bitstream, eic.codec, eic.coded_height, eic.coded_width)
        mid = time.perf_counter()
        decoder.restore(coded, eic.codec, eic.qp, (eic.height, eic.width))
        end = time.perf_counter()
        stages['decode: codec'].append(mid - start)
        stages['decode: decoder'].append(end - mid)
        stages['decode total'].append(end - start)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            plain = find_qp(rgb, 'libx265', args.bpp)
        decode(plain.bitstream, 'libx265', *rgb.shape[:2])
        stages['x265 reference'].append(time.perf_counter() - start)
    print(f'{rgb.shape[1]}x{rgb.shape[0]} photo, {args.bpp} bpp target, {len(scales)} scales, {args.threads} threads, '
          f'median of {args.runs}: chosen s={enc.chosen.scale:.2f} QP {enc.chosen.qp}, {len(enc.candidates)} '
          f'candidates, {8 * len(enc.data) / rgb[..., 0].size:.4f} bpp')
    ref = statistics.median(stages['x265 reference'])
    for name, values in stages.items():
        med = statistics.median(values)
        print(f'{name:30s} {med:7.2f} s   x{med / ref:5.1f} of plain x265 encode+decode')
    return 0


if __name__ == '__main__':
    sys.exit(main())
