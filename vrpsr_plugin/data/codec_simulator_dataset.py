"""Stage-1 data (§3.3.1, Eq. 4/6): ground truth X, the real codec's decoded output X^ and the condition c.

Each sample draws a codec from ``codecs`` and a QP from ``qps`` (or ``qp_range: [lo, hi]``, inclusive), encodes
the ground-truth crop with that real codec, and returns the *measured* bpp as the condition (the simulator learns
the rate-target mapping of Eq. 4). With ``dataroot_bank`` the encodes come from a codec bank
(:mod:`vrpsr_plugin.data.codec_bank`) at the bank's QP grid instead of being computed on the fly.

Every draw of sample ``i`` (crop, flips, codec, QP) comes from its own generator seeded by ``(seed, epoch, i)``
(:mod:`vrpsr_plugin.data.fresh_draws`): fresh every epoch, and the same in every worker, run and resumed run.
Options follow BasicSR's conventions: ``dataroot_gt`` +
``io_backend: {type: disk}`` (a folder, or ``meta_info`` listing files) or ``{type: lmdb}`` (keys from the lmdb's
``meta_info.txt``); a bank's tar shards are read directly (:class:`~vrpsr_plugin.data.codec_bank.CodecBank`).
"""
import os.path as osp
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
from basicsr.utils import FileClient, scandir
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from vrpsr_plugin.codecs.condition import CONDITION_CODECS, CodecCondition
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.data.codec_bank import CodecBank
from vrpsr_plugin.data.degradation import MildDegradation, vary_uint8
from vrpsr_plugin.data.fresh_draws import FreshDrawMixin

_IMG_SUFFIX = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def decode_rgb(payload: bytes, name: str) -> np.ndarray:
    """Image bytes -> H x W x 3 RGB uint8."""
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'cannot decode image {name}')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class GTReader:
    """Ground-truth image by key (:func:`gt_keys`) through BasicSR's FileClient (disk path or lmdb key), as H x W x 3
    RGB uint8; the client opens on first use (in each DataLoader worker); a context manager closes it."""

    def __init__(self, opt: Dict[str, Any]) -> None:
        self.io_opt = dict(opt['io_backend'])
        self.root = opt['dataroot_gt']
        self.client: Optional[FileClient] = None

    def __call__(self, key: str) -> np.ndarray:
        lmdb = self.io_opt['type'] == 'lmdb'
        if self.client is None:
            opt = dict(self.io_opt)
            backend = opt.pop('type')
            if lmdb:
                opt.update(db_paths=[self.root], client_keys=['gt'])
            self.client = FileClient(backend, **opt)
        return decode_rgb(self.client.get(key, 'gt') if lmdb else self.client.get(key), key)

    def close(self) -> None:
        """Close an open lmdb environment (LMDB allows one per path and process: the stage-1 rate fit reads in the
        main process before the datasets open theirs)."""
        if self.client is not None and self.io_opt['type'] == 'lmdb':
            for env in self.client.client._client.values():
                env.close()
        self.client = None

    def __enter__(self) -> 'GTReader':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def gt_keys(opt: Dict[str, Any]) -> List[str]:
    """Ground-truth paths (disk) or keys (lmdb), as BasicSR's paired datasets list them."""
    root, backend = opt['dataroot_gt'], opt['io_backend']['type']
    if backend == 'lmdb':
        if not root.endswith('.lmdb'):
            raise ValueError(f"dataroot_gt should end with '.lmdb' for the lmdb backend, got {root!r}")
        with open(osp.join(root, 'meta_info.txt')) as handle:
            return [line.split('.')[0] for line in handle if line.strip()]
    if backend != 'disk':
        raise ValueError(f'io_backend type must be disk or lmdb, got {backend!r}')
    if opt.get('meta_info'):
        with open(opt['meta_info']) as handle:
            return [osp.join(root, line.strip().split(' ')[0]) for line in handle if line.strip()]
    if not osp.isdir(root):
        raise FileNotFoundError(f'dataroot_gt {root!r} is not a folder')
    paths = sorted(osp.join(root, p) for p in scandir(root, suffix=_IMG_SUFFIX, recursive=True))
    if not paths:
        raise FileNotFoundError(f'no images in {root!r}')
    return paths


def sample_qps(opt: Dict[str, Any]) -> List[int]:
    """The QP set from ``qps: [...]`` or ``qp_range: [lo, hi]`` (inclusive)."""
    if opt.get('qps') is not None:
        qps = [int(q) for q in opt['qps']]
    elif opt.get('qp_range') is not None:
        lo, hi = (int(v) for v in opt['qp_range'])
        if lo > hi:
            raise ValueError(f'qp_range must be [lo, hi] with lo <= hi, got {opt["qp_range"]}')
        qps = list(range(lo, hi + 1))
    else:
        raise ValueError('set qps: [...] or qp_range: [lo, hi]')
    if not qps or min(qps) < 0:
        raise ValueError(f'QPs must be non-negative, got {qps}')
    return qps


def random_crop_box(h: int, w: int, size: Optional[int], rng: np.random.Generator, align: int) -> Tuple[int, ...]:
    """(top, left, height, width): a ``size`` crop at ``align``-aligned offsets, or the whole image cut to a
    multiple of ``align``."""
    if size is None:
        return 0, 0, h - h % align, w - w % align
    if size > min(h, w):
        raise ValueError(f'gt_size {size} is larger than an image of {h}x{w}')
    top = int(rng.integers(0, (h - size) // align + 1)) * align
    left = int(rng.integers(0, (w - size) // align + 1)) * align
    return top, left, size, size


def augment_pair(images: List[np.ndarray], rng: np.random.Generator, hflip: bool, rot: bool) -> List[np.ndarray]:
    """The same horizontal flip / 90-degree rotation on all images (BasicSR's ``augment``, seeded)."""
    flip, vflip, rot90 = hflip and rng.random() < 0.5, rot and rng.random() < 0.5, rot and rng.random() < 0.5
    out = []
    for img in images:
        img = img[:, ::-1] if flip else img
        img = img[::-1] if vflip else img
        out.append(np.ascontiguousarray(img.transpose(1, 0, 2) if rot90 else img))
    return out


@DATASET_REGISTRY.register()
class CodecSimulatorDataset(FreshDrawMixin, data.Dataset):
    """{'gt': X, 'codec_out': real codec output, 'cond': [onehot, bpp], 'qp', 'codec', 'gt_path'} (Eq. 4/6).

    Options: dataroot_gt, io_backend, meta_info, codecs, qps | qp_range, gt_size (None: whole image), align (16),
    use_hflip, use_rot, seed, dataroot_bank (optional codec bank), encode_kwargs (passed to ``codecs.encode``),
    condition_codecs (one-hot order, default CONDITION_CODECS), input_variation (options of
    :class:`~vrpsr_plugin.data.degradation.MildDegradation`, applied to X before the codec with probability
    ``input_variation_prob`` (0.5): the simulator then also learns how the codec treats blurred, noisy, JPEG'd and
    sharpened pictures, the kind stage 2's SR nets produce; without it it only sees clean photos).
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        self.codecs = list(opt.get('codecs') or ['libx264'])
        self.condition_codecs = tuple(opt.get('condition_codecs') or CONDITION_CODECS)
        unknown = sorted(set(self.codecs) - set(self.condition_codecs))
        if unknown:
            raise ValueError(f'codecs {unknown} are not in the condition one-hot {self.condition_codecs}')
        self.gt_size = opt.get('gt_size')
        self.align = int(opt.get('align', 16))
        self.seed = int(opt.get('seed', 0))
        self.read_gt = GTReader(opt)
        self.bank = CodecBank(opt['dataroot_bank']) if opt.get('dataroot_bank') else None
        if self.bank:
            self.qps = [int(q) for q in (opt.get('qps') or self.bank.qps)]
            self.keys = self.bank.keys
            missing = self.bank.missing(self.codecs, self.qps)
            if missing:  # every sample drawable: fail now, not in a worker later
                raise ValueError(f'bank {self.bank.root!r} lacks {", ".join(missing)}; '
                                 'finish it with `vrpsr prepare-bank` or restrict codecs/qps')
        else:
            self.qps = sample_qps(opt)
            self.keys = gt_keys(opt)
        self.input_variation = None
        if opt.get('input_variation') is not None:
            if self.bank:
                raise ValueError('input_variation needs on-the-fly encodes: it cannot be used with dataroot_bank')
            self.input_variation = MildDegradation(dict(opt['input_variation']))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from vrpsr_plugin.codecs import encode
        key = self.keys[index % len(self.keys)]
        rng = np.random.default_rng(self.draw_seed(index))
        codec = self.codecs[int(rng.integers(len(self.codecs)))]
        qp = self.qps[int(rng.integers(len(self.qps)))]
        if self.bank:
            gt, (decoded, record) = self.bank.gt(key), self.bank.coded(key, codec, qp)
            if gt.shape != decoded.shape:
                raise ValueError(f'bank entry {key} {codec} QP {qp} has shape {decoded.shape}, its ground truth '
                                 f'{gt.shape}')
            pixels = gt.shape[0] * gt.shape[1]  # the bank's rate is that of its whole coded picture
            top, left, h, w = random_crop_box(*gt.shape[:2], self.gt_size, rng, self.align)
            gt, decoded = (img[top:top + h, left:left + w] for img in (gt, decoded))
            bpp, gt_path = float(record['bpp']), osp.join(self.bank.root, key)
        else:
            gt = self.read_gt(key)
            top, left, h, w = random_crop_box(*gt.shape[:2], self.gt_size, rng, self.align)
            gt = np.ascontiguousarray(gt[top:top + h, left:left + w])
            gt = augment_pair([gt], rng, self.opt.get('use_hflip', False), self.opt.get('use_rot', False))[0]
            if self.input_variation is not None and rng.random() < self.opt.get('input_variation_prob', 0.5):
                gt = vary_uint8(self.input_variation, gt, [*self.draw_seed(index), 1])
            result = encode(gt, codec, qp=qp, **self.opt.get('encode_kwargs', {}))
            decoded, bpp, gt_path, pixels = result.image, float(result.bpp), key, gt.shape[0] * gt.shape[1]
        if self.bank:
            gt, decoded = augment_pair([gt, decoded], rng, self.opt.get('use_hflip', False),
                                       self.opt.get('use_rot', False))
        cond = CodecCondition.from_stream(codec, bpp, pixels, qp).vector(self.condition_codecs)
        return {'gt': rgb_to_tensor(gt), 'codec_out': rgb_to_tensor(decoded), 'cond': cond, 'qp': qp, 'codec': codec,
                'gt_path': gt_path}
