"""Run by ComfyUI-Manager after it installed requirements.txt: basicsr and vrpsr_plugin into ComfyUI's Python.

basicsr 1.4.2 builds only with ``--no-build-isolation`` (its setup imports torch), and both go in with
``--no-deps`` so ComfyUI's torch and torchvision stay as they are. vrpsr_plugin is installed editable from the
repository this node pack lives in (it is not on PyPI).
"""
import subprocess
import sys
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent


def commands() -> List[List[str]]:
    """The pip commands, in order."""
    if not (REPO / 'setup.py').is_file():
        raise SystemExit(f'vrpsr_plugin is not next to this node pack ({REPO} has no setup.py): install it from a '
                         f'clone of the repository (docs/comfyui.md)')
    pip = [sys.executable, '-m', 'pip', 'install', '--no-build-isolation', '--no-deps']
    return [pip + ['basicsr==1.4.2'], pip + ['-e', str(REPO)]]


if __name__ == '__main__':
    for command in commands():
        subprocess.run(command, check=True)
