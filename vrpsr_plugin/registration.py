"""Import the plugin's modules by file suffix so their BasicSR registry decorators run (Real-ESRGAN's scheme)."""
import importlib
from pathlib import Path
from typing import List

from basicsr.utils import scandir

_PACKAGE_DIR = Path(__file__).resolve().parent


def import_by_suffix(folder: str, suffix: str) -> List[str]:
    """Import ``vrpsr_plugin.<folder>.<name>`` for every ``<name>{suffix}.py`` file; return the module names."""
    names = sorted(Path(f).stem for f in scandir(str(_PACKAGE_DIR / folder)) if f.endswith(f'{suffix}.py'))
    for name in names:
        importlib.import_module(f'vrpsr_plugin.{folder}.{name}')
    return names
