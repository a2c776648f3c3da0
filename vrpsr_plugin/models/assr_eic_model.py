"""ASSR-EIC decoder training (seed 002): the real codec sits before the decoder, so the data carry its output.

    out, gate, fid = g(x_coded, c) at the queried window;  L = w_f * L1(fid, X) + L1(out, X) + w_gan * GAN(out)

The fidelity branch alone is held to L1 (``fidelity_weight``); the gated output gets ``pixel_opt`` and, with a
``network_d``, the GAN loss (``gan_opt``), so the per-pixel gate learns where the generative branch pays off.
Validation restores whole regions (``patch_size: ~`` in the validation dataset).
"""
from collections import OrderedDict
from typing import Any, Dict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from vrpsr_plugin.models.schedule import build_optimizer


@MODEL_REGISTRY.register()
class ASSREICModel(SRModel):
    """Trains :class:`~vrpsr_plugin.archs.assr_eic_arch.ASSREICNet` or
    :class:`~vrpsr_plugin.archs.assr_eic_diffusion_arch.ASSREICDiffusion` (options: train.fidelity_weight, pixel_opt,
    optional network_d + gan_opt + optim_d + net_d_init_iters)."""

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.fidelity_weight = float(train_opt.get('fidelity_weight', 1.0))
        self.net_d = None
        if self.opt.get('network_d'):
            if not train_opt.get('gan_opt') or not train_opt.get('optim_d'):
                raise ValueError('network_d needs train.gan_opt and train.optim_d')
            self.net_d = self.model_to_device(build_network(self.opt['network_d']))
            path = self.opt['path'].get('pretrain_network_d')
            if path is not None:
                self.load_network(self.net_d, path, self.opt['path'].get('strict_load_d', True),
                                  self.opt['path'].get('param_key_d', 'params'))
            self.net_d.train()
            self.cri_gan = build_loss(train_opt['gan_opt']).to(self.device)
            self.net_d_init_iters = int(train_opt.get('net_d_init_iters', 0))
        super().init_training_settings()

    def setup_optimizers(self) -> None:
        """Adam or AdamW over the parameters that require gradients (the diffusion decoder's LoRA and heads: its SD
        base is frozen), and over the discriminator."""
        self.optimizer_g = build_optimizer(self.opt['train']['optim_g'], self.net_g.parameters())
        self.optimizers.append(self.optimizer_g)
        if self.net_d is not None:
            self.optimizer_d = build_optimizer(self.opt['train']['optim_d'], self.net_d.parameters())
            self.optimizers.append(self.optimizer_d)

    def feed_data(self, data: Dict[str, Any]) -> None:
        self.lq = data['lq'].to(self.device)
        self.cond = data['cond'].to(self.device)
        self.cell = data['cell'].to(self.device)
        self.gt = data['gt'].to(self.device)
        self.coords = data['coords'].to(self.device) if 'coords' in data else None

    def optimize_parameters(self, current_iter: int) -> None:
        if self.coords is None:
            raise ValueError('training batches need query coordinates: set patch_size in the train dataset')
        use_gan = self.net_d is not None and current_iter > self.net_d_init_iters
        if self.net_d is not None:
            self.net_d.requires_grad_(False)
        self.optimizer_g.zero_grad()
        batch, _, height, width = self.gt.shape
        out, gate, fid = self.net_g.forward_queries(self.lq, self.cond, self.coords, self.cell)
        out, fid = (t.transpose(1, 2).reshape(batch, 3, height, width) for t in (out, fid))
        loss_dict = OrderedDict()
        l_fid = self.fidelity_weight * self.cri_pix(fid, self.gt)
        l_pix = self.cri_pix(out, self.gt)
        loss_dict.update(l_fid=l_fid, l_pix=l_pix, gate=gate.detach().mean())
        l_total = l_fid + l_pix
        if use_gan:
            l_gan = self.cri_gan(self.net_d(out), True, is_disc=False)
            loss_dict['l_g_gan'] = l_gan
            l_total = l_total + l_gan
        l_total.backward()
        self.optimizer_g.step()
        if use_gan:
            self.net_d.requires_grad_(True)
            self.optimizer_d.zero_grad()
            l_real = self.cri_gan(self.net_d(self.gt), True, is_disc=True)
            l_fake = self.cri_gan(self.net_d(out.detach()), False, is_disc=True)
            (l_real + l_fake).backward()
            self.optimizer_d.step()
            loss_dict.update(l_d_real=l_real.detach(), l_d_fake=l_fake.detach())
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        net.eval()
        with torch.no_grad():
            self.output = net(self.lq, self.cond, out_size=tuple(self.gt.shape[-2:])).clamp_(0, 1)
        if net is self.net_g:
            net.train()

    def save(self, epoch: int, current_iter: int) -> None:
        super().save(epoch, current_iter)
        if self.net_d is not None:
            self.save_network(self.net_d, 'net_d', current_iter)
