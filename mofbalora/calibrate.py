"""Calibrate a trained model folder on its held-out calibration split, and fit-then-calibrate.

The calibration split is never used for early stopping or for choosing hyperparameters. On it we
fit (docs/method.md §9):

- the conformal calibrator (crepes, normalised by the total std where the model has one);
- the OOD thresholds: quantiles of the epistemic std and of the embedding distance, plus the
  largest training cell.

Everything is stored in ``model.json`` under ``calibration``, so ``predict`` and ``screen`` use it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mofbalora.data.datasets import load_labelled_dataset
from mofbalora.data.splits import Split
from mofbalora.model_folder import read_model_json, write_model_json
from mofbalora.predict import BandgapModel, load_model
from mofbalora.training.config import TrainConfig
from mofbalora.training.fit import PreparedData, fit, prepare_data
from mofbalora.uncertainty.conformal import ConformalCalibrator

logger = logging.getLogger(__name__)


def calibration_state(model: BandgapModel, samples: Sequence[Any], gaps_ev: np.ndarray, *, n_samples: int,
                      seed: int, quantile: float) -> dict[str, Any]:
    """Fit the conformal calibrator and OOD thresholds on calibration ``samples`` (gaps in eV)."""
    gaps_ev = np.asarray(gaps_ev, dtype=float)
    predictive = model.predictive(samples, n_samples=n_samples, seed=seed)
    calibrator = ConformalCalibrator().fit(predictive.mean, predictive.std_total_raw, gaps_ev)
    finite_std = predictive.std_epistemic[np.isfinite(predictive.std_epistemic)]
    return {
        "conformal": calibrator.to_dict(),
        "ood": {
            "quantile": quantile,
            "epistemic_std_ev": float(np.quantile(finite_std, quantile)) if len(finite_std) else None,
            "embedding_distance": float(np.quantile(predictive.embedding_distance, quantile)),
            "train_n_atoms_max": model.meta["data"]["train_n_atoms_max"],
        },
        "n_calibration": int(len(gaps_ev)),
        "samples": n_samples,
        "seed": seed,
        "calibration_mae_ev": float(np.mean(np.abs(predictive.mean - gaps_ev))),
        "normalised_rms": calibrator.normalised_rms_,
    }


def calibrate(folder: str | os.PathLike, *, data: str | os.PathLike | None = None, progress: bool = False,
              prepared: PreparedData | None = None) -> Path:
    """Calibrate the model folder on its own calibration split and record it in ``model.json``.

    ``prepared`` (:func:`~mofbalora.training.fit.prepare_data` of this folder) spares reading the
    data again when the caller already has it.

    Raises:
        ValueError: when the folder's split has no calibration part, or the labels differ.
    """
    folder = Path(folder)
    meta = read_model_json(folder)
    config = TrainConfig.from_dict(meta["train_config"])
    split = Split.load(folder / meta["split_file"])
    if not split.calibration:
        raise ValueError(f"{folder}: its split has no calibration part; refit with four split fractions")
    if prepared is None:
        dataset = load_labelled_dataset(data if data is not None else meta["data"]["source"],
                                        target=meta["data"]["target"])
        prepared = prepare_data(config, dataset, folder, progress=progress, split=split)
    if prepared.labels_sha256 != meta["data"]["labels_sha256"]:
        raise ValueError(f"{folder}: the labels differ from those the model was trained on")
    _, samples, gaps = prepared.parts["calibration"]
    model = load_model(folder)
    meta["calibration"] = calibration_state(model, samples, gaps, n_samples=config.calibration_samples,
                                            seed=config.seed, quantile=config.ood_quantile)
    write_model_json(folder, {k: v for k, v in meta.items() if k != "format_version"})
    logger.info("calibrated %s on %d structures", folder, len(gaps))
    return folder


def fit_calibrated(config: TrainConfig, *, out_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                   **fit_kwargs: Any) -> Path | None:
    """:func:`mofbalora.training.fit.fit`, then :func:`calibrate` (skipped when already calibrated)."""
    folder = fit(config, data=data, out_dir=out_dir, **fit_kwargs)
    if folder is None:
        return None
    if read_model_json(folder).get("calibration") is None:
        calibrate(folder, data=data, progress=fit_kwargs.get("progress", False))
    return folder
