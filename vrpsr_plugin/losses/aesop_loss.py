"""AESOP loss (seed 004): L_AESOP = || psi_AE(I_HR) - psi_AE(I_SR) ||_p, measured after the DECODER of an
auto-encoder pretrained with a pixel loss (``AESOPAutoEncoderModel``, options/aesop_autoencoder.yml) and frozen.

It replaces the pixel term L_pix of a perceptual SR objective, e.g. in VRPSR's Delta_S:
``pixel_opt: {type: AESOPLoss, network_ae: {...}, pretrained: ..., loss_weight: 2.0}`` inside
``VRPSRPerceptualLoss``. Images are B x 3 x H x W in [0, 1].
"""
import os
from copy import deepcopy
from typing import Any, Dict, Optional

import torch
from basicsr.archs import build_network
from basicsr.losses.basic_loss import l1_loss, mse_loss
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint

_NORMS = {1: l1_loss, 2: mse_loss}
_REDUCTIONS = ('none', 'mean', 'sum')


@LOSS_REGISTRY.register()
class AESOPLoss(nn.Module):
    """L_AESOP (seed 004, Fig. 2b). The auto-encoder is frozen: its parameters have ``requires_grad=False``,
    it stays in eval mode whatever ``train()`` is called with, and gradients reach the SR image only.

    Args:
        network_ae: arch spec of the AE, e.g. ``{type: AESOPAutoEncoder, num_feat: 64}`` (built through
            basicsr's ARCH_REGISTRY).
        pretrained: path of the AE checkpoint (``net_g_*.pth`` from ``AESOPAutoEncoderModel``; ``params_ema``
            preferred over ``params``), loaded strictly.
        loss_weight: multiplier of the loss. p: 1 (L1, the paper's default) or 2 (squared error, as basicsr's
            MSELoss). reduction: 'mean', 'sum' or 'none'.
    """

    def __init__(self, network_ae: Dict[str, Any], pretrained: Optional[str], loss_weight: float = 1.0, p: int = 1,
                 reduction: str = 'mean') -> None:
        super().__init__()
        if p not in _NORMS:
            raise ValueError(f'AESOPLoss: p must be 1 or 2, got {p!r}')
        if reduction not in _REDUCTIONS:
            raise ValueError(f'AESOPLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}')
        if not isinstance(network_ae, dict) or 'type' not in network_ae:
            raise ValueError(f'AESOPLoss: network_ae must be an arch spec with a "type", got {network_ae!r}')
        if not pretrained:
            raise ValueError('AESOPLoss needs "pretrained": the checkpoint of an auto-encoder pretrained with a '
                             'pixel loss (python vrpsr_plugin/train.py -opt options/aesop_autoencoder.yml); '
                             'a randomly initialised AE is not AESOP')
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f'AESOPLoss: auto-encoder checkpoint not found: {pretrained} (pretrain it with '
                                    'python vrpsr_plugin/train.py -opt options/aesop_autoencoder.yml)')
        self.loss_weight = float(loss_weight)
        self.p = p
        self.reduction = reduction
        self.ae = build_network(deepcopy(network_ae))
        load_state_dict_strict(self.ae, read_checkpoint(pretrained), source=str(pretrained))
        self.ae.requires_grad_(False)
        self.ae.eval()

    def train(self, mode: bool = True) -> 'AESOPLoss':
        """Keep the auto-encoder in eval mode (it is frozen during SR training, seed 004 §3)."""
        super().train(mode)
        self.ae.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """pred: I_SR (gradients flow into it), target: I_HR (no gradient); same shape B x C x H x W.
        ``weight`` is basicsr's optional element-wise weight."""
        if pred.shape != target.shape:
            raise ValueError(f'AESOPLoss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ '
                             'in shape')
        with torch.no_grad():
            ae_target = self.ae(target)
        return self.loss_weight * _NORMS[self.p](self.ae(pred), ae_target, weight, reduction=self.reduction)
