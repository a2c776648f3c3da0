"""Stage-2 data (§3.1 Eq. 1, §3.3.2): degraded input X~, its codec condition c and the target condition c'.

For a ground-truth crop X: X~ ~ p_C(X~|X) is Real-ESRGAN's high-order degradation
(:class:`~vrpsr_plugin.data.degradation.HighOrderDegradation`, SR scale 1 by default, the authors' setting);
a codec and QP q are drawn, and the real codec on X~ at q gives X_bar and the bitrate R_bar (Eq. 1). The condition
c = (codec, R_bar) is expressed in bpp *of the SR output X'*: the bit budget is kept, so at scale s the bpp is
R_bar's bpp on X~ divided by s^2 (Eq. 2). The slightly compressed target uses c' = (codec, bpp of the real codec on X
at QP q - ``target_qp_offset``) (10 in the paper, Eq. 7).

Returns ``lq`` (X~), ``gt`` (X), ``cond``, ``qp``, ``codec``, ``lq_codec`` (X_bar, the real codec output of X~ at
q), ``lq_bpp``, ``gt_path`` and, with ``with_target`` (default), ``cond_target``, ``qp_target`` and ``gt_codec`` (the
real codec output of X at q - offset). Every draw of sample ``i`` comes from generators seeded by
``(seed, epoch, i)`` (:mod:`vrpsr_plugin.data.fresh_draws`): fresh every epoch, identical in every worker, run and
resume.
"""
from typing import Any, Dict

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from vrpsr_plugin.codecs.condition import CONDITION_CODECS, CodecCondition
from vrpsr_plugin.codecs.inputs import rgb_to_tensor, to_rgb_uint8
from vrpsr_plugin.data.codec_simulator_dataset import (augment_pair, decode_rgb, gt_keys, random_crop_box,
                                                        sample_qps)
from vrpsr_plugin.data.degradation import build_degradation, seeded
from vrpsr_plugin.data.fresh_draws import FreshDrawMixin


@DATASET_REGISTRY.register()
class RecompressionSRDataset(FreshDrawMixin, data.Dataset):
    """(X~, X, c, c') for recompression-aware SR (Eq. 1-3, 7).

    Options: dataroot_gt, io_backend, meta_info, gt_size (None: whole image), scale (1, 2 or 4), codecs,
    qps | qp_range, target_qp_offset (10), degradation_type (``realesrgan``: Real-ESRGAN's chain, default;
    ``mild``: light blur/noise/JPEG, where the codec limits quality), degradation (overrides), use_hflip,
    use_rot, seed, encode_kwargs, condition_codecs, with_target (default true; false skips the real encode of X at
    q - offset, which only ``supervision: simulator | real_codec`` use).
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        from vrpsr_plugin.codecs import qp_range
        self.opt = opt
        self.scale = int(opt.get('scale', 1))
        self.codecs = list(opt.get('codecs') or ['libx264'])
        self.condition_codecs = tuple(opt.get('condition_codecs') or CONDITION_CODECS)
        unknown = sorted(set(self.codecs) - set(self.condition_codecs))
        if unknown:
            raise ValueError(f'codecs {unknown} are not in the condition one-hot {self.condition_codecs}')
        self.qps = sample_qps(opt)
        self.qp_offset = int(opt.get('target_qp_offset', 10))
        self.qp_min = {codec: int(qp_range(codec)[0]) for codec in self.codecs}
        self.gt_size = opt.get('gt_size')
        self.align = 16 * self.scale  # X~ stays a multiple of 16 (codec blocks)
        if self.gt_size is not None and self.gt_size % self.align:
            raise ValueError(f'gt_size {self.gt_size} must be a multiple of 16 x scale = {self.align}')
        self.seed = int(opt.get('seed', 0))
        self.keys = gt_keys(opt)
        self.degradation = build_degradation(opt.get('degradation_type', 'realesrgan'),
                                             dict(opt.get('degradation') or {}), scale=self.scale)
        self.io_opt = dict(opt['io_backend'])
        self.file_client = None

    def __len__(self) -> int:
        return len(self.keys)

    def _read(self, key: str) -> np.ndarray:
        from basicsr.utils import FileClient
        if self.file_client is None:
            opt = dict(self.io_opt)
            backend = opt.pop('type')
            if backend == 'lmdb':
                opt.update(db_paths=[self.opt['dataroot_gt']], client_keys=['gt'])
            self.file_client = FileClient(backend, **opt)
        payload = self.file_client.get(key, 'gt') if self.io_opt['type'] == 'lmdb' else self.file_client.get(key)
        return decode_rgb(payload, key)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from vrpsr_plugin.codecs import encode
        key = self.keys[index % len(self.keys)]
        rng = np.random.default_rng(self.draw_seed(index))
        gt = self._read(key)
        top, left, h, w = random_crop_box(*gt.shape[:2], self.gt_size, rng, self.align)
        gt = augment_pair([gt[top:top + h, left:left + w]], rng, self.opt.get('use_hflip', False),
                          self.opt.get('use_rot', False))[0]
        codec = self.codecs[int(rng.integers(len(self.codecs)))]
        qp = self.qps[int(rng.integers(len(self.qps)))]
        qp_target = max(qp - self.qp_offset, self.qp_min[codec])
        gt_t = rgb_to_tensor(gt)
        with seeded([*self.draw_seed(index), 1]):
            lq_t = self.degradation(gt_t[None])[0]
        lq = to_rgb_uint8(lq_t)
        kwargs = self.opt.get('encode_kwargs', {})
        source = encode(lq, codec, qp=qp, **kwargs)  # Eq. 1: X_bar, R_bar
        cond = CodecCondition(codec, float(source.bpp) / self.scale ** 2, qp).vector(self.condition_codecs)
        sample = {'lq': rgb_to_tensor(lq), 'gt': gt_t, 'cond': cond, 'qp': qp, 'codec': codec,
                  'lq_codec': rgb_to_tensor(source.image), 'gt_path': key, 'lq_bpp': torch.tensor(float(source.bpp))}
        if self.opt.get('with_target', True):
            target = encode(gt, codec, qp=qp_target, **kwargs)  # c' (Eq. 7)
            sample.update(cond_target=CodecCondition(codec, float(target.bpp), qp_target).vector(
                self.condition_codecs), qp_target=qp_target, gt_codec=rgb_to_tensor(target.image))
        return sample
