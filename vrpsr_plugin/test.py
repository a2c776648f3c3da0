"""Test (inference + validation metrics) with BasicSR's pipeline and this plugin's registries.

    python vrpsr_plugin/test.py -opt options/test_vrpsr.yml [--debug]

results/ go under the repository root, or under $VRPSR_ROOT when set (relative ``path.pretrain_network_*`` entries
then resolve against it). Errors and signals follow :mod:`vrpsr_plugin.commands`.
"""
import sys

if __package__ in (None, ''):  # run as a script: put the repository root, not this folder, on sys.path
    import os.path as osp
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

from vrpsr_plugin.commands import run_command  # noqa: E402
from vrpsr_plugin.train import root_path  # noqa: E402


def run_test_pipeline() -> None:
    import vrpsr_plugin  # noqa: F401  (registers archs, datasets, losses, models, metrics)
    from basicsr.test import test_pipeline as basicsr_test_pipeline
    from vrpsr_plugin import basicsr_fixes
    basicsr_fixes.apply()
    basicsr_test_pipeline(root_path())


def main() -> int:
    return run_command('test.py', lambda: run_test_pipeline() or 0, debug='--debug' in sys.argv)


if __name__ == '__main__':
    sys.exit(main())
