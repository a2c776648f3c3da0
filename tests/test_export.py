"""Folding a fixed condition into plain Real-ESRGAN checkpoints (``vrpsr export``), checked through spandrel,
the loader ComfyUI's upscale-model node uses, and through basicsr's own nets."""
import os

import pytest
import spandrel
import torch
from basicsr.archs.rrdbnet_arch import RRDBNet

from tests.conftest import crop
from tests.test_archs import perturb_heads, to_tensor
from vrpsr_plugin.archs.codec_aware_rrdbnet_arch import CodecAwareRRDBNet
from vrpsr_plugin.archs.codec_aware_srvgg_arch import CodecAwareSRVGGNetCompact
from vrpsr_plugin.archs.post_process_arch import CodecPostProcessNet
from vrpsr_plugin.cli import main as vrpsr
from vrpsr_plugin.codecs.condition import CodecCondition
from vrpsr_plugin.export import ExportError, export_plain, fold_condition
from vrpsr_plugin.inference import save_model

CONDITION = CodecCondition('libx265', 0.2)


def conditioned(model, x, condition=CONDITION):
    with torch.no_grad():
        return model(x, condition.vector(model.codecs)[None].expand(x.shape[0], -1))


def spandrel_output(path, x):
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    with torch.no_grad():
        return descriptor, descriptor.model.eval()(x)


@pytest.mark.parametrize('make,arch_id,scale', [
    # spandrel's ESRGAN loader assumes num_grow_ch=32 (Real-ESRGAN's), so the tiny nets keep it
    (lambda: CodecAwareRRDBNet(scale=4, num_feat=16, num_block=2, num_grow_ch=32), 'ESRGAN', 4),
    (lambda: CodecAwareRRDBNet(scale=2, num_feat=16, num_block=1, num_grow_ch=32), 'ESRGAN', 2),
    (lambda: CodecAwareRRDBNet(scale=1, num_feat=16, num_block=1, num_grow_ch=32), 'ESRGAN', 1),
    (lambda: CodecAwareSRVGGNetCompact(num_feat=16, num_conv=4, upscale=4), 'Compact', 4),
    # spandrel's Compact loader assumes PReLU (all released Real-ESRGAN compact nets use it)
    (lambda: CodecAwareSRVGGNetCompact(num_feat=16, num_conv=3, upscale=2), 'Compact', 2),
])
def test_export_round_trip_through_spandrel(tmp_path, photo, make, arch_id, scale):
    torch.manual_seed(0)
    model = make().eval()
    perturb_heads(model, std=0.3)
    x = to_tensor(crop(photo, 32, 48, 48))
    path = tmp_path / 'plain.pth'
    export_plain(model, CONDITION, str(path))
    assert set(torch.load(path, weights_only=True)) == {'params_ema'}
    descriptor, out = spandrel_output(path, x)
    assert descriptor.architecture.id == arch_id and descriptor.scale == scale
    reference = conditioned(model, x)
    assert (out - reference).abs().max() < 1e-4
    assert (reference - model(x)).abs().max() > 1e-3  # the folded condition really changes the output
    assert os.listdir(tmp_path) == ['plain.pth']  # atomic write leaves no temporary file


def test_export_of_real_esrgan_weights_reproduces_the_condition(tmp_path, photo, shared_weight):
    model = CodecAwareRRDBNet.from_plain_checkpoint(str(shared_weight('RealESRGAN_x4plus_anime_6B.pth')),
                                                    num_block=6).eval()
    perturb_heads(model, std=0.05)
    x = to_tensor(crop(photo, 24, 50, 60))
    path = tmp_path / 'anime_libx265.pth'
    plain = export_plain(model, CONDITION, str(path))
    reference = conditioned(model, x)
    _, out = spandrel_output(path, x)
    assert (out - reference).abs().max() < 1e-4
    with torch.no_grad():
        assert (plain(x) - reference).abs().max() < 1e-4
    # stock basicsr loads it strictly, unchanged
    stock = RRDBNet(3, 3, scale=4, num_feat=64, num_block=6, num_grow_ch=32)
    stock.load_state_dict(torch.load(path, weights_only=True)['params_ema'], strict=True)


def test_fold_targets_the_rdb_conv5_biases():
    torch.manual_seed(0)
    model = CodecAwareRRDBNet(scale=4, num_feat=8, num_block=1, num_grow_ch=8)
    perturb_heads(model)
    spec, state = fold_condition(model, CONDITION)
    assert spec == {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 4, 'num_feat': 8, 'num_block': 1,
                    'num_grow_ch': 8}
    base = model.state_dict()
    changed = sorted(k for k in state if not torch.equal(state[k], base[k]))
    assert changed == ['body.0.rdb1.conv5.bias', 'body.0.rdb2.conv5.bias']


def test_cli_export(tmp_path, photo, capsys):
    torch.manual_seed(0)
    model = CodecAwareSRVGGNetCompact(num_feat=16, num_conv=2).eval()
    perturb_heads(model, std=0.3)
    ckpt, out = tmp_path / 'aware.pth', tmp_path / 'sub' / 'plain.pth'
    save_model(model, str(ckpt))
    assert vrpsr(['export', str(ckpt), '--codec', 'libvvenc', '--bpp', '0.05', '-o', str(out)]) == 0
    assert 'max |conditioned - plain|' in capsys.readouterr().out
    x = to_tensor(crop(photo, 16))
    _, result = spandrel_output(out, x)
    assert (result - conditioned(model, x, CodecCondition('libvvenc', 0.05))).abs().max() < 1e-4
    assert vrpsr(['export', str(ckpt), '--codec', 'libaom', '--bpp', '0.05', '-o', str(out)]) == 2
    assert "vrpsr export: error: codec 'libaom' is not one of the conditioned codecs" in capsys.readouterr().err


def test_export_rejects_nets_without_a_plain_form(tmp_path, capsys):
    with pytest.raises(TypeError, match='cannot fold the condition of CodecPostProcessNet'):
        export_plain(CodecPostProcessNet(num_feat=8, num_block=1), CONDITION, str(tmp_path / 'x.pth'))
    plain = tmp_path / 'plain.pth'
    torch.save({'params_ema': RRDBNet(3, 3, num_feat=8, num_block=1, num_grow_ch=8).state_dict()}, plain)
    assert vrpsr(['export', str(plain), '--codec', 'libx265', '--bpp', '0.2', '-o', str(tmp_path / 'out.pth')]) == 2
    assert 'not a codec-aware network' in capsys.readouterr().err
    assert not (tmp_path / 'x.pth').exists() and not (tmp_path / 'out.pth').exists()


def test_export_of_non_finite_weights_fails_and_writes_nothing(tmp_path, capsys):
    """Issue 16 item 2: NaN weights made the tolerance test (error > tol) false and the export exit 0."""
    model = CodecAwareSRVGGNetCompact(num_feat=8, num_conv=2).eval()
    with torch.no_grad():
        model.body[0].weight[0, 0, 0, 0] = float('nan')
    ckpt, out = tmp_path / 'nan.pth', tmp_path / 'plain.pth'
    save_model(model, str(ckpt))
    assert vrpsr(['export', str(ckpt), '--codec', 'libx265', '--bpp', '0.2', '-o', str(out)]) == 2
    err = capsys.readouterr().err
    assert 'differs from the conditioned net by nan' in err and 'non-finite weights' in err
    assert sorted(os.listdir(tmp_path)) == ['nan.pth']  # nothing written, no temporary file
    perturb_heads(model, std=0.3)  # a finite net beyond a (tiny) tolerance also writes nothing
    with torch.no_grad():
        model.body[0].weight[0, 0, 0, 0] = 0.5
    with pytest.raises(ExportError, match="tolerance 1e-30"):
        export_plain(model, CONDITION, str(out), tolerance=1e-30)
    assert not out.exists()


def test_export_user_errors_are_one_line(tmp_path, capsys):
    """Issue 16 item 7: missing model, corrupt checkpoint (without torch's weights_only advice), wrong shapes
    (naming the expected arch): one `vrpsr export: error:` line, status 2; the traceback only with --debug."""
    args = ['--codec', 'libx265', '--bpp', '0.2', '-o', str(tmp_path / 'out.pth')]
    assert vrpsr(['export', str(tmp_path / 'absent.pth'), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('vrpsr export: error: no model file') and err.count('\n') == 1
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint' * 10)
    assert vrpsr(['export', str(garbage), *args]) == 2
    err = capsys.readouterr().err
    assert 'garbage.pth' in err and 'weights_only' not in err and err.count('\n') == 1
    model = CodecAwareSRVGGNetCompact(num_feat=8, num_conv=2)
    state = {k: v for k, v in model.state_dict().items()}
    state['body.0.weight'] = torch.zeros(4, 3, 3, 3)
    torch.save({'params_ema': state, 'arch': model.arch_spec}, tmp_path / 'shape.pth')
    assert vrpsr(['export', str(tmp_path / 'shape.pth'), *args]) == 2
    err = capsys.readouterr().err
    assert 'expected arch CodecAwareSRVGGNetCompact(' in err and 'num_feat=8' in err and 'body.0.weight' in err
    assert vrpsr(['--debug', 'export', str(garbage), *args]) == 2
    assert 'Traceback' in capsys.readouterr().err
    assert not (tmp_path / 'out.pth').exists()
