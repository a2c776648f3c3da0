"""A transform-quantisation proxy D(X, codec, q) for the rate-aware simulator (beyond the paper).

The learned distortion net of :mod:`.rate_aware_simulator_arch` can be exploited: stage 2 learned patterns that it
undoes and the real codec does not (docs/simulators.md). This proxy has no such freedom. It codes X as a transform
codec does, in the 8x8 DCT of the YCbCr 4:2:0 planes that the rate model prices (:mod:`.rate_model`), with the
H.26x step Q = Qstep(q):

    C^ = g(C) * (C + n),   g(C) = sigmoid((|C| / Q - t_f(q)) / tau),   n ~ Q * s_f(q) * U(-sqrt 3, sqrt 3)

a dead zone (coefficients under t_f * Q are dropped, as the codecs' rounding offsets and RDO drop them) and
quantisation noise of standard deviation s_f * Q on the kept ones: the additive-noise proxy of learned image
compression (Balle et al., ICLR 2017), in place of rounding, so that no straight-through estimator is needed.
t and s are per codec, plane (luma, chroma), frequency f and QP knot (piecewise linear in q between knots: the
codecs' chroma QP tables and RDO do not scale with Qstep alone), fitted on real encodes
(:mod:`vrpsr_plugin.models.quantization_fit`). The proxy returns X plus the error it models, mapped back to RGB, so
at a fine QP it is the identity and a net trained through it sees the plain MSE gradient there.

When gradients flow into X (training through the simulator) the noise is a fresh draw of torch's generator, so
that the expected loss is the loss of the codec's error; otherwise (evaluation, fidelity checks) it is one fixed
draw (seed 0), so the output is deterministic and still has the real codec's error energy.
"""
from typing import Sequence

import torch
from torch import nn

from vrpsr_plugin.archs.rate_model import BLOCK, block_dct, block_idct, qstep, ycbcr420_levels
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

GATE_TEMPERATURE = 0.1  # tau, in units of Q: a near-hard dead zone with a usable gradient
_UNIFORM_HALF_WIDTH = 3 ** 0.5  # U(-sqrt 3, sqrt 3) has unit variance
QP_KNOTS = (12.0, 17.0, 22.0, 27.0, 32.0, 37.0, 42.0, 47.0, 51.0)  # the stage-1 fit's QP grid


def rgb_from_ycbcr_delta(luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Changes of the limited-range Y (B x 1 x H x W) and CbCr (B x 2 x H/2 x W/2) code values of
    :func:`~.rate_model.ycbcr420_levels` -> the RGB change in [0, 1] units (chroma repeated to full size)."""
    from vrpsr_plugin.codecs.yuv import KB, KG, KR
    height, width = luma.shape[-2:]
    chroma = chroma.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :height, :width]
    y = luma / 219.0
    b = y + chroma[:, 0:1] * 2 * (1 - KB) / 224.0
    r = y + chroma[:, 1:2] * 2 * (1 - KR) / 224.0
    g = (y - KR * r - KB * b) / KG
    return torch.cat([r, g, b], dim=1)


class DCTQuantizationProxy(nn.Module):
    """D(X, codec, q) (see the module docstring). ``threshold`` (t) and ``noise_std`` (s): codecs x 2 x 64 x knots,
    in units of Qstep(q), at the QPs ``qp_knots``; ``fitted`` is 1 once
    :func:`~vrpsr_plugin.models.quantization_fit.fit_quantization_proxy` has set them."""

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS, qp_knots: Sequence[float] = QP_KNOTS) -> None:
        super().__init__()
        self.codecs = tuple(codecs)
        shape = (len(self.codecs), 2, BLOCK * BLOCK, len(qp_knots))
        self.register_buffer('qp_knots', torch.tensor([float(q) for q in qp_knots]))
        self.register_buffer('threshold', torch.full(shape, 0.5))
        self.register_buffer('noise_std', torch.full(shape, 12 ** -0.5))
        self.register_buffer('fitted', torch.zeros(()))

    def at_knots(self, table: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor, plane_index: int) -> torch.Tensor:
        """``table`` (threshold or noise_std) of one plane for codec one-hot (B x n) at QPs (B,), interpolated
        linearly between knots (clamped at the ends; differentiable in q): B x 1 x 64 x 1."""
        knots = self.qp_knots
        q = qp.float().clamp(float(knots[0]), float(knots[-1]))
        upper = torch.searchsorted(knots, q.detach()).clamp(1, len(knots) - 1)
        weight = ((q - knots[upper - 1]) / (knots[upper] - knots[upper - 1]))[:, None]
        rows = torch.einsum('bn,nfk->bfk', onehot.float(), table[:, plane_index])  # B x 64 x knots
        low = rows.gather(2, (upper - 1)[:, None, None].expand(-1, rows.shape[1], 1))[..., 0]
        high = rows.gather(2, upper[:, None, None].expand(-1, rows.shape[1], 1))[..., 0]
        return (low + weight * (high - low))[:, None, :, None]

    def coded_error(self, plane: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor,
                    plane_index: int) -> torch.Tensor:
        """C^ - C of one plane group (luma 0, chroma 1), back in the pixel domain."""
        coef = block_dct(plane, predict_dc=False)  # B x C x 64 x N
        step = qstep(qp.float())[:, None, None, None]
        threshold = self.at_knots(self.threshold, onehot, qp, plane_index)
        gate = torch.sigmoid((coef.abs() / step - threshold) / GATE_TEMPERATURE)
        std = self.at_knots(self.noise_std, onehot, qp, plane_index) * step
        if torch.is_grad_enabled() and plane.requires_grad:
            uniform = torch.rand_like(coef)
        else:
            uniform = torch.rand(coef.shape, generator=torch.Generator(coef.device).manual_seed(0), device=coef.device)
        kept = gate * (coef + std * (2 * uniform - 1) * _UNIFORM_HALF_WIDTH)
        return block_idct(kept - coef, *plane.shape[-2:])

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        """The decoded picture (B x 3 x H x W in [0, 1]) of ``x`` by the codec of ``onehot`` (B x n) at QPs (B,)."""
        luma, chroma = ycbcr420_levels(x.float())
        delta = rgb_from_ycbcr_delta(self.coded_error(luma, onehot, qp, 0), self.coded_error(chroma, onehot, qp, 1))
        return (x.float() + delta).to(x.dtype)
