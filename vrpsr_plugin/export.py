"""Fold a fixed codec condition into a plain Real-ESRGAN checkpoint (``vrpsr export``).

For a constant condition c the heads' biases (App. B.3) are constants, so they fold into convolution biases:

- CodecAwareRRDBNet adds b to the output of ``rdb1``/``rdb2``; a ResidualDenseBlock returns
  ``conv5(...) * 0.2 + x`` (basicsr), so ``conv5.bias += b / 0.2`` gives the same output.
- CodecAwareSRVGGNetCompact adds b to a feature conv's output: ``conv.bias += b``.

The result is a plain RRDBNet / SRVGGNetCompact state dict saved as ``{'params_ema': state}``, which basicsr,
Real-ESRGAN's inference, spandrel and ComfyUI's upscale loader load unchanged.
"""
import argparse
import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict
from vrpsr_plugin.archs.codec_aware_rrdbnet_arch import CodecAwareRRDBNet
from vrpsr_plugin.archs.codec_aware_srvgg_arch import CodecAwareSRVGGNetCompact
from vrpsr_plugin.archs.condition_heads import HEADS_PREFIX
from vrpsr_plugin.codecs.condition import CodecCondition
from vrpsr_plugin.atomic_io import torch_save
from vrpsr_plugin.commands import UserError
from vrpsr_plugin.inference import build_from_spec, load_model

# ResidualDenseBlock.forward in basicsr returns x5 * 0.2 + x
RDB_RESIDUAL_SCALE = 0.2
_CONDITION_OPTIONS = ('codecs', 'emb_dim_per_scalar', 'head_hidden')


def _fold_targets(model: nn.Module) -> Tuple[str, List[Tuple[str, float]]]:
    """The plain arch name and, per condition head, (conv bias key, factor applied to the head's bias)."""
    if isinstance(model, CodecAwareRRDBNet):
        return 'RRDBNet', [(f'body.{i}.{rdb}.conv5.bias', 1.0 / RDB_RESIDUAL_SCALE)
                           for i in range(len(model.body)) for rdb in ('rdb1', 'rdb2')]
    if isinstance(model, CodecAwareSRVGGNetCompact):
        return 'SRVGGNetCompact', [(f'body.{i}.bias', 1.0) for i in range(0, 2 * (model.num_conv + 1), 2)]
    raise TypeError(f'cannot fold the condition of {type(model).__name__}: only CodecAwareRRDBNet and '
                    'CodecAwareSRVGGNetCompact export to plain Real-ESRGAN checkpoints')


def fold_condition(model: nn.Module, condition: CodecCondition) -> Tuple[Dict[str, object], Dict[str, torch.Tensor]]:
    """Return ``(arch spec, state dict)`` of the plain network equal to ``model(x, condition)`` for every x."""
    plain_type, targets = _fold_targets(model)
    param = next(model.parameters())
    cond = condition.vector(model.codecs)[None].to(param.device)
    batch_like = torch.zeros(1, device=param.device, dtype=param.dtype)
    with torch.no_grad():  # the biases exactly as forward() computes them (same dtype and device)
        biases = [b[0, :, 0, 0] for b in model.cond_heads(cond, batch_like)]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith(HEADS_PREFIX)}
    for (key, factor), bias in zip(targets, biases):
        state[key] = (state[key].double() + factor * bias.cpu().double()).to(state[key].dtype)
    spec = {'type': plain_type, **{k: v for k, v in model.arch_options.items() if k not in _CONDITION_OPTIONS}}
    return spec, state


class ExportError(UserError):
    """The folded network does not reproduce the conditioned one (non-finite weights, or beyond tolerance)."""


def export_plain(model: nn.Module, condition: CodecCondition, path: str, tolerance: float = 1e-4) -> nn.Module:
    """Fold ``condition`` into ``model``, check the plain net against ``model(x, c)`` on a seeded probe image and
    only then write the plain checkpoint ``{'params_ema': state}`` atomically. Returns the plain network
    (basicsr's RRDBNet / SRVGGNetCompact). Raises :class:`ExportError`, writing nothing, when the error is not
    finite (NaN/inf weights) or exceeds ``tolerance``."""
    spec, state = fold_condition(model, condition)
    plain = build_from_spec(spec)
    load_state_dict_strict(plain, state, source='folded state')
    plain = plain.to(next(model.parameters()).device).eval()
    error = max_fold_error(model, plain, condition, probe_image(model))
    if not error <= tolerance:  # also true for NaN
        why = '; the checkpoint holds non-finite weights' if not math.isfinite(error) else ''
        raise ExportError(f'the export differs from the conditioned net by {error:.2e} (tolerance {tolerance:g}) '
                          f'on a probe image{why}; {path} not written')
    torch_save({'params_ema': state}, path)
    return plain


def probe_image(model: nn.Module) -> torch.Tensor:
    """The seeded 1 x 3 x 32 x 32 image the export is checked on, on the model's device."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 32, 32, generator=generator).to(next(model.parameters()).device)


def max_fold_error(model: nn.Module, plain: nn.Module, condition: CodecCondition, images: torch.Tensor) -> float:
    """max |model(x, c) - plain(x)| over ``images`` (B x 3 x H x W in [0, 1]); NaN if either output is."""
    cond = condition.vector(model.codecs)[None].expand(images.shape[0], -1).to(images.device)
    with torch.no_grad():
        diff = (model(images, cond) - plain(images)).abs()
    return float('nan') if diff.isnan().any() else diff.max().item()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vrpsr export CKPT --codec libx265 --bpp 0.2 -o plain.pth``."""
    parser.add_argument('checkpoint', help='codec-aware checkpoint (.pth), BasicSR option file or directory')
    parser.add_argument('--codec', required=True, help='codec of the fixed condition, e.g. libx265')
    parser.add_argument('--bpp', required=True, type=float, help='bits per pixel of the fixed condition (the '
                        'stream\'s bpp less the codec\'s per-picture header: the same within 0.003 at 512 px)')
    parser.add_argument('-o', '--output', required=True, help='plain checkpoint to write ({"params_ema": ...})')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='fail if the export differs from the conditioned net by more than this on a probe '
                             'image (default 1e-4)')


def run(args: argparse.Namespace) -> int:
    """Load, fold, check the plain export against the conditioned net on a probe image, then save."""
    model = load_model(args.checkpoint)
    if not getattr(model, 'codec_aware', False):
        raise ExportError(f'{args.checkpoint} is not a codec-aware network; nothing to fold')
    condition = CodecCondition(args.codec, args.bpp)
    plain = export_plain(model, condition, args.output, args.tolerance)
    error = max_fold_error(model, plain, condition, probe_image(model))
    print(f'wrote {args.output}: plain {type(plain).__name__} for {condition.codec} at {condition.bpp} bpp; '
          f'max |conditioned - plain| = {error:.2e} on a probe image')
    return 0
