"""Register the plugin's modules into BasicSR's registries by file suffix (Real-ESRGAN's scheme), when BasicSR loads.

Importing the registered modules needs torch and basicsr (seconds), so ``import vrpsr_plugin`` only arranges it:
registration runs at once if basicsr is already imported, else right after ``import basicsr`` finishes (a
post-import hook), or, when that import came from one of this package's own modules (``from
vrpsr_plugin.data.codec_simulator_dataset import ...`` before anything else), at the first registry lookup, since
the registered modules may import the half-imported one. Every name is therefore in the registries whenever BasicSR can be asked for it, while the codec
layer and the ``vrpsr`` CLI start without torch. The same hook makes a CUDA-built torchvision importable on CPU
torch (:mod:`vrpsr_plugin.compat`) before anything imports it.
"""
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

_PACKAGE_DIR = Path(__file__).resolve().parent
SUFFIXES = (('archs', '_arch'), ('data', '_dataset'), ('losses', '_loss'), ('models', '_model'),
            ('metrics', '_metric'))


def import_by_suffix(folder: str, suffix: str) -> List[str]:
    """Import ``vrpsr_plugin.<folder>.<name>`` for every ``<name>{suffix}.py`` file; return the module names."""
    names = sorted(name[:-3] for name in os.listdir(_PACKAGE_DIR / folder) if name.endswith(f'{suffix}.py'))
    for name in names:
        importlib.import_module(f'vrpsr_plugin.{folder}.{name}')
    return names


def register_all() -> None:
    """Import every registered module of the package (idempotent: Python imports each module once)."""
    for folder, suffix in SUFFIXES:
        import_by_suffix(folder, suffix)


def _load_torchvision() -> None:
    from vrpsr_plugin import compat
    compat.import_torchvision()


def _plugin_import_in_progress() -> bool:
    """True while a module of this package is half-imported (its import is what pulled basicsr in)."""
    return any(name.startswith('vrpsr_plugin.') and getattr(getattr(module, '__spec__', None), '_initializing', False)
               for name, module in list(sys.modules.items()))


def _register_on_first_lookup() -> None:
    """Defer :func:`register_all` to the first lookup in any BasicSR registry (get, in, iteration, keys)."""
    from basicsr.utils.registry import Registry
    originals = {name: getattr(Registry, name) for name in ('get', '__contains__', '__iter__', 'keys')}

    def deferred(name: str):
        def method(self, *args, **kwargs):
            for key, original in originals.items():
                setattr(Registry, key, original)
            register_all()
            return originals[name](self, *args, **kwargs)
        return method

    for name in originals:
        setattr(Registry, name, deferred(name))


def _load_basicsr() -> None:
    from vrpsr_plugin import compat
    importlib.import_module('torchvision')  # through its hook when not yet imported
    compat.alias_functional_tensor()
    importlib.import_module('basicsr')
    if _plugin_import_in_progress():  # registering now would import that half-imported module's dependents
        _register_on_first_lookup()
    else:
        register_all()


class _Hooked(importlib.abc.Loader):
    """Loads a top-level module by running ``load`` (which imports the real module) in its place."""

    def __init__(self, load: Callable[[], None], consume: Callable[[], None]) -> None:
        self._load, self._consume = load, consume

    def exec_module(self, module) -> None:
        self._consume()  # from now on the name imports normally (``load`` imports the real module)
        del sys.modules[module.__name__]  # the placeholder; the real module replaces it
        self._load()


class _ImportHooks(importlib.abc.MetaPathFinder):
    """Meta-path finder that routes the first import of each hooked name through its hook, once. A mere
    ``importlib.util.find_spec`` (diffusers and transformers probe for torchvision so) does not use the hook up."""

    def __init__(self, hooks: Dict[str, Callable[[], None]]) -> None:
        self._hooks = dict(hooks)

    def _consume(self, fullname: str) -> None:
        self._hooks.pop(fullname, None)
        if not self._hooks and self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        load = self._hooks.get(fullname)
        if load is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Hooked(load, lambda: self._consume(fullname)))


def register_when_basicsr_loads() -> None:
    """Register now if basicsr is imported, else hook torchvision's and basicsr's first imports."""
    if 'basicsr' in sys.modules:
        register_all()
        return
    hooks = {'basicsr': _load_basicsr}
    if 'torchvision' not in sys.modules:
        hooks['torchvision'] = _load_torchvision
    sys.meta_path.insert(0, _ImportHooks(hooks))
