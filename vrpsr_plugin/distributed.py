"""Distributed training on GPUs (NCCL) and CPUs (gloo) with BasicSR's launcher (``--launcher pytorch``, torchrun).

basicsr 1.4.2's ``init_dist`` calls ``torch.cuda.set_device(rank % device_count())`` (a ZeroDivisionError without
a GPU) and defaults to NCCL, and ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]``
to DDP. The replacements here pick NCCL with one GPU per process (``LOCAL_RANK``) when CUDA is available and gloo
on the CPU otherwise, and wrap in DDP with ``device_ids`` only on a GPU. Installed by
:func:`vrpsr_plugin.basicsr_fixes.apply`.

Threads per rank: each rank gets ``cpu_count // LOCAL_WORLD_SIZE`` cores. torch keeps torchrun's
``OMP_NUM_THREADS`` when set; the real encoders (x264/x265/vvenc) run with ``VRPSR_CODEC_THREADS`` threads (set
here when unset, read by :func:`codec_threads`), so ranks x encoder threads never exceed the machine. With
``num_worker_per_gpu: W`` DataLoader workers encoding too, set ``VRPSR_CODEC_THREADS`` to cores / (ranks x W).
"""
import os
from typing import Any, Optional

CODEC_THREADS_ENV = 'VRPSR_CODEC_THREADS'


def codec_threads() -> Optional[int]:
    """Threads for one encoder call (``$VRPSR_CODEC_THREADS``), or None: the encoder's own default (all cores)."""
    value = os.environ.get(CODEC_THREADS_ENV)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f'{CODEC_THREADS_ENV} must be a positive integer, got {value!r}')
    return int(value)


def threads_per_rank() -> int:
    """This rank's share of the machine's cores: ``cpu_count // LOCAL_WORLD_SIZE`` (at least 1)."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', 1)))


def init_dist(launcher: str, backend: Optional[str] = None, **kwargs: Any) -> None:
    """basicsr's ``init_dist`` for ``launcher='pytorch'`` without its CUDA assumption (see the module docstring);
    ``'slurm'`` stays basicsr's (GPU clusters)."""
    import torch
    import torch.distributed as dist
    if launcher != 'pytorch':
        from basicsr.utils.dist_util import init_dist as basicsr_init_dist
        basicsr_init_dist(launcher, backend or 'nccl', **kwargs)
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', os.environ['RANK'])) % torch.cuda.device_count())
    dist.init_process_group(backend=backend or ('nccl' if cuda else 'gloo'), **kwargs)
    threads = threads_per_rank()
    if 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(threads)
    os.environ.setdefault(CODEC_THREADS_ENV, str(threads))


def model_to_device(self: Any, net: Any) -> Any:
    """``BaseModel.model_to_device``: DDP with ``device_ids`` on a GPU, none on the CPU (gloo)."""
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        ids = None
        if self.device.type == 'cuda':
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        return DistributedDataParallel(net, device_ids=ids,
                                       find_unused_parameters=self.opt.get('find_unused_parameters', False))
    if self.opt['num_gpu'] > 1:
        return DataParallel(net)
    return net


def apply() -> None:
    """Install :func:`init_dist` (where basicsr's ``parse_options`` calls it) and :func:`model_to_device`."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import options
    options.init_dist = init_dist
    BaseModel.model_to_device = model_to_device
