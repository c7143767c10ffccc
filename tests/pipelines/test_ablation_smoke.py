"""`make balora-ablation PROFILE=smoke` end to end: the design is written first, every variant
is scored with its diagnostics, the winner follows the declared rule, and a rerun resumes."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import run_smoke_target

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, qmof_dataset):
    return run_smoke_target("balora-ablation", "ABLATION_ARGS", tmp_path_factory.mktemp("results"), "*-ablation-smoke")


def test_artefacts_and_design_written_before_training(ablation_run):
    folder, results, _ = ablation_run
    for name in ("ablation.md", "ablation_metrics.json", "ablation_rho_vs_mae.png", "design.md", "config.yaml"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "ablation_rho_vs_mae.png").read_bytes()[:4] == b"\x89PNG"
    declared = (folder / "design.md").stat().st_mtime_ns
    trained = [p.stat().st_mtime_ns for p in (results / "runs" / "smoke" / "methods").glob("balora-*/model.json")]
    assert trained and min(trained) > declared
    design = yaml.safe_load((ROOT / "pipelines" / "configs" / "ablation_smoke.yaml").read_text())
    text = (folder / "ablation.md").read_text()
    for stage in design["stages"]:
        for levels in stage["factors"].values():
            assert all(level["name"] in text for level in levels)


def test_every_variant_has_its_diagnostics(ablation_run):
    folder, _, _ = ablation_run
    metrics = json.loads((folder / "ablation_metrics.json").read_text())
    variants = metrics["variants"]
    assert len(variants) >= 4  # baseline, one KL level, two structure factors (+ their combination)
    for name, entry in variants.items():
        s = entry["scores"]
        assert math.isfinite(s["mae_ev"]), name
        assert s["std_quantiles_ev"]["q05"] <= s["std_quantiles_ev"]["q50"] <= s["std_quantiles_ev"]["q95"]
        assert set(s["coverage_95"]) == {"raw_epistemic", "raw_total", "conformal"}
        assert len(entry["alpha_over_c"]) == 5  # embedding + 4 convolutions
        assert all(q["q05"] <= q["q95"] and q["q05"] > 0 for q in entry["alpha_over_c"].values())
    per_row = [entry for entry in variants.values() if entry["factors"].get("noise_sampling") == "noise-per-row"]
    assert per_row and all(entry["adapter"]["noise_sampling"] == "row" for entry in per_row)
    assert metrics["references"]["lora-ensemble"]["spearman"]["value"] is not None
    assert metrics["setup"]["versions"]["torch"].startswith("2.13") and len(metrics["setup"]["labels_sha256"]) == 64


def test_winner_follows_the_declared_rule(ablation_run):
    folder, _, _ = ablation_run
    metrics = json.loads((folder / "ablation_metrics.json").read_text())
    last = metrics["steps"][-1]
    assert metrics["winner"] == last["winner"]
    scores = {name: metrics["variants"][name]["scores"] for name in last["candidates"]}
    limit = metrics["mae_limit_ev"]
    eligible = [n for n, s in scores.items() if s["mae_ev"] <= limit]
    assert sorted(eligible) == sorted(last["eligible"])
    if eligible:
        from pipelines.analysis.ablation import selection_rho

        criterion = metrics["design"]["selection"]["criterion"]
        assert criterion == "val_and_shift_val" and all("shift_val" in s for s in scores.values())
        best = max(selection_rho(scores[n], criterion) for n in eligible)
        tie = metrics["design"]["selection"]["tie_rho"]
        assert selection_rho(scores[metrics["winner"]], criterion) >= best - tie
    assert metrics["winner_adapter"] == metrics["variants"][metrics["winner"]]["adapter"]


def test_rerun_resumes_without_training(ablation_run):
    _, results, command = ablation_run
    stamps = {p: p.stat().st_mtime_ns for p in (results / "runs" / "smoke" / "methods").glob("*/model.json")}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bandgap_benchmark: fitting" not in done.stderr and "balora_ablation: scoring" not in done.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_variant_scores_are_its_models(ablation_run, qmof_dataset):
    """A variant's reported validation MAE, ρ and collapse share are what its saved model gives,
    recomputed here from the model folder, its split and the design's S and sampling seed."""
    import numpy as np
    from scipy import stats

    from mofbalora.data.splits import Split
    from mofbalora.predict import load_model
    from mofbalora.training.config import TrainConfig
    from mofbalora.training.fit import prepare_data

    folder, results, _ = ablation_run
    metrics = json.loads((folder / "ablation_metrics.json").read_text())
    design = yaml.safe_load((ROOT / "pipelines" / "configs" / "ablation_smoke.yaml").read_text())
    entry = metrics["variants"][metrics["winner"]]
    model_dir = next(results.glob(f"runs/*/{entry['folder']}"))
    model = load_model(model_dir)
    config = TrainConfig.from_dict(model.meta["train_config"])
    prepared = prepare_data(config, qmof_dataset, model_dir, progress=False, split=Split.load(model_dir / "split.json"))
    ids, samples, truth = prepared.parts["val"]
    keep = [k for k, i in enumerate(ids) if i in set(metrics["selection_ids"]["val"])]  # held-out ids removed
    assert len(keep) == metrics["setup"]["n_val"]
    samples, truth = [samples[k] for k in keep], truth[keep]
    draws = model.predict_draws(samples, n_samples=design["samples"], seed=design["sampling_seed"])
    mean, std = draws.mean(0), draws.std(0, ddof=1)
    scores = entry["scores"]
    assert scores["mae_ev"] == pytest.approx(np.abs(mean - truth).mean(), rel=1e-6)
    assert scores["spearman"]["value"] == pytest.approx(stats.spearmanr(std, np.abs(mean - truth)).statistic, abs=1e-9)
    assert scores["share_std_below_1e-3"] == pytest.approx(np.mean(std < 1e-3))


def test_no_test_or_calibration_id_in_any_selection_set(ablation_run):
    """The ids that chose the winner (validation and shift-validation) hold none of the study's
    test, calibration or shifted test ids, nor the shipped model's test or calibration ids; the
    validation part really lost the ids it shared with them."""
    from mofbalora.data.splits import Split
    from mofbalora.pretrained import resolve_model

    folder, results, _ = ablation_run
    metrics = json.loads((folder / "ablation_metrics.json").read_text())
    study = Split.load(results / "runs" / "smoke" / "split.json")
    release = Split.load(resolve_model("qmof-pbe") / "split.json")
    shifted = json.loads((results / "runs" / "smoke" / "shift_ids.json").read_text())
    forbidden = set(study.test) | set(study.calibration) | set(release.test) | set(release.calibration)
    forbidden |= set(shifted["chemistry"])  # every candidate of the chemistry-shift test set
    # (size-shift test cells are larger than any cell a selection set may hold)
    selection = metrics["selection_ids"]
    assert selection["val"] and selection["shift_val"]
    for name, ids in selection.items():
        assert not forbidden & set(ids), name
    assert set(selection["val"]) <= set(study.val)
    assert metrics["setup"]["n_val_before_held_out"] > metrics["setup"]["n_val"]  # some were removed
