"""AESOP (seed 004): the auto-encoder, L_AESOP after its decoder with the AE frozen, and the AE pretraining smoke
run through basicsr's train pipeline."""
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.losses import build_loss

from tests.conftest import REPO
from vrpsr_plugin.archs.aesop_autoencoder_arch import AESOPAutoEncoder
from vrpsr_plugin.data.demo_images import write_demo_images
from vrpsr_plugin.losses.aesop_loss import AESOPLoss

AE_SPEC = {'type': 'AESOPAutoEncoder', 'num_feat': 8, 'num_down': 2, 'num_block': 1, 'latent_ch': 3}


def to_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]).float() / 255


@pytest.fixture
def ae_checkpoint(tmp_path):
    """A checkpoint of the tiny AE in basicsr's layout ({'params': state_dict})."""
    torch.manual_seed(0)
    path = tmp_path / 'ae.pth'
    torch.save({'params': build_network(dict(AE_SPEC)).state_dict()}, path)
    return path


@pytest.fixture
def aesop(ae_checkpoint):
    return build_loss({'type': 'AESOPLoss', 'network_ae': dict(AE_SPEC), 'pretrained': str(ae_checkpoint)})


def test_autoencoder_keeps_size_and_has_a_bottleneck():
    ae = AESOPAutoEncoder(num_feat=8, num_down=2, num_block=1, latent_ch=3)
    x = torch.rand(2, 3, 33, 47)
    assert ae(x).shape == x.shape  # padded to a multiple of 4 inside, cropped back
    assert ae.encode(torch.rand(1, 3, 32, 48)).shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match='num_down'):
        AESOPAutoEncoder(num_down=0)


def test_aesop_is_distance_after_the_decoder(aesop, photos):
    hr = to_batch(*photos)
    sr = (hr + 0.1 * torch.randn_like(hr)).clamp(0, 1)
    assert aesop(hr, hr.clone()).item() == 0.0
    loss = aesop(sr, hr)
    assert loss.item() > 0
    with torch.no_grad():
        expected = (aesop.ae(sr) - aesop.ae(hr)).abs().mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.isfinite(loss) and loss.item() != torch.nn.functional.l1_loss(sr, hr).item()


def test_aesop_p2_weight_and_reduction(ae_checkpoint, photos):
    hr = to_batch(*photos)
    sr = (hr + 0.1 * torch.randn_like(hr)).clamp(0, 1)
    l2 = AESOPLoss(dict(AE_SPEC), str(ae_checkpoint), loss_weight=3.0, p=2, reduction='sum')
    with torch.no_grad():
        expected = 3.0 * ((l2.ae(sr) - l2.ae(hr)) ** 2).sum()
    assert torch.allclose(l2(sr, hr), expected, rtol=1e-5)
    with pytest.raises(ValueError, match='p must be'):
        AESOPLoss(dict(AE_SPEC), str(ae_checkpoint), p=3)
    with pytest.raises(ValueError, match='reduction'):
        AESOPLoss(dict(AE_SPEC), str(ae_checkpoint), reduction='max')
    with pytest.raises(ValueError, match='differ in shape'):
        l2(sr[:, :, :-1], hr)


def test_aesop_checkpoint_errors(tmp_path, ae_checkpoint):
    with pytest.raises(FileNotFoundError, match='not found'):
        AESOPLoss(dict(AE_SPEC), str(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='pretrained'):
        AESOPLoss(dict(AE_SPEC), None)
    with pytest.raises(RuntimeError, match='does not match'):  # strict loading: a wider AE does not fit
        AESOPLoss({**AE_SPEC, 'num_feat': 16}, str(ae_checkpoint))


def test_gradients_reach_sr_only_and_ae_stays_frozen(aesop, photos):
    hr = to_batch(*photos)
    torch.manual_seed(0)
    sr_net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(8, 3, 3, padding=1))
    lq = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    before = {k: v.clone() for k, v in aesop.ae.state_dict().items()}
    aesop.train()  # as a model does with its losses: the AE must stay in eval mode
    assert not aesop.ae.training
    assert not [p for p in aesop.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(sr_net.parameters(), lr=1e-2)
    sr_before = [p.detach().clone() for p in sr_net.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        target = hr.clone().requires_grad_()
        pred = sr_net(lq)
        pred.retain_grad()
        aesop(pred, target).backward()
        assert pred.grad is not None and pred.grad.abs().sum() > 0
        assert target.grad is None
        assert all(p.grad is None for p in aesop.ae.parameters())
        optimizer.step()
    assert all(torch.equal(v, aesop.ae.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(sr_before, sr_net.parameters()))


def test_aesop_replaces_the_pixel_term_of_delta_s(ae_checkpoint, photos):
    hr = to_batch(*photos)
    sr = (hr + 0.1 * torch.randn_like(hr)).clamp(0, 1)
    spec = {'type': 'AESOPLoss', 'network_ae': dict(AE_SPEC), 'pretrained': str(ae_checkpoint), 'loss_weight': 2.0}
    delta_s = build_loss({'type': 'VRPSRPerceptualLoss', 'lpips_weight': 0.0, 'gan_weight': 0.0, 'pixel_opt': spec})
    terms = delta_s.terms(sr, hr)
    assert list(terms) == ['l_pix']
    assert torch.allclose(terms['l_pix'], 2.0 * build_loss(dict(spec, loss_weight=1.0))(sr, hr), rtol=1e-5)


@pytest.mark.parametrize('name', ['aesop_vrpsr.yml', 'smoke/aesop_vrpsr.yml'])
def test_vrpsr_options_use_the_pretrained_autoencoder(name):
    """AESOP's AE spec in the VRPSR options equals the AE its pretraining option trains (strict loading)."""
    with open(REPO / 'options' / name) as f:
        pixel_opt = yaml.safe_load(f)['train']['perceptual_opt']['pixel_opt']
    with open(REPO / 'options' / name.replace('vrpsr', 'autoencoder')) as f:
        ae_opt = yaml.safe_load(f)
    assert pixel_opt['type'] == 'AESOPLoss'
    assert pixel_opt['network_ae'] == ae_opt['network_g']
    assert pixel_opt['pretrained'] == f"experiments/{ae_opt['name']}/models/net_g_latest.pth"


@pytest.mark.slow
def test_autoencoder_pretraining_smoke_lowers_loss_and_feeds_aesop(tmp_path, photos):
    photos_dir = tmp_path / 'photos'
    write_demo_images(photos_dir, size=64, per_photo=1, names=('astronaut', 'coffee', 'chelsea'))
    with open(REPO / 'options' / 'smoke' / 'aesop_autoencoder.yml') as f:
        opt = yaml.safe_load(f)
    name = f'test_aesop_ae_{uuid.uuid4().hex[:8]}'
    opt['name'] = name
    for phase in ('train', 'val'):
        opt['datasets'][phase]['dataroot_gt'] = opt['datasets'][phase]['dataroot_lq'] = str(photos_dir)
    opt_path = tmp_path / 'aesop_autoencoder.yml'
    opt_path.write_text(yaml.safe_dump(opt))
    exp_dir = tmp_path / 'experiments' / name  # VRPSR_ROOT keeps the run out of the repository
    run = subprocess.run([sys.executable, 'vrpsr_plugin/train.py', '-opt', str(opt_path)], cwd=REPO,
                         env={**os.environ, 'VRPSR_ROOT': str(tmp_path)}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = '\n'.join(p.read_text() for p in exp_dir.glob('train_*.log'))
    losses = [float(v) for v in re.findall(r'l_pix: ([0-9.e+-]+)', log)]
    assert len(losses) == opt['train']['total_iter'] // opt['logger']['print_freq']
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    checkpoint = exp_dir / 'models' / 'net_g_latest.pth'
    assert checkpoint.is_file()
    # the pretrained AE is what AESOPLoss loads (strictly)
    loss = AESOPLoss(opt['network_g'], str(checkpoint))
    hr = to_batch(*photos)
    with torch.no_grad():
        recon_err = (loss.ae(hr) - hr).abs().mean().item()
    assert recon_err < losses[0]
