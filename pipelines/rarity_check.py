"""A candidate recalibration checked on validation only (issue 45, 2026-12-07): does the std need to
grow for metal families that are rare in training?

On ``qmof-pbe``'s calibration and validation splits (v2.4/v2.5 weights, raw total std, S and seed as
calibrated), a factor k_r(r) with r = ln((N_train + 1) / (n_train(family) + 1)), an increasing
isotonic map of z² on r over equal-count bins (as ``StdRecalibrator``'s distance stage), is fitted on
the calibration split, alone and after the shipped ``distance`` stage; each is scored on validation
by the release rule (``fit_calibrate.recalibration_score``: ENCE + mean |ln ZMS| over metal families).
Not a release stage: it is kept only if it beats ``distance``.

    python -m pipelines.rarity_check   # ~5 min on 2 cores (predictions on 1,838 structures)
"""

from __future__ import annotations

import json

import numpy as np

from mofbalora.featurise.base import element_counts, metal_family
from mofbalora.fit_calibrate import CalibrationSettings, conformal_calibrator, recalibration_score
from mofbalora.predict import load_model
from mofbalora.pretrained import resolve_model
from mofbalora.training.fit import prepare_folder_data
from mofbalora.uncertainty.recalibration import StdRecalibrator, isotonic_knots


def family_rarity(family: np.ndarray, train_family: np.ndarray) -> np.ndarray:
    """ln((N + 1) / (n_family + 1)) per structure, n counted in the training part (N structures)."""
    counts = np.bincount(train_family, minlength=int(max(family.max(initial=0), train_family.max(initial=0))) + 1)
    return np.log((len(train_family) + 1) / (counts[family] + 1))


def scores(calibration, validation, train_family: np.ndarray, settings: CalibrationSettings) -> dict[str, dict]:
    """Validation score of none, distance, rarity and distance+rarity (each fitted on calibration)."""
    (cal, cal_gaps), (val, val_gaps) = calibration, validation
    out = {}
    for kind in ("none", "distance", "rarity", "distance+rarity"):
        cal_std, val_std = cal.std_total_raw, val.std_total_raw
        if "distance" in kind:
            stage = StdRecalibrator(kind="distance").fit(cal_std, cal_gaps - cal.mean, distance=cal.embedding_distance)
            cal_std = stage.predict(cal_std, distance=cal.embedding_distance)
            val_std = stage.predict(val_std, distance=val.embedding_distance)
        if "rarity" in kind:
            cal_r, val_r = (family_rarity(p.metal_family, train_family) for p in (cal, val))
            knots, factors = isotonic_knots(cal_r, ((cal_gaps - cal.mean) / cal_std) ** 2, increasing=True,
                                             min_bin_size=30)
            cal_std = cal_std * np.sqrt(np.interp(cal_r, knots, factors))
            val_std = val_std * np.sqrt(np.interp(val_r, knots, factors))
        conformal = conformal_calibrator(settings).fit(cal.mean, cal_std, cal_gaps)
        out[kind] = recalibration_score(conformal.point_prediction(val.mean, val_std),
                                        conformal.calibrated_std(val.mean, val_std), val_gaps, val.metal_family,
                                        min_family=settings.min_family_validation)
    return out


def main() -> None:
    folder = resolve_model(None)
    _, _, prepared = prepare_folder_data(folder)
    model = load_model(folder)
    model.recalibrator = None  # the raw total std, as the calibration stage sees it
    recorded = model.meta["calibration"]
    parts = {name: (model.predictive(prepared.parts[name][1], n_samples=recorded["samples"], seed=recorded["seed"]),
                    prepared.parts[name][2]) for name in ("calibration", "val")}
    train_family = metal_family(element_counts(prepared.parts["train"][1]))
    result = scores(parts["calibration"], parts["val"], train_family, CalibrationSettings())
    print(json.dumps({kind: {k: v for k, v in s.items()} for kind, s in result.items()}, indent=1, default=float))


if __name__ == "__main__":
    main()
