"""Gaussian predictive intervals and band-gap window probabilities.

Deterministic predictions carry ``std = NaN``: their intervals are NaN and their window
probability is 1 inside the window and 0 outside.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

Z_95 = float(norm.ppf(0.975))


def gaussian_interval(mean_ev: np.ndarray, std_ev: np.ndarray, *, coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of N(mean, std^2), lower bound clipped at 0 eV (a band gap is non-negative)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    z = float(norm.ppf(0.5 + coverage / 2))
    mean_ev, std_ev = np.asarray(mean_ev, float), np.asarray(std_ev, float)
    return np.maximum(mean_ev - z * std_ev, 0.0), mean_ev + z * std_ev


def window_probability(mean_ev: np.ndarray, std_ev: np.ndarray, low_ev: float, high_ev: float) -> np.ndarray:
    """P(low <= gap <= high) under N(mean, std^2); an indicator where std is NaN or 0."""
    if not low_ev < high_ev:
        raise ValueError(f"window must have low < high, got {low_ev}:{high_ev}")
    mean_ev, std_ev = np.asarray(mean_ev, float), np.asarray(std_ev, float)
    inside = ((mean_ev >= low_ev) & (mean_ev <= high_ev)).astype(float)
    safe_std = np.where(np.isfinite(std_ev) & (std_ev > 0), std_ev, 1.0)
    probability = norm.cdf((high_ev - mean_ev) / safe_std) - norm.cdf((low_ev - mean_ev) / safe_std)
    return np.where(np.isfinite(std_ev) & (std_ev > 0), probability, inside)
