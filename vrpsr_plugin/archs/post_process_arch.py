"""Codec-conditioned post-processing net h_phi(X^, c) for the decoded image (§3.4, Eq. 9).

Same-size restoration: ``X^_post = X^ + residual(X^, c)``. The residual branch pixel-unshuffles by ``unshuffle``
(cheap, and it widens the receptive field over codec blocks), runs ``num_block`` of basicsr's ResidualBlockNoBN,
each followed by FiLM ``f * (1 + gamma(t)) + beta(t)`` from a zero-initialised condition head, and pixel-shuffles
back. ``conv_last`` starts at zero, so the untrained net is the identity. Defaults (32 features, 6 blocks,
unshuffle 2) are small and fast; raise ``num_feat`` / ``num_block`` for quality.
"""
from typing import Any, Dict, Optional, Sequence

import torch
from basicsr.archs.arch_util import ResidualBlockNoBN, pixel_unshuffle
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from vrpsr_plugin.archs.condition_heads import CodecAwareMixin, ConditionHeads, pad_to_multiple
from vrpsr_plugin.codecs.condition import CONDITION_CODECS


@ARCH_REGISTRY.register()
class CodecPostProcessNet(CodecAwareMixin, nn.Module):
    """h_phi(X^, c) of Eq. 9: B x C x H x W decoded image (+ B x (len(codecs)+1) condition) -> same size.

    ``cond=None`` skips the FiLM modulation (an unconditioned restoration net).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 32, num_block: int = 6, unshuffle: int = 2,
                 codecs: Sequence[str] = CONDITION_CODECS, emb_dim_per_scalar: int = 64,
                 head_hidden: int = 64) -> None:
        super().__init__()
        if unshuffle not in (1, 2, 4):
            raise ValueError(f'unshuffle must be 1, 2 or 4, got {unshuffle}')
        if num_block < 1:
            raise ValueError(f'num_block must be >= 1, got {num_block}')
        self.unshuffle = unshuffle
        self.arch_options: Dict[str, Any] = dict(
            num_in_ch=num_in_ch, num_feat=num_feat, num_block=num_block, unshuffle=unshuffle, codecs=list(codecs),
            emb_dim_per_scalar=emb_dim_per_scalar, head_hidden=head_hidden)
        packed = num_in_ch * unshuffle ** 2
        self.conv_first = nn.Conv2d(packed, num_feat, 3, 1, 1)
        self.body = nn.ModuleList(ResidualBlockNoBN(num_feat=num_feat) for _ in range(num_block))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, packed, 3, 1, 1)
        nn.init.zeros_(self.conv_last.weight)
        nn.init.zeros_(self.conv_last.bias)
        # head i gives (gamma_i, beta_i) for the output of body[i]
        self.cond_heads = ConditionHeads([2 * num_feat] * num_block, codecs, emb_dim_per_scalar, head_hidden)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        films = None if cond is None else self.cond_heads(cond, x)
        feat = self.conv_first(pixel_unshuffle(pad_to_multiple(x, self.unshuffle), self.unshuffle))
        body = feat
        for i, block in enumerate(self.body):
            body = block(body)
            if films is not None:
                gamma, beta = films[i].chunk(2, dim=1)
                # in place: a fresh tensor per block here slowed the following convolutions by ~20-30% on CPU
                body = body.mul_(1 + gamma).add_(beta)
        residual = F.pixel_shuffle(self.conv_last(feat + self.conv_body(body)), self.unshuffle)
        return x + residual[..., :height, :width]
