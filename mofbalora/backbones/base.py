"""The interface every pretrained graph backbone implements, so adapters and training stay generic."""

from __future__ import annotations

import re
from abc import abstractmethod
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mofbalora.featurise.base import Featuriser


def mean_pool(values: torch.Tensor, index: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Mean of ``values`` [n_rows, dim] per graph ``index`` [n_rows] -> [num_graphs, dim]."""
    total = values.new_zeros(num_graphs, values.shape[1]).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=num_graphs).clamp_min(1).to(values.dtype)
    return total / counts.unsqueeze(1)


def pairwise_terms(weight: torch.Tensor, bias: torch.Tensor | None, node: torch.Tensor, nbr_idx: torch.Tensor,
                   edge: torch.Tensor, *, copies: int = 1) -> torch.Tensor:
    """``F.linear(cat[node_i, node_j, edge_ij], weight, bias)`` for every (atom i, neighbour slot) row.

    Shapes: node [N, F], nbr_idx [N, M] (j of each slot), edge [N / copies, M, E], weight
    [k, 2F + E] -> [N, M, k]. The weight is split by columns, so each atom is projected once rather
    than once per neighbour slot. With ``copies`` > 1 the atoms are that many tiles of the same
    N / copies atoms (BaLoRA's sample mode) with the same edges, whose projection is shared.
    """
    n_rows, n_slots = nbr_idx.shape
    width = node.shape[1]
    self_term = F.linear(node, weight[:, :width], bias)
    nbr_term = F.linear(node, weight[:, width:2 * width])
    edge_term = F.linear(edge, weight[:, 2 * width:])
    out = nbr_term.index_select(0, nbr_idx.reshape(-1)).view(n_rows, n_slots, -1)
    out.add_(self_term.unsqueeze(1))
    out.view(copies, n_rows // copies, n_slots, -1).add_(edge_term)
    return out


def pairwise_concat(node: torch.Tensor, nbr_idx: torch.Tensor, edge: torch.Tensor, *, copies: int = 1) -> torch.Tensor:
    """The rows cat[node_i, node_j, edge_ij], [N, M, 2F + E], that :func:`pairwise_terms` avoids building."""
    n_rows, n_slots = nbr_idx.shape
    tiled_edge = edge.unsqueeze(0).expand(copies, *edge.shape).reshape(n_rows, n_slots, -1)
    return torch.cat([node.unsqueeze(1).expand(n_rows, n_slots, -1), node[nbr_idx], tiled_edge], dim=2)


def pairwise_linear(layer: nn.Module, node: torch.Tensor, nbr_idx: torch.Tensor, edge: torch.Tensor, *,
                    copies: int = 1) -> torch.Tensor:
    """``layer`` applied to every row cat[node_i, node_j, edge_ij] (shapes as in :func:`pairwise_terms`).

    A layer with its own ``forward_pairwise`` (the adapters) is asked to do it; any other layer
    gets the built rows: for one dense matmul that is as fast on CPU as the split weight.
    """
    if hasattr(layer, "forward_pairwise"):
        return layer.forward_pairwise(node, nbr_idx, edge, copies=copies)
    return layer(pairwise_concat(node, nbr_idx, edge, copies=copies))


class GraphBackbone(nn.Module):
    """A pretrained crystal graph model with a band-gap head.

    Subclasses set ``name`` and ``module_entities`` and implement the abstract methods.
    ``module_entities`` maps a regex over module names to the entity type whose rows the
    module's input holds (``atom``, ``edge``, ``bond``, ``angle`` or ``crystal``); only modules
    listed there may carry adapters, and BaLoRA uses it to find each row's structure.
    """

    name: str
    module_entities: dict[str, str]

    @property
    @abstractmethod
    def version(self) -> str:
        """Upstream package and weights identity, checked when adapters or models are loaded."""

    @abstractmethod
    def make_featuriser(self) -> Featuriser:
        """The featuriser producing this backbone's samples."""

    @abstractmethod
    def collate(self, samples: Sequence[Any]) -> Any:
        """Batch a list of samples."""

    @abstractmethod
    def num_graphs(self, batch: Any) -> int:
        """Number of structures in ``batch``."""

    @abstractmethod
    def graph_index(self, batch: Any) -> dict[str, torch.Tensor]:
        """For each entity type, the structure index of every row ([n_rows] long)."""

    @abstractmethod
    def repeat_batch(self, batch: Any, copies: int) -> Any:
        """The batch tiled ``copies`` times: structure ``g`` of copy ``s`` gets index ``s*G + g``."""

    @abstractmethod
    def embed(self, batch: Any) -> torch.Tensor:
        """Crystal embedding [n_graphs, embedding_dim] (mean-pooled over atoms)."""

    @property
    @abstractmethod
    def embedding_dim(self) -> int: ...

    head: nn.Module

    def forward(self, batch: Any) -> torch.Tensor:
        """Band-gap output [n_graphs] in the head's (standardised) units."""
        return self.head(self.embed(batch)).squeeze(-1)

    def entity_of(self, module_name: str) -> str | None:
        for pattern, entity in self.module_entities.items():
            if re.search(pattern, module_name):
                return entity
        return None

    def foldable_batchnorms(self) -> list[tuple[str, str]]:
        """(linear, BatchNorm) module-name pairs whose BatchNorm directly follows the linear layer
        and may be folded into it for inference (``adapters.folding``); none by default."""
        return []

    def adaptable_modules(self) -> list[str]:
        """Names of the ``nn.Linear`` modules adapters may wrap."""
        return [
            name
            for name, module in self.named_modules()
            if isinstance(module, nn.Linear) and self.entity_of(name) is not None
        ]

    def train(self, mode: bool = True) -> "GraphBackbone":
        super().train(mode)
        # Pretrained normalisation statistics stay frozen during any fine-tuning.
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self
