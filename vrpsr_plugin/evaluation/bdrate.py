"""Bjontegaard delta rate (BD-rate / BDBR, [4]) of a method against an anchor for any quality metric (§4.1, Table 1).

Computed with the ``bjontegaard`` package: log10(rate) is interpolated as a function of the metric with
piecewise cubic Hermite (``pchip``, the default; ``akima`` optional) and integrated over the metric interval where
both curves overlap. Sign convention: positive = the method needs *more* bits for the same quality (worse),
negative = bitrate saving. A lower-is-better metric (LPIPS, DISTS, FID) is negated first so "same quality" means the
same metric value and the sign convention holds for every metric. The same points for method and anchor give 0.

Reliability: a BD-rate integrates over the metric interval both curves share, so it says little when that interval
is a small part of either curve (less than ``MIN_OVERLAP`` of the shorter curve's range), or when a curve is not
monotone (more bits, lower quality: the interpolation then folds). Both come back as a note, which reports
print as a warning next to the value.
"""
import warnings
from typing import Sequence, Tuple

import bjontegaard
import numpy as np

METHODS = ('pchip', 'akima')
MIN_OVERLAP = 0.5


def bd_rate(rate_anchor: Sequence[float], metric_anchor: Sequence[float], rate_test: Sequence[float],
            metric_test: Sequence[float], higher_is_better: bool = True, method: str = 'pchip') -> Tuple[float, str]:
    """BD-rate in percent of the test curve against the anchor curve, and a note ('' when all is well).

    Returns (nan, reason) when it cannot be computed: fewer than 2 points, non-positive rates, duplicated metric
    values, or curves that do not overlap in the metric.
    """
    if method not in METHODS:
        raise ValueError(f'interpolation must be one of {METHODS}, got {method!r}')
    sign = 1.0 if higher_is_better else -1.0
    curves = []
    for rate, metric in ((rate_anchor, metric_anchor), (rate_test, metric_test)):
        rate, metric = np.asarray(rate, dtype=np.float64), sign * np.asarray(metric, dtype=np.float64)
        if rate.shape != metric.shape or rate.ndim != 1:
            raise ValueError(f'rate and metric must be 1-D of the same length, got {rate.shape} and {metric.shape}')
        if len(rate) < 2 or not np.all(np.isfinite(rate)) or not np.all(np.isfinite(metric)):
            return float('nan'), 'needs at least 2 finite RD points per curve'
        if np.any(rate <= 0):
            return float('nan'), 'rates must be positive'
        order = np.argsort(metric, kind='stable')
        if np.any(np.diff(metric[order]) == 0):
            return float('nan'), 'two RD points share a metric value'
        curves.append((rate[order], metric[order]))
    (ra, ma), (rt, mt) = curves
    shared = min(ma.max(), mt.max()) - max(ma.min(), mt.min())
    if shared <= 0:
        return float('nan'), 'the curves do not overlap in this metric'
    notes = []
    overlap = shared / min(ma.max() - ma.min(), mt.max() - mt.min())
    if overlap < MIN_OVERLAP:
        notes.append(f'unreliable: the curves share only {100 * overlap:.0f}% of the shorter one\'s metric range')
    for who, rate in (('anchor', ra), ('test', rt)):
        if np.any(np.diff(rate) <= 0):
            notes.append(f'unreliable: the {who} curve is not monotone (more bits do not always give better quality)')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        value = bjontegaard.bd_rate(ra, ma, rt, mt, method=method, require_matching_points=False)
    notes += [str(w.message) for w in caught]
    return float(value), '; '.join(notes)
