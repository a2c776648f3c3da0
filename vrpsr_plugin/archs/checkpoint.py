"""Checkpoint reading and strict loading shared by every arch (the authors' code loaded non-strictly and
dropped keys silently; we never do)."""
import os
import re
from typing import Any, Dict, Iterable, Mapping

import torch
from torch import nn

from vrpsr_plugin.commands import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is corrupt, truncated, not a checkpoint, or does not fit the network."""


def _load_failure(err: Exception) -> str:
    """A one-line reason for a failed ``torch.load(weights_only=True)``, without torch's advice to unpickle
    arbitrary code (``weights_only=False``)."""
    text = str(err)
    found = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)', text, re.S)
    if found and 'Unsupported global' in found.group(1):
        return f'it holds Python objects, not only tensors ({found.group(1).strip()}); it is not loaded'
    if found or 'Weights only load failed' in text or isinstance(err, (KeyError, EOFError)):
        return 'not a PyTorch checkpoint'  # (torch's legacy reader fails with a KeyError on garbage)
    return text.split('. ')[0].strip()


def load_checkpoint_file(path: str) -> Any:
    """The object stored in a ``.pth`` (tensors only, ``weights_only=True``) or ``.safetensors`` file, on the CPU.
    A missing, truncated or non-checkpoint file raises an error naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise CheckpointError(f'cannot read checkpoint {path!r} (corrupt, truncated or not a checkpoint): '
                              f'{_load_failure(err)}') from None


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Load a ``.pth``/``.safetensors`` file on the CPU and return its state dict.

    Accepts BasicSR's ``{'params_ema': ...}`` / ``{'params': ...}`` layouts (``params_ema`` preferred) and bare
    state dicts. A missing, truncated or non-checkpoint file raises an error naming the file.
    """
    return unwrap_state_dict(load_checkpoint_file(path), source=str(path))


def unwrap_state_dict(obj: Any, source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Return the state dict inside BasicSR's ``params_ema``/``params`` wrappers, or ``obj`` itself."""
    if isinstance(obj, Mapping):
        for key in ('params_ema', 'params', 'state_dict'):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} does not hold a state dict of tensors')
    # DataParallel/DDP checkpoints prefix every key with "module."
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()}


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor],
                           allowed_missing_prefixes: Iterable[str] = (), source: str = 'checkpoint') -> None:
    """Load ``state`` into ``module``. Only keys starting with one of ``allowed_missing_prefixes`` may be
    missing; any other missing key, any unexpected key and any shape mismatch is an error listing the keys."""
    allowed = tuple(allowed_missing_prefixes)
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allowed)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f'{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in state
                  if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f'{name} ({len(keys)}): {", ".join(keys[:20])}{" ..." if len(keys) > 20 else ""}'
                 for name, keys in (('missing', missing), ('unexpected', unexpected),
                                    ('shape mismatch', mismatched)) if keys]
        raise CheckpointError(f'{source} does not match the expected arch {describe_arch(module)}; '
                              + '; '.join(parts))
    module.load_state_dict(state, strict=False)


def describe_arch(module: nn.Module) -> str:
    """``Name(option=value, ...)`` from the module's ``arch_spec`` (codec-aware nets), else its class name."""
    spec = dict(getattr(module, 'arch_spec', None) or {})
    name = spec.pop('type', type(module).__name__)
    return f'{name}({", ".join(f"{k}={v}" for k, v in spec.items())})' if spec else name
