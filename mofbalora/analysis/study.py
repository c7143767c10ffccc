"""Metrics with bootstrap CIs for every method, the S and M sweeps, and the three claim verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mofbalora.uncertainty import metrics as um

Verdict = str  # "holds" | "does not hold" | "inconclusive"


@dataclass
class MethodPredictions:
    """Test-set predictions of one method (eV); ``std`` is NaN for deterministic methods."""

    name: str
    mean: np.ndarray
    std: np.ndarray
    val_mean: np.ndarray | None = None
    val_std: np.ndarray | None = None

    @property
    def has_std(self) -> bool:
        return bool(np.isfinite(self.std).all() and (self.std > 0).any())


def _ci(point_low_high: tuple[float, float, float]) -> dict[str, float]:
    point, low, high = point_low_high
    return {"value": point, "ci_low": low, "ci_high": high}


def accuracy(pred: MethodPredictions, truth: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    return {
        "mae_ev": _ci(um.bootstrap_ci(um.mae, pred.mean, truth, rng=rng, n_boot=n_boot)),
        "rmse_ev": _ci(um.bootstrap_ci(um.rmse, pred.mean, truth, rng=rng, n_boot=n_boot)),
        "r2": _ci(um.bootstrap_ci(um.r2, pred.mean, truth, rng=rng, n_boot=n_boot)),
    }


def uncertainty(pred: MethodPredictions, truth: np.ndarray, val_truth: np.ndarray | None, rng: np.random.Generator,
                n_boot: int) -> dict[str, Any]:
    """Correlations, sparsification, calibration (raw and after scalar recalibration on val)."""
    std = um.positive_std(pred.std)
    out: dict[str, Any] = {
        "spearman": _ci(um.bootstrap_ci(um.spearman_std_error, pred.mean, std, truth, rng=rng, n_boot=n_boot)),
        "pearson": _ci(um.bootstrap_ci(um.pearson_std_error, pred.mean, std, truth, rng=rng, n_boot=n_boot)),
        "ause_ev": um.ause(pred.mean, std, truth),
        "mean_std_ev": float(np.mean(std)),
    }
    variants = {"raw": std}
    if pred.val_mean is not None and val_truth is not None:
        recalibrator = um.ScalarVarianceRecalibrator().fit(pred.val_mean, um.positive_std(pred.val_std), val_truth)
        variants["recalibrated"] = recalibrator.predict(std)
        out["recalibration_scale"] = recalibrator.scale_
    for label, values in variants.items():
        out[label] = {
            "nll": um.gaussian_nll(pred.mean, values, truth),
            "miscalibration_area": um.miscalibration_area(pred.mean, values, truth),
            "coverage_68": um.interval_coverage(pred.mean, values, truth, 0.68),
            "coverage_95": um.interval_coverage(pred.mean, values, truth, 0.95),
        }
    return out


def sample_size_sweep(draws_per_seed: list[np.ndarray], truth: np.ndarray, sizes: list[int]) -> dict[str, Any]:
    """Spearman/Pearson of std vs |error| for the first S draws of each seed's [S_max, n] array."""
    rows = {}
    for size in sizes:
        spearman, pearson, mae_values = [], [], []
        for draws in draws_per_seed:
            subset = draws[:size]
            mean, std = subset.mean(0), subset.std(0, ddof=1)
            spearman.append(um.spearman_std_error(mean, std, truth))
            pearson.append(um.pearson_std_error(mean, std, truth))
            mae_values.append(um.mae(mean, truth))
        rows[str(size)] = {
            "spearman_mean": float(np.mean(spearman)), "spearman_sd": float(np.std(spearman, ddof=1)) if len(spearman) > 1 else 0.0,
            "pearson_mean": float(np.mean(pearson)), "pearson_sd": float(np.std(pearson, ddof=1)) if len(pearson) > 1 else 0.0,
            "mae_mean_ev": float(np.mean(mae_values)), "spearman_per_seed": [float(v) for v in spearman],
        }
    return rows


def ensemble_size_sweep(member_draws: np.ndarray, truth: np.ndarray, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """The ensemble of the first M members, M = 2 .. all: correlations and MAE."""
    rows = {}
    for size in range(2, member_draws.shape[0] + 1):
        subset = member_draws[:size]
        mean, std = subset.mean(0), um.positive_std(subset.std(0, ddof=1))
        rows[str(size)] = {
            "spearman": _ci(um.bootstrap_ci(um.spearman_std_error, mean, std, truth, rng=rng, n_boot=n_boot)),
            "pearson": um.pearson_std_error(mean, std, truth),
            "mae_ev": um.mae(mean, truth),
        }
    return rows


def paired_difference(statistic, a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], rng: np.random.Generator,
                      n_boot: int) -> dict[str, float]:
    """statistic(a) − statistic(b) with a paired bootstrap CI over test structures."""
    n = len(a[0])
    point = statistic(*a) - statistic(*b)
    values = []
    for _ in range(n_boot):
        index = rng.integers(0, n, n)
        value = statistic(*(x[index] for x in a)) - statistic(*(x[index] for x in b))
        if np.isfinite(value):
            values.append(value)
    low, high = np.quantile(values, [0.025, 0.975]) if values else (np.nan, np.nan)
    return {"value": float(point), "ci_low": float(low), "ci_high": float(high)}


def _verdict(diff: dict[str, float], *, positive_holds: bool = True) -> Verdict:
    if diff["ci_low"] > 0:
        return "holds" if positive_holds else "does not hold"
    if diff["ci_high"] < 0:
        return "does not hold" if positive_holds else "holds"
    return "inconclusive"


def claims(*, balora: MethodPredictions, balora_draws: np.ndarray, ensemble: MethodPredictions, lora: MethodPredictions,
           full: MethodPredictions, truth: np.ndarray, sweep: dict[str, Any], rng: np.random.Generator,
           n_boot: int) -> dict[str, Any]:
    """Verdicts on the paper's three claims, each with the numbers that decide it."""
    std = lambda p: um.positive_std(p.std)  # noqa: E731
    rho_diff = paired_difference(um.spearman_std_error, (balora.mean, std(balora), truth),
                                 (ensemble.mean, std(ensemble), truth), rng, n_boot)
    claim1 = {
        "statement": "BaLoRA's std correlates with |error| more strongly than the LoRA ensemble's spread (Spearman)",
        "balora_samples": int(balora_draws.shape[0]),
        "spearman_difference_balora_minus_ensemble": rho_diff,
        "verdict": _verdict(rho_diff),
    }
    sizes = sorted(int(s) for s in sweep)
    means = [sweep[str(s)]["spearman_mean"] for s in sizes]
    smallest, largest = sizes[0], sizes[-1]
    mean_s, std_s = balora_draws[:smallest].mean(0), um.positive_std(balora_draws[:smallest].std(0, ddof=1))
    growth = paired_difference(um.spearman_std_error, (balora.mean, std(balora), truth), (mean_s, std_s, truth), rng, n_boot)
    steps = np.diff(means)
    monotone = bool((steps >= 0).all())
    # Holds: the largest S beats the smallest (CI > 0) and the seed-averaged curve never drops.
    if growth["ci_low"] > 0 and monotone:
        verdict2 = "holds"
    elif growth["ci_high"] < 0:
        verdict2 = "does not hold"
    else:
        verdict2 = "inconclusive"
    claim2 = {
        "statement": "BaLoRA's Spearman correlation improves monotonically as the number of samples S grows",
        "sizes": sizes,
        "spearman_mean_by_size": means,
        "monotone_non_decreasing": monotone,
        f"spearman_difference_S{largest}_minus_S{smallest}": growth,
        "verdict": verdict2,
    }
    mae_diff = paired_difference(um.mae, (balora.mean, truth), (lora.mean, truth), rng, n_boot)
    accuracy_verdict = _verdict(mae_diff, positive_holds=False)
    mae_b, mae_l, mae_f = um.mae(balora.mean, truth), um.mae(lora.mean, truth), um.mae(full.mean, truth)
    closer = abs(mae_b - mae_f) < abs(mae_l - mae_f)
    if mae_diff["ci_high"] < 0 and closer:
        verdict3 = "holds"
    elif mae_diff["ci_low"] > 0:
        verdict3 = "does not hold"
    else:
        verdict3 = "inconclusive"
    claim3 = {
        "statement": "BaLoRA's mean prediction is at least as accurate as LoRA's, and closer to full fine-tuning",
        "mae_difference_balora_minus_lora_ev": mae_diff,
        "accuracy_part": accuracy_verdict,
        "mae_ev": {"balora": mae_b, "lora": mae_l, "full": mae_f},
        "closer_to_full": bool(closer),
        "verdict": verdict3,
    }
    return {"claim_1_correlation_vs_ensemble": claim1, "claim_2_monotone_in_samples": claim2,
            "claim_3_accuracy": claim3}

