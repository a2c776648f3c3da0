"""Replacements for the parts of basicsr 1.4.2's train pipeline that assume CUDA or replay samples.

basicsr's ``train.load_resume_state`` maps the resume state onto ``torch.cuda.current_device()``, which fails on
a CPU machine. Ours loads it on the CPU (each model moves tensors to ``self.device`` itself) and turns a corrupt
or truncated state file into an error that names the file. Applied by our train/test entry points; site-packages
is never patched on disk.

The train pipeline's sampler becomes :class:`~vrpsr_plugin.data.fresh_draws.FreshDrawSampler`, which gives the
plugin's datasets a fresh, reproducible draw every epoch.
"""
import os
from typing import Any, Dict, Optional

import torch
from basicsr import train as basicsr_train
from basicsr.utils import check_resume, scandir


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Find the resume state as basicsr does (``--auto_resume``: newest ``*.state`` in the experiment's
    training_states folder, wherever the run is started from) and load it on the CPU."""
    path = opt['path'].get('resume_state')
    if opt['auto_resume']:
        state_dir = opt['path']['training_states']
        iters = [int(name.split('.state')[0]) for name in scandir(state_dir, suffix='.state', recursive=False)
                 ] if os.path.isdir(state_dir) else []
        if iters:
            path = opt['path']['resume_state'] = os.path.join(state_dir, f'{max(iters)}.state')
    if not path:
        return None
    try:
        # States hold optimiser and scheduler objects (collections.Counter, ...), so this is a full unpickle.
        state = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as err:  # truncated zip, wrong file type, unpickling error
        raise RuntimeError(f'cannot load training state {path!r} (corrupt or not a basicsr .state file): '
                           f'{err}') from err
    if not isinstance(state, dict) or 'iter' not in state:
        raise RuntimeError(f'training state {path!r} has no "iter" entry: not a basicsr .state file')
    check_resume(opt, state['iter'])
    return state


def apply() -> None:
    """Install the replacements into basicsr's train module (idempotent)."""
    from vrpsr_plugin.data.fresh_draws import FreshDrawSampler
    basicsr_train.load_resume_state = load_resume_state
    basicsr_train.EnlargedSampler = FreshDrawSampler
