"""``find_qp``: rate-preserving recompression, the integer QP whose bitrate is closest to a target (Eq. 2).

The rate falls monotonically with the QP (rises, for WebP's quality), and ln(bpp) is close to linear in QP
(H.26x: the rate halves every ~6 QP). The search therefore steps by the log-rate slope (a per-codec prior for
the first step, the measured secant afterwards) until two adjacent QPs bracket the target, then interpolates
inside the bracket (regula falsi on ln bpp). Every encode is cached and the closest one seen is returned; this
takes ~3-4 encodes where bisection over the range needs ~6, fewer from a good first guess (``first_qp``: e.g. the
source's QP when a restored picture is matched to the source's rate, or the rate model's q*). The whole QP range is searched (the authors stop at
QP 25). A target the codec cannot reach gives the nearest end of the range, ``reachable=False`` and a warning.
"""
import dataclasses
import math
import warnings
from typing import Dict, Optional

from vrpsr_plugin.codecs.encode import CodecResult, encode
from vrpsr_plugin.codecs.encoders import get_spec
from vrpsr_plugin.codecs.inputs import ImageLike, to_rgb_uint8


def find_qp(image: ImageLike, codec: str, target_bpp: float, first_qp: Optional[int] = None,
            **encode_kwargs) -> CodecResult:
    """Encode ``image`` with ``codec`` at the integer QP whose bpp is closest to ``target_bpp`` (Eq. 2).

    ``first_qp`` is the first QP tried (default: the codec's usual start); the result does not depend on it, only
    the number of encodes. ``encode_kwargs`` go to :func:`encode` (route, ffmpeg, timeout, preset). The result's ``num_encodes``
    counts the encodes used; ``reachable`` is False (with a warning) when the target lies outside the rates
    the codec's QP range reaches for this image. The caller's image is not modified.
    """
    spec = get_spec(codec)
    if isinstance(target_bpp, bool) or not isinstance(target_bpp, (int, float)) or not math.isfinite(target_bpp) \
            or target_bpp <= 0:
        raise ValueError(f'target_bpp must be a finite number > 0, got {target_bpp!r}')
    if 'qp' in encode_kwargs or 'crf' in encode_kwargs:
        raise ValueError('find_qp chooses the QP itself; do not pass qp= or crf=')
    if first_qp is not None and (isinstance(first_qp, bool) or not isinstance(first_qp, int)
                                 or not min(spec.qp_range) <= first_qp <= max(spec.qp_range)):
        raise ValueError(f'first_qp must be an integer QP in {codec}\'s range {spec.qp_range}, got {first_qp!r}')
    rgb = to_rgb_uint8(image)  # a private copy, converted once
    sign = 1 if spec.rate_decreases else -1  # search in u = sign * qp, where the rate falls as u grows
    u_lo, u_hi = sorted(sign * q for q in spec.qp_range)
    slope_prior = sign * spec.log_rate_slope  # d ln(bpp) / du, negative
    log_t = math.log(target_bpp)
    cache: Dict[int, CodecResult] = {}

    def log_rate(u: int) -> float:
        if u not in cache:
            cache[u] = encode(rgb, codec, qp=sign * u, **encode_kwargs)
        return math.log(max(cache[u].bpp, 1e-12))

    above = below = None  # largest u with bpp >= target, smallest u with bpp <= target
    u = min(max(sign * (spec.qp_start if first_qp is None else first_qp), u_lo), u_hi)
    while True:
        lr = log_rate(u)
        if lr >= log_t:
            above = u if above is None else max(above, u)
        if lr <= log_t:
            below = u if below is None else min(below, u)
        if above is not None and below is not None and below - above <= 1:
            break
        if (below is None and u == u_hi) or (above is None and u == u_lo):
            break
        if above is not None and below is not None:  # interpolate inside the bracket
            la, lb = log_rate(above), log_rate(below)
            est = above + (la - log_t) / (la - lb) * (below - above) if la > lb else (above + below) / 2
            u = min(max(round(est), above + 1), below - 1)
            continue
        slope = slope_prior
        if len(cache) >= 2:  # measured secant through the two evaluated points nearest to u
            u1, u2 = sorted(cache, key=lambda k: abs(k - u))[:2]
            measured = (log_rate(u1) - log_rate(u2)) / (u1 - u2)
            if measured < 0:
                slope = measured
        step = round((log_t - lr) / slope)
        step = max(step, 1) if lr > log_t else min(step, -1)
        nxt = min(max(u + step, u_lo), u_hi)
        if above is not None:
            nxt = max(nxt, above + 1)
        if below is not None:
            nxt = min(nxt, below - 1)
        u = nxt
    best_u = min(cache, key=lambda k: (abs(cache[k].bpp - target_bpp), -k))
    reachable = above is not None and below is not None
    if not reachable:
        end = 'lowest' if below is None else 'highest'
        warnings.warn(f'target {target_bpp:.4g} bpp is outside what {codec} reaches on this image over QP '
                      f'{spec.qp_range[0]}..{spec.qp_range[1]}: the {end} rate is {cache[best_u].bpp:.4g} bpp at '
                      f'QP {sign * best_u}; returning that QP', RuntimeWarning, stacklevel=2)
    return dataclasses.replace(cache[best_u], num_encodes=len(cache), target_bpp=float(target_bpp),
                               reachable=reachable)
