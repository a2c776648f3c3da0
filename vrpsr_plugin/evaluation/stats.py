"""Per-image statistics and significance of App. C.1 (Table S2): mean ± std and two-sided paired t-tests."""
from typing import Dict, Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError('no values')
    return {'mean': float(array.mean()), 'std': float(array.std(ddof=1)) if array.size > 1 else 0.0}


def paired_ttest(method: Sequence[float], baseline: Sequence[float]) -> Dict[str, float]:
    """Two-sided paired t-test of per-image values (same images, same order); p = 1 when all differences are 0."""
    a, b = np.asarray(method, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f'paired samples must be 1-D of equal length, got {a.shape} and {b.shape}')
    if a.size < 2:
        return {'t': float('nan'), 'p': float('nan'), 'mean_diff': float((a - b).mean()) if a.size else float('nan')}
    diff = a - b
    if np.all(diff == diff[0]):
        # constant differences: scipy returns nan; identical samples are "no difference" (p = 1)
        return {'t': 0.0 if diff[0] == 0 else float('inf') * np.sign(diff[0]),
                'p': 1.0 if diff[0] == 0 else 0.0, 'mean_diff': float(diff[0])}
    result = stats.ttest_rel(a, b)
    return {'t': float(result.statistic), 'p': float(result.pvalue), 'mean_diff': float(diff.mean())}
