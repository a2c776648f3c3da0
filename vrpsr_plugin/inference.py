"""Load a trained network from any file we write and run it tiled (used by the evaluation harness and the ComfyUI
nodes). Images are ``B x 3 x H x W`` float tensors in ``[0, 1]``; the condition is the ``B x 4`` tensor of
``CodecCondition.collate`` (§3.2.3).
"""
import copy
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import yaml
from basicsr.archs import build_network
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vrpsr_plugin.atomic_io import torch_save, write_bytes
from vrpsr_plugin.archs.checkpoint import load_checkpoint_file, load_state_dict_strict, unwrap_state_dict
from vrpsr_plugin.archs.condition_heads import HEADS_PREFIX
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

# basicsr registers SRVGGNetCompact as 'SRVGGNetCompact_basicsr'; arch specs use the plain names
_PLAIN_CLASSES = {'RRDBNet': RRDBNet, 'SRVGGNetCompact': SRVGGNetCompact}
# tile origins are multiples of this, so pixel-unshuffling nets (factor 2/4) see the same pixel grid as untiled
_TILE_ALIGN = 8
_MIN_TILE = 32


# ----------------------------------------------------------------------------------------------------- loading
def load_model(path: str, device: Any = 'cpu', **arch_overrides: Any) -> nn.Module:
    """Load a network for inference, in eval mode with ``requires_grad`` off.

    Which weights load (one rule, also for the ComfyUI loader): a BasicSR checkpoint's ``params_ema`` (the EMA
    weights) when present, else ``params``, else the bare state dict; an option file's ``path.param_key_g``
    picks that entry when the file has it.

    ``path`` is (a) a BasicSR option ``.yml`` (``network_g`` built by ``build_network``, weights from
    ``path.pretrain_network_g``), (b) a ``.pth``/``.safetensors`` checkpoint (arch from its stored ``'arch'`` spec,
    else detected from its keys: RRDBNet, SRVGGNetCompact, their codec-aware versions, CodecPostProcessNet) or
    (c) a ``save_pretrained`` directory (its registered class's ``from_pretrained``). ``arch_overrides`` replace
    detected options (e.g. ``act_type='relu'``, ``codecs=[...]``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        model = _load_pretrained_dir(path, arch_overrides)
    elif path.lower().endswith(('.yml', '.yaml')):
        model = _load_option_file(path, arch_overrides)
    elif os.path.isfile(path):
        model = _load_checkpoint(path, arch_overrides)
    else:
        raise FileNotFoundError(f'no model file or directory at {path!r}')
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def save_model(model: nn.Module, path: str) -> None:
    """Write ``{'params_ema': state, 'arch': model.arch_spec}`` atomically (``.safetensors``: the state with the
    spec as JSON metadata ``arch``), so ``load_model`` rebuilds the net exactly (codec order, diffusion base and
    LoRA ranks included) without guessing from shapes."""
    spec = getattr(model, 'arch_spec', None)
    if spec is None:
        raise TypeError(f'{type(model).__name__} has no arch_spec; save it with basicsr instead')
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if os.fspath(path).endswith('.safetensors'):
        from safetensors.torch import save
        write_bytes(path, save(state, metadata={'arch': json.dumps(spec)}))
    else:
        torch_save({'params_ema': state, 'arch': spec}, path)


def stored_arch_spec(path: str, raw: Any) -> Optional[Dict[str, Any]]:
    """The ``arch`` spec stored with a checkpoint (a ``.pth``'s ``'arch'`` entry, a ``.safetensors`` file's
    metadata), or None."""
    if os.fspath(path).endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(path, framework='pt') as handle:
            text = (handle.metadata() or {}).get('arch')
        return dict(json.loads(text)) if text else None
    return dict(raw['arch']) if isinstance(raw, Mapping) and isinstance(raw.get('arch'), Mapping) else None


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``{'type': name, **options}`` from basicsr's ARCH_REGISTRY (plain names for basicsr's nets)."""
    options = dict(spec)
    name = options.pop('type', None)
    if not name:
        raise ValueError(f"arch spec has no 'type': {dict(spec)!r}")
    cls = _PLAIN_CLASSES.get(name)
    if cls is None:
        if name not in ARCH_REGISTRY:
            raise KeyError(f'arch {name!r} is not registered (did `import vrpsr_plugin` run?)')
        cls = ARCH_REGISTRY.get(name)
    return cls(**options)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load. A codec-aware net may take a plain checkpoint holding no head at all (heads stay zero, the
    net equals the plain one); a checkpoint with some heads must have all of them."""
    plain = getattr(model, 'codec_aware', False) and not any(k.startswith(HEADS_PREFIX) for k in state)
    load_state_dict_strict(model, state, allowed_missing_prefixes=(HEADS_PREFIX,) if plain else (), source=source)


def _load_checkpoint(path: str, overrides: Dict[str, Any]) -> nn.Module:
    raw = load_checkpoint_file(path)
    spec = stored_arch_spec(path, raw)
    state = unwrap_state_dict(raw, source=path)
    spec = spec if spec is not None else detect_arch(state, overrides)
    spec.update(overrides)
    model = build_from_spec(spec)
    load_weights(model, state, path)
    return model


def _load_option_file(path: str, overrides: Dict[str, Any]) -> nn.Module:
    with open(path, encoding='utf-8') as handle:
        opt = yaml.safe_load(handle)
    if not isinstance(opt, Mapping) or not isinstance(opt.get('network_g'), Mapping):
        raise ValueError(f'{path}: a BasicSR option file needs a network_g section')
    path_opt = opt.get('path') or {}
    weights = path_opt.get('pretrain_network_g')
    if not weights:
        raise ValueError(f'{path}: path.pretrain_network_g is not set, nothing to load')
    net_opt = copy.deepcopy(dict(opt['network_g']))
    net_opt.update(overrides)
    model = build_network(net_opt)
    raw = load_checkpoint_file(weights)
    key = path_opt.get('param_key_g')  # unset or absent from the file: params_ema when present, else params
    state = unwrap_state_dict(raw[key] if isinstance(raw, Mapping) and key in raw else raw, source=weights)
    load_weights(model, state, weights)
    return model


def _load_pretrained_dir(path: str, overrides: Dict[str, Any]) -> nn.Module:
    config_path = os.path.join(path, 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f'{path} has no config.json (not a save_pretrained directory)')
    with open(config_path, encoding='utf-8') as handle:
        config = json.load(handle)
    name = config.get('_class_name') or config.get('type')
    if not name or name not in ARCH_REGISTRY:
        raise KeyError(f'{config_path}: class {name!r} is not a registered arch (did `import vrpsr_plugin` run?)')
    cls = ARCH_REGISTRY.get(name)
    if not hasattr(cls, 'from_pretrained'):
        raise TypeError(f'{name} has no from_pretrained; it cannot load {path}')
    return cls.from_pretrained(path, **overrides)


# ------------------------------------------------------------------------------------------- arch detection
def detect_arch(state: Mapping[str, torch.Tensor], overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Arch spec ``{'type': ..., **options}`` inferred from the keys and shapes of a state dict."""
    overrides = dict(overrides or {})
    if 'body.0.rdb1.conv1.weight' in state and 'conv_first.weight' in state:
        spec = _detect_rrdbnet(state)
        plain, aware = 'RRDBNet', 'CodecAwareRRDBNet'
    elif 'body.0.conv1.weight' in state and 'conv_first.weight' in state and 'conv_body.weight' in state:
        spec = _detect_post_process(state, overrides)
        plain, aware = None, 'CodecPostProcessNet'
    elif 'body.0.weight' in state and state['body.0.weight'].dim() == 4 and 'conv_first.weight' not in state:
        spec = _detect_srvgg(state, overrides)
        plain, aware = 'SRVGGNetCompact', 'CodecAwareSRVGGNetCompact'
    else:
        raise ValueError('cannot detect the arch of this state dict (keys: '
                         f'{", ".join(list(state)[:8])}, ...); save it with vrpsr_plugin.inference.save_model')
    if any(k.startswith(HEADS_PREFIX) for k in state):
        spec.update(_detect_heads(state, overrides))
        spec['type'] = aware
    elif plain is None:
        raise ValueError(f'{aware} checkpoint without its {HEADS_PREFIX} parameters')
    else:
        spec['type'] = plain
    return spec


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix):].split('.')[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _detect_rrdbnet(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    num_out = state['conv_last.weight'].shape[0]
    packed = state['conv_first.weight'].shape[1]
    ratios = {1: 4, 4: 2, 16: 1}
    if packed % num_out or packed // num_out not in ratios:
        raise ValueError(f'RRDBNet checkpoint: conv_first takes {packed} channels for {num_out} outputs; '
                         'expected 1x, 4x or 16x (scale 4, 2, 1)')
    return dict(num_in_ch=num_out, num_out_ch=num_out, scale=ratios[packed // num_out],
                num_feat=state['conv_first.weight'].shape[0], num_block=_count(state, 'body.'),
                num_grow_ch=state['body.0.rdb1.conv1.weight'].shape[0])


def _detect_srvgg(state: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    convs = sorted((int(k.split('.')[1]) for k in state
                    if k.startswith('body.') and k.endswith('.weight') and state[k].dim() == 4))
    first, last = state[f'body.{convs[0]}.weight'], state[f'body.{convs[-1]}.weight']
    num_in = first.shape[1]
    upscale = math.isqrt(last.shape[0] // num_in)
    if upscale * upscale * num_in != last.shape[0]:
        raise ValueError(f'SRVGGNetCompact checkpoint: last conv has {last.shape[0]} outputs, not '
                         f'{num_in} x upscale^2')
    if 'body.1.weight' in state:
        act_type = 'prelu'
    elif 'act_type' in overrides:
        act_type = overrides['act_type']
    else:
        raise ValueError("SRVGGNetCompact checkpoint without PReLU weights: its activation (relu or leakyrelu) "
                         "is not stored; pass act_type='relu' or 'leakyrelu'")
    return dict(num_in_ch=num_in, num_out_ch=num_in, num_feat=first.shape[0], num_conv=len(convs) - 2,
                upscale=upscale, act_type=act_type)


def _detect_post_process(state: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    num_in = overrides.get('num_in_ch', 3)
    packed = state['conv_first.weight'].shape[1]
    unshuffle = math.isqrt(packed // num_in)
    if unshuffle * unshuffle * num_in != packed:
        raise ValueError(f'CodecPostProcessNet checkpoint: conv_first takes {packed} channels, not '
                         f'{num_in} x unshuffle^2')
    return dict(num_in_ch=num_in, num_feat=state['conv_first.weight'].shape[0], num_block=_count(state, 'body.'),
                unshuffle=unshuffle)


def _detect_heads(state: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    first = state[f'{HEADS_PREFIX}heads.0.0.weight']
    dim_per_scalar = overrides.get('emb_dim_per_scalar', 64)
    num_scalars, rest = divmod(first.shape[1], dim_per_scalar)
    codecs = overrides.get('codecs', CONDITION_CODECS[:num_scalars - 1])
    if rest or len(codecs) != num_scalars - 1:
        raise ValueError(f'condition heads read a {first.shape[1]}-d embedding; with emb_dim_per_scalar='
                         f'{dim_per_scalar} that is not [one-hot({len(codecs)} codecs), bpp]: pass codecs= and '
                         'emb_dim_per_scalar=, or save with vrpsr_plugin.inference.save_model')
    return dict(codecs=list(codecs), emb_dim_per_scalar=dim_per_scalar, head_hidden=first.shape[0])


# ----------------------------------------------------------------------------------------------- inference
def restore(model: nn.Module, images: torch.Tensor, cond: Optional[torch.Tensor] = None, tile: int = 0,
            tile_overlap: int = 32) -> torch.Tensor:
    """Run ``model`` on ``images`` (B x 3 x H x W in [0, 1]) and return its output clamped to [0, 1].

    ``cond`` (B x 4) is passed only to codec-aware models (``model.codec_aware``); ``None`` runs them as their
    plain base. ``tile > 0`` processes tiles of that size with ``tile_overlap`` pixels of overlap, blended with
    linear ramps that skip the outer quarter of each overlap (tile borders, where zero padding differs from the
    real context, get weight 0). Out of memory halves the tile (an untiled run retries at 512) down to 32 px.
    """
    _check_images(images)
    if tile < 0 or tile_overlap < 0:
        raise ValueError(f'tile and tile_overlap must be >= 0, got {tile} and {tile_overlap}')
    aware = getattr(model, 'codec_aware', False)
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    dtype = param.dtype if param is not None and param.is_floating_point() else images.dtype
    x = images.to(device=device, dtype=dtype)
    c = cond.to(device) if (aware and cond is not None) else None
    with torch.inference_mode():
        while True:
            try:
                out = _run_tiled(model, x, c, tile, tile_overlap) if tile else _run(model, x, c)
                break
            except torch.OutOfMemoryError:
                tile = (tile // 2) if tile else 512
                if tile < _MIN_TILE:
                    raise
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
        out = out.clamp_(0, 1).to(images.dtype)
    return out.clone()  # a normal tensor: callers may modify it in place outside inference mode


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f'images must be a torch.Tensor (B x 3 x H x W), got {type(images).__name__}')
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'images must have shape (B, 3, H, W), got {tuple(images.shape)}')
    if not images.is_floating_point():
        raise TypeError(f'images must be a float tensor in [0, 1], got {images.dtype}')
    if images.numel() == 0:
        raise ValueError(f'images are empty: {tuple(images.shape)}')
    if not torch.isfinite(images).all():
        raise ValueError('images contain NaN or inf')
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise ValueError(f'images must be in [0, 1], got values in [{low:.4g}, {high:.4g}]')


def _run(model: nn.Module, x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    return model(x, cond) if cond is not None else model(x)


def _scale_of(inp: torch.Tensor, out: torch.Tensor) -> int:
    scale = out.shape[-2] // inp.shape[-2]
    if scale < 1 or out.shape[-2] != scale * inp.shape[-2] or out.shape[-1] != scale * inp.shape[-1]:
        raise RuntimeError(f'model maps {tuple(inp.shape[-2:])} to {tuple(out.shape[-2:])}: not an integer scale')
    return scale


def tile_geometry(tile: int, overlap: int) -> Tuple[int, int]:
    """(tile, overlap) rounded to multiples of 8, tile >= 32 and overlap < tile."""
    tile = max(_MIN_TILE, tile // _TILE_ALIGN * _TILE_ALIGN)
    return tile, min(-(-overlap // _TILE_ALIGN) * _TILE_ALIGN, tile - _TILE_ALIGN)


def tile_starts(size: int, tile: int, overlap: int) -> List[int]:
    """Origins along one axis of tiles from ``tile_geometry``; the last tile ends at or before ``size``."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + tile - overlap)
    return starts


def _ramp(length: int, scale: int, lead: bool, trail: bool, overlap: int) -> torch.Tensor:
    """Blend weights along one axis of an output tile: 0 within ``overlap/4`` of an inner border, rising
    linearly to 1 at ``3 overlap/4`` (image borders keep weight 1). Adjacent ramps sum to 1."""
    pos = (torch.arange(length, dtype=torch.float64) + 0.5) / scale  # input-pixel coordinate
    weight = torch.ones(length, dtype=torch.float64)
    if overlap <= 0:
        return weight
    margin = overlap / 4
    width = overlap - 2 * margin
    if lead:
        weight = torch.minimum(weight, ((pos - margin) / width).clamp(0, 1))
    if trail:
        weight = torch.minimum(weight, ((length / scale - pos - margin) / width).clamp(0, 1))
    return weight


def _run_tiled(model: nn.Module, x: torch.Tensor, cond: Optional[torch.Tensor], tile: int,
               overlap: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    size, overlap = tile_geometry(tile, overlap)
    if size >= height and size >= width:
        return _run(model, x, cond)
    rows, cols = tile_starts(height, size, overlap), tile_starts(width, size, overlap)
    out = weights = None
    scale = 1
    for i, top in enumerate(rows):
        bottom = min(top + size, height)
        for j, left in enumerate(cols):
            right = min(left + size, width)
            piece = _run(model, x[..., top:bottom, left:right], cond)
            if out is None:
                scale = _scale_of(x[..., top:bottom, left:right], piece)
                out = x.new_zeros(x.shape[0], piece.shape[1], height * scale, width * scale)
                weights = x.new_zeros(1, 1, height * scale, width * scale)
            wy = _ramp(piece.shape[-2], scale, i > 0, i < len(rows) - 1, overlap)
            wx = _ramp(piece.shape[-1], scale, j > 0, j < len(cols) - 1, overlap)
            mask = (wy[:, None] * wx[None, :]).to(x)
            out[..., top * scale:bottom * scale, left * scale:right * scale] += piece * mask
            weights[..., top * scale:bottom * scale, left * scale:right * scale] += mask
    return out / weights
