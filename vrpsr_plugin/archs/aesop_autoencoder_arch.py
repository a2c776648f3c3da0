"""AESOP's auto-encoder psi_AE (seed 004, Fig. 2a): pretrained on ground-truth images with a pixel loss, then
frozen; ``AESOPLoss`` measures || psi_AE(I_HR) - psi_AE(I_SR) ||_p in the space after its decoder.

The seed does not give the AE's layers; this is a small conv encoder-decoder whose bottleneck is what makes it
useful: the encoder downsamples by 2**num_down (default 4, the usual SR scale) to ``latent_ch`` channels (default 3,
an LR-image-sized code), so psi_AE(I) keeps the content an L_pix-trained reconstruction can carry (the fidelity
bias) and drops the high-frequency perceptual variance that L_pix would otherwise penalise.

Images are B x 3 x H x W in [0, 1]; the output has the input's size (inputs are replicate-padded to a multiple of
2**num_down and the output is cropped back). The output is not clamped, so gradients are never cut.
"""
import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import ResidualBlockNoBN, make_layer
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn


@ARCH_REGISTRY.register()
class AESOPAutoEncoder(nn.Module):
    """Conv auto-encoder: conv -> [stride-2 conv + LeakyReLU] x num_down -> residual blocks -> latent conv;
    latent -> conv -> residual blocks -> [nearest x2 + conv + LeakyReLU] x num_down -> conv.

    Args:
        num_in_ch: image channels (in and out). num_feat: width. num_down: number of x2 downsamplings.
        num_block: residual blocks (basicsr's ResidualBlockNoBN) on each side. latent_ch: bottleneck channels.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_down: int = 2, num_block: int = 2,
                 latent_ch: int = 3) -> None:
        super().__init__()
        for name, value in (('num_in_ch', num_in_ch), ('num_feat', num_feat), ('num_down', num_down),
                            ('latent_ch', latent_ch)):
            if int(value) < 1:
                raise ValueError(f'{name} must be >= 1, got {value}')
        if num_block < 0:
            raise ValueError(f'num_block must be >= 0, got {num_block}')
        self.factor = 2 ** num_down
        lrelu = nn.LeakyReLU(0.2, inplace=True)
        down = [nn.Conv2d(num_in_ch, num_feat, 3, padding=1), lrelu]
        for _ in range(num_down):
            down += [nn.Conv2d(num_feat, num_feat, 4, stride=2, padding=1), lrelu]
        self.encoder = nn.Sequential(*down, make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat),
                                     nn.Conv2d(num_feat, latent_ch, 3, padding=1))
        self.decoder_in = nn.Sequential(nn.Conv2d(latent_ch, num_feat, 3, padding=1), lrelu,
                                        make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat))
        self.decoder_up = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, padding=1) for _ in range(num_down))
        self.conv_last = nn.Conv2d(num_feat, num_in_ch, 3, padding=1)
        self.lrelu = lrelu

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W (H, W multiples of 2**num_down) -> latent B x latent_ch x H/f x W/f."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image B x C x (f h) x (f w)."""
        feat = self.decoder_in(z)
        for conv in self.decoder_up:
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2, mode='nearest')))
        return self.conv_last(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """psi_AE(x) = decode(encode(x)), same size as x (AESOP's 'AE space' is after the decoder)."""
        if x.dim() != 4:
            raise ValueError(f'AESOPAutoEncoder expects B x C x H x W, got shape {tuple(x.shape)}')
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.factor, -w % self.factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        return self.decode(self.encode(x))[..., :h, :w]
