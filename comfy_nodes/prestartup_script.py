"""Run by ComfyUI before it imports its own modules: on a CPU-only torch with the registry's CUDA-built
torchvision (what scripts/install.sh installs where only PyPI is reachable), ``import torchvision`` dies with
"operator torchvision::nms does not exist" inside ComfyUI's start-up. ``vrpsr_plugin.compat`` defines the missing
op schemas first, so ComfyUI and this node pack start; with a matching torchvision it changes nothing."""
import vrpsr_plugin.compat  # noqa: F401
