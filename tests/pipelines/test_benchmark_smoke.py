"""`make bandgap-benchmark PROFILE=smoke` end to end: every artefact, finite numbers, valid schema."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_smoke_target

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ["rho_vs_S.png", "parity_balora.png", "parity_lora-ensemble.png", "error_retention.png", "cost.png"]
VERDICTS = {"holds", "does not hold", "inconclusive"}
METHODS = {"full", "lora", "lora-ensemble", "laplace-lora", "lora-mcdropout", "balora-constant-alpha", "balora-members",
           "balora"}
UNCERTAIN = METHODS - {"full", "lora"}


def _finite(value, path="metrics"):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from _finite(item, f"{path}[{number}]")
    elif isinstance(value, float):
        yield path, math.isfinite(value)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, qmof_dataset):
    return run_smoke_target("bandgap-benchmark", "BENCHMARK_ARGS", tmp_path_factory.mktemp("results"), "*-smoke")


def test_every_artefact_exists(report_dir):
    folder, _, _ = report_dir
    for name in ["report.md", "metrics.json", "split.json", "config.yaml", *FIGURES]:
        assert (folder / name).stat().st_size > 0, name
    for method in METHODS:
        header = (folder / "predictions" / f"{method}.csv").read_text().splitlines()[0]
        assert header == "id,mean_ev,std_ev"  # no labels in the report folder
    assert (folder / "rho_vs_S.png").read_bytes()[:4] == b"\x89PNG"


def _verdict_of(diff):
    return "holds" if diff["ci_low"] > 0 else "does not hold" if diff["ci_high"] < 0 else "inconclusive"


def test_every_method_and_statistic_is_reported(report_dir):
    folder, _, _ = report_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    table = metrics["table"]
    assert set(table) == METHODS
    for method, row in table.items():
        keys = {"mae_ev", "nll_mean", "nll_median", "coverage_68", "coverage_95", "median_width_95_ev", "cost"}
        assert keys <= set(row), method
        if method in UNCERTAIN:
            assert {"spearman", "ause_ratio"} <= set(row) and math.isfinite(row["ause_ratio"]["value"]), method
        assert row["mae_ev"]["ci_low"] <= row["mae_ev"]["value"] <= row["mae_ev"]["ci_high"], method
        # conformal on 35% of 500 structures: nominal coverage on the test split, not just any share
        assert row["coverage_95"]["value"] >= 0.85 and row["coverage_68"]["value"] < 0.95, method
        assert {"train_wall_s_per_seed", "inference_wall_s_per_structure", "inference_passes_per_structure"} <= set(row["cost"])
    seeds = metrics["setup"]["seeds"]
    assert len(table["balora"]["mae_ev"]["per_seed"]) == len(seeds["balora"]) == 2  # the seed level is real
    assert len(table["lora"]["mae_ev"]["per_seed"]) == metrics["setup"]["config"]["ensemble_size"]
    assert len(table["laplace-lora"]["spearman"]["per_seed"]) == metrics["setup"]["config"]["ensemble_size"]
    assert all(p > 0 for p in table["laplace-lora"]["cost"]["prior_precision"])
    assert table["lora-mcdropout"]["cost"]["inference_passes_per_structure"] == metrics["setup"]["claim_samples"]


def test_verdicts_follow_their_rules(report_dir):
    folder, _, _ = report_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    claims = metrics["claims"]
    assert len(claims) == 4 and all(c["verdict"] in VERDICTS for c in claims.values())
    for peer, entry in metrics["claim_1_all_peers"].items():
        assert entry["verdict"] == _verdict_of(entry["spearman_difference"]), peer
        difference = entry["spearman_difference"]
        assert difference["half_width"] == pytest.approx((difference["ci_high"] - difference["ci_low"]) / 2)
        assert set(entry["spearman_difference"]["bca_structures_only"]) == {"ci_low", "ci_high"}  # BCa beside it
    assert set(metrics["claim_1_all_peers"]) == UNCERTAIN - {"balora"}
    assert claims["claim_1_correlation_vs_ensemble"]["verdict"] == metrics["claim_1_all_peers"]["lora-ensemble"]["verdict"]
    reading = claims["claim_1_correlation_vs_ensemble"]["non_inferiority"]
    d1 = claims["claim_1_correlation_vs_ensemble"]["spearman_difference"]
    assert reading["margin_rho"] == metrics["setup"]["config"]["claim_1_non_inferiority_margin_rho"] == 0.05
    assert reading["verdict"] == ("holds" if d1["ci_low"] > -0.05 else "does not hold" if d1["ci_high"] < -0.05
                                  else "inconclusive")
    assert reading["training_cost_ratio_balora_over_ensemble"] > 0
    report = (folder / "report.md").read_text()
    assert "Non-inferiority, declared before the run" in report
    # the verdict's cost is in training passes, which compare across sessions (wall times do not)
    costs = {m: metrics["table"][m]["cost"]["train_passes_per_seed"] for m in ("balora", "lora-ensemble")}
    assert f"at {costs['balora'] / costs['lora-ensemble']:.2f}× the ensemble's training passes" in report
    c3 = claims["claim_3_accuracy"]
    margin, d3 = c3["margin_ev"], c3["mae_difference_balora_minus_lora_ev"]
    assert margin == metrics["setup"]["config"]["non_inferiority_margin_ev"]
    assert c3["accuracy_part"] == ("holds" if d3["ci_high"] < margin else "does not hold" if d3["ci_low"] > margin
                                   else "inconclusive")
    c4 = claims["claim_4_vs_best_bayesian_lora_peer"]
    peers = metrics["setup"]["config"]["bayesian_peers"]
    best = max(peers, key=lambda m: metrics["table"][m]["val_spearman"]["value"])  # chosen on validation
    assert c4["peer"] == best and c4["verdict"] == metrics["claim_1_all_peers"][best]["verdict"]
    c2 = claims["claim_2_improves_with_samples"]
    assert c2["balora"]["sizes"] == metrics["setup"]["sample_sizes"] == [2, 4, 8]
    assert c2["control"]["method"] == "lora-mcdropout"
    for sweep in (c2["balora"], c2["control"]):
        assert len(sweep["split_half_reliability"]) == len(sweep["noise_only_expected_spearman"]) == 3
        # the attenuation curve through the reported reliabilities: ρ(S) = ρ(S_max) √(rel(S) / rel(S_max))
        rel, rho = sweep["split_half_reliability"], sweep["spearman"]
        for r, expected in zip(rel, sweep["noise_only_expected_spearman"]):
            if r > 0 and rel[-1] > 0:
                assert expected == pytest.approx(rho[-1] * math.sqrt(r / rel[-1]))
            else:
                assert expected is None  # undefined, never built on a clipped reliability


def test_shift_sets_have_their_own_scores_and_claim_1(report_dir):
    folder, _, _ = report_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    config = metrics["setup"]["config"]["shift"]
    assert set(metrics["shift"]) == {"size", "chemistry"}
    for name, shift in metrics["shift"].items():
        assert 0 < shift["n"] <= config[name]["n"]
        assert set(shift["table"]) == METHODS and set(shift["claim_1"]) == UNCERTAIN - {"balora"}
        # the total std as released (recalibrated), against every other method, and before it
        assert set(shift["claim_1_total"]) == METHODS - {"balora"}
        for method, row in shift["table"].items():
            assert math.isfinite(row["spearman_total_raw"]["value"]), method
    assert "ρ (total, distance recalibration)" in (folder / "report.md").read_text()
    setup = metrics["setup"]
    assert len(setup["labels_sha256"]) == 64 and setup["versions"]["torch"].startswith("2.13")
    assert setup["git_commit"] and "finished" in setup


def test_balora_seeds_pooled_as_members_are_scored_as_one_model(report_dir):
    """pooled_members: the BaLoRA seeds' cached draws as one model's members, at their summed cost,
    and on each shift set its total std against the ensemble's."""
    folder, _, _ = report_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    table, setup = metrics["table"], metrics["setup"]
    seeds = len(setup["seeds"]["balora"])
    cost, per_seed = table["balora-members"]["cost"], table["balora"]["cost"]
    assert cost["inference_passes_per_structure"] == seeds * setup["claim_samples"]
    assert cost["train_passes_per_seed"] == seeds * per_seed["train_passes_per_seed"]
    assert table["balora-members"]["mae_ev"]["value"] != table["balora"]["mae_ev"]["value"]
    report = (folder / "report.md").read_text()
    for shift in metrics["shift"].values():
        entry = shift["members_total_vs_ensemble"]["balora-members"]
        assert entry["verdict"] == _verdict_of(entry["spearman_difference"])
    assert "BaLoRA, seeds pooled as members, total std against the LoRA ensemble's: ρ difference" in report
    assert f"| M = {seeds} members (BaLoRA's seeds) |" in report


def test_shift_sets_are_what_the_config_declares(report_dir, qmof_dataset):
    """Size shift: every cell larger than any training cell; chemistry shift: every structure holds a
    held-out metal, and no structure of the split does."""
    from mofbalora.data.splits import Split
    from mofbalora.data.structures import read_structure

    folder, results, _ = report_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    run_dir = results / "runs" / "smoke"
    chosen = json.loads((run_dir / "shift_ids.json").read_text())
    held_out = set(metrics["setup"]["config"]["shift"]["chemistry"]["held_out_metals"])
    paths = qmof_dataset.table.set_index("id")["path"]
    split = Split.load(folder / "split.json")
    for structure_id in split.test[:20] + split.train[:20]:
        assert not held_out & {s.specie.symbol for s in read_structure(paths[structure_id])}
    for structure_id in chosen["chemistry"][:10]:
        assert held_out & {s.specie.symbol for s in read_structure(paths[structure_id])}
    assert not set(chosen["chemistry"]) & set(split.train + split.val + split.calibration + split.test)


def test_every_method_used_the_reported_split(report_dir):
    from mofbalora.data.splits import Split

    folder, results, _ = report_dir
    reported = Split.load(folder / "split.json")
    assert reported.calibration and not set(reported.calibration) & set(reported.test)
    folders = sorted((results / "runs" / "smoke" / "methods").glob("*/split.json"))
    assert len(folders) >= 5
    assert {Split.load(p).fingerprint() for p in folders} == {reported.fingerprint()}
    assert json.loads((folder / "metrics.json").read_text())["setup"]["split_sha256"] == reported.fingerprint()


def test_rerun_reuses_finished_runs(report_dir):
    _, results, command = report_dir
    stamp_before = {p: p.stat().st_mtime_ns for p in (results / "runs" / "smoke" / "methods").glob("*/model.json")}
    draws_before = {p: p.stat().st_mtime_ns for p in (results / "runs" / "smoke" / "predictions").glob("*.npz")}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing finished run" in done.stderr
    assert {p: p.stat().st_mtime_ns for p in stamp_before} == stamp_before
    assert len(draws_before) > 5 and {p: p.stat().st_mtime_ns for p in draws_before} == draws_before  # same fits' draws


def test_rerender_changes_no_number_and_names_its_commit(report_dir, tmp_path):
    """--rerender rewrites report.md from metrics.json: the numbers stay, the rendering commit is added."""
    import shutil

    from pipelines.analysis.report import training_minutes

    folder, _, _ = report_dir
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    done = subprocess.run([sys.executable, "-m", "pipelines.bandgap_benchmark", "--rerender", str(copy), "--no-publish"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before = json.loads((folder / "metrics.json").read_text())
    after = json.loads((copy / "metrics.json").read_text())
    rendered_by = after["setup"].pop("rendered_by_git_commit")
    assert after == before and rendered_by
    report = (copy / "report.md").read_text()
    assert f"report rendered by `{rendered_by}`" in report
    assert f"{training_minutes(after):.1f} min of training" in report and training_minutes(after) > 0
    size = after["setup"]["config"]["ensemble_size"]
    assert f"| LoRA ensemble | M = {size} members |" in report
