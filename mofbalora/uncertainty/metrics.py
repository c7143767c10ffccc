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

from mofbalora.uncertainty.intervals import check_lower_miss_share


#: the one clipping rule: metrics that need a positive std (NLL, Gaussian intervals) see at least this
STD_FLOOR_EV = 1e-9
#: gaps below this (eV) are where PBE and the model are least reliable (small-gap / metallic MOFs)
SMALL_GAP_EV = 0.5
#: gaps above this (eV): the other end of the range, where errors regress to the middle too (ours)
LARGE_GAP_EV = 4.0


def positive_std(std: np.ndarray) -> np.ndarray:
    """``std`` clipped at :data:`STD_FLOOR_EV`, for metrics only; near-zero stds are reported, not hidden."""
    return np.maximum(np.asarray(std, dtype=float), STD_FLOOR_EV)


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


def spearman_std_error_if_true(y_pred: np.ndarray, y_std: np.ndarray, draws: np.ndarray) -> dict[str, float]:
    """The Spearman ρ(std, |error|) a model's own predictive distribution promises: ρ(y_std, |y − y_pred|)
    with the truth y replaced by draws from that distribution, [K, n]; the mean over the K draws and
    their 2.5/97.5 percentiles. An observed ρ far below it means the stds rank worse than claimed; a
    target above it cannot be met by a model whose distributions are this one (docs/studies/data_noise.md)."""
    y_pred, y_std = _check(y_pred, y_std)
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] != len(y_pred):
        raise ValueError(f"draws must have shape [K, {len(y_pred)}], got {draws.shape}")
    rhos = np.array([spearman_std_error(y_pred, y_std, draw) for draw in draws])
    low, high = np.percentile(rhos, [2.5, 97.5])
    return {"value": float(rhos.mean()), "range_low": float(low), "range_high": float(high), "draws": len(rhos)}


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
    model = np.cumsum(by_std)[counts - 1] / counts  # mean of the k most certain, for every k at once
    oracle = np.cumsum(by_error)[counts - 1] / counts
    return fractions, model, oracle


def ause(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Area under the sparsification error: retention curve minus oracle, averaged (eV)."""
    _, model, oracle = error_retention_curve(y_pred, y_std, y_true)
    return float(np.mean(model - oracle))


def ause_ratio(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """AUSE normalised by the oracle: AUSE over the AUSE of a random ranking (the flat MAE line);
    0 is the oracle ranking, 1 no better than random, so methods of different MAE compare."""
    _, model, oracle = error_retention_curve(y_pred, y_std, y_true)
    y_pred, y_true = _check(y_pred, y_true)
    random_gap = float(np.mean(np.abs(y_pred - y_true)) - np.mean(oracle))
    return float(np.mean(model - oracle) / random_gap) if random_gap > 0 else float("nan")


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


def bca_interval(statistic: Callable[..., float], *arrays: np.ndarray, n_resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}``: the statistic and its BCa bootstrap CI (``scipy.stats.bootstrap``),
    resampling the arrays' points jointly (paired)."""
    from scipy.stats import bootstrap

    arrays = tuple(np.asarray(a, dtype=float) for a in arrays)
    result = bootstrap(arrays, statistic, paired=True, vectorized=False, n_resamples=n_resamples,
                       confidence_level=level, method="BCa", random_state=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {"value": float(statistic(*arrays)), "ci_low": float(interval.low), "ci_high": float(interval.high)}


class ScalarVarianceRecalibrator:
    """One scale factor on the std, chosen to minimise the miscalibration area (uncertainty-toolbox).

    A diagnostic only: predictions use the conformal calibrator (``uncertainty.conformal``). The
    miscalibration-area criterion is robust to the few near-zero stds that dominate a
    maximum-likelihood scale. Follows scikit-learn: ``fit`` returns self, the factor is ``scale_``.
    """

    def __init__(self, *, bounds: tuple[float, float] = (1e-3, 1e4), n_grid: int = 701) -> None:
        self.bounds, self.n_grid = bounds, n_grid

    def fit(self, y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> "ScalarVarianceRecalibrator":
        from uncertainty_toolbox.metrics_calibration import mean_absolute_calibration_error

        y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
        if (y_std <= 0).any():
            raise ValueError("std must be positive")
        # A log-spaced grid, not uncertainty-toolbox's own optimize_recalibration_ratio: its Brent
        # search on a linear scale stalls on the flat objective far from the optimum (seen: ×1e4).
        ratios = np.geomspace(*self.bounds, self.n_grid)
        errors = [mean_absolute_calibration_error(y_pred, r * y_std, y_true, vectorized=True) for r in ratios]
        self.scale_ = float(ratios[int(np.argmin(errors))])
        return self

    def predict(self, y_std: np.ndarray) -> np.ndarray:
        if not hasattr(self, "scale_"):
            raise ValueError("call fit first")
        return np.asarray(y_std, dtype=float) * self.scale_


def interval_share(lower: np.ndarray, upper: np.ndarray, y_true: np.ndarray) -> float:
    """Share of ``y_true`` inside [lower, upper] (any interval: Gaussian, conformal, ...)."""
    lower, upper, y_true = _check(lower, upper, y_true)
    return float(np.mean((y_true >= lower) & (y_true <= upper)))


def floor_statistics(y_pred: np.ndarray, y_true: np.ndarray, *, tolerance_ev: float = 0.02,
                     low_gap_ev: float = 1.0) -> dict[str, float]:
    """How much a prediction set piles up at its minimum (a saturated head), and the small-gap MAE."""
    y_pred, y_true = _check(y_pred, y_true)
    near = y_pred <= y_pred.min() + tolerance_ev
    low = y_true < low_gap_ev
    return {"min_prediction_ev": float(y_pred.min()), "share_within_tolerance_of_min": float(near.mean()),
            "tolerance_ev": tolerance_ev, "n_gap_below": int(low.sum()), "low_gap_ev": low_gap_ev,
            "mae_gap_below_ev": float(np.abs(y_pred - y_true)[low].mean()) if low.any() else float("nan")}


def interval_score(lower: np.ndarray, upper: np.ndarray, y_true: np.ndarray, *, confidence: float,
                   lower_miss_share: float = 0.5) -> np.ndarray:
    """Winkler interval score (eV) per point: width + (1/a_low)·(distance below) + (1/a_high)·(distance
    above), with a = 1 − confidence split as a_low = ``lower_miss_share``·a below the interval and the
    rest above; the central interval's share ½ gives the usual width + (2/a)·(distance outside).

    Lower is better; a proper score for the interval whose ends are the a_low and 1 − a_high
    quantiles (its expectation is least where P(y < lower) = a_low and P(y > upper) = a_high;
    Gneiting and Raftery 2007, eq. 43, for the central case).
    """
    lower, upper, y_true = _check(lower, upper, y_true)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    check_lower_miss_share(lower_miss_share)
    a = 1.0 - confidence
    a_low, a_high = a * lower_miss_share, a * (1 - lower_miss_share)
    return (upper - lower) + np.maximum(lower - y_true, 0) / a_low + np.maximum(y_true - upper, 0) / a_high


def probability_reliability(p_predicted: np.ndarray, outcome: np.ndarray, *, n_bins: int = 10) -> "pd.DataFrame":
    """Reliability table of predicted probabilities against observed outcomes (0/1).

    Equal-width bins on [0, 1]; per non-empty bin: its edges, count ``n``, ``mean_predicted`` and
    ``observed_share`` (sklearn's ``calibration_curve``, uniform strategy, with the counts beside).
    """
    import pandas as pd
    from sklearn.calibration import calibration_curve

    p_predicted, outcome = _check(p_predicted, outcome)
    if ((p_predicted < 0) | (p_predicted > 1)).any() or not np.isin(outcome, (0, 1)).all():
        raise ValueError("p_predicted must lie in [0, 1] and outcome be 0 or 1")
    observed, predicted = calibration_curve(outcome, p_predicted, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], p_predicted)  # as calibration_curve bins them
    counts = np.bincount(index, minlength=n_bins)
    present = np.flatnonzero(counts)
    return pd.DataFrame({"bin_low": edges[present], "bin_high": edges[present + 1], "n": counts[present],
                         "mean_predicted": predicted, "observed_share": observed})


def std_bin_index(y_std: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-count bin (0 … n_bins − 1) of each point by its std, ascending; ties keep input order."""
    y_std = np.asarray(y_std, dtype=float)
    if n_bins < 1 or n_bins > len(y_std):
        raise ValueError(f"n_bins must lie in [1, {len(y_std)}], got {n_bins}")
    index = np.empty(len(y_std), dtype=int)
    index[np.argsort(y_std, kind="stable")] = np.arange(len(y_std)) * n_bins // len(y_std)
    return index


def rmse_rmv_by_std_bin(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray, *,
                        n_bins: int = 10) -> "pd.DataFrame":
    """Error-based calibration (Levi et al. 2022): in equal-count bins of the std, the RMSE of the
    errors against the RMV (root mean variance, eV) the stds claim; ``ratio`` = RMSE/RMV is 1 for a
    consistent std, above 1 where it claims too little."""
    import pandas as pd

    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    bins, rmv, rmse_by_bin = _rmse_rmv(y_pred, y_std, y_true, n_bins)
    return pd.DataFrame({"bin": np.arange(n_bins), "n": np.bincount(bins, minlength=n_bins),
                         "std_low_ev": [float(y_std[bins == b].min()) for b in range(n_bins)],
                         "std_high_ev": [float(y_std[bins == b].max()) for b in range(n_bins)],
                         "rmv_ev": rmv, "rmse_ev": rmse_by_bin, "ratio": rmse_by_bin / rmv})


def _rmse_rmv(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray,
              n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin of each point, RMV per bin, RMSE per bin) over equal-count std bins."""
    if (y_std <= 0).any():
        raise ValueError("std must be positive")
    bins = std_bin_index(y_std, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    rmv = np.sqrt(np.bincount(bins, weights=y_std ** 2, minlength=n_bins) / counts)
    rmse_by_bin = np.sqrt(np.bincount(bins, weights=(y_pred - y_true) ** 2, minlength=n_bins) / counts)
    return bins, rmv, rmse_by_bin


def ence(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray, *, n_bins: int = 10) -> float:
    """Expected normalised calibration error (Levi et al. 2022): mean over equal-count std bins of
    |RMV − RMSE| / RMV. 0 for a consistent std; it does not vanish with sampling noise in small bins."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    _, rmv, rmse_by_bin = _rmse_rmv(y_pred, y_std, y_true, n_bins)
    return float(np.mean(np.abs(rmv - rmse_by_bin) / rmv))


def zms(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray) -> float:
    """Mean squared z-score (Pernot 2024), mean(((y − ŷ)/σ)²): 1 when the std is right on average,
    above 1 where it is too small."""
    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    if (y_std <= 0).any():
        raise ValueError("std must be positive")
    return float(np.mean(((y_true - y_pred) / y_std) ** 2))


def zms_by_group(y_pred: np.ndarray, y_std: np.ndarray, y_true: np.ndarray, groups: np.ndarray, *,
                 min_size: int = 2, seed: int = 0, n_resamples: int = 2000) -> "pd.DataFrame":
    """ZMS per group with at least ``min_size`` points (a metal family, a cell-size bin, the OOD
    flag…), with its BCa CI over the group's points and the Spearman ρ(std, |error|) inside it."""
    import pandas as pd

    y_pred, y_std, y_true = _check(y_pred, y_std, y_true)
    groups = np.asarray(groups)
    if groups.shape != y_pred.shape:
        raise ValueError("groups must have one label per point")
    rows = []
    for label in pd.unique(groups):
        inside = groups == label
        if inside.sum() < max(min_size, 2):
            continue
        args = (y_pred[inside], y_std[inside], y_true[inside])
        row = {"group": label, "n": int(inside.sum()),
               **{f"zms_{k}": v for k, v in bca_interval(zms, *args, seed=seed, n_resamples=n_resamples).items()},
               "spearman_std_abs_error": spearman_std_error(*args)}
        rows.append(row)
    columns = ["group", "n", "zms_value", "zms_ci_low", "zms_ci_high", "spearman_std_abs_error"]
    return pd.DataFrame(rows, columns=columns).sort_values("n", ascending=False, kind="stable").reset_index(drop=True)
