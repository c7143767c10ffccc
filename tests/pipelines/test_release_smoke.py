"""`make release-model` end to end on a small config: fit, calibrate, test, package, model card."""

import json

import pytest

from mofbalora.predict import load_model
from pipelines.analysis.release import model_card

from .conftest import run_make


@pytest.mark.qmof
def test_release_pipeline_packages_a_usable_model(tmp_path, qmof_dataset, small_qmof):
    run, package = tmp_path / "run", tmp_path / "package"
    args = (f"RELEASE_ARGS=--config pipelines/configs/release_smoke.yaml --run-dir {run} "
            f"--package-dir {package}")
    run_make("release-model", args)
    record = json.loads((package / "release.json").read_text())
    assert record == json.loads((run / "release.json").read_text())
    test = record["test"]
    # which code ran each stage (a fit resumed over sessions would list one entry per session)
    assert [stage["stage"] for stage in record["stages"]] == ["fit", "noise", "calibrate", "test"]
    # every stage finished (a stopped one records no end and no time)
    assert all(len(stage["git_commit"]) >= 40 and stage["finished_utc"] and stage["wall_s"] is not None
               for stage in record["stages"])
    training = record["training"]
    assert training["sessions"] == 1 and 0 < training["train_wall_s"] <= training["wall_s"]
    assert len(training["val_mae_ev_by_epoch"]) == training["epochs_run"]
    assert test["n_test"] == record["data"]["n_test"] > 0
    # the calibrated intervals checked on the validation split before the test split is scored
    assert record["calibration"]["validation_coverage_95"]["n"] == record["data"]["n_val"]
    for key in ("mae_ev", "coverage_95", "spearman_epistemic_std_abs_error"):
        assert test[key]["ci_low"] <= test[key]["value"] <= test[key]["ci_high"], key
    # the per-structure noise stage ran, and the test stage scored the calibrated distribution
    assert record["noise_head"]["chosen"] in record["noise_head"]["config"]["variants"]
    assert (package / "noise_head.safetensors").exists()
    assert test["crps_ev"]["value"] > 0 and test["n_negative"] == {"mean": 0, "lower_95": 0, "upper_95": 0}
    assert sum(b["n"] for b in test["p_in_window_reliability"]["bins"]) == test["n_test"]
    promised = test["spearman_calibrated_std_if_true"]  # drawn from the calibrated distributions
    assert promised["draws"] == 200
    assert f"at ρ ≈ {promised['value']:.2f}" in (package / "MODEL_CARD.md").read_text()
    assert (run / "figures" / "reliability_p_in_window.png").read_bytes()[:4] == b"\x89PNG"
    card = (package / "MODEL_CARD.md").read_text()
    assert f"{test['mae_ev']['value']:.3f}" in card and record["data"]["split_sha256"] in card
    assert f"fit `{record['stages'][0]['git_commit'][:12]}`, noise `" in card  # each stage's own code
    assert record["alias"] == "qmof-pbe" and "The default model of `mofbalora predict`" in card
    other = model_card({**record, "name": "my-model", "alias": "my-model"})
    assert other.startswith("# Model card: my-model (`--model my-model`)") and "The default model of" not in other
    # is the std the size of the error: the consistency section, from the record's own figures
    consistency = test["consistency"]
    assert len(consistency["rmse_over_rmv_by_std_decile"]) == 10
    assert f"ENCE {consistency['ence']['value']:.3f}" in card and "## Is the std the size of the error?" in card
    assert (run / "figures" / "rmse_vs_rmv.png").read_bytes()[:4] == b"\x89PNG"
    assert record["warm_start"] is None and "warm restart" not in card
    warm = {"from": str(run), "model_json_sha256": "ab" * 32,
            "training": {"epochs_run": 30, "best_epoch": 27, "best_val_mae_ev": 0.3304, "train_wall_s": 5400.0}}
    warm_card = model_card({**record, "warm_start": warm})
    assert f"from the weights of `{run}` (model.json sha256 `{'ab' * 6}`), which had trained 30 epochs (90 min; " \
           "best validation MAE 0.330 eV)" in warm_card and "a second schedule" in warm_card
    chain_card = model_card({**record, "warm_start": {
        "from": "v2.1", "model_json_sha256": "cd" * 32, "warm_start": warm,
        "training": {"epochs_run": 15, "best_epoch": 15, "best_val_mae_ev": 0.3176, "train_wall_s": 2400.0}}})
    assert "a third schedule from the weights of `v2.1`" in chain_card
    assert "which had trained 30 + 15 epochs (130 min; best validation MAE 0.318 eV)" in chain_card
    assert not list(package.rglob("*.ckpt")) and not (package / "members" / "0" / "logs").exists()
    # the packaged copy predicts like the run folder it came from
    _, paths, _ = small_qmof
    table = load_model(package).predict(paths[:3])  # at the calibrated S
    again = load_model(run).predict(paths[:3])
    assert (table["status"] == "ok").all()
    assert table.drop(columns="ood_reason").equals(again.drop(columns="ood_reason"))
    # a rerun finds every stage done and gives the same record
    run_make("release-model", args, timeout=600)
    rerun = json.loads((package / "release.json").read_text())
    assert rerun["test"] == record["test"]
