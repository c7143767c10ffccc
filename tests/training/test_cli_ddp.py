"""The CLI on real and broken files, and 2-process DDP (gloo on CPU) for fit and predict."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pymatgen.io.cif import CifWriter
from typer.testing import CliRunner

from mofbalora.cli import app
from mofbalora.data import read_structure
from mofbalora.data.splits import Split
from tests.conftest import cli_message

from .conftest import tiny_config

CLI = [sys.executable, "-m", "mofbalora.cli"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config("balora", epochs=2).to_dict()))
    return path


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, config_file, tiny_dataset):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = CliRunner().invoke(app, ["fit", str(config_file), "--data", str(tiny_dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, cli_model, tiny_dataset):
    folder = tmp_path_factory.mktemp("mixed")
    test_ids = Split.load(cli_model / "split.json").test
    for structure_id in test_ids:
        shutil.copy(tiny_dataset / f"{structure_id}.cif", folder / f"{structure_id}.cif")
    good = (tiny_dataset / f"{test_ids[0]}.cif").read_text()
    (folder / "empty.cif").write_text("")
    (folder / "truncated.cif").write_text(good[: len(good) // 2])
    (folder / "not_a_cif.cif").write_text("Hello, I am a README.\n")
    disordered = read_structure(tiny_dataset / f"{test_ids[0]}.cif")
    disordered.replace(0, {disordered[0].specie.symbol: 0.5, "Zn": 0.5})
    CifWriter(disordered).write_file(folder / "disordered.cif")
    return folder, test_ids


def test_predict_one_row_per_input_with_status(tmp_path, cli_model, mixed_inputs):
    folder, test_ids = mixed_inputs
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--samples", "8", "--out", str(out),
                                      str(folder)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "bandgap_mean_ev", "bandgap_std_ev", "bandgap_std_epistemic_ev",
                                   "bandgap_std_aleatoric_ev", "lower_95_ev", "upper_95_ev", "p_metallic",
                                   "out_of_distribution", "ood_reason", "status", "reason"]
    assert len(table) == len(test_ids) + 4
    status = dict(zip(table["id"], table["status"]))
    assert all(status[i] == "ok" for i in test_ids)
    reasons = dict(zip(table["id"], table["reason"].fillna("")))
    for broken in ("empty", "truncated", "not_a_cif", "disordered"):
        assert status[broken] == "skipped" and reasons[broken], broken
    assert "partial occupancy" in reasons["disordered"]
    assert not list(tmp_path.glob(".pred.csv.*"))  # atomic write left no temporary


def test_predict_exit_code_when_nothing_predictable(tmp_path, cli_model):
    bad = tmp_path / "bad.cif"
    bad.write_text("")
    result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--out", str(tmp_path / "p.csv"), str(bad)])
    assert result.exit_code == 1 and len(pd.read_csv(tmp_path / "p.csv")) == 1


def test_bad_output_names_and_sample_counts_are_refused_before_any_work(tmp_path, cli_model, tiny_dataset):
    cif = str(next(tiny_dataset.rglob("*.cif")))
    for command in (["predict"], ["screen", "--gap", "1:2"], ["validate"]):
        model = [] if command == ["validate"] else ["--model", str(cli_model)]
        result = CliRunner().invoke(app, [*command, *model, "--out", str(tmp_path / "t.xlsx"), cif])
        assert result.exit_code == 2 and ".csv, .csv.gz or .parquet" in cli_message(result.output), command
    for samples in ("0", "-1"):
        result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--samples", samples,
                                          "--out", str(tmp_path / "p.csv"), cif])
        assert result.exit_code == 2 and f"samples must be >= 1, got {samples}" in cli_message(result.output)
    result = CliRunner().invoke(app, ["featurise", "--skipped", str(tmp_path / "s.xlsx"), cif])
    assert result.exit_code == 2 and ".csv, .csv.gz or .parquet" in cli_message(result.output)
    result = CliRunner().invoke(app, ["featurise", "--backbone", "alignn", cif])
    assert result.exit_code == 2 and "unknown featuriser 'alignn'" in cli_message(result.output)
    for command in (["featurise", "--workers", "-1"], ["validate", "--max-atoms", "0"],
                    ["screen", "--gap", "1:2", "--top", "-1"]):
        result = CliRunner().invoke(app, [*command, cif])
        assert result.exit_code == 2 and "greater than or equal to" in cli_message(result.output), command
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started, nothing to resume
    result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--out", str(tmp_path / "p.csv.gz"), cif])
    assert result.exit_code == 0 and list(pd.read_csv(tmp_path / "p.csv.gz")["status"]) == ["ok"]


def test_screen_ranks_by_window_probability(tmp_path, cli_model, mixed_inputs):
    folder, test_ids = mixed_inputs
    out = tmp_path / "screen.csv"
    result = CliRunner().invoke(app, ["screen", "--model", str(cli_model), "--gap", "1.0:3.0", "--samples", "8",
                                      "--out", str(out), str(folder)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == len(test_ids) + 4
    ok = table[table["status"] == "ok"]
    assert (np.diff(ok["p_in_window"].to_numpy()) <= 1e-12).all()
    assert ok["p_in_window"].between(0, 1).all() and ok["p_in_window"].max() < 1.0  # calibrated: never certain
    assert list(table["status"]).index("skipped") == len(ok)  # skipped rows last
    assert "out_of_distribution" in table and (tmp_path / "screen.csv.summary.md").exists()
    assert ok["out_of_distribution"].any() and not ok["out_of_distribution"].all()  # both groups, for the next check
    first = tmp_path / "screen_in_distribution_first.csv"
    result = CliRunner().invoke(app, ["screen", "--model", str(cli_model), "--gap", "1.0:3.0", "--samples", "8",
                                      "--in-distribution-first", "--out", str(first), str(folder)])
    assert result.exit_code == 0, result.output
    reordered = pd.read_csv(first)
    flags = reordered.loc[reordered["status"] == "ok", "out_of_distribution"].to_numpy()
    assert (np.diff(flags.astype(int)) >= 0).all() and sorted(reordered["id"]) == sorted(table["id"])
    assert CliRunner().invoke(app, ["screen", "--model", str(cli_model), "--gap", "3:1", str(folder)]).exit_code != 0
    assert "--accelerator" in CliRunner().invoke(app, ["screen", "--help"]).output


def test_same_named_files_in_two_folders_get_distinct_ids(tmp_path, cli_model, tiny_dataset):
    test_ids = Split.load(cli_model / "split.json").test
    for folder, source in (("a", test_ids[0]), ("b", test_ids[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(tiny_dataset / f"{source}.cif", tmp_path / folder / "mof.cif")
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--samples", "4", "--out", str(out),
                                      str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table["id"]) == ["a/mof", "b/mof"] and table["bandgap_mean_ev"].nunique() == 2


def test_fit_refuses_a_folder_with_another_config(tmp_path, config_file, cli_model, tiny_dataset):
    other = tmp_path / "other.yaml"
    values = yaml.safe_load(config_file.read_text())
    values["lr"] = 0.5
    other.write_text(yaml.safe_dump(values))
    target = tmp_path / "model"
    shutil.copytree(cli_model, target)
    result = CliRunner().invoke(app, ["fit", str(other), "--data", str(tiny_dataset), "--out", str(target)])
    assert result.exit_code == 2 and "train_config.lr" in cli_message(result.output)


def test_larger_cells_than_training_are_flagged(tmp_path, cli_model, tiny_dataset):
    """A 2x2x2 supercell of a training-size cell exceeds every training cell: flagged, with the reason."""
    from mofbalora.predict import load_model

    model = load_model(cli_model)
    limit = model.meta["data"]["train_n_atoms_max"]
    structure = read_structure(tiny_dataset / f"{Split.load(cli_model / 'split.json').test[0]}.cif")
    structure.make_supercell([2, 2, 2])
    assert len(structure) > limit
    table = model.predict([structure], samples=4)
    assert table.loc[0, "out_of_distribution"] and f"more than any training structure ({limit})" in table.loc[0, "ood_reason"]


def test_every_command_has_help():
    assert "PBE" in CliRunner().invoke(app, ["predict", "--help"]).output
    for command in ([], ["validate"], ["fit"], ["predict"], ["screen"], ["featurise"], ["data", "download"]):
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_fit_and_data_info_name_a_missing_dataset_without_a_traceback(tmp_path, config_file):
    missing = str(tmp_path / "nowhere")
    fitted = CliRunner().invoke(app, ["fit", str(config_file), "--data", missing, "--out", str(tmp_path / "m")])
    assert fitted.exit_code == 2 and "cannot fit: no dataset found" in fitted.output and "Traceback" not in fitted.output
    assert "NOT calibrated" not in fitted.output
    info = CliRunner().invoke(app, ["data", "info", "--data", missing])
    assert info.exit_code == 2 and "cannot read the dataset: no dataset found" in info.output


@pytest.mark.parametrize("damage", ["truncated weights", "missing noise head", "broken model.json"])
def test_a_damaged_model_folder_is_named_file_by_file(tmp_path, cli_model, tiny_dataset, damage):
    folder = tmp_path / "copy"
    shutil.copytree(cli_model, folder)
    if damage == "truncated weights":
        target = folder / "members" / "0" / "adapter" / "adapter_model.safetensors"
        target.write_bytes(target.read_bytes()[:1000])
        expected = f"{target}: damaged weights"
    elif damage == "missing noise head":
        target = folder / "noise_head.safetensors"
        target.unlink()
        expected = f"{target}: missing"
    else:
        target = folder / "model.json"
        target.write_text("{")
        expected = f"{target}: not valid JSON"
    cif = str(next(tiny_dataset.rglob("*.cif")))
    result = CliRunner().invoke(app, ["predict", "--model", str(folder), "--out", str(tmp_path / "p.csv"), cif])
    assert result.exit_code == 2 and f"cannot load model: {expected}" in cli_message(result.output), result.output[-500:]


@pytest.mark.skipif(sys.platform == "darwin", reason="Apple's MPS accelerator exists there")
def test_an_accelerator_or_device_count_the_machine_lacks_is_one_line(tmp_path, cli_model, tiny_dataset):
    cif = str(next(tiny_dataset.rglob("*.cif")))
    for extra, expected in ((["--accelerator", "mps"], "cannot predict with --accelerator mps"),
                            (["--accelerator", "tpu"], "cannot predict with --accelerator tpu"),
                            (["--devices", "two"], "'two': give a number of devices")):
        result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--out", str(tmp_path / "p.csv"),
                                          "--no-resume", *extra, cif])
        assert result.exit_code == 2 and expected in cli_message(result.output), result.output[-800:]
    fitted = CliRunner().invoke(app, ["fit", str(tmp_path / "none.yaml"), "--devices", "0,x"])
    assert fitted.exit_code == 2 and "give a number of devices" in fitted.output


def test_version_names_the_package_and_the_default_model():
    from mofbalora import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mofbalora {__version__} (default model: qmof-pbe)"


def test_help_paragraphs_flow_with_the_terminal_width():
    # docstring paragraphs are wrapped at 100 columns in the source; on a wide terminal they must not keep those breaks
    output = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200, env={"COLUMNS": "200"}).output
    assert "bandgap_std_ev (total: epistemic + data noise, calibrated), bandgap_std_epistemic_ev" in output


def _run(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_ddp_two_processes_train_identically_and_predict_like_one(tmp_path, config_file, tiny_dataset, cli_model):
    out = tmp_path / "ddp_model"
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    fitted = _run(["fit", str(config_file), "--data", str(tiny_dataset), "--out", str(out), *ddp], tmp_path)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    checksums = sorted((out / "members/0/rank_checksums").glob("rank*.txt"))
    assert len(checksums) == 2 and checksums[0].read_text() == checksums[1].read_text()
    assert (out / "model.json").exists()
    inputs = [str(tiny_dataset / f"{i}.cif") for i in Split.load(out / "split.json").train[:7]]
    single = _run(["predict", "--model", str(out), "--samples", "8", "--out", str(tmp_path / "one.csv"), *inputs], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = _run(["predict", "--model", str(out), "--samples", "8", "--out", str(tmp_path / "two.csv"), *ddp, *inputs],
                   tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert list(one["id"]) == list(two["id"]) == [Path(p).stem for p in inputs]
    np.testing.assert_allclose(two["bandgap_mean_ev"], one["bandgap_mean_ev"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(two["bandgap_std_ev"], one["bandgap_std_ev"], rtol=1e-5, atol=1e-6)


def test_a_too_small_calibration_split_is_reported_not_hidden(tmp_path, tiny_dataset):
    config = tmp_path / "small_cal.yaml"
    values = tiny_config("lora", epochs=1, split={"fractions": [0.6, 0.2, 0.1, 0.1], "method": "random", "seed": 0})
    config.write_text(yaml.safe_dump(values.to_dict()))
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["fit", str(config), "--data", str(tiny_dataset), "--out", str(out)])
    assert result.exit_code == 1 and "NOT calibrated" in result.output and "at least 39" in result.output
    one = str(next(tiny_dataset.glob("*.cif")))
    predicted = CliRunner().invoke(app, ["predict", "--model", str(out), "--out", str(tmp_path / "p.csv"), one])
    assert predicted.exit_code == 0 and "not calibrated" in predicted.output

    # one validation structure: the data-noise head cannot be chosen, said in those words (it was
    # metrics' bare 'need at least two points')
    values = tiny_config("lora", epochs=1, split={"fractions": [0.49, 0.01, 0.45, 0.05], "method": "random", "seed": 0})
    config.write_text(yaml.safe_dump(values.to_dict()))
    result = CliRunner().invoke(app, ["fit", str(config), "--data", str(tiny_dataset), "--out", str(tmp_path / "m1")])
    assert result.exit_code == 1 and "NOT calibrated: the validation split has 1 usable structure(s)" in result.output


def test_fit_shows_what_the_join_left_out_once_and_no_library_warnings(tmp_path, tiny_dataset):
    """A user's own labels: the join report is shown without --verbose when something was left out
    (here a NaN and a negative band gap), once although every stage reloads the labels; crepes'
    import-time 'always show UserWarning' filter does not let Lightning's warnings through."""
    data = tmp_path / "mine"
    shutil.copytree(tiny_dataset, data)
    labels = pd.read_csv(data / "bandgaps.csv")
    labels.iloc[0, 1], labels.iloc[1, 1] = -0.3, np.nan
    labels.to_csv(data / "bandgaps.csv", index=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config("lora", epochs=1).to_dict()))
    fitted = _run(["fit", str(config), "--data", str(data), "--out", str(tmp_path / "model")], tmp_path)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    report = [line for line in fitted.stderr.splitlines() if "joined from" in line]
    assert len(report) == 1 and "98 joined from 100 CIFs" in report[0]
    assert f"1 NaN labels (e.g. {labels.iloc[1, 0]}), 1 negative labels (e.g. {labels.iloc[0, 0]})" in report[0]
    for noise in ("eval mode", "UserWarning", "warn(", "Tip:", "GPU available"):
        assert noise not in fitted.stdout + fitted.stderr, (noise, fitted.stderr[-2000:])
    split = Split.load(tmp_path / "model" / "split.json")
    assert labels.iloc[0, 0] not in {*split.train, *split.val, *split.calibration, *split.test}


SCREEN_ARGS = ["screen", "--gap", "1.0:3.0", "--samples", "8", "--chunk-size", "8"]


@pytest.fixture(scope="module")
def whole_screen(tmp_path_factory, cli_model, tiny_dataset):
    """The uninterrupted one-process screen both resume tests compare against (run once)."""
    whole = tmp_path_factory.mktemp("whole") / "whole.csv"
    done = subprocess.run(CLI + SCREEN_ARGS + ["--model", str(cli_model), str(tiny_dataset), "--out", str(whole)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return pd.read_csv(whole)


@pytest.mark.parametrize("processes", [1, 2])
def test_killed_screen_resumes_to_the_same_table(tmp_path, cli_model, tiny_dataset, whole_screen, processes):
    """A screen killed midway (SIGKILL to every process, after some chunks were saved) and rerun gives
    the same final table as an uninterrupted one-process screen; the rerun does not redo or rewrite
    saved chunks, and no structure is saved twice. With 2 processes (Lightning DDP, gloo on CPU)
    every chunk is sharded across both ranks and only rank 0 writes."""
    import signal
    import time

    args = SCREEN_ARGS + ["--model", str(cli_model), str(tiny_dataset)]
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"] if processes == 2 else []
    killed = tmp_path / "killed.csv"
    parts = tmp_path / "killed.csv.parts"
    process = subprocess.Popen(CLI + args + ddp + ["--out", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(list(parts.glob("chunk-*.csv"))) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # rank 0 and the rank it launched
    process.wait()
    saved = sorted(parts.glob("chunk-*.csv"))
    assert len(saved) >= 3 and not killed.exists()  # interrupted midway, with chunks on disk
    stamps = {p: p.stat().st_mtime_ns for p in saved}
    changed = []
    rerun = subprocess.Popen(CLI + args + ddp + ["--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    while rerun.poll() is None:
        changed += [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t]
        time.sleep(0.2)
    assert rerun.returncode == 0, rerun.stderr.read()[-2000:]
    assert not changed and not parts.exists()
    resumed, reference = pd.read_csv(killed), whole_screen
    assert len(reference) == 100 and resumed["id"].is_unique
    pd.testing.assert_frame_equal(resumed, reference, check_exact=False, rtol=1e-5, atol=1e-6)


def test_resume_refuses_other_settings(tmp_path, cli_model, tiny_dataset):
    out = tmp_path / "s.csv"
    parts = tmp_path / "s.csv.parts"
    parts.mkdir()
    (parts / "settings.json").write_text('{"samples": 4}')
    result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--samples", "8", "--out", str(out),
                                      str(tiny_dataset / "missing.cif")])
    assert result.exit_code == 2 and "unfinished run with other" in cli_message(result.output)
    result = CliRunner().invoke(app, ["predict", "--model", str(cli_model), "--samples", "8", "--out", str(out),
                                      "--no-resume", str(tiny_dataset / "missing.cif")])
    assert result.exit_code == 1 and not parts.exists() and len(pd.read_csv(out)) == 1


def test_saved_chunks_read_back_ids_that_pandas_takes_for_missing(tmp_path):
    """A structure named nan, NA or null was read back from a saved chunk as a missing id (then
    ""), so a resumed run predicted it again and the screen benchmark lost its name."""
    from mofbalora.data.io import write_table_atomic
    from mofbalora.streaming import read_predictions

    ids = ["nan", "NA", "null", "None", "N/A", "MOF-5"]
    table = pd.DataFrame({"id": ids, "bandgap_mean_ev": [1.0, np.nan, 2.0, 3.0, np.nan, 4.0],
                          "out_of_distribution": [False] * 6, "ood_reason": [""] * 5 + ["NA"],
                          "status": ["ok", "skipped", "ok", "ok", "skipped", "ok"],
                          "reason": ["", "no atoms", "", "", "no atoms", ""]})
    write_table_atomic(table, tmp_path / "chunk-000000.csv")
    back = read_predictions(tmp_path / "chunk-000000.csv")
    assert list(back["id"]) == ids and list(back["ood_reason"]) == list(table["ood_reason"])
    assert list(back["reason"]) == list(table["reason"])
    np.testing.assert_array_equal(back["bandgap_mean_ev"], table["bandgap_mean_ev"])
    assert back["out_of_distribution"].dtype == bool


def test_progress_line_counts_skipped_inputs_and_their_main_reason():
    from mofbalora.streaming import skipped_summary

    ok = pd.DataFrame({"status": ["ok", "ok"], "reason": ["", ""]})
    bad = pd.DataFrame({"status": ["skipped"] * 3 + ["ok"],
                        "reason": ["unreadable or not a CIF: x.cif", "unreadable or not a CIF: y.cif",
                                   "too many atoms: 1200 > 1000", ""]})
    assert skipped_summary([]) == skipped_summary([ok]) == "skipped 0"
    assert skipped_summary([ok, bad]) == "skipped 3 (mostly: unreadable or not a CIF)"
