"""Documentation that cannot rot: the CLI reference and the README quick start."""

import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from mofbalora.cli import app, render_cli_reference
from tests.conftest import copy_cifs, write_labels

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_help():
    assert (ROOT / "docs" / "cli.md").read_text() == render_cli_reference(), "run `make docs`"


def test_method_page_stays_short():
    """docs/method.md says what the code does today in at most 500 lines; dated logs go to docs/studies/."""
    assert len((ROOT / "docs" / "method.md").read_text().splitlines()) <= 500


def quickstart_block(marker: str, language: str = "bash") -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(rf"<!-- {marker}:start -->\s*```{language}\n(.*?)```", text, re.S).group(1)


def quickstart_commands(marker: str = "quickstart"):
    return [shlex.split(line) for line in quickstart_block(marker).strip().splitlines()]


def test_readme_is_a_users_page():
    """At most 200 lines, an install command, and a predicting command within the first 40 lines."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    assert any(line.startswith("make install") or "pip install" in line for line in lines)
    first = next(i for i, line in enumerate(lines) if line.startswith(("mofbalora predict", "mofbalora screen")))
    assert first < 40
    assert "make test" in "\n".join(lines)
    assert "../shared" not in "\n".join(lines)  # no path of the development machine


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    """Every quick-start command, as written, on the shipped example CIFs and with the shipped model,
    in a copy of the repository's examples/ (the outputs land in a temporary folder)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    shipped = quickstart_commands()
    assert [c[1] for c in shipped] == ["validate", "predict", "screen", "models"]
    for command in shipped:
        assert command[0] == "mofbalora"
        result = CliRunner().invoke(app, command[1:])
        assert result.exit_code == 0, (command, result.output)
    n_cifs = len(list((tmp_path / "examples" / "cifs").glob("*.cif")))
    for name, status in (("validation.csv", "valid"), ("predictions.csv", "ok"), ("screen.csv", "ok")):
        table = pd.read_csv(tmp_path / name)
        assert len(table) == n_cifs and (table["status"] == status).all(), name
    python = quickstart_block("python-quickstart", "python")
    namespace: dict = {}
    exec(compile(python, "README.md python quick start", "exec"), namespace)
    assert list(namespace["ranked"]["rank"]) == list(range(1, n_cifs + 1))
    assert namespace["table"]["status"].tolist() == ["ok"]


def test_readme_fit_quickstart_runs(tmp_path, monkeypatch, smallest_qmof):
    """Fitting one's own model as the README writes it, on 400 real QMOF structures for one epoch
    (its 10% calibration split can then give a finite 95% interval), then screening the examples."""
    ids, paths, gaps = smallest_qmof(400)
    data = copy_cifs(paths, tmp_path / "my_dataset")
    write_labels(data, ids, gaps)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    config = tmp_path / "pipelines" / "configs"
    config.mkdir(parents=True)
    shutil.copy(ROOT / "pipelines" / "configs" / "fit_cgcnn.yaml", config)
    monkeypatch.chdir(tmp_path)
    own = quickstart_commands("fit-quickstart")
    assert [c[1] for c in own] == ["fit", "screen"]
    for command in own:
        args = command[1:]
        if args[0] == "fit":  # same command, small data
            args += ["--epochs", "1", "--max-structures", "400"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "screen_own.csv").exists()
