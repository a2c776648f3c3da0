"""The VRPSR ComfyUI nodes: load a codec-aware model, build the codec condition, upscale, recompress with a real
codec, preview the codec with a simulator, post-process, and export a plain Real-ESRGAN checkpoint.

The pipeline of the paper (§3, Fig. 3): X~ --g_phi(X~, c)--> X' --real codec at the rate of c (Eq. 2)--> X^
--h(X^, c)--> X^_post (§3.4). ``IMAGE`` is ComfyUI's ``[B, H, W, C]`` float in ``[0, 1]``.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import torch

from vrpsr_plugin.codecs import CONDITION_CODECS, CodecCondition, available_codecs, encode, find_qp, qp_range
from vrpsr_plugin.export import export_plain, max_fold_error
from vrpsr_plugin.inference import load_model, restore, tile_geometry, tile_starts

from . import comfy_bridge as bridge
from .values import VRPSRCondition, VRPSRModel, check_image, to_bchw, to_bhwc

CATEGORY = 'VRPSR'
PATH_CHOICE = '[use model_path]'
RECOMPRESS_MODES = ('qp', 'crf', 'target_bpp', 'condition')


def _codec_choices() -> List[str]:
    """Codecs the installed ffmpeg can encode with, conditioned ones first."""
    found = list(available_codecs())
    return [c for c in CONDITION_CODECS if c in found] + [c for c in found if c not in CONDITION_CODECS]


def _max_qp(codecs: List[str]) -> int:
    """Upper end of the QP widget: the largest QP any of ``codecs`` takes."""
    return max(qp_range(c)[1] for c in codecs)


def _check_codec(codec: str, allowed: List[str]) -> str:
    if codec not in allowed:
        raise ValueError(f'unknown codec {codec!r}; available: {", ".join(allowed)}')
    return codec


def _check_qp(codec: str, qp: int) -> int:
    low, high = qp_range(codec)
    if not low <= int(qp) <= high:
        raise ValueError(f'QP {qp} is outside the range [{low}, {high}] of {codec}')
    return int(qp)


def _memory_estimate(module: torch.nn.Module, image: torch.Tensor, tile_size: int) -> int:
    """Bytes to free before a run, as core's upscale node estimates: weights, plus activations of one tile
    (384 float32 values per input pixel and channel), plus the image."""
    height, width = image.shape[1:3]
    tile_pixels = min(tile_size, height) * min(tile_size, width) if tile_size else height * width
    return bridge.module_bytes(module) + tile_pixels * 3 * 4 * 384 + image.numel() * image.element_size()


def _tiles_per_image(height: int, width: int, tile_size: int, tile_overlap: int) -> int:
    """How many model calls ``restore`` makes for one image (its own tile geometry)."""
    if not tile_size:
        return 1
    size, overlap = tile_geometry(tile_size, tile_overlap)
    if size >= height and size >= width:
        return 1
    return len(tile_starts(height, size, overlap)) * len(tile_starts(width, size, overlap))


def _run_conditioned(model: VRPSRModel, image: torch.Tensor, condition: Optional[VRPSRCondition], tile_size: int,
                     tile_overlap: int, same_size: bool) -> torch.Tensor:
    """Run ``model(x, c)`` image by image on the ComfyUI device (tiled, tile halved on OOM inside ``restore``),
    with a progress bar advancing per tile, and return ``[B, H', W', 3]`` on the output device."""
    if not isinstance(model, VRPSRModel):
        raise ValueError(f'model must be a VRPSR_MODEL from "Load VRPSR Model", got {type(model).__name__}')
    image = check_image(image)
    if tile_size < 0 or tile_overlap < 0:
        raise ValueError(f'tile_size and tile_overlap must be >= 0, got {tile_size} and {tile_overlap}')
    batch = image.shape[0]
    module = model.module
    cond = None
    if getattr(module, 'codec_aware', False):
        if condition is None:
            raise ValueError(f'{model.name} is codec-aware: connect a VRPSR_CONDITION ("Codec Condition")')
        cond = condition.tensor(batch, getattr(module, 'codecs', CONDITION_CODECS))
    device = bridge.torch_device()
    bridge.free_memory(_memory_estimate(module, image, tile_size), device)
    module.to(device)
    per_image = _tiles_per_image(image.shape[1], image.shape[2], tile_size, tile_overlap)
    total = batch * per_image
    progress = bridge.progress_bar(total)
    done = [0]

    def tile_done(*_) -> None:  # forward hook: one call per tile (more after an out-of-memory retry: capped)
        done[0] = min(done[0] + 1, total)
        progress.update_absolute(done[0], total)

    hook = module.register_forward_hook(tile_done)
    outputs = []
    try:
        for i in range(batch):
            bridge.throw_if_interrupted()
            x = to_bchw(image[i:i + 1]).to(device)
            c = None if cond is None else cond[i:i + 1].to(device)
            y = restore(module, x, c, tile=tile_size, tile_overlap=tile_overlap)
            if same_size and tuple(y.shape[-2:]) != tuple(x.shape[-2:]):
                raise ValueError(f'{model.name} changes the image size {tuple(x.shape[-2:])} -> '
                                 f'{tuple(y.shape[-2:])}; this node needs a same-size model (simulator or '
                                 f'post-processing net)')
            outputs.append(to_bhwc(y.float()).to(bridge.output_device()))
            done[0] = (i + 1) * per_image
            progress.update_absolute(done[0], total)
    finally:
        hook.remove()
        module.to(bridge.offload_device())
        bridge.soft_empty_cache()
    return torch.cat(outputs)


class LoadVRPSRModel:
    """A codec-aware SR, simulator or post-processing network from ``models/vrpsr`` or a path (checkpoint,
    BasicSR option file or save_pretrained directory; the arch is detected by ``vrpsr_plugin.inference``)."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model_name': (bridge.list_models() + [PATH_CHOICE],)},
                'optional': {'model_path': ('STRING', {'default': '', 'multiline': False})}}

    RETURN_TYPES = ('VRPSR_MODEL',)
    RETURN_NAMES = ('model',)
    FUNCTION = 'load'
    CATEGORY = CATEGORY

    def load(self, model_name: str, model_path: str = '') -> Tuple[VRPSRModel]:
        if model_path.strip():
            path = os.path.abspath(os.path.expanduser(model_path.strip()))
            if not os.path.exists(path):
                raise FileNotFoundError(f'VRPSR model file not found: {path}')
        elif model_name == PATH_CHOICE:
            raise ValueError('no model chosen: pick a file from models/vrpsr or set model_path')
        else:
            path = bridge.resolve_model(model_name)
        module = load_model(path, bridge.offload_device())
        module.eval()
        return (VRPSRModel(module, path),)


class CodecConditionNode:
    """The condition c = (codec, bpp) of §3.2.2: a bpp given directly, or measured with a real encode of the
    reference image X~ at ``qp`` (its bitrate R_bar, Eq. 1). That rate must be kept when the restored image X' is
    recompressed (Eq. 2), so its bits are spread over the ``upscale_factor``² times larger X'."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'codec': (list(CONDITION_CODECS),),
                             'mode': (['bpp', 'qp'],),
                             'bpp': ('FLOAT', {'default': 0.1, 'min': 0.0, 'max': 24.0, 'step': 0.001}),
                             'qp': ('INT', {'default': 32, 'min': 0, 'max': _max_qp(list(CONDITION_CODECS))})},
                'optional': {'reference': ('IMAGE',),
                             'upscale_factor': ('INT', {'default': 1, 'min': 1, 'max': 16})}}

    RETURN_TYPES = ('VRPSR_CONDITION',)
    RETURN_NAMES = ('condition',)
    FUNCTION = 'build'
    CATEGORY = CATEGORY

    def build(self, codec: str, mode: str, bpp: float, qp: int, reference: Optional[torch.Tensor] = None,
              upscale_factor: int = 1) -> Tuple[VRPSRCondition]:
        _check_codec(codec, list(CONDITION_CODECS))
        if mode == 'bpp':
            return (VRPSRCondition((CodecCondition(codec, float(bpp)),)),)
        if mode != 'qp':
            raise ValueError(f'unknown mode {mode!r}; use "bpp" or "qp"')
        if reference is None:
            raise ValueError('mode "qp" needs a reference IMAGE to measure the bpp that QP produces')
        if int(upscale_factor) < 1:
            raise ValueError(f'upscale_factor must be >= 1, got {upscale_factor}')
        qp = _check_qp(codec, qp)
        reference = check_image(reference, 'reference')
        conditions = []
        for frame in to_bchw(reference):
            bridge.throw_if_interrupted()
            result = encode(frame.cpu(), codec, qp=qp)
            conditions.append(CodecCondition(codec, float(result.bpp) / int(upscale_factor) ** 2, qp=qp))
        return (VRPSRCondition(tuple(conditions)),)


class VRPSRUpscale:
    """Super-resolve with a codec-aware backbone g_phi(X~, c) (§3.3), tiled with overlap for large images."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model': ('VRPSR_MODEL',), 'image': ('IMAGE',),
                             'tile_size': ('INT', {'default': 512, 'min': 0, 'max': 8192, 'step': 8}),
                             'tile_overlap': ('INT', {'default': 32, 'min': 0, 'max': 512, 'step': 1})},
                'optional': {'condition': ('VRPSR_CONDITION',)}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    FUNCTION = 'upscale'
    CATEGORY = CATEGORY

    def upscale(self, model: VRPSRModel, image: torch.Tensor, tile_size: int = 512, tile_overlap: int = 32,
                condition: Optional[VRPSRCondition] = None) -> Tuple[torch.Tensor]:
        return (_run_conditioned(model, image, condition, tile_size, tile_overlap, same_size=False),)


class Recompress:
    """Encode and decode each image with a real codec (ffmpeg) at a QP, a CRF, a target bpp (rate matching of
    Eq. 2 via ``find_qp``) or the codec and bpp of a condition. Outputs the decoded images, the mean bpp over the
    batch, the total bitstream bytes of the batch, the measured per-image condition and a JSON report."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        codecs = _codec_choices()
        return {'required': {'image': ('IMAGE',),
                             'codec': (codecs,),
                             'mode': (list(RECOMPRESS_MODES),),
                             'qp': ('INT', {'default': 32, 'min': 0, 'max': _max_qp(codecs)}),
                             'crf': ('FLOAT', {'default': 28.0, 'min': 0.0, 'max': 63.0, 'step': 0.5}),
                             'bpp': ('FLOAT', {'default': 0.1, 'min': 0.0, 'max': 24.0, 'step': 0.001})},
                'optional': {'condition': ('VRPSR_CONDITION',)}}

    RETURN_TYPES = ('IMAGE', 'FLOAT', 'INT', 'VRPSR_CONDITION', 'STRING')
    RETURN_NAMES = ('image', 'bpp', 'bytes', 'condition', 'report')
    FUNCTION = 'recompress'
    CATEGORY = CATEGORY

    def recompress(self, image: torch.Tensor, codec: str, mode: str, qp: int = 32, crf: float = 28.0,
                   bpp: float = 0.1, condition: Optional[VRPSRCondition] = None):
        image = check_image(image)
        frames = to_bchw(image).cpu()
        if mode not in RECOMPRESS_MODES:
            raise ValueError(f'unknown mode {mode!r}; use one of {RECOMPRESS_MODES}')
        if mode == 'condition':
            if condition is None:
                raise ValueError('mode "condition" needs a VRPSR_CONDITION input')
            targets = [(c.codec, c.bpp) for c in condition.for_batch(frames.shape[0])]
        else:
            targets = [(codec, bpp)] * frames.shape[0]
        choices = _codec_choices()
        results = []
        progress = bridge.progress_bar(frames.shape[0])
        for frame, (name, target) in zip(frames, targets):
            bridge.throw_if_interrupted()
            _check_codec(name, choices)
            if mode == 'qp':
                result = encode(frame, name, qp=_check_qp(name, qp))
            elif mode == 'crf':
                result = encode(frame, name, crf=float(crf))
            else:
                result = find_qp(frame, name, float(target))
            results.append(result)
            progress.update(1)
        decoded = torch.stack([r.tensor() for r in results]).float()
        mean_bpp = sum(float(r.bpp) for r in results) / len(results)
        total_bytes = sum(int(r.num_bytes) for r in results)
        measured = VRPSRCondition(tuple(CodecCondition(r.codec, float(r.bpp), qp=r.qp) for r in results))
        report = json.dumps([{'codec': r.codec, 'qp': r.qp, 'crf': r.crf, 'bpp': float(r.bpp),
                              'bytes': int(r.num_bytes), 'target_bpp': r.target_bpp, 'reachable': bool(r.reachable),
                              'num_encodes': int(r.num_encodes)} for r in results])
        return (to_bhwc(decoded).to(bridge.output_device()), mean_bpp, total_bytes, measured, report)


class CodecSimulator:
    """Preview what the codec will do: the differentiable simulator f_theta(X', c) ~ X^ (Eq. 4/5)."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'simulator': ('VRPSR_MODEL',), 'image': ('IMAGE',), 'condition': ('VRPSR_CONDITION',),
                             'tile_size': ('INT', {'default': 0, 'min': 0, 'max': 8192, 'step': 8}),
                             'tile_overlap': ('INT', {'default': 32, 'min': 0, 'max': 512, 'step': 1})}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    FUNCTION = 'simulate'
    CATEGORY = CATEGORY

    def simulate(self, simulator: VRPSRModel, image: torch.Tensor, condition: VRPSRCondition, tile_size: int = 0,
                 tile_overlap: int = 32) -> Tuple[torch.Tensor]:
        return (_run_conditioned(simulator, image, condition, tile_size, tile_overlap, same_size=True),)


class PostProcess:
    """The post-processing net h(X^, c) applied after the real codec (§3.4, the "sandwich")."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model': ('VRPSR_MODEL',), 'image': ('IMAGE',), 'condition': ('VRPSR_CONDITION',),
                             'tile_size': ('INT', {'default': 512, 'min': 0, 'max': 8192, 'step': 8}),
                             'tile_overlap': ('INT', {'default': 32, 'min': 0, 'max': 512, 'step': 1})}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    FUNCTION = 'postprocess'
    CATEGORY = CATEGORY

    def postprocess(self, model: VRPSRModel, image: torch.Tensor, condition: VRPSRCondition, tile_size: int = 512,
                    tile_overlap: int = 32) -> Tuple[torch.Tensor]:
        return (_run_conditioned(model, image, condition, tile_size, tile_overlap, same_size=True),)


class ExportPlainCheckpoint:
    """Fold a fixed condition into a plain RRDBNet / SRVGGNetCompact checkpoint (App. B.3: constant condition
    biases become convolution biases) that stock upscale nodes load. Written to ComfyUI's ``upscale_models``
    folder, or ``output_dir``; ``max_error`` is max |model(x, c) - plain(x)| on a probe image."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model': ('VRPSR_MODEL',), 'condition': ('VRPSR_CONDITION',),
                             'filename': ('STRING', {'default': 'vrpsr_export.pth'})},
                'optional': {'output_dir': ('STRING', {'default': ''})}}

    RETURN_TYPES = ('STRING', 'FLOAT')
    RETURN_NAMES = ('path', 'max_error')
    FUNCTION = 'export'
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def export(self, model: VRPSRModel, condition: VRPSRCondition, filename: str,
               output_dir: str = '') -> Tuple[str, float]:
        if not isinstance(model, VRPSRModel):
            raise ValueError(f'model must be a VRPSR_MODEL, got {type(model).__name__}')
        name = filename.strip()
        if not name or os.path.basename(name) != name or not name.endswith('.pth'):
            raise ValueError(f'filename must be a plain file name ending in .pth, got {filename!r}')
        folder = output_dir.strip() or bridge.upscale_models_dir()
        if not folder:
            raise ValueError('output_dir is required outside ComfyUI (no upscale_models folder)')
        path = os.path.join(os.path.abspath(os.path.expanduser(folder)), name)
        fixed = condition.single()
        plain = export_plain(model.module, fixed, path)
        probe = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        probe = probe.to(next(model.module.parameters()).device)
        return (path, max_fold_error(model.module, plain, fixed, probe))


NODE_CLASS_MAPPINGS = {
    'VRPSRLoadModel': LoadVRPSRModel,
    'VRPSRCodecCondition': CodecConditionNode,
    'VRPSRUpscale': VRPSRUpscale,
    'VRPSRRecompress': Recompress,
    'VRPSRCodecSimulator': CodecSimulator,
    'VRPSRPostProcess': PostProcess,
    'VRPSRExportPlainCheckpoint': ExportPlainCheckpoint,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    'VRPSRLoadModel': 'Load VRPSR Model',
    'VRPSRCodecCondition': 'Codec Condition (VRPSR)',
    'VRPSRUpscale': 'VRPSR Upscale',
    'VRPSRRecompress': 'Recompress (real codec)',
    'VRPSRCodecSimulator': 'Codec Simulator (VRPSR)',
    'VRPSRPostProcess': 'Post-process (VRPSR)',
    'VRPSRExportPlainCheckpoint': 'Export plain Real-ESRGAN checkpoint (VRPSR)',
}
