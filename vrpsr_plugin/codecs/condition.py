"""The codec condition c = (codec, bpp) of the paper (§3.2.2, §3.2.3, App. B.3).

The condition's bpp leaves out the bits a single-picture stream spends whatever its size and content (parameter
sets, slice header: :func:`picture_header_bits`), so that it means the same QP at every picture size: x264's ~400
header bits are 0.10 bpp of a 64-px training crop and 0.006 bpp of a 256-px picture, which told a net trained on
crops a budget several QP coarser at inference (beyond the paper). ``find_qp`` and the files keep whole-stream rates:
:meth:`CodecCondition.from_stream` and :func:`stream_bpp` convert.
"""
import functools
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

    @classmethod
    def from_stream(cls, codec: str, bpp: float, pixels: int, qp: Optional[int] = None) -> 'CodecCondition':
        """The condition of a picture of ``pixels`` pixels whose whole stream costs ``bpp`` (what ``encode``
        reports and ``find_qp`` matches): ``bpp`` less the header's share, at least 0."""
        return cls(codec, max(float(bpp) - picture_header_bits(codec) / pixels, 0.0), qp)

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


@functools.lru_cache(maxsize=None)
def picture_header_bits(codec: str) -> float:
    """Bits of ``codec``'s single-picture stream that do not depend on the picture: the size of a flat mid-grey
    picture of the codec's minimum size at its coarsest QP (parameter sets and slice header; its coefficient data
    is a few bits), measured once per process with the real encoder."""
    import numpy as np

    from vrpsr_plugin.codecs.encode import encode
    from vrpsr_plugin.codecs.encoders import get_spec
    spec = get_spec(codec)
    side = max(spec.min_size, 32)
    coarsest = max(spec.qp_range) if spec.rate_decreases else min(spec.qp_range)
    return 8.0 * encode(np.full((side, side, 3), 128, np.uint8), codec, qp=coarsest).num_bytes


def stream_bpp(codec: str, bpp: float, pixels: int) -> float:
    """The whole-stream bpp (``find_qp``'s target) of a picture of ``pixels`` pixels with condition ``bpp``:
    the inverse of :meth:`CodecCondition.from_stream`."""
    return float(bpp) + picture_header_bits(codec) / pixels
