"""pipelines/release_model.py's stage log: each invocation's stages are on record with the code
that ran them, including a stage that was stopped before it finished (a fit cut off by a session's end)."""

import json
import shutil

import pytest

from .conftest import load_pipeline


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline("release_model")


def test_a_stopped_stage_stays_on_record_and_a_resumed_one_is_added(pipeline, tmp_path):
    (tmp_path / "fit_identity.json").write_text("{}")  # a fit folder already started
    log = pipeline.StageLog(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with log.stage("fit", already_done=False):
            raise KeyboardInterrupt  # the session ended mid-fit
    with log.stage("fit", already_done=False):
        pass
    with log.stage("fit", already_done=True):  # nothing to do: not a stage that ran
        pass
    entries = json.loads((tmp_path / pipeline.STAGES_FILE).read_text())
    assert [e["stage"] for e in entries] == ["fit", "fit"]
    stopped, resumed = entries
    assert stopped["finished_utc"] is None and stopped["wall_s"] is None
    assert resumed["wall_s"] == pytest.approx(_seconds_between(resumed), abs=1.1)  # timestamps are whole seconds
    assert all(len(e["git_commit"]) >= 40 for e in entries)


def test_a_fresh_folder_stays_empty_until_its_first_stage_ends(pipeline, tmp_path):
    """The fit refuses a non-empty folder it did not start, so the log must not create one."""
    run = tmp_path / "run"
    log = pipeline.StageLog(run)
    with log.stage("fit", already_done=False):
        assert not run.exists()
        run.mkdir()
        (run / "fit_identity.json").write_text("{}")
    [entry] = json.loads((run / pipeline.STAGES_FILE).read_text())
    assert entry["stage"] == "fit" and entry["wall_s"] == pytest.approx(_seconds_between(entry), abs=1.1)


def _seconds_between(entry):
    from datetime import datetime

    return (datetime.fromisoformat(entry["finished_utc"]) - datetime.fromisoformat(entry["started_utc"])).total_seconds()


def test_a_package_from_before_a_setting_existed_seeds_a_run_of_the_same_recipe(pipeline):
    """qmof-pbe-v1.1's record predated `schedule`: a record without it reads as the v1 recipe
    (its default), and not as a recipe that differs in a setting it does record."""
    from mofbalora.training.config import load_train_config

    v1 = load_train_config(pipeline.ROOT / "pipelines" / "configs" / "release_qmof_v1.yaml")
    recorded = {k: v for k, v in v1.to_dict().items() if k != "schedule"}
    assert recorded != v1.to_dict()
    assert v1.was_recorded_as(recorded)
    assert not v1.was_recorded_as({**recorded, "lr": 0.001})
    assert not load_train_config(pipeline.CONFIG).was_recorded_as(recorded)


def test_the_test_stage_counts_as_done_only_for_the_model_as_it_is(pipeline, tmp_path):
    """A new noise head or calibration rewrites model.json: the cached test table is then stale,
    the stage runs again, and the stage log must say so."""
    import os

    (tmp_path / "model.json").write_text("{}")
    assert not pipeline.test_table_current(tmp_path)
    table = tmp_path / pipeline.TEST_TABLE
    table.write_text("id\n")
    assert pipeline.test_table_current(tmp_path)
    later = table.stat().st_mtime + 10
    os.utime(tmp_path / "model.json", (later, later))
    assert not pipeline.test_table_current(tmp_path)


@pytest.mark.qmof
def test_the_shipped_model_card_command_seeds_a_rerun_without_any_training_folder(pipeline, tmp_path, qmof_dataset):
    """`--from-package` (the model card's "reproduce" command) on a machine that never trained the
    model: qmof-pbe was a warm restart of run folders under results/ that a user does not have. The
    seeded folder takes the warm start from the package's record, drops the noise head and the
    calibration so that they are refitted with the settings the package records, and keeps the
    fit's stage log; with --keep-calibration it keeps them all."""
    import argparse

    from mofbalora.model_folder import read_model_json
    from mofbalora.pretrained import SHIPPED

    package = SHIPPED[0].folder
    record = json.loads((package / "release.json").read_text())
    shipped = read_model_json(package)
    assert record["warm_start"]  # the case that failed: its source folder is not in the repository
    defaults = pipeline._paths(argparse.Namespace(from_package=str(package), config=None, run_dir=None,
                                                  package_dir=None))
    assert defaults == (pipeline.ROOT / record["config_file"], pipeline.FROM_PACKAGE_RUNS / package.name, package)

    run = tmp_path / "refit"
    pipeline.main(["--from-package", str(package), "--run-dir", str(run), "--stop-after", "fit",
                   "--data", str(qmof_dataset.source)])
    meta = read_model_json(run)
    assert meta["noise_head"] is None and meta["calibration"] is None and not (run / "noise_head.safetensors").exists()
    settings = pipeline.uncertainty_settings(run, pipeline.UNCERTAINTY_CONFIG)
    assert settings["noise_head"].to_dict() == shipped["noise_head"]["config"]
    from mofbalora.fit_calibrate import CalibrationSettings  # a setting added since reads as its default

    assert settings["calibration"] == CalibrationSettings.from_record(shipped["calibration"]["settings"]).to_dict()
    # a package calibrated before the lower miss share existed is refitted central, as it shipped
    older = tmp_path / "v2.3-like"  # the shipped package as v2.3 recorded its calibration
    shutil.copytree(package, older)
    meta = read_model_json(older)
    meta["calibration"]["settings"] = {k: v for k, v in meta["calibration"]["settings"].items()
                                       if k not in ("lower_miss_shares", "min_per_end")}
    (older / "model.json").write_text(json.dumps(meta))
    pipeline.main(["--from-package", str(older), "--run-dir", str(tmp_path / "older"), "--stop-after", "fit",
                   "--data", str(qmof_dataset.source)])
    older_settings = pipeline.uncertainty_settings(tmp_path / "older", pipeline.UNCERTAINTY_CONFIG)["calibration"]
    recorded = read_model_json(older)["calibration"]["settings"]
    assert older_settings["lower_miss_shares"] == [0.5] and older_settings.items() >= recorded.items()
    stages = json.loads((run / pipeline.STAGES_FILE).read_text())
    assert stages and stages == [s for s in record["stages"] if s["stage"] == "fit"]
    identity = json.loads((run / pipeline.IDENTITY_FILE).read_text())
    assert identity["warm_start_model_json_sha256"] == record["warm_start"]["model_json_sha256"]
    assert pipeline.warm_start_record(run) == record["warm_start"]
    assert pipeline.training_record(run) == record["training"]
    with pytest.raises(SystemExit, match="another config"):  # the seeded folder keeps its recipe
        pipeline.main(["--from-package", str(package), "--run-dir", str(run), "--stop-after", "fit",
                       "--config", str(pipeline.ROOT / "pipelines" / "configs" / "release_qmof_v1.yaml"),
                       "--data", str(qmof_dataset.source)])

    kept = tmp_path / "rescore"
    pipeline.main(["--from-package", str(package), "--run-dir", str(kept), "--stop-after", "fit", "--keep-calibration",
                   "--data", str(qmof_dataset.source)])
    meta = read_model_json(kept)
    assert meta["noise_head"] == shipped["noise_head"] and meta["calibration"] == shipped["calibration"]
    assert json.loads((kept / pipeline.STAGES_FILE).read_text()) == record["stages"]
    assert not (kept / pipeline.SEEDED_UNCERTAINTY).exists()


def test_reproduction_report_lists_what_moved_beyond_the_tolerance():
    """benchmarks/reproduce_releases.py's comparison of a shipped and a reproduced release.json."""
    from benchmarks import reproduce_releases as module
    shipped = {"mae_ev": {"value": 0.3, "ci_low": 0.28}, "n_test": 10, "bins": [{"n": 4, "cov": 0.9, "width": None}],
               "kind": "a", "lost": 2.0}
    reproduced = {"mae_ev": {"value": 0.3 + 1e-7, "ci_low": 0.29}, "n_test": 10,
                  "bins": [{"n": 4, "cov": 0.9, "width": 1.5}], "kind": "b", "extra": 1.0}
    result = module.compare_scores(shipped, reproduced)
    assert result["compared"] == 5 and result["largest_abs_difference"] == pytest.approx(0.01)
    # a figure the reproduction lost differs; one the shipped record predates (absent or None) is added
    assert [d["key"] for d in result["differing"]] == ["kind", "lost", "mae_ev.ci_low"]
    assert result["added"] == ["bins[0].width", "extra"]
