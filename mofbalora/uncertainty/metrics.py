"""Uncertainty-quality and accuracy metrics: pure functions ``(y_pred, y_std, y_true) -> value``.

All inputs are 1-D arrays in eV. Functions raise ``ValueError`` on bad input and take an
``rng`` (numpy Generator) wherever randomness enters.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats
from scipy.stats import norm
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def _check(*arrays: np.ndarray, allow_nan_std: bool = False) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float) for a in arrays]
    n = len(out[0])
    for a in out:
        if a.ndim != 1 or len(a) != n:
            raise ValueError("inputs must be 1-D arrays of equal length")
    if n < 2:
        raise ValueError("need at least two points")
    return out


def mae(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    y_pred, y_true = _check(y_pred, y_true)
    return float(mean_absolute_error(y_true, y_pred))


def rmse(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    y_pred, y_true = _check(y_pred, y_true)
    return float(np.sqrt(mean_squared_error(y_true, y_pred)))


def r2(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    y_pred, y_true = _check(y_pred, y_true)
    return float(r2_score(y_true, y_pred))


def spearman_std_error(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Spearman correlation between the predicted std and the absolute error."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    if np.ptp(y_std) == 0:
        return float("nan")
    return float(stats.spearmanr(y_std, np.abs(y_pred - y_true)).statistic)


def pearson_std_error(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Pearson correlation between the predicted std and the absolute error."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    if np.ptp(y_std) == 0:
        return float("nan")
    return float(stats.pearsonr(y_std, np.abs(y_pred - y_true)).statistic)


def gaussian_nll(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of y_true under N(y_pred, y_std^2) (nats)."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    if (y_std <= 0).any():
        raise ValueError("std must be positive")
    return float(-norm.logpdf(y_true, loc=y_pred, scale=y_std).mean())


def interval_coverage(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray, coverage: float) -> float:
    """Share of points inside the central Gaussian interval of nominal ``coverage``."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    z = norm.ppf(0.5 + coverage / 2)
    return float(np.mean(np.abs(y_true - y_pred) <= z * y_std))


def calibration_curve(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray,
                      n_levels: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) proportions in central intervals at ``n_levels`` nominal levels."""
    expected = np.linspace(0.01, 0.99, n_levels)
    observed = np.array([interval_coverage(y_pred, y_std, y_true, p) for p in expected])
    return expected, observed


def miscalibration_area(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Mean |observed − expected| over the calibration curve (0 is perfectly calibrated)."""
    expected, observed = calibration_curve(y_pred, y_std, y_true)
    return float(np.mean(np.abs(observed - expected)))


def error_retention_curve(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray,
                          n_points: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fraction retained, MAE when keeping the most certain, MAE of the oracle ranking by error)."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    errors = np.abs(y_pred - y_true)
    by_std = errors[np.argsort(y_std, kind="stable")]
    by_error = np.sort(errors)
    fractions = np.linspace(1.0 / n_points, 1.0, n_points)
    counts = np.maximum(1, np.round(fractions * len(errors)).astype(int))
    model = np.array([by_std[:k].mean() for k in counts])
    oracle = np.array([by_error[:k].mean() for k in counts])
    return fractions, model, oracle


def ause(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Area under the sparsification error: retention curve minus oracle, averaged (eV)."""
    _, model, oracle = error_retention_curve(y_pred, y_std, y_true)
    return float(np.mean(model - oracle))


def bootstrap_ci(statistic: Callable[..., float], *arrays: np.ndarray, rng: np.random.Generator,
                 n_boot: int = 1000, level: float = 0.95) -> tuple[float, float, float]:
    """(point estimate, lower, upper) percentile bootstrap CI, resampling points jointly."""
    arrays = tuple(np.asarray(a, dtype=float) for a in arrays)
    n = len(arrays[0])
    point = statistic(*arrays)
    values = []
    for _ in range(n_boot):
        index = rng.integers(0, n, n)
        value = statistic(*(a[index] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return point, float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(point), float(low), float(high)


class ScalarVarianceRecalibrator:
    """One scale factor on the std, fitted by maximum likelihood: s^2 = mean((y - mu)^2 / std^2).

    Follows scikit-learn: ``fit`` returns self, the fitted factor is ``scale_``.
    """

    def fit(self, y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> "ScalarVarianceRecalibrator":
        y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
        if (y_std <= 0).any():
            raise ValueError("std must be positive")
        self.scale_ = float(np.sqrt(np.mean(((y_true - y_pred) / y_std) ** 2)))
        return self

    def predict(self, y_std: np.ndarray) -> np.ndarray:
        if not hasattr(self, "scale_"):
            raise ValueError("call fit first")
        return np.asarray(y_std, dtype=float) * self.scale_
