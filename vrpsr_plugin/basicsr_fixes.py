"""Replacements for the parts of basicsr 1.4.2's train pipeline that assume CUDA, replay samples or can leave a
half-written checkpoint. Applied by our train/test entry points; site-packages is never patched on disk.

- ``load_resume_state`` loads the state on the CPU (basicsr maps it onto ``torch.cuda.current_device()``; each
  model moves tensors to ``self.device`` itself). A corrupt or truncated newest state under ``--auto_resume`` falls
  back, with a warning naming the file, to the newest state that loads.
- ``BaseModel.save_network`` / ``save_training_state`` write atomically (:mod:`vrpsr_plugin.atomic_io`: a kill -9
  never leaves a truncated file under its final name) and raise on failure (basicsr retries, then only logs).
  The training state also holds the RNG states (python, NumPy, torch CPU and CUDA), so a resumed run is exact.
- ``BaseModel.load_network`` turns an unreadable or mismatched pretrained file into a
  :class:`~vrpsr_plugin.archs.checkpoint.CheckpointError` naming the file.
- ``init_dist`` / ``BaseModel.model_to_device`` run DDP on CPUs (gloo) as well as GPUs
  (:mod:`vrpsr_plugin.distributed`).
- ``parse_options`` resolves relative ``path.pretrain_network_*`` / ``path.resume_state`` against $VRPSR_ROOT.
- The train pipeline's sampler becomes :class:`~vrpsr_plugin.data.fresh_draws.FreshDrawSampler`, which gives the
  plugin's datasets a fresh, reproducible draw every epoch.
"""
import contextlib
import os
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from basicsr import test as basicsr_test
from basicsr import train as basicsr_train
from basicsr.models.base_model import BaseModel
from basicsr.utils import check_resume, get_root_logger, scandir
from basicsr.utils.dist_util import master_only
from basicsr.utils.options import parse_options as _basicsr_parse_options

from vrpsr_plugin.archs.checkpoint import CheckpointError, load_checkpoint_file
from vrpsr_plugin.atomic_io import torch_save

_basicsr_load_network = BaseModel.load_network


def rng_state() -> Dict[str, Any]:
    """The global RNG states a training step may draw from."""
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation) without moving the training RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _read_state(path: str) -> Dict[str, Any]:
    try:
        # States hold optimiser and scheduler objects (collections.Counter, ...), so this is a full unpickle.
        state = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as err:  # truncated zip, wrong file type, unpickling error
        raise CheckpointError(f'cannot load training state {path!r} (corrupt or not a basicsr .state file): '
                              f'{str(err).split(". ")[0]}') from None
    if not isinstance(state, dict) or 'iter' not in state:
        raise CheckpointError(f'training state {path!r} has no "iter" entry: not a basicsr .state file')
    return state


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The resume state, loaded on the CPU: ``path.resume_state``, or with ``--auto_resume`` the newest ``*.state``
    in the experiment's training_states folder (wherever the run is started from) that loads; a newer one that
    does not is skipped with a warning naming it."""
    path = opt['path'].get('resume_state')
    if opt['auto_resume']:
        state_dir = opt['path']['training_states']
        iters = sorted((int(name.split('.state')[0]) for name in scandir(state_dir, suffix='.state', recursive=False)),
                       reverse=True) if os.path.isdir(state_dir) else []
        for it in iters:
            candidate = os.path.join(state_dir, f'{it}.state')
            try:
                state = _read_state(candidate)
            except CheckpointError as err:
                get_root_logger().warning(f'{err}; falling back to the previous training state')
                continue
            opt['path']['resume_state'] = candidate
            check_resume(opt, state['iter'])
            return state
        if iters:
            raise CheckpointError(f'no training state in {state_dir} loads ({len(iters)} tried)')
        path = None
    if not path:
        return None
    state = _read_state(path)
    check_resume(opt, state['iter'])
    return state


@master_only
def save_network(self: BaseModel, net, net_label: str, current_iter: int, param_key='params') -> None:
    """basicsr's ``models/<net_label>_<iter>.pth`` (``latest`` for -1): ``{param_key: state on the CPU}`` for one
    net or lists of nets and keys, plus ``'arch'`` (the net's ``arch_spec``) when it has one, written atomically,
    by rank 0 only (as basicsr's)."""
    nets = net if isinstance(net, list) else [net]
    keys = param_key if isinstance(param_key, list) else [param_key]
    if len(nets) != len(keys):
        raise ValueError(f'{len(nets)} networks but {len(keys)} param keys')
    save = {key: {k[len('module.'):] if k.startswith('module.') else k: v.cpu()
                  for k, v in self.get_bare_model(n).state_dict().items()} for n, key in zip(nets, keys)}
    spec = getattr(self.get_bare_model(nets[0]), 'arch_spec', None)
    if spec is not None:  # inference.load_model rebuilds the net from the file alone
        save['arch'] = spec
    name = f'{net_label}_{"latest" if current_iter == -1 else current_iter}.pth'
    torch_save(save, os.path.join(self.opt['path']['models'], name))


@master_only
def save_training_state(self: BaseModel, epoch: int, current_iter: int) -> None:
    """basicsr's ``training_states/<iter>.state`` (optimisers, schedulers) plus the RNG states (and an fp16 run's
    loss scale), written atomically after the networks of the same iteration (so a complete state always has its
    networks), by rank 0 only."""
    if current_iter == -1:
        return
    state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
             'schedulers': [s.state_dict() for s in self.schedulers], 'rng': rng_state()}
    scaler = getattr(self, 'grad_scaler', None)
    if scaler is not None and scaler.is_enabled():  # fp16 loss scale (CodecLoopModel), resumed with the run
        state['grad_scaler'] = scaler.state_dict()
    torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))


def load_network(self: BaseModel, net, load_path: str, strict: bool = True, param_key: str = 'params') -> None:
    """basicsr's ``load_network``; an unreadable file or one that does not fit ``net`` is a CheckpointError."""
    try:
        _basicsr_load_network(self, net, load_path, strict, param_key)
    except Exception as err:
        load_checkpoint_file(load_path)  # raises the CheckpointError of an unreadable file
        if isinstance(err, (RuntimeError, KeyError)):  # load_state_dict's mismatch, a missing param key
            raise CheckpointError(f'{load_path} does not fit {type(self.get_bare_model(net)).__name__}: '
                                  f'{err}') from None
        raise


def resolve_option_paths(opt: Dict[str, Any], root: str) -> None:
    """With $VRPSR_ROOT set, relative ``path.pretrain_network_*`` and ``path.resume_state`` entries name files
    under the root, where earlier stages wrote their experiments/ (a file found only relative to the working
    directory is kept)."""
    if not os.environ.get('VRPSR_ROOT'):
        return
    for key, value in opt['path'].items():
        if (key.startswith('pretrain_network') or key == 'resume_state') and isinstance(value, str) and value \
                and not os.path.isabs(value):
            under_root = os.path.join(root, value)
            if os.path.exists(under_root) or not os.path.exists(value):
                opt['path'][key] = under_root


def parse_options(root: str, is_train: bool = True):
    """basicsr's ``parse_options`` (command line + option file), then :func:`resolve_option_paths`."""
    try:
        opt, args = _basicsr_parse_options(root, is_train=is_train)
    except KeyError as err:  # basicsr indexes the option dict without checks
        raise KeyError(f'the option file has no {err.args[0]!r} entry (needed by basicsr, or named by '
                       '--force_yml)') from None
    resolve_option_paths(opt, root)
    return opt, args


def apply() -> None:
    """Install the replacements into basicsr's train module and BaseModel (idempotent)."""
    from vrpsr_plugin import distributed
    from vrpsr_plugin.data.fresh_draws import FreshDrawSampler
    distributed.apply()  # DDP on GPUs (NCCL) and CPUs (gloo)
    basicsr_train.load_resume_state = load_resume_state
    basicsr_train.EnlargedSampler = FreshDrawSampler
    BaseModel.save_network = save_network
    BaseModel.save_training_state = save_training_state
    BaseModel.load_network = load_network
    basicsr_test.parse_options = parse_options
