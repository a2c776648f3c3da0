"""Fit the quantisation proxy D (:mod:`vrpsr_plugin.archs.quantization_proxy`) to real decodes (stage 1).

Every coefficient C of an input (8x8 DCT of its YCbCr 4:2:0 planes) and C' of its real decode at QP q count for
their codec, plane, frequency band, nearest QP knot and bin of r = |C| / Qstep(q). Per cell, least squares gives
the shrinkage a = sum C' C / sum C^2 (clamped to [0, 1.5]) and the noise s^2 = mean (C' - a C)^2 / Qstep^2: the
best linear prediction of the real coefficient from the input one, and the spread around it. Closed form over the
accumulated sums, so the fit takes seconds and nothing is left to train (a pixel loss against the real decode
would drive s to zero: the codec's exact error is not predictable from X). Cells without data take the nearest
r-bin with data, then the nearest QP knot with data.
"""
from typing import Dict, Sequence

import torch

from vrpsr_plugin.archs.quantization_proxy import BAND_OF_FREQUENCY, BANDS, R_BINS, R_STEP, DCTQuantizationProxy
from vrpsr_plugin.archs.rate_model import block_dct, qstep, ycbcr420_levels
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.models.rate_fit import RateSample

_MAX_SHRINK = 1.5


def _planes(image) -> tuple:
    luma, chroma = ycbcr420_levels(rgb_to_tensor(image)[None])
    return block_dct(luma, predict_dc=False), block_dct(chroma, predict_dc=False)


def _nearest_filled(values: torch.Tensor, filled: torch.Tensor, dim: int) -> torch.Tensor:
    """``values`` with every entry where ``filled`` is False replaced by the nearest filled one along ``dim``."""
    values, filled = values.movedim(dim, -1), filled.movedim(dim, -1)
    size = values.shape[-1]
    position = torch.arange(size, dtype=torch.float64)
    distance = (position[:, None] - position[None, :]).abs()  # target x source
    cost = torch.where(filled[..., None, :], distance, torch.full_like(distance, float('inf')))
    source = cost.argmin(-1)  # ... x target
    out = values.gather(-1, source)
    return torch.where(filled.any(-1, keepdim=True), out, values).movedim(-1, dim)


def fit_quantization_proxy(proxy: DCTQuantizationProxy, samples: Sequence[RateSample]) -> Dict[str, float]:
    """Set ``proxy``'s shrinkage and noise tables from ``samples`` (each with its real ``decodes``); returns the
    number of coefficients seen and, over the fitted cells, the mean shrinkage below and above r = 1 and the mean
    noise (units of Qstep)."""
    if not samples or any(s.decodes is None for s in samples):
        raise ValueError('the quantisation fit needs rate samples with their decodes (keep_decodes=True)')
    knots = proxy.qp_knots
    shape = (len(proxy.codecs), 2, BANDS, len(knots), R_BINS)
    cross, source_energy, real_energy, counts = (torch.zeros(shape, dtype=torch.float64) for _ in range(4))
    band = BAND_OF_FREQUENCY
    with torch.no_grad():
        for sample in samples:
            inputs = _planes(sample.image)
            for codec, qp, decoded in zip(sample.codecs, sample.qps, sample.decodes):
                c, k = proxy.codecs.index(codec), int((knots - qp).abs().argmin())
                step = float(qstep(torch.tensor(float(qp))))
                for p, (coef, real) in enumerate(zip(inputs, _planes(decoded))):
                    coef = coef.transpose(0, 2).reshape(64, -1).double() / step  # frequency x coefficients
                    real = real.transpose(0, 2).reshape(64, -1).double() / step
                    r_bin = (coef.abs() / R_STEP).long().clamp(max=R_BINS - 1)
                    cell = (((c * 2 + p) * BANDS + band[:, None]) * len(knots) + k) * R_BINS + r_bin  # flat index
                    for total, value in ((cross, real * coef), (source_energy, coef ** 2),
                                         (real_energy, real ** 2), (counts, torch.ones_like(coef))):
                        total.view(-1).scatter_add_(0, cell.flatten(), value.flatten())
        shrink = (cross / source_energy.clamp_min(1e-12)).clamp(0, _MAX_SHRINK)
        residual = real_energy - 2 * shrink * cross + shrink ** 2 * source_energy  # sum (C' - a C)^2
        noise = (residual.clamp_min(0) / counts.clamp_min(1)).sqrt()
        filled = counts >= 16
        shrink, noise = _nearest_filled(shrink, filled, -1), _nearest_filled(noise, filled, -1)
        knot_filled = filled.any(-1, keepdim=True).expand_as(filled)
        shrink, noise = _nearest_filled(shrink, knot_filled, -2), _nearest_filled(noise, knot_filled, -2)
        seen = filled.any(-1).any(-1).any(-1).any(-1)  # per codec
        proxy.shrink[seen] = shrink[seen].float()
        proxy.noise_std[seen] = noise[seen].float()
        proxy.fitted.fill_(1.0)
    small = proxy.shrink[seen][..., :int(1 / R_STEP)]
    return {'count': int(counts.sum()), 'mean_shrink_below_1': float(small.mean()),
            'mean_shrink_above_1': float(proxy.shrink[seen][..., int(1 / R_STEP):].mean()),
            'mean_noise_std': float(proxy.noise_std[seen].mean())}
