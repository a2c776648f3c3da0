"""Fresh training draws every epoch, reproducible from (seed, epoch, index).

BasicSR's ``EnlargedSampler`` shuffles with the epoch as seed but hands the dataset ``index % len(dataset)``, so
a dataset that seeds its draws by index alone gives every image the same crop, flip, codec, QP and degradation in
every epoch (and ``dataset_enlarge_ratio`` only repeats them). :class:`FreshDrawSampler` forwards the epoch to
datasets that define ``set_epoch`` and hands them the raw index in ``[0, len * ratio)``; such a dataset maps it to
an image by modulo and seeds its draws with :meth:`FreshDrawMixin.draw_seed` = ``(seed, epoch, index)``. A run, a
worker or a resumed run therefore draws exactly the same samples at the same iteration, and new ones every epoch.
Validation/test datasets are never given an epoch: their draws stay fixed (epoch 0).
"""
from typing import Iterator, List

from basicsr.data.data_sampler import EnlargedSampler


class FreshDrawMixin:
    """``set_epoch`` and the seed words of one draw; the dataset sets ``self.seed``."""

    epoch: int = 0
    seed: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw_seed(self, index: int) -> List[int]:
        """Seed words of sample ``index`` in the current epoch."""
        return [int(self.seed), int(self.epoch), int(index)]


class FreshDrawSampler(EnlargedSampler):
    """``EnlargedSampler`` that forwards the epoch to the dataset and, for datasets with ``set_epoch``, yields
    raw indices (the dataset takes the modulo), so that each of the ``ratio`` passes of an epoch draws afresh."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if not hasattr(self.dataset, 'set_epoch'):
            return super().__iter__()
        import torch
        generator = torch.Generator()
        generator.manual_seed(self.epoch)
        indices = torch.randperm(self.total_size, generator=generator).tolist()
        return iter(indices[self.rank:self.total_size:self.num_replicas])
