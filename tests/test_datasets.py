"""Codec-in-the-loop datasets (Eq. 1, 4, 7), the codec bank and the Real-ESRGAN degradation helper."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from vrpsr_plugin import cli
from vrpsr_plugin.codecs import encode
from vrpsr_plugin.codecs.condition import picture_header_bits
from vrpsr_plugin.data.codec_bank import CodecBank, prepare_bank
from vrpsr_plugin.data.codec_simulator_dataset import CodecSimulatorDataset
from vrpsr_plugin.data.degradation import HighOrderDegradation, SeparableUSMSharp
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.data.recompression_sr_dataset import DegradeAndEncode, RecompressionSRDataset, batch_seed_words

SMALL_RESIZE = {'resize_range': [0.5, 1.5], 'resize_range2': [0.5, 1.2]}


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp('demo')
    write_demo_images(folder, size=64, per_photo=1, names=['astronaut', 'coffee'])
    return folder


def _uint8(t: torch.Tensor) -> np.ndarray:
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_demo_images_are_real_photos(demo):
    files = sorted(os.listdir(demo))
    assert files == ['astronaut_00.png', 'coffee_00.png']
    img = cv2.imread(str(demo / files[0]))
    assert img.shape == (64, 64, 3) and img.std() > 10


def test_simulator_dataset_on_the_fly(demo):
    ds = CodecSimulatorDataset({'dataroot_gt': str(demo), 'io_backend': {'type': 'disk'},
                                'codecs': ['libx264', 'libx265'], 'qp_range': [30, 40], 'gt_size': 32, 'seed': 3})
    sample = ds[1]
    assert sample['gt'].shape == sample['codec_out'].shape == (3, 32, 32)
    codec, qp = sample['codec'], sample['qp']
    assert 30 <= qp <= 40 and codec in ('libx264', 'libx265')
    real = encode(_uint8(sample['gt']), codec, qp=qp)  # the condition is the measured rate (Eq. 4), header left out
    onehot = [1.0 if codec == c else 0.0 for c in ('libx264', 'libx265', 'libvvenc')]
    assert torch.allclose(sample['cond'], torch.tensor(onehot + [real.bpp - picture_header_bits(codec) / 32 ** 2]))
    assert np.array_equal(_uint8(sample['codec_out']), real.image)
    again = ds[1]
    assert all(torch.equal(sample[k], again[k]) for k in ('gt', 'codec_out', 'cond'))
    draws = {(ds[i]['codec'], ds[i]['qp'], float(ds[i]['gt'].sum())) for i in range(2)}
    assert len(draws) == 2
    with pytest.raises(ValueError, match='condition one-hot'):
        CodecSimulatorDataset({'dataroot_gt': str(demo), 'io_backend': {'type': 'disk'}, 'codecs': ['mjpeg'],
                               'qps': [3]})


def test_codec_bank_resume_atomic(demo, tmp_path):
    bank = str(tmp_path / 'bank')
    prepare_bank(str(demo), bank, ['libx264'], [27, 37], crop=32, workers=1, progress=False, shard_size=1)
    assert len(CodecBank(bank).keys) == 8  # 2 images x 4 tiles of 32 px
    shard = os.path.join(bank, 'libx264', 'qp37', '000000.json')
    kept = os.path.join(bank, 'libx264', 'qp27', '000001.tar')
    kept_mtime = os.stat(kept).st_mtime_ns
    os.remove(shard)  # an interrupted shard: its index (written last) is missing
    bank2 = prepare_bank(str(demo), bank, ['libx264'], [27, 37], crop=32, workers=1, progress=False, shard_size=1)
    assert os.stat(kept).st_mtime_ns == kept_mtime  # finished work is not redone
    assert os.path.isfile(shard) and bank2.missing(['libx264'], [27, 37]) == []
    assert not [f for _, _, fs in os.walk(bank) for f in fs if f.endswith('.tmp')]
    decoded, record = bank2.coded('astronaut_00_s001', 'libx264', 37)
    real = encode(bank2.gt('astronaut_00_s001'), 'libx264', qp=37)
    assert record['bpp'] == pytest.approx(real.bpp) and np.array_equal(decoded, real.image)
    with pytest.raises(ValueError, match='other images or another crop'):
        prepare_bank(str(demo), bank, ['libx264'], [27], crop=16, workers=1, progress=False, shard_size=1)
    assert CodecBank(bank).missing(['libx265'], [27]) == ['libx265 qp27']


def test_simulator_dataset_reads_the_bank(demo, tmp_path):
    bank = prepare_bank(str(demo), str(tmp_path / 'bank'), ['libx264'], [27, 37], crop=32, workers=1,
                        progress=False, shard_size=1)
    opt = {'dataroot_gt': str(demo), 'dataroot_bank': bank.root, 'io_backend': {'type': 'disk'},
           'codecs': ['libx264'], 'gt_size': 16, 'seed': 0}
    ds = CodecSimulatorDataset(opt)
    assert ds.keys == bank.keys
    sample = ds[5]
    decoded, record = bank.coded(ds.keys[5], 'libx264', sample['qp'])
    # the rate of the bank's whole 32-px picture, header left out
    assert float(sample['cond'][-1]) == pytest.approx(record['bpp'] - picture_header_bits('libx264') / 32 ** 2)
    assert sample['gt'].shape == sample['codec_out'].shape == (3, 16, 16)
    with pytest.raises(ValueError, match='lacks libx265 qp27, libx265 qp37'):
        CodecSimulatorDataset({**opt, 'codecs': ['libx265']})


def test_prepare_bank_command(demo, tmp_path, capsys):
    assert cli.main(['prepare-bank', str(demo), str(tmp_path / 'b'), '--codecs', 'libx265', '--qps', '32',
                     '--workers', '1', '--no-progress']) == 0
    assert '2 images x 1 codecs x 1 QPs, 2 encodes' in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        prepare_bank(str(tmp_path / 'missing'), str(tmp_path / 'c'), ['libx264'], [30])


@pytest.mark.parametrize('scale', [1, 2])
def test_recompression_dataset_conditions(demo, scale):
    ds = RecompressionSRDataset({'dataroot_gt': str(demo), 'io_backend': {'type': 'disk'}, 'codecs': ['libx264'],
                                 'qp_range': [34, 38], 'gt_size': 64, 'scale': scale, 'seed': 1,
                                 'degradation': SMALL_RESIZE})
    s = ds[0]
    assert s['lq'].shape == (3, 64 // scale, 64 // scale) and s['gt'].shape == (3, 64, 64)
    assert s['qp_target'] == s['qp'] - 10
    source = encode(_uint8(s['lq']), 'libx264', qp=s['qp'])  # Eq. 1 on X~
    target = encode(_uint8(s['gt']), 'libx264', qp=s['qp_target'])  # c' on X (Eq. 7)
    header = picture_header_bits('libx264')  # left out of every condition
    # the same bits on X'
    assert float(s['cond'][-1]) == pytest.approx((source.bpp - header / (64 // scale) ** 2) / scale ** 2)
    assert float(s['cond_target'][-1]) == pytest.approx(target.bpp - header / 64 ** 2)
    assert np.array_equal(_uint8(s['lq_codec']), source.image) and np.array_equal(_uint8(s['gt_codec']), target.image)
    assert float(s['cond_target'][-1]) > float(s['cond'][-1])
    again = ds[0]
    assert torch.equal(s['lq'], again['lq']) and torch.equal(s['cond'], again['cond'])
    assert not torch.equal(ds[1]['lq'][:, :8, :8], s['lq'][:, :8, :8])


def test_separable_usm_equals_basicsr_usm():
    from basicsr.utils import USMSharp
    x = torch.rand(2, 3, 120, 136, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(SeparableUSMSharp()(x), USMSharp()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kind', ['realesrgan', 'mild'])
def test_degrade_on_model_completes_batches_like_the_dataset(demo, kind):
    opt = {'dataroot_gt': str(demo), 'io_backend': {'type': 'disk'}, 'codecs': ['libx264', 'libx265'],
           'qp_range': [30, 40], 'gt_size': 64, 'seed': 3, 'degradation_type': kind,
           'degradation': SMALL_RESIZE if kind == 'realesrgan' else {}, 'phase': 'train'}
    whole, deferred = RecompressionSRDataset(opt), RecompressionSRDataset({**opt, 'degrade_on': 'model'})
    complete = DegradeAndEncode(opt)
    for index in (0, 1):
        a, b = whole[index], deferred[index]
        assert not {'lq', 'cond', 'lq_codec', 'lq_bpp'} & set(b) and b['draw_seed'].tolist() == [3, 0, index]
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['gt_codec'], b['gt_codec'])
        done = complete(b['gt'][None], [b['codec']], [b['qp']], batch_seed_words(b['draw_seed'][None]))
        for key in ('lq', 'cond', 'lq_codec', 'lq_bpp'):  # a batch of one is the dataset's own sample
            assert torch.equal(done[key][0], a[key]), key
    batch = [deferred[i] for i in (0, 1)]
    gt, seeds = torch.stack([s['gt'] for s in batch]), torch.stack([s['draw_seed'] for s in batch])
    codecs, qps = [s['codec'] for s in batch], [s['qp'] for s in batch]
    one, two = complete(gt, codecs, qps, batch_seed_words(seeds)), complete(gt, codecs, qps, batch_seed_words(seeds))
    assert one['lq'].shape == (2, 3, 64, 64) and all(torch.equal(one[k], two[k]) for k in one)
    for i in (0, 1):  # the condition is the real codec's rate on this X~, less the header
        coded = encode(_uint8(one['lq'][i]), codecs[i], qp=qps[i])
        assert float(one['cond'][i, -1]) == pytest.approx(coded.bpp - picture_header_bits(codecs[i]) / 64 ** 2)
    with pytest.raises(ValueError, match='degrade_on must be one of'):
        RecompressionSRDataset({**opt, 'degrade_on': 'gpu'})
    with pytest.raises(ValueError, match='training sets only'):
        RecompressionSRDataset({**opt, 'degrade_on': 'model', 'phase': 'val'})


def test_degradation_checks():
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match='resize_range'):
        HighOrderDegradation({}, scale=1)(x)
    with pytest.raises(ValueError, match='unknown degradation options'):
        HighOrderDegradation({'blur_sigmaa': [1, 2]})
    out = HighOrderDegradation(SMALL_RESIZE, scale=4)(torch.rand(1, 3, 48, 48))
    assert out.shape == (1, 3, 12, 12) and torch.equal(out, (out * 255).round() / 255)


def test_gt_reader_reads_lmdb_like_disk(demo, tmp_path):
    """One reader for the datasets and the stage-1 rate fit: an lmdb of the photos gives the same pixels."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    from vrpsr_plugin.data.codec_simulator_dataset import GTReader, gt_keys
    names = sorted(p for p in os.listdir(demo) if p.endswith('.png'))
    make_lmdb_from_imgs(str(demo), str(tmp_path / 'gt.lmdb'), names, [n[:-4] for n in names])
    disk = {'dataroot_gt': str(demo), 'io_backend': {'type': 'disk'}}
    lmdb = {'dataroot_gt': str(tmp_path / 'gt.lmdb'), 'io_backend': {'type': 'lmdb'}}
    with GTReader(lmdb) as read_lmdb:
        for path, key in zip(sorted(gt_keys(disk)), sorted(gt_keys(lmdb))):
            assert np.array_equal(GTReader(disk)(path), read_lmdb(key))
    common = {'codecs': ['libx264'], 'qps': [30], 'gt_size': 32, 'seed': 0, 'degradation_type': 'mild'}
    a = RecompressionSRDataset({**disk, **common})[0]
    b = RecompressionSRDataset({**lmdb, **common})[0]
    assert torch.equal(a['gt'], b['gt'])
