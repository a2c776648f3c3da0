"""``encode_video``: a batch of frames coded as one real inter-coded x264/x265 stream, and decoded back.

The image path (``encode``) codes every picture on its own, as the paper's recompression step does (§3.1).
Delivered video is one stream with I, P and B pictures, so this module runs the encoder over all frames at once:
yuv420p (the same BT.601 limited-range conversion as ``encode``, signalled in the stream), GOP length and preset
as given, at a constant QP, at a CRF, or at a target bitrate / file size. The frames come back as ffmpeg decodes
the stream to RGB (what players and ffmpeg-based loaders read); its chroma interpolation differs slightly from
``encode``'s numpy conversion. A target rate is met by a search over
CRF (the encoder's own rate control in every trial): ln(kbps) is close to linear in CRF, so it steps by the
log-rate slope and then interpolates inside the bracket, as ``find_qp`` does over QP (Eq. 2).

Rates count the coded video packets, not the container: kbps = 8 * bytes / duration / 1000 with duration =
frames / fps, and the bpp of a frame = 8 * its packet bytes / (H * W). The encoder's informational SEI is removed
(ffmpeg's ``filter_units`` bitstream filter), as ``encode`` strips it. The stream lives in memory as NUT;
:func:`write_video` remuxes it (packets unchanged) into .mkv / .mp4 / .mov, atomically.
"""
import math
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from vrpsr_plugin.atomic_io import atomic_path
from vrpsr_plugin.codecs.encode import check_mode
from vrpsr_plugin.codecs.encoders import SEI_TYPES, CodecSpec, get_spec
from vrpsr_plugin.codecs.ffmpeg_route import (DEFAULT_TIMEOUT, colour_filter, option_args, require_encoder,
                                              resolve_ffmpeg, run_ffmpeg)
from vrpsr_plugin.codecs.inputs import ImageLike, to_rgb_uint8
from vrpsr_plugin.codecs.yuv import planes_to_bytes, rgb_to_yuv420

VIDEO_CODECS: Tuple[str, ...] = ('libx264', 'libx265')
PRESETS: Tuple[str, ...] = ('ultrafast', 'superfast', 'veryfast', 'faster', 'fast', 'medium', 'slow', 'slower',
                            'veryslow', 'placebo')
CONTAINERS: Dict[str, str] = {'.mp4': 'mp4', '.mkv': 'matroska', '.mov': 'mov'}
_LOG_RATE_SLOPE = -0.11  # d ln(kbps) / d CRF prior (x264/x265: the rate halves every ~6 CRF)
_START_CRF = {'libx264': 23.0, 'libx265': 28.0}  # the encoders' defaults

Frames = Union[np.ndarray, Iterable[ImageLike]]


@dataclass(eq=False)
class VideoResult:
    """Decoded frames (N x H x W x 3 uint8) and the rate of the coded stream (NUT bytes in ``stream``).
    ``frame_bytes`` are the packet sizes in display order. ``reachable`` is False when a target rate was not met
    within the tolerance (``note`` says why)."""
    frames: np.ndarray
    codec: str
    fps: float
    kbps: float
    frame_bytes: Tuple[int, ...]
    qp: Optional[int]
    crf: Optional[float]
    preset: str
    gop: Optional[int]
    num_encodes: int = 1
    target_kbps: Optional[float] = None
    reachable: bool = True
    note: str = ''
    stream: bytes = field(default=b'', repr=False)

    @property
    def num_bytes(self) -> int:
        """Bytes of all video packets."""
        return sum(self.frame_bytes)

    @property
    def bpp(self) -> Tuple[float, ...]:
        """Bits per pixel of every frame, in display order (I pictures cost several times P/B pictures)."""
        height, width = self.frames.shape[1:3]
        return tuple(8.0 * b / (height * width) for b in self.frame_bytes)

    @property
    def mean_bpp(self) -> float:
        """Bits per pixel per frame over the whole stream: ``kbps_to_bpp(kbps, W, H, fps)``."""
        return 8.0 * self.num_bytes / (self.frames.shape[0] * self.frames.shape[1] * self.frames.shape[2])


def kbps_to_bpp(kbps: float, width: int, height: int, fps: float) -> float:
    """Mean bits per pixel of each frame of a stream at ``kbps``: 1000 * kbps / (fps * W * H)."""
    for name, value in (('kbps', kbps), ('fps', fps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f'{name} must be a finite number > 0, got {value!r}')
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f'frame size must be positive, got {width}x{height}')
    return 1000.0 * float(kbps) / (float(fps) * int(width) * int(height))


def video_spec(codec: str) -> CodecSpec:
    """The spec of a video codec; ValueError naming the video codecs otherwise."""
    if codec not in VIDEO_CODECS:
        raise ValueError(f'video coding supports {", ".join(VIDEO_CODECS)}, got {codec!r}')
    return get_spec(codec)


def check_frames(frames: Frames, min_size: int = 16) -> List[np.ndarray]:
    """The frames as HxWx3 uint8 arrays of one even size; ValueError naming the first bad frame."""
    rgb = [to_rgb_uint8(frame) for frame in frames]
    if not rgb:
        raise ValueError('no frames to code')
    height, width = rgb[0].shape[:2]
    for i, frame in enumerate(rgb[1:], 1):
        if frame.shape[:2] != (height, width):
            raise ValueError(f'frame {i} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {width}x{height}: '
                             f'all frames of a video must have one size')
    if height % 2 or width % 2:
        raise ValueError(f'frames are {width}x{height}: yuv420p video needs an even width and height '
                         f'(crop or pad the frames)')
    if min(height, width) < min_size:
        raise ValueError(f'frames are {width}x{height}, smaller than the minimum of {min_size}x{min_size}')
    return rgb


def _check_rate(name: str, value: Optional[float]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise ValueError(f'{name} must be a finite number > 0, got {value!r}')


def encode_video(frames: Frames, codec: str = 'libx264', *, qp: Optional[int] = None, crf: Optional[float] = None,
                 kbps: Optional[float] = None, size_bytes: Optional[int] = None, fps: float = 24.0,
                 gop: Optional[int] = None, preset: str = 'medium', tolerance: float = 0.02, max_encodes: int = 12,
                 ffmpeg: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT) -> VideoResult:
    """Code ``frames`` (HxWx3 uint8 arrays or 3xHxW float tensors in [0, 1], one even size) as one ``codec``
    stream at exactly one of ``qp``, ``crf``, ``kbps`` or ``size_bytes`` (a target: the CRF search stops within
    ``tolerance``, relative), with a keyframe every ``gop`` frames (None: the encoder's default) and ``preset``.
    A target missed after ``max_encodes`` trials, or outside the CRF range, gives the closest trial with
    ``reachable=False`` and a RuntimeWarning."""
    spec = video_spec(codec)
    if sum(v is not None for v in (qp, crf, kbps, size_bytes)) != 1:
        raise ValueError(f'give exactly one of qp=, crf=, kbps=, size_bytes= (got qp={qp!r}, crf={crf!r}, '
                         f'kbps={kbps!r}, size_bytes={size_bytes!r})')
    if qp is not None or crf is not None:
        check_mode(spec, qp, crf)  # the image path's QP/CRF checks (type, the codec's range)
    _check_rate('fps', fps)
    _check_rate('kbps', kbps)
    _check_rate('size_bytes', size_bytes)
    if gop is not None and (isinstance(gop, bool) or not isinstance(gop, (int, np.integer)) or gop < 1):
        raise ValueError(f'gop must be an integer >= 1 (or None for the encoder default), got {gop!r}')
    if preset not in PRESETS:
        raise ValueError(f'preset must be one of {", ".join(PRESETS)}, got {preset!r}')
    if not 0 < tolerance < 1:
        raise ValueError(f'tolerance must lie in (0, 1), got {tolerance!r}')
    rgb = check_frames(frames, spec.min_size)
    exe = resolve_ffmpeg(ffmpeg)
    require_encoder(exe, spec)
    raw = b''.join(planes_to_bytes(rgb_to_yuv420(frame)) for frame in rgb)
    height, width = rgb[0].shape[:2]

    def trial(trial_qp: Optional[int], trial_crf: Optional[float]) -> VideoResult:
        options = spec.options(trial_qp, trial_crf, preset)
        stream = _encode(raw, width, height, len(rgb), fps, gop, spec, options, exe, timeout)
        sizes = packet_sizes(stream, exe, timeout)
        if len(sizes) != len(rgb):
            raise ValueError(f'{codec} coded {len(sizes)} packets for {len(rgb)} frames')
        return VideoResult(frames=np.empty((len(rgb), height, width, 3), np.uint8), codec=codec, fps=float(fps),
                           kbps=8.0 * sum(sizes) * fps / len(rgb) / 1000.0, frame_bytes=sizes, qp=trial_qp,
                           crf=trial_crf, preset=preset, gop=gop, stream=stream)

    if qp is not None:
        result = trial(int(qp), None)
    elif crf is not None:
        result = trial(None, float(crf))
    else:
        target = float(kbps) if kbps is not None else 8.0 * size_bytes * fps / len(rgb) / 1000.0
        result = _search_crf(lambda c: trial(None, c), target, spec, tolerance, max_encodes)
    result.frames = decode_stream(result.stream, width, height, len(rgb), exe, timeout)
    return result


def _encode(raw: bytes, width: int, height: int, count: int, fps: float, gop: Optional[int], spec: CodecSpec,
            options, exe: str, timeout: float) -> bytes:
    """Planar yuv420p frames -> one NUT stream of ``spec``'s codec, SEI removed, colour signalled."""
    rate = Fraction(fps).limit_denominator(1001)
    args = ['-f', 'rawvideo', '-pix_fmt', 'yuv420p', '-s', f'{width}x{height}', '-r', str(rate), '-i', 'pipe:0',
            '-frames:v', str(count), '-c:v', spec.encoder, *option_args(options)]
    if gop is not None:
        args += ['-g', str(gop)]
    remove = '|'.join(str(t) for t in SEI_TYPES[spec.nal])
    args += ['-vf', colour_filter(spec), '-pix_fmt', 'yuv420p', '-bsf:v', f'filter_units=remove_types={remove}',
             '-f', 'nut', 'pipe:1']
    return run_ffmpeg(exe, args, raw, timeout)


def packet_sizes(stream: bytes, ffmpeg: str, timeout: float = DEFAULT_TIMEOUT) -> Tuple[int, ...]:
    """Sizes of the video packets of a NUT ``stream`` in display (pts) order, read with ffmpeg's
    ``framecrc`` muxer (one line per packet: stream, dts, pts, duration, size, checksum)."""
    text = run_ffmpeg(ffmpeg, ['-f', 'nut', '-i', 'pipe:0', '-map', '0:v:0', '-c', 'copy', '-f', 'framecrc',
                               'pipe:1'], stream, timeout).decode('ascii', 'replace')
    packets = []
    for line in text.splitlines():
        if line and not line.startswith('#'):
            fields = [f.strip() for f in line.split(',')]
            packets.append((int(fields[2]), int(fields[4])))
    return tuple(size for _, size in sorted(packets))


def decode_stream(stream: bytes, width: int, height: int, count: int, ffmpeg: str,
                  timeout: float = DEFAULT_TIMEOUT) -> np.ndarray:
    """Every picture of a coded stream (any container ffmpeg reads) as N x H x W x 3 uint8 RGB in display order,
    converted by ffmpeg itself (from the stream's signalled BT.601 limited range), as players read it."""
    raw = run_ffmpeg(ffmpeg, ['-i', 'pipe:0', '-map', '0:v:0', '-fps_mode', 'passthrough', '-f', 'rawvideo',
                              '-pix_fmt', 'rgb24', 'pipe:1'], stream, timeout)
    if len(raw) != count * width * height * 3:
        raise ValueError(f'decoding gave {len(raw)} bytes, expected {count} frames of {width}x{height} RGB')
    return np.frombuffer(raw, np.uint8).reshape(count, height, width, 3).copy()


def _search_crf(trial: Callable[[float], VideoResult], target: float, spec: CodecSpec, tolerance: float,
                max_encodes: int) -> VideoResult:
    """The trial whose kbps is within ``tolerance`` of ``target``: secant steps on ln(kbps) over CRF until a
    bracket, then interpolation inside it (each step keeps >= 10% away from the bracket's ends)."""
    low, high = spec.crf_range
    log_t = math.log(target)
    cache: Dict[float, VideoResult] = {}

    def log_rate(c: float) -> float:
        if c not in cache:
            cache[c] = trial(c)
        return math.log(max(cache[c].kbps, 1e-9))

    above = below = None  # largest CRF whose rate is >= target, smallest whose rate is <= target
    c = _START_CRF[spec.name]
    end_reached = False
    while len(cache) < max_encodes:
        lr = log_rate(c)
        if abs(math.exp(lr - log_t) - 1) <= tolerance:
            break
        if lr > log_t:
            above = c if above is None else max(above, c)
        else:
            below = c if below is None else min(below, c)
        if (lr > log_t and c >= high) or (lr < log_t and c <= low):
            end_reached = True
            break
        if above is not None and below is not None:
            if below - above <= 0.02:
                break
            la, lb = log_rate(above), log_rate(below)
            est = above + (la - log_t) / (la - lb) * (below - above) if la > lb else (above + below) / 2
            margin = 0.1 * (below - above)
            nxt = min(max(est, above + margin), below - margin)
        else:
            slope = _LOG_RATE_SLOPE
            if len(cache) >= 2:
                c1, c2 = sorted(cache, key=lambda k: abs(k - c))[:2]
                measured = (log_rate(c1) - log_rate(c2)) / (c1 - c2)
                slope = measured if measured < 0 else slope
            nxt = min(max(c + (log_t - lr) / slope, low), high)
        nxt = round(nxt, 2)
        if nxt in cache:
            break
        c = nxt
    best = min(cache, key=lambda k: abs(math.log(max(cache[k].kbps, 1e-9)) - log_t))
    result = cache[best]
    result.num_encodes, result.target_kbps = len(cache), target
    if abs(result.kbps / target - 1) > tolerance:
        result.reachable = False
        if end_reached:
            result.note = (f'target {target:.4g} kbps is outside what {spec.name} reaches on these frames over CRF '
                           f'{low:g}..{high:g} (closest: {result.kbps:.4g} kbps at CRF {result.crf:g})')
        else:
            result.note = (f'target {target:.4g} kbps not met within {tolerance:.0%} after {len(cache)} encodes: '
                           f'closest {result.kbps:.4g} kbps at CRF {result.crf:g}')
        warnings.warn(result.note, RuntimeWarning, stacklevel=3)
    return result


def write_video(result: VideoResult, path: Union[str, Path], ffmpeg: Optional[str] = None,
                timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remux ``result.stream`` (packets unchanged) into ``path`` (.mp4, .mkv or .mov), atomically: ffmpeg
    writes a temporary file that is moved onto ``path`` once complete."""
    path = Path(path)
    fmt = container_format(path)
    exe = resolve_ffmpeg(ffmpeg)
    args = ['-f', 'nut', '-i', 'pipe:0', '-map', '0', '-c', 'copy']
    if fmt in ('mp4', 'mov'):
        args += ['-movflags', '+faststart'] + (['-tag:v', 'hvc1'] if result.codec == 'libx265' else [])
    with atomic_path(path) as tmp:
        run_ffmpeg(exe, [*args, '-f', fmt, '-y', str(tmp)], result.stream, timeout)


def container_format(path: Union[str, Path]) -> str:
    """ffmpeg's muxer for the suffix of ``path``; ValueError for other suffixes or a missing folder."""
    path = Path(path)
    if path.suffix.lower() not in CONTAINERS:
        raise ValueError(f'video file {path} must end in one of {", ".join(CONTAINERS)}')
    if not path.parent.is_dir():
        raise ValueError(f'output folder {path.parent} does not exist')
    return CONTAINERS[path.suffix.lower()]


def read_video(path: Union[str, Path]) -> Tuple[List[np.ndarray], float]:
    """Frames (HxWx3 uint8 RGB) and frame rate of a video file, decoded in-process with PyAV."""
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f'{path} has no video stream')
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(stream)]
    except av.FFmpegError as exc:
        raise ValueError(f'cannot read video {path}: {exc}') from exc
    if not frames:
        raise ValueError(f'{path} holds no decodable frame')
    return frames, float(rate) if rate else 24.0
