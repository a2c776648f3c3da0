"""``vrpsr compress-video IN OUT --codec C (--qp Q | --crf F | --kbps K | --size S)``: code a video file or a
folder of images as one x264/x265 stream (``codecs.video``), write it (atomically) and print its rate and PSNR.
A target rate the codec cannot reach on these frames is an error, and no file is written."""
import argparse
import sys
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np

from vrpsr_plugin.codecs.errors import CodecError
from vrpsr_plugin.codecs.ffmpeg_route import DEFAULT_TIMEOUT
from vrpsr_plugin.codecs.inputs import load_image
from vrpsr_plugin.codecs.video import (PRESETS, VIDEO_CODECS, container_format, encode_video, read_video,
                                       write_video)

IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'}


def parse_size(text: str) -> int:
    """Bytes from ``123456``, ``500k`` or ``2.5M`` (decimal: k = 1000)."""
    scale = {'k': 1000, 'm': 1000 ** 2, 'g': 1000 ** 3}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f'file size must be bytes, or a number with k/M/G, got {text!r}') from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f'file size must be at least one byte, got {text!r}')
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vrpsr compress-video``."""
    parser.add_argument('input', type=Path, help='a video file, or a folder of images (frames in name order)')
    parser.add_argument('output', type=Path, help='the coded video (.mp4, .mkv or .mov)')
    parser.add_argument('--codec', default='libx264', choices=VIDEO_CODECS, help='codec (default libx264)')
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--qp', type=int, help='constant QP of the P pictures (0-51)')
    mode.add_argument('--crf', type=float, help="the encoder's own rate control at this CRF (0-51)")
    mode.add_argument('--kbps', type=float, help='target bitrate in kbit/s, met by a search over CRF')
    mode.add_argument('--size', type=parse_size, help='target size of the video packets: bytes, or 500k, 2M')
    parser.add_argument('--fps', type=float, default=None, help="frame rate (default: the input video's, else 24)")
    parser.add_argument('--gop', type=int, default=None, help="keyframe interval in frames (default: encoder's)")
    parser.add_argument('--preset', default='medium', choices=PRESETS, help='encoder preset (default medium)')
    parser.add_argument('--tolerance', type=float, default=0.02, help='relative rate tolerance (default 0.02)')
    parser.add_argument('--ffmpeg', default=None, help='ffmpeg binary (default: $VRPSR_FFMPEG, imageio-ffmpeg)')
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT, help='seconds per ffmpeg call')


def read_frames(path: Path) -> Tuple[List[np.ndarray], float]:
    """Frames and frame rate (None for images) of a video file or a folder of images."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f'{path} holds no images ({", ".join(sorted(IMAGE_SUFFIXES))})')
        frames = []
        for file in files:
            frame, note = load_image(file)
            if note:
                print(f'note: {file}: {note}', file=sys.stderr)
            frames.append(frame)
        return frames, None
    if not path.is_file():
        raise ValueError(f'input {path} does not exist')
    return read_video(path)


def run(args: argparse.Namespace) -> int:
    """Code, write, report. Returns 0, or 2 after printing the error (bad input, unreachable rate, codec
    failure); nothing is written then."""
    try:
        container_format(args.output)
        frames, rate = read_frames(args.input)
        fps = args.fps or rate or 24.0
        with warnings.catch_warnings():  # a missed target is reported below as the error
            warnings.simplefilter('ignore', RuntimeWarning)
            result = encode_video(frames, args.codec, qp=args.qp, crf=args.crf, kbps=args.kbps,
                                  size_bytes=args.size, fps=fps, gop=args.gop, preset=args.preset,
                                  tolerance=args.tolerance, ffmpeg=args.ffmpeg, timeout=args.timeout)
        if not result.reachable:
            raise ValueError(result.note)
        write_video(result, args.output, ffmpeg=args.ffmpeg, timeout=args.timeout)
    except (OSError, ValueError, CodecError) as exc:
        print(f'vrpsr compress-video: error: {exc}', file=sys.stderr)
        return 2
    from basicsr.metrics import calculate_psnr
    psnr = np.mean([calculate_psnr(a, b, crop_border=0) for a, b in zip(frames, result.frames)])
    rate_mode = f'qp={result.qp}' if result.qp is not None else f'crf={result.crf:g}'
    line = (f'codec={result.codec} frames={len(frames)} size={result.frames.shape[2]}x{result.frames.shape[1]} '
            f'fps={result.fps:g} {rate_mode} kbps={result.kbps:.2f} bytes={result.num_bytes} '
            f'mean_bpp={result.mean_bpp:.4f} psnr={psnr:.2f}dB')
    if result.target_kbps is not None:
        line += f' target_kbps={result.target_kbps:.2f} encodes={result.num_encodes}'
    print(line)
    return 0
