"""Codec-aware Real-ESRGAN backbone (§3.2.3, App. B.3, Fig. S1 left).

basicsr's RRDBNet with two tiny MLP heads per RRDB mapping the codec embedding t to per-channel biases added to
the outputs of the first two ResidualDenseBlocks (rdb1, rdb2). rdb3, each RRDB's residual (``out * 0.2 + x``),
the trunk skip and the upsampler are basicsr's own code, run unchanged. Base parameter names equal RRDBNet's, so
Real-ESRGAN checkpoints load; the heads live under ``cond_heads.``.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.utils.registry import ARCH_REGISTRY

from vrpsr_plugin.archs.condition_heads import CodecAwareMixin, ConditionHeads, added_to_outputs, pad_to_multiple
from vrpsr_plugin.codecs.condition import CONDITION_CODECS


@ARCH_REGISTRY.register()
class CodecAwareRRDBNet(CodecAwareMixin, RRDBNet):
    """RRDBNet(num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch) + condition heads (App. B.3).

    ``forward(x, cond)``: ``x`` is B x C x H x W, ``cond`` the B x (len(codecs)+1) condition
    (``CodecCondition.collate``) or None (then exactly the plain RRDBNet). Scales 1 and 2 pixel-unshuffle the
    input; sizes not divisible by 4 (scale 1) or 2 (scale 2) are padded (reflect) and the output cropped back.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, codecs: Sequence[str] = CONDITION_CODECS,
                 emb_dim_per_scalar: int = 64, head_hidden: int = 64) -> None:
        if scale not in (1, 2, 4):
            raise ValueError(f'RRDBNet supports scale 1, 2 or 4, got {scale}')
        super().__init__(num_in_ch, num_out_ch, scale=scale, num_feat=num_feat, num_block=num_block,
                         num_grow_ch=num_grow_ch)
        self.arch_options: Dict[str, Any] = dict(
            num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=num_feat, num_block=num_block,
            num_grow_ch=num_grow_ch, codecs=list(codecs), emb_dim_per_scalar=emb_dim_per_scalar,
            head_hidden=head_hidden)
        # heads 2i and 2i+1 bias the outputs of body[i].rdb1 and body[i].rdb2
        self.cond_heads = ConditionHeads([num_feat] * (2 * num_block), codecs, emb_dim_per_scalar, head_hidden)

    def injection_points(self) -> List[nn.Module]:
        """The modules whose outputs receive the condition biases, in head order."""
        return [rdb for block in self.body for rdb in (block.rdb1, block.rdb2)]

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        factor = {1: 4, 2: 2, 4: 1}[self.scale]
        biases = None if cond is None else self.cond_heads(cond, x)
        with added_to_outputs(self.injection_points(), biases):
            out = super().forward(pad_to_multiple(x, factor))
        return out[..., :height * self.scale, :width * self.scale]
