"""The study's statistics and verdict rules on synthetic predictions whose answer is known by construction."""

import numpy as np
import pytest

from pipelines.analysis import study


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    n = 600
    truth = rng.uniform(0.0, 4.0, n)
    scale = rng.uniform(0.05, 1.0, n)
    error = rng.normal(0.0, scale)
    return rng, truth, scale, error


def _runs(name, means, stds, pooled=False):
    return study.MethodRuns(name, np.atleast_2d(means), np.atleast_2d(stds), pooled=pooled)


def _seeds(mean, std, rng, k=3, jitter=0.02):
    """K seeds of one method: the same predictions with a little seed-to-seed noise."""
    return (np.stack([mean + rng.normal(0, jitter, len(mean)) for _ in range(k)]),
            np.stack([std * np.exp(rng.normal(0, 0.05, len(std))) for _ in range(k)]))


def test_claim_1_holds_for_an_informative_std_and_not_for_noise(world):
    rng, truth, scale, error = world
    mean = truth + error
    noise_std = rng.uniform(0.05, 1.0, len(truth))  # unrelated to the error
    informative = _runs("balora", *_seeds(mean, scale, rng))
    uninformative = _runs("peer", *_seeds(mean, noise_std, rng))
    good = study.claim_1(informative, [uninformative], truth, rng, 200)["peer"]
    assert good["verdict"] == "holds" and good["spearman_difference"]["ci_low"] > 0
    assert good["spearman_difference"]["bca_structures_only"]["ci_low"] > 0
    bad = study.claim_1(_runs("balora", *_seeds(mean, noise_std, rng)), [_runs("peer", *_seeds(mean, scale, rng))],
                        truth, rng, 200)["peer"]
    assert bad["verdict"] == "does not hold"


def test_seed_spread_widens_the_interval(world):
    """The same test structures with seeds that disagree more must give a wider CI: the seed level counts."""
    rng, truth, scale, error = world
    mean = truth + error
    means, stds = _seeds(mean, scale, rng, jitter=0.01)
    calm = study.score(study.mae, _runs("calm", means, stds), truth, rng, 300)
    shifted = means + np.array([[-0.3], [0.0], [0.3]])  # seeds that learnt different offsets
    wild = study.score(study.mae, _runs("wild", shifted, stds), truth, rng, 300)
    assert (wild["ci_high"] - wild["ci_low"]) > 1.5 * (calm["ci_high"] - calm["ci_low"])
    assert wild["seed_sd"] > calm["seed_sd"] and len(wild["per_seed"]) == 3


def test_pooled_ensemble_resamples_members(world):
    rng, truth, scale, error = world
    members = truth + error + rng.normal(0, 1, (5, len(truth))) * scale  # member spread tracks the error
    ensemble = _runs("ens", members, np.full_like(members, np.nan), pooled=True)
    (mean, std), = ensemble.realisations()
    np.testing.assert_allclose(mean, members.mean(0))
    np.testing.assert_allclose(std, members.std(0, ddof=1))
    assert study.score(study.spearman, ensemble, truth, rng, 100)["value"] > 0.3


def test_claim_3_non_inferiority_margin_and_distance_to_full(world):
    rng, truth, scale, error = world
    lora = truth + error
    lora_runs = _runs("lora", *_seeds(lora, scale, rng))
    full = _runs("full", lora, np.full_like(lora, np.nan))
    worse = study.claim_3(_runs("balora", *_seeds(lora + 0.3, scale, rng)), lora_runs, full, truth, margin_ev=0.02,
                          rng=rng, n_boot=200)
    assert worse["accuracy_part"] == "does not hold" and worse["verdict"] == "does not hold"
    # BaLoRA a hair worse than LoRA (0.005 eV, inside the 0.05 margin) yet much closer to full FT
    near_full = _runs("full", truth + 0.5 * error, np.full_like(lora, np.nan))
    close = study.claim_3(_runs("balora", *_seeds(truth + 0.5 * error, scale, rng, jitter=0.01)), lora_runs, near_full,
                          truth, margin_ev=0.05, rng=rng, n_boot=200)
    assert close["accuracy_part"] == "holds" and close["closer_part"] == "holds" and close["verdict"] == "holds"


def test_split_half_reliability_and_noise_only_curve(world):
    rng, truth, scale, error = world
    draws = (truth + error) + scale * rng.normal(0, 1, (32, len(truth)))
    sizes = [2, 4, 8, 16, 32]
    reliability = study.split_half_reliability(draws, sizes)
    assert all(a < b for a, b in zip(reliability, reliability[1:]))  # more draws: a more reproducible std
    assert 0 < reliability[0] < reliability[-1] < 1
    expected = study.noise_only_curve(0.5, reliability)
    assert expected[-1] == pytest.approx(0.5) and expected[0] < expected[-1]


def test_split_half_reliability_is_stable_at_small_s_and_undefined_when_not_positive(world):
    """One split-half pair at S = 2 is noise; the average over random pairs is stable across seeds.
    Where it is not positive the noise-only curve says so instead of dividing by a clipped value."""
    rng, truth, scale, error = world
    informative = (truth + error) + scale * rng.normal(0, 1, (32, len(truth)))
    estimates = [study.split_half_reliability(informative, [2], seed=seed)[0] for seed in range(5)]
    assert np.ptp(estimates) < 0.05 and min(estimates) > 0
    flat = truth + rng.normal(0, 1, (32, len(truth)))  # the same std for every structure
    reliability = study.split_half_reliability(flat, [2, 4, 8, 16, 32])
    assert abs(reliability[0]) < 0.05
    curve = study.noise_only_curve(0.2, [-0.01, 0.1, 0.3])
    assert curve[0] is None and curve[2] == pytest.approx(0.2) and curve[1] == pytest.approx(0.2 * (1 / 3) ** 0.5)
    assert study.noise_only_curve(0.2, [0.1, -0.02]) == [None, None]


def test_claim_2_holds_only_when_the_rise_beats_the_control(world):
    rng, truth, scale, error = world
    mean = truth + error
    sizes = [2, 4, 8, 16, 32]
    informative = mean + scale * rng.normal(0, 1, (32, len(truth)))  # sample std tracks the error
    unrelated = mean + rng.uniform(0.05, 1.0, len(truth)) * rng.normal(0, 1, (32, len(truth)))
    good = study.sweep("balora", informative, truth, sizes, 200, 0)
    control = study.sweep("control", unrelated, truth, sizes, 200, 0)
    assert good["slope_per_doubling"]["ci_low"] > 0 and good["spearman"][-1] > good["spearman"][0]
    rise = study.rise_difference(informative, unrelated, truth, sizes, 200, 0)
    assert study.claim_2(good, control, rise)["verdict"] == "holds"
    backwards = study.rise_difference(unrelated, informative, truth, sizes, 200, 0)
    assert study.claim_2(control, good, backwards)["verdict"] == "does not hold"


def test_ause_ratio_is_zero_for_the_oracle_and_near_one_for_random(world):
    from mofbalora.uncertainty import metrics as um

    rng, truth, scale, error = world
    mean = truth + error
    assert um.ause_ratio(mean, np.abs(error), truth) == pytest.approx(0.0, abs=1e-12)
    assert abs(um.ause_ratio(mean, rng.uniform(size=len(truth)), truth) - 1.0) < 0.25


def test_non_inferiority_reading_of_a_difference():
    assert study.non_inferiority({"ci_low": -0.04, "ci_high": 0.1}, 0.05) == "holds"
    assert study.non_inferiority({"ci_low": -0.2, "ci_high": -0.06}, 0.05) == "does not hold"
    assert study.non_inferiority({"ci_low": -0.08, "ci_high": 0.01}, 0.05) == "inconclusive"


def test_the_release_recalibration_fixes_a_std_too_narrow_far_from_training():
    """Errors twice the std beyond a distance of 1, right below it: fitted on the calibration set,
    the study's per-structure factor brings the far half's ZMS to 1 on another set, keeps the near
    half's, and leaves the raw total std reachable; a pooled ensemble gets one factor row."""
    from pipelines.bandgap_benchmark import Realised, recalibrated

    rng = np.random.default_rng(3)
    n = 4000
    sets = {}
    for name in ("calibration", "test"):
        distance = rng.uniform(0.0, 2.0, n)
        sigma = rng.uniform(0.2, 0.6, n)
        truth = rng.uniform(0.0, 4.0, n)
        means = truth + rng.normal(0.0, sigma * np.where(distance > 1.0, 2.0, 1.0))
        sets[name] = (truth, distance, sigma, means)
    truth = {name: value[0] for name, value in sets.items()}
    distance = {name: value[1] for name, value in sets.items()}
    family = {name: np.zeros(n, dtype=int) for name in sets}
    for pooled in (False, True):
        k = 3 if pooled else 2
        runs = {name: study.MethodRuns("m", np.stack([m] * k), np.full((k, n), np.nan), pooled=pooled,
                                       aleatoric=np.stack([s] * (1 if pooled else k)))
                for name, (_, _, s, m) in sets.items()}
        fixed = recalibrated(Realised(runs, [0.1]), truth, family=family, distance=distance,
                             settings={"kind": "distance"}).runs["test"]
        assert fixed.std_factor.shape == (1 if pooled else k, n)
        t, d, s, m = sets["test"]
        mean, std = fixed.total().realisations()[0]
        z2 = ((t - mean) / std) ** 2
        assert np.mean(z2[d > 1.1]) == pytest.approx(1.0, abs=0.12)
        assert np.mean(z2[d < 0.9]) == pytest.approx(1.0, abs=0.12)
        _, raw = fixed.total(recalibrated=False).realisations()[0]
        assert np.mean(((t - mean) / raw)[d > 1.1] ** 2) == pytest.approx(4.0, rel=0.15)
    with pytest.raises(ValueError, match="isotonic"):
        recalibrated(Realised(runs, [0.1]), truth, family=family, distance=distance, settings={"kind": "isotonic+distance"})


def test_family_rarity_grows_as_a_family_gets_rarer_in_training():
    from pipelines.rarity_check import family_rarity

    train = np.array([30] * 90 + [29] * 9 + [0])  # Zn common, Cu rare, one metal-free cell
    rarity = family_rarity(np.array([30, 29, 0, 47]), train)  # Ag never seen in training
    np.testing.assert_allclose(rarity, np.log(101 / np.array([91, 10, 2, 1])))
