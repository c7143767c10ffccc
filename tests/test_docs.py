"""Documentation that cannot rot: the CLI reference and the README quick start."""

import re
import shlex
import shutil
from pathlib import Path

from typer.testing import CliRunner

from mofbalora.cli import app, render_cli_reference
from tests.conftest import copy_cifs, write_labels

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_help():
    assert (ROOT / "docs" / "cli.md").read_text() == render_cli_reference(), "run `make docs`"


def quickstart_commands(marker: str = "quickstart"):
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker}:start -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_readme_quickstart_runs(tmp_path, monkeypatch, smallest_qmof):
    """Every quick-start command, as written, on real CIFs: first with the shipped model, then
    fitting one's own (fit gets a small data override: 400 structures, so that its 10% calibration
    split can give a finite 95% interval)."""
    ids, paths, gaps = smallest_qmof(406)
    data = copy_cifs(paths[:400], tmp_path / "data")
    write_labels(data, ids[:400], gaps[:400])
    copy_cifs(paths[400:406], tmp_path / "my_mofs")  # the quick start reads my_mofs/
    config = tmp_path / "pipelines" / "configs"
    config.mkdir(parents=True)
    shutil.copy(ROOT / "pipelines" / "configs" / "fit_cgcnn.yaml", config)
    monkeypatch.chdir(tmp_path)
    shipped, own = quickstart_commands(), quickstart_commands("fit-quickstart")
    assert [c[1] for c in shipped] == ["validate", "predict", "screen", "models"]
    assert [c[1] for c in own] == ["fit", "screen"]
    for command in shipped + own:
        assert command[0] == "mofbalora"
        args = command[1:]
        if args[0] == "fit":  # same command, small data
            args += ["--data", str(data), "--epochs", "1", "--max-structures", "400"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
    for name in ("validation.csv", "predictions.csv", "screen.csv", "screen_own.csv"):
        assert (tmp_path / name).exists(), name
