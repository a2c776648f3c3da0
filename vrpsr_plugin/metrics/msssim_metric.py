"""MS-SSIM (pytorch_msssim, 5 scales, 11x11 Gaussian window) in BasicSR's METRIC_REGISTRY. Higher is better."""
import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY
from pytorch_msssim import ms_ssim

from vrpsr_plugin.metrics.pretrained import basicsr_pair

WIN_SIZE = 11
MIN_SIDE = (WIN_SIZE - 1) * 2 ** 4 + 1  # pytorch_msssim's requirement for 5 scales


def ms_ssim_tensor(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image MS-SSIM of two Bx3xHxW tensors in [0,1]; a clear error for images too small for 5 scales."""
    if min(x.shape[-2:]) < MIN_SIDE:
        raise ValueError(f'MS-SSIM needs images of at least {MIN_SIDE}x{MIN_SIDE} px, got {tuple(x.shape[-2:])}')
    return ms_ssim(x, y, data_range=1.0, size_average=False, win_size=WIN_SIZE)


@METRIC_REGISTRY.register()
def calculate_ms_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC',
                      **kwargs) -> float:
    """MS-SSIM between two HxWxC [0,255] images as BasicSR passes them (channel order does not matter)."""
    x, y = basicsr_pair(img, img2, crop_border, input_order, bgr=False)
    return float(ms_ssim_tensor(x, y).item())
