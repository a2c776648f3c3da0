"""LPIPS (alex) [42] in BasicSR's METRIC_REGISTRY, for training validation (§4.1). Lower is better."""
import functools
from typing import Optional

import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from vrpsr_plugin.metrics.pretrained import basicsr_pair, load_lpips


@functools.lru_cache(maxsize=4)
def _model(weights: Optional[str], device: str) -> torch.nn.Module:
    return load_lpips(weights, device)


@METRIC_REGISTRY.register()
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC', bgr: bool = True,
                    lpips_weights: Optional[str] = None, device: str = 'cpu', **kwargs) -> float:
    """LPIPS between two HxWxC [0,255] images as BasicSR passes them (BGR unless ``bgr=False``).

    ``lpips_weights``: torchvision's AlexNet checkpoint for offline machines. Raises
    :class:`~vrpsr_plugin.metrics.pretrained.MetricUnavailable` when the pretrained backbone cannot be loaded.
    """
    x, y = basicsr_pair(img, img2, crop_border, input_order, bgr)
    with torch.no_grad():
        return float(_model(lpips_weights, device)(x.to(device), y.to(device), normalize=True).item())
