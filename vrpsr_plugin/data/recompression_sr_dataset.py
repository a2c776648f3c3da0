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

With ``degrade_on: model`` the dataset stops after the crop and the target encode and returns ``draw_seed``
instead of ``lq``, ``cond``, ``lq_codec`` and ``lq_bpp``; the model completes the batch on its device with
:class:`DegradeAndEncode` (Real-ESRGAN degrades on the GPU in batches; the per-sample chain costs a CPU core ~1 s
at 512 px). Its draws are then seeded by all the batch's seed words, so one batch is still a pure function of
(seed, epoch, indices), and a batch of one equals the dataset's own sample.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from vrpsr_plugin.codecs.condition import CONDITION_CODECS, CodecCondition
from vrpsr_plugin.codecs.inputs import rgb_to_tensor, to_rgb_uint8
from vrpsr_plugin.data.codec_simulator_dataset import (GTReader, augment_pair, gt_keys, random_crop_box,
                                                        sample_qps)
from vrpsr_plugin.data.degradation import build_degradation, seeded
from vrpsr_plugin.data.fresh_draws import FreshDrawMixin

DEGRADE_ON = ('dataset', 'model')


class DegradeAndEncode:
    """Eq. 1 for a batch: X~ ~ p_C(X~|X) on ``device``, then each X~ through its real codec at its QP (X_bar,
    R_bar) and the condition c (bpp of the SR output, Eq. 2), from a dataset's options (``degradation_type``,
    ``degradation``, ``scale``, ``encode_kwargs``, ``condition_codecs``). The encodes run ``encode_workers``
    at a time (default: one per core); ffmpeg/PyAV do the work outside the GIL."""

    def __init__(self, opt: Dict[str, Any], device: torch.device = torch.device('cpu')) -> None:
        self.scale = int(opt.get('scale', 1))
        self.degradation = build_degradation(opt.get('degradation_type', 'realesrgan'),
                                             dict(opt.get('degradation') or {}), scale=self.scale, device=device)
        self.encode_kwargs = dict(opt.get('encode_kwargs') or {})
        self.condition_codecs = tuple(opt.get('condition_codecs') or CONDITION_CODECS)
        self.workers = int(opt.get('encode_workers') or os.cpu_count() or 1)

    def __call__(self, gt: torch.Tensor, codecs: Sequence[str], qps: Sequence[int],
                 seed_words: Sequence[int]) -> Dict[str, torch.Tensor]:
        """``gt``: B x 3 x H x W on the degradation's device -> ``lq``, ``lq_codec`` (on that device), ``cond``,
        ``lq_bpp`` (B-batched). The degradation's draws are seeded by ``seed_words``."""
        return self.encode(self.degrade(gt, seed_words), codecs, qps)

    def degrade(self, gt: torch.Tensor, seed_words: Sequence[int]) -> torch.Tensor:
        """X~ of the batch (8-bit levels), on ``gt``'s device."""
        with seeded(seed_words):
            return self.degradation(gt)

    def encode(self, lq: torch.Tensor, codecs: Sequence[str], qps: Sequence[int]) -> Dict[str, torch.Tensor]:
        """Each X~ through its codec at its QP: X~ and X_bar on ``lq``'s device, c and the bpp of X~."""
        from vrpsr_plugin.codecs import encode
        images = [to_rgb_uint8(x) for x in lq.float().cpu()]
        with ThreadPoolExecutor(min(self.workers, len(images))) as pool:
            coded = list(pool.map(lambda args: encode(args[0], args[1], qp=int(args[2]), **self.encode_kwargs),
                                  zip(images, codecs, qps)))
        out_pixels = lq.shape[-2] * lq.shape[-1] * self.scale ** 2  # c is in bpp of X' (Eq. 2)
        cond = [CodecCondition.from_stream(codec, float(c.bpp) / self.scale ** 2, out_pixels, int(qp)).vector(
            self.condition_codecs) for c, codec, qp in zip(coded, codecs, qps)]
        return {'lq': torch.stack([rgb_to_tensor(x) for x in images]).to(lq.device),
                'lq_codec': torch.stack([rgb_to_tensor(c.image) for c in coded]).to(lq.device),
                'cond': torch.stack(cond).to(lq.device), 'lq_bpp': torch.tensor([float(c.bpp) for c in coded])}


def batch_seed_words(draw_seeds: torch.Tensor) -> List[int]:
    """Seed words of a batch's degradation: every sample's ``draw_seed`` (B x 3) in order, then 1; a batch of
    one gives the words the dataset itself uses."""
    return [*draw_seeds.reshape(-1).tolist(), 1]


@DATASET_REGISTRY.register()
class RecompressionSRDataset(FreshDrawMixin, data.Dataset):
    """(X~, X, c, c') for recompression-aware SR (Eq. 1-3, 7).

    Options: dataroot_gt, io_backend, meta_info, gt_size (None: whole image), scale (1, 2 or 4), codecs,
    qps | qp_range, target_qp_offset (10), degradation_type (``realesrgan``: Real-ESRGAN's chain, default;
    ``mild``: light blur/noise/JPEG, where the codec limits quality), degradation (overrides), use_hflip,
    use_rot, seed, encode_kwargs, condition_codecs, with_target (default true; false skips the real encode of X at
    q - offset, which only ``supervision: simulator | real_codec`` use), degrade_on (``dataset``, default, or
    ``model``: the model degrades and encodes X~ on its device, a batch at a time; training sets only),
    encode_workers (parallel encodes of a batch with ``degrade_on: model``).
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
        self.degrade_on = opt.get('degrade_on', 'dataset')
        if self.degrade_on not in DEGRADE_ON:
            raise ValueError(f'degrade_on must be one of {DEGRADE_ON}, got {self.degrade_on!r}')
        if self.degrade_on == 'model' and opt.get('phase', 'train') != 'train':
            raise ValueError(f'degrade_on: model is for training sets only (this is a {opt["phase"]} set): the '
                             'model completes batches with the training set\'s options')
        self.complete = DegradeAndEncode(opt)  # built (and its options checked) in both modes
        self.read_gt = GTReader(opt)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from vrpsr_plugin.codecs import encode
        key = self.keys[index % len(self.keys)]
        rng = np.random.default_rng(self.draw_seed(index))
        gt = self.read_gt(key)
        top, left, h, w = random_crop_box(*gt.shape[:2], self.gt_size, rng, self.align)
        gt = augment_pair([gt[top:top + h, left:left + w]], rng, self.opt.get('use_hflip', False),
                          self.opt.get('use_rot', False))[0]
        codec = self.codecs[int(rng.integers(len(self.codecs)))]
        qp = self.qps[int(rng.integers(len(self.qps)))]
        qp_target = max(qp - self.qp_offset, self.qp_min[codec])
        gt_t = rgb_to_tensor(gt)
        seed = torch.tensor(self.draw_seed(index))
        sample = {'gt': gt_t, 'qp': qp, 'codec': codec, 'gt_path': key}
        if self.degrade_on == 'model':
            sample['draw_seed'] = seed
        else:  # Eq. 1: X~, X_bar, R_bar and c
            source = self.complete(gt_t[None], [codec], [qp], batch_seed_words(seed))
            sample.update({k: v[0] for k, v in source.items()})
        if self.opt.get('with_target', True):
            target = encode(gt, codec, qp=qp_target, **self.opt.get('encode_kwargs', {}))  # c' (Eq. 7)
            cond_target = CodecCondition.from_stream(codec, float(target.bpp), gt.shape[0] * gt.shape[1], qp_target)
            sample.update(cond_target=cond_target.vector(self.condition_codecs), qp_target=qp_target,
                          gt_codec=rgb_to_tensor(target.image))
        return sample
