"""On-disk cache of the evaluation, written atomically (vrpsr_plugin.atomic_io), so an interrupted run resumes
without recomputing."""
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vrpsr_plugin.atomic_io import atomic_write, read_rgb as read_image, write_json, write_png  # noqa: F401


def read_json(path: Path) -> Optional[Any]:
    """The cached object, or None when absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array))
