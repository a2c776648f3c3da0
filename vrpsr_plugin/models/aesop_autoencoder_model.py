"""Pretraining of AESOP's auto-encoder psi_AE (seed 004, Fig. 2a) through basicsr's train pipeline.

The AE reconstructs the ground-truth image itself under a pixel loss (L1/L2, ``train.pixel_opt``); its frozen
output space then defines ``AESOPLoss``. Data: any basicsr dataset that yields clean images, e.g.
``PairedImageDataset`` with ``dataroot_gt`` = ``dataroot_lq`` and ``scale: 1`` (random crops + flips of the GT
photos), or ``SingleImageDataset`` for validation. Everything else (EMA, optimiser, schedulers, checkpoints,
validation metrics, resume) is basicsr's ``SRModel``.
"""
from typing import Any, Dict

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class AESOPAutoEncoderModel(SRModel):
    """``SRModel`` whose input and target are the same clean image: ``output = net_g(gt)``,
    loss = ``pixel_opt(output, gt)``. Device-agnostic (basicsr's ``self.device``: ``num_gpu: 0`` is the CPU)."""

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        if not train_opt.get('pixel_opt'):
            raise ValueError('AESOPAutoEncoderModel needs train.pixel_opt (e.g. {type: L1Loss}): AESOP pretrains its '
                             'auto-encoder with a pixel loss')
        if train_opt.get('perceptual_opt'):
            raise ValueError('AESOPAutoEncoderModel trains with the pixel loss only (seed 004, Fig. 2a); remove '
                             'train.perceptual_opt')
        super().init_training_settings()

    def feed_data(self, data: Dict[str, Any]) -> None:
        """The clean image (``gt``, or ``lq`` for datasets that only read one folder) is input and target."""
        key = 'gt' if 'gt' in data else 'lq'
        if key not in data:
            raise KeyError(f'AESOPAutoEncoderModel needs a "gt" or "lq" image in the batch, got keys {list(data)}')
        self.gt = data[key].to(self.device)
        self.lq = self.gt
