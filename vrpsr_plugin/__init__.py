"""vrpsr_plugin: recompression-aware perceptual super-resolution (VRPSR) as a BasicSR plugin.

``import vrpsr_plugin`` registers every ``*_arch.py``, ``*_dataset.py``, ``*_loss.py``, ``*_model.py`` and
``*_metric.py`` module of this package into BasicSR's registries, as Real-ESRGAN does: at once if basicsr is
already imported, else as soon as it is (see :mod:`vrpsr_plugin.registration`), so the codec layer and the CLI
start without torch.
"""
from vrpsr_plugin.registration import register_when_basicsr_loads

__version__ = '0.1.0'

register_when_basicsr_loads()
