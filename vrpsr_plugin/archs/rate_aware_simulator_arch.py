"""A codec simulator that charges for bits: rate model + QP solve + QP-conditioned distortion (beyond the paper).

    q*  = solve R(X', q) = bpp(c)      (Eq. 2 through the differentiable rate model, :mod:`.rate_model`)
    X^' = D(X', codec, q*)             (``distortion: cnn``: a residual CNN conditioned on the codec and the QP;
                                        ``distortion: dct``: the transform-quantisation proxy of
                                        :mod:`.quantization_proxy`, which stage 2 cannot exploit)

The paper's simulators (Eq. 4-5) take the bpp as a condition and must guess, from a patch, which QP the real codec
will use for the whole picture; measured, such a simulator charged about half the real price for costly content
(docs/simulators.md). Here the whole-picture rate decides the QP, and the gradient reaches X' through both
paths: what D does at a QP, and how X' moves the QP (dq*/dX' from the rate model). Stage 1 fits R on real encodes
(:mod:`vrpsr_plugin.models.rate_fit`) and trains D with the real QP of each sample
(:class:`~vrpsr_plugin.models.codec_simulator_model.CodecSimulatorModel`, ``forward(x, cond, qp=...)``); the DCT
proxy is fitted in closed form on the same encodes (:mod:`vrpsr_plugin.models.quantization_fit`) and has nothing
left to train (stage 1 with ``train.total_iter: 0``).
"""
import math
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vrpsr_plugin.archs.baseline_simulators_arch import CNNCodecSimulator
from vrpsr_plugin.archs.condition_heads import check_condition
from vrpsr_plugin.archs.quantization_proxy import DCTQuantizationProxy
from vrpsr_plugin.archs.rate_model import DCTRateModel, solve_qp
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

QP_NORM = 64.0  # QPs enter D's condition as q / 64, in [0, 1] like the one-hot entries
DISTORTIONS = ('cnn', 'dct')


@ARCH_REGISTRY.register()
class RateAwareCodecSimulator(nn.Module):
    """f(X', c) = D(X', codec, q*(X', bpp)); ``forward(x, cond)`` as every simulator; ``forward(x, cond, qp=q)``
    skips the solve and runs D at known QPs (stage 1 trains D so, with each sample's real QP).

    ``bpp_range`` (set by the rate fit) is the range of rates it was fitted on; a condition outside it warns.
    """
    codec_aware = True

    def __init__(self, codecs: Sequence[str] = CONDITION_CODECS, num_feat: int = 32, num_block: int = 5,
                 cond_hidden: int = 64, qp_range: Tuple[float, float] = (12.0, 51.0),
                 distortion: str = 'cnn') -> None:
        super().__init__()
        if distortion not in DISTORTIONS:
            raise ValueError(f'distortion must be one of {DISTORTIONS}, got {distortion!r}')
        self.arch_options = {'codecs': list(codecs), 'num_feat': num_feat, 'num_block': num_block,
                             'cond_hidden': cond_hidden, 'qp_range': [float(q) for q in qp_range],
                             'distortion': distortion}
        self.codecs = tuple(codecs)
        self.rate_model = DCTRateModel(self.codecs, qp_range)
        self.distortion = (DCTQuantizationProxy(self.codecs) if distortion == 'dct' else
                           CNNCodecSimulator(self.codecs, num_feat, num_block, cond_hidden, grid_period=16))
        self.register_buffer('bpp_range', torch.tensor([0.0, math.inf]))

    @property
    def arch_spec(self) -> Dict[str, Any]:
        """``{'type': 'RateAwareCodecSimulator', **options}``, stored with checkpoints (``inference.load_model``)."""
        return {'type': type(self).__name__, **self.arch_options}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, refusing by name a checkpoint without a fitted rate model."""
        missing = [k for k in ('bpp_range', 'rate_model.log_weight') if k not in state_dict]
        if missing:
            raise KeyError(f'not a RateAwareCodecSimulator checkpoint with its rate model: {missing} missing '
                           '(train stage 1 with options/train_rate_simulator.yml, which fits the rate model)')
        if not torch.isfinite(state_dict['bpp_range']).all():
            raise ValueError('the checkpoint\'s rate model was never fitted (bpp_range is unset)')
        if isinstance(self.distortion, DCTQuantizationProxy):
            if 'distortion.fitted' not in state_dict:
                raise KeyError('the checkpoint has no quantisation proxy: it was made with distortion: cnn, and this '
                               'simulator has distortion: dct')
            if not float(state_dict['distortion.fitted']):
                raise ValueError('the checkpoint\'s quantisation proxy was never fitted (distortion.fitted is unset)')
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def at_qp(self, x: torch.Tensor, onehot: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        """D(X, codec, q): the decoded picture at a known (possibly fractional) QP."""
        if isinstance(self.distortion, DCTQuantizationProxy):
            return self.distortion(x, onehot, qp)
        return self.distortion(x, torch.cat([onehot, qp.to(onehot)[:, None] / QP_NORM], dim=1))

    def solve_qp(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """q* with R(X, q*) = the stream rate of ``cond``: its bpp plus the rate model's per-picture header over
        X's pixels (the condition leaves the header out, :mod:`vrpsr_plugin.codecs.condition`; differentiable in
        X)."""
        lo, hi = (float(v) for v in self.bpp_range)
        bpp = cond[:, -1]
        if bool(((bpp < lo) | (bpp > hi)).any()):
            warnings.warn(f'condition bpp {[round(float(b), 4) for b in bpp]} is outside the range the simulator '
                          f'was fitted on ({lo:.4g}..{hi:.4g} bpp); its output there is an extrapolation',
                          RuntimeWarning, stacklevel=3)
        stream = bpp + self.rate_model.header_bits(cond[:, :-1]).to(bpp) / (x.shape[-2] * x.shape[-1])
        return solve_qp(self.rate_model, x, cond[:, :-1], stream)[0]

    def forward(self, x: torch.Tensor, cond: torch.Tensor, qp: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_condition(cond, x, len(self.codecs) + 1)
        return self.at_qp(x, cond[:, :-1], self.solve_qp(x, cond) if qp is None else qp)
