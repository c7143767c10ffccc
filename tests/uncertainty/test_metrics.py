import numpy as np
import pandas as pd
import pytest

from mofbalora.uncertainty import metrics as um
from mofbalora.uncertainty.intervals import gaussian_interval, window_probability
from mofbalora.uncertainty.screening import rank_by_window, screening_summary


@pytest.fixture
def gaussian_data():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.1, 1.0, 4000)
    truth = rng.normal(2.0, 1.0, 4000)
    pred = truth + rng.normal(0.0, std)
    return pred, std, truth


def test_calibrated_gaussian_scores_well(gaussian_data):
    pred, std, truth = gaussian_data
    assert um.interval_coverage(pred, std, truth, 0.95) == pytest.approx(0.95, abs=0.015)
    assert um.interval_coverage(pred, std, truth, 0.68) == pytest.approx(0.68, abs=0.02)
    assert um.miscalibration_area(pred, std, truth) < 0.02
    assert um.spearman_std_error(pred, std, truth) > 0.2
    assert um.ScalarVarianceRecalibrator().fit(pred, std, truth).scale_ == pytest.approx(1.0, abs=0.05)


def test_recalibration_recovers_a_scale(gaussian_data):
    pred, std, truth = gaussian_data
    recalibrator = um.ScalarVarianceRecalibrator().fit(pred, std / 4, truth)
    assert recalibrator.scale_ == pytest.approx(4.0, rel=0.05)
    assert um.gaussian_nll(pred, recalibrator.predict(std / 4), truth) < um.gaussian_nll(pred, std / 4, truth)


def test_oracle_ordering_has_zero_ause():
    truth = np.zeros(100)
    pred = np.linspace(0, 1, 100)
    assert um.ause(pred, np.abs(pred), truth) == pytest.approx(0.0, abs=1e-12)
    assert um.ause(pred, -np.abs(pred), truth) > 0.2


def test_bootstrap_ci_brackets_the_estimate(gaussian_data):
    pred, _, truth = gaussian_data
    value, low, high = um.bootstrap_ci(um.mae, pred, truth, rng=np.random.default_rng(1), n_boot=200)
    assert low < value < high


def test_bad_input_raises():
    with pytest.raises(ValueError):
        um.mae(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        um.gaussian_nll(np.zeros(3), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError):
        window_probability(np.zeros(2), np.ones(2), 3.0, 1.0)


def test_window_probability_and_ranking():
    mean = np.array([2.0, 2.0, 5.0, 2.2])
    std = np.array([0.1, 2.0, 0.1, np.nan])
    probability = window_probability(mean, std, 1.5, 3.0)
    assert probability[0] > 0.99 and 0.2 < probability[1] < 0.4 and probability[2] < 1e-6 and probability[3] == 1.0
    lower, upper = gaussian_interval(mean, std)
    assert lower[1] == 0.0 and upper[0] == pytest.approx(2.0 + 1.96 * 0.1, abs=1e-3)
    table = pd.DataFrame({"id": list("abcde"), "bandgap_mean_ev": [*mean, np.nan], "p_in_window": [*probability, np.nan],
                          "status": ["ok"] * 4 + ["skipped"]})
    ranked = rank_by_window(table, 1.5, 3.0)
    assert list(ranked["id"]) == ["d", "a", "b", "c", "e"] and list(ranked["rank"]) == [1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="p_in_window"):
        rank_by_window(table.drop(columns="p_in_window"), 1.5, 3.0)
    # flagged structures after every unflagged one, each group still by probability
    flagged = table.assign(out_of_distribution=[False, True, False, True, None])
    ranked = rank_by_window(flagged, 1.5, 3.0, in_distribution_first=True)
    assert list(ranked["id"]) == ["a", "c", "d", "b", "e"] and list(ranked["rank"]) == [1, 2, 3, 4, 0]
    assert list(rank_by_window(flagged, 1.5, 3.0)["id"]) == ["d", "a", "b", "c", "e"]  # off by default
    # exact ties (the same structure twice, two skipped inputs) rank by id, whatever the input order
    twins = pd.concat([table, table.assign(id=["a2", "b2", "c2", "d2", "e2"])], ignore_index=True)
    expected = ["d", "d2", "a", "a2", "b", "b2", "c", "c2", "e", "e2"]
    for order in (twins, twins.iloc[::-1]):
        assert list(rank_by_window(order, 1.5, 3.0)["id"]) == expected
    with pytest.raises(ValueError, match="out_of_distribution"):
        rank_by_window(table, 1.5, 3.0, in_distribution_first=True)
    # the summary counts the candidates at P >= 0.9, which a screen acts on; it counted P >= 0.99,
    # which no structure reaches with the shipped model
    screened = pd.DataFrame({"id": ["w", "x", "y", "MOF|2"], "bandgap_mean_ev": [2.0, 2.2, 2.4, 4.0], "lower_95_ev": 1.0,
                             "upper_95_ev": 3.0, "p_in_window": [0.95, 0.92, 0.6, 0.1], "out_of_distribution": False,
                             "ood_reason": "", "status": "ok"})
    summary = screening_summary(rank_by_window(screened, 1.5, 3.0), 1.5, 3.0)
    assert "- P(in window) ≥ 0.9: 2; ≥ 0.5: 3" in summary
    assert "| 4 | MOF\\|2 | 4.00 |" in summary  # a '|' in a file name no longer splits the table's row


def test_recalibrator_ignores_a_few_near_zero_stds(gaussian_data):
    """Maximum likelihood would inflate the scale by orders of magnitude; miscalibration area does not."""
    pred, std, truth = gaussian_data
    spoiled = std.copy()
    spoiled[:40] = 1e-4  # 1% of points claim near-certainty
    ml_scale = np.sqrt(np.mean(((truth - pred) / spoiled) ** 2))
    scale = um.ScalarVarianceRecalibrator().fit(pred, spoiled, truth).scale_
    assert ml_scale > 100 and scale == pytest.approx(1.0, abs=0.15)


def test_floor_statistics_find_a_pile_up():
    truth = np.linspace(0.0, 3.0, 200)
    floored = np.maximum(truth, 0.65)
    stats = um.floor_statistics(floored, truth)
    assert stats["min_prediction_ev"] == pytest.approx(0.65)
    assert stats["share_within_tolerance_of_min"] == pytest.approx(np.mean(truth <= 0.67), abs=0.01)
    assert stats["mae_gap_below_ev"] > 0.2
    assert um.floor_statistics(truth + 0.01, truth)["share_within_tolerance_of_min"] < 0.02
    assert um.interval_share(truth - 0.1, truth + 0.1, floored) == pytest.approx(np.mean(np.abs(floored - truth) <= 0.1))


def test_reliability_of_probabilities_with_a_known_answer():
    """Outcomes drawn with the stated probability: every bin's observed share matches its mean
    predicted P; outcomes drawn with P² (overconfident predictions) are caught in the middle bins."""
    from mofbalora.uncertainty.metrics import probability_reliability

    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    honest = probability_reliability(p, (rng.uniform(size=p.size) < p).astype(float))
    assert len(honest) == 10 and honest["n"].sum() == p.size
    assert np.abs(honest["observed_share"] - honest["mean_predicted"]).max() < 0.03
    assert np.allclose(honest["mean_predicted"], (honest["bin_low"] + honest["bin_high"]) / 2, atol=0.01)
    overconfident = probability_reliability(p, (rng.uniform(size=p.size) < p**2).astype(float))
    assert (overconfident["mean_predicted"] - overconfident["observed_share"]).iloc[3:7].min() > 0.15
    with pytest.raises(ValueError):
        probability_reliability(p * 2, np.ones_like(p))


def test_interval_score_by_hand():
    from mofbalora.uncertainty.metrics import interval_score

    scores = interval_score(np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0]), np.array([1.5, 0.5, 2.25]),
                            confidence=0.9)
    np.testing.assert_allclose(scores, [1.0, 1.0 + 20 * 0.5, 1.0 + 20 * 0.25])


def test_the_interval_score_of_an_uneven_split_is_least_at_its_quantiles():
    """With a_low = s·a below and the rest above, the expected score is least at the a_low and
    1 − a_high quantiles (proper), not at the central interval's."""
    from scipy.stats import norm

    from mofbalora.uncertainty.metrics import interval_score

    truth = norm.ppf((np.arange(200_000) + 0.5) / 200_000)  # N(0, 1) quantiles: an exact expectation
    share, a = 0.3, 0.05

    def expected(lower, upper):
        return interval_score(np.full_like(truth, lower), np.full_like(truth, upper), truth, confidence=1 - a,
                              lower_miss_share=share).mean()

    best = (norm.ppf(a * share), norm.ppf(1 - a * (1 - share)))
    assert expected(*best) < expected(norm.ppf(a / 2), norm.ppf(1 - a / 2))
    for step in (-0.05, 0.05):
        assert expected(*best) < expected(best[0] + step, best[1])
        assert expected(*best) < expected(best[0], best[1] + step)
    with pytest.raises(ValueError, match="lower_miss_share"):
        interval_score(np.ones(2), np.ones(2), np.ones(2), confidence=0.95, lower_miss_share=0.0)


def test_promised_spearman_matches_a_truth_drawn_from_the_model():
    """Truth drawn from the model's own Gaussians: the ρ the model promises is the ρ it gets; stds
    that vary twice as much promise more; an std that ranks by chance is caught below its promise."""
    rng = np.random.default_rng(4)
    pred = rng.normal(2.0, 1.0, 3000)

    def promise_and_outcome(spread):
        std = 0.3 * np.exp(spread * rng.standard_normal(3000))
        draws = pred + std * rng.standard_normal((100, 3000))
        truth = pred + std * rng.standard_normal(3000)
        return um.spearman_std_error_if_true(pred, std, draws), um.spearman_std_error(pred, std, truth), std

    narrow, narrow_observed, _ = promise_and_outcome(0.27)  # std p90/p10 = 2
    assert narrow["range_low"] <= narrow_observed <= narrow["range_high"] and narrow["draws"] == 100
    assert narrow["value"] == pytest.approx(0.27, abs=0.03)  # the Gaussian answer for that spread (docs/method.md §13)
    wide, _, std = promise_and_outcome(0.54)
    assert wide["value"] > narrow["value"] + 0.15
    shuffled = um.spearman_std_error(pred, rng.permutation(std), pred + std * rng.standard_normal(3000))
    assert shuffled < wide["range_low"]
    with pytest.raises(ValueError, match="draws must have shape"):
        um.spearman_std_error_if_true(pred, std, np.zeros((5, 10)))


def test_ence_and_zms_have_the_known_answer_of_a_std_off_by_a_factor():
    """Errors of exactly ±c·σ: RMSE = c·RMV in every std bin, so ENCE = |1 − c| and ZMS = c²."""
    std = np.repeat(np.linspace(0.1, 1.0, 20), 10)
    for c in (1.0, 0.5, 2.0):
        errors = c * std * np.tile([1.0, -1.0], 100)
        truth, pred = errors, np.zeros_like(errors)
        assert um.ence(pred, std, truth) == pytest.approx(abs(1 - c))
        assert um.zms(pred, std, truth) == pytest.approx(c ** 2)
        table = um.rmse_rmv_by_std_bin(pred, std, truth, n_bins=10)
        np.testing.assert_allclose(table["ratio"], c)
        assert list(table["n"]) == [20] * 10 and (np.diff(table["std_low_ev"]) > 0).all()


def test_zms_by_group_finds_the_mis_scaled_group():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.2, 0.5, 4000)
    group = np.where(np.arange(4000) < 1000, "wide", "right")
    truth = rng.normal(0.0, std * np.where(group == "wide", 0.5, 1.0))
    table = um.zms_by_group(np.zeros(4000), std, truth, group, min_size=50, n_resamples=300).set_index("group")
    assert table.loc["wide", "zms_value"] == pytest.approx(0.25, abs=0.03)
    assert table.loc["right", "zms_ci_low"] < 1.0 < table.loc["right", "zms_ci_high"]
    assert table.loc["wide", "zms_ci_high"] < 1.0
    assert len(um.zms_by_group(np.zeros(4000), std, truth, group, min_size=1001, n_resamples=100)) == 1
