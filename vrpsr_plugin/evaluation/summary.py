"""From per-image rows to the paper's numbers: RD points (means over images), FID per point, BD-rate of every method
against the baseline for every metric (Table 1, S4) and paired t-tests per RD point (Table S2)."""
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from vrpsr_plugin.evaluation.bdrate import bd_rate
from vrpsr_plugin.evaluation.metric_suite import HIGHER_IS_BETTER, MetricSuite
from vrpsr_plugin.evaluation.stats import mean_std, paired_ttest
from vrpsr_plugin.metrics.fid import fid

VARIANTS = {'raw': 'metrics', 'color_fix': 'metrics_color_fix'}

# (method, codec, mode, point, color_fix) -> list of per-image feature arrays
FeatureGetter = Callable[[str, str, str, int, bool], List[np.ndarray]]


def metric_status(suite: MetricSuite) -> Dict[str, dict]:
    """Availability, reason and direction of every requested metric."""
    return {name: {'available': name not in suite.unavailable, 'reason': suite.unavailable.get(name),
                   'higher_is_better': HIGHER_IS_BETTER[name]} for name in suite.names}


def summarize(rows: Sequence[dict], methods: Sequence[str], baseline: str, suite: MetricSuite,
              color_fix: bool = False, features: Optional[FeatureGetter] = None,
              reference: Optional[np.ndarray] = None, bd_method: str = 'pchip') -> Dict[str, dict]:
    """Aggregate rows into ``{codec: {mode: {'points': [...], 'bd_rate': {...}}}}``.

    ``features``/``reference`` (the Inception features of the outputs and of the clean images) enable FID.
    """
    variants = ['raw', 'color_fix'] if color_fix else ['raw']
    per_image = list(suite.per_image())
    curves: Dict[str, dict] = {}
    groups: Dict[tuple, Dict[str, Dict[str, dict]]] = {}
    for row in rows:
        groups.setdefault((row['codec'], row['mode'], row['point']), {}).setdefault(row['method'], {})[
            row['image']] = row
    for (codec, mode, point), by_method in sorted(groups.items(), key=lambda kv: kv[0]):
        images = sorted(by_method[baseline])
        for name in methods:
            if sorted(by_method.get(name, {})) != images:
                raise ValueError(f'{name} lacks images at {codec} {mode}{point}; rerun to complete the cache')
        entry = {'point': point, 'source_bpp': mean_std([by_method[baseline][i]['source_bpp'] for i in images]),
                 'methods': {}, 'ttest': {}}
        for name in methods:
            items = [by_method[name][i] for i in images]
            cell = {'bpp': mean_std([c['bpp'] for c in items]), 'clipped': sum(c['clipped'] for c in items),
                    'metrics': {}, 'fid': {}}
            for variant in variants:
                key = VARIANTS[variant]
                cell['metrics'][variant] = {m: mean_std([c[key][m] for c in items]) for m in per_image}
                if features is not None and reference is not None:
                    cell['fid'][variant] = fid(np.concatenate(features(name, codec, mode, point,
                                                                        variant == 'color_fix')), reference)
            entry['methods'][name] = cell
            if name != baseline:
                base = [by_method[baseline][i] for i in images]
                entry['ttest'][name] = {
                    variant: {m: paired_ttest([c[VARIANTS[variant]][m] for c in items],
                                              [b[VARIANTS[variant]][m] for b in base]) for m in per_image}
                    for variant in variants}
        curves.setdefault(codec, {}).setdefault(mode, {'points': [], 'bd_rate': {}})['points'].append(entry)
    for codec, modes in curves.items():
        for mode, curve in modes.items():
            curve['bd_rate'] = {name: {variant: _bd_rates(curve['points'], name, baseline, variant, bd_method)
                                       for variant in variants} for name in methods}
    return curves


def _bd_rates(points: List[dict], name: str, baseline: str, variant: str, method: str) -> Dict[str, dict]:
    """BD-rate of ``name`` against ``baseline`` on one codec curve, for every metric present."""
    out = {}
    first = points[0]['methods'][baseline]
    metrics = list(first['metrics'][variant]) + (['fid'] if variant in first['fid'] else [])
    for metric in metrics:
        def series(who: str) -> List[float]:
            cell = [p['methods'][who] for p in points]
            return [c['fid'][variant] if metric == 'fid' else c['metrics'][variant][metric]['mean'] for c in cell]
        rate_b = [p['methods'][baseline]['bpp']['mean'] for p in points]
        rate_t = [p['methods'][name]['bpp']['mean'] for p in points]
        value, note = bd_rate(rate_b, series(baseline), rate_t, series(name), HIGHER_IS_BETTER[metric], method)
        out[metric] = {'value': None if math.isnan(value) else value, 'note': note}
    return out
