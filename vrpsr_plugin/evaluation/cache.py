"""Atomic on-disk cache of the evaluation (tmp file + os.replace), so an interrupted run resumes without recomputing."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the complete new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode('utf-8'))


def read_json(path: Path) -> Optional[Any]:
    """The cached object, or None when absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def write_png(path: Path, image: np.ndarray) -> None:
    """Lossless PNG of an HxWx3 RGB uint8 image."""
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise OSError(f'could not encode {path} as PNG')
    atomic_write(path, buf.tobytes())


def read_image(path: Path) -> np.ndarray:
    """HxWx3 RGB uint8 from any image file OpenCV reads (grey becomes 3 channels, alpha is dropped)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f'cannot read image {path}')
    if image.dtype != np.uint8:
        raise ValueError(f'{path}: only 8-bit images are supported, got {image.dtype}')
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[..., 2::-1])


def write_npy(path: Path, array: np.ndarray) -> None:
    with tempfile.SpooledTemporaryFile() as handle:
        np.save(handle, array)
        handle.seek(0)
        atomic_write(path, handle.read())
