"""Training data: the Lightning data module over featurised samples with standardised targets."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mofbalora.backbones.base import GraphBackbone
from mofbalora.backbones.batching import Collate, GraphDataset


class BandgapDataModule(L.LightningDataModule):
    """Train/val loaders. The shuffle depends only on (seed, epoch), so a resumed run sees the
    same order as an uninterrupted one, on one process or many (each rank gets its shard)."""

    def __init__(self, *, train: GraphDataset, val: GraphDataset, backbone: GraphBackbone, batch_size: int,
                 seed: int, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.collate = Collate(backbone)
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers

    def _sampler(self, dataset: Dataset, shuffle: bool) -> DistributedSampler:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed,
                                  drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self._sampler(self.train_set, True),
                          collate_fn=self.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=self._sampler(self.val_set, False),
                          collate_fn=self.collate, num_workers=self.num_workers)
