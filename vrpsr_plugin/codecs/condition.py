"""The codec condition c = (codec, bpp) of the paper (§3.2.2, §3.2.3, App. B.3)."""
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import torch

# One-hot order of the condition vector. Append new codecs at the end only: a saved model stores the tuple it
# was trained with (its ``codecs`` option), so older checkpoints keep their meaning.
CONDITION_CODECS: Tuple[str, ...] = ('libx264', 'libx265', 'libvvenc')


@dataclass(frozen=True)
class CodecCondition:
    """Codec name, target bits per pixel and (optionally) the QP that produced it.

    ``prompt()`` is the text condition of Eq. 5; ``vector()`` the 4-D vector [one-hot(codec), bpp] of §3.2.3.
    """
    codec: str
    bpp: float
    qp: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not self.codec:
            raise ValueError(f'codec must be a non-empty string, got {self.codec!r}')
        if not (isinstance(self.bpp, (int, float)) and math.isfinite(self.bpp) and self.bpp >= 0):
            raise ValueError(f'bpp must be a finite number >= 0, got {self.bpp!r}')

    def prompt(self) -> str:
        """``A {codec} {bpp:.4f} bpp compressed image.`` (Eq. 5)."""
        return f'A {self.codec} {self.bpp:.4f} bpp compressed image.'

    def vector(self, codecs: Sequence[str] = CONDITION_CODECS, allow_unknown: bool = False) -> 'torch.Tensor':
        """Float tensor [one-hot over ``codecs``..., bpp]. A codec outside ``codecs`` is an error unless
        ``allow_unknown`` (then its one-hot part is all zeros: "some other codec at this rate")."""
        onehot = [1.0 if self.codec == name else 0.0 for name in codecs]
        if not any(onehot) and not allow_unknown:
            raise ValueError(f'codec {self.codec!r} is not one of the conditioned codecs {tuple(codecs)}')
        import torch
        return torch.tensor(onehot + [float(self.bpp)], dtype=torch.float32)

    @staticmethod
    def collate(conditions: Sequence['CodecCondition'], codecs: Sequence[str] = CONDITION_CODECS,
                allow_unknown: bool = False) -> 'torch.Tensor':
        """Stack conditions into a (B, len(codecs)+1) tensor."""
        if len(conditions) == 0:
            raise ValueError('cannot collate an empty list of conditions')
        import torch
        return torch.stack([c.vector(codecs, allow_unknown) for c in conditions])
