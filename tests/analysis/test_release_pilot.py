"""The release pilot (`make release-pilot`) end to end at toy size, and its declared rule."""

import json

import pytest

from mofbalora.analysis.pilot import choose, full_data_cost_s
from mofbalora.model_folder import BASE_WEIGHTS_FILE, read_model_json

from tests.conftest import copy_cifs, write_labels

from .conftest import run_make


def _row(mae, rho, cost):
    return {"val_mae_ev": mae, "val_rho_total": rho, "full_data_cost_s": cost}


def test_rule_drops_what_ranks_worse_and_breaks_mae_ties_by_cost():
    rows = {"baseline": _row(0.45, 0.30, 100), "sharp-but-blind": _row(0.30, 0.24, 50),
            "accurate": _row(0.36, 0.26, 400), "as-accurate-cheaper": _row(0.365, 0.40, 200)}
    choice = choose(rows, baseline="baseline", rho_margin=0.05, mae_tie_ev=0.01)
    assert "sharp-but-blind" not in choice["eligible"]  # rho 0.24 < 0.30 - 0.05
    assert choice["tied"] == ["accurate", "as-accurate-cheaper"] and choice["winner"] == "as-accurate-cheaper"
    alone = choose({"baseline": _row(0.45, 0.30, 100), "accurate": _row(0.36, 0.26, 400)},
                   baseline="baseline", rho_margin=0.05, mae_tie_ev=0.01)
    assert alone["winner"] == "accurate" and alone["reason"] == "lowest validation MAE"


def test_full_data_cost_scales_each_stage_to_the_full_training_set():
    stages = [{"train_wall_s": 200.0, "epochs_run": 10, "n_train": 1000, "best_epoch": 8},
              {"train_wall_s": 100.0, "epochs_run": 10, "n_train": 1000, "best_epoch": 5}]
    assert full_data_cost_s(stages, n_full_train=5000) == pytest.approx(20 * 5 * 8 + 10 * 5 * 5)


@pytest.mark.qmof
def test_pilot_runs_every_kind_of_candidate_and_resumes(tmp_path, smallest_qmof):
    ids, paths, gaps = smallest_qmof(100)  # small cells keep it quick
    data = write_labels(copy_cifs(paths, tmp_path / "data"), ids, gaps)
    results, docs = tmp_path / "results", tmp_path / "docs"
    args = (f"PILOT_ARGS=--design pipelines/configs/release_pilot_smoke.yaml --data {data.parent} "
            f"--release-config pipelines/configs/release_smoke.yaml --results {results} --docs {docs}")
    run_make("release-pilot", args)
    report = json.loads((docs / "release_pilot_metrics.json").read_text())
    assert set(report["rows"]) == {"baseline", "rank4", "balora-on-full-ft"} and report["n_train"] == 30
    for row in report["rows"].values():
        assert 0 < row["val_mae_ev"] < 5 and -1 <= row["val_rho_total"] <= 1 and row["full_data_cost_s"] > 0
        assert row["stages"][-1]["n_train"] == 30 and row["samples"] == 8
    # the second stage sits on the first one's weights
    assert [s["stage"] for s in report["rows"]["balora-on-full-ft"]["stages"]] == ["full-ft", "balora"]
    on_full = results / "balora-on-full-ft" / "balora"
    assert read_model_json(on_full)["base_weights"] == BASE_WEIGHTS_FILE and (on_full / BASE_WEIGHTS_FILE).exists()
    assert read_model_json(results / "rank4")["train_config"]["adapter"]["rank"] == 4
    assert read_model_json(results / "baseline")["train_config"]["adapter"]["prior"] == "log_uniform"
    # CHGNet's cost gate was measured and (limit 0 h) kept it out
    assert report["gates"]["chgnet"]["step_s"] > 0 and report["not_run"]["chgnet"].startswith("cost gate")
    assert report["choice"]["winner"] in report["rows"]
    page = (docs / "release_pilot.md").read_text()
    assert f"**Choice: `{report['choice']['winner']}`**" in page and "all-linear" in page
    # a rerun measures nothing again
    fitted = {path: path.stat().st_mtime_ns for path in results.rglob("model.json")}
    run_make("release-pilot", args, timeout=300)
    assert {path: path.stat().st_mtime_ns for path in results.rglob("model.json")} == fitted
    assert json.loads((docs / "release_pilot_metrics.json").read_text())["rows"] == report["rows"]
