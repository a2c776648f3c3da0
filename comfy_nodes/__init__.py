"""VRPSR custom nodes for ComfyUI (recompression-aware super-resolution, see docs/comfyui.md).

Load it as a ComfyUI custom node directory (symlink ``comfy_nodes`` into ``ComfyUI/custom_nodes/vrpsr``) or
import it as the ``comfy_nodes`` package. ``vrpsr_plugin`` must be installed in the same Python; ComfyUI itself
is optional and only looked up at run time (``comfy_bridge``).
"""
import vrpsr_plugin  # noqa: F401  (compat shims and registries, before anything imports basicsr)

from . import comfy_bridge
from .eic_nodes import NODE_CLASS_MAPPINGS as _EIC_NODES, NODE_DISPLAY_NAME_MAPPINGS as _EIC_NAMES
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

NODE_CLASS_MAPPINGS = {**NODE_CLASS_MAPPINGS, **_EIC_NODES}  # ASSR-EIC image codec nodes (docs/eic.md)
NODE_DISPLAY_NAME_MAPPINGS = {**NODE_DISPLAY_NAME_MAPPINGS, **_EIC_NAMES}

comfy_bridge.register_model_folder()

WEB_DIRECTORY = './web'  # web/vrpsr_report.js shows each node's ``ui.text`` (achieved rate, report) on the node

__all__ = ['NODE_CLASS_MAPPINGS', 'NODE_DISPLAY_NAME_MAPPINGS', 'WEB_DIRECTORY']
