"""Gaussian predictive intervals and band-gap window probabilities.

Deterministic predictions carry ``std = NaN``: their intervals are NaN and their window
probability is 1 inside the window and 0 outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from scipy.stats import norm

Z_95 = float(norm.ppf(0.975))
#: where a calibrated interval leaves its misses: the share the calibration chose, or half each side
IntervalTails = Literal["calibrated", "central"]
INTERVAL_TAILS: tuple[str, ...] = get_args(IntervalTails)


def gaussian_interval(mean_ev: np.ndarray, std_ev: np.ndarray, *, coverage: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of N(mean, std^2), both bounds clipped at 0 eV (a band gap is non-negative)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    z = float(norm.ppf(0.5 + coverage / 2))
    mean_ev, std_ev = np.asarray(mean_ev, float), np.asarray(std_ev, float)
    return np.maximum(mean_ev - z * std_ev, 0.0), np.maximum(mean_ev + z * std_ev, 0.0)


def check_lower_miss_share(share: float) -> float:
    """``share`` when it lies in (0, 1); a ``ValueError`` otherwise (at 0 or 1 one end is unbounded)."""
    if not 0 < share < 1:
        raise ValueError(f"lower_miss_share must lie in (0, 1), got {share}")
    return share


def check_window(window_ev: Sequence[float]) -> tuple[float, float]:
    """(low, high) in eV of a band-gap window, checked: two numbers with low < high (high may be inf).

    Raises:
        ValueError: not two numbers, or low ≥ high (or NaN).
    """
    if len(window_ev) != 2:
        raise ValueError(f"a window is (low, high) in eV, got {tuple(window_ev)!r}")
    low_ev, high_ev = (float(v) for v in window_ev)
    if not low_ev < high_ev:
        raise ValueError(f"window must have low < high, got {low_ev}:{high_ev}")
    return low_ev, high_ev


def window_probability(mean_ev: np.ndarray, std_ev: np.ndarray, low_ev: float, high_ev: float) -> np.ndarray:
    """P(low <= gap <= high) under N(mean, std^2) censored at 0 eV (a window from 0 or below holds
    the mass below 0); an indicator of the non-negative mean where std is NaN or 0."""
    low_ev, high_ev = check_window((low_ev, high_ev))
    mean_ev, std_ev = np.asarray(mean_ev, float), np.asarray(std_ev, float)
    clipped = np.maximum(mean_ev, 0.0)
    inside = ((clipped >= low_ev) & (clipped <= high_ev)).astype(float)
    safe_std = np.where(np.isfinite(std_ev) & (std_ev > 0), std_ev, 1.0)
    below = 0.0 if low_ev <= 0 else norm.cdf((low_ev - mean_ev) / safe_std)
    probability = np.where(high_ev < 0, 0.0, norm.cdf((high_ev - mean_ev) / safe_std) - below)
    return np.where(np.isfinite(std_ev) & (std_ev > 0), probability, inside)
