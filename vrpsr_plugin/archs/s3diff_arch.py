"""The codec-aware S3Diff-style SR backbone (§3.2.3, App. B.3), registered for BasicSR, with S3Diff's
degradation-guided LoRA and a loader for S3Diff's released checkpoint (the paper's starting point)."""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vrpsr_plugin.archs.one_step_diffusion import (UNET_LORA_TARGETS, VAE_LORA_TARGETS, OneStepCodecDiffusion,
                                                   check_image_and_condition)

# S3Diff's LoRA alpha: peft's default (8) for both adapters; its VAE adapter is named 'vae_skip'
S3DIFF_LORA_ALPHA = 8
S3DIFF_VAE_ADAPTER = 'vae_skip'
_S3DIFF_MLPS = ('vae_de_mlp', 'unet_de_mlp', 'vae_block_mlp', 'unet_block_mlp', 'vae_fuse_mlp', 'unet_fuse_mlp')


def lora_block_index(name: str, part: str, num_down: int) -> int:
    """S3Diff's block of a LoRA layer: UNet down block i -> i, mid -> num_down, up block i -> num_down + 1 + i,
    any other layer -> the last; VAE encoder down block i -> i, mid -> num_down, other -> num_down + 1."""
    parts = name.split('.')
    if part == 'vae':
        parts = parts[1:]  # 'encoder.'
    if parts[0] == 'down_blocks':
        return int(parts[1])
    if parts[0] == 'mid_block':
        return num_down
    if part == 'unet' and parts[0] == 'up_blocks':
        return num_down + 1 + int(parts[1])
    return -1


class DegradationModulation(nn.Module):
    """S3Diff's degradation-guided LoRA (its §3.2): the degradation scores s (B x 2: blur, noise, in [0, 1]) are
    Fourier-embedded, mapped by an MLP, fused with a learned embedding of each block, and give one r x r matrix M
    per block and sample; every LoRA layer of the block computes B M A x instead of B A x."""

    def __init__(self, unet_blocks: int, vae_blocks: int, unet_rank: int, vae_rank: int,
                 num_frequencies: int = 64, block_embedding_dim: int = 64, num_degradations: int = 2) -> None:
        super().__init__()
        from basicsr.archs.arch_util import default_init_weights
        self.register_buffer('frequencies', torch.randn(num_frequencies))
        self.ranks = {'unet': unet_rank, 'vae': vae_rank}
        width = 2 * num_frequencies * num_degradations
        for part, blocks, rank in (('unet', unet_blocks, unet_rank), ('vae', vae_blocks, vae_rank)):
            setattr(self, f'{part}_de_mlp', nn.Sequential(nn.Linear(width, 256), nn.ReLU(True)))
            setattr(self, f'{part}_block_mlp', nn.Sequential(nn.Linear(block_embedding_dim, 64), nn.ReLU(True)))
            setattr(self, f'{part}_fuse_mlp', nn.Linear(256 + 64, rank * rank))
            setattr(self, f'{part}_block_embeddings', nn.Embedding(blocks, block_embedding_dim))
        # near-zero M at initialisation (not exactly zero: B = 0 and M = 0 would stop every LoRA gradient)
        default_init_weights([getattr(self, name) for name in _S3DIFF_MLPS], 1e-5)

    def forward(self, scores: torch.Tensor) -> Dict[str, torch.Tensor]:
        """scores B x D -> {'unet': B x blocks x r x r, 'vae': ...}."""
        angles = scores.float()[..., None] * self.frequencies * (2 * torch.pi)
        fourier = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
        out = {}
        for part, rank in self.ranks.items():
            de = getattr(self, f'{part}_de_mlp')(fourier)
            blocks = getattr(self, f'{part}_block_mlp')(getattr(self, f'{part}_block_embeddings').weight)
            fused = torch.cat([de[:, None].expand(-1, blocks.shape[0], -1),
                               blocks[None].expand(de.shape[0], -1, -1)], dim=-1)
            out[part] = getattr(self, f'{part}_fuse_mlp')(fused).reshape(de.shape[0], -1, rank, rank)
        return out


def _modulate_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on a LoRA ``lora_A``: multiply its rank-r output by this block's per-sample M."""
    context, part, block = module._vrpsr_deg
    matrices = context.get(part)
    if matrices is None:
        return output
    m = matrices[:, block].to(output.dtype)
    if output.dim() == 4:  # conv: B x r x H x W
        return torch.einsum('bkhw,bkr->brhw', output, m)
    return torch.einsum('b...k,bkr->b...r', output, m)


@ARCH_REGISTRY.register()
class CodecAwareS3Diff(OneStepCodecDiffusion):
    """One-step diffusion SR: the LQ image is upsampled bicubically by ``scale`` (as S3Diff does) and restored by
    the same conditioned one-step core as the simulator (prompt of Eq. 5 + codec FiLM / time embedding), so the SR
    output is aware of the downstream codec and rate in ``cond``.

    Args: ``scale`` (default 4), ``degradation_guided`` (S3Diff's degradation-guided LoRA,
    :class:`DegradationModulation`, driven by ``deg_score``: B x 2 blur/noise degrees in [0, 1]),
    ``degradation_estimator`` (path to S3Diff's ``de_net.pth``: the frozen
    :class:`~vrpsr_plugin.archs.degradation_estimator_arch.DegradationEstimator` that computes ``deg_score`` from
    the LQ input when ``forward`` is not given one; never trained nor saved, the path is in :attr:`arch_spec`) and
    every option of ``OneStepCodecDiffusion``. :meth:`from_s3diff_checkpoint` loads S3Diff's released weights.
    """

    def __init__(self, pretrained_model_name_or_path: str, scale: int = 4, degradation_guided: bool = False,
                 degradation_estimator: Optional[str] = None, **kwargs) -> None:
        if degradation_estimator is not None and not degradation_guided:
            raise ValueError('degradation_estimator is only used with degradation_guided: true')
        super().__init__(pretrained_model_name_or_path, **kwargs)
        if scale < 1:
            raise ValueError(f'scale must be >= 1, got {scale}')
        self.scale = scale
        self.config.update(scale=scale, degradation_guided=degradation_guided,
                           degradation_estimator=None if degradation_estimator is None else str(degradation_estimator))
        self.degradation_estimator = None
        if degradation_estimator is not None:
            from vrpsr_plugin.archs.degradation_estimator_arch import DegradationEstimator
            self.degradation_estimator = DegradationEstimator.from_pretrained(degradation_estimator)
            self.degradation_estimator.requires_grad_(False)
            # frozen and pretrained like the SD base: out of state_dict(), checkpoints and the optimizer
            self._base_keys = self._base_keys | {f'degradation_estimator.{k}'
                                                 for k in self.degradation_estimator.state_dict()}
        self.deg_modulation = None
        self._deg_context: Dict[str, torch.Tensor] = {}
        if degradation_guided:
            ranks = {'unet': self.config['lora_rank'], 'vae': self.config['lora_rank_vae']}
            if not all(ranks.values()):
                raise ValueError('degradation_guided needs LoRA in the UNet and the VAE (lora_rank, lora_rank_vae)')
            down = {'unet': len(self.unet.down_blocks), 'vae': len(self.vae.encoder.down_blocks)}
            self.deg_modulation = DegradationModulation(down['unet'] * 2 + 2, down['vae'] + 2, ranks['unet'],
                                                        ranks['vae'])
            for part, net in (('unet', self.unet), ('vae', self.vae)):
                for name, module in net.named_modules():
                    if hasattr(module, 'lora_A') and 'default' in module.lora_A:
                        lora_a = module.lora_A['default']
                        lora_a._vrpsr_deg = (self._deg_context, part, lora_block_index(name, part, down[part]))
                        lora_a.register_forward_hook(_modulate_hook)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, prompts: Optional[Sequence[str]] = None,
                deg_score: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: LQ B x 3 x h x w in [0, 1] -> restored B x 3 x (scale*h) x (scale*w) in [0, 1]."""
        check_image_and_condition(x, cond, len(self.codecs) + 1)
        self._deg_context.clear()
        if self.deg_modulation is not None:
            if deg_score is None and self.degradation_estimator is not None:
                deg_score = self.estimate_degradation(x)
            if deg_score is None or deg_score.shape != (x.shape[0], 2):
                raise ValueError(f'degradation_guided needs deg_score of shape ({x.shape[0]}, 2) (blur, noise '
                                 f'degrees in [0, 1]; or build with degradation_estimator=de_net.pth), got '
                                 f'{None if deg_score is None else tuple(deg_score.shape)}')
            self._deg_context.update(self.deg_modulation(deg_score.to(x.device)))
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode='bicubic', align_corners=False).clamp(0, 1)
        return super().forward(x, cond, prompts)

    def estimate_degradation(self, x: torch.Tensor) -> torch.Tensor:
        """S3Diff's ``deg_score``: the frozen estimator on the LQ input (in [0, 1], before upsampling), without
        gradient and outside any autocast, in the estimator's own dtype (float32 unless the whole net was cast);
        returned as float32 B x 2."""
        estimator = self.degradation_estimator
        dtype = next(estimator.parameters()).dtype
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return estimator(x.to(dtype)).float()

    def train(self, mode: bool = True) -> 'CodecAwareS3Diff':
        """Switch the trainable part; the degradation estimator stays in eval mode."""
        super().train(mode)
        if self.degradation_estimator is not None:
            self.degradation_estimator.eval()
        return self

    @classmethod
    def from_s3diff_checkpoint(cls, path: str, pretrained_model_name_or_path: str,
                               **options: Any) -> 'CodecAwareS3Diff':
        """Build from S3Diff's released ``s3diff.pkl`` layout (``rank_unet``/``rank_vae``, LoRA target lists,
        ``state_dict_unet`` (LoRA + conv_in), ``state_dict_vae`` (LoRA, adapter 'vae_skip'), the six
        ``state_dict_*_mlp``, ``w``, ``state_embeddings``) on the base ``pretrained_model_name_or_path``
        (SD-Turbo). Strict: every tensor of the file must land in the model and every S3Diff part of the model
        must come from the file; only our codec heads (zero-initialised, App. B.3) start fresh. ``options`` go to
        the constructor, e.g. ``scale`` and ``degradation_estimator`` (S3Diff's ``de_net.pth``)."""
        from vrpsr_plugin.archs.checkpoint import load_checkpoint_file, load_state_dict_strict
        raw = load_checkpoint_file(path)
        needed = ['rank_unet', 'rank_vae', 'unet_lora_target_modules', 'vae_lora_target_modules', 'state_dict_unet',
                  'state_dict_vae', 'w', 'state_embeddings'] + [f'state_dict_{m}' for m in _S3DIFF_MLPS]
        missing = [k for k in needed if not isinstance(raw, dict) or k not in raw]
        if missing:
            raise KeyError(f'{path} is not an S3Diff checkpoint: missing {missing}')
        for key, ours in (('unet_lora_target_modules', UNET_LORA_TARGETS),
                          ('vae_lora_target_modules', VAE_LORA_TARGETS)):
            if raw[key] != ours:
                raise ValueError(f'{path}: {key} {raw[key]!r} differs from ours {ours!r}')
        model = cls(pretrained_model_name_or_path, lora_rank=int(raw['rank_unet']),
                    lora_rank_vae=int(raw['rank_vae']), lora_alpha=S3DIFF_LORA_ALPHA, degradation_guided=True,
                    train_unet_conv_in=True, **options)
        load_state_dict_strict(model, s3diff_state_dict(raw), source=path,
                               allowed_missing_prefixes=('film_trunk.', 'film_heads.', 'time_head.'))
        return model


def s3diff_state_dict(raw: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """S3Diff's checkpoint entries under this module's state-dict names."""
    state = {f'unet.{k}': v for k, v in raw['state_dict_unet'].items()}
    state.update({f'vae.{k}'.replace(f'.{S3DIFF_VAE_ADAPTER}.', '.default.'): v
                  for k, v in raw['state_dict_vae'].items()})
    for mlp in _S3DIFF_MLPS:
        state.update({f'deg_modulation.{mlp}.{k}': v for k, v in raw[f'state_dict_{mlp}'].items()})
    embeddings = raw['state_embeddings']
    for part in ('unet', 'vae'):
        state[f'deg_modulation.{part}_block_embeddings.weight'] = embeddings[f'state_dict_{part}_block']['weight']
    state['deg_modulation.frequencies'] = raw['w'].detach()
    return state
