"""ComfyUI nodes: loaded by path as ComfyUI loads a custom node, node contracts, the example API workflows run node
by node on CPU with tiny real models and real codecs, bad inputs, and the bridge to a (fake) ComfyUI runtime."""
import importlib.util
import inspect
import json
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

    def add_model_folder_path(self, folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths, _ = self.folder_names_and_paths.setdefault(folder_name, ([], set()))
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_folder_paths(self, folder_name: str) -> list:
        return list(self.folder_names_and_paths[folder_name][0])


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


def run_workflow(prompt: dict, mappings: dict, core: dict) -> dict:
    """Execute an API-format prompt node by node in dependency order, validating links and combo values as
    ComfyUI does; returns {node_id: outputs} (every intermediate output, for checking)."""
    outputs, visiting = {}, set()

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
        result = getattr(obj, cls.FUNCTION)(**kwargs)
        assert isinstance(result, tuple) and len(result) == len(cls.RETURN_TYPES)
        outputs[node_id] = result
        visiting.discard(node_id)

    for node_id in prompt:
        execute(node_id)
    return outputs


# ----------------------------------------------------------------------------------------------------- tests
def test_loaded_by_path_exposes_mappings(package):
    mappings, names = package.NODE_CLASS_MAPPINGS, package.NODE_DISPLAY_NAME_MAPPINGS
    assert set(mappings) == set(names)
    assert {'VRPSRLoadModel', 'VRPSRCodecCondition', 'VRPSRUpscale', 'VRPSRRecompress', 'VRPSRCodecSimulator',
            'VRPSRPostProcess', 'VRPSRExportPlainCheckpoint'} == set(mappings)
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
        assert measured.conditions[i].bpp == pytest.approx(entry['bpp']) and measured.conditions[i].qp == entry['qp']
        if target is not None:
            assert entry['reachable'] and entry['target_bpp'] == pytest.approx(target)
            low, high = qp_range(entry['codec'])
            for neighbour in {max(entry['qp'] - 1, low), min(entry['qp'] + 1, high)}:
                assert abs(entry['bpp'] - target) <= abs(encode(frame, entry['codec'], qp=neighbour).bpp - target)
    assert mean_bpp == pytest.approx(np.mean([e['bpp'] for e in entries]))
    assert total_bytes == sum(e['bytes'] for e in entries)


@pytest.mark.parametrize('workflow', ['vrpsr_upscale_recompress.json', 'vrpsr_sandwich_postprocess.json'])
def test_example_workflows_run(workflow, package, comfy_models, photos):
    prompt = json.loads((WORKFLOWS / workflow).read_text())
    low_res = [downscale(p, 48) for p in photos[:2]]
    saved = []
    outputs = run_workflow(prompt, package.NODE_CLASS_MAPPINGS,
                           {'LoadImage': LoadImage(to_image(low_res)), 'SaveImage': SaveImage(saved)})
    by_type = {node['class_type']: node_id for node_id, node in prompt.items()}

    condition = outputs[by_type['VRPSRCodecCondition']][0]
    qp = prompt[by_type['VRPSRCodecCondition']]['inputs']['qp']
    for lr, cond in zip(low_res, condition.conditions):  # R_bar of the LR input (Eq. 1) spread over 4x4 more pixels
        assert cond.bpp == pytest.approx(encode(lr, 'libx264', qp=qp).bpp / 16)

    upscaled = outputs[by_type['VRPSRUpscale']][0]
    assert upscaled.shape == (2, 192, 192, 3) and upscaled.dtype == torch.float32
    assert upscaled.device.type == 'cpu' and 0 <= upscaled.min() and upscaled.max() <= 1

    recompressed = outputs[by_type['VRPSRRecompress']]
    check_recompress(upscaled, recompressed, [c.bpp for c in condition.conditions])

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
    by_qp = nodes['VRPSRRecompress'].recompress(image, 'libx265', 'qp', qp=35)
    check_recompress(image, by_qp, [None] * 3)
    assert [e['qp'] for e in json.loads(by_qp[4])] == [35] * 3
    assert len({e['bytes'] for e in json.loads(by_qp[4])}) == 3  # each image encoded on its own
    target = 0.5
    by_rate = nodes['VRPSRRecompress'].recompress(image, 'libx264', 'target_bpp', bpp=target)
    check_recompress(image, by_rate, [target] * 3)
    by_crf = nodes['VRPSRRecompress'].recompress(image, 'libx264', 'crf', crf=30.0)
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
    path, max_error = nodes['VRPSRExportPlainCheckpoint'].export(model, condition_of(package), 'plain_x4.pth')
    assert Path(path) == tmp_path / 'models' / 'upscale_models' / 'plain_x4.pth' and max_error < 1e-4
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
