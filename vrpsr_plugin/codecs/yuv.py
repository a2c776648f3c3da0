"""RGB <-> YUV 4:2:0 conversion shared by both encode routes (§3.1: the codec sees YUV 4:2:0).

Matrix: BT.601 (Kr=0.299, Kb=0.114), the matrix ffmpeg assumes for untagged rgb24 <-> yuv420p. Range: limited
("tv": Y 16..235, C 16..240, scaled by 2**(bit_depth-8)) for the video codecs, full ("pc", JFIF) for JPEG.
Chroma: 2x2 box average down, centred bilinear up (the inverse siting). Doing this in numpy, once, means the
PyAV and ffmpeg routes feed the encoder identical planes, and encode and decode use the same matrix.
The input is RGB in channel order R, G, B (no BGR swap anywhere).
"""
from typing import Tuple

import numpy as np

KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB

Planes = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _ranges(bit_depth: int, full_range: bool) -> Tuple[float, float, float, float]:
    """(luma offset, luma scale, chroma centre, chroma scale) in code values of ``bit_depth`` bits."""
    k = float(1 << (bit_depth - 8))
    if full_range:
        top = float((1 << bit_depth) - 1)
        return 0.0, top, 128.0 * k, top
    return 16.0 * k, 219.0 * k, 128.0 * k, 224.0 * k


def rgb_to_yuv420(rgb: np.ndarray, bit_depth: int = 8, full_range: bool = False) -> Planes:
    """HxWx3 uint8 RGB (H, W even) -> (Y HxW, U H/2xW/2, V H/2xW/2), uint8 or uint16 for bit_depth > 8."""
    if rgb.shape[0] % 2 or rgb.shape[1] % 2:
        raise ValueError(f'yuv420 needs even sizes, got {rgb.shape[:2]}')
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = KR * r + KG * g + KB * b
    cb = (b - y) / (2.0 * (1.0 - KB))
    cr = (r - y) / (2.0 * (1.0 - KR))
    h, w = y.shape
    cb = cb.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    cr = cr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    y_off, y_scale, c_mid, c_scale = _ranges(bit_depth, full_range)
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    planes = (y_off + y_scale * y, c_mid + c_scale * cb, c_mid + c_scale * cr)
    return tuple(np.clip(np.rint(p), 0, top).astype(dtype) for p in planes)


def _upsample2(c: np.ndarray) -> np.ndarray:
    """Centred bilinear x2 upsampling (weights 3/4, 1/4; edges replicated)."""
    p = np.pad(c, 1, mode='edge')
    rows = np.empty((2 * c.shape[0], c.shape[1] + 2), np.float32)
    rows[0::2] = 0.75 * p[1:-1] + 0.25 * p[:-2]
    rows[1::2] = 0.75 * p[1:-1] + 0.25 * p[2:]
    out = np.empty((rows.shape[0], 2 * c.shape[1]), np.float32)
    out[:, 0::2] = 0.75 * rows[:, 1:-1] + 0.25 * rows[:, :-2]
    out[:, 1::2] = 0.75 * rows[:, 1:-1] + 0.25 * rows[:, 2:]
    return out


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, bit_depth: int = 8,
                  full_range: bool = False) -> np.ndarray:
    """Inverse of :func:`rgb_to_yuv420`: planes -> HxWx3 uint8 RGB (rounded, clipped)."""
    y_off, y_scale, c_mid, c_scale = _ranges(bit_depth, full_range)
    yf = (y.astype(np.float32) - y_off) / y_scale
    cb = (_upsample2(u.astype(np.float32)) - c_mid) / c_scale
    cr = (_upsample2(v.astype(np.float32)) - c_mid) / c_scale
    r = yf + 2.0 * (1.0 - KR) * cr
    b = yf + 2.0 * (1.0 - KB) * cb
    g = (yf - KR * r - KB * b) / KG
    rgb = np.stack([r, g, b], axis=-1) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def planes_to_bytes(planes: Planes) -> bytes:
    """Planar raw bytes (ffmpeg's yuv420p / yuv420p10le layout, little endian)."""
    return b''.join(np.ascontiguousarray(p, dtype=p.dtype.newbyteorder('<')).tobytes() for p in planes)


def bytes_to_planes(raw: bytes, height: int, width: int, bit_depth: int) -> Planes:
    """Split planar yuv420 raw bytes into (Y, U, V)."""
    dtype = np.dtype(np.uint8) if bit_depth == 8 else np.dtype('<u2')
    n_y, n_c = height * width, (height // 2) * (width // 2)
    expected = (n_y + 2 * n_c) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f'decoded picture has {len(raw)} bytes, expected {expected} for {width}x{height} '
                         f'yuv420 at {bit_depth} bit')
    flat = np.frombuffer(raw, dtype=dtype)
    y = flat[:n_y].reshape(height, width)
    u = flat[n_y:n_y + n_c].reshape(height // 2, width // 2)
    v = flat[n_y + n_c:].reshape(height // 2, width // 2)
    return y, u, v
