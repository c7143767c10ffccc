"""The simulated DFT campaign (pipelines.active_learning): the cached trunk equals CGCNN, the smoke
campaign runs end to end on real QMOF and resumes, and the report's statistics on known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipelines import active_learning as al
from pipelines import cached_trunk
from pipelines.analysis import active_learning as report


def test_cached_trunk_forward_equals_cgcnn(small_qmof):
    from mofbalora.backbones.cgcnn import CGCNNBackbone
    from mofbalora.featurise import featurise_paths, get_featuriser

    _, paths, _ = small_qmof
    samples = featurise_paths(paths[:6], get_featuriser("cgcnn"), cache_dir=None, progress=False).samples
    full = CGCNNBackbone()
    trunk = cached_trunk.CachedTrunkBackbone()
    expected = full(full.collate(samples))
    got = trunk(trunk.collate(cached_trunk.trunk_samples(samples)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, qmof_dataset):
    results = tmp_path_factory.mktemp("al")
    report_dir = al.main(["--profile", "smoke", "--workers", "1", "--results", str(results), "--no-publish", "--costs"])
    return results, report_dir


def test_smoke_campaign_queries_new_structures_and_respects_the_shift(smoke_run):
    results, report_dir = smoke_run
    design = al.load_design("smoke")
    run_dir = results / "runs" / "active-learning-smoke"
    parts, _ = al.campaign_parts(design, None, run_dir)
    pool = parts["pool"]
    setting = "chemistry-shift"
    excluded = set(design["settings"][setting]["initial_excludes_metals"])
    initial = al.initial_set(pool, size=design["initial_labels"], seed=0, excluded_metals=sorted(excluded))
    assert not any(pool.elements[i] & excluded for i in initial)
    assert any(e & excluded for e in pool.elements)  # the pool does hold them
    for strategy in design["strategies"]:
        records = report.campaign_records(al.campaign_dir(run_dir, setting, strategy, 0), design["rounds"])
        assert [r["n_labels"] for r in records] == [design["initial_labels"] + k * design["queries_per_round"]
                                                    for k in range(design["rounds"] + 1)]
        queried = [i for r in records for i in r["queried"]]
        assert len(queried) == len(set(queried)) == design["rounds"] * design["queries_per_round"]
        assert not set(queried) & {pool.ids[i] for i in initial}
    metrics = json.loads((report_dir / "active_learning" / "metrics.json").read_text())
    learning = metrics["settings"][setting]["learning"]
    assert set(learning) == set(design["strategies"])
    assert learning["random"]["mean_mae_ratio_vs_random"]["value"] == pytest.approx(1.0)
    assert metrics["provenance"]["labels_sha256"] and metrics["provenance"]["design"] == design
    costs = metrics["costs"]["strategies"]
    assert set(costs) == set(design["strategies"]) and all(c["decision_s"] > 0 for c in costs.values())
    assert all(c["n_labels"] == design["initial_labels"] + design["queries_per_round"] for c in costs.values())
    assert metrics["settings"][setting]["equal_wall_time"]["from"] == "quiet costs"
    assert "## chemistry-shift" in (report_dir / "active_learning.md").read_text()


def test_window_picks_are_likelier_in_the_window_than_random(smoke_run):
    results, report_dir = smoke_run
    metrics = json.loads((report_dir / "active_learning" / "metrics.json").read_text())
    window = metrics["settings"]["chemistry-shift"]["windows"]["below-0.5"]["strategies"]
    assert window["greedy-p-below-0.5"]["hits_mean"] > window["random"]["hits_mean"]


def test_a_rerun_resumes_without_refitting(smoke_run):
    results, _ = smoke_run
    run_dir = results / "runs" / "active-learning-smoke"
    folder = al.campaign_dir(run_dir, "chemistry-shift", "random", 0)
    before = (folder / "round_01.json").read_text()
    fits_before = sorted(p.stat().st_mtime_ns for p in folder.rglob("trainable.safetensors"))
    al.main(["--profile", "smoke", "--workers", "1", "--results", str(results), "--no-publish"])
    assert (folder / "round_01.json").read_text() == before
    assert sorted(p.stat().st_mtime_ns for p in folder.rglob("trainable.safetensors")) == fits_before


def test_learning_ratio_known_answer():
    rng = np.random.default_rng(0)
    random_errors = rng.uniform(0.5, 1.5, size=(3, 4, 200))
    errors = {"random": random_errors, "half": 0.5 * random_errors, "same": random_errors.copy()}
    labels = np.array([10.0, 20.0, 30.0, 40.0])
    ratios = report.learning_ratios(errors, labels, "random", rng, 200)
    assert ratios["half"]["value"] == pytest.approx(0.5)
    assert ratios["half"]["ci_high"] == pytest.approx(0.5)
    assert report.ratio_verdict(ratios["half"], "faster", "slower") == "faster"
    assert report.ratio_verdict(ratios["same"], "faster", "slower") == "no difference resolved"
    # the area: a curve falling linearly from 1 to 0 has mean 0.5 over the label range
    assert report.mean_mae_over_labels(np.array([1.0, 0.5, 0.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(0.5)


def test_enrichment_known_answer():
    rng = np.random.default_rng(0)
    found = report.discovery({"random": np.array([10, 20, 5]), "twice": np.array([20, 40, 10])}, rng, 100)
    assert found["twice"]["enrichment"]["value"] == pytest.approx(2.0)
    assert found["twice"]["verdict"] == "enriched against random"
    undefined = report.discovery({"random": np.array([0, 2]), "other": np.array([3, 2])}, rng, 100)
    assert undefined["other"]["verdict"] == "no difference resolved"


def test_design_declares_the_issue_minimums():
    design = yaml.safe_load((al.CONFIG_DIR / "active_learning_cpu.yaml").read_text())
    assert len(design["seeds"]) >= 3 and 100 <= design["initial_labels"] <= 200 and 50 <= design["queries_per_round"] <= 100
    assert {"random", "balora-std", "balora-batch", "ensemble-std", "mcdropout-std"} <= set(design["strategies"])
    assert design["methods"]["lora-ensemble"]["method"] == "lora-ensemble" and design["ensemble_size"] == 5
    assert set(design["settings"]) == {"in-distribution", "chemistry-shift"}
