"""Run by ComfyUI before it imports its own modules: on a CPU-only torch with the registry's CUDA-built
torchvision (what scripts/install.sh installs where only PyPI is reachable), ``import torchvision`` dies with
"operator torchvision::nms does not exist" inside ComfyUI's start-up. ``compat.import_torchvision`` defines the
missing op schemas and imports it first, so ComfyUI and this node pack start; with a matching torchvision it
only imports it."""
from vrpsr_plugin import compat

compat.import_torchvision()
