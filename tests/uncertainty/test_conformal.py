"""The conformal calibrator (crepes) and the OOD flags on synthetic data with known answers."""

import json

import numpy as np
import pytest

from mofbalora.uncertainty.conformal import MIN_CALIBRATION, ConformalCalibrator
from mofbalora.uncertainty.ood import EmbeddingDistance, ood_reasons


@pytest.fixture
def heteroscedastic():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 1.0, 6000)
    pred = rng.normal(2.0, 1.0, 6000)
    truth = pred + rng.normal(0.0, sigma)  # the residual is independent of the prediction
    return pred, sigma, truth


@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0])
def test_normalised_intervals_cover_whatever_the_std_scale(heteroscedastic, scale):
    """Stds off by any constant factor (as raw BaLoRA stds are) still give nominal coverage."""
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], sigma[:2000] * scale, truth[:2000])
    for confidence in (0.68, 0.95):
        lower, upper = calibrator.interval(pred[2000:], sigma[2000:] * scale, confidence=confidence, lower_bound_ev=None)
        coverage = np.mean((truth[2000:] >= lower) & (truth[2000:] <= upper))
        assert coverage == pytest.approx(confidence, abs=0.02)
    # normalised: the width follows sigma
    lower, upper = calibrator.interval(pred[2000:], sigma[2000:] * scale, lower_bound_ev=None)
    assert np.corrcoef(upper - lower, sigma[2000:])[0, 1] > 0.99
    assert calibrator.calibrated_std(pred[:3], sigma[:3] * scale) == pytest.approx(sigma[:3], rel=0.1)


def test_an_interval_with_another_tail_split_misses_as_often_below_and_above_as_asked(heteroscedastic):
    """``lower_tail`` (benchmarks/small_gap_check.py row 6, last at tag v0.1.0): 95% coverage whatever the split, with
    ``lower_tail`` of the misses below; the default is the central interval."""
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], sigma[:2000], truth[:2000])
    test_pred, test_sigma, test_truth = pred[2000:], sigma[2000:], truth[2000:]
    central = calibrator.interval(test_pred, test_sigma, lower_bound_ev=None)
    assert np.allclose(central, calibrator.interval(test_pred, test_sigma, lower_bound_ev=None, lower_tail=0.025))
    for lower_tail in (0.0, 0.01, 0.04):
        lower, upper = calibrator.interval(test_pred, test_sigma, lower_bound_ev=None, lower_tail=lower_tail)
        assert np.mean(test_truth < lower) == pytest.approx(lower_tail, abs=0.006)
        assert np.mean(test_truth > upper) == pytest.approx(0.05 - lower_tail, abs=0.01)
    for bad in (-0.01, 0.06):
        with pytest.raises(ValueError, match="lower_tail"):
            calibrator.interval(test_pred, test_sigma, lower_tail=bad)


def test_the_lower_miss_share_moves_the_misses_and_is_kept_on_save(heteroscedastic):
    """``lower_miss_share`` s: a 95% interval misses s·5% below and the rest above; ½ is the central
    interval bit for bit (every model calibrated before the share existed loads as ½)."""
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], sigma[:2000], truth[:2000])
    test_pred, test_sigma, test_truth = pred[2000:], sigma[2000:], truth[2000:]
    central = calibrator.interval(test_pred, test_sigma, lower_bound_ev=None)
    for share in (0.2, 0.8):
        calibrator.lower_miss_share = share
        lower, upper = calibrator.interval(test_pred, test_sigma, lower_bound_ev=None)
        assert np.mean(test_truth < lower) == pytest.approx(0.05 * share, abs=0.006)
        assert np.mean(test_truth > upper) == pytest.approx(0.05 * (1 - share), abs=0.008)
        restored = ConformalCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
        assert restored.lower_miss_share == share
        np.testing.assert_array_equal(restored.interval(test_pred, test_sigma, lower_bound_ev=None), (lower, upper))
    state = calibrator.to_dict()
    del state["lower_miss_share"]  # a model.json from before the share
    np.testing.assert_array_equal(ConformalCalibrator.from_dict(state).interval(test_pred, test_sigma, lower_bound_ev=None),
                                  central)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="lower_miss_share"):
            ConformalCalibrator(lower_miss_share=bad)


def _one_end_skewed(rng, low_end: bool, n: int = 1500):
    """Two predicted gaps, one Mondrian bin each. In one bin the errors all point to its end of the
    gap range, uniform over 0–1.2 eV, so the sixth with the largest errors (beyond 1 eV) crosses
    the end's threshold: near-metals predicted at 1.5 eV (``low_end``), or wide-gap insulators
    predicted at 3 eV. The other bin's errors are narrow (±0.2 eV) and all of it lies beyond the
    other end's threshold."""
    skewed, narrow = rng.uniform(0.0, 1.2, n), rng.uniform(-0.2, 0.2, n)
    if low_end:
        pred, truth = np.repeat([1.5, 4.5], n), np.r_[1.5 - skewed, 4.5 + narrow]
    else:
        pred, truth = np.repeat([0.25, 3.0], n), np.r_[0.25 + narrow, 3.0 + skewed]
    return pred, np.ones(2 * n), truth


@pytest.mark.parametrize("low_end", [True, False])
def test_the_lower_miss_share_rule_covers_the_worse_end_best(low_end):
    """calibrate.choose_lower_miss_share on a known answer. In the skewed bin, a 95% interval with
    lower miss share s leaves 5%·s (near-metals) or 5%·(1 − s) (insulators) of the bin outside, all
    of them from the sixth beyond the threshold, so that end is covered 1 − 0.3·s or 1 − 0.3·(1 − s);
    the other end 0.95 whatever s. The worse end is the skewed one, and it is covered best by the
    share that moves the misses away from it: 0.2 for near-metals, the central 0.5 for insulators."""
    from mofbalora.fit_calibrate import CalibrationSettings, choose_lower_miss_share

    rng = np.random.default_rng(3)
    calibration, validation = _one_end_skewed(rng, low_end), _one_end_skewed(rng, low_end)
    settings = CalibrationSettings(mondrian_min_per_bin=1500)
    calibrator = ConformalCalibrator(mondrian_min_per_bin=1500).fit(*calibration)
    assert calibrator.n_bins == 2
    share, record = choose_lower_miss_share(calibrator, calibration, validation, settings)
    assert share == (0.2 if low_end else 0.5) and "kept_first_because" not in record
    skewed_end, other_end = ("small", "large") if low_end else ("large", "small")
    for candidate in record["candidates"]:
        s = candidate["lower_miss_share"]
        hits, n = candidate[f"{skewed_end}_covered_n"]
        assert hits / n == pytest.approx(1 - 0.3 * (s if low_end else 1 - s), abs=0.03)
        hits, n = candidate[f"{other_end}_covered_n"]
        assert hits / n == pytest.approx(0.95, abs=0.01)
        assert candidate["all_covered_n"][1] == 6000
    # too few structures at an end: the first share is kept, and the record says why
    share, record = choose_lower_miss_share(calibrator, calibration, validation,
                                            CalibrationSettings(mondrian_min_per_bin=1500, min_per_end=10_000))
    assert share == 0.5 and "fewer than 10000" in record["kept_first_because"]
    with pytest.raises(ValueError, match="min_per_end"):
        CalibrationSettings(min_per_end=0)


def test_near_metal_coverage_floor_overrides_the_worse_end():
    """Both ends skewed: near-metals lose 0.3·s of their coverage to a share s, wide-gap insulators
    about 0.55·(1 − s). The worse-end rule keeps the central 0.5 (0.85 below 0.5 eV, ~0.72 above
    4 eV); with a 0.90 floor below 0.5 eV only 0.2 (0.94) may be chosen."""
    from mofbalora.fit_calibrate import CalibrationSettings, choose_lower_miss_share

    def both_ends(rng, n=3000):
        metals, insulators = rng.uniform(0.0, 1.2, n), rng.uniform(0.0, 1.1, n)
        return np.repeat([1.5, 3.0], n), np.ones(2 * n), np.r_[1.5 - metals, 3.0 + insulators]

    rng = np.random.default_rng(5)
    calibration, validation = both_ends(rng), both_ends(rng)
    calibrator = ConformalCalibrator(mondrian_min_per_bin=3000).fit(*calibration)
    settings = dict(mondrian_min_per_bin=3000, lower_miss_shares=(0.5, 0.2))
    share, _ = choose_lower_miss_share(calibrator, calibration, validation,
                                       CalibrationSettings(**settings, min_small_gap_coverage=None))
    assert share == 0.5
    share, record = choose_lower_miss_share(calibrator, calibration, validation,
                                            CalibrationSettings(**settings, min_small_gap_coverage=0.90))
    assert share == 0.2 and ">= 0.9" in record["rule"]
    small = {c["lower_miss_share"]: c["small_covered_n"][0] / c["small_covered_n"][1] for c in record["candidates"]}
    assert small[0.5] == pytest.approx(0.85, abs=0.02) and small[0.2] == pytest.approx(0.94, abs=0.02)
    # a floor no share reaches: the one covering most below 0.5 eV, and the record says so
    share, record = choose_lower_miss_share(calibrator, calibration, validation,
                                            CalibrationSettings(**settings, min_small_gap_coverage=0.99))
    assert share == 0.2 and record["no_share_meets_small_gap_coverage"] == 0.99
    with pytest.raises(ValueError, match="min_small_gap_coverage"):
        CalibrationSettings(min_small_gap_coverage=1.5)


def test_constant_width_for_deterministic_models(heteroscedastic):
    pred, _, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], np.full(2000, np.nan), truth[:2000])
    lower, upper = calibrator.interval(pred[2000:], None, lower_bound_ev=None)
    assert np.ptp(upper - lower) < 1e-9
    assert np.mean((truth[2000:] >= lower) & (truth[2000:] <= upper)) == pytest.approx(0.95, abs=0.02)
    assert np.isnan(calibrator.calibrated_std(pred[:4], None)).all()


def test_window_probability_is_calibrated_and_never_certain(heteroscedastic):
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], sigma[:2000], truth[:2000])
    p = calibrator.window_probability(pred[2000:], sigma[2000:], 1.5, 3.0)
    inside = (truth[2000:] >= 1.5) & (truth[2000:] <= 3.0)
    assert p.max() < 1.0  # a finite calibration set never yields certainty
    for low, high in ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0)):  # reliability: binned probabilities match frequencies
        chosen = (p >= low) & (p < high)
        assert inside[chosen].mean() == pytest.approx(p[chosen].mean(), abs=0.05)


@pytest.mark.parametrize("min_per_bin", [None, 400])
def test_the_cdf_is_crepes_mean_p_value_and_does_not_depend_on_the_row_order(heteroscedastic, min_per_bin):
    """crepes' smoothed p-value draws γ per row of a call: p_metallic moved by up to 1/(n + 1) when a
    structure moved in the list. The CDF is its mean over γ (½), the same for a row alone or in a list."""
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator(mondrian_min_per_bin=min_per_bin).fit(pred[:2000], sigma[:2000], truth[:2000])
    test_pred, test_sigma = pred[2000:2300], sigma[2000:2300]
    for value in (0.1, 2.0):
        p = calibrator.cdf(test_pred, test_sigma, value)
        crepes_upper = calibrator._cps.predict(test_pred, sigmas=test_sigma, bins=calibrator.gap_bins(test_pred),
                                               y=value, smoothing=False)  # (#{<= v} + 1) / (n + 1)
        pool_sizes = np.bincount(calibrator.bin_index(pred[:2000]))[calibrator.bin_index(test_pred)]
        np.testing.assert_allclose(p, crepes_upper - 0.5 / (pool_sizes + 1), atol=1e-12)  # no ties here
        order = np.random.default_rng(1).permutation(len(test_pred))
        np.testing.assert_array_equal(calibrator.cdf(test_pred[order], test_sigma[order], value), p[order])
        alone = [calibrator.cdf(test_pred[i:i + 1], test_sigma[i:i + 1], value)[0] for i in range(5)]
        np.testing.assert_array_equal(alone, p[:5])
    window = calibrator.window_probability(test_pred, test_sigma, 1.5, 3.0)
    np.testing.assert_array_equal(calibrator.window_probability(test_pred[::-1], test_sigma[::-1], 1.5, 3.0),
                                  window[::-1])
    np.testing.assert_allclose(window, calibrator.cdf(test_pred, test_sigma, 3.0) - calibrator.cdf(test_pred, test_sigma, 1.5),
                               atol=1e-12)


def test_round_trip_and_errors(heteroscedastic):
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:500], sigma[:500], truth[:500])
    restored = ConformalCalibrator.from_dict(calibrator.to_dict())
    np.testing.assert_allclose(restored.interval(pred[500:600], sigma[500:600]),
                               calibrator.interval(pred[500:600], sigma[500:600]))
    np.testing.assert_allclose(restored.cdf(pred[:50], sigma[:50], 2.0), calibrator.cdf(pred[:50], sigma[:50], 2.0))
    with pytest.raises(ValueError, match="at least 39"):
        ConformalCalibrator().fit(pred[: MIN_CALIBRATION - 1], sigma[: MIN_CALIBRATION - 1], truth[: MIN_CALIBRATION - 1])
    with pytest.raises(ValueError, match="pass y_std"):
        calibrator.interval(pred[:3], None)
    with pytest.raises(ValueError, match="positive"):
        ConformalCalibrator().fit(pred[:100], np.zeros(100), truth[:100])
    with pytest.raises(ValueError, match="call fit"):
        ConformalCalibrator().interval(pred[:3], sigma[:3])


def test_embedding_distance_flags_far_points_and_large_cells():
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (500, 8))
    distance = EmbeddingDistance(k=5).fit(train)
    near, far = distance.score(rng.normal(0, 1, (50, 8))), distance.score(rng.normal(6, 1, (50, 8)))
    assert far.min() > near.max()
    thresholds = {"quantile": 0.95, "epistemic_std_ev": 0.3, "embedding_distance": float(np.quantile(near, 0.95)),
                  "train_n_atoms_max": 100}
    reasons = ood_reasons(epistemic_std_ev=np.array([0.1, 0.5, 0.1, np.nan]),
                          embedding_distance=np.array([near.min(), near.min(), far.min(), near.min()]),
                          n_atoms=np.array([50, 50, 50, 150]), thresholds=thresholds)
    assert reasons[0] == "" and "epistemic std" in reasons[1] and "embedding far" in reasons[2]
    assert "150 atoms, more than any training structure" in reasons[3]


@pytest.fixture
def noise_by_gap():
    """Residual spread that depends on the predicted gap in a way the std does not know: twice as
    wide below 1.5 eV, so one global residual distribution under-covers there."""
    rng = np.random.default_rng(1)
    n = 8000
    pred = rng.uniform(0.5, 4.0, n)
    sigma = rng.uniform(0.2, 1.0, n)
    truth = pred + sigma * rng.normal(size=n) * np.where(pred < 1.5, 2.0, 1.0)
    return pred, sigma, truth


def _coverage_by_range(calibrator, pred, sigma, truth):
    lower, upper = calibrator.interval(pred, sigma, lower_bound_ev=None)
    inside = (truth >= lower) & (truth <= upper)
    return inside[pred < 1.5].mean(), inside[pred >= 1.5].mean()


def test_mondrian_bins_hold_coverage_in_each_gap_range(noise_by_gap):
    pred, sigma, truth = noise_by_gap
    cal, test = slice(0, 1500), slice(1500, None)
    plain = ConformalCalibrator().fit(pred[cal], sigma[cal], truth[cal])
    mondrian = ConformalCalibrator(mondrian_min_per_bin=150, mondrian_max_bins=8).fit(pred[cal], sigma[cal], truth[cal])
    assert plain.bin_thresholds_ is None and len(mondrian.bin_thresholds_) == 8 + 1  # min(1500 // 150, 8) bins
    low_plain, _ = _coverage_by_range(plain, pred[test], sigma[test], truth[test])
    low, high = _coverage_by_range(mondrian, pred[test], sigma[test], truth[test])
    assert low_plain < 0.9  # the marginal system fails where the noise is wider
    assert low == pytest.approx(0.95, abs=0.025) and high == pytest.approx(0.95, abs=0.025)


def test_mondrian_calibrator_is_saved_loaded_and_applied(noise_by_gap):
    import json

    pred, sigma, truth = noise_by_gap
    calibrator = ConformalCalibrator(mondrian_min_per_bin=300).fit(pred[:1500], sigma[:1500], truth[:1500])
    loaded = ConformalCalibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_array_equal(loaded.bin_thresholds_, calibrator.bin_thresholds_)
    np.testing.assert_array_equal(loaded.gap_bins(pred[1500:]), calibrator.gap_bins(pred[1500:]))
    for a, b in zip(loaded.interval(pred[1500:], sigma[1500:]), calibrator.interval(pred[1500:], sigma[1500:])):
        np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(loaded.crps(pred[1500:1600], sigma[1500:1600], truth[1500:1600]),
                               calibrator.crps(pred[1500:1600], sigma[1500:1600], truth[1500:1600]))


def test_calibrated_std_and_draws_follow_the_bin_of_the_interval(noise_by_gap):
    """The std a row reports, and draws of its calibrated distribution, come from the same bin's
    residuals as its interval: twice as wide below 1.5 eV, where the noise is twice as wide."""
    pred, sigma, truth = noise_by_gap
    calibrator = ConformalCalibrator(mondrian_min_per_bin=150).fit(pred[:1500], sigma[:1500], truth[:1500])
    test = slice(1500, None)
    calibrated_std = calibrator.calibrated_std(pred[test], sigma[test])
    # ranges away from the bin that straddles 1.5 eV
    ranges = {2.0: pred[test] < 1.3, 1.0: pred[test] > 1.9}
    normalised_error = (truth[test] - pred[test]) / calibrated_std
    for noise_factor, rows in ranges.items():
        assert np.median(calibrated_std[rows] / sigma[test][rows]) == pytest.approx(noise_factor, rel=0.1)
        # the calibrated std is the RMS of held-out residuals there
        assert np.sqrt(np.mean(normalised_error[rows] ** 2)) == pytest.approx(1.0, abs=0.08)
    draws = calibrator.sample(pred[test], sigma[test], 400, seed=3)
    assert draws.shape == (400, len(pred) - 1500) and (draws >= 0).all()
    np.testing.assert_array_equal(draws, calibrator.sample(pred[test], sigma[test], 400, seed=3))
    lower, upper = calibrator.interval(pred[test], sigma[test])
    inside = (draws >= lower) & (draws <= upper)
    for rows in ranges.values():  # the draws' share inside the 95% interval: at least 95% in each range
        assert 0.95 <= inside[:, rows].mean() <= 0.99  # (conformal ranks are conservative on a finite pool)


def test_predictive_distribution_is_censored_at_zero():
    rng = np.random.default_rng(2)
    pred = rng.uniform(-0.6, 3.0, 3000)
    sigma = rng.uniform(0.2, 0.8, 3000)
    truth = pred + sigma * rng.normal(size=3000)
    calibrator = ConformalCalibrator(mean_rule="censored").fit(pred[:1000], sigma[:1000], truth[:1000])
    test_pred, test_sigma = np.array([-2.0, -0.3, 0.05, 2.0]), np.full(4, 0.5)
    lower, upper = calibrator.interval(test_pred, test_sigma)
    assert (lower >= 0).all() and (upper >= lower).all() and upper[0] == 0.0  # all mass below 0: [0, 0]
    assert (calibrator.cdf(test_pred, test_sigma, -0.01) == 0).all()
    # a window from 0 eV holds the point mass at 0: P(0 <= gap <= 0.1) is P(gap <= 0.1)
    np.testing.assert_allclose(calibrator.window_probability(test_pred, test_sigma, 0.0, 0.1),
                               calibrator.cdf(test_pred, test_sigma, 0.1))
    assert calibrator.cdf(test_pred, test_sigma, 0.1)[0] == pytest.approx(1.0, abs=1 / 1001)  # conformal resolution
    censored = calibrator.point_prediction(test_pred, test_sigma)
    assert censored[0] == 0 and (censored[1:] > 0).all() and censored[-1] == pytest.approx(2.0 + np.mean(truth[:1000] - pred[:1000]), abs=0.1)
    calibrator.mean_rule = "clip"
    np.testing.assert_array_equal(calibrator.point_prediction(test_pred, test_sigma), [0.0, 0.0, 0.05, 2.0])


def test_crps_per_structure_is_crepes_mean(heteroscedastic):
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:500], sigma[:500], truth[:500])
    per_structure = calibrator.crps(pred[500:800], sigma[500:800], truth[500:800])
    crepes_mean = calibrator._cps.evaluate(pred[500:800], truth[500:800], sigmas=sigma[500:800], metrics=["CRPS"])
    assert per_structure.mean() == pytest.approx(crepes_mean["CRPS"])
    # a sharper, still calibrated distribution (the true sigma, not a constant) scores lower
    constant = ConformalCalibrator().fit(pred[:500], np.full(500, np.nan), truth[:500])
    assert per_structure.mean() < constant.crps(pred[500:800], None, truth[500:800]).mean()


def test_bins_and_predictions_do_not_depend_on_a_global_rng(noise_by_gap):
    """Predictions on a bin edge (calibration predictions sit on them) land in the same bin every
    time: crepes' binning breaks such ties with np.random, which moved the censored mean by 0.005 eV
    between two calls of the shipped model."""
    pred, sigma, truth = noise_by_gap
    pred = np.round(pred, 2)  # repeated predictions (duplicate structures): bin edges land on them
    calibrator = ConformalCalibrator(mondrian_min_per_bin=150, mean_rule="censored").fit(
        pred[:1500], sigma[:1500], truth[:1500])
    queries = np.concatenate([calibrator.bin_thresholds_[1:-1], pred[1500:1510]])
    std = np.full(len(queries), 0.5)
    outputs = []
    for seed in (1, 2):
        np.random.seed(seed)
        outputs.append((calibrator.gap_bins(calibrator.predictions_), calibrator.point_prediction(queries, std),
                        *calibrator.interval(queries, std)))
    for first, second in zip(*outputs):
        np.testing.assert_array_equal(first, second)


def test_validation_coverage_counts_each_bin_and_the_small_gaps():
    """calibrate.validation_coverage on a known answer: calibration residuals spread evenly over
    [-1, 1] eV (σ = 1) in two predicted-gap bins, so every 95% interval is ŷ ± ~0.95 eV."""
    from mofbalora.fit_calibrate import validation_coverage

    grid = np.linspace(-1, 1, 500)
    predicted = np.repeat([1.0, 3.0], 500)
    calibrator = ConformalCalibrator(mondrian_min_per_bin=500).fit(predicted, np.ones(1000), predicted + np.tile(grid, 2))
    assert calibrator.n_bins == 2
    # bin 0 (ŷ = 1): residuals 0, 0.5 inside; 0.99 outside; truth 0.3 (residual -0.7) is a small gap inside
    # bin 1 (ŷ = 3): residual 0.9 inside; -1.5 and 1.5 outside; truth 0.2 (residual -2.8) a small gap outside
    mean = np.array([1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    truth = np.array([1.0, 1.5, 1.99, 0.3, 3.9, 1.5, 4.5, 0.2])
    result = validation_coverage(calibrator, mean, np.ones(8), truth)
    assert result["n"] == 8 and result["all"] == pytest.approx(4 / 8)
    assert [b["n"] for b in result["by_bin"]] == [4, 4]
    assert [b["coverage"] for b in result["by_bin"]] == pytest.approx([3 / 4, 1 / 4])
    assert result["small_gap"] == {"threshold_ev": 0.5, "n": 2, "coverage": pytest.approx(0.5)}
    # truth 4.5 (residual 1.5) is the one gap above 4 eV, outside; 3.9 is below the threshold
    assert result["large_gap"] == {"threshold_ev": 4.0, "n": 1, "coverage": 0.0}


def test_settings_recorded_before_the_lower_miss_share_refit_central():
    """A model.json written before the share existed (qmof-pbe v2.3 and earlier) records no
    candidates; refitting it with today's four would change its intervals (v2.3's near-metal coverage
    went 0.869 -> 0.924 when reproduced so). Its record means central; a record with shares keeps them."""
    from mofbalora.fit_calibrate import CalibrationSettings
    from mofbalora.model_folder import read_model_json
    from mofbalora.pretrained import resolve_model

    current = read_model_json(resolve_model("qmof-pbe"))["calibration"]["settings"]
    old = {k: v for k, v in current.items()
           if k not in ("lower_miss_shares", "min_per_end", "recalibrations", "min_small_gap_coverage")}  # as v2.3 recorded it
    assert CalibrationSettings.from_record(old).lower_miss_shares == (0.5,)
    assert CalibrationSettings.from_record(old).to_dict() == {**CalibrationSettings.from_dict(old).to_dict(),
                                                              "lower_miss_shares": [0.5], "recalibrations": ["none"],
                                                              "min_small_gap_coverage": None}
    assert CalibrationSettings.from_record(current).lower_miss_shares == tuple(current["lower_miss_shares"])
