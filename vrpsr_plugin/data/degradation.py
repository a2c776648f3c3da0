"""Real-ESRGAN's high-order degradation p_C(X~ | X) (Eq. 1, App. B.1), per sample or per batch, on any device.

The kernels come from BasicSR's ``random_mixed_kernels`` / ``circular_lowpass_kernel`` with Real-ESRGAN's
sampling rules and option names; the degradation chain itself is BasicSR's ``RealESRGANModel.feed_data`` (USM
sharpening of X, then blur -> resize -> noise -> JPEG, twice, with the final sinc filter), called on a small carrier
object that holds the CPU (or any device's) JPEG and USM modules instead of the model's hard-coded ``.cuda()`` ones.
It runs in the dataset, one sample at a time, or on the model's device for a whole batch (``degrade_on: model``
of :class:`~vrpsr_plugin.data.recompression_sr_dataset.RecompressionSRDataset`, as Real-ESRGAN does).

All randomness goes through Python's ``random``, NumPy's and torch's global generators (that is how BasicSR's
functions draw); :func:`seeded` makes a sample a pure function of its seed.
"""
import contextlib
import math
import random
from types import SimpleNamespace
from typing import Any, Dict, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.data.degradations import circular_lowpass_kernel, random_mixed_kernels
from basicsr.models.realesrgan_model import RealESRGANModel
from basicsr.utils import DiffJPEG, USMSharp

_KERNELS = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']

# Real-ESRGAN x4plus settings (train_realesrgan_x4plus.yml); any key can be overridden by the dataset options.
REALESRGAN_DEFAULTS: Dict[str, Any] = dict(
    blur_kernel_size=21, kernel_list=_KERNELS, kernel_prob=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], sinc_prob=0.1,
    blur_sigma=[0.2, 3], betag_range=[0.5, 4], betap_range=[1, 2],
    blur_kernel_size2=21, kernel_list2=_KERNELS, kernel_prob2=[0.45, 0.25, 0.12, 0.03, 0.12, 0.03], sinc_prob2=0.1,
    blur_sigma2=[0.2, 1.5], betag_range2=[0.5, 4], betap_range2=[1, 2], final_sinc_prob=0.8,
    resize_prob=[0.2, 0.7, 0.1], resize_range=[0.15, 1.5], gaussian_noise_prob=0.5, noise_range=[1, 30],
    poisson_scale_range=[0.05, 3], gray_noise_prob=0.4, jpeg_range=[30, 95],
    second_blur_prob=0.8, resize_prob2=[0.3, 0.4, 0.3], resize_range2=[0.3, 1.2], gaussian_noise_prob2=0.5,
    noise_range2=[1, 25], poisson_scale_range2=[0.05, 2.5], gray_noise_prob2=0.4, jpeg_range2=[30, 95])

_KERNEL_RANGE = [2 * v + 1 for v in range(3, 11)]  # 7..21, as in Real-ESRGAN
_PAD_TO = 21


@contextlib.contextmanager
def seeded(seed_words: Sequence[int]) -> Iterator[None]:
    """Seed ``random``, NumPy and torch (CPU and initialised CUDA devices) from ``seed_words`` for the block;
    restore their states after."""
    seed = int(np.random.SeedSequence(list(seed_words)).generate_state(1)[0])
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _blur_kernel(opt: Dict[str, Any], suffix: str) -> np.ndarray:
    """One first/second-order blur kernel (``suffix`` '' or '2'), zero-padded to 21 x 21."""
    size = random.choice(_KERNEL_RANGE)
    if np.random.uniform() < opt[f'sinc_prob{suffix}']:
        omega_c = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
        kernel = circular_lowpass_kernel(omega_c, size, pad_to=False)
    else:
        sigma = opt[f'blur_sigma{suffix}']
        kernel = random_mixed_kernels(opt[f'kernel_list{suffix}'], opt[f'kernel_prob{suffix}'], size, sigma, sigma,
                                      [-math.pi, math.pi], opt[f'betag_range{suffix}'], opt[f'betap_range{suffix}'],
                                      noise_range=None)
    pad = (_PAD_TO - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def checked_options(opt: Dict[str, Any], defaults: Dict[str, Any], scale: int, what: str) -> Dict[str, Any]:
    """``defaults`` overridden by ``opt``, after refusing an unsupported SR ``scale`` or an option ``defaults``
    does not know (``what`` names the degradation in the error)."""
    if scale not in (1, 2, 4):
        raise ValueError(f'scale must be 1, 2 or 4, got {scale}')
    unknown = set(opt) - set(defaults)
    if unknown:
        raise ValueError(f'unknown {what} options {sorted(unknown)}; known: {sorted(defaults)}')
    return {**defaults, **opt}


class SeparableUSMSharp(USMSharp):
    """BasicSR's ``USMSharp`` (the unsharp mask Real-ESRGAN applies to X before degrading it) with its 101 x 101
    Gaussian applied as two 1-D passes: the same result to float rounding at 2 x 101 instead of 101^2
    multiply-adds per pixel (it was 70% of the chain's time at 512 px under cProfile; ``benchmarks/data_bench.py``
    prints the degradation's speed with it and with BasicSR's)."""

    def __init__(self, radius: int = 50, sigma: float = 0) -> None:
        super().__init__(radius, sigma)
        self.register_buffer('taps', self.kernel[0].sum(1), persistent=False)  # rows of g g^T sum to g

    def blur(self, img: torch.Tensor) -> torch.Tensor:
        """``filter2D(img, self.kernel)``: reflect-pad, then convolve rows and columns."""
        b, c, h, w = img.shape
        k = self.taps.numel()
        x = F.pad(img, (k // 2,) * 4, mode='reflect').reshape(b * c, 1, h + k - 1, w + k - 1)
        x = F.conv2d(x, self.taps.to(img.dtype).view(1, 1, 1, k))
        return F.conv2d(x, self.taps.to(img.dtype).view(1, 1, k, 1)).view(b, c, h, w)

    def forward(self, img: torch.Tensor, weight: float = 0.5, threshold: float = 10) -> torch.Tensor:
        residual = img - self.blur(img)
        soft_mask = self.blur((residual.abs() * 255 > threshold).to(img.dtype))
        sharp = (img + weight * residual).clamp(0, 1)
        return soft_mask * sharp + (1 - soft_mask) * img


class HighOrderDegradation:
    """X -> X~ with Real-ESRGAN's second-order model at SR scale ``scale`` (1: same-size restoration)."""

    def __init__(self, opt: Dict[str, Any], scale: int = 1, device: torch.device = torch.device('cpu')) -> None:
        self.opt = {**checked_options(opt, REALESRGAN_DEFAULTS, scale, 'degradation'), 'scale': scale,
                    'high_order_degradation': True}
        self.device = torch.device(device)
        self.jpeger = DiffJPEG(differentiable=False).to(self.device)
        self.usm_sharpener = SeparableUSMSharp().to(self.device)

    def sample_kernels(self) -> Dict[str, torch.Tensor]:
        """First/second blur kernels and the final sinc kernel (a pulse when not drawn), 21 x 21 each."""
        if np.random.uniform() < self.opt['final_sinc_prob']:
            omega_c = np.random.uniform(np.pi / 3, np.pi)
            sinc = circular_lowpass_kernel(omega_c, random.choice(_KERNEL_RANGE), pad_to=_PAD_TO)
        else:
            sinc = np.zeros((_PAD_TO, _PAD_TO))
            sinc[_PAD_TO // 2, _PAD_TO // 2] = 1
        return {'kernel1': torch.FloatTensor(_blur_kernel(self.opt, '')),
                'kernel2': torch.FloatTensor(_blur_kernel(self.opt, '2')), 'sinc_kernel': torch.FloatTensor(sinc)}

    @torch.no_grad()
    def __call__(self, gt: torch.Tensor) -> torch.Tensor:
        """``gt``: B x 3 x H x W in [0, 1] (H, W divisible by the scale) -> X~: B x 3 x H/s x W/s, 8-bit levels."""
        if gt.dim() != 4 or gt.shape[1] != 3:
            raise ValueError(f'expected a B x 3 x H x W batch, got {tuple(gt.shape)}')
        h, w = gt.shape[-2:]
        if h % self.opt['scale'] or w % self.opt['scale']:
            raise ValueError(f'image size {h}x{w} is not divisible by the scale {self.opt["scale"]}')
        # the second blur runs after the first resize, the sinc filter at the output size; both pad by reflection
        smallest = min(h, w) * min(self.opt['resize_range'][0], 1 / self.opt['scale'])
        if smallest <= _PAD_TO // 2:
            raise ValueError(f'a {h}x{w} crop shrinks to {smallest:.0f} px (resize_range {self.opt["resize_range"]}, '
                             f'scale {self.opt["scale"]}) but the 21 x 21 filters need more than 10; use larger '
                             'crops or raise the lower resize bound')
        kernels = [self.sample_kernels() for _ in range(gt.shape[0])]
        side = max(h, w)  # feed_data crops to a gt_size square: degrade a reflected square, cut the picture back
        square = F.pad(gt, (0, side - w, 0, side - h), mode='reflect') if h != w else gt
        data = {'gt': square, **{k: torch.stack([kk[k] for kk in kernels]) for k in kernels[0]}}
        # DiffJPEG crops its padding away; a batch's next filter2D needs a contiguous tensor (.view)
        carrier = SimpleNamespace(is_train=True, opt={**self.opt, 'gt_size': side}, device=self.device,
                                  jpeger=lambda x, quality: self.jpeger(x, quality=quality).contiguous(),
                                  usm_sharpener=self.usm_sharpener,
                                  _dequeue_and_enqueue=lambda: None)
        threads = torch.get_num_threads()
        if self.device.type == 'cpu':
            torch.set_num_threads(1)  # per-sample filters on small crops: threads only add contention
        try:
            RealESRGANModel.feed_data(carrier, data)
        finally:
            torch.set_num_threads(threads)
        return carrier.lq[..., :h // self.opt['scale'], :w // self.opt['scale']]


# A degradation under which the codec is what limits quality: mild blur by down- and up-sampling, light noise, and
# sometimes a light JPEG. Real-ESRGAN's chain leaves X~ at ~23 dB whatever the QP (docs/training.md).
MILD_DEFAULTS: Dict[str, Any] = dict(resize_range=[0.5, 0.85], noise_range=[0.0, 4.0], gray_noise_prob=0.4,
                                     jpeg_prob=0.3, jpeg_range=[75, 95], sharpen_prob=0.0, sharpen_range=[0.5, 2.0])


class MildDegradation:
    """X -> X~: area-downsample by a factor in ``resize_range``, bicubic back up to H/s x W/s, Gaussian noise with
    sigma (in 8-bit levels) in ``noise_range`` (gray with ``gray_noise_prob``), JPEG at a quality in ``jpeg_range``
    with ``jpeg_prob``, then (with ``sharpen_prob``, 0 by default) an unsharp mask of strength in ``sharpen_range``;
    rounded to 8-bit levels. Any size; randomness from the global generators (:func:`seeded`)."""

    def __init__(self, opt: Dict[str, Any], scale: int = 1, device: torch.device = torch.device('cpu')) -> None:
        self.opt = checked_options(opt, MILD_DEFAULTS, scale, 'mild degradation')
        self.scale = scale
        self.jpeger = DiffJPEG(differentiable=False).to(device)

    @torch.no_grad()
    def __call__(self, gt: torch.Tensor) -> torch.Tensor:
        if gt.dim() != 4 or gt.shape[1] != 3:
            raise ValueError(f'expected a B x 3 x H x W batch, got {tuple(gt.shape)}')
        h, w = gt.shape[-2:]
        out = []
        for image in gt.split(1):
            factor = np.random.uniform(*self.opt['resize_range'])
            small = F.interpolate(image, size=(max(8, round(h * factor)), max(8, round(w * factor))), mode='area')
            x = F.interpolate(small, size=(h // self.scale, w // self.scale), mode='bicubic', align_corners=False)
            sigma = np.random.uniform(*self.opt['noise_range']) / 255.0
            gray = np.random.uniform() < self.opt['gray_noise_prob']
            noise = torch.randn_like(x[:, :1] if gray else x) * sigma
            x = (x + noise).clamp(0, 1)
            if np.random.uniform() < self.opt['jpeg_prob']:
                quality = torch.tensor([np.random.uniform(*self.opt['jpeg_range'])], dtype=x.dtype, device=x.device)
                x = self.jpeger(x, quality=quality).clamp(0, 1)
            if np.random.uniform() < self.opt['sharpen_prob']:
                blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), 3, stride=1)
                x = (x + np.random.uniform(*self.opt['sharpen_range']) * (x - blurred)).clamp(0, 1)
            out.append(x)
        return (torch.cat(out) * 255.0).round() / 255.0


def vary_uint8(variation: MildDegradation, image: np.ndarray, seed_words: Sequence[int]) -> np.ndarray:
    """``variation`` applied to one HxWx3 uint8 picture with randomness seeded by ``seed_words``: the picture
    before the codec that a simulator's training data and its rate fit see (``input_variation``)."""
    from vrpsr_plugin.codecs.inputs import rgb_to_tensor, to_rgb_uint8
    with seeded(seed_words):
        return to_rgb_uint8(variation(rgb_to_tensor(image)[None])[0])


DEGRADATIONS = {'realesrgan': HighOrderDegradation, 'mild': MildDegradation}


def build_degradation(kind: str, opt: Dict[str, Any], scale: int = 1, device: torch.device = torch.device('cpu')):
    """The degradation ``kind`` ('realesrgan' or 'mild') with option overrides ``opt``, run on ``device``."""
    if kind not in DEGRADATIONS:
        raise ValueError(f'degradation_type must be one of {sorted(DEGRADATIONS)}, got {kind!r}')
    return DEGRADATIONS[kind](opt, scale=scale, device=device)
