"""Codec bank: every image (or crop) of a dataset pre-encoded with real codecs at a grid of QPs (§3.3.1 data).

Encoding with vvenc takes seconds per image, far too slow inside a data loader, so ``vrpsr prepare-bank`` runs all
encodes once, sharded, on a local process pool or a Ray cluster (:mod:`vrpsr_plugin.engine`), and
:class:`CodecBank` reads the result. Layout of a bank folder ``OUT`` (docs/cluster.md)::

    OUT/index.json                       manifest: version 2, crop, shard_size, sources (count + sha256), codecs, qps
    OUT/gt/<shard>.tar                   ground-truth tiles of source images [shard*S, (shard+1)*S) as <key>.png
    OUT/gt/<shard>.json                  {key: {"offset", "size"}}: where each member's bytes lie in the tar
    OUT/<codec>/qp<q>/<shard>.tar        the real codec's decoded output of the same tiles at QP q
    OUT/<codec>/qp<q>/<shard>.json       {key: {"offset", "size", "bpp", "num_bytes"}}

A shard is one task (S images x one codec x one QP). Its tar (uncompressed, webdataset-style member names, fixed
metadata, so the same bank is the same bytes on every engine) is written atomically and its ``.json`` index after
it: a shard whose index exists is complete and never redone, so an interrupted run resumes, and no partial shard is
ever read. A lookup reads one small shard index (cached) and one byte range: its cost does not grow with the bank.
"""
import argparse
import hashlib
import io
import json
import os
import os.path as osp
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vrpsr_plugin.atomic_io import decode_rgb, png_bytes, read_rgb, remove_temp_files, write_bytes, write_json

INDEX_NAME = 'index.json'
VERSION = 2
_IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
_CACHED_INDEXES = 256  # shard indexes a reader keeps in memory


def shard_relpath(sid: int, codec: Optional[str] = None, qp: Optional[int] = None, ext: str = '.tar') -> str:
    """Relative path of a ground-truth shard (``codec=None``) or of a coded shard, its tar or its ``.json``."""
    folder = 'gt' if codec is None else f'{codec}/qp{int(qp)}'
    return f'{folder}/{sid:06d}{ext}'


def _tiles(image: np.ndarray, crop: Optional[int]) -> List[Tuple[int, np.ndarray]]:
    """Non-overlapping ``crop`` x ``crop`` tiles (all full tiles), or the whole image cut to even size."""
    h, w = image.shape[:2]
    if crop is None:
        return [(0, image[:h - h % 2, :w - w % 2])]
    return [(i, image[t:t + crop, l:l + crop]) for i, (t, l) in enumerate(
        (t, l) for t in range(0, h - crop + 1, crop) for l in range(0, w - crop + 1, crop))]


def _write_shard(root: str, relpath: str, members: Dict[str, bytes], records: Dict[str, dict]) -> None:
    """Write ``<key>.png`` members (sorted by key) as one tar, atomically, then its index (the completion mark)."""
    buf, index = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for key in sorted(members):
            info = tarfile.TarInfo(f'{key}.png')
            info.size, info.mode, info.mtime = len(members[key]), 0o644, 0
            tar.addfile(info, io.BytesIO(members[key]))
            data_start = tar.offset - -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # after the header
            index[key] = {'offset': data_start, 'size': info.size, **records.get(key, {})}
    write_bytes(osp.join(root, relpath), buf.getvalue())
    write_json(osp.join(root, osp.splitext(relpath)[0] + '.json'), index)


def _gt_shard(root: str, sid: int, data_dir: str, files: Sequence[str], crop: Optional[int]) -> int:
    """Task: tile ``files`` into ground-truth shard ``sid`` (skipped when complete); returns its number of keys."""
    index_path = osp.join(root, shard_relpath(sid, ext='.json'))
    if not osp.isfile(index_path):
        members = {}
        for name in files:
            stem = osp.splitext(name)[0]
            for i, tile in _tiles(read_rgb(osp.join(data_dir, name)), crop):
                members[stem if crop is None else f'{stem}_s{i:03d}'] = png_bytes(np.ascontiguousarray(tile))
        _write_shard(root, shard_relpath(sid), members, {})
    with open(index_path) as handle:
        return len(json.load(handle))


def _encode_shard(root: str, sid: int, codec: str, qp: int, profile: Optional[str] = None) -> int:
    """Task: every ground-truth tile of shard ``sid`` through the real codec at ``qp`` (skipped when complete)."""
    from vrpsr_plugin.codecs import encode
    if osp.isfile(osp.join(root, shard_relpath(sid, codec, qp, '.json'))):
        return 0
    with open(osp.join(root, shard_relpath(sid, ext='.json'))) as handle:
        entries = json.load(handle)
    members, records = {}, {}
    with open(osp.join(root, shard_relpath(sid)), 'rb') as tar:
        for key, entry in entries.items():
            tar.seek(entry['offset'])
            result = encode(decode_rgb(tar.read(entry['size']), f'{key} of gt shard {sid}'), codec, qp=qp,
                            profile=profile)
            members[key] = png_bytes(result.image)
            records[key] = {'bpp': float(result.bpp), 'num_bytes': int(result.num_bytes)}
    _write_shard(root, shard_relpath(sid, codec, qp), members, records)
    return len(members)


def _check_plan(out: str, plan: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest for this run: a new one, or the existing one (same sources/crop/shards) with the grid grown."""
    path = osp.join(out, INDEX_NAME)
    if not osp.isfile(path):
        return plan
    old = load_bank_index(out)
    fixed = ('crop', 'shard_size', 'num_sources', 'sources_sha256', 'profile')
    if any(old.get(k) != plan.get(k) for k in fixed):
        raise ValueError(f'{out} is a bank of other images or another crop/shard size/encoder profile '
                         f'({ {k: old.get(k) for k in fixed} }); use another output folder')
    return {**plan, 'codecs': list(dict.fromkeys(old['codecs'] + plan['codecs'])),
            'qps': sorted(set(old['qps']) | set(plan['qps']))}


def prepare_bank(data_dir: str, out: str, codecs: Sequence[str], qps: Sequence[int], crop: Optional[int] = None,
                 workers: Optional[int] = None, progress: bool = True, engine: str = 'local',
                 address: Optional[str] = None, shard_size: int = 16, profile: Optional[str] = None) -> 'CodecBank':
    """Encode every image (or every ``crop`` tile) of ``data_dir`` with each codec at each QP into the bank ``out``
    (with the encoder ``profile`` when given, e.g. 'authors'; it is recorded in the manifest).

    Shards run on ``engine`` ('local' or 'ray', see :class:`vrpsr_plugin.engine.Engine`); complete shards are
    skipped, so re-running resumes an interrupted bank, and a re-run with more codecs/QPs extends it.
    """
    from vrpsr_plugin.codecs import available_codecs
    from vrpsr_plugin.engine import Engine
    if not osp.isdir(data_dir):
        raise FileNotFoundError(f'data folder {data_dir!r} does not exist')
    missing = sorted(set(codecs) - set(available_codecs()))
    if missing:
        raise ValueError(f'codecs {missing} are not available here (available: {sorted(available_codecs())})')
    if not qps or any(int(q) != q or q < 0 for q in qps):
        raise ValueError(f'qps must be non-negative integers, got {qps}')
    if crop is not None and (crop < 16 or crop % 2):
        raise ValueError(f'crop must be an even size >= 16, got {crop}')
    if shard_size < 1:
        raise ValueError(f'shard_size must be >= 1, got {shard_size}')
    files = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(_IMG_EXTS))
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(_IMG_EXTS)}) in {data_dir!r}')
    stems = [osp.splitext(f)[0] for f in files]
    if len(set(stems)) != len(stems):
        raise ValueError(f'image names in {data_dir!r} must have unique stems (they are the bank keys)')
    plan = {'version': VERSION, 'crop': crop, 'shard_size': shard_size, 'num_sources': len(files),
            'sources_sha256': hashlib.sha256('\n'.join(files).encode()).hexdigest(),
            'codecs': list(dict.fromkeys(codecs)), 'qps': sorted({int(q) for q in qps})}
    if profile is not None:
        plan['profile'] = profile
    manifest = _check_plan(out, plan)
    os.makedirs(out, exist_ok=True)
    remove_temp_files(out)  # left by a run killed mid-write; this run rewrites those shards
    write_json(osp.join(out, INDEX_NAME), manifest)
    chunks = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
    with Engine(engine, workers, address) as pool:
        sizes = pool.map(_gt_shard, [(out, sid, data_dir, chunk, crop) for sid, chunk in enumerate(chunks)],
                         'prepare-bank gt', 'img', [len(c) for c in chunks], progress)
        if not sum(sizes):
            raise ValueError(f'no image in {data_dir!r} is at least {crop}x{crop}')
        jobs = [(out, sid, codec, int(qp), profile) for codec in plan['codecs'] for qp in plan['qps']
                for sid in range(len(chunks))
                if not osp.isfile(osp.join(out, shard_relpath(sid, codec, qp, '.json')))]
        pool.map(_encode_shard, jobs, 'prepare-bank', 'enc', [sizes[job[1]] for job in jobs], progress)
    remove_temp_files(out)  # a worker killed mid-write, its task then retried
    return CodecBank(out)


def load_bank_index(root: str) -> Dict[str, Any]:
    """Read and check the manifest ``root/index.json`` of a bank."""
    path = osp.join(root, INDEX_NAME)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: build the bank with `vrpsr prepare-bank DATA_DIR {root}`')
    with open(path) as handle:
        index = json.load(handle)
    if index.get('version') != VERSION:
        raise ValueError(f'{path} is not a codec-bank manifest of version {VERSION} (found version '
                         f'{index.get("version")}): rebuild it with `vrpsr prepare-bank`')
    return index


class CodecBank:
    """Read a bank: ``keys`` (tiles, in shard order), ``codecs``/``qps`` (the grid asked for), :meth:`gt`,
    :meth:`coded` and :meth:`missing`. Picklable, so a DataLoader's workers each read it directly."""

    def __init__(self, root: str) -> None:
        self.root = root
        manifest = load_bank_index(root)
        self.codecs: List[str] = list(manifest['codecs'])
        self.qps: List[int] = [int(q) for q in manifest['qps']]
        self.crop: Optional[int] = manifest['crop']
        self.num_shards = -(-manifest['num_sources'] // manifest['shard_size'])
        self._indexes: Dict[str, Dict[str, dict]] = {}
        self._shard_of: Dict[str, int] = {}
        for sid in range(self.num_shards):
            if not osp.isfile(osp.join(root, shard_relpath(sid, ext='.json'))):
                raise ValueError(f'bank {root!r} is incomplete (ground-truth shard {sid} missing): finish it '
                                 f'with `vrpsr prepare-bank`')
            self._shard_of.update((key, sid) for key in self._index(shard_relpath(sid, ext='.json')))
        self.keys: List[str] = list(self._shard_of)

    def _index(self, relpath: str) -> Dict[str, dict]:
        if relpath not in self._indexes:
            if len(self._indexes) >= _CACHED_INDEXES:
                self._indexes.pop(next(iter(self._indexes)))
            with open(osp.join(self.root, relpath)) as handle:
                self._indexes[relpath] = json.load(handle)
        return self._indexes[relpath]

    def _read(self, key: str, codec: Optional[str], qp: Optional[int]) -> Tuple[np.ndarray, dict]:
        if key not in self._shard_of:
            raise KeyError(f'{key!r} is not in bank {self.root!r}')
        sid = self._shard_of[key]
        rel = shard_relpath(sid, codec, qp)
        if not osp.isfile(osp.join(self.root, osp.splitext(rel)[0] + '.json')):
            raise KeyError(f'bank {self.root!r} has no {codec} QP {qp} for {key!r} (shard {rel} not built)')
        entry = self._index(osp.splitext(rel)[0] + '.json')[key]
        with open(osp.join(self.root, rel), 'rb') as handle:
            handle.seek(entry['offset'])
            payload = handle.read(entry['size'])
        return decode_rgb(payload, f'{key} in {rel}'), entry

    def gt(self, key: str) -> np.ndarray:
        """The ground-truth tile X (HxWx3 RGB uint8)."""
        return self._read(key, None, None)[0]

    def coded(self, key: str, codec: str, qp: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        """The real codec's decoded output of ``key`` at ``qp`` and its record ``{'bpp', 'num_bytes', ...}``."""
        image, entry = self._read(key, codec, int(qp))
        return image, {'bpp': entry['bpp'], 'num_bytes': entry['num_bytes'], 'codec': codec, 'qp': int(qp)}

    def missing(self, codecs: Sequence[str], qps: Sequence[int]) -> List[str]:
        """``'<codec> qp<q>'`` for every pair of the grid with a shard not yet built (empty: all readable)."""
        return [f'{codec} qp{int(qp)}' for codec in codecs for qp in qps
                if any(not osp.isfile(osp.join(self.root, shard_relpath(sid, codec, qp, '.json')))
                       for sid in range(self.num_shards))]

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, '_indexes': {}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vrpsr_plugin.engine import add_engine_arguments
    parser.add_argument('data_dir', help='folder of ground-truth images')
    parser.add_argument('out', help='bank folder (created; re-running resumes or extends it)')
    parser.add_argument('--codecs', nargs='+', default=['libx264', 'libx265', 'libvvenc'])
    parser.add_argument('--qps', nargs='+', type=int, default=[22, 27, 32, 37])
    parser.add_argument('--crop', type=int, default=None, help='encode non-overlapping CROP x CROP tiles')
    parser.add_argument('--shard-size', type=int, default=16, help='source images per shard (one task)')
    parser.add_argument('--profile', default=None, help="encoder profile (e.g. 'authors', docs/codecs.md)")
    add_engine_arguments(parser, default_workers='all cores')
    parser.add_argument('--no-progress', action='store_true')


def run(args: argparse.Namespace) -> int:
    bank = prepare_bank(args.data_dir, args.out, args.codecs, args.qps, args.crop, args.workers,
                        not args.no_progress, args.engine, args.address, args.shard_size, args.profile)
    done = len(bank.codecs) * len(bank.qps) - len(bank.missing(bank.codecs, bank.qps))
    print(f'{args.out}: {len(bank.keys)} images x {len(args.codecs)} codecs x {len(args.qps)} QPs, '
          f'{done * len(bank.keys)} encodes')
    return 0
