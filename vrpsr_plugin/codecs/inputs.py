"""Input images of the codec layer: exactly HxWx3 uint8 RGB arrays, or CxHxW float tensors in [0, 1].

Anything else (gray, RGBA, palette, 16-bit, NaN/inf, out of range) is a ValueError naming the problem; the only
explicit conversion lives in :func:`load_image`, used by the CLI, which says what it converted.
"""
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import torch

ImageLike = Union[np.ndarray, 'torch.Tensor']


def rgb_to_tensor(rgb: np.ndarray) -> 'torch.Tensor':
    """HxWx3 uint8 RGB -> 3xHxW float32 tensor in [0, 1] (the inverse of :func:`to_rgb_uint8` for tensors)."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """A validated HxWx3 uint8 RGB array (a new array; the caller's object is never modified).

    Float tensors (CxHxW, values in [0, 1]) are scaled by 255 and rounded to the nearest integer (not floored).
    """
    torch = sys.modules.get('torch')  # a tensor exists only if torch is imported; the codec layer never needs it
    if torch is not None and isinstance(image, torch.Tensor):
        if image.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f'a tensor image must be floating point in [0, 1], got dtype {image.dtype}')
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f'a tensor image must be CxHxW with C=3 (RGB), got shape {tuple(image.shape)}')
        x = image.detach().to('cpu', torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError('tensor image contains NaN or inf values')
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f'tensor image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]')
        return torch.round(x * 255.0).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f'image must be an HxWx3 uint8 numpy array or a CxHxW float tensor, got '
                         f'{type(image).__name__} (PIL images: use vrpsr_plugin.codecs.load_image)')
    if image.dtype != np.uint8:
        kind = '16-bit' if image.dtype in (np.uint16, np.int16) else f'dtype {image.dtype}'
        raise ValueError(f'image must be 8-bit (uint8) RGB, got a {kind} array; convert it explicitly')
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ValueError(f'image is grayscale (shape {image.shape}); the codecs take RGB HxWx3')
    if image.ndim != 3 or image.shape[2] != 3:
        what = 'RGBA' if image.ndim == 3 and image.shape[2] == 4 else f'shape {image.shape}'
        raise ValueError(f'image must be HxWx3 RGB, got {what}')
    return np.array(image, dtype=np.uint8, order='C', copy=True)


def load_image(path: Union[str, Path]) -> Tuple[np.ndarray, str]:
    """Read an image file as HxWx3 uint8 RGB; returns (array, note) where note names any mode conversion
    done (gray/palette -> RGB, alpha dropped, 16-bit scaled to 8-bit), '' if none."""
    from PIL import Image
    with Image.open(path) as img:
        mode = img.mode
        if mode == 'RGB':
            return np.asarray(img, dtype=np.uint8).copy(), ''
        if mode.startswith('I;16') or mode in ('I', 'F'):
            a = np.asarray(img).astype(np.float64)
            scale = 65535.0 if mode.startswith('I;16') or a.max() > 255 else 255.0
            g = np.clip(np.rint(a / scale * 255.0), 0, 255).astype(np.uint8)
            return np.repeat(g[..., None], 3, axis=2), f'converted {mode} (16-bit gray) to 8-bit RGB'
        return np.asarray(img.convert('RGB'), dtype=np.uint8).copy(), f'converted PIL mode {mode} to RGB' + (
            ' (alpha dropped)' if 'A' in mode else '')
