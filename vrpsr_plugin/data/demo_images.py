"""The bundled default data: small crops of scikit-image's real photographs written as PNG files.

``vrpsr demo-data [--root DIR]`` writes ``DIR/datasets/demo/{train,val,test}`` (DIR: the current folder), the
dataroots of ``options/smoke/*.yml``; the tests and the main job use the same crops.
"""
import argparse
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from skimage import data as skdata

# (name, loader) of real colour photographs shipped inside scikit-image's wheel (no download).
PHOTOS: Tuple[Tuple[str, Callable[[], np.ndarray]], ...] = (
    ('astronaut', skdata.astronaut), ('coffee', skdata.coffee), ('chelsea', skdata.chelsea),
    ('rocket', skdata.rocket), ('cat', skdata.cat))


def demo_crops(size: int = 96, per_photo: int = 2) -> List[Tuple[str, np.ndarray]]:
    """``per_photo`` evenly spread ``size`` x ``size`` RGB uint8 crops of each photo, with names."""
    if size < 16 or per_photo < 1:
        raise ValueError(f'need size >= 16 and per_photo >= 1, got size={size}, per_photo={per_photo}')
    crops = []
    for name, load in PHOTOS:
        image = np.asarray(load())[..., :3]
        h, w = image.shape[:2]
        if min(h, w) < size:
            raise ValueError(f'{name} ({h}x{w}) is smaller than the crop size {size}')
        for i in range(per_photo):
            t = (i + 1) / (per_photo + 1)  # spread along the diagonal, away from the borders
            top, left = int(t * (h - size)), int(t * (w - size))
            crops.append((f'{name}_{i:02d}', np.ascontiguousarray(image[top:top + size, left:left + size])))
    return crops


def write_demo_images(folder: os.PathLike, size: int = 96, per_photo: int = 2,
                      names: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the crops to ``folder`` as ``<photo>_<i>.png`` (RGB on disk); return the paths.

    ``names`` restricts to those photos (e.g. a validation split).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, image in demo_crops(size, per_photo):
        if names is not None and key.rsplit('_', 1)[0] not in names:
            continue
        path = folder / f'{key}.png'
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f'cannot write {path}')
        paths.append(path)
    return paths


# split -> (crops per photo, photos or None for all) of ROOT/datasets/demo, as options/smoke/*.yml read them.
DEMO_SPLITS: Dict[str, Tuple[int, Optional[Tuple[str, ...]]]] = {
    'train': (2, None), 'val': (1, ('astronaut', 'coffee')), 'test': (1, ('chelsea', 'cat'))}


def write_demo_dataset(root: os.PathLike = '.', size: int = 96) -> Dict[str, List[Path]]:
    """Write every split of :data:`DEMO_SPLITS` to ``root/datasets/demo/<split>``; return the paths per split."""
    return {split: write_demo_images(Path(root) / 'datasets' / 'demo' / split, size, per_photo, names)
            for split, (per_photo, names) in DEMO_SPLITS.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--root', type=Path, default=Path('.'),
                        help='folder to write datasets/demo/{train,val,test} under (default: the current one)')
    parser.add_argument('--size', type=int, default=96, help='crop size in pixels')


def run(args: argparse.Namespace) -> int:
    for split, paths in write_demo_dataset(args.root, args.size).items():
        print(f'wrote {len(paths)} images to {args.root / "datasets" / "demo" / split}')
    return 0


if __name__ == '__main__':
    _parser = argparse.ArgumentParser(prog='vrpsr demo-data', description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
