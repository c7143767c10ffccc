"""Split-conformal calibration of band-gap predictions with crepes' ConformalPredictiveSystem.

Fitted on a calibration split that training never saw (docs/method.md §9). For a model with a
predictive std (BaLoRA, the LoRA ensemble) the system is normalised by that std; for a
deterministic model (``std`` NaN) it is the standard, constant-width system. The result is a
calibrated predictive CDF per structure, from which intervals and window probabilities follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from crepes import ConformalPredictiveSystem

#: the smallest calibration set whose 95% interval is finite: ceil((n + 1) · 0.975) <= n
MIN_CALIBRATION = 39

#: the CPDs are smoothed with this fixed seed, so a prediction never depends on a global RNG
SMOOTHING_SEED = 0


class ConformalCalibrator:
    """Normalised (or standard) conformal predictive system; scikit-learn style.

    Fitted attributes:
        residuals_: calibration residuals y − ŷ (eV), [n_cal].
        sigmas_: the calibration stds (eV) or None for a deterministic model.
        normalised_rms_: RMS of the normalised residuals; calibrated std = sigma · normalised_rms_.
    """

    def fit(self, y_pred: np.ndarray, y_std: np.ndarray | None, y_true: np.ndarray) -> "ConformalCalibrator":
        y_pred, y_true = _as_1d(y_pred, "y_pred"), _as_1d(y_true, "y_true")
        if len(y_pred) != len(y_true):
            raise ValueError("y_pred and y_true must have the same length")
        if len(y_pred) < MIN_CALIBRATION:
            raise ValueError(f"need at least {MIN_CALIBRATION} calibration structures for a finite 95% interval, "
                             f"got {len(y_pred)}")
        sigmas = _sigmas(y_std, len(y_pred))
        self.residuals_ = y_true - y_pred
        self.sigmas_ = sigmas
        scale = 1.0 if sigmas is None else sigmas
        self.normalised_rms_ = float(np.sqrt(np.mean((self.residuals_ / scale) ** 2)))
        self._cps = ConformalPredictiveSystem().fit(self.residuals_, sigmas=sigmas)
        return self

    @property
    def normalised(self) -> bool:
        self._check_fitted()
        return self.sigmas_ is not None

    def interval(self, y_pred: np.ndarray, y_std: np.ndarray | None, *, confidence: float = 0.95,
                 lower_bound_ev: float | None = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Central calibrated interval (eV); the lower end is clipped at ``lower_bound_ev`` (gaps ≥ 0)."""
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
        y_pred, sigmas = self._inputs(y_pred, y_std)
        if len(y_pred) == 0:
            return np.zeros(0), np.zeros(0)
        tail = 100 * (1 - confidence) / 2
        bounds = self._cps.predict(y_pred, sigmas=sigmas, lower_percentiles=[tail], higher_percentiles=[100 - tail])
        bounds = np.asarray(bounds, dtype=float).reshape(len(y_pred), 2)
        lower, upper = bounds[:, 0], bounds[:, 1]
        if lower_bound_ev is not None:
            lower = np.maximum(lower, lower_bound_ev)
        return lower, upper

    def cdf(self, y_pred: np.ndarray, y_std: np.ndarray | None, value_ev: float | np.ndarray) -> np.ndarray:
        """Calibrated P(gap ≤ value) per structure, from the conformal predictive distribution."""
        y_pred, sigmas = self._inputs(y_pred, y_std)
        if len(y_pred) == 0:
            return np.zeros(0)
        values = np.broadcast_to(np.asarray(value_ev, dtype=float), y_pred.shape)
        p = self._cps.predict(y_pred, sigmas=sigmas, y=values, seed=SMOOTHING_SEED)
        return np.asarray(p, dtype=float).reshape(len(y_pred))

    def window_probability(self, y_pred: np.ndarray, y_std: np.ndarray | None, low_ev: float,
                           high_ev: float) -> np.ndarray:
        """Calibrated P(low ≤ gap ≤ high)."""
        if not low_ev < high_ev:
            raise ValueError(f"window must have low < high, got {low_ev}:{high_ev}")
        return np.clip(self.cdf(y_pred, y_std, high_ev) - self.cdf(y_pred, y_std, low_ev), 0.0, 1.0)

    def calibrated_std(self, y_std: np.ndarray | None, n: int) -> np.ndarray:
        """sigma · RMS of the calibration split's normalised residuals (eV); NaN for deterministic models."""
        self._check_fitted()
        if self.sigmas_ is None:
            return np.full(n, np.nan)
        return _as_1d(y_std, "y_std") * self.normalised_rms_

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fitted state; :meth:`from_dict` refits the (cheap) crepes system from it."""
        self._check_fitted()
        return {"kind": "crepes.ConformalPredictiveSystem", "normalised": self.normalised,
                "residuals_ev": self.residuals_.tolist(),
                "sigmas_ev": None if self.sigmas_ is None else self.sigmas_.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "ConformalCalibrator":
        residuals = np.asarray(state["residuals_ev"], dtype=float)
        sigmas = None if state["sigmas_ev"] is None else np.asarray(state["sigmas_ev"], dtype=float)
        # fit on (ŷ = 0, y = residual) reproduces exactly the stored residuals
        return cls().fit(np.zeros_like(residuals), sigmas, residuals)

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
