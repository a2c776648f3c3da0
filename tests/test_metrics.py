"""LPIPS / DISTS / MS-SSIM in BasicSR's METRIC_REGISTRY and the FID helpers (§4.1), offline."""
import numpy as np
import pytest
import torch
from basicsr.utils.registry import METRIC_REGISTRY
from skimage import data as skdata

from vrpsr_plugin.metrics.fid import fid, inception_features, patches
from vrpsr_plugin.metrics.pretrained import MetricUnavailable, basicsr_pair, hub_with

from .conftest import crop


@pytest.fixture
def empty_hub(tmp_path):
    """A torch.hub cache without any weights (as on a fresh offline machine)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub'
    torch.hub.set_dir(old)


def test_ms_ssim_registered_and_sensible():
    image = crop(skdata.astronaut(), 192, 0, 100)[..., ::-1]  # BGR, as BasicSR passes it
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    calculate = METRIC_REGISTRY.get('calculate_ms_ssim')
    assert calculate(image, image, crop_border=0) == pytest.approx(1.0, abs=1e-6)
    value = calculate(noisy, image, crop_border=4)
    assert 0.5 < value < 0.999
    with pytest.raises(ValueError, match='at least 161'):
        calculate(image[:96, :96], image[:96, :96], crop_border=0)


def test_lpips_and_dists_need_real_weights(empty_hub, tmp_path):
    image = crop(skdata.astronaut(), 64)
    for name in ('calculate_lpips', 'calculate_dists'):
        with pytest.raises(MetricUnavailable, match='pretrained weights unavailable'):
            METRIC_REGISTRY.get(name)(image, image, crop_border=0)
    bogus = tmp_path / 'bogus.pth'
    torch.save({'features.0.weight': torch.zeros(1)}, bogus)
    with pytest.raises(MetricUnavailable, match='alexnet-owt'):
        METRIC_REGISTRY.get('calculate_lpips')(image, image, crop_border=0, lpips_weights=str(bogus))
    with pytest.raises(MetricUnavailable, match='does not exist'):
        METRIC_REGISTRY.get('calculate_lpips')(image, image, crop_border=0, lpips_weights=str(tmp_path / 'no.pth'))


def test_missing_weights_are_reported_once_without_download_attempts(empty_hub, capfd, monkeypatch):
    import warnings
    from unittest import mock

    from vrpsr_plugin.evaluation.metric_suite import MetricSuite
    from vrpsr_plugin.losses import vrpsr_loss
    logger = mock.Mock()
    monkeypatch.setattr(vrpsr_loss, 'get_root_logger', lambda: logger)
    vrpsr_loss._warn_random_backbone.cache_clear()
    suite = MetricSuite.load(('lpips', 'dists', 'fid'))
    for name, files in (('lpips', ['alexnet-owt-7be5be79.pth']), ('dists', ['dists_weights.pt', 'vgg16-397923af.pth']),
                        ('fid', ['pt_inception-2015-12-05-6726825d.pth'])):
        reason = suite.unavailable[name]
        assert 'no download is attempted' in reason and all(f in reason for f in files), reason
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for _ in range(3):  # the offline smoke stand-in: no torchvision deprecation noise, its warning logged once
            vrpsr_loss.build_lpips('alex', pretrained_backbone=False)
    assert [str(w.message) for w in caught if 'deprecated' in str(w.message)] == []
    out, err = capfd.readouterr()
    assert 'Downloading' not in out + err
    assert logger.warning.call_count == 1 and 'RANDOM backbone' in logger.warning.call_args[0][0]


def test_hub_with_links_files_under_official_names(tmp_path):
    weights = tmp_path / 'mine.pth'
    torch.save({'a': torch.ones(2)}, weights)
    old = torch.hub.get_dir()
    with hub_with({'alexnet-owt-7be5be79.pth': weights}):
        state = torch.hub.load_state_dict_from_url('https://example.invalid/alexnet-owt-7be5be79.pth')
        assert torch.equal(state['a'], torch.ones(2))
    assert torch.hub.get_dir() == old


def test_basicsr_pair_converts_bgr_and_crops():
    rgb = crop(skdata.coffee(), 32)
    x, y = basicsr_pair(rgb[..., ::-1], rgb[..., ::-1], crop_border=2)
    assert x.shape == (1, 3, 28, 28)
    assert torch.allclose(x[0, 0], torch.from_numpy(rgb[2:-2, 2:-2, 0] / 255.0).float())
    with pytest.raises(ValueError, match='shapes differ'):
        basicsr_pair(rgb, rgb[:16], 0)


def test_patch_fid_helpers():
    image = torch.rand(3, 64, 64)
    crops = patches(image, 32)
    assert crops.shape == (4 + 1, 3, 32, 32)  # 2x2 grid + the half-shifted grid's single crop
    assert torch.equal(crops[4], image[:, 16:48, 16:48])
    # a tiny RANDOM conv net stands in for the Inception here (no pretrained weights offline): plumbing only
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
    feats = inception_features(torch.rand(4, 3, 64, 64), extractor, patch=32)
    assert feats.shape == (20, 8)
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-3)
    assert fid(feats, feats + 1.0) == pytest.approx(8.0, rel=1e-3)  # mean shift of 1 in 8 dims
