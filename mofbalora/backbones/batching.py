"""Datasets of featurised samples and the collate that batches them for any backbone.

Shared by training and prediction. Each batch carries per-structure ``noise_keys`` taken from the
samples' content keys (``data.structures.structure_content_key``), so BaLoRA's weight draws depend
on the structure and the seed, never on the position of a structure in a list (docs/method.md §6).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mofbalora.backbones.base import GraphBackbone

__all__ = ["Collate", "GraphDataset", "compute_frozen_embeddings", "sample_content_key"]


def sample_content_key(sample: Any) -> int:
    """The content key a featuriser attached to ``sample``.

    Raises:
        ValueError: when the sample has none (it was built by another featuriser version).
    """
    key = getattr(sample, "content_key", None)
    if key is None:
        raise ValueError("sample has no content_key; rebuild it with this version's featuriser")
    return int(key)


class GraphDataset(Dataset):
    """(index, sample, standardised target or None, frozen embedding or None) per structure."""

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
    """Batch with the backbone's collate; attach targets, indices, content noise keys and cached z(x)."""

    def __init__(self, backbone: GraphBackbone) -> None:
        self.collate = backbone.collate

    def __call__(self, items: list[tuple[int, Any, torch.Tensor | None, torch.Tensor | None]]
                 ) -> tuple[Any, torch.Tensor | None, torch.Tensor]:
        indices, samples, targets, embeddings = zip(*items)
        batch = self.collate(samples)
        if embeddings[0] is not None:
            batch.frozen_embedding = torch.stack(embeddings)
        target = None if targets[0] is None else torch.stack(targets)
        index = torch.tensor(indices)
        # Per-structure noise streams in sample mode: keyed by content, not by position.
        batch.noise_keys = torch.tensor([sample_content_key(s) for s in samples], dtype=torch.long)
        return batch, target, index


@torch.no_grad()
def compute_frozen_embeddings(backbone: GraphBackbone, samples: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
    """Crystal embeddings of the bare pretrained ``backbone`` (no adapters), [n, embedding_dim]."""
    chunks = []
    backbone.eval()
    for start in range(0, len(samples), batch_size):
        chunks.append(backbone.embed(backbone.collate(samples[start : start + batch_size])))
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.embedding_dim)
