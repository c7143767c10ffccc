"""Training data: featurised samples with standardised targets, batched by the backbone's collate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mofbalora.backbones.base import GraphBackbone


@dataclass(frozen=True)
class TargetNormaliser:
    """Band gap standardisation fitted on the training split only (eV)."""

    mean_ev: float
    std_ev: float

    @classmethod
    def fit(cls, gaps_ev: np.ndarray) -> "TargetNormaliser":
        gaps_ev = np.asarray(gaps_ev, dtype=float)
        if len(gaps_ev) < 2 or not np.isfinite(gaps_ev).all():
            raise ValueError("need at least two finite training targets")
        return cls(float(gaps_ev.mean()), float(max(gaps_ev.std(), 1e-6)))

    def to_standard(self, gaps_ev: torch.Tensor | np.ndarray) -> Any:
        return (gaps_ev - self.mean_ev) / self.std_ev

    def to_ev(self, standard: torch.Tensor | np.ndarray) -> Any:
        return standard * self.std_ev + self.mean_ev


class GraphDataset(Dataset):
    """(index, sample, standardised target, frozen embedding or None) per structure."""

    def __init__(self, samples: Sequence[Any], targets: np.ndarray | None = None,
                 frozen_embeddings: torch.Tensor | None = None) -> None:
        self.samples = list(samples)
        self.targets = None if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        self.frozen_embeddings = frozen_embeddings

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, Any, torch.Tensor | None, torch.Tensor | None]:
        target = None if self.targets is None else self.targets[index]
        z = None if self.frozen_embeddings is None else self.frozen_embeddings[index]
        return index, self.samples[index], target, z


class Collate:
    """Batch with the backbone's collate; attach the targets, indices and cached z(x)."""

    def __init__(self, backbone: GraphBackbone) -> None:
        self.collate = backbone.collate

    def __call__(self, items: list[tuple[int, Any, torch.Tensor | None, torch.Tensor | None]]) -> tuple[Any, torch.Tensor | None, torch.Tensor]:
        indices, samples, targets, embeddings = zip(*items)
        batch = self.collate(samples)
        if embeddings[0] is not None:
            batch.frozen_embedding = torch.stack(embeddings)
        target = None if targets[0] is None else torch.stack(targets)
        index = torch.tensor(indices)
        batch.noise_keys = index  # per-structure noise streams in sample mode (batching-independent)
        return batch, target, index


@torch.no_grad()
def compute_frozen_embeddings(backbone: GraphBackbone, samples: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
    """z(x) for every sample with the bare (adapter-free) backbone, once per structure [n, dim]."""
    from mofbalora.adapters.model import adapters_disabled

    chunks = []
    backbone.eval()
    with adapters_disabled(backbone):
        for start in range(0, len(samples), batch_size):
            chunks.append(backbone.embed(backbone.collate(samples[start : start + batch_size])))
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.embedding_dim)


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
