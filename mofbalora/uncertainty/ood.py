"""Out-of-distribution flags: large epistemic std, far from every training structure, or larger cells.

The std flag cannot catch structures on which the model is confidently wrong (a saturated head
gives them the smallest stds), so a second flag measures the distance from the structure's frozen
crystal embedding to its k nearest training structures (scikit-learn ``NearestNeighbors``). Both
thresholds are quantiles on the calibration split (docs/method.md §9).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.neighbors import NearestNeighbors


class EmbeddingDistance:
    """Mean Euclidean distance to the k nearest training embeddings; scikit-learn style.

    Fitted attributes:
        neighbours_: the fitted ``NearestNeighbors`` index over the training embeddings.
    """

    def __init__(self, *, k: int = 5) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def fit(self, train_embeddings: np.ndarray) -> "EmbeddingDistance":
        train_embeddings = np.asarray(train_embeddings, dtype=float)
        if train_embeddings.ndim != 2 or len(train_embeddings) < self.k:
            raise ValueError(f"need a [n >= {self.k}, dim] array of training embeddings, got {train_embeddings.shape}")
        self.neighbours_ = NearestNeighbors(n_neighbors=self.k).fit(train_embeddings)
        return self

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """[n] mean distance to the k nearest training structures (embedding units)."""
        if not hasattr(self, "neighbours_"):
            raise ValueError("call fit first")
        embeddings = np.asarray(embeddings, dtype=float)
        if len(embeddings) == 0:
            return np.zeros(0)
        distances, _ = self.neighbours_.kneighbors(embeddings)
        return distances.mean(axis=1)


def ood_reasons(*, epistemic_std_ev: np.ndarray, embedding_distance: np.ndarray, n_atoms: np.ndarray,
                thresholds: dict[str, Any]) -> list[str]:
    """Per structure, the ``;``-joined reasons it is out of distribution ('' when none).

    ``thresholds`` holds ``epistemic_std_ev`` (None for deterministic models),
    ``embedding_distance`` and ``train_n_atoms_max``.
    """
    std_limit = thresholds.get("epistemic_std_ev")
    distance_limit = thresholds.get("embedding_distance")
    atoms_limit = thresholds.get("train_n_atoms_max")
    reasons = []
    for std, distance, atoms in zip(epistemic_std_ev, embedding_distance, n_atoms):
        parts = []
        if std_limit is not None and np.isfinite(std) and std > std_limit:
            parts.append(f"epistemic std {std:.3f} eV above the calibration {thresholds['quantile']:.0%} quantile")
        if distance_limit is not None and distance > distance_limit:
            parts.append(f"embedding far from training structures ({distance:.2f} > {distance_limit:.2f})")
        if atoms_limit is not None and atoms > atoms_limit:
            parts.append(f"{int(atoms)} atoms, more than any training structure ({atoms_limit})")
        reasons.append("; ".join(parts))
    return reasons
