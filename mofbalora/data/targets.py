"""Band-gap target standardisation, fitted on a training split and stored with every model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
