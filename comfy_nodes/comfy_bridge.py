"""Guarded access to ComfyUI's device, memory, progress and model-folder handling, with plain-torch fallbacks.

None of ComfyUI is on PyPI. This module never imports ComfyUI at import time: every function looks up
``comfy.model_management``, ``comfy.utils`` or ``folder_paths`` when it is called and falls back to plain torch
(CUDA when available, else CPU; a counting progress bar; explicit paths) when they are absent. Inside ComfyUI the
nodes therefore follow core's upscale node: device from ``get_torch_device()``, ``free_memory()`` before moving a
model to it, the model back on the offload device afterwards, ``comfy.utils.ProgressBar`` and ``folder_paths``.
"""
import importlib
import os
from types import ModuleType
from typing import List, Optional, Tuple

import torch
from torch import nn

MODEL_FOLDER = 'vrpsr'
UPSCALE_FOLDER = 'upscale_models'
# Checkpoints (.pth/.safetensors), BasicSR option files (.yml) and save_pretrained directories (listed as dirs).
MODEL_EXTENSIONS = {'.pth', '.pt', '.safetensors', '.yml', '.yaml'}


def _optional_module(name: str) -> Optional[ModuleType]:
    """The ComfyUI module ``name`` when running inside ComfyUI, else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def model_management() -> Optional[ModuleType]:
    return _optional_module('comfy.model_management')


def folder_paths() -> Optional[ModuleType]:
    return _optional_module('folder_paths')


# ---------------------------------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    """Where models run: ComfyUI's ``get_torch_device()``, else CUDA when available, else the CPU."""
    mm = model_management()
    if mm is not None:
        return torch.device(mm.get_torch_device())
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def offload_device() -> torch.device:
    """Where idle models wait: ComfyUI's ``unet_offload_device()``, else the CPU."""
    mm = model_management()
    if mm is not None and hasattr(mm, 'unet_offload_device'):
        return torch.device(mm.unet_offload_device())
    return torch.device('cpu')


def output_device() -> torch.device:
    """Where node outputs live: ComfyUI's ``intermediate_device()`` (the CPU by default), else the CPU."""
    mm = model_management()
    if mm is not None and hasattr(mm, 'intermediate_device'):
        return torch.device(mm.intermediate_device())
    return torch.device('cpu')


def module_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def free_memory(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to unload other models until ``num_bytes`` fit on ``device`` (no-op without ComfyUI)."""
    mm = model_management()
    if mm is not None:
        mm.free_memory(num_bytes, device)


def soft_empty_cache() -> None:
    """Release cached accelerator memory (ComfyUI's ``soft_empty_cache`` when present)."""
    mm = model_management()
    if mm is not None and hasattr(mm, 'soft_empty_cache'):
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def throw_if_interrupted() -> None:
    """Honour ComfyUI's cancel button between work items (no-op without ComfyUI)."""
    mm = model_management()
    if mm is not None and hasattr(mm, 'throw_exception_if_processing_interrupted'):
        mm.throw_exception_if_processing_interrupted()


# ---------------------------------------------------------------------------------------------------- progress
class CountingProgressBar:
    """Fallback with the part of ``comfy.utils.ProgressBar``'s API the nodes use."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0

    def update(self, value: int) -> None:
        self.current += value

    def update_absolute(self, value: int, total: Optional[int] = None, preview=None) -> None:
        if total is not None:
            self.total = total
        self.current = value


def progress_bar(total: int):
    """``comfy.utils.ProgressBar(total)`` inside ComfyUI, else a :class:`CountingProgressBar`."""
    utils = _optional_module('comfy.utils')
    if utils is not None and hasattr(utils, 'ProgressBar'):
        return utils.ProgressBar(total)
    return CountingProgressBar(total)


# ---------------------------------------------------------------------------------------------------- model folders
def register_model_folder() -> Optional[str]:
    """Register ``models/vrpsr`` with ``folder_paths`` (so ``extra_model_paths.yaml`` can add more); returns the
    default folder, or None without ComfyUI."""
    fp = folder_paths()
    if fp is None:
        return None
    default = os.path.join(fp.models_dir, MODEL_FOLDER)
    fp.add_model_folder_path(MODEL_FOLDER, default)
    paths, extensions = fp.folder_names_and_paths[MODEL_FOLDER]
    if isinstance(extensions, set):
        extensions.update(MODEL_EXTENSIONS)
    else:
        fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)
    return default


def model_folders() -> List[str]:
    """The registered ``vrpsr`` folders (empty without ComfyUI)."""
    fp = folder_paths()
    if fp is None or MODEL_FOLDER not in getattr(fp, 'folder_names_and_paths', {}):
        return []
    return list(fp.get_folder_paths(MODEL_FOLDER))


def _entries() -> List[Tuple[str, str]]:
    """(name, full path) of model files (by extension) and save_pretrained directories directly inside the
    ``vrpsr`` folders, earlier folders first; hidden entries are skipped."""
    found = []
    for folder in model_folders():
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith('.'):
                continue
            if entry.is_dir() or os.path.splitext(entry.name)[1].lower() in MODEL_EXTENSIONS:
                found.append((entry.name, entry.path))
    return found


def list_models() -> List[str]:
    """Names the loader offers: model files and save_pretrained directories in the ``vrpsr`` folders."""
    return sorted({name for name, _ in _entries()})


def resolve_model(name: str) -> str:
    """Full path of the listed model ``name``; FileNotFoundError naming the folders searched."""
    for listed, path in _entries():
        if listed == name:
            return path
    folders = model_folders()
    where = ', '.join(folders) if folders else 'no vrpsr model folder (ComfyUI is not loaded)'
    raise FileNotFoundError(f'VRPSR model {name!r} not found in {where}')


def output_directory() -> Optional[str]:
    """ComfyUI's output folder (where SaveImage writes), or None without ComfyUI."""
    fp = folder_paths()
    return None if fp is None else fp.get_output_directory()


def upscale_models_dir() -> Optional[str]:
    """ComfyUI's first ``upscale_models`` folder (where stock upscale loaders look), or None without ComfyUI."""
    fp = folder_paths()
    if fp is None:
        return None
    folders = fp.get_folder_paths(UPSCALE_FOLDER)
    return folders[0] if folders else None
