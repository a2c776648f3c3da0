"""``encode``: one picture through a real codec and back, at a constant QP or a CRF (§3.1, Eq. 1/2).

The bitrate is bpp = 8 * num_bytes / (H * W): every byte of the single-picture bitstream (parameter sets and
slice data; the encoders' informational SEI text is stripped, see encoders.strip_sei) over the input's pixels.
Sizes are edge-replicated up to even (the yuv420 grid) before encoding and cropped back after decoding.
"""
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np

from vrpsr_plugin.codecs import ffmpeg_route, pyav_route
from vrpsr_plugin.codecs.encoders import CodecSpec, get_spec, strip_sei
from vrpsr_plugin.codecs.errors import CodecError
from vrpsr_plugin.codecs.inputs import ImageLike, rgb_to_tensor, to_rgb_uint8
from vrpsr_plugin.codecs.yuv import bytes_to_planes, planes_to_bytes, rgb_to_yuv420, yuv420_to_rgb

if TYPE_CHECKING:
    import torch

ROUTES = ('auto', 'pyav', 'ffmpeg')


@dataclass(eq=False)
class CodecResult:
    """Decoded picture and its rate. ``qp`` is the constant QP (None in CRF mode); ``num_encodes`` counts the
    encodes spent (``find_qp``); ``reachable`` is False when ``find_qp`` clipped an unreachable target."""
    image: np.ndarray
    num_bytes: int
    bpp: float
    qp: Optional[int]
    crf: Optional[float]
    codec: str
    route: str
    num_encodes: int = 1
    target_bpp: Optional[float] = None
    reachable: bool = True
    bitstream: bytes = field(default=b'', repr=False)

    def tensor(self) -> 'torch.Tensor':
        """The decoded image as a CxHxW float32 tensor in [0, 1]."""
        return rgb_to_tensor(self.image)


def check_mode(spec: CodecSpec, qp: Optional[int], crf: Optional[float]) -> None:
    if (qp is None) == (crf is None):
        raise ValueError(f'give exactly one of qp= and crf= (got qp={qp!r}, crf={crf!r})')
    if qp is not None:
        if isinstance(qp, bool) or not isinstance(qp, (int, np.integer)):
            raise ValueError(f'qp must be an integer, got {qp!r}')
        lo, hi = spec.qp_range
        if not lo <= qp <= hi:
            raise ValueError(f'qp={qp} is outside {spec.name}\'s range [{lo}, {hi}]')
    else:
        if spec.crf_range is None:
            raise ValueError(f'{spec.name} has no CRF mode here; use qp= (range {spec.qp_range})')
        if isinstance(crf, bool) or not isinstance(crf, (int, float)) or not math.isfinite(crf):
            raise ValueError(f'crf must be a finite number, got {crf!r}')
        lo, hi = spec.crf_range
        if not lo <= crf <= hi:
            raise ValueError(f'crf={crf} is outside {spec.name}\'s range [{lo:g}, {hi:g}]')


def pick_route(spec: CodecSpec, route: str, ffmpeg: Optional[str]) -> str:
    """'pyav' or 'ffmpeg'. 'auto' takes PyAV where it supports the codec and no ffmpeg binary was chosen
    (``ffmpeg=`` or ``$VRPSR_FFMPEG``). The binary is resolved whichever route runs, so a missing ffmpeg is the same
    FFmpegNotFoundError for every codec and route."""
    if route not in ROUTES:
        raise ValueError(f'route must be one of {ROUTES}, got {route!r}')
    if route == 'pyav' and not pyav_route.supports(spec):
        raise ValueError(f"route='pyav' does not support {spec.name}; PyAV runs only libx264/libx265")
    ffmpeg_route.resolve_ffmpeg(ffmpeg)
    if route == 'auto':
        chosen = ffmpeg is not None or bool(os.environ.get('VRPSR_FFMPEG'))
        return 'ffmpeg' if chosen or not pyav_route.supports(spec) else 'pyav'
    return route


def encode(image: ImageLike, codec: str, qp: Optional[int] = None, crf: Optional[float] = None, *,
           route: str = 'auto', ffmpeg: Optional[str] = None, timeout: float = ffmpeg_route.DEFAULT_TIMEOUT,
           preset: Optional[str] = None, profile: Optional[str] = None) -> CodecResult:
    """Encode ``image`` (HxWx3 uint8 or CxHxW float in [0, 1]) as one intra picture with ``codec`` at constant
    ``qp`` or at ``crf``, decode it, and return the decoded HxWx3 uint8 image with its rate (Eq. 1).
    ``preset`` or a named ``profile`` (``encoders.PROFILES``, e.g. 'authors') picks the encoder settings."""
    spec = get_spec(codec)
    check_mode(spec, qp, crf)
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    if min(height, width) < spec.min_size:
        raise ValueError(f'image is {width}x{height}, smaller than {codec}\'s minimum of {spec.min_size}x'
                         f'{spec.min_size}')
    used = pick_route(spec, route, ffmpeg)
    qp = None if qp is None else int(qp)
    options = spec.options(qp, crf, preset, profile)
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode='edge')
    ph, pw = padded.shape[:2]
    planes = rgb_to_yuv420(padded, spec.bit_depth, spec.full_range)
    if used == 'pyav':
        bitstream = strip_sei(pyav_route.encode_pyav(planes, pw, ph, spec, options), spec)
    else:
        raw = ffmpeg_route.encode_ffmpeg(planes_to_bytes(planes), pw, ph, spec, options,
                                         ffmpeg_route.resolve_ffmpeg(ffmpeg), timeout)
        bitstream = strip_sei(raw, spec)
    out = decode(bitstream, codec, height, width, route=used, ffmpeg=ffmpeg, timeout=timeout)
    num_bytes = len(bitstream)
    return CodecResult(image=np.ascontiguousarray(out), num_bytes=num_bytes, bpp=8.0 * num_bytes / (height * width),
                       qp=qp, crf=None if crf is None else float(crf), codec=codec, route=used,
                       bitstream=bitstream)


def decode(bitstream: bytes, codec: str, height: int, width: int, *, route: str = 'auto',
           ffmpeg: Optional[str] = None, timeout: float = ffmpeg_route.DEFAULT_TIMEOUT) -> np.ndarray:
    """Decode a single-picture bitstream of ``codec`` (as :func:`encode` makes it) of a ``height`` x ``width``
    picture to HxWx3 uint8 RGB; a stream that does not decode to that size is a :class:`CodecError`."""
    spec = get_spec(codec)
    ph, pw = height + height % 2, width + width % 2
    if pick_route(spec, route, ffmpeg) == 'pyav':
        decoded = pyav_route.decode_pyav(bitstream, spec)
    else:
        raw = ffmpeg_route.decode_ffmpeg(bitstream, spec, ffmpeg_route.resolve_ffmpeg(ffmpeg), timeout)
        try:
            decoded = bytes_to_planes(raw, ph, pw, spec.bit_depth)
        except ValueError as err:
            raise CodecError(f'{codec} stream is not a {pw}x{ph} picture: {err}') from err
    if decoded[0].shape != (ph, pw):
        raise CodecError(f'{codec} stream holds a {decoded[0].shape[1]}x{decoded[0].shape[0]} picture, '
                         f'expected {pw}x{ph}')
    return np.ascontiguousarray(yuv420_to_rgb(*decoded, spec.bit_depth, spec.full_range)[:height, :width])


def available_codecs(ffmpeg: Optional[str] = None) -> tuple:
    """Codec names (keys of encoders.CODECS) whose encoder the resolved ffmpeg build has (cached per binary)."""
    from vrpsr_plugin.codecs.encoders import CODECS
    exe = ffmpeg_route.resolve_ffmpeg(ffmpeg)
    have = set(ffmpeg_route.ffmpeg_encoders(exe))
    return tuple(name for name, spec in CODECS.items() if spec.encoder in have)
