"""The test set of §4.1: clean image X (resized and center-cropped) and its deterministic degradation X~ (Eq. 1).

X~ follows Real-ESRGAN's first-order chain (App. B.1): blur -> resize -> noise -> JPEG, then a resize to
``size / scale`` (``kind='realesrgan'``), or the training datasets' mild degradation (``kind='mild'``:
:class:`~vrpsr_plugin.data.degradation.MildDegradation`, light blur/noise/JPEG, where the codec limits quality). Every random choice comes from generators seeded by the image's file name, so every method and
every rerun sees the identical X~. The kernels and JPEG come from ``basicsr.data.degradations``; parameter ranges are
those of Real-ESRGAN's ``train_realesrgan_x4plus.yml`` (first degradation).
"""
import hashlib
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from basicsr.data import degradations
from basicsr.utils import tensor2img
from basicsr.utils.img_process_util import filter2D

KERNELS = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')


DEGRADATION_KINDS = ('realesrgan', 'mild')


@dataclass(frozen=True)
class DegradationConfig:
    """Which degradation (``kind``) and Real-ESRGAN first-order degradation parameters (mild: its defaults)."""
    kind: str = 'realesrgan'
    kernel_prob: Tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    kernel_sizes: Tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    sinc_prob: float = 0.1
    blur_sigma: Tuple[float, float] = (0.2, 3.0)
    betag_range: Tuple[float, float] = (0.5, 4.0)
    betap_range: Tuple[float, float] = (1.0, 2.0)
    resize_prob: Tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: Tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: Tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: Tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: Tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        if self.kind not in DEGRADATION_KINDS:
            raise ValueError(f'degradation kind must be one of {DEGRADATION_KINDS}, got {self.kind!r}')


def seed_from_name(name: str) -> int:
    """A 63-bit seed from a file name (stable across runs, machines and Python's hash randomisation)."""
    return int(hashlib.sha256(name.encode('utf-8')).hexdigest()[:15], 16)


def prepare_hr(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (area when shrinking, bicubic when enlarging) and center-crop to a square."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'expected an HxWx3 uint8 image, got {image.dtype} {image.shape}')
    height, width = image.shape[:2]
    factor = size / min(height, width)
    new_h, new_w = max(size, round(height * factor)), max(size, round(width * factor))
    if (new_h, new_w) != (height, width):
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def _kernel(rng: np.random.Generator, cfg: DegradationConfig) -> np.ndarray:
    size = int(rng.choice(cfg.kernel_sizes))
    if rng.random() < cfg.sinc_prob:
        cutoff = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return degradations.circular_lowpass_kernel(cutoff, size, pad_to=0)
    kind = KERNELS[rng.choice(len(KERNELS), p=np.asarray(cfg.kernel_prob) / sum(cfg.kernel_prob))]
    isotropic = kind.endswith('iso') and not kind.endswith('aniso')
    sig_x = rng.uniform(*cfg.blur_sigma)
    sig_y = sig_x if isotropic else rng.uniform(*cfg.blur_sigma)
    theta = 0.0 if isotropic else rng.uniform(-np.pi, np.pi)
    if kind.startswith('generalized'):
        beta = rng.uniform(cfg.betag_range[0], 1) if rng.random() < 0.5 else rng.uniform(1, cfg.betag_range[1])
        kernel = degradations.bivariate_generalized_Gaussian(size, sig_x, sig_y, theta, beta, isotropic=isotropic)
    elif kind.startswith('plateau'):
        beta = rng.uniform(cfg.betap_range[0], 1) if rng.random() < 0.5 else rng.uniform(1, cfg.betap_range[1])
        kernel = degradations.bivariate_plateau(size, sig_x, sig_y, theta, beta, isotropic=isotropic)
    else:
        kernel = degradations.bivariate_Gaussian(size, sig_x, sig_y, theta, isotropic=isotropic)
    return kernel


def _noise(img: torch.Tensor, rng: np.random.Generator, gen: torch.Generator, cfg: DegradationConfig) -> torch.Tensor:
    gray = rng.random() < cfg.gray_noise_prob
    if rng.random() < cfg.gaussian_noise_prob:
        sigma = rng.uniform(*cfg.noise_range) / 255.0
        shape = (1, 1, *img.shape[-2:]) if gray else img.shape
        return torch.randn(shape, generator=gen) * sigma
    scale = rng.uniform(*cfg.poisson_scale_range)
    base = img.mean(dim=1, keepdim=True) if gray else img  # Real-ESRGAN: gray Poisson noise on the luminance
    base = torch.round(base.clamp(0, 1) * 255) / 255
    levels = 2 ** np.ceil(np.log2(max(len(torch.unique(base)), 2)))
    return (torch.poisson(base * levels, generator=gen) / levels - base) * scale


def degrade(hr: np.ndarray, scale: int, seed: int, cfg: DegradationConfig = DegradationConfig()) -> np.ndarray:
    """X -> X~ of size (H/scale, W/scale), deterministic given ``seed`` (HxWx3 RGB uint8 in and out)."""
    height, width = hr.shape[:2]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(f'image size {height}x{width} is not divisible by the scale {scale}')
    img = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255.0
    if cfg.kind == 'mild':
        from vrpsr_plugin.data.degradation import MildDegradation, seeded
        with seeded([seed]):
            return np.ascontiguousarray(tensor2img(MildDegradation({}, scale=scale)(img)[0], rgb2bgr=False))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed % (2 ** 63))
    img = filter2D(img, torch.from_numpy(_kernel(rng, cfg)).float()[None])
    direction = rng.choice(3, p=cfg.resize_prob)
    factor = (rng.uniform(1, cfg.resize_range[1]), rng.uniform(cfg.resize_range[0], 1), 1.0)[direction]
    mode = str(rng.choice(['area', 'bilinear', 'bicubic']))
    img = F.interpolate(img, scale_factor=factor, mode=mode)
    img = (img + _noise(img, rng, gen, cfg)).clamp(0, 1)
    quality = int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1))
    bgr = img[0].permute(1, 2, 0).numpy()[..., ::-1].astype(np.float32)
    img = torch.from_numpy(np.ascontiguousarray(degradations.add_jpg_compression(bgr, quality)[..., ::-1]))
    img = img.permute(2, 0, 1)[None].float()
    mode = str(rng.choice(['area', 'bilinear', 'bicubic']))
    img = F.interpolate(img, size=(height // scale, width // scale), mode=mode).clamp(0, 1)
    return np.ascontiguousarray(tensor2img(img[0], rgb2bgr=False))
