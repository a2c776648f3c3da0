"""DISTS [9] (piq) in BasicSR's METRIC_REGISTRY, for training validation (§4.1). Lower is better."""
import functools
from typing import Optional, Sequence

import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from vrpsr_plugin.metrics.pretrained import basicsr_pair, load_dists


@functools.lru_cache(maxsize=4)
def _model(weights: tuple, device: str) -> torch.nn.Module:
    return load_dists(weights, device)


@METRIC_REGISTRY.register()
def calculate_dists(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC', bgr: bool = True,
                    dists_weights: Optional[Sequence[str]] = None, device: str = 'cpu', **kwargs) -> float:
    """DISTS between two HxWxC [0,255] images as BasicSR passes them (BGR unless ``bgr=False``).

    ``dists_weights``: (dists_weights.pt, vgg16 checkpoint) for offline machines. Raises
    :class:`~vrpsr_plugin.metrics.pretrained.MetricUnavailable` when the pretrained weights cannot be loaded.
    """
    x, y = basicsr_pair(img, img2, crop_border, input_order, bgr)
    with torch.no_grad():
        return float(_model(tuple(dists_weights or ()), device)(x.to(device), y.to(device)).item())
