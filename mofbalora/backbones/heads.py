"""Regression-head variants put on a pretrained backbone before fine-tuning.

``pretrained``: the backbone's own head, unchanged (CGCNN: softplus MLP).
``residual``: the pretrained head plus a linear path from the crystal embedding, started at zero,
so the model begins exactly at the pretrained one but its output cannot go flat when the head's
softplus units saturate (the 0.65 eV floor; docs/method.md §8). **(ours)**, chosen on validation.

The data-noise head's module (``DataNoiseHead``) lives here beside the other heads because
inference builds it from a model folder; its fit (``training.noise_head``) and its stage on a folder
(``data_noise``) stay out of this module so that predicting never imports training code.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, get_args

import numpy as np
import torch
from torch import nn

from mofbalora.backbones.base import GraphBackbone
from mofbalora.featurise.base import N_ELEMENT_COLUMNS

HeadKind = Literal["pretrained", "residual"]


class ResidualLinearHead(nn.Module):
    """``pretrained(z) + linear(z)``; the linear path starts at zero weight and bias. [G, F] -> [G, 1]."""

    def __init__(self, pretrained: nn.Module, *, embedding_dim: int) -> None:
        super().__init__()
        self.pretrained = pretrained
        self.linear = nn.Linear(embedding_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        return self.pretrained(crystal_fea) + self.linear(crystal_fea)


def last_linear(head: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear]:
    """``(features, layer)`` with ``head(z) == layer(features(z))`` and ``layer`` a new one-output
    ``nn.Linear`` holding a copy of the head's last-layer weights (for a last-layer Laplace).

    Raises:
        ValueError: for a head without a known last linear layer.
    """
    if isinstance(head, ResidualLinearHead):  # pretrained(z) + linear(z): one linear map of [features(z), z]
        inner_features, inner = last_linear(head.pretrained)
        layer = nn.Linear(inner.in_features + head.linear.in_features, 1)
        with torch.no_grad():
            layer.weight.copy_(torch.cat([inner.weight, head.linear.weight], dim=1))
            layer.bias.copy_(inner.bias + head.linear.bias)
        return (lambda z: torch.cat([inner_features(z), z], dim=1)), layer
    if hasattr(head, "features") and isinstance(getattr(head, "fc_out", None), nn.Linear):
        layer = nn.Linear(head.fc_out.in_features, 1)
        layer.load_state_dict(head.fc_out.state_dict())
        return head.features, layer
    raise ValueError(f"{type(head).__name__}: no known last linear layer (CGCNN heads only)")


def apply_head(backbone: GraphBackbone, kind: HeadKind) -> GraphBackbone:
    """Give ``backbone`` the head ``kind`` in place (before adapters are injected or loaded).

    Raises:
        ValueError: for an unknown kind, listing the valid ones.
    """
    if kind not in get_args(HeadKind):
        raise ValueError(f"head must be one of {get_args(HeadKind)}, got {kind!r}")
    if kind == "residual":
        backbone.head = ResidualLinearHead(backbone.head, embedding_dim=backbone.embedding_dim)
    return backbone


NoiseInputs = Literal["constant", "embedding", "embedding+mean", "embedding+neighbours", "neighbours",
                     "neighbours+composition"]
#: the variants that read the nearest training structures' residuals
NEIGHBOUR_INPUTS = ("embedding+neighbours", "neighbours", "neighbours+composition")
#: the variants that also read them among the nearest training compositions (element fractions)
COMPOSITION_INPUTS = ("neighbours+composition",)
#: the variants whose MLP sees only those neighbour features, not z̃
NEIGHBOURS_ONLY_INPUTS = ("neighbours", "neighbours+composition")

#: added to the neighbours' mean |residual| (standardised units) before its log, so that a run of
#: exact fits among the neighbours gives a finite feature
NEIGHBOUR_EPSILON = 0.02


def _nearest_other(index: Any, query: np.ndarray, k: int, exclude_self: bool) -> torch.Tensor:
    """Rows of the k nearest reference points [G, k]; with ``exclude_self`` query row i is
    reference row i and is left out, even among ties at distance 0 (duplicate compositions).
    k is capped at one less than the reference set, so a small training set (smoke runs) still works."""
    k = max(1, min(k, index.n_samples_fit_ - 1))
    found = index.kneighbors(query, n_neighbors=k + exclude_self)[1]
    if exclude_self:
        is_self = found == np.arange(len(found))[:, None]
        is_self[~is_self.any(1), -1] = True  # itself not among the ties returned: drop the farthest
        found = found[~is_self].reshape(len(found), k)
    return torch.from_numpy(found)


class DataNoiseHead(nn.Module):
    r"""Per-structure data-noise std :math:`\sigma_n(x)` in standardised target units (docs/method.md §13). **(ours)**

    .. math:: \sigma_n(x) = \sigma_{\min} + \mathrm{softplus}\big(b + \mathrm{MLP}(u(x))\big)

    where :math:`\tilde z` is the bare pretrained backbone's crystal embedding standardised with
    the training split's statistics and :math:`u(x)` is what ``inputs`` says the MLP sees:
    ``constant`` (nothing: one learned number, the homoscedastic baseline), ``embedding``
    (:math:`\tilde z`), ``embedding+mean`` (:math:`\tilde z` and the predicted mean),
    ``embedding+neighbours`` (:math:`\tilde z` and the log mean |training residual| of the
    ``neighbours`` nearest training structures in :math:`\tilde z`, leaving a training structure
    itself out), ``neighbours`` (that log mean |training residual| alone: a kNN estimate of the
    local error scale, mapped by the MLP) or ``neighbours+composition`` (that feature and the same
    estimate among the ``composition_neighbours`` nearest training compositions: element
    fractions, standardised per element). The floor keeps the likelihood finite where the head
    would otherwise shrink to zero on a memorised structure.

    The neighbour variants keep the training residuals as a buffer; the training embeddings they
    search are the model folder's (``train_embeddings.safetensors``) and are given with
    :meth:`set_neighbours`, not saved twice. The composition variant keeps the training element
    counts as buffers too (sparse rows: a few hundred kB for QMOF's training split).

    Shapes: z [G, F], mean [G], element_counts [G, N_ELEMENT_COLUMNS] -> [G].
    """

    def __init__(self, *, embedding_dim: int, inputs: NoiseInputs, hidden: int, floor: float,
                 neighbours: int = 10, n_reference: int = 0, composition_neighbours: int = 100,
                 n_composition_entries: int = 0) -> None:
        super().__init__()
        if inputs not in get_args(NoiseInputs):
            raise ValueError(f"inputs must be one of {get_args(NoiseInputs)}, got {inputs!r}")
        if floor < 0 or hidden < 1 or neighbours < 1 or composition_neighbours < 1:
            raise ValueError(f"need floor >= 0, hidden >= 1 and neighbours >= 1, got {floor}, {hidden}, "
                             f"{neighbours}, {composition_neighbours}")
        self.inputs, self.floor, self.neighbours = inputs, float(floor), int(neighbours)
        self.composition_neighbours = int(composition_neighbours)
        self.register_buffer("z_mean", torch.zeros(embedding_dim))
        self.register_buffer("z_scale", torch.ones(embedding_dim))
        if inputs in NEIGHBOUR_INPUTS:
            self.register_buffer("reference_abs_residual", torch.zeros(n_reference))
        if inputs in COMPOSITION_INPUTS:  # the training counts as sparse rows (CSR)
            self.register_buffer("reference_offsets", torch.zeros(n_reference + 1, dtype=torch.int32))
            self.register_buffer("reference_elements", torch.zeros(n_composition_entries, dtype=torch.uint8))
            self.register_buffer("reference_counts", torch.zeros(n_composition_entries, dtype=torch.int16))
            self.register_buffer("composition_mean", torch.zeros(N_ELEMENT_COLUMNS))
            self.register_buffer("composition_scale", torch.ones(N_ELEMENT_COLUMNS))
        self._index: Any = None
        self._composition_index: Any = None
        self.bias = nn.Parameter(torch.zeros(()))
        # z̃ unless the neighbour features alone; one feature per neighbour search; or the mean
        width = (0 if inputs == "constant" or inputs in NEIGHBOURS_ONLY_INPUTS else embedding_dim) \
            + (inputs in NEIGHBOUR_INPUTS) + (inputs in COMPOSITION_INPUTS) + (inputs == "embedding+mean")
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.Softplus(), nn.Linear(hidden, 1)) if width else None
        self.reset_parameters()

    @property
    def needs_composition(self) -> bool:
        """Whether :meth:`forward` needs the structures' element counts."""
        return self.inputs in COMPOSITION_INPUTS

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)
        if self.mlp is not None:
            self.mlp[0].reset_parameters()
            nn.init.zeros_(self.mlp[2].weight)  # starts as the constant head
            nn.init.zeros_(self.mlp[2].bias)

    def set_reference(self, z_train: torch.Tensor, initial_std: float) -> "DataNoiseHead":
        """Standardise inputs with the training embeddings; start at ``initial_std`` everywhere."""
        with torch.no_grad():
            self.z_mean.copy_(z_train.mean(0))
            self.z_scale.copy_(z_train.std(0).clamp_min(1e-6))
            excess = max(initial_std - self.floor, 1e-3)
            self.bias.fill_(float(excess + torch.log(-torch.expm1(torch.tensor(-excess)))))  # softplus⁻¹
        return self

    def set_neighbours(self, z_train: torch.Tensor, abs_residual: torch.Tensor | None = None,
                       element_counts: torch.Tensor | np.ndarray | None = None) -> "DataNoiseHead":
        """The training structures' embeddings [n, F] to search and, when fitting, their |residuals|
        [n] in standardised units (and, for the composition variant, their element counts
        [n, N_ELEMENT_COLUMNS]); loading gives only the embeddings, the rest is in the buffers."""
        from sklearn.neighbors import NearestNeighbors

        if abs_residual is not None:
            self.reference_abs_residual = abs_residual.detach().float().clone()
        if len(z_train) != len(self.reference_abs_residual):
            raise ValueError(f"{len(z_train)} training embeddings for {len(self.reference_abs_residual)} residuals")
        self._index = NearestNeighbors(n_neighbors=self.neighbours + 1).fit(self._standardise(z_train).numpy())
        if self.needs_composition:
            if element_counts is not None:
                self._store_counts(torch.as_tensor(np.asarray(element_counts)))
            fractions = self._fractions(self._reference_counts())
            if abs_residual is not None:  # the per-element standardisation of sklearn's StandardScaler
                scale = fractions.std(0, unbiased=False)
                self.composition_mean = fractions.mean(0)
                self.composition_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            # a tree computes each distance on its own: a structure's neighbours, ties and near-ties
            # included (standardised rare elements make many), do not depend on the batch or on
            # BLAS threads as brute force's matrix products do
            self._composition_index = NearestNeighbors(algorithm="ball_tree").fit(
                self._standardise_composition(fractions))
        return self

    def _store_counts(self, counts: torch.Tensor) -> None:
        if counts.shape != (len(self.reference_abs_residual), N_ELEMENT_COLUMNS):
            raise ValueError(f"element counts of shape {tuple(counts.shape)} for {len(self.reference_abs_residual)} "
                             f"training structures")
        rows, elements = torch.nonzero(counts, as_tuple=True)
        self.reference_offsets = torch.cat([torch.zeros(1, dtype=torch.int64),
                                            torch.bincount(rows, minlength=len(counts)).cumsum(0)]).int()
        self.reference_elements = elements.to(torch.uint8)
        self.reference_counts = counts[rows, elements].to(torch.int16)

    def _reference_counts(self) -> torch.Tensor:
        n = len(self.reference_offsets) - 1
        rows = torch.repeat_interleave(torch.arange(n), torch.diff(self.reference_offsets.long()))
        dense = torch.zeros(n, N_ELEMENT_COLUMNS)
        dense[rows, self.reference_elements.long()] = self.reference_counts.float()
        return dense

    @staticmethod
    def _fractions(counts: torch.Tensor) -> torch.Tensor:
        counts = torch.as_tensor(np.asarray(counts)).double()
        return counts / counts.sum(1, keepdim=True).clamp_min(1)

    def _standardise_composition(self, fractions: torch.Tensor) -> np.ndarray:
        return ((fractions - self.composition_mean.double()) / self.composition_scale.double()).numpy()

    def neighbour_features(self, z: torch.Tensor, element_counts: torch.Tensor | np.ndarray | None = None, *,
                           exclude_self: bool = False) -> torch.Tensor:
        """log(NEIGHBOUR_EPSILON + mean |residual| of the nearest training structures) in z̃ and,
        for the composition variant, among compositions, [G, 1 or 2]. With ``exclude_self`` the
        queries are the training structures themselves, each left out of its own feature."""
        if self._index is None:
            raise ValueError("call set_neighbours first")
        rows = [_nearest_other(self._index, self._standardise(z).numpy(), self.neighbours, exclude_self)]
        if self.needs_composition:
            if element_counts is None:
                raise ValueError("the neighbours+composition noise head needs the structures' element counts")
            query = self._standardise_composition(self._fractions(element_counts))
            rows.append(_nearest_other(self._composition_index, query, self.composition_neighbours, exclude_self))
        return torch.stack([torch.log(NEIGHBOUR_EPSILON + self.reference_abs_residual[index].mean(1))
                            for index in rows], dim=1)

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z.detach().float() - self.z_mean) / self.z_scale

    def forward(self, z: torch.Tensor, mean: torch.Tensor, neighbour: torch.Tensor | None = None,
                element_counts: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """σ_n [G]; ``neighbour`` is :meth:`neighbour_features`, computed here when not given.

        Computed in float64 and rounded to float32 at the end: in float32 the last bit of a matrix
        product or a vectorised softplus depends on how many rows share the call, and a structure's
        σ_n must not depend on its batch."""
        logit = self.bias.double().expand(len(mean))
        if self.mlp is not None:
            parts = [] if self.inputs in NEIGHBOURS_ONLY_INPUTS else [self._standardise(z)]
            if self.inputs in NEIGHBOUR_INPUTS:
                neighbour = self.neighbour_features(z, element_counts) if neighbour is None else neighbour
                parts.append(neighbour.float().reshape(len(mean), -1))
            elif self.inputs == "embedding+mean":
                parts.append(mean.unsqueeze(1))
            first, activation, last = self.mlp
            features = torch.cat(parts, dim=1).double()
            hidden = activation(nn.functional.linear(features, first.weight.double(), first.bias.double()))
            logit = logit + nn.functional.linear(hidden, last.weight.double(), last.bias.double()).squeeze(1)
        return (self.floor + nn.functional.softplus(logit)).float()
