"""Stage 1 (§3.3.1, §3.3.3): train the rate-target codec simulator f_theta(X, c) ~ real codec output (Eq. 4, 6).

:class:`CodecLoopModel` is the BasicSR training loop shared by the plugin's models: BasicSR's ``SRModel`` (EMA,
save/load/resume, logging, DDP wrapping) with the perceptual target Delta_S of Eq. 3 (``train.perceptual_opt``
of type ``VRPSRPerceptualLoss``), an optional discriminator ``network_d`` for its GAN term, AdamW + warm-up/cosine
and gradient accumulation (App. A.1, :mod:`vrpsr_plugin.models.schedule`). Subclasses say what is trained
(:meth:`trainable_parameters`) and what the loss compares (:meth:`forward_train`).
"""
import copy
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics.psnr_ssim import calculate_psnr_pt
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn

from vrpsr_plugin.archs.quantization_proxy import DCTQuantizationProxy
from vrpsr_plugin.losses.vrpsr_loss import VRPSRPerceptualLoss, build_lpips
from vrpsr_plugin.models.schedule import AccumulationMixin, build_optimizer, build_scheduler


def run_net(net: nn.Module, x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    """``net(x, cond)`` for codec-aware nets (``codec_aware = True``), ``net(x)`` for plain ones."""
    bare = net.module if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else net
    return net(x, cond) if getattr(bare, 'codec_aware', False) else net(x)


class CodecLoopModel(AccumulationMixin, SRModel):
    """SRModel + Delta_S (Eq. 3) with a discriminator, AdamW/cosine and accumulation; see the module docstring."""

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.check_accumulation()
        if train_opt.get('pixel_opt'):
            raise ValueError('use train.perceptual_opt (VRPSRPerceptualLoss; its pixel_opt replaces the L2 term) '
                             'instead of train.pixel_opt')
        self.net_d = None
        if self.opt.get('network_d'):
            self.net_d = self.model_to_device(build_network(self.opt['network_d']))
            path = self.opt['path'].get('pretrain_network_d')
            if path is not None:
                self.load_network(self.net_d, path, self.opt['path'].get('strict_load_d', True), 'params')
            self.net_d.train()
        # SRModel.init_training_settings with our EMA: losses, optimisers, schedulers (ours below)
        self.net_g.train()
        self.setup_ema()
        self.cri_pix = None
        self.cri_perceptual = build_loss(train_opt['perceptual_opt']).to(self.device) \
            if train_opt.get('perceptual_opt') else None
        self.setup_optimizers()
        self.setup_schedulers()
        self.setup_grad_scaler([self.get_bare_model(n) for n in (self.net_g, *self.extra_networks().values())],
                               self.device)
        if not isinstance(self.cri_perceptual, VRPSRPerceptualLoss):
            raise ValueError('train.perceptual_opt must be {type: VRPSRPerceptualLoss, ...}')
        if self.cri_perceptual.uses_gan and self.net_d is None:
            raise ValueError('the GAN term (gan_weight > 0) needs a discriminator: add network_d '
                             '(e.g. {type: UNetDiscriminatorSN}) or set gan_weight: 0')

    # ----------------------------------------------------------------- EMA of what trains
    def setup_ema(self) -> None:
        """``net_g_ema`` for ``train.ema_decay > 0``: a copy of net_g that *shares* its frozen parameters and owns
        only copies of the trained ones (BasicSR builds a second full network: for a diffusion net another frozen
        SD-Turbo). Loaded from ``params_ema`` of ``pretrain_network_g`` and saved as ``params_ema``, as in BasicSR."""
        self.ema_decay = self.opt['train'].get('ema_decay', 0)
        if self.ema_decay <= 0:
            return
        get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay} (trained parameters)')
        net = self.get_bare_model(self.net_g)
        frozen = {id(p): p for p in net.parameters() if not p.requires_grad}
        self.net_g_ema = copy.deepcopy(net, memo=dict(frozen)).eval()
        for param in self.net_g_ema.parameters():
            if id(param) not in frozen:
                param.requires_grad_(False)
        path = self.opt['path'].get('pretrain_network_g')
        if path is not None:
            self.load_network(self.net_g_ema, path, self.opt['path'].get('strict_load_g', True), 'params_ema')

    def model_ema(self, decay: float = 0.999) -> None:
        """ema <- decay * ema + (1 - decay) * param, over the parameters that train (the others are shared)."""
        ema = dict(self.net_g_ema.named_parameters())
        pairs = [(ema[name].data, param.data) for name, param in self.get_bare_model(self.net_g).named_parameters()
                 if param.requires_grad]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1 - decay)

    # ----------------------------------------------------------------- optimisation (App. A.1)
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters updated by ``optim_g``."""
        return self.net_g.parameters()

    def setup_optimizers(self) -> None:
        train_opt = self.opt['train']
        self.optimizer_g = build_optimizer(train_opt['optim_g'], self.trainable_parameters())
        self.optimizers.append(self.optimizer_g)
        if self.net_d is not None:
            self.optimizer_d = build_optimizer(train_opt.get('optim_d', train_opt['optim_g']), self.net_d.parameters())
            self.optimizers.append(self.optimizer_d)

    def setup_schedulers(self) -> None:
        self.schedulers = [build_scheduler(self.opt['train']['scheduler'], o) for o in self.optimizers]

    def forward_train(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) of Delta_S for the current batch."""
        raise NotImplementedError

    def extra_loss_terms(self) -> Dict[str, torch.Tensor]:
        """Loss terms beside Delta_S(prediction, target) for the batch :meth:`forward_train` just ran (none here)."""
        return {}

    def discriminator_input(self, pred: torch.Tensor) -> torch.Tensor:
        """What the discriminator judges against the target for the batch just run: the prediction here."""
        return pred

    def optimize_parameters(self, current_iter: int) -> None:
        """One micro-batch: generator (and discriminator) backward; optimiser/scheduler/EMA step when due."""
        if self.net_d is not None:
            self.net_d.requires_grad_(False)
        pred, target = self.forward_train()
        self.output = pred
        fake = self.discriminator_input(pred)
        fake_logits = self.net_d(fake) if self.cri_perceptual.uses_gan else None
        loss_dict = self.cri_perceptual.terms(pred, target, fake_logits)
        loss_dict.update(self.extra_loss_terms())
        l_total = sum(loss_dict.values())
        if not torch.isfinite(l_total):
            raise FloatingPointError(f'non-finite loss at iteration {current_iter}: '
                                     f'{ {k: float(v) for k, v in loss_dict.items()} }')
        self.backward(l_total)
        loss_dict['l_total'] = l_total
        if self.net_d is not None and self.cri_perceptual.uses_gan:
            self.net_d.requires_grad_(True)
            gan = self.cri_perceptual.gan_loss
            l_d_real = gan(self.net_d(target.detach()), True, is_disc=True)
            l_d_fake = gan(self.net_d(fake.detach()), False, is_disc=True)
            self.backward(l_d_real + l_d_fake)
            loss_dict['l_d_real'], loss_dict['l_d_fake'] = l_d_real, l_d_fake
        if self.is_step_due(current_iter):
            self.step_optimizers(self.optimizers)
            for scheduler in self.schedulers:
                scheduler.step()
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)
        self.log_dict = self.reduce_loss_dict(OrderedDict((k, v.detach()) for k, v in loss_dict.items()))

    def resume_training(self, resume_state: Dict) -> None:
        """BasicSR's (optimisers, schedulers) plus the fp16 loss scale when the state has one."""
        super().resume_training(resume_state)
        if 'grad_scaler' in resume_state:
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])

    # ----------------------------------------------------------------- saving
    def extra_networks(self) -> Dict[str, nn.Module]:
        """Networks besides net_g saved with every checkpoint (label -> module); resumed via ``network_<label>``."""
        return {'d': self.net_d} if getattr(self, 'net_d', None) is not None else {}

    def save(self, epoch: int, current_iter: int) -> None:
        for label, net in self.extra_networks().items():
            self.save_network(net, f'net_{label}', current_iter)
        super().save(epoch, current_iter)

    # ----------------------------------------------------------------- validation helpers
    def eval_net(self) -> nn.Module:
        """net_g_ema when EMA is on (as BasicSR's SRModel.test), else net_g."""
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g

    def metric_lpips(self) -> nn.Module:
        """LPIPS for validation: ``val.lpips_pretrained_backbone`` (default true: the real metric)."""
        if getattr(self, '_val_lpips', None) is None:
            val_opt = self.opt.get('val') or {}
            self._val_lpips = build_lpips(val_opt.get('lpips_net', 'alex'),
                                          val_opt.get('lpips_pretrained_backbone', True)).to(self.device)
        return self._val_lpips

    @torch.no_grad()
    def score(self, pred: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
        """PSNR (on 8-bit levels) and LPIPS of one image pair (1 x 3 x H x W in [0, 1])."""
        pred, ref = (t.clamp(0, 1).mul(255).round().div(255) for t in (pred, ref))
        return {'psnr': float(calculate_psnr_pt(pred, ref, crop_border=0).mean()),
                'lpips': float(self.metric_lpips()(pred, ref, normalize=True).mean())}

    def save_visuals(self, dataset_name: str, current_iter, paths: List[str], **images: torch.Tensor) -> None:
        """``val.save_img``: each batch image as a PNG in ``path.visualization/<dataset>/`` (BasicSR's layout:
        ``<name>_<iter>_<label>.png`` in training, ``<name>_<label>.png`` in test.py), written atomically."""
        from vrpsr_plugin.atomic_io import write_png
        from vrpsr_plugin.codecs.inputs import to_rgb_uint8
        folder = osp.join(self.opt['path']['visualization'], dataset_name)
        for i, path in enumerate(paths):
            stem = osp.splitext(osp.basename(path))[0]
            for label, batch in images.items():
                name = f'{stem}_{current_iter}_{label}.png' if self.opt['is_train'] else f'{stem}_{label}.png'
                write_png(osp.join(folder, name), to_rgb_uint8(batch[i].float().clamp(0, 1)))

    def report(self, dataset_name: str, per_image: List[Dict[str, float]], current_iter: int, tb_logger) -> None:
        """Average the per-image metrics, log them and write them to tensorboard (``metrics/<set>/<name>``)."""
        sums: Dict[str, List[float]] = defaultdict(list)
        for row in per_image:
            for key, value in row.items():
                sums[key].append(value)
        self.metric_results = {k: sum(v) / len(v) for k, v in sums.items()}
        text = ', '.join(f'{k}: {v:.4f}' for k, v in sorted(self.metric_results.items()))
        get_root_logger().info(f'Validation {dataset_name} @ iter {current_iter}: {text}')
        if tb_logger:
            for key, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{key}', value, current_iter)


@MODEL_REGISTRY.register()
class CodecSimulatorModel(CodecLoopModel):
    """Trains ``network_g`` (a simulator, forward(x, cond)) on X -> real codec output with Delta_C = Delta_S (Eq. 6)
    or MSE (``perceptual_opt.mse_only``, Table 3 e). Data: :class:`CodecSimulatorDataset`.

    A :class:`~vrpsr_plugin.archs.rate_aware_simulator_arch.RateAwareCodecSimulator` is trained in two parts:
    its rate model is fitted first on real encodes of the training images (``train.rate_fit``, skipped when the
    loaded weights already hold a fit), then frozen; its distortion net D learns X -> real codec output at each
    sample's real QP (``forward(x, cond, qp=...)``). Validation runs the whole simulator, QP solve included, from the bpp."""

    def init_training_settings(self) -> None:
        if hasattr(self.net_g, 'rate_model'):
            self.fit_rate_model()
        super().init_training_settings()

    def fit_rate_model(self) -> None:
        """Fit R on ``train.rate_fit`` = {num_images, sizes, qps, steps, seed} crops of the training images, half of
        them passed through the data's ``input_variation`` (as D sees them), and a ``distortion: dct`` proxy on
        the same encodes' decodes."""
        from vrpsr_plugin.data.codec_simulator_dataset import GTReader, gt_keys
        from vrpsr_plugin.models.rate_fit import collect_rate_samples, fit_rate_model
        net, logger = self.get_bare_model(self.net_g), get_root_logger()
        if torch.isfinite(net.bpp_range).all():
            logger.info(f'rate model: fitted weights loaded (bpp range {net.bpp_range.tolist()}); not refitted')
        else:
            fit_opt = dict(self.opt['train'].get('rate_fit') or {})
            data_opt = self.opt['datasets']['train']
            keys = gt_keys(data_opt)
            rng = np.random.default_rng(int(fit_opt.get('seed', 0)))
            picks = rng.permutation(len(keys))[:int(fit_opt.get('num_images', 64))]
            with GTReader(data_opt) as read_gt:  # disk or lmdb, as the dataset reads them
                images = [read_gt(keys[i]) for i in picks]
            lo, hi = (int(v) for v in net.rate_model.qp_range)
            proxy = net.distortion if isinstance(net.distortion, DCTQuantizationProxy) else None
            samples = collect_rate_samples(images, list(data_opt.get('codecs') or ['libx264']),
                                           fit_opt.get('qps') or list(range(lo, hi + 1, 3)) + [hi],
                                           fit_opt.get('sizes') or [64, 128, 256],
                                           seed=int(fit_opt.get('seed', 0)), vary=self._input_variation(data_opt),
                                           keep_decodes=proxy is not None, **data_opt.get('encode_kwargs', {}))
            errors = fit_rate_model(net.rate_model, samples, steps=int(fit_opt.get('steps', 400)))
            from vrpsr_plugin.codecs.condition import CodecCondition
            bpps = [CodecCondition.from_stream(c, b, s.image.shape[0] * s.image.shape[1]).bpp
                    for s in samples for c, b in zip(s.codecs, s.bpps)]
            net.bpp_range.copy_(torch.tensor([min(bpps), max(bpps)]))
            logger.info(f'rate model fitted on {errors["count"]} real encodes of {len(samples)} crops: mean '
                        f'|R/real - 1| = {errors["mean_rel_error"]:.3f}, median {errors["median_rel_error"]:.3f}; '
                        f'bpp range {min(bpps):.4g}..{max(bpps):.4g}')
            if proxy is not None:
                from vrpsr_plugin.models.quantization_fit import fit_quantization_proxy
                fit = fit_quantization_proxy(proxy, samples)
                logger.info(f'quantisation proxy fitted on {fit["count"]} coefficients: mean shrinkage '
                            f'{fit["mean_shrink_below_1"]:.3f} below one Qstep, {fit["mean_shrink_above_1"]:.3f} above; '
                            f'mean noise {fit["mean_noise_std"]:.3f} Qstep')
        net.rate_model.requires_grad_(False)

    @staticmethod
    def _input_variation(data_opt: Dict) -> Optional[Callable[[np.ndarray, int], np.ndarray]]:
        """The training data's ``input_variation`` as ``vary(crop, i)`` for the rate fit (seeded by i), or None."""
        if data_opt.get('input_variation') is None:
            return None
        from vrpsr_plugin.data.degradation import MildDegradation, vary_uint8
        variation = MildDegradation(dict(data_opt['input_variation']))
        return lambda crop, i: vary_uint8(variation, crop, [int(data_opt.get('seed', 0)), i, 2])

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.net_g.parameters() if p.requires_grad]

    def setup_optimizers(self) -> None:
        """As the base class; a simulator with nothing left to train after its fits (``distortion: dct``) needs
        ``train.total_iter: 0`` (fit, validate, save) and has no optimizer."""
        if not self.trainable_parameters():
            if self.opt['train'].get('total_iter', 0):
                raise ValueError(f'{type(self.get_bare_model(self.net_g)).__name__} has nothing to train after its '
                                 'fits (distortion: dct); set train.total_iter: 0')
            return
        super().setup_optimizers()

    def feed_data(self, data: Dict[str, torch.Tensor]) -> None:
        self.gt = data['gt'].to(self.device)
        self.cond = data['cond'].to(self.device)
        self.codec_out = data['codec_out'].to(self.device) if 'codec_out' in data else None
        self.codecs = list(data.get('codec', []))
        self.qp = torch.as_tensor(data['qp']).to(self.device) if 'qp' in data else None

    def forward_train(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.codec_out is None:
            raise ValueError('training batches need codec_out (the real codec output)')
        if hasattr(self.get_bare_model(self.net_g), 'rate_model'):  # rate-aware: D at the sample's real QP
            return self.net_g(self.gt, self.cond, qp=self.qp.float()), self.codec_out
        return self.net_g(self.gt, self.cond), self.codec_out

    def nondist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        """Simulator vs real codec, per codec and overall: PSNR and LPIPS."""
        net = self.eval_net()
        was_training = net.training
        net.eval()
        rows = []
        with torch.no_grad():
            for batch in dataloader:
                self.feed_data(batch)
                sim = net(self.gt, self.cond)
                if save_img:
                    self.save_visuals(dataloader.dataset.opt['name'], current_iter, batch['gt_path'], sim=sim)
                for i, codec in enumerate(self.codecs):
                    scores = self.score(sim[i:i + 1], self.codec_out[i:i + 1])
                    rows.append({**scores, **{f'{k}_{codec}': v for k, v in scores.items()}})
        net.train(was_training)
        self.report(dataloader.dataset.opt['name'], rows, current_iter, tb_logger)
