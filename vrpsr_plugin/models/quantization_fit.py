"""Fit the quantisation proxy D (:mod:`vrpsr_plugin.archs.quantization_proxy`) to real decodes (stage 1).

For every codec, plane, DCT frequency and QP knot (each encode counts for its nearest knot), the dead-zone threshold
t is the one that best predicts which
coefficients the real codec drops: with r = |C| / Qstep(q) of the input and C' the coefficient of the real decode,
t minimises sum_{r < t} C'^2 + sum_{r >= t} (C' - C)^2 (a one-dimensional search over a grid of t); the noise
standard deviation s is then the RMS of C' - C over the kept coefficients, in units of Qstep. Closed form over
histograms, so the fit takes seconds and nothing is left to train (a pixel loss against the real decode would drive
s to zero: the codec's exact error is not predictable from X).
"""
from typing import Dict, Sequence

import torch

from vrpsr_plugin.archs.quantization_proxy import GATE_TEMPERATURE, DCTQuantizationProxy
from vrpsr_plugin.archs.rate_model import block_dct, qstep, ycbcr420_levels
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.models.rate_fit import RateSample

_STEP = 0.05
_EDGES = torch.arange(0.0, 4.0 + _STEP / 2, _STEP)  # candidate thresholds t (units of Qstep); the last bin is open


def _planes(image) -> tuple:
    luma, chroma = ycbcr420_levels(rgb_to_tensor(image)[None])
    return block_dct(luma, predict_dc=False), block_dct(chroma, predict_dc=False)


def fit_quantization_proxy(proxy: DCTQuantizationProxy, samples: Sequence[RateSample]) -> Dict[str, float]:
    """Set ``proxy``'s thresholds and noise from ``samples`` (each with its real ``decodes``); returns the number of
    coefficients seen and the mean fitted threshold and noise (units of Qstep) over the codecs fitted."""
    if not samples or any(s.decodes is None for s in samples):
        raise ValueError('the quantisation fit needs rate samples with their decodes (keep_decodes=True)')
    n, bins, knots = len(proxy.codecs), len(_EDGES), proxy.qp_knots
    dropped_energy = torch.zeros(n, 2, 64, len(knots), bins, dtype=torch.float64)  # sum C'^2 / Q^2 per r-bin
    kept_energy = torch.zeros_like(dropped_energy)  # sum (C' - C)^2 / Q^2
    source_energy = torch.zeros_like(dropped_energy)  # sum C^2 / Q^2
    counts = torch.zeros_like(dropped_energy)
    with torch.no_grad():
        for sample in samples:
            source = _planes(sample.image)
            for codec, qp, decoded in zip(sample.codecs, sample.qps, sample.decodes):
                c, k = proxy.codecs.index(codec), int((knots - qp).abs().argmin())
                step = float(qstep(torch.tensor(float(qp))))
                for p, (coef, real) in enumerate(zip(source, _planes(decoded))):
                    coef, real = coef.transpose(0, 2).reshape(64, -1), real.transpose(0, 2).reshape(64, -1)
                    index = torch.bucketize((coef.abs() / step).contiguous(), _EDGES[1:], right=True)
                    for total, value in ((dropped_energy, (real / step) ** 2), (kept_energy, ((real - coef) / step) ** 2),
                                         (source_energy, (coef / step) ** 2), (counts, torch.ones_like(coef))):
                        total[c, p, :, k].scatter_add_(1, index, value.double())
        # error(t_k) = sum_{bins < k} dropped + sum_{bins >= k} kept
        below = torch.cumsum(dropped_energy, -1) - dropped_energy
        above = torch.flip(torch.cumsum(torch.flip(kept_energy, [-1]), -1), [-1])
        best = (below + above).argmin(-1, keepdim=True)
        threshold = _EDGES[best[..., 0]].double()
        centres = torch.cat([(_EDGES[:-1] + _EDGES[1:]) / 2, _EDGES[-1:] + 1.0]).double()  # the open bin: gate ~1
        gate = torch.sigmoid((centres - threshold[..., None]) / GATE_TEMPERATURE)
        shrink = ((1 - gate) ** 2 * source_energy).sum(-1)
        noise = ((kept_energy.sum(-1) - shrink).clamp_min(0) / (gate ** 2 * counts).sum(-1).clamp_min(1e-9)).sqrt()
        seen = counts.sum(-1) > 0  # codecs x 2 x 64 x knots
        threshold = torch.where(seen, threshold, proxy.threshold.double())
        noise = torch.where(seen, noise, proxy.noise_std.double())
        with_data = seen.all(1).all(1)  # codecs x knots: a knot no encode was near takes its nearest fitted one
        for c in range(n):
            have = with_data[c].nonzero()[:, 0]
            if len(have):
                nearest = have[(knots[:, None] - knots[have][None]).abs().argmin(1)]
                threshold[c], noise[c] = threshold[c][..., nearest], noise[c][..., nearest]
        proxy.threshold.copy_(threshold)
        proxy.noise_std.copy_(noise)
        proxy.fitted.fill_(1.0)
    fitted = with_data.any(-1)
    return {'count': int(counts.sum()), 'mean_threshold': float(proxy.threshold[fitted].mean()),
            'mean_noise_std': float(proxy.noise_std[fitted].mean())}
