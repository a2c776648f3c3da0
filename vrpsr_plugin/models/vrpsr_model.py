"""Stage 2 (§3.3.2-3.3.4): recompression-aware SR trained through the frozen codec simulator.

    X' = g_phi(X~, c)            (``network_g``; codec-aware nets get c, plain nets only X~)
    X^' = f_theta(X', c)         (``network_sim``, loaded from the stage-1 checkpoint, frozen, eval mode)
    loss = Delta_S(X^', X_s)     (Eq. 3), X_s = f_theta(X, c') without gradient (Eq. 7)

Options (``train``), each an ablation of Table 5 / Table 3:
``ste`` (Eq. 8: the forward value is the real codec output of X' at the rate in c, the gradient the simulator's),
``ste_rate: find_qp | qp`` (match the bpp in c, or reuse the sampled QP), ``joint`` (also update f_theta),
``supervision: simulator | real_codec | clean`` (X_s = f(X, c'), the real codec output of X at q-10, or X),
``condition_embedding: false`` (g gets cond=None), ``pre_codec_weight`` (adds w * MSE(X', X), see
:meth:`VRPSRModel.extra_loss_terms`), ``gan_on: codec_output | sr_output`` (the discriminator judges X^', as Eq. 3,
or X' before the codec; beyond the paper), ``codec_in_loop: false`` (the non-aware baseline: plain
fine-tuning on Delta_S(X', X), no simulator, same validation). Validation runs the *real* codec on X' at the QP whose rate
matches the source's (Eq. 2, ``find_qp``) and logs bpp, PSNR and LPIPS of the recompressed output.
Data: :class:`~vrpsr_plugin.data.recompression_sr_dataset.RecompressionSRDataset`.
"""
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn

from vrpsr_plugin.codecs.condition import stream_bpp
from vrpsr_plugin.models.codec_simulator_model import CodecLoopModel, run_net

_SUPERVISION = ('simulator', 'real_codec', 'clean')
_GAN_ON = ('codec_output', 'sr_output')


def fingerprint(net: nn.Module) -> torch.Tensor:
    """Per-tensor (sum, sum of squares) of a module's state in float64: detects any change of the weights."""
    return torch.stack([torch.stack([t.double().sum(), t.double().square().sum()])
                        for t in net.state_dict().values() if t.is_floating_point()]).cpu()


def real_codec(images: torch.Tensor, codecs: List[str], bpps: Optional[torch.Tensor] = None,
               qps: Optional[List[int]] = None, **encode_kwargs) -> Tuple[torch.Tensor, List[float]]:
    """Each image through its real codec, at the QP matching the condition bpps ``bpps`` (Eq. 2, find_qp, to
    their whole-stream rate) or at ``qps``; returns the decoded batch (on the input's device) and the measured
    (whole-stream) bpps."""
    from vrpsr_plugin.codecs import encode, find_qp
    out, rates = [], []
    for i, codec in enumerate(codecs):
        image = images[i].detach().float().clamp(0, 1).cpu()
        if bpps is not None:
            target = stream_bpp(codec, float(bpps[i]), image.shape[-2] * image.shape[-1])
            result = find_qp(image, codec, target, **encode_kwargs)
        elif qps is not None:
            result = encode(image, codec, qp=int(qps[i]), **encode_kwargs)
        else:
            raise ValueError('give bpps (rate matching) or qps')
        out.append(result.tensor())
        rates.append(float(result.bpp))
    return torch.stack(out).to(images.device, images.dtype), rates


@MODEL_REGISTRY.register()
class VRPSRModel(CodecLoopModel):
    """g trained through a frozen simulator f (Eq. 3 with X^' = f(g(X~, c), c), target Eq. 7)."""

    # ----------------------------------------------------------------- set-up
    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.ste = bool(train_opt.get('ste', False))
        self.ste_rate = train_opt.get('ste_rate', 'find_qp')
        self.joint = bool(train_opt.get('joint', False))
        self.supervision = train_opt.get('supervision', 'simulator')
        if self.supervision not in _SUPERVISION:
            raise ValueError(f'train.supervision must be one of {_SUPERVISION}, got {self.supervision!r}')
        if self.ste_rate not in ('find_qp', 'qp'):
            raise ValueError(f"train.ste_rate must be 'find_qp' or 'qp', got {self.ste_rate!r}")
        self.gan_on = train_opt.get('gan_on', 'codec_output')
        if self.gan_on not in _GAN_ON:
            raise ValueError(f'train.gan_on must be one of {_GAN_ON}, got {self.gan_on!r}')
        self.codec_in_loop = bool(train_opt.get('codec_in_loop', True))
        if not self.codec_in_loop and (self.ste or self.joint or self.supervision != 'clean'):
            raise ValueError('codec_in_loop: false is plain fine-tuning: it needs supervision: clean, '
                             'ste: false, joint: false')
        self.net_sim = self._build_simulator() if self.codec_in_loop else None
        super().init_training_settings()

    def _build_simulator(self) -> nn.Module:
        """f_theta from ``network_sim`` + ``path.pretrain_network_sim``; frozen unless ``train.joint``."""
        if not self.opt.get('network_sim'):
            raise ValueError('stage 2 needs network_sim (the stage-1 codec simulator)')
        net = build_network(self.opt['network_sim'])
        path = self.opt['path'].get('pretrain_network_sim')
        if path is not None:
            self.load_network(net, path, True, self.opt['path'].get('param_key_sim', 'params_ema'))
        elif any(True for _ in net.parameters()):
            raise ValueError('path.pretrain_network_sim is required: stage 2 trains through a stage-1 simulator '
                             '(§3.3.3); train one with options/train_simulator.yml')
        if self.joint:
            get_root_logger().warning('train.joint: the simulator is updated together with the SR net '
                                      '(Table 5 ablation; the paper freezes it, §3.3.3)')
            return self.model_to_device(net).train()
        net = net.to(self.device).eval()
        net.requires_grad_(False)
        self._sim_fingerprint = fingerprint(net)
        return net

    def check_simulator_frozen(self) -> None:
        """Raise if a frozen simulator's weights changed (§3.3.3)."""
        net_sim = getattr(self, 'net_sim', None)  # absent outside training (test.py)
        if net_sim is not None and not self.joint and not torch.equal(fingerprint(net_sim), self._sim_fingerprint):
            raise RuntimeError('the frozen codec simulator changed during stage 2')

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        params = list(self.net_g.parameters())
        return params + list(self.net_sim.parameters()) if self.joint else params

    def extra_networks(self) -> Dict[str, nn.Module]:
        nets = super().extra_networks()
        return {**nets, 'sim': self.net_sim} if self.net_sim is not None else nets

    def save(self, epoch: int, current_iter: int) -> None:
        self.check_simulator_frozen()
        super().save(epoch, current_iter)

    # ----------------------------------------------------------------- data and forward
    def feed_data(self, data: Dict[str, torch.Tensor]) -> None:
        """A batch of :class:`RecompressionSRDataset`; one from ``degrade_on: model`` (no ``lq``) is first degraded
        and encoded here, on ``self.device``, as a batch (Eq. 1)."""
        if 'lq' not in data and 'draw_seed' in data:
            data = {**data, **self.degrade_and_encode(data)}
        self.lq = data['lq'].to(self.device)
        self.cond = data['cond'].to(self.device)
        self.codecs = list(data['codec'])
        self.qps = [int(q) for q in data['qp']]
        for key in ('gt', 'cond_target', 'gt_codec', 'lq_codec'):
            setattr(self, key, data[key].to(self.device) if key in data else None)

    def degrade_and_encode(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """X~, X_bar and c of a ``degrade_on: model`` batch, with the training dataset's options."""
        from vrpsr_plugin.data.recompression_sr_dataset import DegradeAndEncode, batch_seed_words
        if getattr(self, '_degrade_and_encode', None) is None:
            self._degrade_and_encode = DegradeAndEncode(self.opt['datasets']['train'], self.device)
        return self._degrade_and_encode(data['gt'].to(self.device), list(data['codec']),
                                        [int(q) for q in data['qp']], batch_seed_words(data['draw_seed']))

    def sr_condition(self) -> Optional[torch.Tensor]:
        """c for g, or None with ``condition_embedding: false`` (Table 5)."""
        return self.cond if (self.opt.get('train') or {}).get('condition_embedding', True) else None

    def sr_forward(self, net: nn.Module) -> torch.Tensor:
        """X' = g(X~, c)."""
        return run_net(net, self.lq, self.sr_condition())

    def through_codec(self, x_prime: torch.Tensor) -> torch.Tensor:
        """X^' = f(X', c), or the STE value X^ + X^' - sg(X^') (Eq. 8); X' itself without the codec in the loop."""
        if self.net_sim is None:
            return x_prime
        x_sim = self.net_sim(x_prime, self.cond)
        if not self.ste:
            return x_sim
        kwargs = self.opt['train'].get('encode_kwargs', {})
        if self.ste_rate == 'find_qp':
            x_real, _ = real_codec(x_prime, self.codecs, bpps=self.cond[:, -1], **kwargs)
        else:
            x_real, _ = real_codec(x_prime, self.codecs, qps=self.qps, **kwargs)
        return x_real + x_sim - x_sim.detach()

    def target(self) -> torch.Tensor:
        """X_s (Eq. 7) by ``train.supervision``."""
        if self.gt is None:
            raise ValueError('training batches need gt')
        if self.supervision == 'clean':
            return self.gt
        if self.supervision == 'real_codec':
            if self.gt_codec is None:
                raise ValueError('supervision real_codec needs gt_codec in the batch (RecompressionSRDataset)')
            return self.gt_codec
        if self.cond_target is None:
            raise ValueError('supervision simulator needs cond_target in the batch (RecompressionSRDataset with '
                             'with_target: true)')
        with torch.no_grad():
            return self.net_sim(self.gt, self.cond_target)

    def forward_train(self) -> Tuple[torch.Tensor, torch.Tensor]:
        self.x_prime = self.sr_forward(self.net_g)
        return self.through_codec(self.x_prime), self.target()

    def extra_loss_terms(self) -> Dict[str, torch.Tensor]:
        """``train.pre_codec_weight`` * MSE(X', X): anchors X' where the simulator is accurate (beyond the paper:
        without it g can learn patterns the simulator undoes and the real codec does not)."""
        weight = float(self.opt['train'].get('pre_codec_weight', 0.0))
        if weight <= 0 or self.net_sim is None:
            return {}
        return {'l_pre_codec': weight * nn.functional.mse_loss(self.x_prime, self.gt)}

    def discriminator_input(self, pred: torch.Tensor) -> torch.Tensor:
        """X^' (``gan_on: codec_output``, Eq. 3) or X' = g(X~, c) before the codec (``gan_on: sr_output``): the
        discriminator then asks for realistic detail in what g sends, not for detail that survives the simulator."""
        return self.x_prime if self.gan_on == 'sr_output' else pred

    # ----------------------------------------------------------------- validation (Eq. 2 with the real codec)
    def after_codec(self, decoded: torch.Tensor) -> torch.Tensor:
        """What the viewer gets from the decoded stream (identity here; post-processing in VRPSRPostModel)."""
        return decoded

    def restore(self) -> torch.Tensor:
        """X' for validation."""
        return self.sr_forward(self.eval_net())

    def nondist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        """Real codec on X' at the source's rate (find_qp): bpp, PSNR, LPIPS of what the viewer sees."""
        self.check_simulator_frozen()
        nets = [n for n in (self.eval_net(), getattr(self, 'net_sr', None)) if n is not None]
        modes = [n.training for n in nets]
        for net in nets:
            net.eval()
        rows = []
        kwargs = (self.opt.get('val') or {}).get('encode_kwargs', {})
        with torch.no_grad():
            for batch in dataloader:
                self.feed_data(batch)
                x_prime = self.restore()
                decoded, rates = real_codec(x_prime, self.codecs, bpps=self.cond[:, -1], **kwargs)
                final = self.after_codec(decoded)
                if save_img:
                    self.save_visuals(dataloader.dataset.opt['name'], current_iter, batch['gt_path'], sr=x_prime,
                                      recompressed=final)
                for i in range(final.shape[0]):
                    target_bpp = stream_bpp(self.codecs[i], float(self.cond[i, -1]),
                                            final.shape[-2] * final.shape[-1])
                    rows.append({**self.score(final[i:i + 1], self.gt[i:i + 1]), 'bpp': rates[i],
                                 'target_bpp': target_bpp})
        for net, mode in zip(nets, modes):
            net.train(mode)
        self.report(dataloader.dataset.opt['name'], rows, current_iter, tb_logger)

    def get_current_visuals(self) -> Dict[str, torch.Tensor]:
        return {'lq': self.lq.detach().cpu(), 'result': self.output.detach().cpu()}

