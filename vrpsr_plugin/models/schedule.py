"""Optimiser, learning-rate schedule and gradient accumulation of App. A.1, in BasicSR's model interface.

AdamW (PyTorch defaults, weight decay 0.01) and diffusers' ``get_scheduler`` (linear warm-up then cosine over the
run). The schedule counts *optimiser* steps: with ``accumulate_grad_batches: N`` each BasicSR iteration is one
micro-batch and the optimiser (and scheduler) step every N iterations, so ``8 GPUs x micro-batch x N = 64``.
The scheduler is a ``LambdaLR`` and is saved/resumed by BasicSR's training state.
"""
from typing import Any, Dict, Iterable, List

import torch
from torch.optim.lr_scheduler import LambdaLR

_OPTIMIZERS = ('Adam', 'AdamW')


def build_optimizer(optim_opt: Dict[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``{type: AdamW, lr: 2e-5, weight_decay: 0.01, betas: [0.9, 0.999]}`` -> optimiser (App. A.1)."""
    opt = dict(optim_opt)
    optim_type = opt.pop('type', 'AdamW')
    if optim_type not in _OPTIMIZERS:
        raise ValueError(f'optimizer type {optim_type!r} is not supported; use one of {_OPTIMIZERS}')
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError('no trainable parameters for the optimizer')
    if 'lr' not in opt:
        raise ValueError(f'optimizer options need lr, got {optim_opt}')
    if optim_type == 'AdamW':
        opt.setdefault('weight_decay', 0.01)
    return getattr(torch.optim, optim_type)(params, **opt)


def build_scheduler(scheduler_opt: Dict[str, Any], optimizer: torch.optim.Optimizer) -> LambdaLR:
    """``{type: cosine, warmup_steps: W, total_steps: T}`` -> diffusers' linear-warm-up + cosine ``LambdaLR``.

    ``type`` is any diffusers scheduler name ('cosine' in the paper, 'constant_with_warmup', 'linear', ...);
    steps are optimiser steps.
    """
    opt = dict(scheduler_opt)
    name = opt.pop('type', 'cosine')
    try:
        warmup, total = int(opt.pop('warmup_steps', 0)), int(opt.pop('total_steps'))
    except KeyError:
        raise ValueError(f'scheduler options need total_steps (optimizer steps), got {scheduler_opt}') from None
    if total <= 0 or not 0 <= warmup <= total:
        raise ValueError(f'scheduler needs 0 <= warmup_steps <= total_steps and total_steps > 0, got {scheduler_opt}')
    from diffusers.optimization import get_scheduler  # diffusers imports in seconds: only when training starts
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total, **opt)


class AccumulationMixin:
    """For BasicSR models: optimiser steps every ``accumulate_grad_batches`` iterations, schedulers step with them.

    Subclasses call :meth:`backward` with each micro-batch loss and :meth:`step_if_due` after it; the decision
    depends only on the iteration number, so a resumed run continues identically (checkpoint frequency must be a
    multiple of N, checked by :meth:`check_accumulation`).
    """
    opt: Dict[str, Any]
    schedulers: List[Any]

    @property
    def accumulate(self) -> int:
        n = int(self.opt['train'].get('accumulate_grad_batches', 1))
        if n < 1:
            raise ValueError(f'accumulate_grad_batches must be >= 1, got {n}')
        return n

    def check_accumulation(self) -> None:
        """A checkpoint must fall on an optimiser step, or partial gradients would be lost on resume."""
        freq = self.opt.get('logger', {}).get('save_checkpoint_freq')
        if freq is not None and int(freq) % self.accumulate:
            raise ValueError(f'logger.save_checkpoint_freq ({freq}) must be a multiple of '
                             f'train.accumulate_grad_batches ({self.accumulate})')

    def is_step_due(self, current_iter: int) -> bool:
        """Whether this iteration (1-based) ends an accumulation window."""
        return current_iter % self.accumulate == 0

    def setup_grad_scaler(self, nets: Iterable[torch.nn.Module], device: torch.device) -> None:
        """fp16 loss scaling (``torch.amp.GradScaler``) when a network the loss passes through computes in
        float16 (``computes_in_fp16``); bf16 and fp32 need none and get a disabled scaler (a no-op)."""
        fp16 = any(getattr(net, 'computes_in_fp16', False) for net in nets)
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=fp16)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a micro-batch loss scaled by 1/N (the mean over the accumulated batch) and by the fp16
        loss scale."""
        self.grad_scaler.scale(loss / self.accumulate).backward()

    def step_optimizers(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Step and clear each optimiser through the scaler (an fp16 step with inf/NaN gradients is skipped and
        the scale lowered), then update the scale."""
        for optimizer in optimizers:
            self.grad_scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.update()

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """BasicSR calls this every iteration; our schedulers step with the optimiser instead (see step())."""
        if warmup_iter > 0:
            raise ValueError('use train.scheduler.warmup_steps (diffusers schedule), not train.warmup_iter')
