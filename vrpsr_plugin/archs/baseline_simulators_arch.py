"""Baseline codec simulators for the comparison of Table 6, with the simulator call signature sim(x, cond).

- ``DiffJPEGSimulator``: BasicSR's differentiable JPEG at the JPEG quality that reaches the condition's bpp.
- ``HyperpriorSimulator``: a learned hyperprior-style proxy [18, 21]: a conditioned conv autoencoder with noise
  quantisation whose step size comes from the condition and from a hyper-latent (no entropy model: the rate is an
  input in the rate-target formulation, Eq. 4).
- ``CNNCodecSimulator``: a small conditioned residual CNN that trains on a CPU in minutes.

All take x in [0, 1] (B x 3 x H x W, any size) and cond B x (len(codecs)+1), and return the simulated decoded
image, same size, in [0, 1] (straight-through clamp: gradients reach x everywhere).
"""
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.utils.diffjpeg import DiffJPEG
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vrpsr_plugin.archs.codec_embedding import CodecEmbedding
from vrpsr_plugin.archs.one_step_diffusion import check_image_and_condition, straight_through_clamp
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

# (bpp, JPEG quality): median bpp of OpenCV baseline JPEG (4:2:0) over the 68 CBSD68 photos at each quality,
# from ``fit_jpeg_quality_table`` (command in docs/simulators.md). Increasing in both columns; rates below
# 0.208 bpp map to quality 2 (OpenCV's quality 1 and 2 give the same tables).
JPEG_QUALITY_TABLE: Tuple[Tuple[float, float], ...] = (
    (0.208, 2.0), (0.2713, 5.0), (0.4056, 10.0), (0.5245, 15.0), (0.629, 20.0), (0.7974, 30.0), (0.9398, 40.0),
    (1.0893, 50.0), (1.2606, 60.0), (1.505, 70.0), (1.9024, 80.0), (2.8911, 90.0), (3.8804, 95.0), (5.0481, 98.0))


def fit_jpeg_quality_table(images: Sequence[np.ndarray],
                           qualities: Sequence[int] = (2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98)
                           ) -> List[Tuple[float, float]]:
    """Encode every HxWx3 RGB uint8 image with OpenCV JPEG at each quality; return (median bpp, quality) pairs."""
    import cv2
    table = []
    for quality in qualities:
        bpps = []
        for image in images:
            ok, data = cv2.imencode('.jpg', np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError(f'OpenCV could not JPEG-encode an image at quality {quality}')
            bpps.append(8.0 * data.size / (image.shape[0] * image.shape[1]))
        table.append((round(float(np.median(bpps)), 4), float(quality)))
    return table


def jpeg_quality_for_bpp(bpp: torch.Tensor, table: Sequence[Tuple[float, float]] = None) -> torch.Tensor:
    """Monotone map bpp -> JPEG quality: piecewise linear in log(bpp) through ``table``, clamped at its ends."""
    table = JPEG_QUALITY_TABLE if table is None else table
    rates = torch.tensor([r for r, _ in table], dtype=torch.float64)
    quality = torch.tensor([q for _, q in table], dtype=torch.float64)
    log_bpp = bpp.detach().double().cpu().clamp(min=rates[0].item(), max=rates[-1].item()).log()
    log_rates = rates.log()
    idx = torch.searchsorted(log_rates, log_bpp).clamp(1, len(table) - 1)
    frac = (log_bpp - log_rates[idx - 1]) / (log_rates[idx] - log_rates[idx - 1])
    return (quality[idx - 1] + frac * (quality[idx] - quality[idx - 1])).float()


def _condition_trunk(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())


def _zero(layer: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a condition head (App. B.3)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@ARCH_REGISTRY.register()
class DiffJPEGSimulator(nn.Module):
    """Differentiable JPEG proxy (BasicSR's DiffJPEG with a smooth rounding) at the rate-matched JPEG quality
    (Table 6, "JPEG"). The codec one-hot is ignored: JPEG stands in for every codec. No trainable parameters."""
    codec_aware = True

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS) -> None:
        super().__init__()
        self.codecs = tuple(codecs)
        self.jpeg = DiffJPEG(differentiable=True)
        self.jpeg.requires_grad_(False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_image_and_condition(x, cond, len(self.codecs) + 1)
        quality = jpeg_quality_for_bpp(cond[:, -1]).to(x.device)
        return straight_through_clamp(self.jpeg(x, quality))


@ARCH_REGISTRY.register()
class HyperpriorSimulator(nn.Module):
    """Learned hyperprior-style proxy (Table 6, "Hyperprior"): analysis transform g_a (4 stride-2 convs) ->
    quantisation of y / step -> synthesis g_s. log(step) = head(embedded cond) + h_s(quantised z = h_a(y)), both
    heads zero-initialised; the synthesis is FiLM-biased by the condition. Uniform noise replaces rounding in
    training; evaluation rounds with a straight-through gradient, so gradients always reach x."""
    codec_aware = True

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS, num_feat: int = 64, num_latent: int = 96,
                 num_hyper: int = 64, cond_hidden: int = 128) -> None:
        super().__init__()
        self.codecs = tuple(codecs)
        act = nn.GELU
        self.embedding = CodecEmbedding(num_scalars=len(self.codecs) + 1)
        self.g_a = nn.Sequential(nn.Conv2d(3, num_feat, 5, 2, 2), act(), nn.Conv2d(num_feat, num_feat, 5, 2, 2), act(),
                                 nn.Conv2d(num_feat, num_feat, 5, 2, 2), act(),
                                 nn.Conv2d(num_feat, num_latent, 5, 2, 2))
        self.h_a = nn.Sequential(nn.Conv2d(num_latent, num_hyper, 3, 1, 1), act(),
                                 nn.Conv2d(num_hyper, num_hyper, 3, 2, 1))
        self.h_s = nn.Sequential(nn.ConvTranspose2d(num_hyper, num_hyper, 4, 2, 1), act(),
                                 _zero(nn.Conv2d(num_hyper, num_latent, 3, 1, 1)))
        self.trunk = _condition_trunk(self.embedding.out_dim, cond_hidden)
        self.step_head = _zero(nn.Linear(cond_hidden, num_latent))
        self.bias_heads = nn.ModuleList(_zero(nn.Linear(cond_hidden, num_feat)) for _ in range(3))
        self.g_s = nn.ModuleList([nn.ConvTranspose2d(num_latent, num_feat, 4, 2, 1),
                                  nn.ConvTranspose2d(num_feat, num_feat, 4, 2, 1),
                                  nn.ConvTranspose2d(num_feat, num_feat, 4, 2, 1),
                                  nn.ConvTranspose2d(num_feat, 3, 4, 2, 1)])
        self.act = act()

    def _quantise(self, v: torch.Tensor) -> torch.Tensor:
        if self.training:
            return v + torch.empty_like(v).uniform_(-0.5, 0.5)
        return v + (torch.round(v) - v).detach()

    def quantised_latent(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """y_hat = Q(g_a(x) / step) * step with log(step) = head(cond) + h_s(Q(h_a(y))); x padded to 32 px."""
        y = self.g_a(x * 2 - 1)
        z = self._quantise(self.h_a(y))
        step = (self.step_head(hidden)[:, :, None, None] + self.h_s(z)).exp()
        return self._quantise(y / step) * step

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_image_and_condition(x, cond, len(self.codecs) + 1)
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 32, -width % 32
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate') if pad_h or pad_w else x
        hidden = self.trunk(self.embedding(cond.float()))
        h = self.quantised_latent(padded, hidden)
        for i, layer in enumerate(self.g_s):
            h = layer(h)
            if i < len(self.bias_heads):
                h = self.act(h + self.bias_heads[i](hidden)[:, :, None, None])
        out = (h[..., :height, :width] + 1) / 2
        return straight_through_clamp(out)


class _FiLMResBlock(nn.Module):
    """conv-act-conv residual block whose features are FiLM-modulated by the condition (zero-init head)."""

    def __init__(self, num_feat: int, cond_hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.film = _zero(nn.Linear(cond_hidden, 2 * num_feat))

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(hidden)[:, :, None, None].chunk(2, dim=1)
        h = self.act(self.conv1(x))
        return x + self.conv2(h * (1 + gamma) + beta)


@ARCH_REGISTRY.register()
class CNNCodecSimulator(nn.Module):
    """Small conditioned residual CNN simulator X^' = X' + r(X', c) for CPU smoke training: stride-1 convs (any
    size, odd included), FiLM from the embedded condition in every block; the output conv and the FiLM heads are
    zero-initialised, so the untrained simulator is the identity. ``grid_period`` (e.g. 16) adds the pixel's phase
    in the codec's block grid (sin/cos of 2 pi y/p and 2 pi x/p) as input channels: a stride-1 CNN cannot
    otherwise tell where block edges fall."""
    codec_aware = True

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS, num_feat: int = 32, num_block: int = 5,
                 cond_hidden: int = 64, grid_period: Optional[int] = None) -> None:
        super().__init__()
        self.codecs = tuple(codecs)
        self.grid_period = grid_period
        self.embedding = CodecEmbedding(num_scalars=len(self.codecs) + 1)
        self.trunk = _condition_trunk(self.embedding.out_dim, cond_hidden)
        self.conv_first = nn.Conv2d(3 if grid_period is None else 7, num_feat, 3, 1, 1)
        self.blocks = nn.ModuleList(_FiLMResBlock(num_feat, cond_hidden) for _ in range(num_block))
        self.conv_last = _zero(nn.Conv2d(num_feat, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        check_image_and_condition(x, cond, len(self.codecs) + 1)
        hidden = self.trunk(self.embedding(cond.float()))
        h = self.conv_first(x * 2 - 1 if self.grid_period is None else torch.cat([x * 2 - 1, self._grid(x)], dim=1))
        for block in self.blocks:
            h = block(h, hidden)
        return straight_through_clamp(x + self.conv_last(h))

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """B x 4 x H x W block-grid phase channels (sin, cos of the row and column phase)."""
        height, width = x.shape[-2:]
        rows = torch.arange(height, device=x.device, dtype=x.dtype) * (2 * math.pi / self.grid_period)
        cols = torch.arange(width, device=x.device, dtype=x.dtype) * (2 * math.pi / self.grid_period)
        planes = [f(rows)[:, None].expand(height, width) for f in (torch.sin, torch.cos)] + \
                 [f(cols)[None, :].expand(height, width) for f in (torch.sin, torch.cos)]
        return torch.stack(planes)[None].expand(x.shape[0], -1, -1, -1)
