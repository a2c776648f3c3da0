"""Fresh, reproducible training draws (crop, flip, codec, QP, degradation) from (seed, epoch, index)."""
import torch

from vrpsr_plugin import basicsr_fixes
from vrpsr_plugin.data.codec_simulator_dataset import CodecSimulatorDataset
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.data.fresh_draws import FreshDrawSampler
from vrpsr_plugin.data.recompression_sr_dataset import RecompressionSRDataset


def _draws(dataset, sampler, epoch):
    sampler.set_epoch(epoch)
    return [(s['gt_path'], s['codec'], int(s['qp']), s['gt'].sum().item()) for s in (dataset[i] for i in sampler)]


def test_every_epoch_and_every_enlarged_pass_draws_afresh(tmp_path):
    write_demo_images(tmp_path, size=64, per_photo=1, names=['astronaut', 'coffee'])
    opt = {'dataroot_gt': str(tmp_path), 'io_backend': {'type': 'disk'}, 'codecs': ['libx264', 'libx265'],
           'qp_range': [20, 45], 'gt_size': 32, 'use_hflip': True, 'use_rot': True, 'seed': 5}
    dataset = CodecSimulatorDataset(opt)
    sampler = FreshDrawSampler(dataset, num_replicas=1, rank=0, ratio=3)
    epoch0, epoch1 = _draws(dataset, sampler, 0), _draws(dataset, sampler, 1)
    assert len(epoch0) == 6 and sorted(i for i in sampler) == list(range(6))  # raw indices, modulo in the dataset
    assert len(set(epoch0)) == 6  # the 3 passes over 2 images differ from each other
    assert set(epoch0).isdisjoint(epoch1)  # and from the next epoch's
    again = CodecSimulatorDataset(opt)  # a fresh process/worker/resume draws the same samples
    assert _draws(again, FreshDrawSampler(again, 1, 0, ratio=3), 1) == epoch1


def test_degradation_is_drawn_per_epoch(tmp_path):
    write_demo_images(tmp_path, size=64, per_photo=1, names=['astronaut'])
    dataset = RecompressionSRDataset({'dataroot_gt': str(tmp_path), 'io_backend': {'type': 'disk'},
                                      'codecs': ['libx264'], 'qps': [37], 'gt_size': 64, 'seed': 0,
                                      'degradation': {'resize_range': [0.5, 1.5], 'resize_range2': [0.5, 1.2]}})
    first = dataset[0]['lq']
    dataset.set_epoch(1)
    second = dataset[0]['lq']
    dataset.set_epoch(0)
    assert not torch.equal(first, second) and torch.equal(dataset[0]['lq'], first)


def test_train_pipeline_uses_the_fresh_draw_sampler():
    from basicsr import train as basicsr_train
    basicsr_fixes.apply()
    assert basicsr_train.EnlargedSampler is FreshDrawSampler
