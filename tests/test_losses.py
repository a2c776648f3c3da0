"""Delta_S (Eq. 3, App. A.1 weights) and the AdamW + warm-up/cosine schedule (App. A.1)."""
import pytest
import torch
from basicsr.losses import build_loss
from basicsr.losses.gan_loss import GANLoss
from torch.nn import functional as F

from tests.conftest import crop
from vrpsr_plugin.losses.vrpsr_loss import VRPSRPerceptualLoss
from vrpsr_plugin.models.schedule import build_optimizer, build_scheduler


def _pair(photo):
    x = torch.from_numpy(crop(photo, 32, 10, 10)).permute(2, 0, 1)[None].float() / 255
    return x, (x + 0.1 * torch.randn_like(x, generator=torch.Generator().manual_seed(0))).clamp(0, 1)


@pytest.fixture(scope='module')
def loss():
    return build_loss({'type': 'VRPSRPerceptualLoss', 'lpips_pretrained_backbone': False})


def test_paper_weights_and_terms(loss, photo):
    pred, target = _pair(photo)
    logits = torch.randn(1, 1, 32, 32)
    terms = loss.terms(pred, target, logits)
    assert list(terms) == ['l_mse', 'l_lpips', 'l_gan']
    assert (loss.mse_weight, loss.lpips_weight, loss.gan_weight) == (2.0, 5.0, 0.5)
    assert torch.allclose(terms['l_mse'], 2.0 * F.mse_loss(pred, target))
    assert torch.allclose(terms['l_lpips'], 5.0 * loss.lpips(pred, target, normalize=True).mean())
    assert torch.allclose(terms['l_gan'], 0.5 * GANLoss('vanilla')(logits, True))
    assert torch.allclose(loss(pred, target, logits), sum(terms.values()))
    assert loss(target, target, logits) < loss(pred, target, logits)


def test_gradient_flows(loss, photo):
    pred, target = _pair(photo)
    pred.requires_grad_(True)
    loss(pred, target, torch.zeros(1, 1, 32, 32)).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_mse_only_and_missing_logits(photo):
    pred, target = _pair(photo)
    mse = VRPSRPerceptualLoss(mse_only=True, lpips_pretrained_backbone=False)
    assert list(mse.terms(pred, target)) == ['l_mse'] and mse.lpips is None and not mse.uses_gan
    with pytest.raises(ValueError, match='fake_logits'):
        VRPSRPerceptualLoss(lpips_pretrained_backbone=False)(pred, target)
    with pytest.raises(ValueError, match='shape'):
        mse(pred, target[..., :16])
    with pytest.raises(ValueError, match='mse_weight'):
        VRPSRPerceptualLoss(mse_weight=-1)


def test_pixel_term_replaced_by_registered_loss(photo):
    pred, target = _pair(photo)
    loss = VRPSRPerceptualLoss(lpips_weight=0, gan_weight=0, pixel_opt={'type': 'L1Loss', 'loss_weight': 3.0})
    terms = loss.terms(pred, target)
    assert list(terms) == ['l_pix']
    assert torch.allclose(terms['l_pix'], 3.0 * F.l1_loss(pred, target))


def test_adamw_warmup_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer({'type': 'AdamW', 'lr': 2e-5}, [param])
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]['weight_decay'] == 0.01
    sched = build_scheduler({'type': 'cosine', 'warmup_steps': 4, 'total_steps': 12}, opt)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[2] == pytest.approx(1e-5) and lrs[4] == pytest.approx(2e-5)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and opt.param_groups[0]['lr'] == pytest.approx(0, abs=1e-12)
    state = sched.state_dict()
    sched2 = build_scheduler({'type': 'cosine', 'warmup_steps': 4, 'total_steps': 12},
                             build_optimizer({'type': 'AdamW', 'lr': 2e-5}, [param]))
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 12
    with pytest.raises(ValueError, match='total_steps'):
        build_scheduler({'type': 'cosine', 'warmup_steps': 4}, opt)
    with pytest.raises(ValueError, match='SGD'):
        build_optimizer({'type': 'SGD', 'lr': 1.0}, [param])
