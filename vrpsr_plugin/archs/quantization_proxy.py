"""A transform-quantisation proxy D(X, codec, q) for the rate-aware simulator (beyond the paper).

The learned distortion net of :mod:`.rate_aware_simulator_arch` can be exploited: stage 2 learned patterns that it
undoes and the real codec does not (docs/simulators.md). This proxy has no such freedom. It codes X as a transform
codec does, in the 8x8 DCT of the YCbCr 4:2:0 planes that the rate model prices (:mod:`.rate_model`), with the
H.26x step Q = Qstep(q) and r = |C| / Q:

    C^ = a(r) * C + s(r) * Q * u,    u ~ U(-sqrt 3, sqrt 3)

a(r) is the codec's mean shrinkage of a coefficient of relative size r (near 0 where the codecs' dead zones and RDO
drop it, near 1 for large ones) and s(r) the standard deviation of its error around that mean: quantisation noise,
the additive-noise proxy of learned image compression (Balle et al., ICLR 2017) in place of rounding, so that no
straight-through estimator is needed. Both are tables over r (piecewise linear between bin centres), per codec,
plane (luma, chroma), frequency band (i + j of the 8x8 frequency) and QP knot (linear in q between knots), fitted
on real decodes (:mod:`vrpsr_plugin.models.quantization_fit`). The chroma goes through the codecs' 4:2:0 round
trip (2x2 average down, centred bilinear up, as :mod:`vrpsr_plugin.codecs.yuv`), which alone removes most of the
chroma of noise. The proxy returns X plus the error it models, mapped back to RGB, so at a fine QP it is that
colour round trip only and a net trained through it sees the plain MSE gradient there.

With autograd on (training through the simulator, or training a post-processing net on its output) the noise is a
fresh draw of torch's generator, so that the expected loss is the loss of the codec's error. Under
``torch.no_grad()`` (evaluation, fidelity checks, a stage-2 target f(X, c')) the output is the conditional mean
E[C^ | C] = a(r) C: deterministic, the proxy's best guess of the real decode (no independent noise to add error),
and the same expected gradient as a noisy target. Its distance to X is then smaller than the real codec's by the
noise it leaves out, so a net must never be trained on it as if it were a decode.
"""
from typing import Sequence

import torch
from torch import nn

from vrpsr_plugin.archs.rate_model import BLOCK, block_dct, block_idct, qstep, ycbcr_levels
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

_UNIFORM_HALF_WIDTH = 3 ** 0.5  # U(-sqrt 3, sqrt 3) has unit variance
QP_KNOTS = (12.0, 17.0, 22.0, 27.0, 32.0, 37.0, 42.0, 47.0, 51.0)  # the stage-1 fit's QP grid
R_STEP, R_BINS = 0.1, 40  # r bins [0, 0.1), ..., [3.9, inf): the tables' knots are the bin centres
BANDS = 2 * BLOCK - 1  # frequency bands i + j = 0 .. 14
BAND_OF_FREQUENCY = torch.tensor([i + j for i in range(BLOCK) for j in range(BLOCK)])


def rgb_from_ycbcr_delta(luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Changes of the limited-range Y and CbCr code values of :func:`~.rate_model.ycbcr_levels` (B x 1 and
    B x 2 x H x W) -> the RGB change in [0, 1] units."""
    from vrpsr_plugin.codecs.yuv import KB, KG, KR
    y = luma / 219.0
    b = y + chroma[:, 0:1] * 2 * (1 - KB) / 224.0
    r = y + chroma[:, 1:2] * 2 * (1 - KR) / 224.0
    g = (y - KR * r - KB * b) / KG
    return torch.cat([r, g, b], dim=1)


class DCTQuantizationProxy(nn.Module):
    """D(X, codec, q) (see the module docstring). ``shrink`` (a) and ``noise_std`` (s, in units of Qstep):
    codecs x 2 planes x 15 bands x QP knots x 40 r-bins; ``fitted`` is 1 once
    :func:`~vrpsr_plugin.models.quantization_fit.fit_quantization_proxy` has set them."""

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS, qp_knots: Sequence[float] = QP_KNOTS) -> None:
        super().__init__()
        self.codecs = tuple(codecs)
        shape = (len(self.codecs), 2, BANDS, len(qp_knots), R_BINS)
        self.register_buffer('qp_knots', torch.tensor([float(q) for q in qp_knots]))
        self.register_buffer('shrink', torch.ones(shape))
        self.register_buffer('noise_std', torch.full(shape, 12 ** -0.5))
        self.register_buffer('fitted', torch.zeros(()))

    def at_qp(self, table: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor, plane_index: int) -> torch.Tensor:
        """``table`` of one plane for codec one-hot (B x n) at QPs (B,), linear between QP knots (clamped at the
        ends; differentiable in q), per frequency: B x 64 x r-bins."""
        knots = self.qp_knots
        q = qp.float().clamp(float(knots[0]), float(knots[-1]))
        upper = torch.searchsorted(knots, q.detach()).clamp(1, len(knots) - 1)
        weight = ((q - knots[upper - 1]) / (knots[upper] - knots[upper - 1]))[:, None, None]
        rows = torch.einsum('bn,nkqr->bkqr', onehot.float(), table[:, plane_index])  # B x bands x knots x bins
        index = upper[:, None, None, None].expand(-1, rows.shape[1], 1, rows.shape[3])
        low, high = rows.gather(2, index - 1)[:, :, 0], rows.gather(2, index)[:, :, 0]
        return (low + weight * (high - low))[:, BAND_OF_FREQUENCY.to(table.device)]

    @staticmethod
    def along_r(table: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """B x 64 x bins table read at r (B x C x 64 x N), linear between bin centres, flat beyond the ends."""
        position = (r / R_STEP - 0.5).clamp(0, R_BINS - 1)
        low = position.detach().floor().long().clamp(max=R_BINS - 2)
        weight = position - low
        expanded = table[:, None].expand(-1, r.shape[1], -1, -1)
        return torch.lerp(expanded.gather(-1, low), expanded.gather(-1, low + 1), weight)

    def coded_error(self, plane: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor,
                    plane_index: int) -> torch.Tensor:
        """C^ - C of one plane group (luma 0, chroma 1), back in the pixel domain."""
        coef = block_dct(plane, predict_dc=False)  # B x C x 64 x N
        step = qstep(qp.float())[:, None, None, None]
        r = coef.abs() / step
        shrink = self.along_r(self.at_qp(self.shrink, onehot, qp, plane_index), r)
        coded = shrink * coef
        if torch.is_grad_enabled():
            std = self.along_r(self.at_qp(self.noise_std, onehot, qp, plane_index), r) * step
            coded = coded + std * (2 * torch.rand_like(coef) - 1) * _UNIFORM_HALF_WIDTH
        return block_idct(coded - coef, *plane.shape[-2:])

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        """The decoded picture (B x 3 x H x W in [0, 1]) of ``x`` by the codec of ``onehot`` (B x n) at QPs (B,)."""
        luma, chroma = ycbcr_levels(x.float())
        height, width = luma.shape[-2:]
        sub = nn.functional.avg_pool2d(chroma, 2, ceil_mode=True)
        coded = sub + self.coded_error(sub, onehot, qp, 1)
        coded = nn.functional.interpolate(coded, scale_factor=2, mode='bilinear', align_corners=False)
        delta = rgb_from_ycbcr_delta(self.coded_error(luma, onehot, qp, 0), coded[..., :height, :width] - chroma)
        return (x.float() + delta).to(x.dtype)
