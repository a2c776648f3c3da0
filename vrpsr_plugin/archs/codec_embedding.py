"""Sinusoidal embedding of the codec condition (App. B.3, Fig. S1), shared by every conditioned arch."""
import torch
from torch import nn


class CodecEmbedding(nn.Module):
    """Map each scalar of the (B, num_scalars) condition to sinusoidal features, as diffusion timestep
    embeddings do, and concatenate them into t of shape (B, num_scalars * dim_per_scalar).

    ``scale`` stretches the scalars (one-hot 0/1, bpp ~0.01..2) to the range timestep embeddings are made for.
    Parameter-free: the conditioned archs own the MLP heads that read t.
    """

    def __init__(self, num_scalars: int = 4, dim_per_scalar: int = 64, scale: float = 1000.0) -> None:
        super().__init__()
        if dim_per_scalar % 2:
            raise ValueError(f'dim_per_scalar must be even, got {dim_per_scalar}')
        self.num_scalars = num_scalars
        self.dim_per_scalar = dim_per_scalar
        self.scale = scale

    @property
    def out_dim(self) -> int:
        return self.num_scalars * self.dim_per_scalar

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.dim() != 2 or cond.shape[1] != self.num_scalars:
            raise ValueError(f'condition must have shape (B, {self.num_scalars}), got {tuple(cond.shape)}')
        if not torch.isfinite(cond).all():
            raise ValueError('condition contains NaN or inf')
        from diffusers.models.embeddings import get_timestep_embedding  # diffusers imports in seconds: only here
        batch = cond.shape[0]
        emb = get_timestep_embedding(cond.reshape(-1).float(), self.dim_per_scalar, flip_sin_to_cos=True,
                                     downscale_freq_shift=0, scale=self.scale)
        return emb.reshape(batch, self.out_dim).to(cond.dtype if cond.is_floating_point() else torch.float32)
