"""Pretrained backbones of the perceptual metrics of §4.1 (LPIPS-alex, DISTS, FID's Inception), real weights only.

Each loader runs the metric library's own pretrained loading (``lpips.LPIPS``, ``piq.DISTS``,
``piq.feature_extractors.InceptionV3``), which fetch their weights through torch.hub's checkpoint cache
(``$TORCH_HOME/hub/checkpoints/<official file name>``). Offline, either put the official files there or pass explicit
paths: they are linked under their official names into a private hub directory for the duration of the load.
Nothing is downloaded: where a file is neither given nor in the cache, :class:`MetricUnavailable` says so at once,
naming it (and there is never a random-backbone fallback).
"""
import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from basicsr.metrics.metric_util import reorder_image

# Official checkpoint file names, as the libraries' download URLs name them.
LPIPS_FILES = ('alexnet-owt-7be5be79.pth',)
DISTS_FILES = ('dists_weights.pt', 'vgg16-397923af.pth')
FID_FILES = ('pt_inception-2015-12-05-6726825d.pth',)


class MetricUnavailable(RuntimeError):
    """A metric whose pretrained weights could not be obtained; the message is the reason reported."""


@contextlib.contextmanager
def hub_with(files: Dict[str, Path]) -> Iterator[None]:
    """Make torch.hub find ``files`` (official name -> local path) in its checkpoint cache while the block runs.

    The default cache's existing checkpoints stay visible too. Nothing happens when ``files`` is empty.
    """
    if not files:
        yield
        return
    for path in files.values():
        if not Path(path).is_file():
            raise MetricUnavailable(f'weight file {path} does not exist')
    old_dir = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix='vrpsr_hub_') as tmp:
        checkpoints = Path(tmp) / 'checkpoints'
        checkpoints.mkdir()
        for existing in Path(old_dir, 'checkpoints').glob('*'):
            (checkpoints / existing.name).symlink_to(existing.resolve())
        for name, path in files.items():
            link = checkpoints / name
            if link.is_symlink():
                link.unlink()
            link.symlink_to(Path(path).resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(old_dir)


@contextlib.contextmanager
def quiet_pretrained_argument() -> Iterator[None]:
    """Silence torchvision's deprecation warnings about the ``pretrained=`` argument that lpips and piq still pass
    (nothing a user of this package can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=UserWarning, module=r'torchvision\.models\._utils')
        yield


def _load(what: str, official: Sequence[str], paths: Sequence[Optional[str]], build):
    """Run ``build()`` with ``paths`` standing in for the ``official`` files; MetricUnavailable, without trying a
    download, when a file is neither given nor in the hub cache; any failure of the build is wrapped likewise."""
    given = {name: Path(p) for name, p in zip(official, paths) if p}
    cache = Path(torch.hub.get_dir(), 'checkpoints')
    missing = [name for name in official if name not in given and not (cache / name).is_file()]
    if missing:
        raise MetricUnavailable(f'{what}: pretrained weights unavailable: {", ".join(missing)} not found in {cache} '
                                f'(no download is attempted); pass the file(s) explicitly or place them there')
    try:
        with hub_with(given), quiet_pretrained_argument():
            return build()
    except MetricUnavailable:
        raise
    except Exception as error:  # the libraries raise URLError/OSError/RuntimeError/KeyError on missing or bad files
        where = Path(torch.hub.get_dir(), 'checkpoints')
        raise MetricUnavailable(
            f'{what}: pretrained weights unavailable ({type(error).__name__}: {str(error)[:200]}); '
            f'pass the file(s) {", ".join(official)} explicitly or place them in {where}') from error


def load_lpips(weights: Optional[str] = None, device: str = 'cpu') -> torch.nn.Module:
    """LPIPS with the AlexNet backbone (v0.1), as in the paper [42]. ``weights``: torchvision's AlexNet file."""
    import lpips

    return _load('LPIPS(alex)', LPIPS_FILES, [weights],
                 lambda: lpips.LPIPS(net='alex', verbose=False)).to(device).eval()


def load_dists(weights: Sequence[Optional[str]] = (), device: str = 'cpu') -> torch.nn.Module:
    """piq's DISTS [9]. ``weights``: (dists_weights.pt, torchvision's vgg16 file), either may be None."""
    import piq

    return _load('DISTS', DISTS_FILES, list(weights), lambda: piq.DISTS(reduction='none')).to(device).eval()


def load_inception(weights: Optional[str] = None, device: str = 'cpu') -> torch.nn.Module:
    """The FID Inception-v3 (pytorch-fid's port of the TF weights) returning 2048-d pool features, via piq."""
    from piq.feature_extractors import InceptionV3

    return _load('FID Inception', FID_FILES, [weights],
                 lambda: InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)).to(device).eval()


def basicsr_pair(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC',
                 bgr: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """BasicSR's metric inputs (HxWxC [0,255] arrays, BGR as ``tensor2img`` writes them) -> 1x3xHxW RGB in [0,1]."""
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {img.shape} vs {img2.shape}')
    pair = []
    for array in (img, img2):
        array = reorder_image(array, input_order=input_order).astype(np.float64)
        if crop_border:
            array = array[crop_border:-crop_border, crop_border:-crop_border, ...]
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f'expected a 3-channel image, got shape {array.shape}')
        if bgr:
            array = array[..., ::-1]
        pair.append(torch.from_numpy(np.ascontiguousarray(array / 255.0)).permute(2, 0, 1)[None].float())
    return pair[0], pair[1]
