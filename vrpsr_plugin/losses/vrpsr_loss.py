"""The perceptual SR target Delta_S = w_L2 * L2 + w_LPIPS * LPIPS + w_GAN * GAN (Eq. 3; weights 2.0/5.0/0.5, App. A.1).

The same target trains the simulator (Delta_C = Delta_S, Eq. 6) and the recompression-aware SR (Eq. 3 with X^'
in place of X^). The GAN term is the generator side of BasicSR's ``GANLoss`` on the discriminator's logits of the
prediction; the model owning the discriminator passes them in (``fake_logits``) and trains the discriminator with
``gan_loss(..., is_disc=True)``. Images are ``B x 3 x H x W`` in ``[0, 1]``.
"""
import functools
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch
from basicsr.losses import build_loss
from basicsr.losses.gan_loss import GANLoss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn
from torch.nn import functional as F

from vrpsr_plugin.metrics.pretrained import quiet_pretrained_argument


@functools.lru_cache(maxsize=None)
def _warn_random_backbone(net: str) -> None:
    """Say once per process (not once per LPIPS built) that LPIPS(net) has a random backbone."""
    get_root_logger().warning(
        f'LPIPS({net}) uses a RANDOM backbone (lpips_pretrained_backbone: false): offline smoke/test setting, '
        'its values are not the LPIPS metric.')


def build_lpips(net: str = 'alex', pretrained_backbone: bool = True) -> nn.Module:
    """LPIPS through the ``lpips`` package, frozen and in eval mode.

    ``pretrained_backbone=True`` is the real metric (ImageNet backbone from torchvision + the package's linear
    heads). ``False`` keeps the real linear heads on a randomly initialised backbone: it loads offline (CPU tests
    and smoke configs) but is *not* the LPIPS metric; this is logged.
    """
    import lpips  # imports torchvision's model zoo: only when a loss is built, not at registration
    if not pretrained_backbone:
        _warn_random_backbone(net)
    with quiet_pretrained_argument():
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@LOSS_REGISTRY.register()
class VRPSRPerceptualLoss(nn.Module):
    """Delta_S of Eq. 3 (App. A.1 weights).

    Args:
        mse_weight: weight of the L2 (MSE) term (2.0 in the paper).
        lpips_weight: weight of the LPIPS term (5.0).
        gan_weight: weight of the generator's GAN term (0.5).
        gan_type: BasicSR ``GANLoss`` type ('vanilla', 'lsgan', 'hinge', ...).
        lpips_net: LPIPS backbone ('alex', 'vgg', 'squeeze').
        lpips_pretrained_backbone: see :func:`build_lpips`.
        mse_only: Table 3 (e): keep only the L2 term (LPIPS and GAN weights forced to 0).
        pixel_opt: a registered loss spec (e.g. ``{type: AESOPLoss, ...}``) replacing the L2 term; its own
            ``loss_weight`` applies, ``mse_weight`` is then unused.
    """

    def __init__(self, mse_weight: float = 2.0, lpips_weight: float = 5.0, gan_weight: float = 0.5,
                 gan_type: str = 'vanilla', lpips_net: str = 'alex', lpips_pretrained_backbone: bool = True,
                 mse_only: bool = False, pixel_opt: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        for name, value in (('mse_weight', mse_weight), ('lpips_weight', lpips_weight), ('gan_weight', gan_weight)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f'{name} must be a number >= 0, got {value!r}')
        if mse_only:
            lpips_weight, gan_weight = 0.0, 0.0
        self.mse_weight = float(mse_weight)
        self.lpips_weight = float(lpips_weight)
        self.gan_weight = float(gan_weight)
        self.pixel = build_loss(pixel_opt) if pixel_opt else None
        self.lpips = build_lpips(lpips_net, lpips_pretrained_backbone) if self.lpips_weight > 0 else None
        self.gan_loss = GANLoss(gan_type, loss_weight=self.gan_weight)
        if self.pixel is None and self.mse_weight == 0 and self.lpips_weight == 0 and self.gan_weight == 0:
            raise ValueError('VRPSRPerceptualLoss: every term has weight 0')

    @property
    def uses_gan(self) -> bool:
        """Whether the generator term needs discriminator logits."""
        return self.gan_weight > 0

    def terms(self, pred: torch.Tensor, target: torch.Tensor,
              fake_logits: Optional[torch.Tensor] = None) -> 'OrderedDict[str, torch.Tensor]':
        """The weighted terms of Eq. 3 by name (``l_pix``/``l_mse``, ``l_lpips``, ``l_gan``)."""
        if pred.shape != target.shape:
            raise ValueError(f'prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape')
        out: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
        if self.pixel is not None:
            out['l_pix'] = self.pixel(pred, target)
        elif self.mse_weight > 0:
            out['l_mse'] = self.mse_weight * F.mse_loss(pred, target)
        if self.lpips is not None:
            out['l_lpips'] = self.lpips_weight * self.lpips(pred, target, normalize=True).mean()
        if self.uses_gan:
            if fake_logits is None:
                raise ValueError('gan_weight > 0 needs the discriminator logits of the prediction (fake_logits); '
                                 'configure network_d or set gan_weight: 0')
            out['l_gan'] = self.gan_loss(fake_logits, True, is_disc=False)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                fake_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Delta_S(pred, target), a scalar."""
        return sum(self.terms(pred, target, fake_logits).values())
