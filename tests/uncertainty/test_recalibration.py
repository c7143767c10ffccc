"""The std's recalibration before the conformal step: known answers on synthetic data, its choice
on validation, and a saved recalibration loaded and applied by the shipped model."""

import json
import shutil

import numpy as np
import pytest

from mofbalora.uncertainty import metrics as um
from mofbalora.uncertainty.recalibration import StdRecalibrator

ZN, CU, CO = 30, 29, 27


def _families_off(n: int = 6000, seed: int = 0, factor: float = 2.0):
    """Stds σ of three families; the errors of Co are ``factor``× larger than its σ says."""
    rng = np.random.default_rng(seed)
    family = rng.choice([ZN, CU, CO], size=n)
    std = rng.uniform(0.1, 0.6, n)
    true_std = std * np.where(family == CO, factor, 1.0)
    return std, rng.normal(0.0, true_std), family, true_std


def test_a_family_whose_std_is_off_by_a_known_factor_is_rescaled_by_it():
    std, residual, family, true_std = _families_off()
    recalibrated = StdRecalibrator(kind="family").fit(std, residual, family=family).predict(std, family=family)
    ratio = recalibrated / std
    assert np.median(ratio[family == CO]) == pytest.approx(2.0, rel=0.05)
    assert np.median(ratio[family == ZN]) == pytest.approx(1.0, rel=0.05)
    assert um.zms(np.zeros(len(std)), recalibrated, residual) == pytest.approx(1.0, abs=0.05)
    for label in (ZN, CU, CO):  # every family consistent afterwards
        inside = family == label
        assert um.zms(np.zeros(inside.sum()), recalibrated[inside], residual[inside]) == pytest.approx(1.0, abs=0.1)


def test_a_family_below_the_minimum_size_keeps_its_std_and_an_unknown_family_too():
    std, residual, family, _ = _families_off(n=3000)
    rare = np.flatnonzero(family == CO)[:10]
    keep = np.setdiff1d(np.flatnonzero(family == CO), rare)
    family = family.copy()
    family[keep] = ZN  # Co now has 10 structures
    recalibrator = StdRecalibrator(kind="family", min_family_size=20).fit(std, residual, family=family)
    assert CO not in recalibrator.family_factor_ and recalibrator.family_n_[CO] == 10
    assert recalibrator.predict(np.array([0.3]), family=np.array([CO]))[0] == pytest.approx(0.3)
    assert recalibrator.predict(np.array([0.3]), family=np.array([92]))[0] == pytest.approx(0.3)  # never seen


def test_isotonic_makes_rmse_equal_rmv_along_the_std():
    """A std that claims too little where it is small and too much where it is large (as v2.4's
    did): after the monotone map, RMSE/RMV is 1 in every decile, and the order of the stds is kept."""
    rng = np.random.default_rng(1)
    std = rng.uniform(0.1, 1.0, 8000)
    true_std = 0.1 + 0.7 * std  # too small below 0.33 eV, too large above
    residual = rng.normal(0.0, true_std)
    before = um.rmse_rmv_by_std_bin(np.zeros_like(std), std, residual)["ratio"]
    assert before.iloc[0] > 1.3 and before.iloc[-1] < 0.9
    recalibrator = StdRecalibrator(kind="isotonic").fit(std, residual)
    fresh = rng.uniform(0.1, 1.0, 8000)
    fresh_residual = rng.normal(0.0, 0.1 + 0.7 * fresh)
    after = um.rmse_rmv_by_std_bin(np.zeros_like(fresh), recalibrator.predict(fresh), fresh_residual)["ratio"]
    assert after.between(0.88, 1.12).all(), after.round(3).tolist()
    assert um.ence(np.zeros_like(fresh), recalibrator.predict(fresh), fresh_residual) < 0.05
    grid = np.linspace(0.1, 1.0, 50)
    assert (np.diff(recalibrator.predict(grid)) >= -1e-12).all()


def test_the_distance_factor_only_grows_with_distance():
    rng = np.random.default_rng(2)
    std = np.full(6000, 0.3)
    distance = rng.uniform(0.0, 2.0, 6000)
    residual = rng.normal(0.0, 0.3 * (1 + (distance > 1.5)))  # far structures err twice as much
    recalibrator = StdRecalibrator(kind="isotonic+family+distance").fit(
        std, residual, family=np.zeros(6000), distance=distance)
    near, far = recalibrator.predict(np.array([0.3, 0.3]), family=np.zeros(2), distance=np.array([0.5, 1.9]))
    assert near == pytest.approx(0.3, rel=0.1) and far == pytest.approx(0.6, rel=0.1)
    assert np.isnan(recalibrator.predict(np.array([np.nan]), family=np.zeros(1), distance=np.array([1.0])))[0]


def test_a_saved_recalibration_is_loaded_and_applied(tmp_path):
    """The shipped model with a recalibration written into its model.json: the std the conformal
    step reads is the recalibrated one, for the family it names only, and the state round-trips."""
    from mofbalora.data import read_structure
    from mofbalora.predict import load_model
    from mofbalora.pretrained import resolve_model
    from tests.conftest import ROOT

    std, residual, family, _ = _families_off()
    recalibrator = StdRecalibrator(kind="family").fit(std, residual, family=family)
    again = StdRecalibrator.from_dict(json.loads(json.dumps(recalibrator.to_dict())))
    np.testing.assert_array_equal(again.predict(std, family=family), recalibrator.predict(std, family=family))

    # the shipped model without its own recalibration (v2.5's distance map), then with a family one
    bare, folder = tmp_path / "bare", tmp_path / "model"
    for copy in (bare, folder):
        shutil.copytree(resolve_model(None), copy)
    meta = json.loads((folder / "model.json").read_text())
    (bare / "model.json").write_text(json.dumps({**meta, "calibration": {**meta["calibration"], "recalibration": None}}))
    state = recalibrator.to_dict()
    paths = sorted((ROOT / "examples" / "cifs").glob("*.cif"))
    shipped = load_model(bare)
    featuriser = shipped.backbone.make_featuriser()
    samples = [featuriser.featurise(read_structure(p), p.stem) for p in paths]
    before = shipped.predictive(samples)
    target = int(before.metal_family[0])  # HADPOU's: Pt
    assert target == 78 and (before.metal_family == target).sum() == 1
    state["family_factor"] = {str(target): 4.0}
    meta["calibration"]["recalibration"] = state
    (folder / "model.json").write_text(json.dumps(meta))
    after = load_model(folder).predictive(samples)
    scaled = after.metal_family == target
    np.testing.assert_allclose(after.std_total_raw[scaled], 2 * before.std_total_raw[scaled], rtol=1e-6)
    np.testing.assert_allclose(after.std_total_raw[~scaled], before.std_total_raw[~scaled], rtol=1e-6)
    np.testing.assert_allclose(after.mean, before.mean)
