"""Per-channel axial offset sampling: the token selection of UCIP's prompt-guided token mixer (UCIP Eq. 3).

ActiveMLP / UCIP realise it with torchvision's ``deform_conv2d`` (1x1 kernel, one offset group per channel,
offsets along one axis only). torchvision's C++ ops are unavailable with the CPU torch used here, so the
sampling is written with ``torch.nn.functional.grid_sample``, which runs (and back-propagates into both the
features and the offsets) on CPU and GPU alike. The 1x1 channel weights of the deformable conv are applied by the
caller as a linear layer on the sampled tensor.

Conventions (identical to ``deform_conv2d``): offsets are in pixels; sample positions outside the map read zeros;
bilinear interpolation. ``align_corners=False`` is used with the pixel-centre mapping ``g = (2 p + 1) / S - 1``,
so a pixel index ``p`` lands exactly on pixel ``p`` for every size ``S`` (also ``S = 1``, where
``align_corners=True`` would divide by zero).
"""
import torch
import torch.nn.functional as F

AXES = ('horizontal', 'vertical')


def _normalise(pos: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel index -> grid_sample coordinate in [-1, 1] (align_corners=False, pixel centres)."""
    return (2.0 * pos + 1.0) / size - 1.0


def axial_offset_sample(x: torch.Tensor, offset: torch.Tensor, axis: str) -> torch.Tensor:
    """Sample every channel of ``x`` at its own offset along one axis.

    out[b, c, i, j] = x[b, c, i, j + offset[b, c, i, j]]   (axis='horizontal', along the width)
    out[b, c, i, j] = x[b, c, i + offset[b, c, i, j], j]   (axis='vertical', along the height)

    with linear interpolation between the two neighbouring pixels and zeros outside the map.
    ``x`` and ``offset`` are ``B x C x H x W`` (same shape, floating point, same device).
    """
    if axis not in AXES:
        raise ValueError(f'axis must be one of {AXES}, got {axis!r}')
    if x.dim() != 4:
        raise ValueError(f'x must be B x C x H x W, got shape {tuple(x.shape)}')
    if offset.shape != x.shape:
        raise ValueError(f'offset must have the shape of x {tuple(x.shape)}, got {tuple(offset.shape)}')
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=offset.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=offset.dtype).view(1, 1, 1, w)
    if axis == 'horizontal':
        gx, gy = _normalise(cols + offset, w), _normalise(rows, h).expand_as(offset)
    else:
        gx, gy = _normalise(cols, w).expand_as(offset), _normalise(rows + offset, h)
    grid = torch.stack((gx, gy), dim=-1).reshape(b * c, h, w, 2).to(x.dtype)
    out = F.grid_sample(x.reshape(b * c, 1, h, w), grid, mode='bilinear', padding_mode='zeros',
                        align_corners=False)
    return out.view(b, c, h, w)
