"""Atomic file writes and strict image reads shared by every module that writes results.

A write goes to a temporary file in the target folder and is moved over the target with ``os.replace``, so a
reader (or a resumed run) sees the old file or the complete new one, never a partial one; the temporary file is
removed on any failure, KeyboardInterrupt included.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

import cv2
import numpy as np

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary file next to ``path`` for a writer that needs a file name (e.g. ffmpeg), moved onto ``path``
    when the block completes and removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then move it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as handle:
        write(handle)


def write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_json(path: PathLike, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode('utf-8'))


def png_bytes(rgb: np.ndarray) -> bytes:
    """The lossless PNG file of an HxWx3 RGB uint8 image, in memory."""
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f'could not encode an image of shape {rgb.shape} as PNG')
    return buf.tobytes()


def write_png(path: PathLike, rgb: np.ndarray) -> None:
    """A lossless PNG of an HxWx3 RGB uint8 image."""
    write_bytes(path, png_bytes(rgb))


def torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` without ever leaving a half-written checkpoint."""
    import torch
    atomic_write(path, lambda handle: torch.save(obj, handle))


def remove_temp_files(root: PathLike) -> int:
    """Delete the temporary files that writers killed mid-write (SIGKILL) left under ``root``; returns how many.
    Only for a folder no running process is writing to."""
    stale = [p for p in Path(root).rglob('.*.tmp') if p.is_file()]
    for path in stale:
        path.unlink()
    return len(stale)


def read_rgb(path: PathLike) -> np.ndarray:
    """HxWx3 RGB uint8 from any image file OpenCV reads. Grey becomes 3 channels and alpha is dropped;
    16-bit and float images are an error (no silent bit-depth conversion)."""
    return decode_rgb(Path(path).read_bytes(), path)


def decode_rgb(payload: bytes, name: PathLike) -> np.ndarray:
    """:func:`read_rgb` of an image file's bytes (``name`` names it in errors)."""
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'cannot read image {name}')
    if image.dtype != np.uint8:
        raise ValueError(f'{name}: only 8-bit images are supported, got {image.dtype}')
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[..., 2::-1])
