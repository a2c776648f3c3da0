"""``vrpsr eic``: ASSR-EIC image codec (seed 002), see docs/eic.md.

    vrpsr eic encode IN.png OUT.vrp --codec libx265 --bpp 0.05
    vrpsr eic decode OUT.vrp REC.png [--dial 1]
    vrpsr eic info OUT.vrp
    vrpsr eic export-decoder net_g_800.pth OUT.safetensors --option options/assr_eic_cpu.yml --training "..."
"""
import argparse
import sys
from pathlib import Path

from vrpsr_plugin.eic.pipeline import DEFAULT_SCALES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='eic_command', required=True, metavar='ACTION')
    enc = sub.add_parser('encode', help='encode an image to a .vrp file')
    enc.add_argument('input', help='image file (PNG, ...)')
    enc.add_argument('output', help='.vrp file to write')
    enc.add_argument('--codec', default='libx265', help='real codec (default libx265)')
    rate = enc.add_mutually_exclusive_group(required=True)
    rate.add_argument('--bpp', type=float, help='target bits per pixel of the whole file (rate control)')
    rate.add_argument('--qp', type=int, help='fixed QP (with --scale)')
    enc.add_argument('--scale', type=float, help='fixed down-scaling factor s (with --qp)')
    enc.add_argument('--scales', default=','.join(f'{s:g}' for s in DEFAULT_SCALES),
                     help='comma-separated grid of s searched by the rate control')
    enc.add_argument('--decoder', help='decoder .safetensors (default: the shipped one)')
    dec = sub.add_parser('decode', help='decode a .vrp file to a PNG')
    dec.add_argument('input', help='.vrp file')
    dec.add_argument('output', help='PNG to write')
    dec.add_argument('--dial', type=float, default=1.0,
                     help='generative balance in [0, 1]: 0 fidelity branch only, 1 the learned gate (default)')
    dec.add_argument('--decoder', help='decoder .safetensors (default: the shipped one)')
    info = sub.add_parser('info', help='print the header of a .vrp file')
    info.add_argument('input')
    exp = sub.add_parser('export-decoder', help='write a trained ASSREICNet checkpoint as a shippable decoder')
    exp.add_argument('checkpoint', help='BasicSR net_g_*.pth')
    exp.add_argument('output', help='.safetensors to write')
    exp.add_argument('--option', required=True, help='the training option file (network_g, codecs, ranges)')
    exp.add_argument('--training', required=True, help='how it was trained (command, data, iterations, time)')


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise OSError(f'cannot read {path}: {err.strerror}') from None


def run(args: argparse.Namespace) -> int:
    """Errors end as ``vrpsr eic: error: ...`` with status 2 (:mod:`vrpsr_plugin.commands`)."""
    from vrpsr_plugin.eic.container import EICFile
    if args.eic_command == 'info':
        eic = EICFile.from_bytes(_read(args.input), args.input)
        print(f'{args.input}: {eic.codec} QP {eic.qp}, {eic.width}x{eic.height} coded at {eic.coded_width}x'
              f'{eic.coded_height} (s={eic.scale:.3f}), {eic.bpp:.4f} bpp')
        return 0
    if args.eic_command == 'export-decoder':
        import yaml

        from vrpsr_plugin.eic.pipeline import export_decoder
        opt = yaml.safe_load(_read(args.option))
        data = opt['datasets']['train']
        qps = data.get('qps') or data['qp_range']
        export_decoder(args.checkpoint, opt['network_g'], args.output, data['codecs'], data['scale_range'],
                       (min(qps), max(qps)), args.training)
        print(f'wrote {args.output}')
        return 0
    from vrpsr_plugin.atomic_io import write_bytes, write_png
    from vrpsr_plugin.eic.pipeline import decode_bytes, encode_image, load_decoder
    decoder = load_decoder(args.decoder)
    if args.eic_command == 'decode':
        write_png(args.output, decode_bytes(_read(args.input), decoder, args.dial, args.input))
        print(f'wrote {args.output}')
        return 0
    from vrpsr_plugin.codecs import load_image
    if (args.qp is None) != (args.scale is None):
        raise ValueError('--qp and --scale go together')
    rgb, note = load_image(args.input)
    if note:
        print(f'{args.input}: {note}', file=sys.stderr)
    scales = [float(s) for s in args.scales.split(',') if s.strip()]
    result = encode_image(rgb, args.codec, decoder, bpp=args.bpp, qp=args.qp, scale=args.scale, scales=scales)
    write_bytes(args.output, result.data)
    for cand in result.candidates:
        mark = '*' if cand is result.chosen else ' '
        print(f'{mark} s={cand.scale:.3f} QP {cand.qp}: {cand.bpp:.4f} bpp, restored PSNR {cand.psnr:.2f} dB')
    size = len(result.data)
    print(f'wrote {args.output}: {size} bytes, {8.0 * size / (rgb.shape[0] * rgb.shape[1]):.4f} bpp, s='
          f'{result.chosen.scale:.3f}, QP {result.chosen.qp}; seconds: ' +
          ', '.join(f'{k} {v:.2f}' for k, v in result.seconds.items()))
    return 0
