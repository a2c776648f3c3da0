"""ASSR-EIC's one-step diffusion decoder (seed 002), for GPU users: the rate-adaptive arbitrary-scale decoder on the
one-step core of the VRPSR simulator and S3Diff backbone.

    x (codec-decoded, down-scaled by s) -> bicubic to the output size -> one step of
    :class:`~vrpsr_plugin.archs.one_step_diffusion.OneStepCodecDiffusion` -> out = up + dial * (step - up)

The condition is ASSR-EIC's (:func:`~vrpsr_plugin.archs.assr_eic_arch.assr_condition`: one-hot codec, QP, log2 s),
so one checkpoint serves every (codec, rate, s). It enters twice, the seed's dual semantic enhancement at this
scale: as the prompt of :func:`assr_prompt` through the frozen CLIP text encoder (semantics of the condition),
and as the zero-initialised FiLM / time-embedding heads (App. B.3 of the VRPSR seed); the decoded picture's own
semantics come from the pretrained VAE latent the UNet restores. With LoRA B = 0 and zero heads it is the plain
one-step SD-Turbo pass on the bicubic up-sampling. ``dial`` blends that pass with the bicubic picture (0: bicubic
only, 1: the full step); the gated two-branch modulator of :class:`~vrpsr_plugin.archs.assr_eic_arch.ASSREICNet`
has no counterpart here.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch.nn import functional as F

from vrpsr_plugin.archs.one_step_diffusion import OneStepCodecDiffusion


def assr_prompt(codec: str, qp: int, scale: float) -> str:
    """The text condition of one picture, e.g. ``A libx265 image coded at QP 40, down-scaled 4.00 times.``"""
    return f'A {codec} image coded at QP {int(qp)}, down-scaled {float(scale):.2f} times.'


@ARCH_REGISTRY.register()
class ASSREICDiffusion(OneStepCodecDiffusion):
    """One-step diffusion ASSR-EIC decoder; the options are ``OneStepCodecDiffusion``'s (SD-Turbo base folder or
    hub id, LoRA ranks, FiLM, GPU options). Same call as ``ASSREICNet``: ``forward(x, cond, out_size, dial)`` and
    ``forward_queries`` for ``ASSREICModel``'s windows (its fidelity branch is the bicubic picture, its gate the
    constant ``dial``: train it with ``fidelity_weight: 0``)."""
    extra_scalars = 1  # [one-hot(codec), qp / qp_max, log2(s) / 3]

    def prompts_for(self, cond: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> List[str]:
        """:func:`assr_prompt` of each row of ``cond`` (``prompts``, when given, are used as they are)."""
        if prompts is not None:
            if isinstance(prompts, str) or len(prompts) != cond.shape[0]:
                raise ValueError(f'prompts must be a list of {cond.shape[0]} strings, got {prompts!r}')
            return list(prompts)
        from vrpsr_plugin.codecs.encoders import qp_range
        rows = cond.detach().float().cpu()
        n = len(self.codecs)
        out = []
        for row in rows:
            codec = self.codecs[int(row[:n].argmax())]
            out.append(assr_prompt(codec, round(float(row[n]) * qp_range(codec)[1]), 2.0 ** (3.0 * float(row[n + 1]))))
        return out

    def forward(self, x: torch.Tensor, cond: torch.Tensor, out_size: Optional[Tuple[int, int]] = None,
                dial: float = 1.0, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Restore ``x`` (B, 3, h, w) in [0, 1] to ``out_size`` (default: (h, w) times the s in ``cond``)."""
        if out_size is None:
            scale = 2.0 ** (3.0 * float(cond[0, -1]))
            out_size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        return self._restore(x, cond, out_size, dial, prompts)[0]

    def _restore(self, x: torch.Tensor, cond: torch.Tensor, out_size: Tuple[int, int], dial: float,
                 prompts: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(output, bicubic up-sampling) at ``out_size``."""
        if not 0.0 <= float(dial) <= 1.0:
            raise ValueError(f'dial must lie in [0, 1], got {dial!r}')
        height, width = int(out_size[0]), int(out_size[1])
        if height < x.shape[-2] or width < x.shape[-1]:
            raise ValueError(f'out_size {tuple(out_size)} is smaller than the input {tuple(x.shape[-2:])}; '
                             'ASSR-EIC only up-scales')
        up = F.interpolate(x, size=(height, width), mode='bicubic', align_corners=False).clamp(0, 1)
        if float(dial) == 0.0:
            return up, up
        return up + float(dial) * (super().forward(up, cond, prompts) - up), up

    def forward_queries(self, x: torch.Tensor, cond: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor,
                        dial: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RGB at ``coords`` (B, Q, 2; (y, x) pixel centres in [-1, 1]) of the outputs whose pixels are ``cell``
        (B, 2) wide: (output, gate = dial, bicubic), each (B, Q, C). Each picture is restored whole at its own
        size, then read at its window (bilinear sampling at pixel centres returns the pixels exactly)."""
        outs, ups = [], []
        for i in range(x.shape[0]):
            size = tuple(int(math.floor(2.0 / float(c) + 0.5)) for c in cell[i])
            out, up = self._restore(x[i:i + 1], cond[i:i + 1], size, dial)
            grid = coords[i:i + 1].flip(-1)[:, :, None]
            outs.append(F.grid_sample(out, grid, mode='bilinear', align_corners=False)[..., 0].transpose(1, 2))
            ups.append(F.grid_sample(up, grid, mode='bilinear', align_corners=False)[..., 0].transpose(1, 2))
        out, up = torch.cat(outs), torch.cat(ups)
        return out, torch.full_like(out[..., :1], float(dial)), up
