"""Codec layer benchmark: speed per route, rate/quality per QP, and find_qp against plain bisection (Eq. 2).

    python benchmarks/codec_bench.py [--runs 5] [--images 4] [--size 256] [--rate-model SIM.pth] [--find-qp-only]
        [--codecs libx264 libx265 libvvenc]

For each codec and route: median ms of one 512x512 encode+decode (of ``--runs``), and bpp / PSNR at four QPs
(H.26x and SVT-AV1: QP 22/27/32/37 on their own scales; JPEG: qscale 2/4/8/16; WebP: quality 90/75/50/25).
Then, over several real photos and a set of target rates: mean encodes per image and mean |bpp error| of
``find_qp`` and of a plain integer bisection over the same QP range, measured in the same run. With
``--rate-model`` (a ``RateAwareCodecSimulator`` checkpoint, e.g. the main job's stage 1), also ``find_qp`` started at
the rate model's q* (``first_qp``) for the codecs it was fitted on: its encodes, and how often its QP is the
closest one (the bisection's answer; the bpp error is compared, so ties count as closest). Then the rate match of
Eq. 2 as ``vrpsr eval`` runs it: X~ (each photo's mild degradation) coded at QP 27/32/37/42 sets the target, and
find_qp codes X' = the photo at it, started at X~'s QP, at q*, and at q* calibrated on X~'s encode (``qp_hint``'s
``reference``); every start must find the same QP.
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from skimage import data as skdata

from vrpsr_plugin.codecs import CODECS, available_codecs, encode, find_qp
from basicsr.metrics import calculate_psnr  # noqa: E402  (after vrpsr_plugin: its compat shim goes first)

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
QPS = {'jpeg': (2, 4, 8, 16), 'libwebp': (90, 75, 50, 25)}
TARGETS = (0.1, 0.2, 0.4, 0.8)
SOURCE_QPS = (27, 32, 37, 42)


def photos(size: int, count: int) -> list:
    """Real photos: skimage's, then ../shared/data/CBSD68 when present; centre crops of ``size``."""
    imgs = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    if SHARED.is_dir():
        from vrpsr_plugin.codecs import load_image
        imgs += [load_image(p)[0] for p in sorted((SHARED / 'CBSD68').glob('*.png'))[:4]]
    out = []
    for img in imgs:
        h, w = img.shape[:2]
        if min(h, w) >= size:
            top, left = (h - size) // 2, (w - size) // 2
            out.append(np.ascontiguousarray(img[top:top + size, left:left + size, :3]))
    return out[:count]


def bisect_qp(image: np.ndarray, codec: str, target: float, **kw):
    """Reference: plain bisection on the integer QP range, then the closer of the bracketing pair."""
    spec = CODECS[codec]
    sign = 1 if spec.rate_decreases else -1
    lo, hi = sorted(sign * q for q in spec.qp_range)
    cache = {}

    def rate(u):
        if u not in cache:
            cache[u] = encode(image, codec, qp=sign * u, **kw).bpp
        return cache[u]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rate(mid) >= target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda u: abs(rate(u) - target))
    return rate(best), len(cache)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--images', type=int, default=4, help='photos for the find_qp part')
    parser.add_argument('--size', type=int, default=256, help='photo size for the find_qp part')
    parser.add_argument('--rate-model', help='RateAwareCodecSimulator checkpoint: also find_qp from its q*')
    parser.add_argument('--find-qp-only', action='store_true', help='skip the speed and rate/quality part')
    parser.add_argument('--codecs', nargs='+', help='only these codecs (default: every available one)')
    args = parser.parse_args()
    rate_model = None
    if args.rate_model:
        from vrpsr_plugin.inference import load_model
        rate_model = load_model(args.rate_model).rate_model
    codecs = args.codecs or available_codecs()
    image = photos(512, 1)[0]
    print(f'codecs: {", ".join(codecs)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
    if not args.find_qp_only:
        print(f'512x512 astronaut; median of {args.runs} runs')
        print(f'{"codec":10s} {"route":6s} {"preset":7s} {"ms/enc+dec":>10s}  bpp @ QP / PSNR dB')
    for codec in [] if args.find_qp_only else codecs:
        spec = CODECS[codec]
        routes = ('pyav', 'ffmpeg') if spec.pyav_decoder else ('ffmpeg',)
        qps = QPS.get(codec, (22, 27, 32, 37))
        times = {route: [] for route in routes}
        for _ in range(args.runs):  # routes interleaved, so load changes hit both alike
            for route in routes:
                t = time.perf_counter()
                encode(image, codec, qp=qps[1], route=route)
                times[route].append(1000 * (time.perf_counter() - t))
        ref_ms = statistics.median(times[routes[0]])
        for route in routes:
            ms = statistics.median(times[route])
            cells = []
            for q in qps:
                res = encode(image, codec, qp=q, route=route)
                cells.append(f'{q}:{res.bpp:.3f}/{calculate_psnr(image, res.image, crop_border=0):.2f}')
            ratio = '' if route == routes[0] else f'  ({ms / ref_ms:.2f}x of {routes[0]})'
            print(f'{codec:10s} {route:6s} {str(spec.default_preset):7s} {ms:10.1f}  {"  ".join(cells)}{ratio}')
    imgs = photos(args.size, args.images)
    print(f'\nfind_qp vs bisection: {len(imgs)} photos {args.size}x{args.size}, targets {TARGETS} bpp '
          f'(unreachable targets excluded from the error means)')
    print(f'{"codec":10s} {"find_qp enc":>11s} {"bisect enc":>10s} {"ratio":>6s} {"find_qp |err|":>13s} '
          f'{"bisect |err|":>12s} {"unreach":>7s} {"s/find_qp":>9s}' +
          (f' {"q* start enc":>12s} {"ratio":>6s} {"closest":>7s}' if rate_model is not None else ''))
    for codec in codecs:
        from vrpsr_plugin.archs.rate_model import qp_hint
        n_f, n_b, e_f, e_b, unreachable, seconds, n_h, closest = [], [], [], [], 0, [], [], []
        for img in imgs:
            for target in TARGETS:
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    res = find_qp(img, codec, target)
                seconds.append(time.perf_counter() - t)
                bpp_b, count_b = bisect_qp(img, codec, target)
                hint = qp_hint(rate_model, img, codec, target) if rate_model is not None else None
                if hint is not None:
                    with warnings.catch_warnings():
                        warnings.simplefilter('ignore')
                        hinted = find_qp(img, codec, target, first_qp=hint)
                    n_h.append(hinted.num_encodes)
                    closest.append(abs(hinted.bpp - target) <= abs(bpp_b - target) + 1e-12)
                n_f.append(res.num_encodes)
                n_b.append(count_b)
                if res.reachable:
                    e_f.append(abs(res.bpp - target))
                    e_b.append(abs(bpp_b - target))
                else:
                    unreachable += 1
        err_f = f'{np.mean(e_f):.4f}' if e_f else 'n/a'
        err_b = f'{np.mean(e_b):.4f}' if e_b else 'n/a'
        hinted = (f' {np.mean(n_h):12.2f} {np.mean(n_h) / np.mean(n_f):6.2f} {100 * np.mean(closest):6.0f}%' if n_h
                  else f' {"(not fitted)":>12s}' if rate_model is not None else '')
        print(f'{codec:10s} {np.mean(n_f):11.2f} {np.mean(n_b):10.2f} {np.mean(n_f) / np.mean(n_b):6.2f} '
              f'{err_f:>13s} {err_b:>12s} {unreachable:7d} {statistics.median(seconds):9.2f}{hinted}')
    if rate_model is not None:
        rate_matched(rate_model, imgs, codecs)
    return 0


def rate_matched(rate_model, imgs: list, codecs: list) -> None:
    """Eq. 2's rate match: encodes per call of find_qp on X' (the photo) at the bpp of X~ (its mild degradation)
    at each source QP, per first guess; a start that finds another QP than the others is an error."""
    from vrpsr_plugin.archs.rate_model import qp_hint
    from vrpsr_plugin.evaluation.degrade import DegradationConfig, degrade
    print(f'\nrate match of Eq. 2: X~ = mild degradation of each of the {len(imgs)} photos coded at QP {SOURCE_QPS}, '
          f'find_qp on X\' = the photo at X~\'s bpp; encodes per call by first guess')
    print(f'{"codec":10s} {"X~ QP":>7s} {"q*":>7s} {"q* calibrated on X~":>20s}')
    for codec in codecs:
        if codec not in rate_model.fitted_codecs:
            print(f'{codec:10s} (not fitted)')
            continue
        counts = {'source': [], 'q*': [], 'calibrated': []}
        for i, img in enumerate(imgs):
            lq = degrade(img, 1, i, DegradationConfig(kind='mild'))
            for qp in SOURCE_QPS:
                src = encode(lq, codec, qp=qp)
                starts = {'source': src.qp, 'q*': qp_hint(rate_model, img, codec, src.bpp),
                          'calibrated': qp_hint(rate_model, img, codec, src.bpp, reference=(lq, qp, src.bpp))}
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    found = {k: find_qp(img, codec, src.bpp, first_qp=q) for k, q in starts.items()}
                if len({r.qp for r in found.values()}) != 1:
                    raise AssertionError(f'{codec}: the first guess changed the QP found: {found}')
                for k, r in found.items():
                    counts[k].append(r.num_encodes)
        print(f'{codec:10s} {np.mean(counts["source"]):7.2f} {np.mean(counts["q*"]):7.2f} '
              f'{np.mean(counts["calibrated"]):20.2f}')


if __name__ == '__main__':
    sys.exit(main())
