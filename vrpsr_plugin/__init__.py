"""vrpsr_plugin: recompression-aware perceptual super-resolution (VRPSR) as a BasicSR plugin.

``import vrpsr_plugin`` registers every ``*_arch.py``, ``*_dataset.py``, ``*_loss.py``, ``*_model.py`` and
``*_metric.py`` module of this package into BasicSR's registries, as Real-ESRGAN does.
"""
from vrpsr_plugin import compat  # noqa: F401  (must run before basicsr imports torchvision)
from vrpsr_plugin.registration import import_by_suffix

__version__ = '0.1.0'

for _folder, _suffix in (('archs', '_arch'), ('data', '_dataset'), ('losses', '_loss'), ('models', '_model'),
                         ('metrics', '_metric')):
    import_by_suffix(_folder, _suffix)
