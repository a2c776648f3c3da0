"""Test (inference + validation metrics) with BasicSR's pipeline and this plugin's registries.

    python vrpsr_plugin/test.py -opt options/test_vrpsr.yml

results/ go under the repository root, or under $VRPSR_ROOT when set.
"""
import os
import os.path as osp
import sys

if __package__ in (None, ''):  # run as a script: put the repository root, not this folder, on sys.path
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

import vrpsr_plugin  # noqa: E402,F401
from vrpsr_plugin import basicsr_fixes  # noqa: E402
from basicsr.test import test_pipeline  # noqa: E402


def main() -> None:
    basicsr_fixes.apply()
    test_pipeline(os.environ.get('VRPSR_ROOT') or osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))


if __name__ == '__main__':
    main()
