"""Recalibration of the total std before the conformal step: a consistent σ (docs/method.md §9; ours).

The conformal calibrator fixes the scale of the intervals per predicted-gap bin, not whether the std
is right for *which* structure: on `qmof-pbe` v2.4 the surest tenth of the test split erred 18%
more than its std said and the least sure 20–27% less, and whole metal families were mis-scaled.
:class:`StdRecalibrator` maps the raw total std σ to σ' = σ · √(k_σ(σ) · k_family · k_d(d)), each
factor a mean squared z-score fitted on the calibration split, in this order:

- ``isotonic``: k_σ, an isotonic regression of z² = (y − ŷ)²/σ² on log σ (direction chosen by the
  data) over equal-count bins of σ (at least ``min_bin_size`` structures each, so that a few
  extreme residuals at either end cannot set a step), so that RMSE/RMV is 1 along σ; the map
  σ ↦ σ·√k_σ(σ) is then made non-decreasing (its running maximum), so the order of the stds is kept;
- ``family``: k_family, the mean z² of the structure's metal family (the metal with the most
  atoms in the cell), shrunk towards 1 by ``family_prior_n`` pseudo-structures; a family with
  fewer than ``min_family_size`` calibration structures keeps 1;
- ``distance``: k_d, an increasing isotonic regression of z² on the embedding distance to the
  training set, so that σ' can only grow with unfamiliar chemistry.

Which stages run is the ``kind``; the release chooses it on validation by the rule declared in
``pipelines/configs/uncertainty.yaml``. Follows scikit-learn: ``fit`` returns self; fitted state ends in ``_``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
from sklearn.isotonic import IsotonicRegression

RecalibrationKind = Literal["none", "isotonic", "family", "isotonic+family", "isotonic+family+distance", "distance",
                            "isotonic+distance"]
RECALIBRATION_KINDS: tuple[str, ...] = get_args(RecalibrationKind)
#: bounds on each fitted factor k: a few extreme residuals must not zero or explode a std
FACTOR_BOUNDS = (0.25, 4.0)


class StdRecalibrator:
    """σ' = σ · √(k_σ(σ) · k_family · k_d(distance)) (module docstring).

    Args:
        kind: which factors to fit (:data:`RECALIBRATION_KINDS`); ``none`` is the identity.
        min_family_size: calibration structures a metal family needs for its own factor.
        family_prior_n: pseudo-structures at z² = 1 added to each family's mean (shrinkage).
    """

    def __init__(self, *, kind: RecalibrationKind = "isotonic+family", min_family_size: int = 20,
                 family_prior_n: float = 20.0, min_bin_size: int = 30) -> None:
        if kind not in RECALIBRATION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(RECALIBRATION_KINDS)}, got {kind!r}")
        if min_family_size < 1 or family_prior_n < 0 or min_bin_size < 1:
            raise ValueError("min_family_size and min_bin_size must be >= 1, family_prior_n >= 0")
        self.kind, self.min_family_size, self.family_prior_n = kind, min_family_size, family_prior_n
        self.min_bin_size = min_bin_size

    @property
    def stages(self) -> tuple[str, ...]:
        return () if self.kind == "none" else tuple(self.kind.split("+"))

    def fit(self, std_ev: np.ndarray, residual_ev: np.ndarray, *, family: np.ndarray | None = None,
            distance: np.ndarray | None = None) -> "StdRecalibrator":
        """Fit on calibration structures: raw total std σ (eV, > 0), residual y − ŷ (eV), metal family
        (atomic number, 0 for none) and embedding distance, one per structure."""
        std_ev, residual_ev = self._check(std_ev, "std_ev"), self._check(residual_ev, "residual_ev", len(std_ev))
        if (std_ev <= 0).any():
            raise ValueError("std_ev must be positive")
        z2 = (residual_ev / std_ev) ** 2
        self.sigma_knots_ = self.sigma_factors_ = None
        self.family_factor_: dict[int, float] = {}
        self.family_n_: dict[int, int] = {}
        self.distance_knots_ = self.distance_factors_ = None
        if "isotonic" in self.stages:
            self.sigma_knots_, self.sigma_factors_ = _monotone_sigma_map(np.log(std_ev), z2, self.min_bin_size)
            z2 = z2 / self._sigma_factor(std_ev)
        if "family" in self.stages:
            family = self._check(family, "family", len(std_ev)).astype(int)
            for label in np.unique(family):
                inside = family == label
                self.family_n_[int(label)] = int(inside.sum())
                if label != 0 and inside.sum() >= self.min_family_size:
                    shrunk = (z2[inside].sum() + self.family_prior_n) / (inside.sum() + self.family_prior_n)
                    self.family_factor_[int(label)] = float(np.clip(shrunk, *FACTOR_BOUNDS))
            z2 = z2 / self._family_factor(family)
        if "distance" in self.stages:
            distance = self._check(distance, "distance", len(std_ev))
            finite = np.isfinite(distance)
            self.distance_knots_, self.distance_factors_ = isotonic_knots(distance[finite], z2[finite], increasing=True,
                                                                           min_bin_size=self.min_bin_size)
        return self

    def predict(self, std_ev: np.ndarray, *, family: np.ndarray | None = None,
                distance: np.ndarray | None = None) -> np.ndarray:
        """σ' in eV for raw total stds σ (NaN stays NaN)."""
        if not hasattr(self, "family_factor_"):
            raise ValueError("call fit first")
        std_ev = np.asarray(std_ev, dtype=float)
        factor = np.ones(len(std_ev))
        if "isotonic" in self.stages:
            factor *= self._sigma_factor(std_ev)
        if "family" in self.stages:
            factor *= self._family_factor(self._check(family, "family", len(std_ev)).astype(int))
        if "distance" in self.stages:
            distance = self._check(distance, "distance", len(std_ev))
            # an unknown distance (a folder without its training embeddings) keeps its factor at 1
            factor *= np.where(np.isfinite(distance), self._interpolate(distance, self.distance_knots_,
                                                                        self.distance_factors_), 1.0)
        return std_ev * np.sqrt(factor)

    def _sigma_factor(self, std_ev: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_std = np.log(std_ev)
        return np.where(np.isfinite(log_std), self._interpolate(log_std, self.sigma_knots_, self.sigma_factors_), 1.0)

    def _family_factor(self, family: np.ndarray) -> np.ndarray:
        return np.array([self.family_factor_.get(int(label), 1.0) for label in family])

    @staticmethod
    def _interpolate(x: np.ndarray, knots: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return np.interp(np.nan_to_num(x, nan=knots[0]), knots, factors)  # flat beyond the ends

    @staticmethod
    def _check(values: np.ndarray | None, name: str, n: int | None = None) -> np.ndarray:
        if values is None:
            raise ValueError(f"{name} is needed by this recalibration")
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or (n is not None and len(values) != n):
            raise ValueError(f"{name} must be a 1-D array of one value per structure")
        return values

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fitted state (``model.json["calibration"]["recalibration"]``)."""
        def listed(array):
            return None if array is None else [float(v) for v in array]

        return {"kind": self.kind, "min_family_size": self.min_family_size, "family_prior_n": self.family_prior_n,
                "min_bin_size": self.min_bin_size,
                "sigma_log_knots": listed(self.sigma_knots_), "sigma_factors": listed(self.sigma_factors_),
                "family_factor": {str(k): v for k, v in self.family_factor_.items()},
                "family_n": {str(k): v for k, v in self.family_n_.items()},
                "distance_knots": listed(self.distance_knots_), "distance_factors": listed(self.distance_factors_)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "StdRecalibrator":
        recalibrator = cls(kind=state["kind"], min_family_size=state["min_family_size"],
                           family_prior_n=state["family_prior_n"], min_bin_size=state["min_bin_size"])

        def array(key):
            return None if state.get(key) is None else np.asarray(state[key], dtype=float)

        recalibrator.sigma_knots_, recalibrator.sigma_factors_ = array("sigma_log_knots"), array("sigma_factors")
        recalibrator.family_factor_ = {int(k): float(v) for k, v in state["family_factor"].items()}
        recalibrator.family_n_ = {int(k): int(v) for k, v in state["family_n"].items()}
        recalibrator.distance_knots_, recalibrator.distance_factors_ = array("distance_knots"), array("distance_factors")
        return recalibrator


def isotonic_knots(x: np.ndarray, z2: np.ndarray, *, increasing: bool | str,
                   min_bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(knots, factors): sklearn's isotonic fit of the mean z² of equal-count bins of x (at least
    ``min_bin_size`` points each, weighted by their counts) on the bins' mean x, clipped to
    :data:`FACTOR_BOUNDS`; interpolated linearly between knots, flat beyond."""
    if len(x) < 2:
        raise ValueError("need at least two structures to fit a recalibration")
    order = np.argsort(x, kind="stable")
    chunks = np.array_split(order, max(1, len(x) // min_bin_size))
    centres = np.array([x[c].mean() for c in chunks])
    means = np.array([z2[c].mean() for c in chunks])
    weights = np.array([len(c) for c in chunks], dtype=float)
    if len(chunks) == 1:
        return np.array([centres[0], centres[0] + 1e-12]), np.clip([means[0]] * 2, *FACTOR_BOUNDS)
    fitted = IsotonicRegression(increasing=increasing).fit(centres, means, sample_weight=weights).predict(centres)
    return centres, np.clip(fitted, *FACTOR_BOUNDS)


def _monotone_sigma_map(log_std: np.ndarray, z2: np.ndarray, min_bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """k_σ at knots in log σ, adjusted so that σ·√k_σ(σ) never decreases between or at knots (the
    running maximum of the map on a dense grid, expressed back as factors)."""
    knots, factors = isotonic_knots(log_std, z2, increasing="auto", min_bin_size=min_bin_size)
    grid = np.linspace(knots[0], knots[-1], 512)
    mapped = np.maximum.accumulate(np.exp(grid) * np.sqrt(np.interp(grid, knots, factors)))
    return grid, np.clip((mapped / np.exp(grid)) ** 2, *FACTOR_BOUNDS)
