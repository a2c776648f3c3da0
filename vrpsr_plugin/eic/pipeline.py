"""ASSR-EIC encode/decode (seed 002): down-scale by s, code with a real codec at QP q, restore with one decoder.

Rate control (target bpp of the whole file): for each s of a small grid, ``find_qp`` (Eq. 2 of the VRPSR seed)
finds the QP whose bitstream fits the budget (stepping the QP up until it is at or below it), the decoder restores
every candidate, and the pair restored best (PSNR against the original) is kept. The encoder holds the original
and the decoder is deterministic, so the measured quality is exactly what the receiver gets; a learned quality
predictor would save the decodes but needs its own training data and errs where the decoder is unsure.
"""
import json
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vrpsr_plugin.eic.container import EICFile
from vrpsr_plugin.eic.rescale import downscale, lr_size

DEFAULT_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
DECODER_FORMAT = 'vrpsr-assr-eic-decoder/1'


def default_decoder_path() -> Path:
    """The decoder shipped in the package (trained by options/assr_eic_cpu.yml, see docs/eic.md)."""
    return Path(str(resources.files('vrpsr_plugin.eic') / 'weights' / 'assr_eic_x265.safetensors'))


@dataclass
class Decoder:
    """A trained ASSR-EIC decoder and what it was trained for (``codecs``, ``scale_range``, ``qp_range``)."""
    net: Any
    codecs: Tuple[str, ...]
    scale_range: Tuple[float, float]
    qp_range: Tuple[int, int]
    info: Dict[str, str] = field(default_factory=dict)

    def check(self, codec: str, qp: int, scale: float) -> None:
        """ValueError unless (codec, QP, s) lies in what this decoder was trained on."""
        lo, hi = self.scale_range
        if codec not in self.codecs or not self.qp_range[0] <= qp <= self.qp_range[1] \
                or not lo - 1e-6 <= scale <= hi + 1e-6:
            raise ValueError(f'this decoder was trained for codecs {list(self.codecs)}, s in [{lo:g}, {hi:g}], QP in '
                             f'[{self.qp_range[0]}, {self.qp_range[1]}]; got codec {codec}, s={scale:.3g}, QP {qp}')

    def restore(self, coded: np.ndarray, codec: str, qp: int, size: Tuple[int, int], dial: float = 1.0) -> np.ndarray:
        """Decoded down-scaled picture (HxWx3 uint8) -> the restored (height, width) picture."""
        import torch
        from basicsr.utils import tensor2img

        from vrpsr_plugin.archs.assr_eic_arch import assr_condition
        from vrpsr_plugin.codecs.inputs import rgb_to_tensor
        height, width = size
        scale = (height * width / (coded.shape[0] * coded.shape[1])) ** 0.5
        self.check(codec, qp, scale)
        x = rgb_to_tensor(coded)[None]
        with torch.no_grad():
            out = self.net(x, assr_condition(codec, qp, scale, self.net.codecs), out_size=(height, width), dial=dial)
        return tensor2img(out.clamp_(0, 1), rgb2bgr=False)


def load_decoder(path: Optional[Union[str, Path]] = None) -> Decoder:
    """Load a decoder written by :func:`export_decoder` (default: the shipped one)."""
    from basicsr.archs import build_network
    from safetensors import safe_open

    from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint
    path = Path(path) if path is not None else default_decoder_path()
    if not path.is_file():
        raise FileNotFoundError(f'ASSR-EIC decoder not found: {path}')
    try:
        with safe_open(str(path), 'pt') as handle:
            meta = handle.metadata() or {}
    except Exception as err:
        raise ValueError(f'cannot read {path} as safetensors: {err}') from err
    if meta.get('format') != DECODER_FORMAT:
        raise ValueError(f'{path} is not an ASSR-EIC decoder ({DECODER_FORMAT}); its format is '
                           f'{meta.get("format")!r}')
    net = build_network(json.loads(meta['arch']))
    load_state_dict_strict(net, read_checkpoint(str(path)), source=str(path))
    return Decoder(net.eval(), tuple(json.loads(meta['codecs'])), tuple(json.loads(meta['scale_range'])),
                   tuple(json.loads(meta['qp_range'])), {k: v for k, v in meta.items() if k == 'training'})


def export_decoder(checkpoint: str, arch: Dict[str, Any], out: str, codecs: Sequence[str],
                   scale_range: Tuple[float, float], qp_range: Tuple[int, int], training: str) -> None:
    """Write a trained ``ASSREICNet`` checkpoint (BasicSR ``params_ema``/``params``) as a safetensors decoder
    carrying what it was trained for; :func:`load_decoder` serves only that."""
    from basicsr.archs import build_network
    from safetensors.torch import save

    from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint
    from vrpsr_plugin.atomic_io import write_bytes
    net = build_network(dict(arch))
    state = read_checkpoint(checkpoint)
    load_state_dict_strict(net, state, source=checkpoint)
    unknown = sorted(set(codecs) - set(net.codecs))
    if unknown:
        raise ValueError(f'codecs {unknown} are not in the net\'s condition one-hot {list(net.codecs)}')
    meta = {'format': DECODER_FORMAT, 'arch': json.dumps(dict(arch)), 'codecs': json.dumps(list(codecs)),
            'scale_range': json.dumps([float(v) for v in scale_range]),
            'qp_range': json.dumps([int(v) for v in qp_range]), 'training': training}
    write_bytes(out, save({k: v.contiguous() for k, v in net.state_dict().items()}, metadata=meta))


@dataclass
class Candidate:
    """One (s, QP) tried by the rate control, with its file bpp and the restored PSNR."""
    scale: float
    qp: int
    bpp: float
    psnr: float


@dataclass
class Encoded:
    """The file bytes, the chosen candidate, every candidate tried, and seconds spent per stage."""
    data: bytes
    chosen: Candidate
    candidates: List[Candidate]
    seconds: Dict[str, float]
    restored: np.ndarray


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from basicsr.metrics import calculate_psnr
    return float(calculate_psnr(a, b, crop_border=0))


def file_size(codec: str, width: int, height: int, coded: Tuple[int, int], bitstream: bytes) -> int:
    """Bytes of the .vrp file holding ``bitstream``, a picture coded at ``coded`` (h, w) of a width x height one."""
    return len(EICFile(codec, 0, width, height, coded[1], coded[0], bitstream).to_bytes())


def fit_budget(lr: np.ndarray, codec: str, budget: int, qp_max: int, encode_kwargs: Dict[str, Any],
               size_of: Callable[[bytes], int] = len):
    """``find_qp`` for a file of ``budget`` bytes, then the QP stepped up until it fits (None: it never does).
    ``size_of(bitstream)`` is the size of the file holding a bitstream (default: the bitstream alone)."""
    from vrpsr_plugin.codecs import encode, find_qp
    extra = 0
    for attempt in range(2):  # the second pass corrects for the container's overhead measured in the first
        target = 8.0 * (budget - extra) / (lr.shape[0] * lr.shape[1])
        if target <= 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)  # an unreachable target is handled below
            result = find_qp(lr, codec, target, first_qp=result.qp if attempt else None, **encode_kwargs)
        size = size_of(result.bitstream)
        if size - result.num_bytes == extra:
            break
        extra = size - result.num_bytes
    while size > budget and result.qp < qp_max:
        result = encode(lr, codec, qp=result.qp + 1, **encode_kwargs)
        size = size_of(result.bitstream)
    return result if size <= budget else None


def encode_image(rgb: np.ndarray, codec: str, decoder: Decoder, bpp: Optional[float] = None,
                 qp: Optional[int] = None, scale: Optional[float] = None, scales: Sequence[float] = DEFAULT_SCALES,
                 dial: float = 1.0, encode_kwargs: Optional[Dict[str, Any]] = None) -> Encoded:
    """Encode an HxWx3 uint8 picture at a target ``bpp`` (rate control over ``scales``, candidates restored at
    ``dial``) or at a given (``qp``, ``scale``)."""
    from vrpsr_plugin.codecs import encode
    from vrpsr_plugin.codecs.encoders import get_spec
    from vrpsr_plugin.codecs.inputs import to_rgb_uint8
    rgb = to_rgb_uint8(rgb)
    height, width = rgb.shape[:2]
    if height > 65535 or width > 65535:
        raise ValueError(f'pictures up to 65535 pixels a side are supported, got {width}x{height}')
    if (bpp is None) == (qp is None):
        raise ValueError('give either bpp= (rate control) or qp= with scale=')
    kwargs = dict(encode_kwargs or {})
    spec = get_spec(codec)
    seconds = {'downscale': 0.0, 'codec': 0.0, 'decoder': 0.0}
    if bpp is not None:
        if not bpp > 0:
            raise ValueError(f'bpp must be > 0, got {bpp!r}')
        budget = int(bpp * height * width / 8)
        grid = [s for s in scales if decoder.scale_range[0] <= s <= decoder.scale_range[1]]
    else:
        if scale is None:
            raise ValueError('qp= needs scale=')
        decoder.check(codec, int(qp), float(scale))
        grid = [float(scale)]
    if codec not in decoder.codecs:
        decoder.check(codec, decoder.qp_range[0], decoder.scale_range[0])
    tried, results = [], []
    for s in grid:
        size = lr_size(height, width, s, spec.min_size)
        if any(size == (c_h, c_w) for (c_h, c_w), _ in results):
            continue  # a small picture reaches the minimum coded size at several s
        start = time.perf_counter()
        lr = downscale(rgb, size)
        seconds['downscale'] += time.perf_counter() - start
        start = time.perf_counter()
        size_of = partial(file_size, codec, width, height, size)
        result = encode(lr, codec, qp=int(qp), **kwargs) if qp is not None else \
            fit_budget(lr, codec, budget, decoder.qp_range[1], kwargs, size_of)
        seconds['codec'] += time.perf_counter() - start
        s_true = (height * width / (size[0] * size[1])) ** 0.5
        if result is None or result.qp < decoder.qp_range[0]:
            continue
        start = time.perf_counter()
        restored = decoder.restore(result.image, codec, result.qp, (height, width), dial)
        seconds['decoder'] += time.perf_counter() - start
        candidate = Candidate(s_true, int(result.qp), 8.0 * size_of(result.bitstream) / (height * width),
                              _psnr(restored, rgb))
        tried.append(candidate)
        results.append((size, (result, restored, candidate)))
    if not results:
        raise ValueError(f'no (s, QP) with s in {list(grid)} fits {bpp} bpp with {codec} within the decoder\'s QP '
                         f'range [{decoder.qp_range[0]}, {decoder.qp_range[1]}]')
    size, (result, restored, chosen) = max(results, key=lambda item: item[1][2].psnr)
    data = EICFile(codec, int(result.qp), width, height, size[1], size[0], result.bitstream).to_bytes()
    return Encoded(data, chosen, tried, seconds, restored)


def decode_bytes(data: bytes, decoder: Decoder, dial: float = 1.0, name: str = 'file') -> np.ndarray:
    """Parse a ``.vrp`` file's bytes, decode its bitstream and restore the original size."""
    from vrpsr_plugin.codecs import decode
    eic = EICFile.from_bytes(data, name)
    decoder.check(eic.codec, eic.qp, eic.scale)
    coded = decode(eic.bitstream, eic.codec, eic.coded_height, eic.coded_width)
    return decoder.restore(coded, eic.codec, eic.qp, (eic.height, eic.width), dial=dial)
