"""The codec-aware S3Diff-style SR backbone (§3.2.3, App. B.3), registered for BasicSR."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from vrpsr_plugin.archs.one_step_diffusion import OneStepCodecDiffusion, check_image_and_condition


@ARCH_REGISTRY.register()
class CodecAwareS3Diff(OneStepCodecDiffusion):
    """One-step diffusion SR: the LQ image is upsampled bicubically by ``scale`` (as S3Diff does) and restored by
    the same conditioned one-step core as the simulator (prompt of Eq. 5 + codec FiLM / time embedding), so the SR
    output is aware of the downstream codec and rate in ``cond``.

    Args: ``scale`` (default 4) and every option of ``OneStepCodecDiffusion``.
    """

    def __init__(self, pretrained_model_name_or_path: str, scale: int = 4, **kwargs) -> None:
        super().__init__(pretrained_model_name_or_path, **kwargs)
        if scale < 1:
            raise ValueError(f'scale must be >= 1, got {scale}')
        self.scale = scale
        self.config['scale'] = scale

    def forward(self, x: torch.Tensor, cond: torch.Tensor, prompts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """x: LQ B x 3 x h x w in [0, 1] -> restored B x 3 x (scale*h) x (scale*w) in [0, 1]."""
        check_image_and_condition(x, cond, len(self.codecs) + 1)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode='bicubic', align_corners=False).clamp(0, 1)
        return super().forward(x, cond, prompts)
