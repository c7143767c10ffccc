"""CGCNN with its convolutions run once: samples are frozen crystal embeddings, only the head trains.

The simulated DFT campaign (``pipelines.active_learning``) fits hundreds of small models. With the
adapters on the head alone, everything before the crystal embedding is frozen, so it runs once per
structure (:func:`trunk_samples`) and an epoch runs only the head: LoRA, BaLoRA and MC dropout
train and sample through the product's own code (``mofbalora.adapters``, ``training.fit``) with this
backbone registered as :data:`NAME`. ``forward`` equals ``CGCNNBackbone.forward`` on the same
structure (tests/pipelines/test_active_learning.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mofbalora.backbones import register_backbone
from mofbalora.backbones.base import GraphBackbone
from mofbalora.backbones.batching import compute_frozen_embeddings, sample_content_key
from mofbalora.backbones.cgcnn import CGCNNBackbone

NAME = "cgcnn-cached-trunk"


class TrunkSample:
    """One structure: its frozen CGCNN crystal embedding [64] and its content key."""

    def __init__(self, crystal: torch.Tensor, content_key: int) -> None:
        self.crystal = crystal
        self.content_key = content_key


class TrunkBatch:
    """Crystal embeddings of a batch [G, 64]; collate and the adapters attach attributes to it."""

    def __init__(self, crystal: torch.Tensor) -> None:
        self.crystal = crystal


class CachedTrunkBackbone(GraphBackbone):
    """The pretrained CGCNN band-gap head over cached crystal embeddings (the only adaptable part)."""

    name = NAME
    module_entities = {r"^head\.": "crystal"}

    def __init__(self, *, checkpoint: str = "band-gap") -> None:
        super().__init__()
        full = CGCNNBackbone(checkpoint=checkpoint)
        self.head = full.head
        self.upstream_mean_ev, self.upstream_std_ev = full.upstream_mean_ev, full.upstream_std_ev
        self._version = f"{full.version}/cached-trunk"
        self._embedding_dim = full.embedding_dim
        self.eval()

    @property
    def version(self) -> str:
        return self._version

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def make_featuriser(self) -> Any:
        raise NotImplementedError(f"{NAME} reads cached embeddings; build its samples with trunk_samples()")

    def collate(self, samples: Sequence[TrunkSample]) -> TrunkBatch:
        return TrunkBatch(torch.stack([s.crystal for s in samples]))

    def num_graphs(self, batch: TrunkBatch) -> int:
        return int(batch.crystal.shape[0])

    def graph_index(self, batch: TrunkBatch) -> dict[str, torch.Tensor]:
        return {"crystal": torch.arange(self.num_graphs(batch))}

    def repeat_batch(self, batch: TrunkBatch, copies: int) -> TrunkBatch:
        return TrunkBatch(batch.crystal.repeat(copies, 1))

    def embed(self, batch: TrunkBatch) -> torch.Tensor:
        return batch.crystal


register_backbone(NAME, lambda **kwargs: CachedTrunkBackbone(**kwargs))


def trunk_samples(cgcnn_samples: Sequence[Any]) -> list[TrunkSample]:
    """Run the pretrained CGCNN trunk once over featurised CGCNN samples; keep each content key."""
    embeddings = compute_frozen_embeddings(CGCNNBackbone(), list(cgcnn_samples))
    return [TrunkSample(z, sample_content_key(s)) for z, s in zip(embeddings, cgcnn_samples)]
