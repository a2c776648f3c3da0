"""vrpsr: real codecs, plain-checkpoint export, codec banks and the rate-matched recompression benchmark.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; a module is
imported only when its subcommand runs.
"""
import argparse
import importlib
import sys
from typing import List, Optional

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    'compress': ('vrpsr_plugin.codecs.compress_cli', 'encode+decode one image with a real codec'),
    'export': ('vrpsr_plugin.export', 'fold a condition into a plain Real-ESRGAN checkpoint'),
    'prepare-bank': ('vrpsr_plugin.data.codec_bank', 'pre-encode a dataset at a grid of QPs'),
    'eval': ('vrpsr_plugin.evaluation.cli', 'rate-matched recompression benchmark'),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='vrpsr', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    argv = sys.argv[1:] if argv is None else argv
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if argv and argv[0] == name:  # import only the module that runs
            importlib.import_module(module).add_arguments(sub_parser)
            sub_parser.set_defaults(module=module)
    args = parser.parse_args(argv)
    return importlib.import_module(args.module).run(args)


if __name__ == '__main__':
    sys.exit(main())
