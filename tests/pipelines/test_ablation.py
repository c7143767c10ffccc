"""The design study's selection rule, override merging and validation scores on known arrays."""

import numpy as np
import pytest

from pipelines.analysis import ablation


def _scores(mae, rho, nll):
    return {"mae_ev": mae, "spearman": {"value": rho}, "calibrated_nll": nll}


def test_selection_rule_respects_margin_then_rho_then_nll():
    scores = {"base": _scores(0.50, 0.20, 1.0), "sharp-but-inaccurate": _scores(0.60, 0.90, 0.5),
              "better": _scores(0.51, 0.30, 1.2), "tied-better-nll": _scores(0.515, 0.298, 1.1)}
    choice = ablation.select(scores, lora_mae_ev=0.50, mae_margin_ev=0.02, tie_rho=0.005)
    assert "sharp-but-inaccurate" not in choice["eligible"]
    assert choice["winner"] == "tied-better-nll" and "tie" in choice["reason"]
    strict = ablation.select(scores, lora_mae_ev=0.50, mae_margin_ev=0.02, tie_rho=0.0)
    assert strict["winner"] == "better"
    none = ablation.select(scores, lora_mae_ev=0.1, mae_margin_ev=0.02, tie_rho=0.0)
    assert none["winner"] == "base" and none["eligible"] == []


def test_merge_overrides_refuses_a_clash():
    assert ablation.merge_overrides({"a": 1}, {"b": 2}, {"a": 1}) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="'a'"):
        ablation.merge_overrides({"a": 1}, {"a": 2})


def test_validation_scores_see_an_informative_std_and_a_collapse():
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.uniform(0, 4, n)
    std = rng.uniform(0.05, 1.0, n)
    std[:40] = 1e-5  # collapsed
    draws = truth + std * rng.standard_normal((64, n)) + std * rng.standard_normal(n)
    n_atoms = rng.integers(10, 100, n)
    mean = draws.mean(0)
    scores = ablation.validation_scores(draws, truth, n_atoms, total_std=std, calibrated_interval=(mean - 2 * std, mean + 2 * std),
                                        calibrated_std=std, rng=rng, n_boot=50)
    assert scores["spearman"]["value"] > 0.3 and scores["spearman"]["ci_low"] < scores["spearman"]["value"]
    assert scores["share_std_below_1e-3"] == pytest.approx(0.1)
    assert abs(scores["spearman_std_n_atoms"]) < 0.2
    assert sum(scores["n_by_gap"].values()) == n
    assert 0.85 < scores["coverage_95"]["conformal"] <= 1.0


def test_alpha_quantiles_per_layer_pool_rank_components():
    values = np.stack([np.full((10, 4), 0.5), np.linspace(0, 2, 40).reshape(10, 4)], axis=1)  # [n, L, r]
    out = ablation.alpha_quantiles(values, ["a", "b"])
    assert out["a"] == {"q05": 0.5, "q50": 0.5, "q95": 0.5}
    assert out["b"]["q05"] < 0.2 and out["b"]["q95"] > 1.8
