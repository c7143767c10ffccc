"""Regression-head variants put on a pretrained backbone before fine-tuning.

``pretrained``: the backbone's own head, unchanged (CGCNN: softplus MLP).
``residual``: the pretrained head plus a linear path from the crystal embedding, started at zero,
so the model begins exactly at the pretrained one but its output cannot go flat when the head's
softplus units saturate (the 0.65 eV floor; docs/method.md §8). **(ours)**, chosen on validation.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, get_args

import torch
from torch import nn

from mofbalora.backbones.base import GraphBackbone

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


NoiseInputs = Literal["constant", "embedding", "embedding+mean", "embedding+neighbours", "neighbours"]
#: the variants that read the nearest training structures' residuals
NEIGHBOUR_INPUTS = ("embedding+neighbours", "neighbours")

#: added to the neighbours' mean |residual| (standardised units) before its log, so that a run of
#: exact fits among the neighbours gives a finite feature
NEIGHBOUR_EPSILON = 0.02


class DataNoiseHead(nn.Module):
    r"""Per-structure data-noise std :math:`\sigma_n(x)` in standardised target units (docs/method.md §13). **(ours)**

    .. math:: \sigma_n(x) = \sigma_{\min} + \mathrm{softplus}\big(b + \mathrm{MLP}(u(x))\big)

    where :math:`\tilde z` is the bare pretrained backbone's crystal embedding standardised with
    the training split's statistics and :math:`u(x)` is what ``inputs`` says the MLP sees:
    ``constant`` (nothing: one learned number, the homoscedastic baseline), ``embedding``
    (:math:`\tilde z`), ``embedding+mean`` (:math:`\tilde z` and the predicted mean) or
    ``embedding+neighbours`` (:math:`\tilde z` and the log mean |training residual| of the
    ``neighbours`` nearest training structures in :math:`\tilde z`, leaving a training structure
    itself out) or ``neighbours`` (that log mean |training residual| alone: a kNN estimate of the
    local error scale, mapped by the MLP). The floor keeps the likelihood finite where the head would otherwise shrink to
    zero on a memorised structure.

    The neighbour variant keeps the training residuals as a buffer; the training embeddings it
    searches are the model folder's (``train_embeddings.safetensors``) and are given with
    :meth:`set_neighbours`, not saved twice.

    Shapes: z [G, F], mean [G] -> [G].
    """

    def __init__(self, *, embedding_dim: int, inputs: NoiseInputs, hidden: int, floor: float,
                 neighbours: int = 10, n_reference: int = 0) -> None:
        super().__init__()
        if inputs not in get_args(NoiseInputs):
            raise ValueError(f"inputs must be one of {get_args(NoiseInputs)}, got {inputs!r}")
        if floor < 0 or hidden < 1 or neighbours < 1:
            raise ValueError(f"need floor >= 0, hidden >= 1 and neighbours >= 1, got {floor}, {hidden}, {neighbours}")
        self.inputs, self.floor, self.neighbours = inputs, float(floor), int(neighbours)
        self.register_buffer("z_mean", torch.zeros(embedding_dim))
        self.register_buffer("z_scale", torch.ones(embedding_dim))
        if inputs in NEIGHBOUR_INPUTS:
            self.register_buffer("reference_abs_residual", torch.zeros(n_reference))
        self._index: Any = None
        self.bias = nn.Parameter(torch.zeros(()))
        width = {"constant": 0, "embedding": embedding_dim, "neighbours": 1}.get(inputs, embedding_dim + 1)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.Softplus(), nn.Linear(hidden, 1)) if width else None
        self.reset_parameters()

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

    def set_neighbours(self, z_train: torch.Tensor, abs_residual: torch.Tensor | None = None) -> "DataNoiseHead":
        """The training structures' embeddings [n, F] to search, and (when fitting) their
        |residuals| [n] in standardised units; loading gives only the embeddings."""
        from sklearn.neighbors import NearestNeighbors

        if abs_residual is not None:
            self.reference_abs_residual = abs_residual.detach().float().clone()
        if len(z_train) != len(self.reference_abs_residual):
            raise ValueError(f"{len(z_train)} training embeddings for {len(self.reference_abs_residual)} residuals")
        self._index = NearestNeighbors(n_neighbors=self.neighbours + 1).fit(self._standardise(z_train).numpy())
        return self

    def neighbour_feature(self, z: torch.Tensor, *, exclude_self: bool = False) -> torch.Tensor:
        """log(NEIGHBOUR_EPSILON + mean |residual| of the nearest training structures), [G]."""
        if self._index is None:
            raise ValueError("call set_neighbours first")
        _, index = self._index.kneighbors(self._standardise(z).numpy(), n_neighbors=self.neighbours + exclude_self)
        index = torch.from_numpy(index[:, 1:] if exclude_self else index)
        return torch.log(NEIGHBOUR_EPSILON + self.reference_abs_residual[index].mean(1))

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z.detach().float() - self.z_mean) / self.z_scale

    def forward(self, z: torch.Tensor, mean: torch.Tensor, neighbour: torch.Tensor | None = None) -> torch.Tensor:
        """σ_n [G]; ``neighbour`` is :meth:`neighbour_feature`, computed here when not given."""
        logit = self.bias.expand(len(mean))
        if self.mlp is not None:
            parts = [] if self.inputs == "neighbours" else [self._standardise(z)]
            if self.inputs in NEIGHBOUR_INPUTS:
                neighbour = self.neighbour_feature(z) if neighbour is None else neighbour
                parts.append(neighbour.unsqueeze(1).float())
            elif self.inputs == "embedding+mean":
                parts.append(mean.unsqueeze(1))
            features = torch.cat(parts, dim=1)
            logit = logit + self.mlp(features).squeeze(1)
        return self.floor + nn.functional.softplus(logit)
