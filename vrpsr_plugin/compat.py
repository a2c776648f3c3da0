"""Close the gap between a CPU-only torch and the CUDA-built torchvision wheel (see scripts/install.sh).

Run by :mod:`vrpsr_plugin.registration` at the first import of torchvision / basicsr after ``import
vrpsr_plugin``. Where torchvision imports normally this module changes nothing.

1. torchvision's CUDA wheel cannot load its C++ ops against CPU torch, and ``import torchvision`` then dies
   registering fake kernels for ops that were never defined ("operator torchvision::nms does not exist").
   We define the schemas of those ops (without kernels) and import again. The C++ ops themselves
   (nms, deform_conv2d, roi_align) stay unavailable; nothing in this package uses them.
2. basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, removed in torchvision 0.17; we alias
   the private module that replaced it.
"""
import importlib
import sys
from types import ModuleType

import torch

# Ops that torchvision registers fake (meta) kernels for at import time.
_TORCHVISION_OP_SCHEMAS = {
    'nms': '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms': '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
}
_torchvision_lib = None


def import_torchvision() -> ModuleType:
    """Import torchvision, defining its missing op schemas and retrying if its C++ ops cannot load."""
    global _torchvision_lib
    try:
        return importlib.import_module('torchvision')
    except RuntimeError as err:
        if 'torchvision::' not in str(err):
            raise
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
        del sys.modules[name]
    _torchvision_lib = torch.library.Library('torchvision', 'FRAGMENT')  # kept alive: it owns the schemas
    for op, schema in _TORCHVISION_OP_SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, op):
            _torchvision_lib.define(op + schema)
    return importlib.import_module('torchvision')


def alias_functional_tensor() -> None:
    """Make ``torchvision.transforms.functional_tensor`` importable (basicsr 1.4.2 needs it)."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = importlib.import_module('torchvision.transforms._functional_tensor')

