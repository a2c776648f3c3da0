"""Codec-aware compact Real-ESRGAN backbone (realesr-general / animevideov3), the cheap one for CPU users
(§3.2.3, App. B.3 applied to SRVGGNetCompact).

basicsr's SRVGGNetCompact with one tiny MLP head per feature convolution (the first conv and the ``num_conv`` body
convs, i.e. every conv with ``num_feat`` outputs): its per-channel bias is added to the conv output, before the
activation. The last conv (to ``num_out_ch * upscale**2`` sub-pixels), the pixel shuffle and the nearest-upsampled
skip are basicsr's code, unchanged. Because each bias sits right after a conv, it folds exactly into that conv's
bias (``vrpsr export``).
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vrpsr_plugin.archs.condition_heads import CodecAwareMixin, ConditionHeads, added_to_outputs
from vrpsr_plugin.codecs.condition import CONDITION_CODECS


@ARCH_REGISTRY.register()
class CodecAwareSRVGGNetCompact(CodecAwareMixin, SRVGGNetCompact):
    """SRVGGNetCompact(num_in_ch, num_out_ch, num_feat, num_conv, upscale, act_type) + condition heads.

    ``forward(x, cond)``: ``cond`` is the B x (len(codecs)+1) condition or None (exactly the plain net).
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4, act_type: str = 'prelu', codecs: Sequence[str] = CONDITION_CODECS,
                 emb_dim_per_scalar: int = 64, head_hidden: int = 64) -> None:
        if act_type not in ('relu', 'prelu', 'leakyrelu'):
            raise ValueError(f"act_type must be 'relu', 'prelu' or 'leakyrelu', got {act_type!r}")
        super().__init__(num_in_ch, num_out_ch, num_feat=num_feat, num_conv=num_conv, upscale=upscale,
                         act_type=act_type)
        self.arch_options: Dict[str, Any] = dict(
            num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_conv=num_conv, upscale=upscale,
            act_type=act_type, codecs=list(codecs), emb_dim_per_scalar=emb_dim_per_scalar, head_hidden=head_hidden)
        self.cond_heads = ConditionHeads([num_feat] * (num_conv + 1), codecs, emb_dim_per_scalar, head_hidden)

    def injection_points(self) -> List[nn.Conv2d]:
        """The feature convs whose outputs receive the condition biases, in head order (body[0], body[2], ...;
        the last conv is excluded)."""
        return [self.body[i] for i in range(0, 2 * (self.num_conv + 1), 2)]

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        biases = None if cond is None else self.cond_heads(cond, x)
        with added_to_outputs(self.injection_points(), biases):
            return super().forward(x)
