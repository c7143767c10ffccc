"""The fit-then-calibrate pipeline: fit a model folder, its data-noise head, then calibrate it on its held-out calibration split.

The calibration split is never used for early stopping or for choosing hyperparameters. On it we
fit (docs/method.md §9):

- the conformal calibrator (crepes, normalised by the total std where the model has one, and
  Mondrian over predicted-gap bins when the split is large enough; ``CalibrationSettings``);
- the rule that makes the reported mean non-negative, chosen on the validation split;
- where the 5% that a 95% interval leaves out sits (its lower miss share), chosen on the
  validation split and on the calibration split covered by a calibrator fitted on validation;
- the OOD thresholds: quantiles of the epistemic std and of the embedding distance, plus the
  largest training cell.

Everything is stored in ``model.json`` under ``calibration``, so ``predict`` and ``screen`` use it.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mofbalora.config_schema import strict_from_dict
from mofbalora.data.datasets import load_labelled_dataset
from mofbalora.data_noise import fit_data_noise
from mofbalora.data.splits import Split
from mofbalora.model_folder import read_model_json, write_model_json
from mofbalora.predict import BandgapModel, Predictive, load_model
from mofbalora.training.config import TrainConfig
from mofbalora.training.fit import PreparedData, fit, prepare_data
from mofbalora.training.noise_head import NoiseHeadConfig
from mofbalora.uncertainty.conformal import MEAN_RULES, ConformalCalibrator
from mofbalora.uncertainty.intervals import check_lower_miss_share
from mofbalora.uncertainty.metrics import LARGE_GAP_EV, SMALL_GAP_EV, ence, mae, zms
from mofbalora.uncertainty.recalibration import RECALIBRATION_KINDS, StdRecalibrator

logger = logging.getLogger(__name__)


@dataclass
class CalibrationSettings:
    """The ``calibration`` section of ``pipelines/configs/uncertainty.yaml`` (docs/method.md §9).

    Attributes:
        mondrian_min_per_bin: calibration structures per predicted-gap bin (None: no Mondrian).
        mondrian_max_bins: the most bins.
        mean_rules: candidate rules for the non-negative reported mean (``conformal.MEAN_RULES``);
            the one with the lowest validation MAE is kept.
        lower_miss_shares: candidate shares of a 95% interval's 5% left below it, the first the
            default; :func:`choose_lower_miss_share` keeps one.
        min_per_end: structures needed at each end of the gap range (true gap below
            ``SMALL_GAP_EV``, above ``LARGE_GAP_EV``) on the two splits together to choose among
            the shares; with fewer, the first is kept.
        min_small_gap_coverage: when set, a share must cover at least this much below
            ``SMALL_GAP_EV`` (pooled over both splits) to be chosen: the near-metal coverage a release
            promises is a constraint, not a tie-break (None: the worse-end rule alone, as until v2.4).
        recalibrations: candidate recalibrations of the total std before the conformal step
            (``uncertainty.recalibration``), the first kept on a tie; :func:`choose_recalibration`
            keeps one. ``none`` (every model calibrated before 2026-12-06) is the identity.
        min_family_size, family_prior_n: the ``family`` factor's settings (``StdRecalibrator``).
        min_family_validation: validation structures a metal family needs to count in the rule.
    """

    mondrian_min_per_bin: int | None = 150
    mondrian_max_bins: int = 8
    mean_rules: tuple[str, ...] = MEAN_RULES
    lower_miss_shares: tuple[float, ...] = (0.5, 0.4, 0.3, 0.2)
    min_per_end: int = 30
    min_small_gap_coverage: float | None = 0.90
    recalibrations: tuple[str, ...] = ("none", "isotonic", "family", "isotonic+family", "isotonic+family+distance",
                                       "distance", "isotonic+distance")
    min_family_size: int = 20
    family_prior_n: float = 20.0
    min_family_validation: int = 30

    def __post_init__(self) -> None:
        self.mean_rules = tuple(self.mean_rules)
        if not self.mean_rules or set(self.mean_rules) - set(MEAN_RULES):
            raise ValueError(f"calibration.mean_rules must be a non-empty subset of {MEAN_RULES}")
        self.lower_miss_shares = tuple(check_lower_miss_share(float(share)) for share in self.lower_miss_shares)
        if not self.lower_miss_shares:
            raise ValueError("calibration.lower_miss_shares must hold at least one share")
        if self.min_per_end < 1:  # an end without structures has no coverage to compare
            raise ValueError(f"calibration.min_per_end must be at least 1, got {self.min_per_end}")
        if self.min_small_gap_coverage is not None and not 0 < self.min_small_gap_coverage < 1:
            raise ValueError(f"calibration.min_small_gap_coverage must lie in (0, 1), got {self.min_small_gap_coverage}")
        self.recalibrations = tuple(self.recalibrations)
        if not self.recalibrations or set(self.recalibrations) - set(RECALIBRATION_KINDS):
            raise ValueError(f"calibration.recalibrations must be a non-empty subset of {RECALIBRATION_KINDS}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CalibrationSettings":
        return strict_from_dict(cls, values, "calibration")

    @classmethod
    def from_record(cls, values: dict[str, Any]) -> "CalibrationSettings":
        """The settings a model.json records. One written before the lower miss share existed
        (2026-12-01) has none, and its intervals were central: it gets ``(0.5,)``, not today's
        candidates; one written before the recalibration existed (2026-12-06) gets ``none``, and
        one from before the near-metal floor no floor; so that refitting it reproduces it."""
        return cls.from_dict({"lower_miss_shares": [0.5], "recalibrations": ["none"], "min_small_gap_coverage": None,
                              **values})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_rules": list(self.mean_rules), "lower_miss_shares": list(self.lower_miss_shares),
                "recalibrations": list(self.recalibrations)}


def calibration_state(model: BandgapModel, samples: Sequence[Any], gaps_ev: np.ndarray, *, n_samples: int,
                      seed: int, quantile: float, settings: CalibrationSettings | None = None,
                      validation: tuple[Sequence[Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Fit the conformal calibrator and OOD thresholds on calibration ``samples`` (gaps in eV).

    With more than one candidate mean rule, ``validation`` (samples, gaps eV) chooses among them.
    """
    settings = settings or CalibrationSettings()
    gaps_ev = np.asarray(gaps_ev, dtype=float)
    model.recalibrator = None  # fitted here, on the raw total std
    predictive = model.predictive(samples, n_samples=n_samples, seed=seed)
    if (len(settings.mean_rules) > 1 or len(settings.recalibrations) > 1) and validation is None:
        raise ValueError("choosing among mean rules or recalibrations needs the validation split")
    val = None if validation is None else model.predictive(validation[0], n_samples=n_samples, seed=seed)
    recalibrator, recalibration_choice = choose_recalibration(
        predictive, gaps_ev, None if val is None else (val, np.asarray(validation[1], dtype=float)), settings)
    if recalibrator is not None:
        model.recalibrator = recalibrator
        predictive, val = (None if p is None else replace(p, std_total_raw=recalibrator.predict(
            p.std_total_raw, family=p.metal_family, distance=p.embedding_distance)) for p in (predictive, val))
    calibrator = conformal_calibrator(settings).fit(predictive.mean, predictive.std_total_raw, gaps_ev)
    val_mae_by_rule = {}
    if len(settings.mean_rules) > 1:
        for rule in settings.mean_rules:
            calibrator.mean_rule = rule
            val_mae_by_rule[rule] = mae(calibrator.point_prediction(val.mean, val.std_total_raw),
                                        np.asarray(validation[1], dtype=float))
    calibrator.mean_rule = min(val_mae_by_rule, key=val_mae_by_rule.get) if val_mae_by_rule else settings.mean_rules[0]
    if len(settings.lower_miss_shares) > 1 and validation is None:
        raise ValueError("choosing the lower miss share needs the validation split")
    calibrator.lower_miss_share, share_choice = (settings.lower_miss_shares[0], None) if val is None else \
        choose_lower_miss_share(calibrator, (predictive.mean, predictive.std_total_raw, gaps_ev),
                                (val.mean, val.std_total_raw, np.asarray(validation[1], dtype=float)), settings)
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
        "lower_miss_share": calibrator.lower_miss_share,
        "lower_miss_share_choice": share_choice,
        "recalibration": None if recalibrator is None else recalibrator.to_dict(),
        "recalibration_choice": recalibration_choice,
        "n_bins": 1 if calibrator.bin_thresholds_ is None else len(calibrator.bin_thresholds_) - 1,
        "validation_coverage_95": None if val is None else validation_coverage(calibrator, val.mean, val.std_total_raw,
                                                                               validation[1]),
    }


#: validation structures needed to choose a recalibration (ten std deciles of at least 10 each)
MIN_RECALIBRATION_VALIDATION = 100


def conformal_calibrator(settings: CalibrationSettings) -> ConformalCalibrator:
    """An unfitted conformal calibrator with the settings' Mondrian bins."""
    return ConformalCalibrator(mondrian_min_per_bin=settings.mondrian_min_per_bin,
                               mondrian_max_bins=settings.mondrian_max_bins)


def recalibration_score(mean_ev: np.ndarray, std_ev: np.ndarray, gaps_ev: np.ndarray, family: np.ndarray, *,
                        min_family: int) -> dict[str, Any]:
    """How consistent a std is on a split: ENCE over std deciles plus the mean |ln ZMS| over metal
    families with at least ``min_family`` structures (0 for a std right in every decile and family)."""
    labels, counts = np.unique(family, return_counts=True)
    # point values only: the rule reads no CI, so none is bootstrapped
    families = {int(g): zms(mean_ev[family == g], std_ev[family == g], gaps_ev[family == g])
                for g, n in zip(labels, counts) if g != 0 and n >= max(min_family, 2)}
    ence_value = ence(mean_ev, std_ev, gaps_ev)
    family_term = float(np.mean(np.abs(np.log(list(families.values()))))) if families else 0.0
    return {"ence": ence_value, "mean_abs_log_family_zms": family_term, "score": ence_value + family_term,
            "families": {g: round(z, 4) for g, z in families.items()}}


def choose_recalibration(calibration: Predictive, gaps_ev: np.ndarray,
                         validation: tuple[Predictive, np.ndarray] | None,
                         settings: CalibrationSettings) -> tuple[StdRecalibrator | None, dict[str, Any] | None]:
    """The recalibration of the total std, among ``settings.recalibrations`` (docs/method.md §9;
    ours). Each candidate is fitted on the calibration split, a conformal calibrator is fitted on its
    recalibrated stds, and the calibrated std it gives the validation split is scored by
    :func:`recalibration_score`; the lowest score is kept, the first listed on a tie (within 0.005).

    Returns:
        (recalibrator or None for ``none``, record of each candidate's validation score; None when
        there is one candidate).
    """
    kinds = settings.recalibrations

    def fitted(kind: str) -> StdRecalibrator | None:
        if kind == "none":
            return None
        return StdRecalibrator(kind=kind, min_family_size=settings.min_family_size,
                               family_prior_n=settings.family_prior_n).fit(
            calibration.std_total_raw, gaps_ev - calibration.mean, family=calibration.metal_family,
            distance=calibration.embedding_distance)

    if len(kinds) == 1:
        return fitted(kinds[0]), None
    val, val_gaps = validation
    if len(val_gaps) < MIN_RECALIBRATION_VALIDATION:  # ten std deciles of a few structures each say nothing
        return fitted(kinds[0]), {"kept_first_because": f"{len(val_gaps)} validation structures, fewer than "
                                                        f"{MIN_RECALIBRATION_VALIDATION}", "chosen": kinds[0]}
    candidates = []
    for kind in kinds:
        recalibrator = fitted(kind)
        cal_std, val_std = calibration.std_total_raw, val.std_total_raw
        if recalibrator is not None:
            cal_std = recalibrator.predict(cal_std, family=calibration.metal_family,
                                           distance=calibration.embedding_distance)
            val_std = recalibrator.predict(val_std, family=val.metal_family, distance=val.embedding_distance)
        conformal = conformal_calibrator(settings).fit(calibration.mean, cal_std, gaps_ev)
        score = recalibration_score(conformal.point_prediction(val.mean, val_std),
                                    conformal.calibrated_std(val.mean, val_std), val_gaps, val.metal_family,
                                    min_family=settings.min_family_validation)
        candidates.append({"kind": kind, **score, "recalibrator": recalibrator})
    best = candidates[0]
    for candidate in candidates[1:]:  # a later (richer) candidate must beat the kept one by more than 0.005
        if candidate["score"] < best["score"] - 0.005:
            best = candidate
    record = {"rule": "lowest validation ENCE + mean |ln ZMS| over metal families with >= "
                      f"{settings.min_family_validation} validation structures; an earlier candidate wins within 0.005",
              "candidates": [{k: v for k, v in c.items() if k != "recalibrator"} for c in candidates],
              "chosen": best["kind"]}
    return best["recalibrator"], record


def end_coverage(gaps_ev: np.ndarray, covered: np.ndarray) -> dict[str, list[int]]:
    """[covered, n] at each end of the gap range: true gaps below ``SMALL_GAP_EV`` (``small``) and
    above ``LARGE_GAP_EV`` (``large``)."""
    gaps_ev, covered = np.asarray(gaps_ev, dtype=float), np.asarray(covered, dtype=bool)
    return {end: [int(covered[mask].sum()), int(mask.sum())]
            for end, mask in (("small", gaps_ev < SMALL_GAP_EV), ("large", gaps_ev > LARGE_GAP_EV))}


def choose_lower_miss_share(calibrator: ConformalCalibrator, calibration: tuple[np.ndarray, np.ndarray, np.ndarray],
                            validation: tuple[np.ndarray, np.ndarray, np.ndarray],
                            settings: CalibrationSettings) -> tuple[float, dict[str, Any] | None]:
    """The share of a 95% interval's misses left below it, among ``settings.lower_miss_shares``
    (docs/method.md §9; ours). Each (mean, raw total std, true gap) triple is a split: ``calibrator``
    (fitted on ``calibration``) covers ``validation``, and a calibrator with the same settings fitted
    on ``validation`` covers ``calibration``, so every interval is scored on a split its calibrator
    never saw. Pooled over both, the rule keeps the share whose worse-covered end of the gap range
    (true gap below ``SMALL_GAP_EV`` or above ``LARGE_GAP_EV``) is covered best; the first listed
    wins a tie. With ``settings.min_small_gap_coverage``, only shares covering at least that much
    below ``SMALL_GAP_EV`` compete (if none does, the one covering most there is kept). With fewer than ``settings.min_per_end`` structures at an end, or a validation split
    too small to calibrate on, the first share is kept and the record says why.

    Returns:
        (share, record): the record lists each candidate's pooled end coverage, overall coverage and
        median width; None when there is one candidate.
    """
    shares = settings.lower_miss_shares
    if len(shares) == 1:
        return shares[0], None
    try:
        swapped = conformal_calibrator(settings).fit(*validation)
    except ValueError as error:  # too few validation structures for a 95% interval
        return shares[0], {"kept_first_because": str(error)}
    candidates = []
    for share in shares:
        pooled, widths = {"small": [0, 0], "large": [0, 0], "all": [0, 0]}, []
        for fitted, (mean, std, gaps) in ((calibrator, validation), (swapped, calibration)):
            fitted = copy.copy(fitted)  # the caller's calibrator keeps its share
            fitted.lower_miss_share = share  # the interval predict would report with this share
            lower, upper = fitted.interval(mean, std)
            covered = (gaps >= lower) & (gaps <= upper)
            widths.append(upper - lower)
            for end, (hits, n) in {**end_coverage(gaps, covered), "all": [int(covered.sum()), len(gaps)]}.items():
                pooled[end][0] += hits
                pooled[end][1] += n
        candidates.append({"lower_miss_share": share, "lower_tail": 0.05 * share,
                           **{f"{end}_covered_n": pooled[end] for end in pooled},
                           "median_width_ev": float(np.median(np.concatenate(widths))),
                           "worse_end_coverage": min(pooled[end][0] / pooled[end][1] for end in ("small", "large"))
                           if pooled["small"][1] and pooled["large"][1] else None})
    record: dict[str, Any] = {"rule": "max over shares of the worse end's pooled coverage; first listed wins ties",
                              "small_gap_ev": SMALL_GAP_EV, "large_gap_ev": LARGE_GAP_EV, "candidates": candidates}
    n_small, n_large = candidates[0]["small_covered_n"][1], candidates[0]["large_covered_n"][1]
    if min(n_small, n_large) < settings.min_per_end:
        record["kept_first_because"] = (f"fewer than {settings.min_per_end} structures at an end "
                                        f"({n_small} below {SMALL_GAP_EV} eV, {n_large} above {LARGE_GAP_EV} eV)")
        return shares[0], record
    floor = settings.min_small_gap_coverage
    eligible = candidates if floor is None else \
        [c for c in candidates if c["small_covered_n"][0] / c["small_covered_n"][1] >= floor]
    if floor is not None:
        record["rule"] = f"pooled coverage below {SMALL_GAP_EV} eV >= {floor}, then " + record["rule"]
    if not eligible:  # none keeps the promise: the one closest to it
        record["no_share_meets_small_gap_coverage"] = floor
        best = max(candidates, key=lambda c: c["small_covered_n"][0] / c["small_covered_n"][1])
    else:
        best = max(eligible, key=lambda c: c["worse_end_coverage"])  # max keeps the first of equals
    return best["lower_miss_share"], record


def validation_coverage(calibrator: ConformalCalibrator, mean_ev: np.ndarray, std_total_raw_ev: np.ndarray,
                        gaps_ev: np.ndarray) -> dict[str, Any]:
    """How the calibrated 95% intervals cover a split the calibrator never saw (validation): overall,
    in each Mondrian bin of the predicted gap, and at both ends of the gap range (true gaps below
    ``SMALL_GAP_EV`` and above ``LARGE_GAP_EV``). A check before the test split is scored; of the
    calibration, only the lower miss share is chosen with this split (:func:`choose_lower_miss_share`)."""
    gaps_ev = np.asarray(gaps_ev, dtype=float)
    lower, upper = calibrator.interval(mean_ev, std_total_raw_ev)
    covered = (gaps_ev >= lower) & (gaps_ev <= upper)
    bins, ends = calibrator.bin_index(mean_ev), end_coverage(gaps_ev, covered)
    return {"n": int(len(gaps_ev)), "all": float(covered.mean()),
            "by_bin": [{"n": int((bins == b).sum()), "coverage": float(covered[bins == b].mean()) if (bins == b).any()
                        else None} for b in range(calibrator.n_bins)],
            **{f"{end}_gap": {"threshold_ev": threshold, "n": ends[end][1],
                              "coverage": ends[end][0] / ends[end][1] if ends[end][1] else None}
               for end, threshold in (("small", SMALL_GAP_EV), ("large", LARGE_GAP_EV))}}


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
