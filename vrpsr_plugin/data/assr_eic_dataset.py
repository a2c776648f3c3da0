"""ASSR-EIC training data (seed 002): the real encoder path with fresh (s, codec, QP) draws.

For a photo: draw s log-uniformly in ``scale_range``, a codec and a QP; crop an R x R region (R = lq_size * s),
down-scale it to lq_size x lq_size (:func:`vrpsr_plugin.eic.rescale.downscale`, the encoder's own down-sampler),
code it with the real codec at the QP and decode it. The decoder learns to map that picture back to the region.
Training queries a random ``patch_size`` x ``patch_size`` window of the region's output pixels (LIIF's query
sampling, kept contiguous so that image losses and the discriminator apply), so every s batches together; with
``patch_size: ~`` (validation) the whole region is the target. Every draw is seeded by
(seed, epoch, index) (:mod:`vrpsr_plugin.data.fresh_draws`): new each epoch, identical across workers and resumes.

Returns ``lq`` (3 x lq_size x lq_size), ``cond`` (:func:`~vrpsr_plugin.archs.assr_eic_arch.assr_condition`),
``coords`` (P*P x 2, (y, x) in [-1, 1], row-major), ``cell`` (2,), ``gt`` (3 x P x P, or 3 x R x R), ``scale``,
``qp``, ``codec``, ``lq_bpp`` (bits per pixel of the coded picture), ``gt_path`` and ``lq_path`` (both the photo).
"""
import math
from typing import Any, Dict

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from vrpsr_plugin.codecs.condition import CONDITION_CODECS
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.data.codec_simulator_dataset import augment_pair, decode_rgb, gt_keys, sample_qps
from vrpsr_plugin.data.fresh_draws import FreshDrawMixin


@DATASET_REGISTRY.register()
class ASSREICDataset(FreshDrawMixin, data.Dataset):
    """(coded down-scaled picture, condition, query coordinates, ground truth) for the ASSR-EIC decoder.

    Options: dataroot_gt, io_backend ({type: disk}), meta_info, codecs, qps | qp_range, scale_range ([1, 8]),
    lq_size (32), patch_size (32; ~ for whole regions), use_hflip, use_rot, seed, encode_kwargs, condition_codecs.
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        from vrpsr_plugin.codecs.encoders import get_spec
        self.opt = opt
        self.codecs = list(opt.get('codecs') or ['libx265'])
        self.condition_codecs = tuple(opt.get('condition_codecs') or CONDITION_CODECS)
        unknown = sorted(set(self.codecs) - set(self.condition_codecs))
        if unknown:
            raise ValueError(f'codecs {unknown} are not in the condition one-hot {self.condition_codecs}')
        self.qps = sample_qps(opt)
        for codec in self.codecs:
            lo, hi = get_spec(codec).qp_range
            if min(self.qps) < lo or max(self.qps) > hi:
                raise ValueError(f'QPs {min(self.qps)}..{max(self.qps)} exceed {codec}\'s range [{lo}, {hi}]')
        self.scale_range = tuple(float(v) for v in opt.get('scale_range', (1.0, 8.0)))
        if not 1.0 <= self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f'scale_range must be [lo, hi] with 1 <= lo <= hi, got {self.scale_range}')
        self.lq_size = int(opt.get('lq_size', 32))
        min_size = max(get_spec(codec).min_size for codec in self.codecs)
        if self.lq_size < min_size:
            raise ValueError(f'lq_size {self.lq_size} is below the codecs\' minimum picture size {min_size}')
        self.patch_size = opt.get('patch_size', 32)
        if self.patch_size is not None and not 0 < int(self.patch_size) <= self.lq_size:
            raise ValueError(f'patch_size must lie in [1, lq_size = {self.lq_size}] (every s has that many output '
                             f'pixels a side), got {self.patch_size}')
        self.seed = int(opt.get('seed', 0))
        if opt.get('io_backend', {}).get('type', 'disk') != 'disk':
            raise ValueError('ASSREICDataset reads photos from disk only (io_backend: {type: disk})')
        self.keys = gt_keys(opt)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from vrpsr_plugin.archs.assr_eic_arch import assr_condition
        from vrpsr_plugin.codecs import encode
        from vrpsr_plugin.eic.rescale import downscale
        key = self.keys[index % len(self.keys)]
        rng = np.random.default_rng(self.draw_seed(index))
        with open(key, 'rb') as handle:
            photo = decode_rgb(handle.read(), key)
        lo, hi = self.scale_range
        hi = min(hi, min(photo.shape[:2]) / self.lq_size)
        if hi < lo:
            raise ValueError(f'{key} is {photo.shape[1]}x{photo.shape[0]}, too small for s={lo} at lq_size '
                             f'{self.lq_size}')
        region = round(self.lq_size * math.exp(rng.uniform(math.log(lo), math.log(hi))))
        region = min(max(region, self.lq_size), min(photo.shape[:2]))
        top = int(rng.integers(0, photo.shape[0] - region + 1))
        left = int(rng.integers(0, photo.shape[1] - region + 1))
        gt = augment_pair([photo[top:top + region, left:left + region]], rng, self.opt.get('use_hflip', False),
                          self.opt.get('use_rot', False))[0]
        codec = self.codecs[int(rng.integers(len(self.codecs)))]
        qp = self.qps[int(rng.integers(len(self.qps)))]
        coded = encode(downscale(gt, (self.lq_size, self.lq_size)), codec, qp=qp, **self.opt.get('encode_kwargs', {}))
        scale = region / self.lq_size
        out = {'lq': rgb_to_tensor(coded.image), 'cond': assr_condition(codec, qp, scale, self.condition_codecs)[0],
               'cell': torch.tensor([2.0 / region, 2.0 / region]), 'scale': torch.tensor(scale), 'qp': qp,
               'codec': codec, 'lq_bpp': torch.tensor(float(coded.bpp)), 'gt_path': key, 'lq_path': key}
        gt_t = rgb_to_tensor(gt)
        if self.patch_size is None:
            out['gt'] = gt_t
            return out
        size = int(self.patch_size)
        top, left = (int(v) for v in rng.integers(0, region - size + 1, size=2))
        ys = (torch.arange(top, top + size, dtype=torch.float32) * 2 + 1) / region - 1
        xs = (torch.arange(left, left + size, dtype=torch.float32) * 2 + 1) / region - 1
        out['coords'] = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).reshape(-1, 2)
        out['gt'] = gt_t[:, top:top + size, left:left + size].contiguous()
        return out
