"""UCIP: universal compressed-image SR with dynamic prompts (seed 003), usable as an SR backbone g(X~) and as
VRPSR's post-processing net h(X^, c) (VRPSR §3.4).

Modules (UCIP §3):
- ``DynamicPromptGeneration`` (DPM, Eq. 1): N learned base prompts of size 1 x 1 x C_p; a linear layer maps the
  features to N logits per position, softmax gives the coefficients, P = softmax(FC(F)) @ P_base (H x W x C_p).
- ``PromptGuidedTokenMixer`` (PTMM, Eqs. 2-4): offsets O_h, O_v = FC([X, P]) (one offset per channel and
  position, Eq. 2); X_h / X_v = each channel sampled at its horizontal / vertical offset, then a 1x1 channel
  mix (the deformable 1x1 conv of ActiveMLP's ATM), X_l = depthwise 3x3 conv (Eq. 3);
  out = X_h * a_h + X_v * a_v + X_l * a_l with [a_h, a_v, a_l] = softmax over the three branches, per channel, of
  W (X_h + X_v + X_l), W in R^{C x 3C} (Eq. 4), then a linear projection (ATM).
- ``PTMLayer``: pre-norm residual PTMM followed by a pre-norm residual MLP (Eq. 5).
- ``PromptGuidedTokenMixerBlock`` (PTMB, §3.2.3): one DPM whose prompt is shared by all its PTMMs; new offsets
  are predicted in every second PTMM and reused by the next one.
- ``UCIPNet`` (§3.3, Eq. 6): conv "patch embedding" (3x3, stride 1), stacked PTMBs, conv + long skip, and
  reconstruction by convs with nearest x2 upsampling (ESRGAN/SwinIR "nearest+conv"). Scales 1, 2, 4.

Internal layout: PTMB internals are channels-last (B x H x W x C) so the FC layers are ``nn.Linear``; the net's
interface is B x 3 x H x W in [0, 1]. Every input size works (odd sizes too): nothing is strided or windowed.

Deviations from the seed, whose equation bodies are not legible in the text we have, filled in from ActiveMLP
(its ref. [64]) and SwinIR (ref. [34]), which UCIP says it follows:
- Offset sampling uses ``grid_sample`` (``vrpsr_plugin.archs.offset_sampling``), not ``deform_conv2d``
  (unavailable on CPU torch here); same maths: bilinear, zeros outside, offsets in pixels.
- Eq. 4's weights are computed, as in ATM, from the spatial mean of X_h + X_v + X_l (one weight per channel and
  branch per image). Consequence: tiled inference is not bit-identical to whole-image inference.
- DPM reads layer-normalised features; base prompts start uniform in [0, 1) (as PromptIR's prompts).
- Each PTMB ends with a 3x3 conv and a residual connection around the block (SwinIR's RSTB), and the body has a
  conv + long skip; the seed's Eq. 5/6 bodies are not legible, these are the pipeline it cites.
- The embedding width C is not stated in the text; the paper-scale option (C = 128, 6 PTMBs x 6 PTMMs, 8 prompts,
  MLP ratio 4) gives ~10.7 M parameters, in line with "one third of PromptIR's" (35.6 M).
- ``img_residual`` (off by default) adds the bilinearly upsampled input to the output and zero-initialises
  ``conv_last``: a post-processing net h(X^, c) then starts as the identity and predicts a correction (our
  addition, as ``CodecPostProcessNet``).

Codec conditioning (our addition, CONTRIBUTING / VRPSR App. B.3): with ``codec_conditioned=True`` the B x 4
condition feeds the shared ``ConditionHeads`` (``CodecEmbedding`` + one MLP head per PTMB, last layer zero-init);
head i gives PTMB i (a) a bias on the DPM coefficient logits (the codec steers which prompts are mixed) and
(b) a per-channel shift of the block's input features. So the conditioned net equals the unconditioned one at
step 0, and an unconditioned checkpoint loads with ``allowed_missing_prefixes=UCIPNet.CONDITION_PREFIXES``.
As with ``CodecAwareRRDBNet``, ``cond=None`` runs the plain (unmodulated) net; a ``cond`` given to a net built
without heads is an error. ``codec_aware`` is False on the class and set per instance to ``codec_conditioned``
(the option decides whether the net reads ``cond``).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vrpsr_plugin.archs.condition_heads import HEADS_PREFIX, ConditionHeads
from vrpsr_plugin.archs.offset_sampling import axial_offset_sample
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

SCALES = (1, 2, 4)


def _init_linear(module: nn.Module) -> None:
    """ActiveMLP's initialisation: truncated normal (std 0.02) weights, zero biases for linear layers."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DynamicPromptGeneration(nn.Module):
    """DPM (UCIP §3.1, Eq. 1): P = softmax(FC(LN(F))) @ P_base, P_base: num_prompts x prompt_dim."""

    def __init__(self, dim: int, prompt_dim: int, num_prompts: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.coefficients = nn.Linear(dim, num_prompts)
        self.prompts = nn.Parameter(torch.rand(num_prompts, prompt_dim))

    def forward(self, x: torch.Tensor, logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x H x W x C -> dynamic prompt B x H x W x prompt_dim. ``logit_bias`` (B x num_prompts) is the
        codec head's shift of the coefficient logits."""
        logits = self.coefficients(self.norm(x))
        if logit_bias is not None:
            logits = logits + logit_bias[:, None, None, :]
        return logits.softmax(dim=-1) @ self.prompts


class PromptGuidedTokenMixer(nn.Module):
    """PTMM (UCIP §3.2.1, Eqs. 2-4): prompt-guided horizontal/vertical offset token mixing + depthwise local
    branch, fused with per-channel softmax weights. ``predicts_offsets`` False: reuse the previous PTMM's."""

    def __init__(self, dim: int, prompt_dim: int, predicts_offsets: bool) -> None:
        super().__init__()
        self.offset = nn.Linear(dim + prompt_dim, 2 * dim) if predicts_offsets else None
        self.mix_h = nn.Linear(dim, dim)
        self.mix_v = nn.Linear(dim, dim)
        self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fusion = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor,
                offsets: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: B x H x W x C (normalised), prompt: B x H x W x C_p, offsets: B x 2C x H x W (horizontal then
        vertical, pixels) or None when this PTMM predicts them. Returns (mixed tokens, offsets used)."""
        if self.offset is not None:
            offsets = self.offset(torch.cat([x, prompt], dim=-1)).permute(0, 3, 1, 2)  # Eq. 2
        elif offsets is None:
            raise ValueError('this PTMM reuses offsets (predicts_offsets=False) but none were passed')
        b, _, _, c = x.shape
        x_cf = x.permute(0, 3, 1, 2)
        off_h, off_v = offsets.chunk(2, dim=1)
        x_h = self.mix_h(axial_offset_sample(x_cf, off_h, 'horizontal').permute(0, 2, 3, 1))  # Eq. 3
        x_v = self.mix_v(axial_offset_sample(x_cf, off_v, 'vertical').permute(0, 2, 3, 1))
        x_l = self.local(x_cf).permute(0, 2, 3, 1)
        weights = self.fusion((x_h + x_v + x_l).mean(dim=(1, 2))).view(b, 3, 1, 1, c).softmax(dim=1)  # Eq. 4
        mixed = x_h * weights[:, 0] + x_v * weights[:, 1] + x_l * weights[:, 2]
        return self.proj(mixed), offsets


class PTMLayer(nn.Module):
    """One PTMM step of Eq. 5: X = X + PTMM(LN(X), P, O); X = X + MLP(LN(X))."""

    def __init__(self, dim: int, prompt_dim: int, mlp_ratio: float, predicts_offsets: bool) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = PromptGuidedTokenMixer(dim, prompt_dim, predicts_offsets)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, prompt: torch.Tensor,
                offsets: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        mixed, offsets = self.mixer(self.norm1(x), prompt, offsets)
        x = x + mixed
        return x + self.mlp(self.norm2(x)), offsets


class PromptGuidedTokenMixerBlock(nn.Module):
    """PTMB (UCIP §3.2.3): one DPM prompt shared by ``num_layers`` PTMMs, new offsets every second PTMM,
    then a 3x3 conv and the block residual. Input/output B x C x H x W."""

    def __init__(self, dim: int, prompt_dim: int, num_prompts: int, num_layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.dpm = DynamicPromptGeneration(dim, prompt_dim, num_prompts)
        self.layers = nn.ModuleList(
            PTMLayer(dim, prompt_dim, mlp_ratio, predicts_offsets=(i % 2 == 0)) for i in range(num_layers))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, feature_shift: Optional[torch.Tensor] = None,
                logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``feature_shift`` (B x C) and ``logit_bias`` (B x num_prompts) come from the codec head, if any."""
        if feature_shift is not None:
            x = x + feature_shift[:, :, None, None]
        tokens = x.permute(0, 2, 3, 1)
        prompt = self.dpm(tokens, logit_bias)
        offsets = None
        for layer in self.layers:
            tokens, offsets = layer(tokens, prompt, offsets)
        return x + self.conv(tokens.permute(0, 3, 1, 2))


@ARCH_REGISTRY.register()
class UCIPNet(nn.Module):
    """UCIP (§3.3, Eq. 6) as a BasicSR arch: ``forward(x, cond=None)``, x: B x num_in_ch x H x W in [0, 1],
    output B x num_out_ch x (scale H) x (scale W). ``cond`` (B x 4, ``CodecCondition.collate``) is required iff
    ``codec_conditioned``.

    Args:
        scale: 1 (restoration / post-processing), 2 or 4.
        embed_dim: C, the token width. num_blocks: PTMBs. num_layers: PTMMs per PTMB.
        num_prompts: N base prompts per DPM. prompt_dim: C_p (default C). mlp_ratio: hidden width of the MLPs.
        num_feat: width of the reconstruction convs. img_residual: add the (bilinearly upsampled) input; the
            last conv starts at zero (identity at init).
        codec_conditioned: add the zero-initialised codec heads (module docstring); ``codecs``,
        ``emb_dim_per_scalar`` and ``head_hidden`` configure them as in ``ConditionHeads``.
    """

    codec_aware = False
    CONDITION_PREFIXES = (HEADS_PREFIX,)

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, embed_dim: int = 128,
                 num_blocks: int = 6, num_layers: int = 6, num_prompts: int = 8, prompt_dim: Optional[int] = None,
                 mlp_ratio: float = 4.0, num_feat: int = 64, img_residual: bool = False,
                 codec_conditioned: bool = False, codecs: Sequence[str] = CONDITION_CODECS,
                 emb_dim_per_scalar: int = 64, head_hidden: int = 64) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f'UCIPNet supports scales {SCALES}, got {scale}')
        for name, value in (('embed_dim', embed_dim), ('num_blocks', num_blocks), ('num_layers', num_layers),
                            ('num_prompts', num_prompts), ('num_feat', num_feat)):
            if int(value) < 1:
                raise ValueError(f'{name} must be >= 1, got {value}')
        if img_residual and num_in_ch != num_out_ch:
            raise ValueError(f'img_residual needs num_in_ch == num_out_ch, got {num_in_ch} and {num_out_ch}')
        prompt_dim = embed_dim if prompt_dim is None else prompt_dim
        self.scale = scale
        self.img_residual = img_residual
        self.codec_aware = bool(codec_conditioned)

        self.conv_first = nn.Conv2d(num_in_ch, embed_dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            PromptGuidedTokenMixerBlock(embed_dim, prompt_dim, num_prompts, num_layers, mlp_ratio)
            for _ in range(num_blocks))
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_before_upsample = nn.Conv2d(embed_dim, num_feat, 3, padding=1)
        self.conv_up = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, padding=1)
                                     for _ in range(int(math.log2(scale))))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, padding=1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        self.blocks.apply(_init_linear)
        if img_residual:  # the untrained net is the identity (scale 1) / bilinear upsampling
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)
        self.embed_dim = embed_dim
        # head i -> (feature shift C, prompt-logit bias N) of block i
        self.cond_heads = (ConditionHeads([embed_dim + num_prompts] * num_blocks, codecs, emb_dim_per_scalar,
                                          head_hidden) if codec_conditioned else None)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'UCIPNet expects B x C x H x W, got shape {tuple(x.shape)}')
        if cond is None:
            modulation = [(None, None)] * len(self.blocks)
        elif self.cond_heads is None:
            raise ValueError('this UCIPNet is not codec-conditioned (codec_conditioned=False): pass cond=None')
        else:  # ConditionHeads validates cond against x and returns B x (C + N) x 1 x 1 per block
            modulation = [out.flatten(1).split([self.embed_dim, out.shape[1] - self.embed_dim], dim=1)
                          for out in self.cond_heads(cond, x)]

        shallow = self.conv_first(x)
        feat = shallow
        for block, (shift, bias) in zip(self.blocks, modulation):
            feat = block(feat, shift, bias)
        feat = self.conv_after_body(feat) + shallow

        feat = self.lrelu(self.conv_before_upsample(feat))
        for conv in self.conv_up:
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2, mode='nearest')))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if self.img_residual:
            out = out + (x if self.scale == 1 else
                         F.interpolate(x, scale_factor=self.scale, mode='bilinear', align_corners=False))
        return out
