"""ComfyUI nodes: loaded by path as ComfyUI loads a custom node, node contracts, the example API workflows run node
by node on CPU with tiny real models and real codecs, bad inputs, and the bridge to a (fake) ComfyUI runtime."""
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import REPO
from vrpsr_plugin.archs.codec_aware_rrdbnet_arch import CodecAwareRRDBNet
from vrpsr_plugin.archs.diffusion_simulator_arch import DiffusionCodecSimulator
from vrpsr_plugin.archs.post_process_arch import CodecPostProcessNet
from vrpsr_plugin.archs.s3diff_arch import CodecAwareS3Diff
from vrpsr_plugin.archs.tiny_sd import build_sd_folder
from vrpsr_plugin.codecs import encode, qp_range
from vrpsr_plugin.codecs.condition import picture_header_bits
from vrpsr_plugin.inference import save_model

PACKAGE_DIR = REPO / 'comfy_nodes'
WORKFLOWS = PACKAGE_DIR / 'workflows'


def load_custom_node(module_name: str) -> types.ModuleType:
    """What ComfyUI's ``load_custom_node`` does with a custom node directory."""
    spec = importlib.util.spec_from_file_location(module_name, PACKAGE_DIR / '__init__.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def package() -> types.ModuleType:
    return load_custom_node('vrpsr_custom_node')


def to_image(photos) -> torch.Tensor:
    """uint8 HxWx3 photos -> ComfyUI IMAGE [B, H, W, 3] float in [0, 1] (what LoadImage outputs)."""
    return torch.from_numpy(np.stack(photos)).float().div(255.0)


def downscale(photo: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------- a ComfyUI stand-in
class FakeFolderPaths(types.ModuleType):
    """The part of ComfyUI's ``folder_paths`` module the nodes use, with its semantics."""

    def __init__(self, base: Path) -> None:
        super().__init__('folder_paths')
        self.models_dir = str(base / 'models')
        self.folder_names_and_paths = {'upscale_models': ([str(base / 'models' / 'upscale_models')], {'.pth'})}
        self.output_directory = str(base / 'output')  # ComfyUI creates it at start-up
        Path(self.output_directory).mkdir(parents=True, exist_ok=True)

    def add_model_folder_path(self, folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths, _ = self.folder_names_and_paths.setdefault(folder_name, ([], set()))
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_folder_paths(self, folder_name: str) -> list:
        return list(self.folder_names_and_paths[folder_name][0])

    def get_output_directory(self) -> str:
        return self.output_directory


class FakeComfy:
    """``comfy``, ``comfy.model_management`` and ``comfy.utils`` recording what the nodes ask of them."""

    def __init__(self) -> None:
        self.calls = {'get_torch_device': 0, 'free_memory': [], 'interrupt_checks': 0, 'unet_offload_device': 0}
        self.bars = []
        mm = types.ModuleType('comfy.model_management')
        mm.OOM_EXCEPTION = torch.OutOfMemoryError
        mm.get_torch_device = self._device
        mm.unet_offload_device = self._offload
        mm.intermediate_device = lambda: torch.device('cpu')
        mm.free_memory = lambda num_bytes, device: self.calls['free_memory'].append((num_bytes, device))
        mm.soft_empty_cache = lambda: None
        mm.throw_exception_if_processing_interrupted = self._interrupt_check
        utils = types.ModuleType('comfy.utils')
        bars = self.bars

        class ProgressBar:
            def __init__(self, total):
                self.total, self.current, self.values = total, 0, []
                bars.append(self)

            def update(self, value):
                self.update_absolute(self.current + value)

            def update_absolute(self, value, total=None, preview=None):
                self.total = self.total if total is None else total
                self.current = value
                self.values.append(value)

        utils.ProgressBar = ProgressBar
        comfy = types.ModuleType('comfy')
        comfy.model_management, comfy.utils = mm, utils
        self.modules = {'comfy': comfy, 'comfy.model_management': mm, 'comfy.utils': utils}

    def _device(self):
        self.calls['get_torch_device'] += 1
        return torch.device('cpu')

    def _offload(self):
        self.calls['unet_offload_device'] += 1
        return torch.device('cpu')

    def _interrupt_check(self):
        self.calls['interrupt_checks'] += 1


# --------------------------------------------------------------------------------------- an API-format executor
class LoadImage:
    """Stand-in for ComfyUI core's LoadImage: the image file is replaced by real photos."""
    RETURN_TYPES = ('IMAGE', 'MASK')
    FUNCTION = 'load'

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image

    @classmethod
    def INPUT_TYPES(cls):
        return {'required': {'image': ('STRING', {})}}

    def load(self, image):
        return self.image, torch.zeros(self.image.shape[:3])


class SaveImage:
    """Stand-in for ComfyUI core's SaveImage: captures what it is given."""
    RETURN_TYPES = ()
    FUNCTION = 'save'
    OUTPUT_NODE = True

    def __init__(self, saved: list) -> None:
        self.saved = saved

    @classmethod
    def INPUT_TYPES(cls):
        return {'required': {'images': ('IMAGE',), 'filename_prefix': ('STRING', {})}}

    def save(self, images, filename_prefix):
        self.saved.append(images)
        return ()


def split_output(output) -> tuple:
    """(result tuple, ui dict) of a node's return value, as ComfyUI's executor reads it: a tuple, or
    ``{"ui": {...}, "result": (...)}`` from a node that shows something."""
    if isinstance(output, dict):
        assert set(output) == {'ui', 'result'}, set(output)
        return output['result'], output['ui']
    return output, None


def run_workflow(prompt: dict, mappings: dict, core: dict, shown: dict = None) -> dict:
    """Execute an API-format prompt node by node in dependency order, validating links and combo values as
    ComfyUI does; returns {node_id: outputs} (every intermediate output, for checking) and records what each
    node shows in ``shown``."""
    outputs, visiting = {}, set()
    shown = {} if shown is None else shown

    def execute(node_id: str) -> None:
        if node_id in outputs:
            return
        assert node_id not in visiting, f'cycle at node {node_id}'
        visiting.add(node_id)
        node = prompt[node_id]
        cls = mappings.get(node['class_type']) or type(core[node['class_type']])
        obj = core.get(node['class_type']) or cls()
        spec = cls.INPUT_TYPES()
        declared = {**spec['required'], **spec.get('optional', {})}
        assert set(spec['required']) <= set(node['inputs']), f'node {node_id} misses required inputs'
        kwargs = {}
        for name, value in node['inputs'].items():
            assert name in declared, f'node {node_id} ({node["class_type"]}) has no input {name!r}'
            kind = declared[name][0]
            if isinstance(value, list):  # a link [source_id, output_index]
                source, index = value
                execute(source)
                source_cls = mappings.get(prompt[source]['class_type']) or type(core[prompt[source]['class_type']])
                assert source_cls.RETURN_TYPES[index] == kind, f'{node_id}.{name}: link type mismatch'
                kwargs[name] = outputs[source][index]
            else:
                if isinstance(kind, list):
                    assert value in kind, f'{node_id}.{name}: {value!r} not in {kind}'
                kwargs[name] = value
        result, ui = split_output(getattr(obj, cls.FUNCTION)(**kwargs))
        assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
        if node['class_type'] in mappings:  # every VRPSR output node shows its result on the node
            assert (ui is not None) == getattr(cls, 'OUTPUT_NODE', False), f'{node_id}: shows nothing'
        if ui is not None:
            shown[node_id] = ui
        outputs[node_id] = result
        visiting.discard(node_id)

    for node_id in prompt:
        execute(node_id)
    return outputs


# ----------------------------------------------------------------------------------------------------- tests
def test_loaded_by_path_exposes_mappings(package):
    mappings, names = package.NODE_CLASS_MAPPINGS, package.NODE_DISPLAY_NAME_MAPPINGS
    assert set(mappings) == set(names)
    assert {'VRPSRLoadModel', 'VRPSRCodecCondition', 'VRPSRUpscale', 'VRPSRRecompress', 'VRPSRRecompressVideo',
            'VRPSRCodecSimulator', 'VRPSRPostProcess', 'VRPSRExportPlainCheckpoint', 'VRPSREICEncodeToFile',
            'VRPSREICDecodeFromFile', 'VRPSREICPreview'} == set(mappings)
    assert all(isinstance(v, str) and v for v in names.values())


def test_node_contracts(package):
    for key, cls in package.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert isinstance(spec, dict) and set(spec) <= {'required', 'optional', 'hidden'} and 'required' in spec
        inputs = {**spec['required'], **spec.get('optional', {})}
        for name, entry in inputs.items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, f'{key}.{name}: {entry!r}'
            kind = entry[0]
            if isinstance(kind, list):
                assert kind and all(isinstance(v, str) for v in kind), f'{key}.{name}: empty or non-str combo'
            else:
                assert isinstance(kind, str) and kind.isupper(), f'{key}.{name}: type {kind!r}'
            if len(entry) == 2:
                assert isinstance(entry[1], dict)
                if 'default' in entry[1] and 'min' in entry[1]:
                    assert entry[1]['min'] <= entry[1]['default'] <= entry[1]['max']
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
        assert all(isinstance(t, str) and t.isupper() for t in cls.RETURN_TYPES)
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert cls.CATEGORY == 'VRPSR'
        method = getattr(cls(), cls.FUNCTION)
        assert callable(method)
        params = inspect.signature(method).parameters
        assert set(inputs) == set(params), f'{key}: inputs {set(inputs)} vs parameters {set(params)}'
        for name in spec.get('optional', {}):
            assert params[name].default is not inspect.Parameter.empty, f'{key}.{name} optional without default'


def test_importable_as_package(package):
    module = importlib.import_module('comfy_nodes')
    assert set(module.NODE_CLASS_MAPPINGS) == set(package.NODE_CLASS_MAPPINGS)


@pytest.fixture
def comfy_models(tmp_path, monkeypatch, package):
    """A fake ComfyUI models tree holding the two tiny models the example workflows name, registered through
    ``folder_paths`` exactly as at ComfyUI start-up."""
    fake = FakeFolderPaths(tmp_path)
    monkeypatch.setitem(sys.modules, 'folder_paths', fake)
    package.comfy_bridge.register_model_folder()
    folder = Path(fake.get_folder_paths('vrpsr')[0])
    save_model(tiny_sr(), str(folder / 'vrpsr_realesrgan_x4.pth'))
    save_model(tiny_post(), str(folder / 'vrpsr_postprocess.pth'))
    return fake


def trained_like(net: torch.nn.Module, *zero_initialised: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised layers (condition heads, residual output) small random weights, as training
    would, so the condition and the residual path change the output."""
    for layer in zero_initialised:
        torch.nn.init.normal_(layer.weight, std=0.05)
    return net.eval()


def tiny_sr() -> CodecAwareRRDBNet:
    """A tiny x4 codec-aware RRDBNet whose trunk passes the picture through (Dirac convolutions: nearest-neighbour
    upsampling, so the codec sees photo content at the output size) plus a small condition-dependent residual from
    the RRDB body. 32 growth channels: ComfyUI's loader (spandrel) assumes Real-ESRGAN's value for exports."""
    torch.manual_seed(0)
    net = CodecAwareRRDBNet(scale=4, num_feat=8, num_block=1, num_grow_ch=32, head_hidden=8)
    for conv in (net.conv_first, net.conv_up1, net.conv_up2, net.conv_hr, net.conv_last):
        torch.nn.init.dirac_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    return trained_like(net, net.conv_body, *(head[2] for head in net.cond_heads.heads))


def tiny_post() -> CodecPostProcessNet:
    torch.manual_seed(1)
    net = CodecPostProcessNet(num_feat=8, num_block=1, head_hidden=8)
    return trained_like(net, net.conv_last, *(head[2] for head in net.cond_heads.heads))


def check_recompress(node_input: torch.Tensor, outputs: tuple, targets) -> None:
    """Recompress reports what it produced: re-encode its input at the reported QP independently and compare
    bytes, bpp and decoded pixels; the QP is the closest to the target rate among its neighbours (Eq. 2)."""
    image, mean_bpp, total_bytes, measured, report = outputs
    entries = json.loads(report)
    assert len(entries) == node_input.shape[0] == image.shape[0]
    height, width = node_input.shape[1:3]
    for i, (entry, target) in enumerate(zip(entries, targets)):
        frame = node_input[i].movedim(-1, 0)
        again = encode(frame, entry['codec'], qp=entry['qp'])
        assert again.num_bytes == entry['bytes']
        assert again.bpp == pytest.approx(entry['bpp']) == pytest.approx(8 * entry['bytes'] / (height * width))
        assert torch.equal(again.tensor(), image[i].movedim(-1, 0))
        header = picture_header_bits(entry['codec']) / (height * width)
        assert measured.conditions[i].bpp == pytest.approx(max(entry['bpp'] - header, 0.0))
        assert measured.conditions[i].qp == entry['qp']
        if target is not None:
            assert entry['reachable'] and entry['target_bpp'] == pytest.approx(target)
            low, high = qp_range(entry['codec'])
            for neighbour in {max(entry['qp'] - 1, low), min(entry['qp'] + 1, high)}:
                assert abs(entry['bpp'] - target) <= abs(encode(frame, entry['codec'], qp=neighbour).bpp - target)
    assert mean_bpp == pytest.approx(np.mean([e['bpp'] for e in entries]))
    assert total_bytes == sum(e['bytes'] for e in entries)


def check_shown_rates(ui: dict, outputs: tuple) -> None:
    """The Recompress node shows every image's achieved bpp and bytes (as in its report) and the batch totals."""
    text = ui['text'][0]
    entries = json.loads(outputs[4])
    lines = text.splitlines()
    assert len(lines) == len(entries) + 1
    for line, entry in zip(lines, entries):
        assert f'{entry["bpp"]:.4f} bpp' in line and f'{entry["bytes"]} bytes' in line and entry['codec'] in line
    assert f'mean {outputs[1]:.4f} bpp, {outputs[2]} bytes' in lines[-1]


@pytest.mark.parametrize('workflow', ['vrpsr_upscale_recompress.json', 'vrpsr_sandwich_postprocess.json'])
def test_example_workflows_run(workflow, package, comfy_models, photos):
    prompt = json.loads((WORKFLOWS / workflow).read_text())
    low_res = [downscale(p, 48) for p in photos[:2]]
    saved, shown = [], {}
    outputs = run_workflow(prompt, package.NODE_CLASS_MAPPINGS,
                           {'LoadImage': LoadImage(to_image(low_res)), 'SaveImage': SaveImage(saved)}, shown)
    by_type = {node['class_type']: node_id for node_id, node in prompt.items()}

    condition = outputs[by_type['VRPSRCodecCondition']][0]
    qp = prompt[by_type['VRPSRCodecCondition']]['inputs']['qp']
    header = picture_header_bits('libx264')  # R_bar of the LR input (Eq. 1) over 4x4 more pixels, less the header
    kept = [encode(lr, 'libx264', qp=qp).bpp / 16 for lr in low_res]  # the bits kept, per pixel of X'
    for lr, cond, bpp in zip(low_res, condition.conditions, kept):
        assert cond.bpp == pytest.approx(bpp - header / (16 * lr.shape[0] * lr.shape[1]))

    upscaled = outputs[by_type['VRPSRUpscale']][0]
    assert upscaled.shape == (2, 192, 192, 3) and upscaled.dtype == torch.float32
    assert upscaled.device.type == 'cpu' and 0 <= upscaled.min() and upscaled.max() <= 1

    recompressed = outputs[by_type['VRPSRRecompress']]
    check_recompress(upscaled, recompressed, kept)  # mode condition: the header added back, the same bits
    check_shown_rates(shown[by_type['VRPSRRecompress']], recompressed)

    assert len(saved) == 1
    final = saved[0]
    assert final.shape == (2, 192, 192, 3) and 0 <= final.min() and final.max() <= 1
    if 'VRPSRPostProcess' in by_type:
        assert final is outputs[by_type['VRPSRPostProcess']][0]
        assert not torch.equal(final, recompressed[0])
    else:
        assert final is recompressed[0]


@pytest.fixture(scope='module')
def nodes(package):
    """Node instances by class_type, and the package's value types."""
    return {key: cls() for key, cls in package.NODE_CLASS_MAPPINGS.items()}


def condition_of(package, codec='libx264', bpp=0.2):
    return package.values.VRPSRCondition((package.values.CodecCondition(codec, bpp),))


def test_upscale_uses_condition_and_tiles(package, nodes, photo):
    model = package.values.VRPSRModel(tiny_sr(), 'tiny_sr.pth')
    image = to_image([downscale(photo, 48)])
    low = nodes['VRPSRUpscale'].upscale(model, image, 0, 32, condition_of(package, bpp=0.05))[0]
    high = nodes['VRPSRUpscale'].upscale(model, image, 0, 32, condition_of(package, bpp=1.0))[0]
    tiled = nodes['VRPSRUpscale'].upscale(model, image, 32, 16, condition_of(package, bpp=1.0))[0]
    assert low.shape == high.shape == tiled.shape == (1, 192, 192, 3)
    assert (low - high).abs().max() > 1e-3  # the condition reaches the backbone
    assert (tiled - high).abs().mean() < 0.02  # overlapping tiles agree with the whole-image run


@pytest.mark.parametrize('bad, message', [
    (lambda img: img.movedim(-1, 1), r'\[B, C, H, W\]'),
    (lambda img: img * 2.0, r'\[0, 1\]'),
    (lambda img: img[:0], 'empty batch'),
    (lambda img: img[0], '4-D'),
    (lambda img: (img * 255).to(torch.uint8), 'float'),
])
def test_upscale_rejects_bad_images(package, nodes, photo, bad, message):
    model = package.values.VRPSRModel(tiny_sr(), 'tiny_sr.pth')
    with pytest.raises(ValueError, match=message):
        nodes['VRPSRUpscale'].upscale(model, bad(to_image([downscale(photo, 32)])), 0, 32, condition_of(package))


def test_bad_inputs_name_the_problem(package, nodes, photo, tmp_path):
    image = to_image([downscale(photo, 32)] * 2)
    sr = package.values.VRPSRModel(tiny_sr(), 'tiny_sr.pth')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        nodes['VRPSRLoadModel'].load('[use model_path]', str(tmp_path / 'missing.pth'))
    with pytest.raises(FileNotFoundError, match='not_there.pth'):
        nodes['VRPSRLoadModel'].load('not_there.pth', '')
    with pytest.raises(ValueError, match='model_path'):
        nodes['VRPSRLoadModel'].load('[use model_path]', '')
    with pytest.raises(ValueError, match="unknown codec 'libfoo'"):
        nodes['VRPSRRecompress'].recompress(image, 'libfoo', 'qp', 30)
    with pytest.raises(ValueError, match="unknown codec 'libfoo'"):
        nodes['VRPSRCodecCondition'].build('libfoo', 'bpp', 0.1, 30)
    with pytest.raises(ValueError, match='reference'):
        nodes['VRPSRCodecCondition'].build('libx264', 'qp', 0.1, 30)
    with pytest.raises(ValueError, match='outside'):
        nodes['VRPSRCodecCondition'].build('libx264', 'qp', 0.1, 60, reference=image)
    with pytest.raises(ValueError, match='condition'):
        nodes['VRPSRRecompress'].recompress(image, 'libx264', 'condition', 30)
    with pytest.raises(ValueError, match='codec-aware'):
        nodes['VRPSRUpscale'].upscale(sr, image, 0, 32, None)
    three = package.values.VRPSRCondition((package.values.CodecCondition('libx264', 0.1),) * 3)
    with pytest.raises(ValueError, match='3 per-image entries but the image batch has 2'):
        nodes['VRPSRUpscale'].upscale(sr, image, 0, 32, three)
    with pytest.raises(ValueError, match='same-size'):
        nodes['VRPSRCodecSimulator'].simulate(sr, image, condition_of(package), 0, 32)


def test_recompress_modes_per_image(package, nodes, photos):
    image = to_image([downscale(p, 64) for p in photos])
    by_qp, ui = split_output(nodes['VRPSRRecompress'].recompress(image, 'libx265', 'qp', qp=35))
    check_recompress(image, by_qp, [None] * 3)
    check_shown_rates(ui, by_qp)
    assert [e['qp'] for e in json.loads(by_qp[4])] == [35] * 3
    assert len({e['bytes'] for e in json.loads(by_qp[4])}) == 3  # each image encoded on its own
    target = 0.5
    by_rate, ui = split_output(nodes['VRPSRRecompress'].recompress(image, 'libx264', 'target_bpp', bpp=target))
    check_recompress(image, by_rate, [target] * 3)
    assert all(f'(target {target:.4f})' in line for line in ui['text'][0].splitlines()[:3])
    by_crf, _ = split_output(nodes['VRPSRRecompress'].recompress(image, 'libx264', 'crf', crf=30.0))
    entries = json.loads(by_crf[4])
    assert all(e['crf'] == 30.0 and e['qp'] is None for e in entries)
    assert by_crf[2] == sum(encode(f.movedim(-1, 0), 'libx264', crf=30.0).num_bytes for f in image)


def test_bridge_uses_comfyui_when_present(tmp_path, monkeypatch, photo):
    comfy, fake_paths = FakeComfy(), FakeFolderPaths(tmp_path)
    for name, module in {**comfy.modules, 'folder_paths': fake_paths}.items():
        monkeypatch.setitem(sys.modules, name, module)
    package = load_custom_node('vrpsr_custom_node_in_comfy')
    monkeypatch.delitem(sys.modules, 'vrpsr_custom_node_in_comfy')

    # start-up registered models/vrpsr with folder_paths, so the loader lists what is put there
    paths, extensions = fake_paths.folder_names_and_paths['vrpsr']
    assert paths == [str(tmp_path / 'models' / 'vrpsr')] and {'.pth', '.safetensors', '.yml'} <= extensions
    save_model(tiny_sr(), str(tmp_path / 'models' / 'vrpsr' / 'sr.pth'))
    nodes = {key: cls() for key, cls in package.NODE_CLASS_MAPPINGS.items()}
    assert 'sr.pth' in nodes['VRPSRLoadModel'].INPUT_TYPES()['required']['model_name'][0]
    model = nodes['VRPSRLoadModel'].load('sr.pth')[0]

    image = to_image([downscale(photo, 48)] * 2)
    out = nodes['VRPSRUpscale'].upscale(model, image, 32, 8, condition_of(package))[0]
    assert out.shape == (2, 192, 192, 3)
    bar = comfy.bars[-1]  # 2 images x 2 x 2 tiles of 32 px with 8 px overlap, one step per tile
    assert (bar.total, bar.current) == (8, 8) and sorted(set(bar.values)) == list(range(1, 9))
    assert bar.values == sorted(bar.values)
    assert comfy.calls['get_torch_device'] >= 1 and comfy.calls['unet_offload_device'] >= 1
    assert comfy.calls['interrupt_checks'] >= 2
    num_bytes, device = comfy.calls['free_memory'][-1]
    assert device == torch.device('cpu') and num_bytes >= package.comfy_bridge.module_bytes(model.module)

    # Export writes into ComfyUI's upscale_models folder; ComfyUI's stock loader (spandrel) loads the plain net,
    # which equals the conditioned one at the fixed condition.
    (path, max_error), ui = split_output(nodes['VRPSRExportPlainCheckpoint'].export(model, condition_of(package),
                                                                                    'plain_x4.pth'))
    assert Path(path) == tmp_path / 'models' / 'upscale_models' / 'plain_x4.pth' and max_error < 1e-4
    assert ui['text'][0].startswith(path) and f'{max_error:.2e}' in ui['text'][0]
    from spandrel import ModelLoader
    descriptor = ModelLoader().load_from_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    assert descriptor.architecture.name == 'ESRGAN' and descriptor.scale == 4
    x = image[:1, :32, :32].movedim(-1, 1)
    with torch.no_grad():
        expected = model.module(x, condition_of(package).tensor(1))
        assert (descriptor.model(x) - expected).abs().max() < 1e-4


def test_export_needs_a_folder_and_one_condition(package, nodes):
    model = package.values.VRPSRModel(tiny_sr(), 'tiny_sr.pth')
    with pytest.raises(ValueError, match='output_dir'):
        nodes['VRPSRExportPlainCheckpoint'].export(model, condition_of(package), 'plain.pth')
    two = package.values.VRPSRCondition((package.values.CodecCondition('libx264', 0.1),
                                         package.values.CodecCondition('libx265', 0.1)))
    with pytest.raises(ValueError, match='one fixed condition'):
        nodes['VRPSRExportPlainCheckpoint'].export(model, two, 'plain.pth', '/tmp')
    with pytest.raises(ValueError, match='.pth'):
        nodes['VRPSRExportPlainCheckpoint'].export(model, condition_of(package), '../plain.pth', '/tmp')


def test_diffusion_models_from_save_pretrained_dirs(package, nodes, comfy_models, photos, tmp_path):
    """A DiffusionCodecSimulator and a CodecAwareS3Diff (tiny random SD-Turbo-layout base, built offline) saved with
    save_pretrained into models/vrpsr are listed as directories and loaded by name; the simulator previews the
    codec at the condition's rate, S3Diff upscales x4."""
    base = build_sd_folder(str(tmp_path / 'tiny_sd'))
    folder = Path(comfy_models.get_folder_paths('vrpsr')[0])
    torch.manual_seed(0)
    DiffusionCodecSimulator(base, lora_rank=2, lora_rank_vae=2, film_hidden=16).save_pretrained(
        str(folder / 'tiny_simulator'))
    CodecAwareS3Diff(base, scale=4, lora_rank=2, lora_rank_vae=2, film_hidden=16).save_pretrained(
        str(folder / 'tiny_s3diff'))
    assert {'tiny_simulator', 'tiny_s3diff'} <= set(nodes['VRPSRLoadModel'].INPUT_TYPES()['required']['model_name'][0])
    model = nodes['VRPSRLoadModel'].load('tiny_simulator')[0]
    s3diff = nodes['VRPSRLoadModel'].load('tiny_s3diff')[0]
    assert isinstance(model.module, DiffusionCodecSimulator) and isinstance(s3diff.module, CodecAwareS3Diff)
    small = to_image([downscale(photos[0], 16)])
    upscaled = nodes['VRPSRUpscale'].upscale(s3diff, small, 512, 32, condition_of(package))[0]
    assert upscaled.shape == (1, 64, 64, 3) and 0 <= upscaled.min() and upscaled.max() <= 1

    image = to_image([downscale(p, 32) for p in photos[:2]])
    low = nodes['VRPSRCodecSimulator'].simulate(model, image, condition_of(package, 'libx265', 0.05), 0, 32)[0]
    high = nodes['VRPSRCodecSimulator'].simulate(model, image, condition_of(package, 'libx265', 1.0), 0, 32)[0]
    assert low.shape == image.shape and 0 <= low.min() and low.max() <= 1
    assert (low - high).abs().max() > 1e-4  # the rate reaches the simulator (its Eq. 5 prompt)


def test_released_real_esrgan_weights(package, nodes, photo, shared_weight):
    """Real-ESRGAN's released compact model (../shared) through Load + Upscale: a plain model ignores the
    condition and restores a 4x-downscaled real photo close to the original."""
    model = nodes['VRPSRLoadModel'].load('[use model_path]', str(shared_weight('realesr-animevideov3.pth')))[0]
    assert not getattr(model.module, 'codec_aware', False)
    image = to_image([downscale(photo, 32)])
    out = nodes['VRPSRUpscale'].upscale(model, image, 512, 32)[0]
    assert torch.equal(out, nodes['VRPSRUpscale'].upscale(model, image, 512, 32, condition_of(package))[0])
    psnr = 10 * torch.log10(1 / ((out - to_image([photo])) ** 2).mean())
    assert out.shape == (1, 128, 128, 3) and psnr > 22


# ------------------------------------------------------------------------------------- nodes that explain themselves
def test_nodes_explain_themselves(package):
    """ComfyUI shows DESCRIPTION in search previews and each input's tooltip on hover: every node and input has
    one, rates name their unit, and the QP tooltip gives every codec's range."""
    for key, cls in package.NODE_CLASS_MAPPINGS.items():
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 60, key
        spec = cls.INPUT_TYPES()
        for name, entry in {**spec['required'], **spec.get('optional', {})}.items():
            assert len(entry) == 2 and isinstance(entry[1].get('tooltip'), str) and entry[1]['tooltip'], \
                f'{key}.{name} has no tooltip'
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) and all(cls.OUTPUT_TOOLTIPS), key
    nodes = package.NODE_CLASS_MAPPINGS
    recompress = nodes['VRPSRRecompress'].INPUT_TYPES()['required']
    condition = nodes['VRPSRCodecCondition'].INPUT_TYPES()['required']
    video = nodes['VRPSRRecompressVideo'].INPUT_TYPES()['required']
    for qp in (recompress['qp'], condition['qp']):
        for codec in recompress['codec'][0]:
            low, high = qp_range(codec)
            assert f'{codec} {low}-{high}' in qp[1]['tooltip']
    assert 'bpp' in recompress['bpp'][1]['tooltip'] and 'bpp' in condition['bpp'][1]['tooltip']
    assert 'kbit/s' in video['kbps'][1]['tooltip'] and 'kB' in video['size_kb'][1]['tooltip']
    assert 'Eq. 2' in nodes['VRPSRRecompress'].DESCRIPTION and '§3.4' in nodes['VRPSRPostProcess'].DESCRIPTION


def test_qp_ranges_consistent_and_named_per_codec(package, nodes, photo):
    """Both nodes offer the same codecs with the same QP widget (the union of the ranges); a QP outside the chosen
    codec's range is an error naming that range, before anything is encoded."""
    recompress = package.NODE_CLASS_MAPPINGS['VRPSRRecompress'].INPUT_TYPES()['required']
    condition = package.NODE_CLASS_MAPPINGS['VRPSRCodecCondition'].INPUT_TYPES()['required']
    assert recompress['codec'][0] == condition['codec'][0]
    codecs = recompress['codec'][0]
    assert codecs[:3] == ['libx264', 'libx265', 'libvvenc'] and {'jpeg', 'libwebp', 'libsvtav1'} <= set(codecs)
    for widget in (recompress['qp'][1], condition['qp'][1]):
        assert (widget['min'], widget['max']) == (min(qp_range(c)[0] for c in codecs),
                                                   max(qp_range(c)[1] for c in codecs))
    image = to_image([downscale(photo, 32)])
    for codec in codecs:
        low, high = qp_range(codec)
        for bad in {low - 1, high + 1} & set(range(0, 101)):
            message = rf'QP {bad} is outside the range \[{low}, {high}\] of {codec}'
            with pytest.raises(ValueError, match=message):
                nodes['VRPSRRecompress'].recompress(image, codec, 'qp', qp=bad)
            with pytest.raises(ValueError, match=message):
                nodes['VRPSRCodecCondition'].build(codec, 'qp', 0.1, bad, reference=image)


def test_listing_needs_no_ffmpeg_and_running_names_why(monkeypatch, tmp_path, photo):
    """With no ffmpeg, every node still lists (INPUT_TYPES runs no ffmpeg) and a node that needs it fails when it
    runs, naming the missing binary; nothing is written."""
    monkeypatch.setenv('VRPSR_FFMPEG', str(tmp_path / 'no_ffmpeg_here'))
    package = load_custom_node('vrpsr_custom_node_without_ffmpeg')
    monkeypatch.delitem(sys.modules, 'vrpsr_custom_node_without_ffmpeg')
    for key, cls in package.NODE_CLASS_MAPPINGS.items():
        assert cls.INPUT_TYPES()['required'], key
    image = to_image([downscale(photo, 32)] * 2)
    nodes = {key: cls() for key, cls in package.NODE_CLASS_MAPPINGS.items()}
    with pytest.raises(FileNotFoundError, match='no_ffmpeg_here'):
        nodes['VRPSRRecompress'].recompress(image, 'libvvenc', 'qp', qp=32)
    with pytest.raises(FileNotFoundError, match='no_ffmpeg_here'):
        nodes['VRPSRCodecCondition'].build('libvvenc', 'qp', 0.1, 32, reference=image)
    out = tmp_path / 'out'
    out.mkdir()
    with pytest.raises(FileNotFoundError, match='no_ffmpeg_here'):
        nodes['VRPSRRecompressVideo'].recompress(image, 'libx264', 'crf', output_dir=str(out))
    assert list(out.iterdir()) == []


def test_slight_overshoot_is_clamped_like_core_nodes(package, nodes, photo):
    image = to_image([downscale(photo, 32)])
    overshoot = image * 1.06 - 0.03  # [-0.03, 1.03], as a sharpen or colour node upstream may give
    assert overshoot.min() < 0 and overshoot.max() > 1
    shown, _ = split_output(nodes['VRPSRRecompress'].recompress(overshoot, 'libx264', 'qp', qp=30))
    clamped, _ = split_output(nodes['VRPSRRecompress'].recompress(overshoot.clamp(0, 1), 'libx264', 'qp', qp=30))
    assert torch.equal(shown[0], clamped[0]) and shown[2] == clamped[2]
    model = package.values.VRPSRModel(tiny_sr(), 'tiny_sr.pth')
    out = nodes['VRPSRUpscale'].upscale(model, overshoot, 0, 32, condition_of(package))[0]
    assert torch.equal(out, nodes['VRPSRUpscale'].upscale(model, overshoot.clamp(0, 1), 0, 32,
                                                          condition_of(package))[0])
    with pytest.raises(ValueError, match=r'\[0, 255\] or \[-1, 1\]'):
        nodes['VRPSRRecompress'].recompress(image * 255, 'libx264', 'qp', qp=30)


def test_post_process_rejects_an_upscaler_before_running_it(package, nodes, photo):
    sr = tiny_sr()
    calls = []
    hook = sr.register_forward_hook(lambda *_: calls.append(1))
    model = package.values.VRPSRModel(sr, 'tiny_sr_x4.pth')
    image = to_image([downscale(photo, 64)] * 3)
    try:
        with pytest.raises(ValueError, match='tiny_sr_x4.pth upscales x4; this node needs a same-size model'):
            nodes['VRPSRPostProcess'].postprocess(model, image, condition_of(package), 0, 32)
        with pytest.raises(ValueError, match='upscales x4'):
            nodes['VRPSRCodecSimulator'].simulate(model, image, condition_of(package), 0, 32)
    finally:
        hook.remove()
    assert calls == []  # no tile was run


# ------------------------------------------------------------------------------------------------------ video
def real_frames_image(count: int = 24) -> torch.Tensor:
    from tests.test_video import real_frames
    return to_image(real_frames(count))


def test_recompress_video_node(package, nodes, tmp_path):
    """24 real frames at a target bitrate: the achieved kbps is within 5% (2% search tolerance), the node shows it,
    and the returned frames are exactly what a stock decoder reads from the written file."""
    from tests.test_video import stock_decode
    frames = real_frames_image()
    out = tmp_path / 'out'
    out.mkdir()
    for codec in ('libx264', 'libx265'):
        result, ui = split_output(nodes['VRPSRRecompressVideo'].recompress(
            frames, codec, 'kbps', kbps=150.0, fps=24.0, gop=12, output_dir=str(out)))
        decoded, path, kbps, bpp, condition, report = result
        assert abs(kbps / 150 - 1) <= 0.05
        entry = json.loads(report)
        assert entry['codec'] == codec and entry['frames'] == 24 and entry['target_kbps'] == 150
        assert entry['kbps'] == kbps and entry['path'] == path and len(entry['bpp']) == 24
        assert bpp == pytest.approx(np.mean(entry['bpp'])) == pytest.approx(8 * entry['bytes'] / (24 * 96 * 128))
        assert condition.single() == package.values.CodecCondition(codec, bpp)
        assert decoded.shape == frames.shape and decoded.dtype == torch.float32
        assert torch.equal(decoded, torch.from_numpy(stock_decode(path)).float().div(255.0))
        assert f'{kbps:.1f} kbps (target 150.0)' in ui['text'][0] and f'{bpp:.4f} bpp' in ui['text'][0]
    assert sorted(p.name for p in out.iterdir()) == ['vrpsr_video_00001.mp4', 'vrpsr_video_00002.mp4']


@pytest.mark.parametrize('frames, kwargs, error', [
    (lambda f: f[:, :95], dict(mode='crf'), 'even width and height'),
    (lambda f: f, dict(mode='kbps', kbps=1e6), 'outside what libx264 reaches'),
    (lambda f: f, dict(mode='crf', filename_prefix='../escape'), 'plain file name'),
])
def test_recompress_video_bad_inputs_leave_nothing(nodes, tmp_path, frames, kwargs, error):
    out = tmp_path / 'out'
    out.mkdir()
    with pytest.raises(ValueError, match=error):
        nodes['VRPSRRecompressVideo'].recompress(frames(real_frames_image(6)), 'libx264',
                                                 **{'output_dir': str(out), **kwargs})
    assert list(out.iterdir()) == []


def test_video_workflow_runs(package, comfy_models):
    """The shipped video workflow (core LoadVideo / GetVideoComponents stand-ins feed 8 real low-res frames):
    condition from the video bitrate, x4 upscale, one x264 stream at that bitrate. The condition's per-frame bpp
    is the stream's mean bpp at the target rate (the approximation the docs describe)."""
    prompt = json.loads((WORKFLOWS / 'vrpsr_video_upscale_recompress.json').read_text())
    for node in prompt.values():  # the shipped 2000 kbps is for HD; these frames are 128x96 after x4
        if 'kbps' in node['inputs']:
            node['inputs']['kbps'] = 150.0
    low_res = to_image([cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA)
                        for f in (real_frames_image(8) * 255).round().byte().numpy()])

    class LoadVideo:
        RETURN_TYPES = ('VIDEO',)
        FUNCTION = 'load'

        @classmethod
        def INPUT_TYPES(cls):
            return {'required': {'file': ('STRING', {})}}

        def load(self, file):
            return ('video',)

    class GetVideoComponents:
        RETURN_TYPES = ('IMAGE', 'AUDIO', 'FLOAT')
        FUNCTION = 'get_components'

        @classmethod
        def INPUT_TYPES(cls):
            return {'required': {'video': ('VIDEO', {})}}

        def get_components(self, video):
            return low_res, None, 24.0

    shown = {}
    outputs = run_workflow(prompt, package.NODE_CLASS_MAPPINGS,
                           {'LoadVideo': LoadVideo(), 'GetVideoComponents': GetVideoComponents()}, shown)
    condition = outputs['4'][0].single()
    assert condition.bpp == pytest.approx(150e3 / (24 * 128 * 96))
    decoded, path, kbps, bpp, measured, report = outputs['6']
    assert decoded.shape == (8, 96, 128, 3) and abs(kbps / 150 - 1) <= 0.05
    assert abs(bpp / condition.bpp - 1) <= 0.05
    assert Path(path).parent == Path(comfy_models.get_output_directory()) and Path(path).is_file()
    assert 'kbps' in shown['6']['text'][0]


def test_condition_from_a_video_target(nodes, photo):
    reference = to_image([downscale(photo, 48)[:36]] * 3)  # 48x36 frames, x4 -> 192x144
    condition = nodes['VRPSRCodecCondition'].build('libx265', 'video_kbps', 0.1, 32, reference=reference,
                                                   upscale_factor=4, kbps=2000.0, fps=25.0)[0]
    assert condition.single().codec == 'libx265'
    assert condition.single().bpp == pytest.approx(2e6 / (25 * 192 * 144))
    with pytest.raises(ValueError, match='reference'):
        nodes['VRPSRCodecCondition'].build('libx265', 'video_kbps', 0.1, 32, kbps=2000.0)


# -------------------------------------------------------------------------------------------- packaging / install
def requirement_lines(path: Path) -> list:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith('#')]


def test_registry_metadata_and_requirements():
    """pyproject.toml carries the Comfy registry's [tool.comfy] section and the same dependencies as the
    requirements.txt ComfyUI-Manager installs: vrpsr_plugin's own requirement lines (ranges, no exact pins to
    clash with ComfyUI's own), never torch/torchvision, each satisfied by the versions tested here."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    meta = tomllib.loads((PACKAGE_DIR / 'pyproject.toml').read_text())
    assert meta['tool']['comfy']['DisplayName'] and meta['project']['name'] == 'comfyui-vrpsr'
    requirements = requirement_lines(PACKAGE_DIR / 'requirements.txt')
    assert meta['project']['dependencies'] == requirements
    parsed = [Requirement(line) for line in requirements]
    assert requirements == requirement_lines(REPO / 'requirements.txt')
    for req in parsed:
        assert req.name not in ('torch', 'torchvision') and '==' not in str(req.specifier)
        assert req.specifier.contains(version(req.name)), f'{req} does not admit the installed {version(req.name)}'

    spec = importlib.util.spec_from_file_location('vrpsr_comfy_install', PACKAGE_DIR / 'install.py')
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)  # defines commands() only; installs nothing unless run as a script
    commands = install.commands()
    assert [c[-1] for c in commands] == ['basicsr==1.4.2', str(REPO)] and commands[1][-2] == '-e'
    assert all({'--no-build-isolation', '--no-deps'} <= set(c) for c in commands)
    assert not any('torch' in arg for c in commands for arg in c[4:])


def test_prestartup_script_lets_comfyui_import_torchvision():
    """ComfyUI runs each custom node's prestartup_script.py before importing its own modules, which import
    torchvision. Where torchvision is the CUDA wheel on CPU torch (scripts/install.sh on a CPU machine), a plain
    ``import torchvision`` fails; after the script it imports, and so do spandrel's loaders that ComfyUI uses."""
    script = PACKAGE_DIR / 'prestartup_script.py'
    code = (f'import importlib.util\n'
            f'spec = importlib.util.spec_from_file_location("prestartup", {str(script)!r})\n'
            f'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
            f'import sys\n'
            f'assert "torchvision" in sys.modules  # imported before ComfyUI would import it\n'
            f'import torchvision, torchvision.transforms.functional\n'
            f'from spandrel import ModelLoader\n'
            f'print("imported", torchvision.__version__)\n')
    started = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert started.returncode == 0 and 'imported' in started.stdout, started.stderr[-2000:]
    plain = subprocess.run([sys.executable, '-c', 'import torchvision'], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 or 'torchvision::' in plain.stderr  # the failure the script prevents


HARNESS = '''
import { app } from "./scripts/app.js";
await import("./extensions/vrpsr/vrpsr_report.js");
const [ext] = app.extensions;
const result = {};
for (const [name, output_node] of [["VRPSRRecompress", true], ["VRPSRUpscale", false], ["SaveImage", true]]) {
  function NodeType() {}
  NodeType.prototype.computeSize = function () { return [200, 120]; };
  NodeType.prototype.setSize = function (size) { this.size = size; };
  await ext.beforeRegisterNodeDef(NodeType, { name, output_node });
  const node = new NodeType();
  node.onExecuted?.({ text: ["#0 libx264 QP 30: 0.1 bpp"] });
  node.onExecuted?.({ text: ["#0 libx264 QP 31: 0.09 bpp"] });
  result[name] = (node.widgets ?? []).map((w) => ({ name: w.name, value: w.value, serialize: w.serialize,
                                                     readOnly: w.inputEl.readOnly }));
}
console.log(JSON.stringify(result));
'''


def test_web_extension_shows_results_on_the_node(package, tmp_path):
    """web/vrpsr_report.js (served by ComfyUI from WEB_DIRECTORY) run under node with stand-ins for ComfyUI's
    app.js / widgets.js: a VRPSR output node gets one read-only box, not saved with the workflow, holding the
    latest ui.text; other nodes are left alone."""
    node = shutil.which('node')
    if node is None:
        pytest.skip('node (JavaScript) is not installed')
    web = PACKAGE_DIR / package.WEB_DIRECTORY
    assert (web / 'vrpsr_report.js').is_file()
    assert all(key.startswith('VRPSR') for key, cls in package.NODE_CLASS_MAPPINGS.items()
               if getattr(cls, 'OUTPUT_NODE', False))  # the extension patches exactly these
    (tmp_path / 'scripts').mkdir()
    (tmp_path / 'extensions' / 'vrpsr').mkdir(parents=True)
    shutil.copy(web / 'vrpsr_report.js', tmp_path / 'extensions' / 'vrpsr')
    (tmp_path / 'scripts' / 'app.js').write_text(
        'export const app = { extensions: [], registerExtension(ext) { this.extensions.push(ext); } };\n')
    (tmp_path / 'scripts' / 'widgets.js').write_text(
        'export const ComfyWidgets = { STRING(node, name) { const widget = { name, value: "", inputEl: {} };\n'
        '  (node.widgets ??= []).push(widget); return { widget }; } };\n')
    (tmp_path / 'run.mjs').write_text(HARNESS)
    done = subprocess.run([node, 'run.mjs'], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown['VRPSRRecompress'] == [{'name': 'vrpsr_report', 'value': '#0 libx264 QP 31: 0.09 bpp',
                                         'serialize': False, 'readOnly': True}]
    assert shown['VRPSRUpscale'] == [] and shown['SaveImage'] == []
