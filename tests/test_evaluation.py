"""The rate-matched recompression benchmark (`vrpsr eval`, §4.1) on three small real photos with tiny models.

LPIPS here is ``lpips.LPIPS(pnet_rand=True)``: real linear heads on a RANDOM AlexNet backbone, injected explicitly
because the pretrained backbone cannot be downloaded here. It exercises the plumbing only; its numbers mean nothing.
"""
import json

import cv2
import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from basicsr.archs.srvgg_arch import SRVGGNetCompact

from vrpsr_plugin import codecs as codec_api
from vrpsr_plugin.cli import main as vrpsr_main
from vrpsr_plugin.evaluation import EvalConfig, MetricSuite, Protocol, bd_rate, evaluate, paired_ttest
from vrpsr_plugin.evaluation.degrade import degrade, prepare_hr, seed_from_name
from vrpsr_plugin.evaluation.protocol import IDENTITY, parse_models

CODECS = ['libx264', 'libx265']
QPS = [27, 32, 37]
SIZE = 96


class BicubicBlur(torch.nn.Module):
    """The identity reference (bicubic x2) followed by a known Gaussian blur (sigma 1.5): a strictly worse method."""
    scale = 2

    def __init__(self) -> None:
        super().__init__()
        g = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / (2 * 1.5 ** 2))
        k = torch.outer(g, g) / torch.outer(g, g).sum()
        self.register_buffer('kernel', k.expand(3, 1, 7, 7).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False)
        return F.conv2d(F.pad(x, (3, 3, 3, 3), mode='reflect'), self.kernel, groups=3)


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Small convolutions run far faster on one thread on a shared CPU; restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def data_dir(tmp_path, photos):
    folder = tmp_path / 'data'
    folder.mkdir()
    for name, image in zip(('astronaut', 'coffee', 'chelsea'), photos):
        cv2.imwrite(str(folder / f'{name}.png'), image[..., ::-1])
    return folder


@pytest.fixture(scope='module')
def random_lpips_suite():
    """NOT a valid reported metric: random AlexNet backbone (see the module docstring)."""
    torch.manual_seed(0)
    net = lpips.LPIPS(pretrained=True, pnet_rand=True, verbose=False).eval()
    return lambda: MetricSuite(names=('psnr', 'psnr_y', 'ssim', 'ms_ssim', 'lpips'), lpips=net, fid_mode='off')


def restore_direct(model, images, cond, tile=0):
    return model(images)


def test_degradation_is_deterministic_per_file_name(photo):
    hr = prepare_hr(photo, 64)
    a, b = degrade(hr, 2, seed_from_name('a.png')), degrade(hr, 2, seed_from_name('a.png'))
    c = degrade(hr, 2, seed_from_name('b.png'))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match='divisible'):
        degrade(hr, 3, 0)


def test_bd_rate_conventions():
    rate, psnr, lpips_values = [0.1, 0.2, 0.3, 0.5], [26.0, 28.0, 29.0, 30.5], [0.40, 0.30, 0.26, 0.21]
    assert bd_rate(rate, psnr, rate, psnr)[0] == 0.0
    assert bd_rate(rate, lpips_values, rate, lpips_values, higher_is_better=False)[0] == 0.0
    # the same quality at 10% fewer bits is a ~-10% BD-rate, for higher- and lower-is-better metrics alike
    cheaper = [r * 0.9 for r in rate]
    assert bd_rate(rate, psnr, cheaper, psnr)[0] == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(rate, lpips_values, cheaper, lpips_values, higher_is_better=False)[0] == pytest.approx(-10.0,
                                                                                                          abs=1e-6)
    # worse LPIPS (higher) at the same rate costs bits: positive
    assert bd_rate(rate, lpips_values, rate, [v + 0.02 for v in lpips_values], higher_is_better=False)[0] > 0
    value, note = bd_rate(rate, psnr, rate, [40.0, 41.0, 42.0, 43.0])
    assert np.isnan(value) and 'overlap' in note


def test_paired_ttest():
    base = [0.30, 0.42, 0.25, 0.51, 0.33]
    better = [b - 0.02 + 0.001 * i for i, b in enumerate(base)]
    result = paired_ttest(better, base)
    assert result['p'] < 1e-3 and result['mean_diff'] < 0
    assert paired_ttest(base, base)['p'] == 1.0


def test_whole_run_rate_matching_bd_rate_and_outputs(tmp_path, data_dir, random_lpips_suite):
    cfg = EvalConfig(data=data_dir, out=tmp_path / 'out', models={'bicubic': IDENTITY, 'blurred': 'blur'},
                     codecs=CODECS, qps=QPS, size=SIZE, color_fix=True)
    protocol = Protocol(cfg, {'bicubic': None, 'blurred': BicubicBlur()}, random_lpips_suite(),
                        restore=restore_direct)
    assert protocol.scale == 2
    results = evaluate(protocol, progress=False)

    out = tmp_path / 'out'
    for name in ('results.json', 'per_image.csv', 'results.md', 'rd_libx264_qp_psnr.png',
                 'rd_libx265_qp_lpips.png', 'rd_libx264_qp_psnr_colorfix.png'):
        assert (out / name).is_file(), name
    assert json.loads((out / 'results.json').read_text())['protocol']['scale'] == 2
    markdown = (out / 'results.md').read_text()
    assert 'BDBR vs bicubic' in markdown and 'MS-SSIM: **unavailable**' in markdown

    rows = [json.loads(p.read_text()) for p in (out / 'cache' / 'items').rglob('*.json')]
    assert len(rows) == 3 * len(CODECS) * len(QPS) * 2
    for row in rows:
        # rate matching (Eq. 2): achieved bpp within half the gap to the neighbouring source QPs' targets
        targets = sorted(json.loads(p.read_text())['num_bytes'] * 8 / SIZE ** 2 for p in
                         (out / 'cache' / 'source' / row['codec']).glob(f'qp*/{row["image"]}.json'))
        i = targets.index(row['target_bpp'])
        gaps = [abs(targets[j] - targets[i]) for j in (i - 1, i + 1) if 0 <= j < len(targets)]
        assert row['clipped'] or abs(row['bpp'] - row['target_bpp']) <= 0.5 * min(gaps), row
        assert set(row['metrics_color_fix']) == set(row['metrics'])

    for codec in CODECS:
        curve = results['curves'][codec]['qp']
        assert [p['point'] for p in curve['points']] == QPS
        for metric, bd in curve['bd_rate']['bicubic']['raw'].items():
            assert bd['value'] == 0.0, metric  # a method against itself
        assert curve['bd_rate']['blurred']['raw']['psnr']['value'] > 0  # baseline + blur costs bits
        assert curve['points'][0]['ttest']['blurred']['raw']['psnr']['mean_diff'] < 0


def test_resume_recomputes_nothing(tmp_path, data_dir, random_lpips_suite, monkeypatch):
    calls = {'encode': 0, 'find_qp': 0, 'restore': 0}
    real_encode, real_find = codec_api.encode, codec_api.find_qp

    def counting(name, real):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            if calls[name] > limit[name]:
                raise KeyboardInterrupt(f'simulated interruption in {name}')
            return real(*args, **kwargs)
        return wrapped

    def restore(model, images, cond, tile=0):
        calls['restore'] += 1
        return model(images)

    limit = {'encode': 10 ** 6, 'find_qp': 7}
    monkeypatch.setattr(codec_api, 'encode', counting('encode', real_encode))
    monkeypatch.setattr(codec_api, 'find_qp', counting('find_qp', real_find))
    torch.manual_seed(0)
    tiny = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).eval()
    cfg = EvalConfig(data=data_dir, out=tmp_path / 'out', models={'tiny': 'tiny', 'bicubic': IDENTITY},
                     codecs=['libx264'], qps=[27, 37], size=SIZE)

    def fresh():
        return Protocol(cfg, {'tiny': tiny, 'bicubic': None}, random_lpips_suite(), restore=restore)

    with pytest.raises(KeyboardInterrupt):
        evaluate(fresh(), progress=False)
    done = len(list((tmp_path / 'out' / 'cache' / 'items').rglob('*.json')))
    assert done == 7 and calls['restore'] == 3  # codec-unaware: one X' per image, shared by all points

    limit['find_qp'] = 10 ** 6
    calls.update(encode=0, find_qp=0, restore=0)
    first = evaluate(fresh(), progress=False)
    assert calls['find_qp'] == 3 * 2 * 2 - done and calls['restore'] == 0
    calls.update(encode=0, find_qp=0, restore=0)
    second = evaluate(fresh(), progress=False)
    assert calls == {'encode': 0, 'find_qp': 0, 'restore': 0}
    assert second['curves'] == first['curves']


def test_cli_end_to_end_with_checkpoint_and_unavailable_weights(tmp_path, data_dir):
    """`vrpsr eval` through the real loader; LPIPS/DISTS/FID weights are absent here, so they are reported as
    unavailable (with the reason) and the rest runs."""
    torch.manual_seed(0)
    tiny = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'params': tiny.state_dict()}, ckpt)
    bogus = tmp_path / 'not_alexnet.pth'
    torch.save({'features.0.weight': torch.zeros(1)}, bogus)
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'empty_hub'))  # no cached weights, whatever this machine has
    out = tmp_path / 'cli_out'
    try:
        rc = vrpsr_main(['eval', '--data', str(data_dir), '--models', f'tiny={ckpt}', 'identity', '--codecs',
                         'libx264', '--qps', '30', '38', '--size', str(SIZE), '--out', str(out), '--no-progress',
                         '--lpips-weights', str(bogus)])
    finally:
        torch.hub.set_dir(old_hub)
    assert rc == 0
    results = json.loads((out / 'results.json').read_text())
    for name in ('lpips', 'dists', 'fid'):
        assert results['metrics'][name]['available'] is False and results['metrics'][name]['reason'], name
    assert 'not_alexnet.pth' in results['metrics']['lpips']['reason'] or 'LPIPS' in results['metrics']['lpips'][
        'reason']
    point = results['curves']['libx264']['qp']['points'][0]['methods']['tiny']
    assert set(point['metrics']['raw']) == {'psnr', 'psnr_y', 'ssim'} and point['fid'] == {}
    assert '**unavailable**' in (out / 'results.md').read_text()


def test_bad_input_is_rejected(tmp_path, data_dir):
    with pytest.raises(ValueError, match='NAME=CHECKPOINT'):
        parse_models(['just_a_path.pth'])
    with pytest.raises(FileNotFoundError):
        parse_models([f'x={tmp_path / "missing.pth"}'])
    suite = MetricSuite(names=('psnr',))
    tiny2 = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=2)
    tiny4 = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=4)
    cfg = EvalConfig(data=data_dir, out=tmp_path / 'o', models={'a': 'a', 'b': 'b'}, codecs=['libx264'], size=SIZE)
    with pytest.raises(ValueError, match='share the scale'):
        Protocol(cfg, {'a': tiny2, 'b': tiny4}, suite)


class RecordingSimulator(torch.nn.Module):
    """A codec-aware stand-in simulator that returns its input and records the conditions it receives."""
    codec_aware = True

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.conds = []

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.conds.append(cond.clone())
        return x + 0 * self.anchor


def test_simulator_against_real_codec(tmp_path, data_dir, random_lpips_suite):
    from basicsr.metrics import calculate_psnr

    from vrpsr_plugin.evaluation.simulator_eval import evaluate_simulator

    cfg = EvalConfig(data=data_dir, out=tmp_path / 'out', models={'bicubic': IDENTITY}, codecs=['libx264'],
                     qps=[30, 40], size=SIZE, scale=1)
    protocol = Protocol(cfg, {'bicubic': None}, random_lpips_suite())
    simulator = RecordingSimulator()
    table = evaluate_simulator(protocol, simulator, ['libx264'], [30, 40])
    assert [p['qp'] for p in table['libx264']] == [30, 40]
    hr = protocol.hr(protocol.images[0])
    real = codec_api.encode(hr, 'libx264', qp=30)
    # the condition is (codec one-hot, the real codec's bpp less the header); an identity "simulator" scores the
    # codec's own PSNR
    from vrpsr_plugin.codecs.condition import picture_header_bits
    condition = real.bpp - picture_header_bits('libx264') / (hr.shape[0] * hr.shape[1])
    assert torch.allclose(simulator.conds[0], torch.tensor([[1.0, 0.0, 0.0, condition]]))
    psnrs = [calculate_psnr(codec_api.encode(protocol.hr(p), 'libx264', qp=30).image, protocol.hr(p), 0)
             for p in protocol.images]
    assert table['libx264'][0]['metrics']['psnr']['mean'] == pytest.approx(np.mean(psnrs), rel=1e-6)
    assert table['libx264'][1]['bpp']['mean'] < table['libx264'][0]['bpp']['mean']


def _items(out):
    rows = [json.loads(p.read_text()) for p in sorted((out / 'cache' / 'items').rglob('*.json'))]
    return {(r['image'], r['method'], r['codec'], r['point']): r for r in rows}


def test_rate_model_guesses_the_first_qp_and_changes_no_result(tmp_path, data_dir, photos, random_lpips_suite):
    from vrpsr_plugin.archs.rate_model import DCTRateModel
    from vrpsr_plugin.models.rate_fit import collect_rate_samples, fit_rate_model
    rate_model = DCTRateModel(qp_range=(17, 51))
    fit_rate_model(rate_model, collect_rate_samples(photos, ['libx264'], [22, 27, 32, 37, 42, 47], [96], seed=0),
                   steps=300)
    runs = {}
    for label, model in (('source_qp', None), ('rate_model', rate_model)):
        cfg = EvalConfig(data=data_dir, out=tmp_path / label, models={'blurred': 'blur', 'bicubic': IDENTITY},
                         codecs=['libx264'], qps=QPS, size=SIZE)
        evaluate(Protocol(cfg, {'blurred': BicubicBlur(), 'bicubic': None}, random_lpips_suite(),
                          restore=restore_direct, rate_model=model), progress=False)
        runs[label] = _items(tmp_path / label)
    blurred = [key for key in runs['source_qp'] if key[1] == 'blurred']
    for key, row in runs['source_qp'].items():
        assert (runs['rate_model'][key]['qp'], runs['rate_model'][key]['bpp']) == (row['qp'], row['bpp'])
    encodes = {label: sum(rows[key]['num_encodes'] for key in blurred) for label, rows in runs.items()}
    assert encodes['rate_model'] < encodes['source_qp'], encodes  # a blurred X' is far from X~'s QP
    cfg = EvalConfig(data=data_dir, out=tmp_path / 'x', models={'bicubic': IDENTITY}, codecs=['libx264'], size=SIZE,
                     rate_model='not_a_simulator.pth')
    with pytest.raises(ValueError, match='not a RateAwareCodecSimulator'):
        Protocol.from_config(cfg, random_lpips_suite(), loader=lambda path, device: BicubicBlur())
