"""The full-reference metrics of §4.1 / App. C on HxWx3 RGB uint8 images, with per-metric availability.

PSNR (RGB and Y) and SSIM are BasicSR's; MS-SSIM pytorch_msssim's; LPIPS (alex) and DISTS need pretrained
backbones (:mod:`vrpsr_plugin.metrics.pretrained`); FID/patch-FID use the FID Inception. A metric whose weights are
missing is *unavailable* with its reason and is left out; the others still run.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from basicsr.metrics import calculate_psnr, calculate_ssim

from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.metrics.fid import inception_features
from vrpsr_plugin.metrics.msssim_metric import MIN_SIDE, ms_ssim_tensor
from vrpsr_plugin.metrics.pretrained import MetricUnavailable, load_dists, load_inception, load_lpips

METRICS = ('psnr', 'psnr_y', 'ssim', 'ms_ssim', 'lpips', 'dists', 'fid')
HIGHER_IS_BETTER = {'psnr': True, 'psnr_y': True, 'ssim': True, 'ms_ssim': True,
                    'lpips': False, 'dists': False, 'fid': False}
FID_MODES = ('patch', 'full', 'off')


@dataclass
class MetricSuite:
    """Metric objects and the reasons of the unavailable ones.

    ``lpips``/``dists``/``inception`` must be the *pretrained* networks for reported numbers (use :meth:`load`);
    tests may pass other modules explicitly.
    """
    names: Sequence[str] = METRICS
    lpips: Optional[torch.nn.Module] = None
    dists: Optional[torch.nn.Module] = None
    inception: Optional[torch.nn.Module] = None
    fid_mode: str = 'patch'
    fid_patch: int = 256
    unavailable: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.names) - set(METRICS)
        if unknown:
            raise ValueError(f'unknown metrics {sorted(unknown)}; choose from {METRICS}')
        if self.fid_mode not in FID_MODES:
            raise ValueError(f'fid mode must be one of {FID_MODES}, got {self.fid_mode!r}')
        for name, module in (('lpips', self.lpips), ('dists', self.dists), ('fid', self.inception)):
            if name in self.names and module is None and name not in self.unavailable:
                self.unavailable[name] = 'not loaded' if name != 'fid' or self.fid_mode != 'off' else '--fid off'

    @classmethod
    def load(cls, names: Sequence[str] = METRICS, device: str = 'cpu', lpips_weights: Optional[str] = None,
             dists_weights: Sequence[Optional[str]] = (), fid_weights: Optional[str] = None,
             fid_mode: str = 'patch', fid_patch: int = 256) -> 'MetricSuite':
        """Load the pretrained networks the requested metrics need, recording why any cannot be loaded."""
        nets: Dict[str, Optional[torch.nn.Module]] = {'lpips': None, 'dists': None, 'fid': None}
        unavailable: Dict[str, str] = {}
        loaders = {'lpips': lambda: load_lpips(lpips_weights, device),
                   'dists': lambda: load_dists(dists_weights, device),
                   'fid': lambda: load_inception(fid_weights, device)}
        for name, loader in loaders.items():
            if name not in names or (name == 'fid' and fid_mode == 'off'):
                continue
            try:
                nets[name] = loader()
            except MetricUnavailable as error:
                unavailable[name] = str(error)
        return cls(names=tuple(names), lpips=nets['lpips'], dists=nets['dists'], inception=nets['fid'],
                   fid_mode=fid_mode, fid_patch=fid_patch, unavailable=unavailable)

    def check_size(self, size: int) -> None:
        """Mark MS-SSIM unavailable for images too small for its five scales."""
        if 'ms_ssim' in self.names and size < MIN_SIDE:
            self.unavailable['ms_ssim'] = f'images of {size} px are below the {MIN_SIDE} px MS-SSIM needs'

    def per_image(self) -> Sequence[str]:
        """The available per-image metrics (everything but FID, which is a set statistic)."""
        return [n for n in self.names if n != 'fid' and n not in self.unavailable]

    @torch.no_grad()
    def compute(self, image: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
        """Per-image metrics of ``image`` against ``reference`` (both HxWx3 RGB uint8)."""
        if image.shape != reference.shape:
            raise ValueError(f'image {image.shape} and reference {reference.shape} differ in size')
        out: Dict[str, float] = {}
        names = self.per_image()
        if 'psnr' in names:
            out['psnr'] = float(calculate_psnr(image, reference, 0))
        if 'psnr_y' in names:  # BasicSR's Y channel expects BGR
            out['psnr_y'] = float(calculate_psnr(image[..., ::-1], reference[..., ::-1], 0, test_y_channel=True))
        if 'ssim' in names:
            out['ssim'] = float(calculate_ssim(image, reference, 0))
        x, y = rgb_to_tensor(image)[None], rgb_to_tensor(reference)[None]
        if 'ms_ssim' in names:
            out['ms_ssim'] = float(ms_ssim_tensor(x, y).item())
        if 'lpips' in names:
            device = next(self.lpips.parameters()).device
            out['lpips'] = float(self.lpips(x.to(device), y.to(device), normalize=True).item())
        if 'dists' in names:
            device = next(self.dists.parameters()).device
            out['dists'] = float(self.dists(x.to(device), y.to(device)).item())
        return out

    def wants_fid(self) -> bool:
        return 'fid' in self.names and 'fid' not in self.unavailable and self.fid_mode != 'off'

    def features(self, image: np.ndarray) -> np.ndarray:
        """Inception features of one image: of its patches (patch-FID) or of the whole image (full FID)."""
        patch = self.fid_patch if self.fid_mode == 'patch' else 0
        return inception_features(rgb_to_tensor(image)[None], self.inception, patch=patch).astype(np.float32)
