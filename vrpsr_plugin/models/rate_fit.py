"""Fit the rate model R(X, q) (:mod:`vrpsr_plugin.archs.rate_model`) to real encodes (stage 1, beyond the paper).

Crops of several sizes (a crop's bpp depends on its size through the per-picture header, which is measured, not
fitted) are coded by the real codecs at every QP of a grid; R's few per-frequency parameters are fitted by least
squares on ln(bpp). Runs in well under a minute for a few hundred crops on a CPU; the encodes dominate.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from vrpsr_plugin.archs.rate_model import DCTRateModel
from vrpsr_plugin.codecs.inputs import rgb_to_tensor


@dataclass
class RateSample:
    """One crop and the real bpp (and, when kept, the decoded picture) of each (codec, QP) it was coded at."""
    image: np.ndarray
    codecs: List[str]
    qps: List[int]
    bpps: List[float]
    decodes: Optional[List[np.ndarray]] = None


def collect_rate_samples(images: Sequence[np.ndarray], codecs: Sequence[str], qps: Sequence[int],
                         sizes: Sequence[int], seed: int = 0,
                         vary: Optional[Callable[[np.ndarray, int], np.ndarray]] = None,
                         keep_decodes: bool = False, **encode_kwargs) -> List[RateSample]:
    """One random crop per image (side drawn from ``sizes``, 16-aligned, at most the image's short side), coded
    with every codec at every QP. ``vary(crop, i)`` (e.g. noise, blur, sharpening) replaces every second crop
    first: the rate model must price the content stage 2's nets produce, not only clean photos. ``keep_decodes``
    keeps the decoded pictures (for :mod:`vrpsr_plugin.models.quantization_fit`)."""
    from vrpsr_plugin.codecs import encode
    rng = np.random.default_rng(seed)
    samples = []
    for image in images:
        side = min(int(rng.choice(sizes)), min(image.shape[:2]) // 16 * 16)
        if side < 16:
            raise ValueError(f'an image of {image.shape[0]}x{image.shape[1]} is too small for a rate sample')
        top = int(rng.integers(0, image.shape[0] - side + 1))
        left = int(rng.integers(0, image.shape[1] - side + 1))
        crop = np.ascontiguousarray(image[top:top + side, left:left + side])
        if vary is not None and len(samples) % 2:
            crop = vary(crop, len(samples))
        pairs = [(codec, int(qp)) for codec in codecs for qp in qps]
        results = [encode(crop, codec, qp=qp, **encode_kwargs) for codec, qp in pairs]
        samples.append(RateSample(crop, [c for c, _ in pairs], [q for _, q in pairs], [float(r.bpp) for r in results],
                                  [r.image for r in results] if keep_decodes else None))
    return samples


_EDGES = torch.logspace(-1, math.log10(4096.0), 49)  # |DCT| bins, ~20% wide, 0.1..4096 (8-bit levels x 8)


def histogram(coefficients: torch.Tensor) -> torch.Tensor:
    """Counts of the magnitudes of each frequency in log-spaced bins, summed over blocks and channels: 64 x 48."""
    index = torch.bucketize(coefficients.clamp(_EDGES[0], _EDGES[-1] * 0.999).contiguous(), _EDGES[1:-1])
    counts = torch.zeros(*coefficients.shape[:-1], len(_EDGES) - 1).scatter_add_(-1, index,
                                                                              torch.ones_like(coefficients))
    return counts.sum(dim=(0, 1))


def _design(model: DCTRateModel, samples: Sequence[RateSample]):
    """The fit as a matrix product: per crop the histograms of its luma and chroma magnitudes (crops x K), per
    distinct (codec, QP) pair the bits of each bin centre (pairs x K): bits(crop, pair) = counts @ bits_per_bin."""
    with torch.no_grad():
        counts = torch.stack([torch.cat([histogram(c).flatten() for c in
                                         model.coefficients(rgb_to_tensor(s.image)[None])]) for s in samples])
    pairs = sorted({(c, q) for s in samples for c, q in zip(s.codecs, s.qps)})
    pair_index = {p: i for i, p in enumerate(pairs)}
    crop = torch.tensor([i for i, s in enumerate(samples) for _ in s.qps])
    pair = torch.tensor([pair_index[cq] for s in samples for cq in zip(s.codecs, s.qps)])
    onehot = torch.tensor([[1.0 if c == name else 0.0 for name in model.codecs] for c, _ in pairs])
    qps = torch.tensor([float(q) for _, q in pairs])
    log_bpp = torch.tensor([b for s in samples for b in s.bpps]).log()
    pixels = torch.tensor([float(s.image.shape[0] * s.image.shape[1]) for s in samples])[crop]
    return counts, crop, pair, onehot, qps, log_bpp, pixels


def _log_rate(model, counts, crop, pair, onehot, qps, pixels) -> torch.Tensor:
    centres = (_EDGES[:-1] * _EDGES[1:]).sqrt()[None, None, None]  # 1 x 1 x 1 x bins, every frequency
    per_bin = torch.cat([b.flatten(1) for b in model.coefficient_bits((centres, centres), onehot, qps)], dim=1)
    bits = (counts @ per_bin.T)[crop, pair] + model.header_bits(onehot)[pair]
    return torch.log(bits / pixels)


def rate_errors(model: DCTRateModel, samples: Sequence[RateSample]) -> Dict[str, float]:
    """Mean and median |R / real - 1| and the mean ln-ratio (bias) over every (crop, codec, QP)."""
    ratios = []
    with torch.no_grad():
        for s in samples:  # exact coefficients, as the simulator uses them
            onehot = torch.tensor([[1.0 if c == name else 0.0 for name in model.codecs] for c in s.codecs])
            bits = model.bits(model.coefficients(rgb_to_tensor(s.image)[None]), onehot,
                              torch.tensor(s.qps, dtype=torch.float32))
            ratios.append(torch.log(bits / (s.image.shape[0] * s.image.shape[1])) - torch.tensor(s.bpps).log())
    log_ratio = torch.cat(ratios)
    rel = (log_ratio.exp() - 1).abs()
    return {'mean_rel_error': float(rel.mean()), 'median_rel_error': float(rel.median()),
            'bias_log': float(log_ratio.mean()), 'count': int(rel.numel())}


def fit_rate_model(model: DCTRateModel, samples: Sequence[RateSample], steps: int = 300,
                   lr: float = 0.05) -> Dict[str, float]:
    """Least squares on ln(bpp) with Adam over all samples at once (histogrammed magnitudes, see :func:`_design`);
    sets ``model``'s parameters (those of codecs without samples stay at their initial values; the header is each
    codec's measured :func:`~vrpsr_plugin.codecs.condition.picture_header_bits`, the part the condition leaves
    out) and returns :func:`rate_errors` on ``samples`` (exact magnitudes) after the fit."""
    from vrpsr_plugin.codecs.condition import picture_header_bits
    if not samples:
        raise ValueError('no rate samples to fit')
    with torch.no_grad():
        for codec in {c for s in samples for c in s.codecs}:
            model.log_header_bits[model.codecs.index(codec)] = math.log(picture_header_bits(codec))
    counts, crop, pair, onehot, qps, log_bpp, pixels = _design(model, samples)
    optimizer = torch.optim.Adam([model.log_weight, model.log_scale, model.log_exponent], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (_log_rate(model, counts, crop, pair, onehot, qps, pixels) - log_bpp).square().mean()
        loss.backward()
        optimizer.step()
        schedule.step()
    return rate_errors(model, samples)
