"""FID [12] and patch-FID for small test sets (§4.1).

FID on 24 Kodak images estimates a 2048x2048 covariance from 24 samples: it is mostly noise. Patch-FID (as in
HiFiC, Mentzer et al. 2020) cuts every image into ``patch`` x ``patch`` crops on a regular grid plus the same grid
shifted by ``patch / 2``, and computes FID over all crops. Features come from the FID Inception (pool3, 2048-d;
:func:`vrpsr_plugin.metrics.pretrained.load_inception`); the distance is piq's ``FID.compute_metric``.
"""
from typing import List

import numpy as np
import torch


def patches(image: torch.Tensor, patch: int) -> torch.Tensor:
    """All ``patch`` crops of a 3xHxW image on the stride-``patch`` grid and on that grid shifted by ``patch//2``."""
    if image.dim() != 3:
        raise ValueError(f'expected a 3xHxW image, got shape {tuple(image.shape)}')
    height, width = image.shape[-2:]
    if patch < 1 or patch > min(height, width):
        raise ValueError(f'patch size {patch} does not fit a {height}x{width} image')
    crops: List[torch.Tensor] = []
    for offset in (0, patch // 2):
        for top in range(offset, height - patch + 1, patch):
            for left in range(offset, width - patch + 1, patch):
                crops.append(image[:, top:top + patch, left:left + patch])
    return torch.stack(crops)


@torch.no_grad()
def inception_features(images: torch.Tensor, extractor: torch.nn.Module, patch: int = 0,
                       batch_size: int = 16) -> np.ndarray:
    """N x D features of Bx3xHxW images in [0,1] (of their patches when ``patch > 0``)."""
    if patch > 0:
        images = torch.cat([patches(image, patch) for image in images])
    device = next(extractor.parameters()).device
    feats = []
    for start in range(0, len(images), batch_size):
        out = extractor(images[start:start + batch_size].to(device))
        out = out[-1] if isinstance(out, (list, tuple)) else out
        feats.append(out.flatten(1).double().cpu())
    return torch.cat(feats).numpy()


def fid(features: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between two N x D feature sets (piq's implementation)."""
    from piq import FID

    if len(features) < 2 or len(reference) < 2:
        raise ValueError('FID needs at least two feature vectors per set')
    return float(FID().compute_metric(torch.from_numpy(features), torch.from_numpy(reference)).item())
