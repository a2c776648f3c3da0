"""Encoder-side arbitrary-scale down-sampling of ASSR-EIC (seed 002): antialiased bicubic by a real factor s."""
import math
from typing import Tuple

import numpy as np


def lr_size(height: int, width: int, scale: float, min_size: int = 16) -> Tuple[int, int]:
    """Size (h, w) of the picture the codec codes for an original of (height, width) at factor ``scale`` >= 1.
    Sides round up, so the factor actually applied never exceeds ``scale`` (nor a decoder's trained range)."""
    if not scale >= 1.0:
        raise ValueError(f'the down-scaling factor s must be >= 1, got {scale!r}')
    return (min(height, max(min_size, math.ceil(height / scale - 1e-9))),
            min(width, max(min_size, math.ceil(width / scale - 1e-9))))


def downscale(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size (h, w) with PIL's antialiased bicubic (its filter widens with the factor)."""
    from PIL import Image
    h, w = size
    if (h, w) == rgb.shape[:2]:
        return rgb.copy()
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC), dtype=np.uint8).copy()
