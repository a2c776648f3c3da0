"""S3Diff's degradation estimator, registered for BasicSR: the frozen net whose blur/noise degrees guide S3Diff's
LoRA (:class:`~vrpsr_plugin.archs.s3diff_arch.DegradationModulation`).

Same layers and state-dict keys as ``DEResNet`` in S3Diff's ``src/de_net.py`` (github.com/ArcticHare105/S3Diff,
Apache-2.0; a ResNet-without-BN quality estimator from the degradation-aware SR line of work), so S3Diff's released
``de_net.pth`` loads strictly with :meth:`DegradationEstimator.from_pretrained`.
"""
from typing import Sequence

import torch
from basicsr.archs.arch_util import ResidualBlockNoBN, default_init_weights
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

_ACTIVATIONS = {'sigmoid': nn.Sigmoid, 'tanh': nn.Tanh}


@ARCH_REGISTRY.register()
class DegradationEstimator(nn.Module):
    """LQ image (B x num_in_ch x H x W in [0, 1], not normalised, at its own size: S3Diff feeds the LQ before
    upsampling) -> B x num_degradation degrees (S3Diff: blur, noise), in (0, 1) with the sigmoid.

    One branch per degradation ``i``: ``conv_first.i`` (3x3 conv to ``num_feats[0]``) -> ``body.i`` (per stage s,
    ``num_blocks[s]`` basicsr ``ResidualBlockNoBN(num_feats[s])``, then a 3x3 conv to the next stage's width,
    stride 2 where ``downscales[s] == 2``, stride 1 where only the width changes) -> global average pool ->
    ``fc_degree.i`` (Linear(num_feats[-1], 512), ReLU, Linear(512, 1), activation). The defaults are S3Diff's
    (``DEResNet(num_in_ch=3, num_degradation=2)``), which the released ``de_net.pth`` fits.
    """

    def __init__(self, num_in_ch: int = 3, num_degradation: int = 2, degradation_degree_actv: str = 'sigmoid',
                 num_feats: Sequence[int] = (64, 64, 64, 128), num_blocks: Sequence[int] = (2, 2, 2, 2),
                 downscales: Sequence[int] = (1, 1, 2, 1)) -> None:
        super().__init__()
        if not len(num_feats) == len(num_blocks) == len(downscales):
            raise ValueError(f'num_feats, num_blocks and downscales need one entry per stage, got {num_feats}, '
                             f'{num_blocks}, {downscales}')
        if any(d not in (1, 2) for d in downscales):
            raise ValueError(f'downscales must be 1 or 2, got {downscales}')
        if degradation_degree_actv not in _ACTIVATIONS:
            raise ValueError(f'degradation_degree_actv must be one of {sorted(_ACTIVATIONS)}, '
                             f'got {degradation_degree_actv!r}')
        branches = range(num_degradation)
        self.conv_first = nn.ModuleList(nn.Conv2d(num_in_ch, num_feats[0], 3, 1, 1) for _ in branches)
        self.body = nn.ModuleList(self._body(num_feats, num_blocks, downscales) for _ in branches)
        self.fc_degree = nn.ModuleList(
            nn.Sequential(nn.Linear(num_feats[-1], 512), nn.ReLU(inplace=True), nn.Linear(512, 1),
                          _ACTIVATIONS[degradation_degree_actv]()) for _ in branches)
        default_init_weights([self.conv_first, self.body, self.fc_degree], 0.1)

    @staticmethod
    def _body(num_feats: Sequence[int], num_blocks: Sequence[int], downscales: Sequence[int]) -> nn.Sequential:
        layers = []
        for stage, (width, blocks, down) in enumerate(zip(num_feats, num_blocks, downscales)):
            layers += [ResidualBlockNoBN(width) for _ in range(blocks)]
            following = num_feats[min(stage + 1, len(num_feats) - 1)]
            if down == 2 or following != width:
                layers.append(nn.Conv2d(width, following, 3, down, 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x num_in_ch x H x W in [0, 1] -> B x num_degradation degrees."""
        return torch.cat([fc(body(conv(x)).mean(dim=(2, 3)))
                          for conv, body, fc in zip(self.conv_first, self.body, self.fc_degree)], dim=1)

    @classmethod
    def from_pretrained(cls, path: str, **options) -> 'DegradationEstimator':
        """Load S3Diff's ``de_net.pth`` (a bare state dict, which S3Diff loads strictly; BasicSR's
        ``params_ema``/``params`` wrappers are accepted too) strictly into ``cls(**options)``; returned in eval
        mode. A missing or non-checkpoint file, or any missing, unexpected or mis-shaped key, raises a
        ``CheckpointError`` naming the file and the keys."""
        from vrpsr_plugin.archs.checkpoint import load_state_dict_strict, read_checkpoint
        model = cls(**options)
        load_state_dict_strict(model, read_checkpoint(path), source=str(path))
        return model.eval()
