"""The band-gap study's statistics: per-method scores with CIs over training seeds and test
structures, the ρ-vs-S curves with their sampling-noise expectation, and the claim verdicts.

Every method is a :class:`MethodRuns`: its predictions for K training seeds (or, for an ensemble,
its K members, pooled into one prediction). A CI resamples both levels (docs/method.md §12): the
seeds (members) with replacement, then the test structures with replacement, the same structure
indices for every method of a paired comparison. Verdicts follow the rules in ``claims`` and read
this hierarchical CI; the BCa CI over structures alone (``scipy.stats.bootstrap``, seeds fixed) is
reported beside it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from mofbalora.uncertainty import metrics as um

Verdict = str  # "holds" | "does not hold" | "inconclusive"
Realisation = tuple[np.ndarray, np.ndarray]  # (mean, epistemic std) per structure, eV


@dataclass
class MethodPredictions:
    """Predictions of one method on one set (eV); ``std`` is NaN for deterministic methods."""

    name: str
    mean: np.ndarray
    std: np.ndarray

    @property
    def has_std(self) -> bool:
        return bool(np.isfinite(self.std).all() and (self.std > 0).any())


@dataclass
class MethodRuns:
    """One method's predictions on one set of structures, per training seed (eV).

    Attributes:
        means, stds: [K, n]; ``stds`` NaN for deterministic methods.
        pooled: the K rows are members of one ensemble: a realisation is their mean and spread.
        aleatoric: the per-structure data-noise std σ_n(x) [K, n] ([1, n] pooled), or None.
        with_noise: realisations give the total std sqrt(epistemic² + σ_n²) (a missing epistemic
            std counts as 0) instead of the epistemic one; see :meth:`total`.
        std_factor: the recalibration's per-structure factor on the total std [K, n] ([1, n] pooled),
            or None (docs/method.md §9); applied only to the total std.
    """

    name: str
    means: np.ndarray
    stds: np.ndarray
    pooled: bool = False
    aleatoric: np.ndarray | None = None
    with_noise: bool = False
    std_factor: np.ndarray | None = None

    def total(self, *, recalibrated: bool = True) -> "MethodRuns":
        """The same runs, whose realisations carry the total std (docs/method.md eq. 7), times the
        recalibration's factor when there is one and ``recalibrated``."""
        if self.aleatoric is None:
            raise ValueError(f"{self.name}: no per-structure data noise to add")
        return replace(self, with_noise=True, std_factor=self.std_factor if recalibrated else None)

    @property
    def n_units(self) -> int:
        return self.means.shape[0]

    def realisations(self, units: np.ndarray | None = None) -> list[Realisation]:
        units = np.arange(self.n_units) if units is None else units
        if self.pooled:
            chosen = self.means[units]
            spread = chosen.std(0, ddof=1) if len(units) > 1 else np.full(chosen.shape[1], np.nan)
            return [(chosen.mean(0), self._with_noise(spread, 0))]
        return [(self.means[u], self._with_noise(self.stds[u], u)) for u in units]

    def _with_noise(self, std: np.ndarray, unit: int) -> np.ndarray:
        if not self.with_noise:
            return std
        total = np.sqrt(np.nan_to_num(std) ** 2 + self.aleatoric[unit] ** 2)
        return total if self.std_factor is None else total * self.std_factor[unit]

    def first(self) -> MethodPredictions:
        """The first seed's predictions (all members for an ensemble), for figures."""
        mean, std = self.realisations(np.arange(self.n_units) if self.pooled else np.array([0]))[0]
        return MethodPredictions(self.name, mean, std)

    @property
    def has_std(self) -> bool:
        return MethodPredictions(self.name, *self.realisations()[0]).has_std


Statistic = Callable[[np.ndarray, np.ndarray, np.ndarray], float]  # (mean, std, truth) -> value


def spearman(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> float:
    return um.spearman_std_error(mean, um.positive_std(std), truth)


def mae(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> float:
    return um.mae(mean, truth)


def ause_ratio(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> float:
    return um.ause_ratio(mean, um.positive_std(std), truth)


def _average(statistic: Statistic, runs: MethodRuns, truth: np.ndarray, index: np.ndarray,
             units: np.ndarray | None = None) -> float:
    values = [statistic(m[index], s[index], truth[index]) for m, s in runs.realisations(units)]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def hierarchical_ci(values: Callable[[dict[str, np.ndarray], np.ndarray], float], runs: list[MethodRuns], n: int,
                    rng: np.random.Generator, n_boot: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``values(units_by_method, structure_index)`` when every method's seeds
    (members) and the shared structures are resampled with replacement."""
    replicates = []
    for _ in range(n_boot):
        units = {r.name: rng.integers(0, r.n_units, r.n_units) for r in runs}
        value = values(units, rng.integers(0, n, n))
        if np.isfinite(value):
            replicates.append(value)
    if not replicates:
        return float("nan"), float("nan")
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _structure_bca(values: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int) -> tuple[float, float]:
    """BCa CI over structures alone (all seeds kept), from ``scipy.stats.bootstrap``."""
    index = np.arange(n)
    with warnings.catch_warnings():  # a degenerate statistic gives NaN bounds, reported as such
        warnings.simplefilter("ignore")
        try:
            interval = um.bca_interval(lambda i: values(np.asarray(i, dtype=int)), index, n_resamples=n_boot, seed=seed)
        except ValueError:
            return float("nan"), float("nan")
    return interval["ci_low"], interval["ci_high"]


def score(statistic: Statistic, runs: MethodRuns, truth: np.ndarray, rng: np.random.Generator,
          n_boot: int) -> dict[str, Any]:
    """Point value (mean over seeds), hierarchical CI, per-seed values and the seed sd."""
    n = len(truth)
    everything = np.arange(n)
    low, high = hierarchical_ci(lambda u, i: _average(statistic, runs, truth, i, u[runs.name]), [runs], n, rng, n_boot)
    per_seed = [statistic(m, s, truth) for m, s in runs.realisations()]
    return {"value": _average(statistic, runs, truth, everything), "ci_low": low, "ci_high": high,
            "per_seed": [float(v) for v in per_seed],
            "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None}


def paired_difference(statistic: Statistic, a: MethodRuns, b: MethodRuns, truth: np.ndarray,
                      rng: np.random.Generator, n_boot: int, *, seed: int = 0) -> dict[str, Any]:
    """statistic(a) − statistic(b): hierarchical CI (seeds and structures; the verdicts') and the
    BCa CI over structures with every seed kept; ``half_width``: half the hierarchical CI."""
    n = len(truth)

    def difference(index: np.ndarray, units: dict[str, np.ndarray] | None = None) -> float:
        units = units or {}
        return (_average(statistic, a, truth, index, units.get(a.name))
                - _average(statistic, b, truth, index, units.get(b.name)))

    low, high = hierarchical_ci(lambda u, i: difference(i, u), [a, b], n, rng, n_boot)
    bca_low, bca_high = _structure_bca(difference, n, n_boot, seed)
    return {"value": difference(np.arange(n)), "ci_low": low, "ci_high": high, "half_width": (high - low) / 2,
            "bca_structures_only": {"ci_low": bca_low, "ci_high": bca_high}}


def verdict(diff: dict[str, float], *, positive_holds: bool = True) -> Verdict:
    if diff["ci_low"] > 0:
        return "holds" if positive_holds else "does not hold"
    if diff["ci_high"] < 0:
        return "does not hold" if positive_holds else "holds"
    return "inconclusive"


# ---- per-structure quantities (calibrated coverage, NLL) ---------------------------------------

def per_structure_score(values: np.ndarray, rng: np.random.Generator, n_boot: int,
                        reduce: Callable[[np.ndarray], float] = np.mean) -> dict[str, Any]:
    """A per-structure quantity [K, n] (K seeds) reduced over structures (mean by default), averaged
    over seeds, with the hierarchical CI."""
    k, n = values.shape
    point = float(np.mean([reduce(row) for row in values]))
    replicates = []
    for _ in range(n_boot):
        rows, index = rng.integers(0, k, k), rng.integers(0, n, n)
        replicates.append(np.mean([reduce(values[r, index]) for r in rows]))
    low, high = np.quantile(replicates, [0.025, 0.975])
    return {"value": point, "ci_low": float(low), "ci_high": float(high)}


# ---- claim 2: rho against S, and what sampling noise alone would give --------------------------

def ence_score(means: np.ndarray, stds: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
               n_boot: int) -> dict[str, float]:
    """ENCE over std deciles (Levi et al. 2022) of each realisation [K, n], averaged over them, with a
    percentile CI over bootstrap resamples of the structures (the same resample for every realisation)."""
    def value(index: np.ndarray) -> float:
        return float(np.mean([um.ence(m[index], s[index], truth[index]) for m, s in zip(means, stds)]))

    n = len(truth)
    values = [value(rng.integers(0, n, n)) for _ in range(n_boot)]
    low, high = np.quantile(values, [0.025, 0.975])
    return {"value": value(np.arange(n)), "ci_low": float(low), "ci_high": float(high)}


def sample_curve(draws: np.ndarray, truth: np.ndarray, sizes: list[int]) -> list[float]:
    """Spearman ρ(std of the first S draws, |error of their mean|) for each S; draws [S_max, n]."""
    return [spearman(draws[:s].mean(0), draws[:s].std(0, ddof=1), truth) for s in sizes]


#: random split-halves averaged per S in :func:`split_half_reliability`
SPLIT_HALF_REPEATS = 50


def split_half_reliability(draws: np.ndarray, sizes: list[int], *, repeats: int = SPLIT_HALF_REPEATS,
                           seed: int = 0) -> list[float]:
    """How reproducible the S-sample std is: the Spearman correlation of the std from S draws with
    the std from S other draws, averaged over ``repeats`` random disjoint pairs of S draws (one pair
    gives a value too noisy to use at S = 2); for S above half the draws, the Spearman–Brown
    step-up 2r/(1 + r) of the largest measured r. 1: sampling noise no longer moves the std's
    ranking; at or below 0 the std's ranking is sampling noise (docs/method.md §12)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    measured: dict[int, float] = {}
    for s in sizes:
        if 2 * s <= draws.shape[0]:
            values = []
            for _ in range(repeats):
                order = rng.permutation(draws.shape[0])
                values.append(spearmanr(draws[order[:s]].std(0, ddof=1), draws[order[s:2 * s]].std(0, ddof=1)).statistic)
            measured[s] = float(np.nanmean(values))
    out = []
    for s in sizes:
        if s in measured:
            out.append(measured[s])
            continue
        base = max(measured)
        r, steps = measured[base], int(round(np.log2(s / base)))
        for _ in range(steps):
            r = 2 * r / (1 + r)
        out.append(float(r))
    return out


def noise_only_curve(rho_at_largest: float, reliability: list[float]) -> list[float | None]:
    """ρ expected at each S if only sampling noise changed: the attenuation ρ(S) = ρ∞ √rel(S) with
    ρ∞ = ρ(S_max) / √rel(S_max) (Spearman's correction for attenuation; docs/method.md §12).
    Undefined (None) where the reliability is not positive: the correction divides by it or takes
    its root, and no number is built on a clipped value."""
    top = reliability[-1]
    return [float(rho_at_largest * np.sqrt(r / top)) if r > 0 and top > 0 else None for r in reliability]


def log_slope(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of ρ against log2 S (ρ per doubling of S)."""
    return float(np.polyfit(np.log2(sizes), values, 1)[0])


def sweep(name: str, draws: np.ndarray, truth: np.ndarray, sizes: list[int], n_boot: int, seed: int) -> dict[str, Any]:
    """One sampling method's ρ-vs-S curve from draws [S_max, n] (the first S of them at each S),
    its trend (slope per doubling, BCa CI over structures), the split-half reliability of the std
    and the curve sampling noise alone predicts."""
    curve = sample_curve(draws, truth, sizes)
    reliability = split_half_reliability(draws, sizes)
    expected = noise_only_curve(curve[-1], reliability)
    low, high = _structure_bca(lambda i: log_slope(sizes, sample_curve(draws[:, i], truth[i], sizes)), len(truth), n_boot, seed)
    rise = curve[-1] - curve[0]
    expected_rise = expected[-1] - expected[0] if None not in (expected[0], expected[-1]) else None
    return {"method": name, "sizes": sizes, "spearman": curve, "split_half_reliability": reliability,
            "noise_only_expected_spearman": expected,
            "slope_per_doubling": {"value": log_slope(sizes, curve), "ci_low": low, "ci_high": high},
            "rise": rise, "noise_only_expected_rise": expected_rise,
            "rise_beyond_noise": rise - expected_rise if expected_rise is not None else None}


def rise_difference(a: np.ndarray, b: np.ndarray, truth: np.ndarray, sizes: list[int], n_boot: int,
                    seed: int) -> dict[str, float]:
    """(ρ(S_max) − ρ(S_min)) of draws ``a`` minus that of draws ``b`` ([S_max, n] each), BCa CI over
    structures (paired)."""
    ends = [sizes[0], sizes[-1]]

    def difference(index: np.ndarray) -> float:
        ra, rb = (sample_curve(d[:, index], truth[index], ends) for d in (a, b))
        return (ra[1] - ra[0]) - (rb[1] - rb[0])

    low, high = _structure_bca(difference, len(truth), n_boot, seed)
    return {"value": difference(np.arange(len(truth))), "ci_low": low, "ci_high": high}


def ensemble_size_sweep(member_draws: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The ensemble of the first M members, M = 2 .. all: ρ and MAE."""
    rows = {}
    for size in range(2, member_draws.shape[0] + 1):
        subset = member_draws[:size]
        rows[str(size)] = {"spearman": spearman(subset.mean(0), subset.std(0, ddof=1), truth),
                           "mae_ev": um.mae(subset.mean(0), truth)}
    return rows


# ---- the claims --------------------------------------------------------------------------------

def claim_1(balora: MethodRuns, peers: list[MethodRuns], truth: np.ndarray, rng: np.random.Generator,
            n_boot: int) -> dict[str, Any]:
    """ρ(BaLoRA) − ρ(peer) for every uncertainty peer; the verdict per peer: holds when the CI lies
    above 0, does not hold when below, else inconclusive."""
    out = {}
    for peer in peers:
        diff = paired_difference(spearman, balora, peer, truth, rng, n_boot)
        out[peer.name] = {"spearman_difference": diff, "verdict": verdict(diff)}
    return out


def non_inferiority(diff: dict[str, float], margin: float) -> Verdict:
    """Non-inferiority of a difference (higher is better) at ``margin``: holds when its CI lies above
    −margin, does not hold when it lies below, else inconclusive."""
    if diff["ci_low"] > -margin:
        return "holds"
    if diff["ci_high"] < -margin:
        return "does not hold"
    return "inconclusive"


def claim_2(balora_sweep: dict[str, Any], control_sweep: dict[str, Any], rise_vs_control: dict[str, float]) -> dict[str, Any]:
    """Holds when BaLoRA's ρ rises with S (slope CI > 0) and by more than the MC-dropout control's
    (difference of rises CI > 0); does not hold when its slope CI < 0 or its rise is below the
    control's (CI < 0); else inconclusive."""
    slope = balora_sweep["slope_per_doubling"]
    if slope["ci_low"] > 0 and rise_vs_control["ci_low"] > 0:
        result = "holds"
    elif slope["ci_high"] < 0 or rise_vs_control["ci_high"] < 0:
        result = "does not hold"
    else:
        result = "inconclusive"
    return {"statement": "BaLoRA's Spearman correlation improves as the number of samples S grows, by more than "
                         "an MC-dropout sampler's",
            "balora": balora_sweep, "control": control_sweep, "rise_difference_balora_minus_control": rise_vs_control,
            "verdict": result}


def claim_3(balora: MethodRuns, lora: MethodRuns, full: MethodRuns, truth: np.ndarray, *, margin_ev: float,
            rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """Non-inferiority: MAE(BaLoRA) − MAE(LoRA) < margin (CI upper end), does not hold when the CI
    lies above the margin. Closer to full fine-tuning: mean |μ_BaLoRA − μ_full| − mean |μ_LoRA − μ_full|
    per structure, CI below 0. The claim holds when both parts hold, does not hold when either
    does not, else inconclusive."""
    mae_diff = paired_difference(mae, balora, lora, truth, rng, n_boot)
    if mae_diff["ci_high"] < margin_ev:
        accuracy_part = "holds"
    elif mae_diff["ci_low"] > margin_ev:
        accuracy_part = "does not hold"
    else:
        accuracy_part = "inconclusive"
    full_mean = full.realisations()[0][0]
    distance = lambda runs: MethodRuns(runs.name, np.abs(runs.means - full_mean), runs.stds, runs.pooled)  # noqa: E731
    closer = paired_difference(lambda m, s, t: float(np.mean(m)), distance(balora), distance(lora), truth, rng, n_boot)
    closer_part = verdict(closer, positive_holds=False)
    parts = (accuracy_part, closer_part)
    result = "holds" if all(p == "holds" for p in parts) else "does not hold" if "does not hold" in parts else "inconclusive"
    return {"statement": f"BaLoRA's mean prediction is non-inferior to LoRA's (MAE margin {margin_ev} eV) and closer "
                         "to full fine-tuning's",
            "margin_ev": margin_ev, "mae_difference_balora_minus_lora_ev": mae_diff, "accuracy_part": accuracy_part,
            "distance_to_full_difference_balora_minus_lora_ev": closer, "closer_part": closer_part, "verdict": result}
