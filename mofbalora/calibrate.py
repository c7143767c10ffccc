"""Calibrate a trained model folder on its held-out calibration split, and fit-then-calibrate.

The calibration split is never used for early stopping or for choosing hyperparameters. On it we
fit (docs/method.md §9):

- the conformal calibrator (crepes, normalised by the total std where the model has one, and
  Mondrian over predicted-gap bins when the split is large enough; ``CalibrationSettings``);
- the rule that makes the reported mean non-negative, chosen on the validation split;
- the OOD thresholds: quantiles of the epistemic std and of the embedding distance, plus the
  largest training cell.

Everything is stored in ``model.json`` under ``calibration``, so ``predict`` and ``screen`` use it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mofbalora.config_schema import strict_from_dict
from mofbalora.data.datasets import load_labelled_dataset
from mofbalora.data_noise import fit_data_noise
from mofbalora.data.splits import Split
from mofbalora.model_folder import read_model_json, write_model_json
from mofbalora.predict import BandgapModel, load_model
from mofbalora.training.config import TrainConfig
from mofbalora.training.fit import PreparedData, fit, prepare_data
from mofbalora.training.noise_head import NoiseHeadConfig
from mofbalora.uncertainty.conformal import MEAN_RULES, ConformalCalibrator
from mofbalora.uncertainty.metrics import SMALL_GAP_EV, mae

logger = logging.getLogger(__name__)


@dataclass
class CalibrationSettings:
    """The ``calibration`` section of ``pipelines/configs/uncertainty.yaml`` (docs/method.md §9).

    Attributes:
        mondrian_min_per_bin: calibration structures per predicted-gap bin (None: no Mondrian).
        mondrian_max_bins: the most bins.
        mean_rules: candidate rules for the non-negative reported mean (``conformal.MEAN_RULES``);
            the one with the lowest validation MAE is kept.
    """

    mondrian_min_per_bin: int | None = 150
    mondrian_max_bins: int = 8
    mean_rules: tuple[str, ...] = MEAN_RULES

    def __post_init__(self) -> None:
        self.mean_rules = tuple(self.mean_rules)
        if not self.mean_rules or set(self.mean_rules) - set(MEAN_RULES):
            raise ValueError(f"calibration.mean_rules must be a non-empty subset of {MEAN_RULES}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CalibrationSettings":
        return strict_from_dict(cls, values, "calibration")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_rules": list(self.mean_rules)}


def calibration_state(model: BandgapModel, samples: Sequence[Any], gaps_ev: np.ndarray, *, n_samples: int,
                      seed: int, quantile: float, settings: CalibrationSettings | None = None,
                      validation: tuple[Sequence[Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Fit the conformal calibrator and OOD thresholds on calibration ``samples`` (gaps in eV).

    With more than one candidate mean rule, ``validation`` (samples, gaps eV) chooses among them.
    """
    settings = settings or CalibrationSettings()
    gaps_ev = np.asarray(gaps_ev, dtype=float)
    predictive = model.predictive(samples, n_samples=n_samples, seed=seed)
    calibrator = ConformalCalibrator(mondrian_min_per_bin=settings.mondrian_min_per_bin,
                                     mondrian_max_bins=settings.mondrian_max_bins).fit(
        predictive.mean, predictive.std_total_raw, gaps_ev)
    val_mae_by_rule = {}
    if len(settings.mean_rules) > 1 and validation is None:
        raise ValueError("choosing among mean rules needs the validation split")
    val = None if validation is None else model.predictive(validation[0], n_samples=n_samples, seed=seed)
    if len(settings.mean_rules) > 1:
        for rule in settings.mean_rules:
            calibrator.mean_rule = rule
            val_mae_by_rule[rule] = mae(calibrator.point_prediction(val.mean, val.std_total_raw),
                                        np.asarray(validation[1], dtype=float))
    calibrator.mean_rule = min(val_mae_by_rule, key=val_mae_by_rule.get) if val_mae_by_rule else settings.mean_rules[0]
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
        "normalised_rms_by_bin": calibrator.normalised_rms_by_bin_.tolist(),
        "settings": settings.to_dict(),
        "mean_rule": calibrator.mean_rule,
        "val_mae_ev_by_mean_rule": val_mae_by_rule,
        "n_bins": 1 if calibrator.bin_thresholds_ is None else len(calibrator.bin_thresholds_) - 1,
        "validation_coverage_95": None if val is None else validation_coverage(calibrator, val.mean, val.std_total_raw,
                                                                               validation[1]),
    }


def validation_coverage(calibrator: ConformalCalibrator, mean_ev: np.ndarray, std_total_raw_ev: np.ndarray,
                        gaps_ev: np.ndarray) -> dict[str, Any]:
    """How the calibrated 95% intervals cover a split the calibrator never saw (validation): overall,
    in each Mondrian bin of the predicted gap, and for true gaps below ``SMALL_GAP_EV``. A check
    before the test split is scored, not a choice: nothing is selected on it."""
    gaps_ev = np.asarray(gaps_ev, dtype=float)
    lower, upper = calibrator.interval(mean_ev, std_total_raw_ev)
    covered = (gaps_ev >= lower) & (gaps_ev <= upper)
    bins, small = calibrator.bin_index(mean_ev), gaps_ev < SMALL_GAP_EV
    return {"n": int(len(gaps_ev)), "all": float(covered.mean()),
            "by_bin": [{"n": int((bins == b).sum()), "coverage": float(covered[bins == b].mean()) if (bins == b).any()
                        else None} for b in range(calibrator.n_bins)],
            "small_gap": {"threshold_ev": SMALL_GAP_EV, "n": int(small.sum()),
                          "coverage": float(covered[small].mean()) if small.any() else None}}


def calibrate(folder: str | os.PathLike, *, data: str | os.PathLike | None = None, progress: bool = False,
              prepared: PreparedData | None = None, settings: CalibrationSettings | None = None) -> Path:
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
                                            seed=config.seed, quantile=config.ood_quantile, settings=settings,
                                            validation=prepared.parts["val"][1:])
    write_model_json(folder, {k: v for k, v in meta.items() if k != "format_version"})
    logger.info("calibrated %s on %d structures", folder, len(gaps))
    return folder


def fit_calibrated(config: TrainConfig, *, out_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                   noise_head: NoiseHeadConfig | None = None, settings: CalibrationSettings | None = None,
                   **fit_kwargs: Any) -> Path | None:
    """:func:`mofbalora.training.fit.fit`, then :func:`complete_uncertainty_stages`; each stage is
    skipped when done."""
    folder = fit(config, data=data, out_dir=out_dir, **fit_kwargs)
    if folder is None:
        return None
    return complete_uncertainty_stages(folder, data=data, noise_head=noise_head, settings=settings,
                                       progress=fit_kwargs.get("progress", False))


def complete_uncertainty_stages(folder: str | os.PathLike, *, data: str | os.PathLike | None = None,
                                noise_head: NoiseHeadConfig | None = None, settings: CalibrationSettings | None = None,
                                progress: bool = False) -> Path:
    """The stages after training of a fitted folder: the data-noise head
    (:func:`mofbalora.data_noise.fit_data_noise`), then :func:`calibrate`. They rerun when the folder
    is not calibrated or its head was fitted with another config. Defaults: the dataclasses'
    defaults, which are those of ``pipelines/configs/uncertainty.yaml``."""
    folder = Path(folder)
    noise_head = noise_head or NoiseHeadConfig()
    meta = read_model_json(folder)
    if meta.get("calibration") is None or (meta.get("noise_head") or {}).get("config") != noise_head.to_dict():
        config = TrainConfig.from_dict(meta["train_config"])
        dataset = load_labelled_dataset(data if data is not None else meta["data"]["source"],
                                        target=meta["data"]["target"])
        prepared = prepare_data(config, dataset, folder, progress=progress, split=Split.load(folder / meta["split_file"]))
        fit_data_noise(folder, prepared=prepared, config=noise_head, progress=progress)
        calibrate(folder, prepared=prepared, settings=settings)
    return folder
