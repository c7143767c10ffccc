"""`make bandgap-benchmark PROFILE=smoke` end to end: every artefact, finite numbers, valid schema."""

import json
import math
import subprocess
from pathlib import Path

import pytest

from .conftest import run_smoke_target

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ["rho_vs_S.png", "parity_balora.png", "parity_lora-ensemble.png", "calibration.png", "error_retention.png",
           "cost.png"]
VERDICTS = {"holds", "does not hold", "inconclusive"}


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
    for method in ("full", "lora", "lora-ensemble", "balora"):
        header = (folder / "predictions" / f"{method}.csv").read_text().splitlines()[0]
        assert header == "id,truth,mean,std"
    assert (folder / "rho_vs_S.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_schema_and_finite_numbers(report_dir):
    folder, _, _ = report_dir
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "uncertainty", "balora_sample_sweep", "ensemble_size_sweep", "claims", "cost",
                            "setup"}
    assert set(metrics["accuracy"]) == {"full", "lora", "lora-ensemble", "balora", "mean predictor"}
    assert set(metrics["uncertainty"]) == {"lora-ensemble", "balora"}
    claims = metrics["claims"]
    assert len(claims) == 3 and all(c["verdict"] in VERDICTS for c in claims.values())
    # each verdict follows from its deciding interval by the stated rule
    d1 = claims["claim_1_correlation_vs_ensemble"]["spearman_difference_balora_minus_ensemble"]
    expected = "holds" if d1["ci_low"] > 0 else "does not hold" if d1["ci_high"] < 0 else "inconclusive"
    assert claims["claim_1_correlation_vs_ensemble"]["verdict"] == expected
    d3 = claims["claim_3_accuracy"]["mae_difference_balora_minus_lora_ev"]
    if d3["ci_low"] > 0:
        assert claims["claim_3_accuracy"]["verdict"] == "does not hold"
    for method, values in metrics["accuracy"].items():
        assert math.isfinite(values["mae_ev"]["value"]) and values["mae_ev"]["ci_low"] <= values["mae_ev"]["ci_high"]
    for section in ("cost", "ensemble_size_sweep", "calibration", "floor"):
        bad = [path for path, ok in _finite(metrics[section], section) if not ok]
        assert not bad, bad
    for method in ("lora-ensemble", "balora"):
        u = metrics["uncertainty"][method]
        for key in ("nll", "miscalibration_area", "coverage_68", "coverage_95"):
            assert math.isfinite(u["raw"][key]) and math.isfinite(u["recalibrated"][key])
    for method in ("balora", "lora-ensemble", "lora"):
        conformal = metrics["calibration"][method]["conformal"]
        assert conformal["coverage_95"] >= 0.7, (method, conformal)  # loose: ~20 test structures
        assert 0 < conformal["mean_width_95_ev"] < 10
    assert set(metrics["calibration"]["balora"]) >= {"raw_epistemic", "raw_total", "recalibrated", "conformal"}
    assert "raw_epistemic" not in metrics["calibration"]["lora"]  # deterministic: no epistemic std
    assert metrics["head_selection"]["chosen"] in ("pretrained", "residual")
    assert 0 <= metrics["ood"]["balora"]["any"]["flag_rate"] <= 1
    setup = metrics["setup"]
    assert len(setup["labels_sha256"]) == 64 and setup["versions"]["torch"].startswith("2.13")
    assert setup["sample_sizes"] == [2, 4, 8] and len(metrics["balora_sample_sweep"]) == 3


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
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing finished run" in done.stderr
    assert {p: p.stat().st_mtime_ns for p in stamp_before} == stamp_before
