"""The conformal calibrator (crepes) and the OOD flags on synthetic data with known answers."""

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
    """``lower_tail`` (benchmarks/small_gap_check.py row 6): 95% coverage whatever the split, with
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
    from mofbalora.calibrate import validation_coverage

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
