"""ASSR-EIC ComfyUI nodes (seed 002, docs/eic.md): encode images to ``.vrp`` files at a target bpp, decode them,
and an in-graph encode-decode preview with the achieved bpp. The decoder defaults to the one shipped in the
package; ``decoder_path`` takes another exported by ``vrpsr eic export-decoder``."""
import os
from functools import lru_cache
from typing import Dict, List, Tuple

import numpy as np
import torch

from vrpsr_plugin.eic.pipeline import DEFAULT_SCALES, Decoder, decode_bytes, encode_image, load_decoder

from . import comfy_bridge as bridge
from .nodes import CATEGORY, _shown
from .values import check_image, to_bchw

DECODER_TOOLTIP = ('An ASSR-EIC decoder .safetensors; empty = the shipped default (x265, s in [1, 8], trained on '
                   'CPU, see docs/eic.md). A decoder serves only the codecs, s and QPs it was trained for.')
DIAL_TOOLTIP = ('Generative balance: 0 = fidelity branch only, 1 = the learned per-pixel gate between the fidelity '
                'and the generative branch.')
BPP_TOOLTIP = ('Target bits per pixel of the whole file (8 x file bytes / original pixels, header included); the '
               'rate control searches s and the QP and keeps the pair the decoder restores best.')


@lru_cache(maxsize=4)
def _decoder(path: str) -> Decoder:
    return load_decoder(path.strip() or None)


def _common_inputs() -> Dict[str, tuple]:
    return {'codec': (['libx265'], {'tooltip': 'Real codec applied to the down-scaled picture (the shipped decoder '
                                               'is trained for libx265).'}),
            'bpp': ('FLOAT', {'default': 0.05, 'min': 0.005, 'max': 2.0, 'step': 0.005, 'tooltip': BPP_TOOLTIP}),
            'decoder_path': ('STRING', {'default': '', 'tooltip': DECODER_TOOLTIP})}


def _frames(image: torch.Tensor) -> List[np.ndarray]:
    frames = to_bchw(check_image(image)).cpu()
    return [np.ascontiguousarray((f.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)) for f in frames]


def _to_image(rgbs: List[np.ndarray]) -> torch.Tensor:
    if len({r.shape for r in rgbs}) != 1:
        raise ValueError(f'decoded pictures differ in size ({sorted({r.shape[:2] for r in rgbs})}); decode them '
                         'one at a time')
    return torch.from_numpy(np.stack(rgbs)).float().div_(255.0).to(bridge.output_device())


def _encode_all(image: torch.Tensor, codec: str, bpp: float, decoder_path: str, dial: float = 1.0):
    decoder = _decoder(decoder_path)
    results = []
    for rgb in _frames(image):
        bridge.throw_if_interrupted()
        results.append((rgb.shape, encode_image(rgb, codec, decoder, bpp=float(bpp), scales=DEFAULT_SCALES,
                                                dial=float(dial))))
    lines = [f'image {i}: {8.0 * len(r.data) / (shape[0] * shape[1]):.4f} bpp ({len(r.data)} bytes), s='
             f'{r.chosen.scale:.2f}, QP {r.chosen.qp}, PSNR {r.chosen.psnr:.2f} dB' for i, (shape, r) in
             enumerate(results)]
    mean_bpp = float(np.mean([8.0 * len(r.data) / (shape[0] * shape[1]) for shape, r in results]))
    return results, lines, mean_bpp


class EICEncodeToFile:
    """Encode each image to a ``.vrp`` file (ASSR-EIC, rate control to a target bpp)."""
    DESCRIPTION = ('ASSR-EIC: down-scale by the s the rate control picks, code with a real codec, and write one '
                   '.vrp file per image (path, or path_0.vrp, path_1.vrp, ... for a batch).')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'image': ('IMAGE', {'tooltip': 'Images to compress (each on its own).'}),
                             'path': ('STRING', {'default': 'output/eic.vrp', 'tooltip': 'The .vrp file to write; '
                                                 'a batch writes path_0.vrp, path_1.vrp, ...'}),
                             **_common_inputs()}}

    RETURN_TYPES = ('STRING', 'FLOAT')
    RETURN_NAMES = ('paths', 'bpp')
    OUTPUT_TOOLTIPS = ('The written files, one per line.', 'Mean bpp of the files over the batch.')
    FUNCTION = 'encode'
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def encode(self, image: torch.Tensor, path: str, codec: str, bpp: float, decoder_path: str = '') -> dict:
        from vrpsr_plugin.atomic_io import write_bytes
        path = os.path.abspath(os.path.expanduser(path.strip()))
        if not path.endswith('.vrp'):
            raise ValueError(f'path must end with .vrp, got {path!r}')
        results, lines, mean_bpp = _encode_all(image, codec, bpp, decoder_path)
        paths = [path] if len(results) == 1 else [f'{path[:-4]}_{i}.vrp' for i in range(len(results))]
        for target, (_, result) in zip(paths, results):
            write_bytes(target, result.data)
        return _shown('\n'.join(lines + paths), ('\n'.join(paths), mean_bpp))


class EICDecodeFromFile:
    """Decode a ``.vrp`` file with the ASSR-EIC decoder."""
    DESCRIPTION = 'ASSR-EIC: read a .vrp file, decode its bitstream and restore the original size with the decoder.'

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'paths': ('STRING', {'default': 'output/eic.vrp', 'multiline': True,
                                                  'tooltip': '.vrp files, one per line (same picture size).'}),
                             'dial': ('FLOAT', {'default': 1.0, 'min': 0.0, 'max': 1.0, 'step': 0.05,
                                                'tooltip': DIAL_TOOLTIP}),
                             'decoder_path': ('STRING', {'default': '', 'tooltip': DECODER_TOOLTIP})}}

    RETURN_TYPES = ('IMAGE',)
    RETURN_NAMES = ('image',)
    OUTPUT_TOOLTIPS = ('The restored images.',)
    FUNCTION = 'decode'
    CATEGORY = CATEGORY

    def decode(self, paths: str, dial: float, decoder_path: str = '') -> Tuple[torch.Tensor]:
        names = [p.strip() for p in paths.splitlines() if p.strip()]
        if not names:
            raise ValueError('paths is empty: give at least one .vrp file')
        decoder = _decoder(decoder_path)
        rgbs = []
        for name in names:
            bridge.throw_if_interrupted()
            with open(os.path.expanduser(name), 'rb') as handle:
                rgbs.append(decode_bytes(handle.read(), decoder, float(dial), name))
        return (_to_image(rgbs),)


class EICPreview:
    """In-graph ASSR-EIC encode + decode, with the achieved bpp."""
    DESCRIPTION = ('ASSR-EIC round trip in the graph: what a .vrp file at the target bpp decodes to, with the '
                   'achieved bpp, s and QP of each image shown on the node.')

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, dict]:
        return {'required': {'image': ('IMAGE', {'tooltip': 'Images to compress (each on its own).'}),
                             **_common_inputs(),
                             'dial': ('FLOAT', {'default': 1.0, 'min': 0.0, 'max': 1.0, 'step': 0.05,
                                                'tooltip': DIAL_TOOLTIP})}}

    RETURN_TYPES = ('IMAGE', 'FLOAT', 'STRING')
    RETURN_NAMES = ('image', 'bpp', 'report')
    OUTPUT_TOOLTIPS = ('The restored images (what decoding the files gives).', 'Mean achieved bpp over the batch.',
                       'One line per image: bpp, bytes, s, QP, PSNR.')
    FUNCTION = 'preview'
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def preview(self, image: torch.Tensor, codec: str, bpp: float, decoder_path: str = '',
                dial: float = 1.0) -> dict:
        results, lines, mean_bpp = _encode_all(image, codec, bpp, decoder_path, dial)
        restored = _to_image([r.restored for _, r in results])
        return _shown('\n'.join(lines), (restored, mean_bpp, '\n'.join(lines)))


NODE_CLASS_MAPPINGS = {'VRPSREICEncodeToFile': EICEncodeToFile, 'VRPSREICDecodeFromFile': EICDecodeFromFile,
                       'VRPSREICPreview': EICPreview}
NODE_DISPLAY_NAME_MAPPINGS = {'VRPSREICEncodeToFile': 'ASSR-EIC Encode to File',
                              'VRPSREICDecodeFromFile': 'ASSR-EIC Decode from File',
                              'VRPSREICPreview': 'ASSR-EIC Encode-Decode Preview'}
