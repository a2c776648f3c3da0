"""Condition heads shared by the codec-aware archs (App. B.3, Fig. S1): the 4-D codec condition c is embedded
into t by :class:`CodecEmbedding` and tiny MLP heads map t to per-channel biases (or FiLM parameters).

The last linear layer of every head is zero-initialised, so a conditioned network equals its plain base at
initialisation.
"""
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint
from vrpsr_plugin.archs.codec_embedding import CodecEmbedding
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

# state-dict prefix of every condition parameter; a plain checkpoint may lack exactly these keys
HEADS_PREFIX = 'cond_heads.'


class ConditionHead(nn.Sequential):
    """Linear(in_dim, hidden) -> SiLU -> Linear(hidden, out_dim); the last layer starts at zero (App. B.3)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)


class ConditionHeads(nn.Module):
    """The embedding of c plus one :class:`ConditionHead` per injection point.

    ``forward(cond, x)`` checks ``cond`` against the batch ``x`` and returns one ``(B, C_i, 1, 1)`` tensor per head,
    ready to broadcast over a feature map.
    """

    def __init__(self, channels: Sequence[int], codecs: Sequence[str] = CONDITION_CODECS,
                 emb_dim_per_scalar: int = 64, head_hidden: int = 64, extra_scalars: int = 0) -> None:
        super().__init__()
        if not codecs or len(set(codecs)) != len(codecs):
            raise ValueError(f'codecs must be a non-empty list of distinct names, got {codecs!r}')
        self.codecs = tuple(codecs)
        # ``extra_scalars`` columns follow the bpp (ASSR-EIC appends the rescaling factor s)
        self.embedding = CodecEmbedding(num_scalars=len(self.codecs) + 1 + extra_scalars,
                                        dim_per_scalar=emb_dim_per_scalar)
        self.heads = nn.ModuleList(ConditionHead(self.embedding.out_dim, c, head_hidden) for c in channels)

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, cond: torch.Tensor, x: torch.Tensor) -> List[torch.Tensor]:
        cond = check_condition(cond, x, self.embedding.num_scalars)
        # embed in fp32: a bf16 bpp (0.8765 -> 0.875) moves the high-frequency sinusoids completely
        t = self.embedding(cond.to(device=x.device, dtype=torch.float32)).to(x.dtype)
        return [head(t)[:, :, None, None] for head in self.heads]


class CodecAwareMixin:
    """Shared surface of the codec-aware archs: ``codec_aware``, ``codecs``, ``arch_spec`` and loading of plain
    checkpoints. Subclasses set ``self.arch_options`` (their constructor options) and ``self.cond_heads``."""

    codec_aware = True
    arch_options: Dict[str, Any]
    cond_heads: ConditionHeads

    @property
    def codecs(self) -> Tuple[str, ...]:
        """The one-hot order of the condition this net reads."""
        return self.cond_heads.codecs

    @property
    def arch_spec(self) -> Dict[str, Any]:
        """``{'type': registry name, **options}``: rebuilds this net with ``basicsr.archs.build_network``."""
        return {'type': type(self).__name__, **self.arch_options}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; strict loading also takes a plain checkpoint (one without any condition
        head key: the heads stay zero, App. B.3), so stage 2's ``pretrain_network_g`` can be a plain Real-ESRGAN
        checkpoint with ``strict_load_g: true``. A checkpoint with some heads must have all of them."""
        if strict and not any(k.startswith(HEADS_PREFIX) for k in state_dict):
            load_state_dict_strict(self, state_dict, allowed_missing_prefixes=(HEADS_PREFIX,))
            return nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_plain_checkpoint(cls, path: str, **options: Any) -> nn.Module:
        """Build the net from ``options`` and load a plain (unconditioned) checkpoint (``params_ema``, ``params``
        or bare) strictly: only the condition heads may be missing; they stay zero, so the net equals the plain
        one until trained (App. B.3)."""
        model = cls(**options)
        load_state_dict_strict(model, read_checkpoint(str(path)), allowed_missing_prefixes=(HEADS_PREFIX,),
                               source=str(path))
        return model


def check_condition(cond: torch.Tensor, x: torch.Tensor, num_scalars: int) -> torch.Tensor:
    """Validate the (B, num_scalars) condition for the batch ``x`` (§3.2.3): every conditioned arch and simulator
    calls this; errors name the problem."""
    if not isinstance(cond, torch.Tensor):
        raise TypeError(f'cond must be a torch.Tensor of shape (B, {num_scalars}) or None, got {type(cond).__name__}')
    if cond.dim() != 2 or cond.shape[1] != num_scalars:
        raise ValueError(f'cond must have shape (B, {num_scalars}), a B x {num_scalars} tensor [one-hot codec..., bpp] '
                         f'(CodecCondition.collate), got {tuple(cond.shape)}')
    if cond.shape[0] != x.shape[0]:
        raise ValueError(f'batch sizes differ: cond has batch size {cond.shape[0]} but the input has {x.shape[0]}')
    if not torch.isfinite(cond).all():
        raise ValueError('cond contains NaN or inf')
    if (cond[:, -1] < 0).any():
        raise ValueError('cond must have bpp (last column) >= 0')
    return cond


@contextmanager
def added_to_outputs(modules: Sequence[nn.Module], biases: Optional[Sequence[torch.Tensor]]) -> Iterator[None]:
    """Within the block, ``modules[i]``'s output gets ``biases[i]`` added (forward hooks removed on exit).

    This keeps basicsr's own ``forward`` code (residual scaling, trunk skip, upsampler) running unchanged while
    the condition biases are injected at the chosen points; with ``biases=None`` nothing is hooked.
    """
    if biases is None:
        yield
        return
    if len(biases) != len(modules):
        raise ValueError(f'{len(biases)} biases for {len(modules)} injection points')
    handles = [module.register_forward_hook(_adder(bias)) for module, bias in zip(modules, biases)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _adder(bias: torch.Tensor):
    def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        # in place: saves a feature-map allocation per injection point; the hooked outputs (a conv's, or an RDB's
        # final add) are not saved for backward, and autograd's version counter would flag it if they were
        return output.add_(bias)
    return hook


def unshuffle_padding(height: int, width: int, factor: int) -> Tuple[int, int]:
    """Bottom/right padding that makes ``height`` and ``width`` divisible by ``factor``."""
    return (-height) % factor, (-width) % factor


def pad_to_multiple(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Pad the bottom/right of ``x`` to a multiple of ``factor`` (reflect, or replicate where the image is too
    small to reflect); pixel-unshuffle needs divisible sizes."""
    pad_h, pad_w = unshuffle_padding(x.shape[-2], x.shape[-1], factor)
    if not (pad_h or pad_w):
        return x
    mode = 'reflect' if pad_h < x.shape[-2] and pad_w < x.shape[-1] else 'replicate'
    return nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
