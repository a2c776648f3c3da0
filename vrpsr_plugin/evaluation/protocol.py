"""The rate-matched recompression protocol of §4.1 (Eq. 1, Eq. 2; Tables 1, S2, S4), per image, cached and resumable.

For every image X (resized and center-cropped to ``size``), X~ = degrade(X) at the models' scale s. For every codec
and source point (a QP, or a CRF for Table S4): the real codec codes X~ (Eq. 1), giving R_bar. Each method restores
X' = g(X~, c) and X' is recompressed with ``find_qp`` so that its rate matches R_bar (Eq. 2). At s = 1 (the paper's
setting) the target bpp of X' is R_bar; at s != 1 the *bits* are kept: target bpp = 8 * bytes(X~ coded) / pixels(X'),
and that same bpp is the model's condition c = (codec, target bpp). The achieved bpp of X^ is what is reported.

Cache layout under ``out/cache`` (every file written atomically, so a killed run resumes where it stopped):
``hr/<img>.png``, ``lr/<img>.png``, ``source/<codec>/<point>/<img>.json``, ``sr/<method>/[<codec>/<point>/]<img>.png``,
``items/<method>/<codec>/<point>/<img>.json`` (+ ``.npy`` Inception features), ``hr_feats/<img>.npy``.
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.utils import tensor2img
from tqdm import tqdm

from vrpsr_plugin import codecs as codec_api
from vrpsr_plugin.codecs import CodecCondition
from vrpsr_plugin.codecs.inputs import rgb_to_tensor
from vrpsr_plugin.evaluation import cache
from vrpsr_plugin.evaluation.colorfix import adain_color_fix
from vrpsr_plugin.evaluation.degrade import DegradationConfig, degrade, prepare_hr, seed_from_name
from vrpsr_plugin.evaluation.metric_suite import MetricSuite

IDENTITY = 'identity'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')


@dataclass(frozen=True)
class Point:
    """A source operating point: constant QP (Table 1) or CRF rate control (Table S4)."""
    mode: str
    value: int

    def __post_init__(self) -> None:
        if self.mode not in ('qp', 'crf'):
            raise ValueError(f'point mode must be qp or crf, got {self.mode!r}')

    @property
    def key(self) -> str:
        return f'{self.mode}{self.value}'


@dataclass
class EvalConfig:
    """Everything that defines a run (see ``vrpsr eval --help``)."""
    data: Path
    out: Path
    models: Dict[str, str]
    codecs: Sequence[str] = ('libx264', 'libx265', 'libvvenc')
    qps: Sequence[int] = (27, 32, 37, 42)
    crfs: Sequence[int] = ()
    size: int = 512
    scale: Optional[int] = None
    baseline: Optional[str] = None
    device: str = 'cpu'
    tile: int = 0
    color_fix: bool = False
    bd_method: str = 'pchip'
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    post: Dict[str, str] = field(default_factory=dict)  # method -> post-processing net h after the codec (§3.4)
    rate_model: Optional[str] = None  # a RateAwareCodecSimulator checkpoint: its R(X, q) gives find_qp's first QP

    def points(self) -> List[Point]:
        return [Point('qp', int(q)) for q in self.qps] + [Point('crf', int(c)) for c in self.crfs]

    def baseline_name(self) -> str:
        name = self.baseline or next(iter(self.models))
        if name not in self.models:
            raise ValueError(f'baseline {name!r} is not one of the models {list(self.models)}')
        return name


def list_images(folder: Path) -> List[Path]:
    """Image files of ``folder`` (sorted); their stems must be unique since they name the cache entries."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'data folder {folder} does not exist')
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        raise ValueError(f'image names in {folder} must have unique stems, got {stems}')
    return files


def module_device(model: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device('cpu')


def model_scale(model: Optional[torch.nn.Module]) -> Optional[int]:
    """Upscaling factor of a restoration network (None for the identity model): its ``scale``/``upscale``
    attribute, else measured on a 16x16 input."""
    if model is None:
        return None
    for attr in ('scale', 'upscale'):
        if isinstance(getattr(model, attr, None), int):
            return int(getattr(model, attr))
    device = module_device(model)
    x = torch.zeros(1, 3, 16, 16, device=device)
    with torch.no_grad():
        out = model(x, CodecCondition('libx264', 0.1).vector()[None].to(device)) if getattr(
            model, 'codec_aware', False) else model(x)
    if out.shape[-1] % 16:
        raise ValueError(f'cannot infer the scale of {type(model).__name__}: 16 px -> {out.shape[-1]} px')
    return out.shape[-1] // 16


def default_loader(path: str, device: str) -> torch.nn.Module:
    """``vrpsr_plugin.inference.load_model`` (imported lazily)."""
    from vrpsr_plugin import inference

    return inference.load_model(path, device)


def default_restore(model: torch.nn.Module, images: torch.Tensor, cond: Optional[torch.Tensor],
                    tile: int = 0) -> torch.Tensor:
    """``vrpsr_plugin.inference.restore`` (looked up at call time, so it can be counted or replaced)."""
    from vrpsr_plugin import inference

    return inference.restore(model, images, cond, tile=tile)


class Protocol:
    """One evaluation run: builds X, X~, the source rates, every method's recompressed output and its metrics.

    ``models`` maps a method name to a loaded network, or None for the identity reference (X' = bicubic X~);
    ``post_models`` maps a method to a post-processing net h(X^, c) applied to the decoded picture (§3.4, Eq. 9).
    Use :meth:`from_config` to load them from checkpoints / option files.
    """

    def __init__(self, cfg: EvalConfig, models: Dict[str, Optional[torch.nn.Module]], suite: MetricSuite,
                 restore: Callable = default_restore,
                 post_models: Optional[Dict[str, torch.nn.Module]] = None,
                 rate_model: Optional[torch.nn.Module] = None) -> None:
        if not models:
            raise ValueError('at least one model is needed')
        self.cfg, self.models, self.suite, self.restore = cfg, models, suite, restore
        self.rate_model = rate_model  # a DCTRateModel: find_qp's first guess (never its answer)
        self.post_models = dict(post_models or {})
        unknown = sorted(set(self.post_models) - set(models))
        if unknown:
            raise ValueError(f'post-processing given for {unknown}, which are not methods of this run '
                             f'({list(models)})')
        self.root = Path(cfg.out) / 'cache'
        scales = {name: model_scale(m) for name, m in models.items() if m is not None}
        if cfg.scale is not None:
            scales['--scale'] = cfg.scale
        if len(set(scales.values())) > 1:
            raise ValueError(f'all models of a run must share the scale, got {scales}')
        self.scale = next(iter(scales.values()), 1)
        if cfg.size % self.scale:
            raise ValueError(f'--size {cfg.size} must be divisible by the scale {self.scale}')
        for codec in cfg.codecs:
            codec_api.qp_range(codec)  # raises for an unknown codec
        suite.check_size(cfg.size)
        self.images = list_images(cfg.data)
        self._images: Dict[tuple, np.ndarray] = {}  # X and X~ read back from the cache, per image
        self._check_cache_identity()

    @classmethod
    def from_config(cls, cfg: EvalConfig, suite: MetricSuite, loader: Callable = default_loader) -> 'Protocol':
        models = {name: None if path == IDENTITY else loader(path, cfg.device) for name, path in cfg.models.items()}
        post = {name: loader(path, cfg.device) for name, path in cfg.post.items()}
        for model in [*models.values(), *post.values()]:
            if model is not None:
                model.eval()
        rate_model = None
        if cfg.rate_model is not None:
            simulator = loader(cfg.rate_model, 'cpu')
            if not hasattr(simulator, 'rate_model'):
                raise ValueError(f'--rate-model {cfg.rate_model} is a {type(simulator).__name__}, not a '
                                 'RateAwareCodecSimulator with a fitted rate model')
            rate_model = simulator.rate_model.eval()
        return cls(cfg, models, suite, post_models=post, rate_model=rate_model)

    # ---------------------------------------------------------------- cache identity
    def _check_cache_identity(self) -> None:
        """Refuse to mix a cache built with another size/scale/degradation or another checkpoint per method."""
        ident = {'size': self.cfg.size, 'scale': self.scale, 'degradation': asdict(self.cfg.degradation)}
        self._check(self.root / 'identity.json', ident)
        for name in self.models:
            ident = {'source': str(self.cfg.models.get(name, name))}
            if name in self.cfg.post:
                ident['post'] = str(self.cfg.post[name])
            self._check(self.root / 'sr' / name / 'model.json', ident)

    def _check(self, path: Path, expected: dict) -> None:
        found, expected = cache.read_json(path), json.loads(json.dumps(expected))
        if found is None:
            cache.write_json(path, expected)
        elif found != expected:
            raise ValueError(f'{path} was built with {found}, this run has {expected}: use another --out folder '
                             f'or a new method name')

    # ---------------------------------------------------------------- per-image stages
    def hr(self, path: Path) -> np.ndarray:
        """X: the resized, center-cropped clean image (cached)."""
        if ('hr', path) not in self._images:
            file = self.root / 'hr' / f'{path.stem}.png'
            if not file.is_file():
                cache.write_png(file, prepare_hr(cache.read_image(path), self.cfg.size))
            self._images['hr', path] = cache.read_image(file)
        return self._images['hr', path]

    def lr(self, path: Path) -> np.ndarray:
        """X~: the deterministic degradation of X, seeded by the file name (cached)."""
        if ('lr', path) not in self._images:
            file = self.root / 'lr' / f'{path.stem}.png'
            if not file.is_file():
                cache.write_png(file, degrade(self.hr(path), self.scale, seed_from_name(path.name),
                                              self.cfg.degradation))
            self._images['lr', path] = cache.read_image(file)
        return self._images['lr', path]

    def source(self, path: Path, codec: str, point: Point) -> dict:
        """Eq. 1: the real codec on X~ at the source QP/CRF; its bits are the rate R_bar to keep (cached)."""
        file = self.root / 'source' / codec / point.key / f'{path.stem}.json'
        found = cache.read_json(file)
        if found is None:
            result = codec_api.encode(self.lr(path), codec, **{point.mode: point.value})
            found = {'bpp': float(result.bpp), 'num_bytes': int(result.num_bytes), 'qp': result.qp, 'crf': result.crf}
            cache.write_json(file, found)
        return found

    def restored(self, name: str, path: Path, codec: str, point: Point, target_bpp: float) -> np.ndarray:
        """X' of one method (cached; a codec-unaware network's X' is shared by all codecs and points)."""
        model = self.models[name]
        aware = model is not None and getattr(model, 'codec_aware', False)
        folder = self.root / 'sr' / name / (f'{codec}/{point.key}' if aware else '')
        file = folder / f'{path.stem}.png'
        if file.is_file():
            return cache.read_image(file)
        x = rgb_to_tensor(self.lr(path))[None]
        if model is None:
            out = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode='bicubic',
                                                          align_corners=False)
        else:
            pixels = x.shape[-2] * x.shape[-1] * self.scale ** 2
            cond = CodecCondition.from_stream(codec, target_bpp, pixels).vector()[None] if aware else None
            device = module_device(model)
            with torch.no_grad():
                out = self.restore(model, x.to(device), cond.to(device) if cond is not None else None,
                                   tile=self.cfg.tile).cpu()
        image = tensor2img(out[0], rgb2bgr=False)
        cache.write_png(file, image)
        return image

    def item(self, name: str, path: Path, codec: str, point: Point) -> dict:
        """Eq. 2 for one method, image, codec and point: recompress X' at the matched rate, measure against X."""
        file = self.root / 'items' / name / codec / point.key / f'{path.stem}.json'
        found = cache.read_json(file)
        if found is not None:
            return found
        hr, src = self.hr(path), self.source(path, codec, point)
        target_bpp = 8.0 * src['num_bytes'] / (hr.shape[0] * hr.shape[1])
        restored = self.restored(name, path, codec, point, target_bpp)
        first_qp = self.first_qp(name, restored, codec, target_bpp, path, src)
        result = codec_api.find_qp(restored, codec, target_bpp, first_qp=first_qp)
        final = self.post_process(name, result.image, codec, target_bpp)
        row = {'image': path.stem, 'method': name, 'codec': codec, 'mode': point.mode, 'point': point.value,
               'source_bpp': src['bpp'], 'target_bpp': target_bpp, 'bpp': float(result.bpp),
               'qp': result.qp, 'clipped': not result.reachable,
               'num_encodes': int(result.num_encodes), 'metrics': self.suite.compute(final, hr)}
        if self.cfg.color_fix:
            fixed = adain_color_fix(final, self.lr(path))
            row['metrics_color_fix'] = self.suite.compute(fixed, hr)
        if self.suite.wants_fid():
            cache.write_npy(file.with_suffix('.npy'), self.suite.features(final))
            if self.cfg.color_fix:
                cache.write_npy(file.with_name(f'{path.stem}.cf.npy'), self.suite.features(fixed))
        cache.write_json(file, row)
        return row

    def first_qp(self, name: str, restored: np.ndarray, codec: str, target_bpp: float, path: Path,
                 source: dict) -> Optional[int]:
        """find_qp's first guess for X' of method ``name``: X~'s QP for the identity at scale 1 (X' is X~: exact),
        else the rate model's q* (about 2 encodes per call) when it was fitted for ``codec``, calibrated on X~'s
        real encode (``qp_hint``'s ``reference``), else X~'s QP (about 3); the guess never changes the QP found."""
        if self.rate_model is not None and not (self.models.get(name) is None and self.scale == 1):
            from vrpsr_plugin.archs.rate_model import qp_hint
            reference = (self.lr(path), source['qp'], source['bpp']) if source.get('qp') is not None else None
            hint = qp_hint(self.rate_model, restored, codec, target_bpp, reference=reference)
            if hint is not None:
                return hint
        return source.get('qp')

    def post_process(self, name: str, decoded: np.ndarray, codec: str, target_bpp: float) -> np.ndarray:
        """What the viewer gets: the decoded picture, or h(X^, c) for a method with post-processing (§3.4)."""
        net = self.post_models.get(name)
        if net is None:
            return decoded
        device = module_device(net)
        cond = CodecCondition.from_stream(codec, target_bpp, decoded.shape[0] * decoded.shape[1]).vector()[None]
        cond = cond.to(device)
        with torch.no_grad():
            out = self.restore(net, rgb_to_tensor(decoded)[None].to(device), cond, tile=self.cfg.tile).cpu()
        return tensor2img(out[0], rgb2bgr=False)

    def hr_features(self, path: Path) -> np.ndarray:
        """Inception features of X, the FID reference (cached)."""
        file = self.root / 'hr_feats' / f'{path.stem}.{self.suite.fid_mode}{self.suite.fid_patch}.npy'
        if not file.is_file():
            cache.write_npy(file, self.suite.features(self.hr(path)))
        return np.load(file)

    def item_features(self, name: str, path: Path, codec: str, point: Point, color_fix: bool = False) -> np.ndarray:
        folder = self.root / 'items' / name / codec / point.key
        return np.load(folder / (f'{path.stem}.cf.npy' if color_fix else f'{path.stem}.npy'))

    # ---------------------------------------------------------------- the whole run
    def run(self, progress: bool = True) -> List[dict]:
        """All items (images x codecs x points x methods), from the cache where present; returns the rows."""
        rows: List[dict] = []
        points = self.cfg.points()
        total = len(self.images) * len(self.cfg.codecs) * len(points)
        with tqdm(total=total, desc='vrpsr eval', unit='item', disable=not progress) as bar:
            for codec in self.cfg.codecs:
                for point in points:
                    for path in self.images:
                        bar.set_postfix_str(f'{codec} {point.key} {path.stem}', refresh=False)
                        rows.extend(self.item(name, path, codec, point) for name in self.models)
                        bar.update()
        if self.suite.wants_fid():
            for path in self.images:
                self.hr_features(path)
        return rows


def parse_models(specs: Sequence[str]) -> Dict[str, str]:
    """``name=path`` pairs (or ``identity``) -> ordered dict; the first is the baseline unless --baseline says."""
    models: Dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition('=')
        if spec == IDENTITY:
            name, path = IDENTITY, IDENTITY
        elif not sep or not name or not path:
            raise ValueError(f'--models entries are NAME=CHECKPOINT_OR_OPTION (or "identity"), got {spec!r}')
        if name in models:
            raise ValueError(f'model name {name!r} given twice')
        if path != IDENTITY and not Path(path).exists():
            raise FileNotFoundError(f'model {name!r}: {path} does not exist')
        models[name] = path
    return models

