"""The verdict rules on synthetic predictions whose answer is known by construction."""

import numpy as np
import pytest

from mofbalora.analysis import study


def _predictions(name, mean, std):
    return study.MethodPredictions(name, mean, std)


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    n = 600
    truth = rng.uniform(0.0, 4.0, n)
    scale = rng.uniform(0.05, 1.0, n)
    error = rng.normal(0.0, scale)
    return rng, truth, scale, error


def _claims(rng, truth, *, balora_mean, balora_std, ensemble_std, lora_mean, full_mean, draws):
    sweep = study.sample_size_sweep([draws], truth, [2, 8, 32])
    return study.claims(balora=_predictions("balora", balora_mean, balora_std), balora_draws=draws,
                        ensemble=_predictions("ens", lora_mean, ensemble_std), lora=_predictions("lora", lora_mean, np.full_like(truth, np.nan)),
                        full=_predictions("full", full_mean, np.full_like(truth, np.nan)), truth=truth, sweep=sweep,
                        rng=rng, n_boot=300)


def test_informative_balora_std_wins_claim_1_and_uninformative_loses(world):
    rng, truth, scale, error = world
    mean = truth + error
    draws = mean + scale * rng.normal(0, 1, (32, len(truth)))  # sample std tracks the error scale
    noise_std = rng.uniform(0.05, 1.0, len(truth))  # unrelated to the error
    good = _claims(rng, truth, balora_mean=mean, balora_std=scale, ensemble_std=noise_std, lora_mean=mean,
                   full_mean=mean, draws=draws)
    assert good["claim_1_correlation_vs_ensemble"]["verdict"] == "holds"
    bad = _claims(rng, truth, balora_mean=mean, balora_std=noise_std, ensemble_std=scale, lora_mean=mean,
                  full_mean=mean, draws=draws)
    assert bad["claim_1_correlation_vs_ensemble"]["verdict"] == "does not hold"


def test_claim_3_accuracy_verdicts(world):
    rng, truth, scale, error = world
    lora_mean = truth + error
    draws = lora_mean + scale * rng.normal(0, 1, (8, len(truth)))
    worse = _claims(rng, truth, balora_mean=lora_mean + 0.3, balora_std=scale, ensemble_std=scale,
                    lora_mean=lora_mean, full_mean=lora_mean, draws=draws)
    assert worse["claim_3_accuracy"]["verdict"] == "does not hold"
    better = _claims(rng, truth, balora_mean=truth + 0.5 * error, balora_std=scale, ensemble_std=scale,
                     lora_mean=lora_mean, full_mean=truth + 0.5 * error, draws=draws)
    assert better["claim_3_accuracy"]["verdict"] == "holds" and better["claim_3_accuracy"]["closer_to_full"]


def test_claim_2_holds_only_when_more_samples_help(world):
    rng, truth, scale, error = world
    mean = truth + error
    draws = mean + scale * rng.normal(0, 1, (32, len(truth)))
    sweep = study.sample_size_sweep([draws], truth, [2, 8, 32])
    rhos = [sweep[s]["spearman_mean"] for s in ("2", "8", "32")]
    assert rhos[0] < rhos[1] < rhos[2]  # more draws estimate the informative std better
    verdict = _claims(rng, truth, balora_mean=mean, balora_std=draws.std(0, ddof=1), ensemble_std=scale,
                      lora_mean=mean, full_mean=mean, draws=draws)["claim_2_monotone_in_samples"]["verdict"]
    assert verdict == "holds"
    flat = np.repeat(mean[None], 32, 0) + rng.normal(0, 0.1, (32, len(truth)))  # std unrelated to the error
    verdict = _claims(rng, truth, balora_mean=flat.mean(0), balora_std=flat.std(0, ddof=1), ensemble_std=scale,
                      lora_mean=mean, full_mean=mean, draws=flat)["claim_2_monotone_in_samples"]["verdict"]
    assert verdict != "holds"
