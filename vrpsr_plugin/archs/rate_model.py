"""A differentiable rate model R(X, q): bits of a real intra codec for picture X at QP q (beyond the paper).

Rate-preserving recompression (Eq. 2) spends a fixed budget: the codec's QP for X' is the q* with
R(X', q*) = bpp, so busier content gets a coarser QP. The paper's simulators take the bpp as a condition and leave
that coupling implicit; this model makes it explicit. It is a transform-coding rate proxy fitted to real encodes:

    bits(X, q) = header[codec] + sum_{planes, 8x8 blocks, frequencies f} w[codec, plane, f] * log2(1 + (|C_f| / (s[codec, plane, f] * Qstep(q))) ** gamma[codec, plane])

with C the orthonormal 8x8 DCT of the YCbCr 4:2:0 planes (BT.601 limited range, the codecs' input; the DC term
predicted from the left/top blocks as intra prediction does) and Qstep(q) = 2 ** ((q - 4) / 6), the H.26x step.
The header term makes the bpp depend on the picture size as the real bitstream does (a 64-px crop pays its
parameter sets over 4096 pixels). Monotone in q by construction, so :func:`solve_qp` finds q* by bisection and
differentiates it implicitly: dq*/dX = -(d ln R / dX) / (d ln R / dq).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from vrpsr_plugin.codecs.condition import CONDITION_CODECS

BLOCK = 8


def _dct_matrix(n: int = BLOCK) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    basis = torch.cos(torch.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * (2.0 / n) ** 0.5
    basis[0] /= 2 ** 0.5
    return basis.float()


def ycbcr_levels(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """B x 3 x H x W RGB in [0, 1] -> (Y: B x 1 x H x W, CbCr: B x 2 x H x W) in 8-bit limited-range code values
    (BT.601, the matrix and range of :mod:`vrpsr_plugin.codecs.yuv`), chroma at full resolution."""
    from vrpsr_plugin.codecs.yuv import KB, KG, KR
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = KR * r + KG * g + KB * b
    chroma = torch.cat([(b - y) / (2 * (1 - KB)), (r - y) / (2 * (1 - KR))], dim=1)
    return 16.0 + 219.0 * y, 224.0 * chroma


def ycbcr420_levels(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`ycbcr_levels` with the chroma averaged over 2x2 (4:2:0, as :mod:`vrpsr_plugin.codecs.yuv` does):
    (Y: B x 1 x H x W, CbCr: B x 2 x H/2 x W/2)."""
    luma, chroma = ycbcr_levels(x)
    return luma, nn.functional.avg_pool2d(chroma, 2, ceil_mode=True)


def block_dct(plane: torch.Tensor, predict_dc: bool = True) -> torch.Tensor:
    """B x C x H x W -> B x C x 64 x (H/8 * W/8) orthonormal 8x8 DCT coefficients (edges replicated to 8). With
    ``predict_dc`` the DC term is the residual of the mean of the left and top neighbours' DC (intra prediction)."""
    pad_h, pad_w = -plane.shape[-2] % BLOCK, -plane.shape[-1] % BLOCK
    if pad_h or pad_w:
        plane = nn.functional.pad(plane, (0, pad_w, 0, pad_h), mode='replicate')
    b, c, h, w = plane.shape
    blocks = plane.reshape(b, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5)
    d = _dct_matrix().to(plane)
    coef = d @ blocks @ d.T  # B x C x nh x nw x 8 x 8
    coef = coef.reshape(b, c, h // BLOCK, w // BLOCK, BLOCK * BLOCK)
    if predict_dc:  # edges replicated
        dc = coef[..., 0]
        padded = nn.functional.pad(dc, (1, 0, 1, 0), mode='replicate')
        pred = (padded[..., 1:, :-1] + padded[..., :-1, 1:]) / 2
        coef = torch.cat([(dc - pred).unsqueeze(-1), coef[..., 1:]], dim=-1)
    return coef.reshape(b, c, -1, BLOCK * BLOCK).transpose(-1, -2)


def block_idct(coef: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`block_dct` with ``predict_dc=False``: B x C x 64 x N -> B x C x ``height`` x ``width``."""
    nh, nw = -(-height // BLOCK), -(-width // BLOCK)
    b, c = coef.shape[:2]
    blocks = coef.transpose(-1, -2).reshape(b, c, nh, nw, BLOCK, BLOCK)
    d = _dct_matrix().to(coef)
    plane = (d.T @ blocks @ d).permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * BLOCK, nw * BLOCK)
    return plane[..., :height, :width]


def qstep(qp: torch.Tensor) -> torch.Tensor:
    """H.26x quantiser step size of QP ``qp`` (doubles every 6 QP; 1.0 at QP 4)."""
    return torch.pow(2.0, (qp - 4.0) / 6.0)


class DCTRateModel(nn.Module):
    """R(X, q) in bits per pixel for each codec of ``codecs`` (see the module docstring). ``qp_range`` is the QP
    range it was fitted on; :meth:`forward` refuses QPs outside it."""

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS, qp_range: Tuple[float, float] = (12.0, 51.0)) -> None:
        super().__init__()
        self.codecs = tuple(codecs)
        n = len(self.codecs)
        self.register_buffer('qp_range', torch.tensor([float(qp_range[0]), float(qp_range[1])]))
        self.log_weight = nn.Parameter(torch.zeros(n, 2, BLOCK * BLOCK))  # luma, chroma
        self.log_scale = nn.Parameter(torch.zeros(n, 2, BLOCK * BLOCK))
        self.log_header_bits = nn.Parameter(torch.full((n,), 8.0))
        self.log_exponent = nn.Parameter(torch.zeros(n, 2))  # gamma per codec and plane

    @property
    def fitted_codecs(self) -> Tuple[str, ...]:
        """The codecs the fit saw encodes of: a codec absent from the fit gets zero gradients, so its parameters
        keep their initial values exactly."""
        moved = (self.log_weight != 0).flatten(1).any(1) | (self.log_scale != 0).flatten(1).any(1) \
            | (self.log_exponent != 0).any(1) | (self.log_header_bits != 8.0)
        return tuple(c for c, m in zip(self.codecs, moved.tolist()) if m)

    def coefficients(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """|DCT| magnitudes (smoothed at 0 for a finite gradient) of luma and chroma: the X-dependent part."""
        luma, chroma = ycbcr420_levels(x.float())
        return tuple(torch.sqrt(block_dct(p).square() + 1e-2) for p in (luma, chroma))

    def coefficient_bits(self, magnitudes: Tuple[torch.Tensor, torch.Tensor], onehot: torch.Tensor,
                         qp: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Bits of each DCT magnitude (per plane: B x C x 64 x N, or broadcastable), for codec one-hot (B x n) and
        QPs (B,)."""
        step = qstep(qp.float())[:, None, None, None]
        weight = torch.einsum('bn,npf->bpf', onehot.float(), self.log_weight.exp())
        scale = torch.einsum('bn,npf->bpf', onehot.float(), self.log_scale.exp())
        exponent = onehot.float() @ self.log_exponent.exp()
        return tuple(weight[:, p][:, None, :, None] *
                     torch.log2(1 + (m / (scale[:, p][:, None, :, None] * step)) ** exponent[:, p, None, None, None])
                     for p, m in enumerate(magnitudes))

    def header_bits(self, onehot: torch.Tensor) -> torch.Tensor:
        """Per-picture bits independent of the content (parameter sets, slice headers), (B,)."""
        return onehot.float() @ self.log_header_bits.exp()

    def bits(self, coefficients: Tuple[torch.Tensor, torch.Tensor], onehot: torch.Tensor,
             qp: torch.Tensor) -> torch.Tensor:
        """Total bits per picture (B,) from :meth:`coefficients`, the codec one-hot (B x n) and QPs (B,)."""
        return self.header_bits(onehot) + sum(b.sum(dim=(1, 2, 3))
                                              for b in self.coefficient_bits(coefficients, onehot, qp))

    def check_qp(self, qp: torch.Tensor) -> None:
        lo, hi = (float(v) for v in self.qp_range)
        if bool(((qp < lo - 1e-3) | (qp > hi + 1e-3)).any()):
            raise ValueError(f'the rate model was fitted on QP {lo:g}..{hi:g}; asked for QP '
                             f'{[round(float(v), 2) for v in qp.flatten()]}')

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        """bpp (B,) of the real codec (one-hot) on X at QP ``qp`` (B,)."""
        self.check_qp(qp)
        return self.bits(self.coefficients(x), onehot, qp) / (x.shape[-2] * x.shape[-1])


def qp_hint(rate_model: DCTRateModel, image, codec: str, bpp: float,
            reference: Optional[Tuple[object, int, float]] = None) -> Optional[int]:
    """The integer QP nearest to q* with R(image, q*) = ``bpp``: ``find_qp``'s first guess (its ``first_qp``), so a
    rate-matched encode takes ~2 encodes instead of ~3 (inside ``codec``'s QP range). None when the rate model
    was not fitted for ``codec``. ``image``: anything :func:`~vrpsr_plugin.codecs.inputs.to_rgb_uint8` takes.

    ``reference`` = (picture, qp, bpp): a real encode of a related picture, in Eq. 2 the source X~ at its QP. The
    model's error on it, real bpp / R(picture, qp), multiplies R(image, q) too: the error the two pictures share
    (their content's) cancels, which leaves fewer guesses a QP off."""
    from vrpsr_plugin.codecs.condition import CodecCondition
    from vrpsr_plugin.codecs.encoders import qp_range
    from vrpsr_plugin.codecs.inputs import rgb_to_tensor, to_rgb_uint8
    if codec not in rate_model.fitted_codecs:
        return None
    device = rate_model.log_weight.device
    onehot = CodecCondition(codec, 0.0).vector(rate_model.codecs)[:-1][None].to(device)
    target = float(bpp)
    lo_q, hi_q = (float(v) for v in rate_model.qp_range)
    with torch.no_grad():
        if reference is not None and lo_q <= reference[1] <= hi_q:
            picture, ref_qp, ref_bpp = reference
            ref = rgb_to_tensor(to_rgb_uint8(picture))[None].to(device)
            modelled = float(rate_model(ref, onehot, torch.tensor([float(ref_qp)], device=device))[0])
            target *= modelled / float(ref_bpp)
        x = rgb_to_tensor(to_rgb_uint8(image))[None].to(device)
        q_star = solve_qp(rate_model, x, onehot, torch.tensor([target], device=device))[0]
    lo, hi = qp_range(codec)
    return min(max(int(round(float(q_star))), lo), hi)


def solve_qp(rate_model: DCTRateModel, x: torch.Tensor, onehot: torch.Tensor, bpp: torch.Tensor,
             iterations: int = 20) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q*, reachable): the continuous QP with R(X, q*) = bpp (Eq. 2 through the rate model), differentiable in X
    by the implicit function theorem; where the rate is out of reach q* is the nearest end of the fitted range
    (as ``find_qp`` clips) and carries no gradient. ``reachable`` is a bool mask (B,)."""
    coefficients = rate_model.coefficients(x)
    pixels = x.shape[-2] * x.shape[-1]
    log_target = torch.log(bpp.detach().float().clamp_min(1e-6))
    lo_q, hi_q = (float(v) for v in rate_model.qp_range)

    def log_rate(coef, q):
        return torch.log(rate_model.bits(coef, onehot, q) / pixels)

    with torch.no_grad():
        detached = tuple(c.detach() for c in coefficients)
        lo = torch.full_like(log_target, lo_q)
        hi = torch.full_like(log_target, hi_q)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = log_rate(detached, mid) > log_target  # rate too high: coarser QP
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        q0 = (lo + hi) / 2
        reachable = (q0 > lo_q + 1e-2) & (q0 < hi_q - 1e-2)
        slope = (log_rate(detached, (q0 + 0.25).clamp(max=hi_q)) - log_rate(detached, (q0 - 0.25).clamp(min=lo_q))) \
            / ((q0 + 0.25).clamp(max=hi_q) - (q0 - 0.25).clamp(min=lo_q))
    if not torch.is_grad_enabled() or not x.requires_grad:
        return q0, reachable
    value = log_rate(coefficients, q0)
    q_star = q0 - torch.where(reachable, (value - value.detach()) / slope, torch.zeros_like(value))
    return q_star, reachable
