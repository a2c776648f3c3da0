"""Shared fixtures: small real photos (skimage's bundled images; ../shared/data when present)."""
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

import vrpsr_plugin  # noqa: F401  (registers everything, as a BasicSR project would)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


def crop(image: np.ndarray, size: int, top: int = 0, left: int = 0) -> np.ndarray:
    """An HxWx3 uint8 crop, contiguous."""
    return np.ascontiguousarray(image[top:top + size, left:left + size, :3])


@pytest.fixture(scope='session')
def photo() -> np.ndarray:
    """A real 128x128 RGB uint8 photo (skimage's astronaut, face region)."""
    return crop(skdata.astronaut(), 128, 40, 160)


@pytest.fixture(scope='session')
def photos() -> list:
    """Three different real 96x96 RGB uint8 photos."""
    return [crop(skdata.astronaut(), 96, 60, 180), crop(skdata.coffee(), 96, 100, 200),
            crop(skdata.chelsea(), 96, 50, 120)]


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """../shared (data and real weights); tests using it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip('../shared is not present')
    return SHARED


@pytest.fixture(scope='session')
def shared_weight(shared_dir):
    """Path to a file in ../shared/weights, skipping when it is missing."""
    def get(name: str) -> Path:
        path = shared_dir / 'weights' / name
        if not path.is_file():
            pytest.skip(f'{path} is not present')
        return path
    return get
