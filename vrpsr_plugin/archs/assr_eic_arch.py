"""ASSR-EIC decoder (seed 002): one arbitrary-scale SR network for every (codec, rate, s).

    x (codec-decoded, down-scaled by s) -> features E(x) -> LIIF coordinate decoding at any output size
    out = bicubic(x) + fid + dial * g * (gen - fid)

* Codec-aware feature extractor: residual conv blocks at the low resolution.
* Global compression-rescaling adaptor: the condition c = [one-hot(codec), rate, s] (:func:`assr_condition`) is
  embedded as in App. B.3 of the VRPSR seed
  (:class:`~vrpsr_plugin.archs.condition_heads.ConditionHeads`) and added to every block, every hidden layer of the
  coordinate MLP and the gate; all heads start at zero.
* Implicit up-sampler: LIIF (Chen et al. 2021) with local ensemble and cell size; it predicts a residual over bicubic
  up-sampling, so the zero-initialised net starts as bicubic.
* Local compression-rescaling modulator: a per-pixel gate g in [0, 1] between a fidelity head (trained with L1) and
  a generative head (trained through the gated output with the GAN loss); ``dial`` in [0, 1] scales g (0: fidelity
  only, 1: the learned balance).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from vrpsr_plugin.archs.condition_heads import ConditionHeads, check_condition
from vrpsr_plugin.codecs.condition import CONDITION_CODECS

QUERY_CHUNK = 65536  # output pixels decoded at once outside training (bounds the MLP's memory)


def assr_condition(codec: str, qp: int, scale: float, codecs: Sequence[str] = CONDITION_CODECS) -> torch.Tensor:
    """The (1, len(codecs) + 2) condition [one-hot(codec), qp / qp_max, log2(s) / 3] of one picture.

    The rate enters as the codec's QP (normalised by its range), not as bpp: a training crop of 32x32 pixels spends
    most of its bits on parameter sets, so its bpp says little about the per-pixel degradation the QP sets. The
    file's bpp follows from (s, QP) and the picture.
    """
    from vrpsr_plugin.codecs.condition import CodecCondition
    from vrpsr_plugin.codecs.encoders import qp_range
    if not 1.0 <= float(scale) <= 64.0:
        raise ValueError(f'scale s must lie in [1, 64], got {scale!r}')
    lo, hi = qp_range(codec)
    if not lo <= int(qp) <= hi:
        raise ValueError(f'qp={qp} is outside {codec}\'s range [{lo}, {hi}]')
    onehot = CodecCondition(codec, 0.0).vector(codecs)[:-1]
    return torch.cat([onehot, torch.tensor([int(qp) / hi, math.log2(float(scale)) / 3.0])])[None]


def _grid_coords(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H*W, 2) pixel-centre coordinates (y, x) in [-1, 1]."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) * 2 + 1) / width - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).reshape(-1, 2)


class _ResBlock(nn.Sequential):
    def __init__(self, num_feat: int) -> None:
        super().__init__(nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
                         nn.Conv2d(num_feat, num_feat, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


@ARCH_REGISTRY.register()
class ASSREICNet(nn.Module):
    """Rate- and scale-adaptive arbitrary-scale decoder of ASSR-EIC; ``forward(x, cond, out_size, dial)``."""

    codec_aware = True

    def __init__(self, num_feat: int = 32, num_block: int = 4, mlp_hidden: int = 64,
                 codecs: Sequence[str] = CONDITION_CODECS, emb_dim_per_scalar: int = 32, head_hidden: int = 64) -> None:
        super().__init__()
        self.arch_options = dict(num_feat=num_feat, num_block=num_block, mlp_hidden=mlp_hidden, codecs=list(codecs),
                                 emb_dim_per_scalar=emb_dim_per_scalar, head_hidden=head_hidden)
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.ModuleList(_ResBlock(num_feat) for _ in range(num_block))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        # LIIF query: [feature, relative coord (2), cell (2)] -> hidden -> hidden
        self.fc1 = nn.Linear(num_feat + 4, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, mlp_hidden)
        self.fid_head = nn.Linear(mlp_hidden, 3)
        self.gen_head = nn.Sequential(nn.Linear(mlp_hidden, mlp_hidden), nn.LeakyReLU(0.1, inplace=True),
                                      nn.Linear(mlp_hidden, 3))
        self.gate_head = nn.Linear(mlp_hidden, 1)
        for layer in (self.fid_head, self.gen_head[2], self.gate_head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # global adaptor: one head per block, per hidden MLP layer, and one for the gate logit
        self.cond_heads = ConditionHeads([num_feat] * num_block + [mlp_hidden, mlp_hidden, 1], codecs,
                                         emb_dim_per_scalar, head_hidden, extra_scalars=1)

    @property
    def codecs(self) -> Tuple[str, ...]:
        return self.cond_heads.codecs

    def features(self, x: torch.Tensor, biases: Sequence[torch.Tensor]) -> torch.Tensor:
        feat = self.conv_first(x)
        trunk = feat
        for block, bias in zip(self.body, biases):
            trunk = block(trunk) + bias
        return feat + self.conv_body(trunk)

    def _query(self, feat: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor,
               mlp_biases: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LIIF local ensemble at ``coords`` (B, Q, 2): fidelity residual, generative residual, gate logit."""
        b, num_feat, h, w = feat.shape
        # fc1 is linear, so its feature part is applied once per LR pixel, not once per query and corner
        proj = F.conv2d(feat, self.fc1.weight[:, :num_feat, None, None])
        w_rest = self.fc1.weight[:, num_feat:]
        ry, rx = 1.0 / h, 1.0 / w  # half an LR pixel in [-1, 1] units
        grid_lr = _grid_coords(h, w, feat.device).reshape(1, h, w, 2).permute(0, 3, 1, 2).expand(b, 2, h, w)
        outs, areas = [], []
        for vy in (-1, 1):
            for vx in (-1, 1):
                shifted = coords.clone()
                shifted[..., 0] = (shifted[..., 0] + vy * ry + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6)
                shifted[..., 1] = (shifted[..., 1] + vx * rx + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6)
                sample = shifted.flip(-1)[:, :, None]  # grid_sample wants (x, y)
                q_feat = F.grid_sample(proj, sample, mode='nearest', align_corners=False)[..., 0].transpose(1, 2)
                q_coord = F.grid_sample(grid_lr, sample, mode='nearest', align_corners=False)[..., 0].transpose(1, 2)
                rel = (coords - q_coord) * coords.new_tensor([h, w])
                areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
                hidden = F.leaky_relu(q_feat + F.linear(torch.cat([rel, cell], dim=-1), w_rest, self.fc1.bias)
                                      + mlp_biases[0], 0.1)
                hidden = F.leaky_relu(self.fc2(hidden) + mlp_biases[1], 0.1)
                outs.append(torch.cat([self.fid_head(hidden), self.gen_head(hidden),
                                       self.gate_head(hidden) + mlp_biases[2]], dim=-1))
        total = sum(areas)
        # LIIF: each corner's prediction is weighted by the area of the diagonally opposite rectangle
        mixed = sum(out * (areas[3 - i] / total)[..., None] for i, out in enumerate(outs))
        return mixed[..., :3], mixed[..., 3:6], mixed[..., 6:]

    def forward_queries(self, x: torch.Tensor, cond: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor,
                        dial: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RGB at ``coords`` (B, Q, 2; (y, x) in [-1, 1]) for output cells ``cell`` (B, 2; pixel size in [-1, 1]
        units): (output, gate, fidelity-only output), each (B, Q, C)."""
        cond = check_condition(cond, x, self.cond_heads.embedding.num_scalars)
        if not 0.0 <= float(dial) <= 1.0:
            raise ValueError(f'dial must lie in [0, 1], got {dial!r}')
        h, w = x.shape[-2:]
        biases = self.cond_heads(cond, x)
        feat = self.features(x, biases[:len(self.body)])
        mlp_biases = [bias[:, None, :, 0, 0] for bias in biases[len(self.body):]]  # (B, 1, C)
        cell = (cell * cell.new_tensor([h, w]))[:, None].expand(-1, coords.shape[1], 2)
        chunk = coords.shape[1] if self.training else QUERY_CHUNK
        parts = [self._query(feat, coords[:, i:i + chunk], cell[:, i:i + chunk], mlp_biases)
                 for i in range(0, coords.shape[1], chunk)]
        fid, gen, gate_logit = (torch.cat([p[k] for p in parts], dim=1) for k in range(3))
        gate = torch.sigmoid(gate_logit)
        base = F.grid_sample(x, coords.flip(-1)[:, :, None], mode='bicubic', padding_mode='border',
                             align_corners=False)[..., 0].transpose(1, 2)
        return base + fid + float(dial) * gate * (gen - fid), gate, base + fid

    def forward(self, x: torch.Tensor, cond: torch.Tensor, out_size: Optional[Tuple[int, int]] = None,
                dial: float = 1.0) -> torch.Tensor:
        """Restore ``x`` (B, 3, h, w) in [0, 1] to ``out_size`` (default: (h, w) times the s in ``cond``)."""
        b, _, h, w = x.shape
        if out_size is None:
            scale = 2.0 ** (3.0 * float(cond[0, -1]))
            out_size = (round(h * scale), round(w * scale))
        height, width = int(out_size[0]), int(out_size[1])
        if height < h or width < w:
            raise ValueError(f'out_size {out_size} is smaller than the input ({h}, {w}); ASSR-EIC only up-scales')
        coords = _grid_coords(height, width, x.device).expand(b, -1, -1)
        cell = x.new_tensor([2.0 / height, 2.0 / width]).expand(b, 2)
        out = self.forward_queries(x, cond, coords, cell, dial)[0]
        return out.transpose(1, 2).reshape(b, 3, height, width)
