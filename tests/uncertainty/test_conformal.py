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
    assert calibrator.calibrated_std(sigma[:3] * scale, 3) == pytest.approx(sigma[:3], rel=0.1)


def test_constant_width_for_deterministic_models(heteroscedastic):
    pred, _, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], np.full(2000, np.nan), truth[:2000])
    lower, upper = calibrator.interval(pred[2000:], None, lower_bound_ev=None)
    assert np.ptp(upper - lower) < 1e-9
    assert np.mean((truth[2000:] >= lower) & (truth[2000:] <= upper)) == pytest.approx(0.95, abs=0.02)
    assert np.isnan(calibrator.calibrated_std(None, 4)).all()


def test_window_probability_is_calibrated_and_never_certain(heteroscedastic):
    pred, sigma, truth = heteroscedastic
    calibrator = ConformalCalibrator().fit(pred[:2000], sigma[:2000], truth[:2000])
    p = calibrator.window_probability(pred[2000:], sigma[2000:], 1.5, 3.0)
    inside = (truth[2000:] >= 1.5) & (truth[2000:] <= 3.0)
    assert p.max() < 1.0  # a finite calibration set never yields certainty
    for low, high in ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0)):  # reliability: binned probabilities match frequencies
        chosen = (p >= low) & (p < high)
        assert inside[chosen].mean() == pytest.approx(p[chosen].mean(), abs=0.05)


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
