"""The VRPSR ComfyUI nodes: load a codec-aware model, build the codec condition, upscale, recompress with a real
codec (one picture at a time, or a whole video at a target bitrate), preview the codec with a simulator,
post-process, and export a plain Real-ESRGAN checkpoint.

The pipeline of the paper (§3, Fig. 3): X~ --g_phi(X~, c)--> X' --real codec at the rate of c (Eq. 2)--> X^
--h(X^, c)--> X^_post (§3.4). ``IMAGE`` is ComfyUI's ``[B, H, W, C]`` float in ``[0, 1]``. Every node carries a
``DESCRIPTION`` and every input a ``tooltip`` (ComfyUI shows them in search previews and on hover). Listing the
nodes (``INPUT_TYPES``) never runs ffmpeg: a missing ffmpeg is reported when a node runs.
"""
import json
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from vrpsr_plugin.codecs import CODECS, CONDITION_CODECS, CodecCondition, encode, find_qp, qp_range
from vrpsr_plugin.codecs.condition import stream_bpp
from vrpsr_plugin.codecs.video import PRESETS, VIDEO_CODECS, encode_video, kbps_to_bpp, write_video
from vrpsr_plugin.export import export_plain, max_fold_error
from vrpsr_plugin.inference import load_model, restore, tile_geometry, tile_starts

from . import comfy_bridge as bridge
from .values import VRPSRCondition, VRPSRModel, check_image, to_bchw, to_bhwc

CATEGORY = 'VRPSR'
PATH_CHOICE = '[use model_path]'
RECOMPRESS_MODES = ('qp', 'crf', 'target_bpp', 'condition')
CONDITION_MODES = ('bpp', 'qp', 'video_kbps')
VIDEO_MODES = ('kbps', 'file_size', 'crf', 'qp')
# Conditioned codecs first (the networks' one-hot, §3.2.3), then the codecs they never trained on. A static list:
# which of them the installed ffmpeg has is checked when a node runs, so listing never needs ffmpeg.
CODEC_CHOICES = list(CONDITION_CODECS) + [c for c in CODECS if c not in CONDITION_CODECS]
QP_MAX = max(qp_range(c)[1] for c in CODEC_CHOICES)
QP_RANGES = ', '.join(f'{c} {qp_range(c)[0]}-{qp_range(c)[1]}' for c in CODEC_CHOICES)
QP_TOOLTIP = (f'Constant QP (lower = more bits). Range per codec: {QP_RANGES} (JPEG: qscale; WebP: quality, the '
              f'rate rises with it). A value outside the chosen codec\'s range is an error naming the range.')
CODEC_TOOLTIP = ('Codec run through ffmpeg. The VRPSR networks are conditioned on libx264, libx265 and libvvenc '
                 '(the one-hot of §3.2.3); libsvtav1, jpeg and libwebp are codecs they never trained on.')
TILE_TOOLTIPS = {'tile_size': 'Tile edge in input pixels (0 = the whole image at once); halved automatically on '
                              'out-of-memory.',
                 'tile_overlap': 'Pixels shared by neighbouring tiles, blended with linear ramps.'}


def _tile_inputs(default_size: int) -> Dict[str, tuple]:
    return {'tile_size': ('INT', {'default': default_size, 'min': 0, 'max': 8192, 'step': 8,
                                  'tooltip': TILE_TOOLTIPS['tile_size']}),
            'tile_overlap': ('INT', {'default': 32, 'min': 0, 'max': 512, 'step': 1,
                                     'tooltip': TILE_TOOLTIPS['tile_overlap']})}


def _check_codec(codec: str, allowed: List[str]) -> str:
    if codec not in allowed:
        raise ValueError(f'unknown codec {codec!r}; available: {", ".join(allowed)}')
    return codec


def _check_qp(codec: str, qp: int) -> int:
    low, high = qp_range(codec)
    if not low <= int(qp) <= high:
        raise ValueError(f'QP {qp} is outside the range [{low}, {high}] of {codec}')
    return int(qp)


def _declared_scale(module: torch.nn.Module) -> int:
    """The upscaling factor a network declares (``scale``: RRDBNet, S3Diff; ``upscale``: SRVGGNetCompact), 1 when
    it declares none (simulators, post-processing nets)."""
    return int(getattr(module, 'scale', None) or getattr(module, 'upscale', None) or 1)


def _shown(text: str, result: tuple) -> dict:
    """A node's result plus ``text`` shown on the node itself (``ui.text``, rendered by web/vrpsr_report.js)."""
    return {'ui': {'text': [text]}, 'result': result}


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
    if same_size and _declared_scale(module) != 1:  # before any work, not after a whole upscale
        raise ValueError(f'{model.name} upscales x{_declared_scale(module)}; this node needs a same-size model '
                         f'(simulator or post-processing net)')
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
    DESCRIPTION = ('Load a VRPSR network: a codec-aware super-resolution backbone g_phi(X~, c) (§3.3), a codec '
                   'simulator f_theta(X\', c) (Eq. 4/5) or a post-processing net h(X^, c) (§3.4). Accepts '
                   '.pth/.safetensors checkpoints, BasicSR option files (.yml) and save_pretrained directories; '
                   'plain Real-ESRGAN RRDBNet / SRVGGNetCompact checkpoints load too.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model_name': (bridge.list_models() + [PATH_CHOICE],
                                            {'tooltip': 'A file or directory in ComfyUI/models/vrpsr; choose '
                                                        f'"{PATH_CHOICE}" to load model_path instead.'})},
                'optional': {'model_path': ('STRING', {'default': '', 'multiline': False,
                                                       'tooltip': 'Absolute path of a model file or directory; '
                                                                  'wins over model_name when set.'})}}

    RETURN_TYPES = ('VRPSR_MODEL',)
    RETURN_NAMES = ('model',)
    OUTPUT_TOOLTIPS = ('The loaded network, kept on the offload device between runs.',)
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
    """The condition c = (codec, bpp) of §3.2.2: a bpp given directly, measured with a real encode of the
    reference image X~ at ``qp`` (its bitrate R_bar, Eq. 1; spread over the ``upscale_factor``² larger X', Eq. 2),
    or the mean per-frame bpp of a video bitrate (an approximation: the nets are trained on intra pictures)."""
    DESCRIPTION = ('The codec condition c = (codec, bpp) the VRPSR networks take (§3.2.2). bpp mode: the number as '
                   'given. qp mode: each reference image X~ is encoded with the real codec at qp; its measured rate '
                   'R_bar (Eq. 1) divided by upscale_factor² is the bpp the upscaled image must keep (Eq. 2), '
                   'less the codec\'s fixed per-picture header (so that the condition means the same QP at any '
                   'size; Recompress adds it back). '
                   'video_kbps mode: the per-frame bpp of a video at kbps and fps, 1000·kbps / (fps·W·H) with W×H '
                   'the reference size times upscale_factor. This is an approximation: a video spends its bits '
                   'unevenly over I, P and B pictures, while the simulator and SR nets are trained on intra '
                   'pictures.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'codec': (CODEC_CHOICES, {'tooltip': CODEC_TOOLTIP}),
                             'mode': (list(CONDITION_MODES), {'tooltip': 'bpp: use the bpp value; qp: measure the '
                                                              'bpp a real encode of reference at qp produces; '
                                                              'video_kbps: the per-frame bpp of a video bitrate.'}),
                             'bpp': ('FLOAT', {'default': 0.1, 'min': 0.0, 'max': 24.0, 'step': 0.001,
                                               'tooltip': 'Bits per pixel (bpp = 8·bytes / (H·W)); mode bpp.'}),
                             'qp': ('INT', {'default': 32, 'min': 0, 'max': QP_MAX,
                                            'tooltip': QP_TOOLTIP + ' Mode qp.'})},
                'optional': {'reference': ('IMAGE', {'tooltip': 'The degraded input X~ (modes qp and video_kbps).'}),
                             'upscale_factor': ('INT', {'default': 1, 'min': 1, 'max': 16,
                                                        'tooltip': 'How many times larger per side the image '
                                                                   'that will be recompressed is than reference.'}),
                             'kbps': ('FLOAT', {'default': 2000.0, 'min': 0.001, 'max': 1.0e6, 'step': 1.0,
                                                'tooltip': 'Video bitrate in kbit/s; mode video_kbps.'}),
                             'fps': ('FLOAT', {'default': 24.0, 'min': 0.01, 'max': 1000.0, 'step': 0.001,
                                               'tooltip': 'Video frame rate; mode video_kbps.'})}}

    RETURN_TYPES = ('VRPSR_CONDITION',)
    RETURN_NAMES = ('condition',)
    OUTPUT_TOOLTIPS = ('One (codec, bpp, QP) per reference image, or one for every image.',)
    FUNCTION = 'build'
    CATEGORY = CATEGORY

    def build(self, codec: str, mode: str, bpp: float, qp: int, reference: Optional[torch.Tensor] = None,
              upscale_factor: int = 1, kbps: float = 2000.0, fps: float = 24.0) -> Tuple[VRPSRCondition]:
        _check_codec(codec, CODEC_CHOICES)
        if mode == 'bpp':
            return (VRPSRCondition((CodecCondition(codec, float(bpp)),)),)
        if mode not in CONDITION_MODES:
            raise ValueError(f'unknown mode {mode!r}; use one of {", ".join(CONDITION_MODES)}')
        if reference is None:
            raise ValueError(f'mode "{mode}" needs a reference IMAGE (the frames before upscaling)')
        if int(upscale_factor) < 1:
            raise ValueError(f'upscale_factor must be >= 1, got {upscale_factor}')
        reference = check_image(reference, 'reference')
        factor = int(upscale_factor)
        if mode == 'video_kbps':
            height, width = reference.shape[1:3]
            rate = kbps_to_bpp(float(kbps), width * factor, height * factor, float(fps))
            return (VRPSRCondition((CodecCondition(codec, rate),)),)
        qp = _check_qp(codec, qp)
        conditions = []
        for frame in to_bchw(reference):
            bridge.throw_if_interrupted()
            result = encode(frame.cpu(), codec, qp=qp)
            pixels = frame.shape[-2] * frame.shape[-1] * factor ** 2
            conditions.append(CodecCondition.from_stream(codec, float(result.bpp) / factor ** 2, pixels, qp=qp))
        return (VRPSRCondition(tuple(conditions)),)


class VRPSRUpscale:
    """Super-resolve with a codec-aware backbone g_phi(X~, c) (§3.3), tiled with overlap for large images."""
    DESCRIPTION = ('Super-resolve with a codec-aware backbone g_phi(X~, c) (§3.3): the restored image X\' is made '
                   'to survive the codec at the condition\'s rate. Tiled with overlap for large images; one '
                   'condition entry per image of the batch. A plain Real-ESRGAN model ignores the condition.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model': ('VRPSR_MODEL', {'tooltip': 'An SR network from Load VRPSR Model.'}),
                             'image': ('IMAGE', {'tooltip': 'The low-resolution images X~.'}),
                             **_tile_inputs(512)},
                'optional': {'condition': ('VRPSR_CONDITION', {'tooltip': 'Codec and bpp the output will be '
                                                               'recompressed at (required by codec-aware models).'})}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    OUTPUT_TOOLTIPS = ('The upscaled images X\'.',)
    FUNCTION = 'upscale'
    CATEGORY = CATEGORY

    def upscale(self, model: VRPSRModel, image: torch.Tensor, tile_size: int = 512, tile_overlap: int = 32,
                condition: Optional[VRPSRCondition] = None) -> Tuple[torch.Tensor]:
        return (_run_conditioned(model, image, condition, tile_size, tile_overlap, same_size=False),)


class Recompress:
    """Encode and decode each image with a real codec (ffmpeg) at a QP, a CRF, a target bpp (rate matching of
    Eq. 2 via ``find_qp``) or the codec and bpp of a condition. Outputs the decoded images, the mean bpp over the
    batch, the total bitstream bytes of the batch, the measured per-image condition and a JSON report; the node
    shows the achieved rate of every image."""
    DESCRIPTION = ('Encode and decode every image on its own (one intra picture) with a real codec through ffmpeg: '
                   'at a constant QP, at a CRF, at the QP whose rate is closest to a target bpp (rate matching, '
                   'Eq. 2), or at the codec and bpp of a condition. Shows the achieved bpp and bytes of each image '
                   'on the node. bpp = 8·bytes / (H·W) of the bitstream.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'image': ('IMAGE', {'tooltip': 'The images to recompress (each coded on its own).'}),
                             'codec': (CODEC_CHOICES, {'tooltip': CODEC_TOOLTIP + ' Ignored in mode condition.'}),
                             'mode': (list(RECOMPRESS_MODES), {'tooltip': 'qp: constant QP; crf: the encoder\'s '
                                                               'rate control; target_bpp: the QP closest to bpp '
                                                               '(Eq. 2); condition: the codec and bpp of the '
                                                               'condition input, per image.'}),
                             'qp': ('INT', {'default': 32, 'min': 0, 'max': QP_MAX, 'tooltip': QP_TOOLTIP}),
                             'crf': ('FLOAT', {'default': 28.0, 'min': 0.0, 'max': 63.0, 'step': 0.5,
                                               'tooltip': 'Constant rate factor (x264/x265 0-51, SVT-AV1 1-63; '
                                                          'vvenc, JPEG and WebP have no CRF mode).'}),
                             'bpp': ('FLOAT', {'default': 0.1, 'min': 0.0, 'max': 24.0, 'step': 0.001,
                                               'tooltip': 'Target bits per pixel (mode target_bpp).'})},
                'optional': {'condition': ('VRPSR_CONDITION', {'tooltip': 'Per-image codec and bpp targets '
                                                               '(mode condition).'})}}

    RETURN_TYPES = ('IMAGE', 'FLOAT', 'INT', 'VRPSR_CONDITION', 'STRING')
    RETURN_NAMES = ('image', 'bpp', 'bytes', 'condition', 'report')
    OUTPUT_TOOLTIPS = ('The decoded images X^.', 'Mean bpp over the batch.', 'Total bitstream bytes of the batch.',
                       'The measured (codec, bpp, QP) of every image, for Post-process.',
                       'JSON, one entry per image: codec, qp, crf, bpp, bytes, target_bpp, reachable, num_encodes.')
    FUNCTION = 'recompress'
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def recompress(self, image: torch.Tensor, codec: str, mode: str, qp: int = 32, crf: float = 28.0,
                   bpp: float = 0.1, condition: Optional[VRPSRCondition] = None) -> dict:
        image = check_image(image)
        frames = to_bchw(image).cpu()
        if mode not in RECOMPRESS_MODES:
            raise ValueError(f'unknown mode {mode!r}; use one of {RECOMPRESS_MODES}')
        if mode == 'condition':
            if condition is None:
                raise ValueError('mode "condition" needs a VRPSR_CONDITION input')
            pixels = frames.shape[-2] * frames.shape[-1]  # the condition leaves out the stream header: add it back
            targets = [(c.codec, stream_bpp(c.codec, c.bpp, pixels)) for c in condition.for_batch(frames.shape[0])]
        else:
            targets = [(codec, bpp)] * frames.shape[0]
        results = []
        progress = bridge.progress_bar(frames.shape[0])
        for frame, (name, target) in zip(frames, targets):
            bridge.throw_if_interrupted()
            _check_codec(name, CODEC_CHOICES)
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
        measured = VRPSRCondition(tuple(CodecCondition.from_stream(r.codec, float(r.bpp), r.image.shape[0] *
                                                                   r.image.shape[1], qp=r.qp) for r in results))
        entries = [{'codec': r.codec, 'qp': r.qp, 'crf': r.crf, 'bpp': float(r.bpp), 'bytes': int(r.num_bytes),
                    'target_bpp': r.target_bpp, 'reachable': bool(r.reachable), 'num_encodes': int(r.num_encodes)}
                   for r in results]
        lines = [_rate_line(i, e) for i, e in enumerate(entries)]
        lines.append(f'mean {mean_bpp:.4f} bpp, {total_bytes} bytes in all')
        return _shown('\n'.join(lines), (to_bhwc(decoded).to(bridge.output_device()), mean_bpp, total_bytes,
                                         measured, json.dumps(entries)))


def _rate_line(index: int, entry: dict) -> str:
    """One line of Recompress's shown report."""
    setting = f'QP {entry["qp"]}' if entry['qp'] is not None else f'CRF {entry["crf"]:g}'
    line = f'#{index} {entry["codec"]} {setting}: {entry["bpp"]:.4f} bpp, {entry["bytes"]} bytes'
    if entry['target_bpp'] is not None:
        line += f' (target {entry["target_bpp"]:.4f}' + (')' if entry['reachable'] else ', unreachable)')
    return line


class RecompressVideo:
    """The batch as the frames of one inter-coded x264/x265 video (``vrpsr_plugin.codecs.video``) at a bitrate,
    a file size, a CRF or a QP; writes the stream and returns the decoded frames and the achieved rate."""
    DESCRIPTION = ('Code the image batch as the frames of one real H.264 (x264) or H.265 (x265) video, yuv420p '
                   'BT.601, with I, P and B pictures (GOP and preset as set), at a target bitrate or file size '
                   '(met within 2% by a search over CRF), a CRF or a QP. Writes the video into ComfyUI\'s output '
                   'folder and returns the decoded frames (exactly what a player decodes from the file), the '
                   'achieved kbps and the mean bpp per frame. An unreachable target is an error and writes nothing.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {
            'images': ('IMAGE', {'tooltip': 'The frames, in order; one even width and height for all.'}),
            'codec': (list(VIDEO_CODECS), {'tooltip': 'libx264 (H.264) or libx265 (H.265).'}),
            'mode': (list(VIDEO_MODES), {'tooltip': 'kbps: target bitrate; file_size: target size of the video '
                                                    'stream; crf: the encoder\'s rate control; qp: constant QP.'}),
            'kbps': ('FLOAT', {'default': 2000.0, 'min': 1.0, 'max': 1.0e6, 'step': 10.0,
                               'tooltip': 'Target bitrate in kbit/s of the video stream (mode kbps).'}),
            'size_kb': ('FLOAT', {'default': 1000.0, 'min': 0.1, 'max': 1.0e7, 'step': 1.0,
                                  'tooltip': 'Target size in kB (1000 bytes) of the video stream, without the '
                                             'container (mode file_size).'}),
            'crf': ('FLOAT', {'default': 23.0, 'min': 0.0, 'max': 51.0, 'step': 0.5,
                              'tooltip': 'Constant rate factor 0-51 (mode crf); x264\'s default is 23, x265\'s 28.'}),
            'qp': ('INT', {'default': 28, 'min': 0, 'max': 51,
                           'tooltip': 'Constant QP 0-51 of the P pictures (mode qp); I pictures get the same QP, '
                                      'B pictures the encoder\'s offset.'}),
            'fps': ('FLOAT', {'default': 24.0, 'min': 0.01, 'max': 1000.0, 'step': 0.001,
                              'tooltip': 'Frame rate: kbps = 8·bytes·fps / frames / 1000.'}),
            'gop': ('INT', {'default': 0, 'min': 0, 'max': 10000,
                            'tooltip': 'Keyframe interval in frames; 0 = the encoder\'s default (250).'}),
            'preset': (list(PRESETS), {'default': 'medium', 'tooltip': 'Encoder speed/efficiency preset.'}),
            'container': (['mp4', 'mkv', 'mov'], {'tooltip': 'File format of the written video.'}),
            'filename_prefix': ('STRING', {'default': 'vrpsr_video',
                                           'tooltip': 'File name before the counter, e.g. vrpsr_video_00001.mp4.'})},
            'optional': {'output_dir': ('STRING', {'default': '', 'tooltip': 'Folder to write to (default: '
                                                   'ComfyUI\'s output folder).'})}}

    RETURN_TYPES = ('IMAGE', 'STRING', 'FLOAT', 'FLOAT', 'VRPSR_CONDITION', 'STRING')
    RETURN_NAMES = ('images', 'path', 'kbps', 'bpp', 'condition', 'report')
    OUTPUT_TOOLTIPS = ('The decoded frames.', 'The written video file.', 'Achieved bitrate in kbit/s.',
                       'Mean bits per pixel per frame (8·bytes / (frames·H·W)).',
                       'One (codec, mean bpp) condition for every frame (an approximation, see Codec Condition).',
                       'JSON: codec, frames, size, fps, qp/crf, kbps, target, bytes, per-frame bpp, path.')
    FUNCTION = 'recompress'
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def recompress(self, images: torch.Tensor, codec: str, mode: str, kbps: float = 2000.0, size_kb: float = 1000.0,
                   crf: float = 23.0, qp: int = 28, fps: float = 24.0, gop: int = 0, preset: str = 'medium',
                   container: str = 'mp4', filename_prefix: str = 'vrpsr_video', output_dir: str = '') -> dict:
        frames = to_bchw(check_image(images, 'images')).cpu()
        if mode not in VIDEO_MODES:
            raise ValueError(f'unknown mode {mode!r}; use one of {", ".join(VIDEO_MODES)}')
        path = _next_video_path(filename_prefix, container, output_dir)
        rate = {'kbps': dict(kbps=float(kbps)), 'file_size': dict(size_bytes=round(float(size_kb) * 1000)),
                'crf': dict(crf=float(crf)), 'qp': dict(qp=int(qp))}[mode]
        with warnings.catch_warnings():  # a missed target is raised below
            warnings.simplefilter('ignore', RuntimeWarning)
            result = encode_video(list(frames), codec, fps=float(fps), gop=int(gop) or None, preset=preset, **rate)
        if not result.reachable:
            raise ValueError(result.note)
        write_video(result, path)
        height, width = result.frames.shape[1:3]
        report = {'codec': codec, 'frames': len(result.frame_bytes), 'width': width, 'height': height,
                  'fps': result.fps, 'qp': result.qp, 'crf': result.crf, 'kbps': result.kbps,
                  'target_kbps': result.target_kbps, 'bytes': result.num_bytes, 'mean_bpp': result.mean_bpp,
                  'bpp': list(result.bpp), 'num_encodes': result.num_encodes, 'preset': preset,
                  'gop': result.gop, 'path': path}
        setting = f'QP {result.qp}' if result.qp is not None else f'CRF {result.crf:g}'
        text = (f'{os.path.basename(path)}: {codec} {setting}, {result.kbps:.1f} kbps'
                + (f' (target {result.target_kbps:.1f})' if result.target_kbps is not None else '')
                + f', {result.num_bytes} bytes, {result.mean_bpp:.4f} bpp per frame')
        decoded = torch.stack([torch.from_numpy(f) for f in result.frames]).float().div(255.0)
        condition = VRPSRCondition((CodecCondition(codec, result.mean_bpp),))
        return _shown(text, (decoded.to(bridge.output_device()), path, result.kbps, result.mean_bpp, condition,
                             json.dumps(report)))


def _next_video_path(prefix: str, container: str, output_dir: str) -> str:
    """``{folder}/{prefix}_{n:05d}.{container}`` with the first unused n."""
    prefix = prefix.strip()
    if not prefix or os.path.basename(prefix) != prefix:
        raise ValueError(f'filename_prefix must be a plain file name, got {prefix!r}')
    folder = output_dir.strip() or bridge.output_directory()
    if not folder:
        raise ValueError('output_dir is required outside ComfyUI (no output folder)')
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise ValueError(f'output folder {folder} does not exist')
    counter = 1
    while os.path.exists(os.path.join(folder, f'{prefix}_{counter:05d}.{container}')):
        counter += 1
    return os.path.join(folder, f'{prefix}_{counter:05d}.{container}')


class CodecSimulator:
    """Preview what the codec will do: the differentiable simulator f_theta(X', c) ~ X^ (Eq. 4/5)."""
    DESCRIPTION = ('Preview what the real codec will do to an image at the condition\'s codec and bpp, with a '
                   'learned simulator f_theta(X\', c) ≈ X^ (Eq. 4/5), without running the codec. Needs a '
                   'same-size model.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'simulator': ('VRPSR_MODEL', {'tooltip': 'A codec simulator from Load VRPSR Model.'}),
                             'image': ('IMAGE', {'tooltip': 'The images X\' to be compressed.'}),
                             'condition': ('VRPSR_CONDITION', {'tooltip': 'Codec and bpp to simulate.'}),
                             **_tile_inputs(0)}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    OUTPUT_TOOLTIPS = ('The simulated decoded images.',)
    FUNCTION = 'simulate'
    CATEGORY = CATEGORY

    def simulate(self, simulator: VRPSRModel, image: torch.Tensor, condition: VRPSRCondition, tile_size: int = 0,
                 tile_overlap: int = 32) -> Tuple[torch.Tensor]:
        return (_run_conditioned(simulator, image, condition, tile_size, tile_overlap, same_size=True),)


class PostProcess:
    """The post-processing net h(X^, c) applied after the real codec (§3.4, the "sandwich")."""
    DESCRIPTION = ('Restore decoded images with the post-processing net h(X^, c) after the real codec (§3.4, the '
                   '"sandwich"); use the condition Recompress measured. Needs a same-size model: an upscaling '
                   'model is rejected before it runs.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model': ('VRPSR_MODEL', {'tooltip': 'A post-processing net from Load VRPSR Model.'}),
                             'image': ('IMAGE', {'tooltip': 'The decoded images X^.'}),
                             'condition': ('VRPSR_CONDITION', {'tooltip': 'Codec and bpp they were coded at.'}),
                             **_tile_inputs(512)}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    OUTPUT_TOOLTIPS = ('The post-processed images.',)
    FUNCTION = 'postprocess'
    CATEGORY = CATEGORY

    def postprocess(self, model: VRPSRModel, image: torch.Tensor, condition: VRPSRCondition, tile_size: int = 512,
                    tile_overlap: int = 32) -> Tuple[torch.Tensor]:
        return (_run_conditioned(model, image, condition, tile_size, tile_overlap, same_size=True),)


class ExportPlainCheckpoint:
    """Fold a fixed condition into a plain RRDBNet / SRVGGNetCompact checkpoint (App. B.3: constant condition
    biases become convolution biases) that stock upscale nodes load. Written to ComfyUI's ``upscale_models``
    folder, or ``output_dir``; ``max_error`` is max |model(x, c) - plain(x)| on a probe image."""

    DESCRIPTION = ('Fold one fixed condition into a plain Real-ESRGAN RRDBNet / SRVGGNetCompact checkpoint (App. '
                   'B.3: constant condition terms become convolution biases) that ComfyUI\'s stock Load Upscale '
                   'Model node and any Real-ESRGAN tool load. max_error = max |model(x, c) - plain(x)|.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'model': ('VRPSR_MODEL', {'tooltip': 'A codec-aware RRDBNet or SRVGGNetCompact.'}),
                             'condition': ('VRPSR_CONDITION', {'tooltip': 'The one condition to fold in.'}),
                             'filename': ('STRING', {'default': 'vrpsr_export.pth',
                                                     'tooltip': 'Plain file name ending in .pth.'})},
                'optional': {'output_dir': ('STRING', {'default': '', 'tooltip': 'Folder to write to (default: '
                                                       'ComfyUI\'s first upscale_models folder).'})}}

    RETURN_TYPES = ('STRING', 'FLOAT')
    RETURN_NAMES = ('path', 'max_error')
    OUTPUT_TOOLTIPS = ('The written checkpoint.', 'max |model(x, c) - plain(x)| on a probe image (~1e-6).')
    FUNCTION = 'export'
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def export(self, model: VRPSRModel, condition: VRPSRCondition, filename: str,
               output_dir: str = '') -> dict:
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
        error = max_fold_error(model.module, plain, fixed, probe)
        return _shown(f'{path}\nmax |model(x, c) - plain(x)| = {error:.2e}', (path, error))


NODE_CLASS_MAPPINGS = {
    'VRPSRLoadModel': LoadVRPSRModel,
    'VRPSRCodecCondition': CodecConditionNode,
    'VRPSRUpscale': VRPSRUpscale,
    'VRPSRRecompress': Recompress,
    'VRPSRRecompressVideo': RecompressVideo,
    'VRPSRCodecSimulator': CodecSimulator,
    'VRPSRPostProcess': PostProcess,
    'VRPSRExportPlainCheckpoint': ExportPlainCheckpoint,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    'VRPSRLoadModel': 'Load VRPSR Model',
    'VRPSRCodecCondition': 'Codec Condition (VRPSR)',
    'VRPSRUpscale': 'VRPSR Upscale',
    'VRPSRRecompress': 'Recompress (real codec)',
    'VRPSRRecompressVideo': 'Recompress Video (x264/x265 at a bitrate)',
    'VRPSRCodecSimulator': 'Codec Simulator (VRPSR)',
    'VRPSRPostProcess': 'Post-process (VRPSR)',
    'VRPSRExportPlainCheckpoint': 'Export plain Real-ESRGAN checkpoint (VRPSR)',
}
