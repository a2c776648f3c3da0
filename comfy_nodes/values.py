"""Values passed between the VRPSR nodes, and checks of ComfyUI's ``IMAGE`` type.

``IMAGE`` is ComfyUI's float tensor ``[B, H, W, C]`` in ``[0, 1]``; the library works on ``B x 3 x H x W``.
``VRPSR_CONDITION`` carries the paper's condition c = (codec, bpp) (§3.2.2) per image; ``VRPSR_MODEL`` a loaded
codec-conditioned network with ``forward(x, cond)``.
"""
import os
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
from torch import nn

from vrpsr_plugin.codecs import CONDITION_CODECS, CodecCondition

CLAMP_MARGIN = 0.25  # further out means a wrongly scaled tensor ([0, 255], [-1, 1]): an error, not a clamp


@dataclass(frozen=True)
class VRPSRModel:
    """A loaded network (kept on the offload device between runs) and the file it came from."""
    module: nn.Module
    path: str

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))


@dataclass(frozen=True)
class VRPSRCondition:
    """One :class:`CodecCondition` per image, or a single one that applies to every image of a batch."""
    conditions: Tuple[CodecCondition, ...]

    def __post_init__(self) -> None:
        if not self.conditions:
            raise ValueError('a VRPSR condition needs at least one CodecCondition')

    def for_batch(self, batch: int) -> Tuple[CodecCondition, ...]:
        """The conditions of a batch of ``batch`` images (a single condition is broadcast)."""
        if len(self.conditions) == 1:
            return self.conditions * batch
        if len(self.conditions) != batch:
            raise ValueError(f'the condition holds {len(self.conditions)} per-image entries but the image batch '
                             f'has {batch} images')
        return self.conditions

    def tensor(self, batch: int, codecs: Sequence[str] = CONDITION_CODECS) -> torch.Tensor:
        """The ``batch x 4`` condition tensor of ``CodecCondition.collate`` (§3.2.3)."""
        return CodecCondition.collate(self.for_batch(batch), codecs)

    def single(self) -> CodecCondition:
        """The one condition shared by every entry; ValueError when entries differ."""
        distinct = set(self.conditions)
        if len(distinct) != 1:
            raise ValueError(f'expected one fixed condition, got {len(distinct)} different per-image conditions')
        return self.conditions[0]


def check_image(image: torch.Tensor, name: str = 'image') -> torch.Tensor:
    """Validate a ComfyUI ``IMAGE`` (float ``[B, H, W, 3]`` in ``[0, 1]``, B >= 1) and return it as float32.
    Values slightly outside [0, 1] (overshoot of upstream filters) are clamped, as core nodes do."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor [B, H, W, C], got {type(image).__name__}')
    if image.dim() != 4:
        raise ValueError(f'{name} must be a 4-D IMAGE tensor [B, H, W, C], got shape {tuple(image.shape)}')
    if image.shape[0] == 0:
        raise ValueError(f'{name} is an empty batch (shape {tuple(image.shape)})')
    if image.shape[-1] != 3:
        hint = ' (it looks like [B, C, H, W]; ComfyUI IMAGE is [B, H, W, C])' if image.shape[1] in (1, 3, 4) else ''
        raise ValueError(f'{name} must have 3 (RGB) channels last, got shape {tuple(image.shape)}{hint}')
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f'{name} has zero height or width (shape {tuple(image.shape)})')
    if not image.is_floating_point():
        raise ValueError(f'{name} must be a float tensor in [0, 1], got dtype {image.dtype}')
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError(f'{name} contains NaN or inf')
    low, high = image.min().item(), image.max().item()
    if low < -CLAMP_MARGIN or high > 1.0 + CLAMP_MARGIN:
        raise ValueError(f'{name} values must lie in [0, 1] (up to {CLAMP_MARGIN:g} outside is clamped), got '
                         f'[{low:.4g}, {high:.4g}]: a [0, 255] or [-1, 1] tensor?')
    return image.clamp(0.0, 1.0)


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI ``[B, H, W, C]`` -> library ``B x C x H x W`` (contiguous)."""
    return image.movedim(-1, 1).contiguous()


def to_bhwc(images: torch.Tensor) -> torch.Tensor:
    """Library ``B x C x H x W`` -> ComfyUI ``[B, H, W, C]`` (contiguous, clamped to [0, 1])."""
    return images.clamp(0.0, 1.0).movedim(1, -1).contiguous()
