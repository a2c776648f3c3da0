"""``vrpsr compress IN OUT --codec C (--qp Q | --bpp B | --crf F)``: encode+decode one image with a real codec,
write the decoded picture (atomically) and print codec, QP, bytes, bpp and PSNR against the input."""
import argparse
import sys
from pathlib import Path

import numpy as np
from basicsr.metrics import calculate_psnr

from vrpsr_plugin.atomic_io import atomic_write
from vrpsr_plugin.codecs.encode import ROUTES, encode
from vrpsr_plugin.codecs.encoders import CODECS
from vrpsr_plugin.codecs.errors import CodecError
from vrpsr_plugin.codecs.ffmpeg_route import DEFAULT_TIMEOUT
from vrpsr_plugin.codecs.inputs import load_image
from vrpsr_plugin.codecs.rate_match import find_qp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vrpsr compress``."""
    parser.add_argument('input', type=Path, help='input image (PNG, JPEG, ...)')
    parser.add_argument('output', type=Path, help='where to write the decoded image (format from the suffix)')
    parser.add_argument('--codec', default='libx265', choices=sorted(CODECS), help='codec (default libx265)')
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--qp', type=int, help='constant QP (JPEG: qscale, WebP: quality)')
    mode.add_argument('--bpp', type=float, help='target bits per pixel: find the QP that matches it (Eq. 2)')
    mode.add_argument('--crf', type=float, help="the encoder's own rate control at this CRF")
    parser.add_argument('--route', default='auto', choices=ROUTES, help='PyAV (x264/x265) or ffmpeg subprocess')
    parser.add_argument('--ffmpeg', default=None, help='ffmpeg binary (default: $VRPSR_FFMPEG, imageio-ffmpeg)')
    parser.add_argument('--preset', default=None, help="encoder preset (default: the codec's, docs/codecs.md)")
    parser.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT, help='seconds per ffmpeg call')


def _write_image(image: np.ndarray, path: Path) -> None:
    """Write the decoded image in the format the file extension names (PNG when unknown), atomically."""
    from PIL import Image
    fmt = Image.registered_extensions().get(path.suffix.lower(), 'PNG')
    atomic_write(path, lambda handle: Image.fromarray(image).save(handle, format=fmt))


def run(args: argparse.Namespace) -> int:
    """Compress, write, report. Returns 0, or 2 after printing the error on bad input or a codec failure."""
    try:
        image, note = load_image(args.input)
        if note:
            print(f'note: {args.input}: {note}', file=sys.stderr)
        kwargs = dict(route=args.route, ffmpeg=args.ffmpeg, preset=args.preset, timeout=args.timeout)
        if args.bpp is not None:
            result = find_qp(image, args.codec, args.bpp, **kwargs)
        else:
            result = encode(image, args.codec, qp=args.qp, crf=args.crf, **kwargs)
        if not args.output.parent.is_dir():
            raise ValueError(f'output folder {args.output.parent} does not exist')
        _write_image(result.image, args.output)
    except (OSError, ValueError, CodecError) as exc:
        print(f'vrpsr compress: error: {exc}', file=sys.stderr)
        return 2
    qp = 'none' if result.qp is None else str(result.qp)
    line = (f'codec={result.codec} qp={qp} bytes={result.num_bytes} bpp={result.bpp:.4f} '
            f'psnr={calculate_psnr(image, result.image, crop_border=0):.2f}dB route={result.route}')
    if result.crf is not None:
        line += f' crf={result.crf:g}'
    if result.target_bpp is not None:
        line += f' target_bpp={result.target_bpp:g} encodes={result.num_encodes} reachable={result.reachable}'
    print(line)
    return 0
