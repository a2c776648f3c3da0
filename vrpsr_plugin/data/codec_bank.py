"""Codec bank: every image (or crop) of a dataset pre-encoded with real codecs at a grid of QPs (§3.3.1 data).

Encoding with vvenc takes seconds per image, far too slow inside a data loader, so ``vrpsr prepare-bank`` runs
all encodes once, on all cores, and :class:`~vrpsr_plugin.data.codec_simulator_dataset.CodecSimulatorDataset`
reads the result. Layout of a bank folder ``OUT``::

    OUT/gt/<key>.png                       the (cropped) ground truth X
    OUT/<codec>/qp<q>/<key>.png            decoded real codec output at QP q
    OUT/<codec>/qp<q>/<key>.json           {"bpp", "num_bytes", "qp", "codec"}: written last, marks completion
    OUT/index.json                         manifest (codecs, qps, crop, items) read by the dataset

Every file is written atomically (temporary file + ``os.replace``), so an interrupted run resumes without redoing
finished encodes and never leaves a half-written file behind. ``--lmdb`` also packs the images into
``OUT.lmdb`` (BasicSR's ``make_lmdb_from_imgs``; keys are the relative paths without ``.png``) for
``io_backend: {type: lmdb}``.
"""
import argparse
import json
import os
import os.path as osp
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from vrpsr_plugin.atomic_io import read_rgb, write_json, write_png

INDEX_NAME = 'index.json'
_IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def code_relpath(key: str, codec: str, qp: int, ext: str = '.png') -> str:
    """Relative path of the decoded image (``ext='.png'``) or its record (``'.json'``) in the bank."""
    return f'{codec}/qp{int(qp)}/{key}{ext}'


def _tiles(image: np.ndarray, crop: Optional[int]) -> List[Tuple[int, np.ndarray]]:
    """Non-overlapping ``crop`` x ``crop`` tiles (all full tiles), or the whole image cut to even size."""
    h, w = image.shape[:2]
    if crop is None:
        return [(0, image[:h - h % 2, :w - w % 2])]
    return [(i, image[t:t + crop, l:l + crop]) for i, (t, l) in enumerate(
        (t, l) for t in range(0, h - crop + 1, crop) for l in range(0, w - crop + 1, crop))]


def _encode_job(root: str, key: str, codec: str, qp: int) -> Tuple[str, str, int, Dict[str, Any]]:
    """Worker: encode ``gt/<key>.png`` with the real codec at ``qp``; write image then record, atomically."""
    from vrpsr_plugin.codecs import encode
    result = encode(read_rgb(osp.join(root, 'gt', f'{key}.png')), codec, qp=qp)
    write_png(osp.join(root, code_relpath(key, codec, qp)), result.image)
    record = {'bpp': float(result.bpp), 'num_bytes': int(result.num_bytes), 'qp': int(qp), 'codec': codec}
    write_json(osp.join(root, code_relpath(key, codec, qp, '.json')), record)
    return key, codec, qp, record


def _build_index(root: str, keys: Sequence[str], codecs: Sequence[str], qps: Sequence[int],
                 crop: Optional[int]) -> Dict[str, Any]:
    """Manifest of every finished encode (records present on disk)."""
    items: Dict[str, Any] = {}
    for key in keys:
        codes: Dict[str, Dict[str, Any]] = {}
        for codec in codecs:
            for qp in qps:
                rec_path = osp.join(root, code_relpath(key, codec, qp, '.json'))
                if osp.isfile(rec_path):
                    with open(rec_path) as handle:
                        record = json.load(handle)
                    codes.setdefault(codec, {})[str(qp)] = {**record, 'path': code_relpath(key, codec, qp)}
        items[key] = {'gt': f'gt/{key}.png', 'codes': codes}
    return {'version': 1, 'codecs': list(codecs), 'qps': [int(q) for q in qps], 'crop': crop, 'items': items}


def prepare_bank(data_dir: str, out: str, codecs: Sequence[str], qps: Sequence[int], crop: Optional[int] = None,
                 workers: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Encode every image (or every ``crop`` tile) of ``data_dir`` with each codec at each QP into ``out``.

    Finished encodes (their ``.json`` record exists) are skipped, so re-running resumes an interrupted bank.
    Returns the manifest, also written to ``out/index.json``.
    """
    from vrpsr_plugin.codecs import available_codecs
    if not osp.isdir(data_dir):
        raise FileNotFoundError(f'data folder {data_dir!r} does not exist')
    missing = sorted(set(codecs) - set(available_codecs()))
    if missing:
        raise ValueError(f'codecs {missing} are not available here (available: {sorted(available_codecs())})')
    if not qps or any(int(q) != q or q < 0 for q in qps):
        raise ValueError(f'qps must be non-negative integers, got {qps}')
    if crop is not None and (crop < 16 or crop % 2):
        raise ValueError(f'crop must be an even size >= 16, got {crop}')
    files = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(_IMG_EXTS))
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(_IMG_EXTS)}) in {data_dir!r}')
    os.makedirs(osp.join(out, 'gt'), exist_ok=True)
    keys = []
    for name in files:
        stem = osp.splitext(name)[0]
        for index, tile in _tiles(read_rgb(osp.join(data_dir, name)), crop):
            key = stem if crop is None else f'{stem}_s{index:03d}'
            gt_path = osp.join(out, 'gt', f'{key}.png')
            if not osp.isfile(gt_path):
                write_png(gt_path, np.ascontiguousarray(tile))
            keys.append(key)
    if not keys:
        raise ValueError(f'no image in {data_dir!r} is at least {crop}x{crop}')
    jobs = [(key, codec, int(qp)) for key in keys for codec in codecs for qp in qps
            if not osp.isfile(osp.join(out, code_relpath(key, codec, qp, '.json')))]
    total = len(keys) * len(codecs) * len(qps)
    bar = tqdm(total=total, initial=total - len(jobs), desc='prepare-bank', unit='enc', disable=not progress)
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        futures = [pool.submit(_encode_job, out, *job) for job in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            future.result()  # re-raise a worker's error with its message
            bar.update(1)
            if done % max(1, len(jobs) // 20) == 0:  # partial manifest: usable while the rest encodes
                write_json(osp.join(out, INDEX_NAME), _build_index(out, keys, codecs, qps, crop))
    bar.close()
    index = _build_index(out, keys, codecs, qps, crop)
    write_json(osp.join(out, INDEX_NAME), index)
    return index


def pack_lmdb(bank: str, lmdb_path: Optional[str] = None) -> str:
    """Pack a bank's PNGs into an lmdb (BasicSR's ``make_lmdb_from_imgs``) with the manifest next to it."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    index = load_bank_index(bank)
    lmdb_path = lmdb_path or bank.rstrip('/') + '.lmdb'
    paths = [item['gt'] for item in index['items'].values()]
    paths += [c['path'] for item in index['items'].values() for q in item['codes'].values() for c in q.values()]
    make_lmdb_from_imgs(bank, lmdb_path, paths, [osp.splitext(p)[0] for p in paths], compress_level=1)
    shutil.copyfile(osp.join(bank, INDEX_NAME), osp.join(lmdb_path, INDEX_NAME))
    return lmdb_path


def load_bank_index(root: str) -> Dict[str, Any]:
    """Read and check ``root/index.json`` (a bank folder or its lmdb)."""
    path = osp.join(root, INDEX_NAME)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: build the bank with `vrpsr prepare-bank DATA_DIR {root}`')
    with open(path) as handle:
        index = json.load(handle)
    if index.get('version') != 1 or 'items' not in index:
        raise ValueError(f'{path} is not a codec-bank manifest (version 1)')
    return index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('data_dir', help='folder of ground-truth images')
    parser.add_argument('out', help='bank folder (created; re-running resumes)')
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265', 'libvvenc'])
    parser.add_argument('--qps', nargs='+', type=int, default=[22, 27, 32, 37])
    parser.add_argument('--crop', type=int, default=None, help='encode non-overlapping CROP x CROP tiles')
    parser.add_argument('--workers', type=int, default=None, help='processes (default: all cores)')
    parser.add_argument('--lmdb', action='store_true', help='also pack the bank into OUT.lmdb')
    parser.add_argument('--no-progress', action='store_true')


def run(args: argparse.Namespace) -> int:
    index = prepare_bank(args.data_dir, args.out, args.codecs, args.qps, args.crop, args.workers,
                         not args.no_progress)
    done = sum(len(q) for item in index['items'].values() for q in item['codes'].values())
    print(f'{args.out}: {len(index["items"])} images x {len(args.codecs)} codecs x {len(args.qps)} QPs, '
          f'{done} encodes')
    if args.lmdb:
        print(f'lmdb: {pack_lmdb(args.out)}')
    return 0
