"""vrpsr: real codecs, plain-checkpoint export, codec banks and the rate-matched recompression benchmark.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; a module is
imported only when its subcommand runs.
"""
import argparse
import importlib
import sys
from typing import List, Optional

from vrpsr_plugin.commands import run_command

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    'compress': ('vrpsr_plugin.codecs.compress_cli', 'encode+decode one image with a real codec'),
    'compress-video': ('vrpsr_plugin.codecs.compress_video_cli', 'code frames as one x264/x265 stream at a rate'),
    'export': ('vrpsr_plugin.export', 'fold a condition into a plain Real-ESRGAN checkpoint'),
    'prepare-bank': ('vrpsr_plugin.data.codec_bank', 'pre-encode a dataset at a grid of QPs'),
    'eval': ('vrpsr_plugin.evaluation.cli', 'rate-matched recompression benchmark'),
    'eic': ('vrpsr_plugin.eic.cli', 'ASSR-EIC image codec: encode/decode .vrp files'),
    'demo-data': ('vrpsr_plugin.data.demo_images', 'write the bundled demo photos the smoke options read'),
}


def main(argv: Optional[List[str]] = None) -> int:
    """Parse and run one subcommand under :mod:`vrpsr_plugin.commands`' conventions (SIGTERM unwinds and kills
    ffmpeg children; user errors: one ``error:`` line, status 2; ``--debug``: with the traceback)."""
    parser = argparse.ArgumentParser(prog='vrpsr', description=__doc__.splitlines()[0])
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                       help='show the traceback of an error')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith('-')), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, parents=[debug])
        if name == command:  # import only the module that runs
            importlib.import_module(module).add_arguments(sub_parser)
            sub_parser.set_defaults(module=module)
    args = parser.parse_args(argv)
    return run_command(f'vrpsr {args.command}', lambda: importlib.import_module(args.module).run(args), args.debug)


if __name__ == '__main__':
    sys.exit(main())
