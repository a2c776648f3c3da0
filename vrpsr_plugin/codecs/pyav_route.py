"""The in-process PyAV route for libx264/libx265 (no subprocess; faster, most of all for small pictures).

It hands the encoder the same yuv420p planes, the same encoder options (:meth:`CodecSpec.options`) and the
same threading (frame threads, as the ffmpeg command line) as the ffmpeg route, so both give the same
bitstream; it decodes with libavcodec's h264/hevc decoders.
"""
import functools
from fractions import Fraction
from typing import Tuple

import numpy as np

from vrpsr_plugin.codecs.encoders import CodecSpec, Options
from vrpsr_plugin.codecs.errors import CodecError, EncoderUnavailableError

Planes = Tuple[np.ndarray, np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=1)
def pyav_codecs() -> frozenset:
    """Codec names PyAV's libavcodec offers (empty when PyAV is not installed)."""
    try:
        import av
    except ImportError:
        return frozenset()
    return frozenset(av.codecs_available)


def supports(spec: CodecSpec) -> bool:
    """Whether PyAV can encode and decode ``spec``'s codec."""
    return spec.pyav_decoder is not None and {spec.encoder, spec.pyav_decoder} <= pyav_codecs()


def _frame(planes: Planes, width: int, height: int, spec: CodecSpec):
    import av
    frame = av.VideoFrame(width, height, 'yuv420p')
    for key, (_, code) in spec.colour().items():  # the colour description written into the stream
        setattr(frame, key, code)
    for plane, data in zip(frame.planes, planes):
        stride = plane.line_size
        buf = np.zeros((data.shape[0], stride), np.uint8)
        buf[:, :data.shape[1]] = data
        plane.update(buf.tobytes())
    frame.pts = 0
    return frame


def encode_pyav(planes: Planes, width: int, height: int, spec: CodecSpec, options: Options) -> bytes:
    """yuv420p planes -> elementary bitstream, in process."""
    import av
    from vrpsr_plugin.distributed import codec_threads
    if not supports(spec):
        raise EncoderUnavailableError(f'PyAV has no {spec.encoder!r} encoder or {spec.pyav_decoder!r} decoder; '
                                      f"use route='ffmpeg'")
    try:
        ctx = av.CodecContext.create(spec.encoder, 'w')
        ctx.width, ctx.height, ctx.pix_fmt = width, height, spec.pix_fmt
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25, 1)
        ctx.thread_type = 'FRAME'  # PyAV defaults to slice threads: x264 would split the picture into slices
        threads = codec_threads()  # per-rank share of the cores under DDP (vrpsr_plugin.distributed)
        if threads:
            ctx.thread_count = threads
        ctx.options = dict(options)
        for key, (_, code) in spec.colour().items():
            setattr(ctx, key, code)
        packets = list(ctx.encode(_frame(planes, width, height, spec))) + list(ctx.encode(None))
    except av.FFmpegError as exc:
        raise CodecError(f'PyAV {spec.encoder} failed on {width}x{height}: {exc}') from exc
    data = b''.join(bytes(p) for p in packets)
    if not data:
        raise CodecError(f'PyAV {spec.encoder} produced an empty bitstream for {width}x{height}')
    return data


def decode_pyav(bitstream: bytes, spec: CodecSpec) -> Planes:
    """Elementary bitstream -> (Y, U, V) uint8 planes of its first picture."""
    import av
    try:
        ctx = av.CodecContext.create(spec.pyav_decoder, 'r')
        frames = []
        for packet in ctx.parse(bitstream) + ctx.parse(None):
            frames += ctx.decode(packet)
        frames += ctx.decode(None)
    except av.FFmpegError as exc:
        raise CodecError(f'PyAV {spec.pyav_decoder} decoder failed: {exc}') from exc
    if not frames:
        raise CodecError(f'PyAV {spec.pyav_decoder} decoded no picture from {len(bitstream)} bytes')
    frame = frames[0]
    if frame.format.name != 'yuv420p':
        raise CodecError(f'PyAV decoded {frame.format.name}, expected yuv420p')
    out = []
    for i, plane in enumerate(frame.planes):
        h = frame.height if i == 0 else frame.height // 2
        w = frame.width if i == 0 else frame.width // 2
        arr = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
        out.append(arr.copy())
    return tuple(out)
