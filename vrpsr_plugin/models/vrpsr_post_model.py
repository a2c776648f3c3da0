"""§3.4 (Eq. 9, Table 2): SR g and post-processing h around the codec, trained through the simulator.

    X' = g(X~, c) -> X^' = f_theta(X', c) -> X^_post = h(X^', c);   loss Delta_S(X^_post, X_s)

In BasicSR terms ``network_g`` is h (trained in every mode, with EMA) and ``network_sr`` is g. Modes
(``train.mode``): ``joint`` (Table 2 f: g and h updated together; g starts from ``path.pretrain_network_sr``
when given), ``sr_then_post`` (Table 2 d/e: g loaded from a trained SR checkpoint and frozen, h trained),
``post_only`` (Table 2 c: no SR, X' = X~ resized to the output size; ``network_sr`` not used). The simulator is
frozen (``network_sim`` + ``path.pretrain_network_sim``) and the target defaults to the clean image
(``supervision: clean``); all VRPSRModel options (``ste``, ``supervision``, ...) apply; ``train.sr_lr`` sets g's
learning rate in ``joint`` mode (default: optim_g's). Validation: real codec at
the source's rate (Eq. 2), then h, scored against X.
"""
from typing import Dict, Iterable, Optional, Tuple

import torch
from basicsr.archs import build_network
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn
from torch.nn import functional as F

from vrpsr_plugin.models.codec_simulator_model import run_net
from vrpsr_plugin.models.vrpsr_model import VRPSRModel

_MODES = ('joint', 'sr_then_post', 'post_only')


@MODEL_REGISTRY.register()
class VRPSRPostModel(VRPSRModel):
    """h(f(g(X~, c), c), c) trained with Delta_S (Eq. 3, 9); see the module docstring for the modes."""

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        train_opt.setdefault('supervision', 'clean')
        self.mode = train_opt.get('mode', 'joint')
        if self.mode not in _MODES:
            raise ValueError(f'train.mode must be one of {_MODES}, got {self.mode!r}')
        if train_opt.get('gan_on', 'codec_output') != 'codec_output':
            raise ValueError("VRPSRPostModel: the discriminator judges h's output, what the viewer sees; "
                             f"train.gan_on must be codec_output, got {train_opt['gan_on']!r}")
        self.net_sr = self._build_sr()
        super().init_training_settings()

    def _build_sr(self) -> Optional[nn.Module]:
        if self.mode == 'post_only':
            return None
        if not self.opt.get('network_sr'):
            raise ValueError(f'train.mode {self.mode} needs network_sr (the SR net g)')
        net = build_network(self.opt['network_sr'])
        path = self.opt['path'].get('pretrain_network_sr')
        if path is not None:
            self.load_network(net, path, True, self.opt['path'].get('param_key_sr', 'params_ema'))
        elif self.mode == 'sr_then_post':
            raise ValueError('train.mode sr_then_post needs path.pretrain_network_sr (the trained SR net)')
        if self.mode == 'joint':
            return self.model_to_device(net).train()
        net = net.to(self.device).eval()
        net.requires_grad_(False)
        return net

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        params = list(super().trainable_parameters())
        return params + list(self.net_sr.parameters()) if self.mode == 'joint' else params

    def setup_optimizers(self) -> None:
        """``optim_g`` for h (and g); in ``joint`` mode ``train.sr_lr`` gives the pre-trained g its own learning rate
        (a parameter group of the same optimiser, so the schedule scales both)."""
        sr_lr = self.opt['train'].get('sr_lr')
        super().setup_optimizers()
        if self.mode == 'joint' and sr_lr is not None:
            sr_params = {id(p) for p in self.net_sr.parameters()}
            group = self.optimizer_g.param_groups[0]
            group['params'] = [p for p in group['params'] if id(p) not in sr_params]
            self.optimizer_g.add_param_group({'params': [p for p in self.net_sr.parameters() if p.requires_grad],
                                              'lr': float(sr_lr)})

    def extra_networks(self) -> Dict[str, nn.Module]:
        nets = super().extra_networks()
        return {**nets, 'sr': self.net_sr} if self.net_sr is not None else nets

    def _sr(self, net: Optional[nn.Module]) -> torch.Tensor:
        """X' = g(X~, c); in post_only X~ itself (resized to the target size when the scale is not 1)."""
        if net is None:
            size = self.gt.shape[-2:] if self.gt is not None else None
            scale = self.opt.get('scale', 1)
            if scale == 1:
                return self.lq
            return F.interpolate(self.lq, size=size, scale_factor=None if size else scale, mode='bicubic',
                                 align_corners=False).clamp(0, 1)
        return run_net(net, self.lq, self.sr_condition())

    def forward_train(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.mode == 'sr_then_post':
            with torch.no_grad():
                x_prime = self._sr(self.net_sr)
        else:
            x_prime = self._sr(self.net_sr)
        self.x_prime = x_prime
        decoded = self.through_codec(x_prime)
        return run_net(self.net_g, decoded, self.cond), self.target()

    def restore(self) -> torch.Tensor:
        return self._sr(self.net_sr)

    def after_codec(self, decoded: torch.Tensor) -> torch.Tensor:
        return run_net(self.eval_net(), decoded, self.cond)
