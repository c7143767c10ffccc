"""Split-conformal calibration of band-gap predictions with crepes' ConformalPredictiveSystem.

Fitted on a calibration split that training never saw (docs/method.md §9). For a model with a
predictive std (BaLoRA, the LoRA ensemble) the system is normalised by that std; for a
deterministic model (``std`` NaN) it is the standard, constant-width system. With
``mondrian_min_per_bin`` the system is Mondrian: the calibration split is cut into equal-count bins
of the predicted gap (crepes ``MondrianCategorizer``), as many as its size allows, and each bin
gets its own residual distribution, so coverage holds per gap range and not only on average
(docs/method.md §9). The calibrated predictive distribution is censored at 0 eV: the mass the
conformal CDF puts below 0 is a point mass at 0 (a band gap is non-negative), which gives
``p_metallic`` and truncated intervals and window probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from crepes import ConformalPredictiveSystem
from crepes.extras import MondrianCategorizer

from mofbalora.uncertainty.intervals import check_lower_miss_share, check_window

#: the smallest calibration set whose 95% interval is finite: ceil((n + 1) · 0.975) <= n
MIN_CALIBRATION = 39

#: structures per block when a CDF compares each one's predictive distribution with a value
CDF_BLOCK_ROWS = 4096

#: how the reported mean is made non-negative (docs/method.md §9): ``clip`` max(ŷ, 0), or
#: ``censored`` the mean of the calibrated predictive distribution censored at 0 eV
MEAN_RULES = ("clip", "censored")


def predicted_gap(features: np.ndarray) -> np.ndarray:
    """The Mondrian score: the predicted gap (eV), the only column of ``features``."""
    return np.asarray(features)[:, 0]


class ConformalCalibrator:
    """Normalised (or standard), optionally Mondrian, conformal predictive system; scikit-learn style.

    Args:
        mondrian_min_per_bin: calibration structures per predicted-gap bin; the number of bins is
            ``n_cal // mondrian_min_per_bin`` (at most ``mondrian_max_bins``). None or one bin: no Mondrian.
        mondrian_max_bins: the most bins.
        mean_rule: one of :data:`MEAN_RULES`.
        lower_miss_share: the share of an interval's misses (1 − confidence) left below it, in
            (0, 1): ½ is the central interval; less moves both ends down (docs/method.md §9,
            chosen on validation by ``mofbalora.fit_calibrate.choose_lower_miss_share``).

    Fitted attributes:
        residuals_: calibration residuals y − ŷ (eV), [n_cal].
        predictions_: calibration predictions ŷ (eV), [n_cal] (they place each residual in its bin).
        sigmas_: the calibration stds (eV) or None for a deterministic model.
        bin_thresholds_: predicted-gap bin edges (eV, first −inf, last inf) or None.
        normalised_residuals_: the residuals over their stds, r_i/σ_i (the residuals without stds).
        normalised_rms_: RMS of all the normalised residuals.
        normalised_rms_by_bin_: RMS of the normalised residuals in each Mondrian bin, [n_bins] (one
            entry without bins); calibrated std = sigma · the entry of the prediction's bin.
    """

    def __init__(self, *, mondrian_min_per_bin: int | None = None, mondrian_max_bins: int = 8,
                 mean_rule: str = "clip", lower_miss_share: float = 0.5) -> None:
        if mean_rule not in MEAN_RULES:
            raise ValueError(f"mean_rule must be one of {MEAN_RULES}, got {mean_rule!r}")
        check_lower_miss_share(lower_miss_share)
        if mondrian_min_per_bin is not None and mondrian_min_per_bin < MIN_CALIBRATION:
            raise ValueError(f"mondrian_min_per_bin must be >= {MIN_CALIBRATION}, got {mondrian_min_per_bin}")
        self.mondrian_min_per_bin, self.mondrian_max_bins, self.mean_rule = (
            mondrian_min_per_bin, mondrian_max_bins, mean_rule)
        self.lower_miss_share = lower_miss_share

    def fit(self, y_pred: np.ndarray, y_std: np.ndarray | None, y_true: np.ndarray, *,
            bin_thresholds: np.ndarray | None = None) -> "ConformalCalibrator":
        """Fit on the calibration split; ``bin_thresholds`` (stored edges) replace the size rule."""
        y_pred, y_true = _as_1d(y_pred, "y_pred"), _as_1d(y_true, "y_true")
        if len(y_pred) != len(y_true):
            raise ValueError("y_pred and y_true must have the same length")
        if len(y_pred) < MIN_CALIBRATION:
            raise ValueError(f"need at least {MIN_CALIBRATION} calibration structures for a finite 95% interval, "
                             f"got {len(y_pred)}")
        sigmas = _sigmas(y_std, len(y_pred))
        self.residuals_, self.predictions_ = y_true - y_pred, y_pred
        self.sigmas_ = sigmas
        self.normalised_residuals_ = self.residuals_ / (1.0 if sigmas is None else sigmas)
        self.normalised_rms_ = float(np.sqrt(np.mean(self.normalised_residuals_ ** 2)))
        n_bins = 1 if self.mondrian_min_per_bin is None else min(len(y_pred) // self.mondrian_min_per_bin,
                                                                  self.mondrian_max_bins)
        if bin_thresholds is not None:
            self.bin_thresholds_ = np.asarray(bin_thresholds, dtype=float)
        elif n_bins > 1:  # equal-count edges from crepes; -inf and inf at the ends
            categorizer = MondrianCategorizer().fit(y_pred[:, None], f=predicted_gap, no_bins=n_bins)
            self.bin_thresholds_ = np.asarray(categorizer.bin_thresholds, dtype=float)
        else:
            self.bin_thresholds_ = None
        self._cps = ConformalPredictiveSystem().fit(self.residuals_, sigmas=sigmas, bins=self.gap_bins(y_pred))
        self._calibration_bins = self.bin_index(y_pred)
        self.normalised_rms_by_bin_ = np.array([
            np.sqrt(np.mean(self.normalised_residuals_[self._calibration_bins == b] ** 2))
            if (self._calibration_bins == b).any() else self.normalised_rms_ for b in range(self.n_bins)])
        return self

    @property
    def n_bins(self) -> int:
        """Mondrian bins (1 without)."""
        return 1 if self.bin_thresholds_ is None else len(self.bin_thresholds_) - 1

    def bin_index(self, y_pred: np.ndarray) -> np.ndarray:
        """Each prediction's bin as an index array (all 0 without bins)."""
        bins = self.gap_bins(y_pred)
        return np.zeros(len(y_pred), dtype=int) if bins is None else bins

    def gap_bins(self, y_pred: np.ndarray) -> np.ndarray | None:
        """The Mondrian bin (0, 1, ...) of each predicted gap (eV), or None without bins: bin i holds
        (edge_i, edge_i+1], as crepes' binning cuts, but without its random tie-breaking jitter
        (calibration predictions sit exactly on the edges, and a prediction must not depend on a
        global RNG)."""
        if self.bin_thresholds_ is None:
            return None
        return np.searchsorted(self.bin_thresholds_[1:-1], np.asarray(y_pred, dtype=float), side="left")

    @property
    def normalised(self) -> bool:
        self._check_fitted()
        return self.sigmas_ is not None

    def interval(self, y_pred: np.ndarray, y_std: np.ndarray | None, *, confidence: float = 0.95,
                 lower_bound_ev: float | None = 0.0, lower_tail: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated interval (eV) holding ``confidence`` of the predictive distribution, with
        :attr:`lower_miss_share` of the rest below it (the interval every prediction reports), or
        with ``lower_tail`` of the distribution below it (diagnostics; the small-gap check that used it is at tag v0.1.0, benchmarks/small_gap_check.py).
        The lower end is clipped at ``lower_bound_ev`` (gaps ≥ 0)."""
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
        if lower_tail is None:
            # written so that the central share ½ gives the percentiles of before, bit for bit
            low_percentile = 100 * (1 - confidence) * self.lower_miss_share
            high_percentile = 100 - 100 * (1 - confidence) * (1 - self.lower_miss_share)
        elif 0 <= lower_tail <= 1 - confidence:
            low_percentile, high_percentile = 100 * lower_tail, 100 * (lower_tail + confidence)
        else:
            raise ValueError(f"lower_tail must lie in [0, 1 - confidence], got {lower_tail}")
        y_pred, sigmas = self._inputs(y_pred, y_std)
        if len(y_pred) == 0:
            return np.zeros(0), np.zeros(0)
        bounds = self._cps.predict(y_pred, sigmas=sigmas, bins=self.gap_bins(y_pred), lower_percentiles=[low_percentile],
                                   higher_percentiles=[high_percentile],
                                   y_min=-np.inf if lower_bound_ev is None else lower_bound_ev)
        bounds = np.asarray(bounds, dtype=float).reshape(len(y_pred), 2)
        return bounds[:, 0], bounds[:, 1]

    def cdf(self, y_pred: np.ndarray, y_std: np.ndarray | None, value_ev: float | np.ndarray) -> np.ndarray:
        """Calibrated P(gap ≤ value) per structure, from the conformal predictive distribution
        censored at 0 eV: 0 below 0 eV, and the mass below 0 sits at 0 eV.

        The value is crepes' smoothed p-value (#{below} + γ·(#{equal} + 1)) / (n + 1) at γ = ½, its
        mean over γ (docs/method.md §9). crepes draws γ per row of a call, so its value for a
        structure would depend on the structure's place in the list."""
        y_pred, sigmas = self._inputs(y_pred, y_std)
        values = np.broadcast_to(np.asarray(value_ev, dtype=float), y_pred.shape)
        ranks, pool_sizes = self._mid_ranks(y_pred, sigmas, values)
        return np.where(values < 0, 0.0, ranks / (pool_sizes + 1))

    def window_probability(self, y_pred: np.ndarray, y_std: np.ndarray | None, low_ev: float,
                           high_ev: float) -> np.ndarray:
        """Calibrated P(low ≤ gap ≤ high) = CDF(high) − CDF(low); a window starting at or below 0 eV
        holds the point mass at 0. The two ranks are subtracted before dividing, so equal counts
        give equal probabilities to the last bit (a screen's ties stay ties)."""
        low_ev, high_ev = check_window((low_ev, high_ev))
        y_pred, sigmas = self._inputs(y_pred, y_std)
        if high_ev < 0:
            return np.zeros(len(y_pred))
        high_ranks, pool_sizes = self._mid_ranks(y_pred, sigmas, np.full(len(y_pred), high_ev))
        low_ranks = 0.0 if low_ev <= 0 else self._mid_ranks(y_pred, sigmas, np.full(len(y_pred), low_ev))[0]
        return np.clip((high_ranks - low_ranks) / (pool_sizes + 1), 0.0, 1.0)

    def _mid_ranks(self, y_pred: np.ndarray, sigmas: np.ndarray | None,
                   values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per structure, #{CPD values < v} + ½(#{CPD values = v} + 1) and the size n of its bin's
        pool; its CPD values are ŷ + σ·r_i/σ_i over the bin's calibration residuals, as in crepes."""
        ranks, pool_sizes = np.zeros(len(y_pred)), np.zeros(len(y_pred))
        for rows, scale, pool in self._bin_pools(y_pred, sigmas):
            indices = np.flatnonzero(rows)
            for start in range(0, len(indices), CDF_BLOCK_ROWS):  # bounded memory for long lists
                block = indices[start:start + CDF_BLOCK_ROWS]
                cpd = y_pred[block, None] + scale[start:start + CDF_BLOCK_ROWS, None] * pool[None, :]
                value = values[block, None]
                ranks[block] = (cpd < value).sum(1) + 0.5 * ((cpd == value).sum(1) + 1)
            pool_sizes[rows] = len(pool)
        return ranks, pool_sizes

    def point_prediction(self, y_pred: np.ndarray, y_std: np.ndarray | None) -> np.ndarray:
        """The reported mean (eV, ≥ 0) by :attr:`mean_rule`: ``clip`` max(ŷ, 0), or ``censored``
        the mean of the calibrated distribution censored at 0, mean over calibration residuals of
        max(ŷ + σ·r_i/σ_i, 0) in ŷ's bin."""
        y_pred, sigmas = self._inputs(y_pred, y_std)
        if self.mean_rule == "clip":
            return np.maximum(y_pred, 0.0)
        out = np.empty_like(y_pred)
        for rows, scale, pool in self._bin_pools(y_pred, sigmas):
            out[rows] = np.maximum(y_pred[rows, None] + scale[:, None] * pool[None, :], 0.0).mean(1)
        return out

    def _bin_pools(self, y_pred: np.ndarray, sigmas: np.ndarray | None):
        """Per Mondrian bin present in ``y_pred``: its rows (mask), their scale σ (1 un-normalised)
        and the bin's normalised calibration residuals r_i/σ_i."""
        scale = np.ones_like(y_pred) if sigmas is None else sigmas
        own = self.bin_index(y_pred)
        for b in np.unique(own):
            rows = own == b
            yield rows, scale[rows], self.normalised_residuals_[self._calibration_bins == b]

    def crps(self, y_pred: np.ndarray, y_std: np.ndarray | None, y_true: np.ndarray) -> np.ndarray:
        """Continuous ranked probability score (eV) of each structure's calibrated predictive
        distribution, [n] (crepes' CRPS, one structure at a time so that it can be bootstrapped)."""
        y_pred, sigmas = self._inputs(y_pred, y_std)
        y_true, bins = _as_1d(y_true, "y_true"), self.gap_bins(y_pred)
        if len(y_true) != len(y_pred):
            raise ValueError("y_pred and y_true must have the same length")
        out = np.empty(len(y_pred))
        for i in range(len(y_pred)):
            one = slice(i, i + 1)
            result = self._cps.evaluate(y_pred[one], y_true[one], sigmas=None if sigmas is None else sigmas[one],
                                        bins=None if bins is None else bins[one], metrics=["CRPS"])
            out[i] = result["CRPS"]
        return out

    def calibrated_std(self, y_pred: np.ndarray, y_std: np.ndarray | None) -> np.ndarray:
        """sigma · RMS of the normalised calibration residuals of ŷ's Mondrian bin (eV), the same
        residuals its interval comes from; NaN for deterministic models."""
        y_pred, sigmas = self._inputs(y_pred, y_std)
        if sigmas is None:
            return np.full(len(y_pred), np.nan)
        return sigmas * self.normalised_rms_by_bin_[self.bin_index(y_pred)]

    def sample(self, y_pred: np.ndarray, y_std: np.ndarray | None, draws: int, *, seed: int = 0) -> np.ndarray:
        """Band gaps (eV) drawn from each structure's calibrated predictive distribution censored at
        0 eV, [draws, n]: max(ŷ + σ·r_i/σ_i, 0) with i drawn uniformly from ŷ's bin's calibration
        residuals (the distribution its CDF and intervals come from)."""
        y_pred, sigmas = self._inputs(y_pred, y_std)
        rng, out = np.random.default_rng(seed), np.empty((draws, len(y_pred)))
        for rows, scale, pool in self._bin_pools(y_pred, sigmas):
            out[:, rows] = y_pred[rows] + scale * rng.choice(pool, size=(draws, int(rows.sum())))
        return np.maximum(out, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fitted state; :meth:`from_dict` refits the (cheap) crepes system from it."""
        self._check_fitted()
        return {"kind": "crepes.ConformalPredictiveSystem", "normalised": self.normalised,
                "residuals_ev": self.residuals_.tolist(), "predictions_ev": self.predictions_.tolist(),
                "sigmas_ev": None if self.sigmas_ is None else self.sigmas_.tolist(),
                "bin_thresholds_ev": None if self.bin_thresholds_ is None else
                [None if not np.isfinite(t) else float(t) for t in self.bin_thresholds_],
                "mean_rule": self.mean_rule, "lower_miss_share": self.lower_miss_share}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "ConformalCalibrator":
        """Refit from :meth:`to_dict` (a state from before Mondrian bins and stored predictions fits
        on ŷ = 0, which reproduces its residuals exactly; one from before the lower miss share has
        central intervals)."""
        residuals = np.asarray(state["residuals_ev"], dtype=float)
        predictions = np.asarray(state.get("predictions_ev") or np.zeros_like(residuals), dtype=float)
        sigmas = None if state["sigmas_ev"] is None else np.asarray(state["sigmas_ev"], dtype=float)
        thresholds = state.get("bin_thresholds_ev")
        edges = None if thresholds is None else np.array(
            [(-np.inf if i == 0 else np.inf) if t is None else t for i, t in enumerate(thresholds)])
        calibrator = cls(mean_rule=state.get("mean_rule", "clip"), lower_miss_share=state.get("lower_miss_share", 0.5))
        return calibrator.fit(predictions, sigmas, predictions + residuals, bin_thresholds=edges)

    def _inputs(self, y_pred: np.ndarray, y_std: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        self._check_fitted()
        y_pred = _as_1d(y_pred, "y_pred")
        if self.sigmas_ is None:
            return y_pred, None
        sigmas = _sigmas(y_std, len(y_pred))
        if sigmas is None:
            raise ValueError("this calibrator is normalised by the std: pass y_std")
        return y_pred, sigmas

    def _check_fitted(self) -> None:
        if not hasattr(self, "residuals_"):
            raise ValueError("call fit first")


def _as_1d(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def _sigmas(y_std: np.ndarray | None, n: int) -> np.ndarray | None:
    """The std as crepes' difficulty estimate, or None when the model has none (all NaN)."""
    if y_std is None:
        return None
    std = np.asarray(y_std, dtype=float)
    if std.shape != (n,):
        raise ValueError(f"y_std must have shape ({n},), got {std.shape}")
    if n and np.isnan(std).all():
        return None
    if not np.isfinite(std).all() or (std <= 0).any():
        raise ValueError("y_std must be positive and finite (or all NaN for a deterministic model)")
    return std
