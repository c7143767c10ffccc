"""Training configs from YAML: every shipped one loads, numbers PyYAML leaves as text are read, and a
wrong key, type or YAML is one error naming it, before any work."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mofbalora.cli import app
from mofbalora.training.config import TrainConfig, load_train_config
from tests.conftest import cli_message

ROOT = Path(__file__).resolve().parents[2]


def _load(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_train_config(path)


def test_every_shipped_config_and_recorded_model_config_reads_back_unchanged():
    for name in ("fit_cgcnn", "fit_chgnet", "release_qmof", "release_qmof_v1", "release_qmof_v2.1",
                 "release_qmof_v2.2", "release_smoke"):
        load_train_config(ROOT / "pipelines" / "configs" / f"{name}.yaml")
    for model_json in (ROOT / "mofbalora" / "pretrained").glob("*/model.json"):
        recorded = json.loads(model_json.read_text())["train_config"]
        assert TrainConfig.from_dict(recorded).was_recorded_as(recorded), model_json


def test_numbers_pyyaml_reads_as_text_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-4 and 3e3, numbers without a dot, as text; lr: 1e-4 used to fail
    deep inside the optimiser."""
    config = _load(tmp_path, "lr: 1e-4\nmax_structures: 3e3\nadapter:\n  prior_p: 5e-2\n")
    assert config.lr == pytest.approx(1e-4) and config.max_structures == 3000
    assert isinstance(config.max_structures, int)
    assert config.adapter == {"prior_p": pytest.approx(0.05)}


@pytest.mark.parametrize("text, message", [
    ("epochs: two\n", "epochs must be an integer, got 'two'"),
    ("epochs: 2.5\n", "epochs must be an integer, got 2.5"),
    ("lr: abc\n", "lr must be a number, got 'abc'"),
    ("lr: true\n", "lr must be a number, got True"),
    ("backbone: 3\n", "backbone must be text, got 3"),
    ("adapter: 3\n", "adapter must be a mapping of settings, got 3"),
    ("adapter:\n  rank: 0\n", "adapter: rank must be >= 1, got 0"),
    ("adapter:\n  rank: eight\n", "adapter: rank must be an integer, got 'eight'"),
    ("adapter:\n  ranks: 8\n", "adapter: unknown adapter keys ['ranks']"),
    ("split:\n  fractions: [0.8, x]\n", "split: fractions[1] must be a number, got 'x'"),
    ("split:\n  seeds: 1\n", "split: unknown split keys ['seeds']"),
    ("split: 3\n", "split must be a mapping of settings, got 3"),
    ("epochs: [\n", "not valid YAML at line 2, column 1"),
    ("epochs: 3\n  lr: 2\n", "not valid YAML at line 2, column 5: mapping values are not allowed here"),
    ("- a\n- b\n", "expected a mapping of training settings"),
    ("method: lora\nmembers: 3\n", "members pools independently trained members of ('balora', 'lora-mcdropout'); "
                                    "method 'lora' samples nothing"),
    ("method: lora-ensemble\nmembers: 3\n", "method 'lora-ensemble' has ensemble_size"),
    ("members: 0\n", "members must be >= 1, got 0"),
])
def test_a_wrong_value_is_one_error_naming_the_file_and_key(tmp_path, text, message):
    with pytest.raises(ValueError) as refused:
        _load(tmp_path, text)
    assert str(refused.value).startswith(str(tmp_path / "c.yaml")) and message in str(refused.value)


def test_fit_refuses_a_bad_config_before_writing_anything(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("adapter:\n  rank: 0\n")
    result = CliRunner().invoke(app, ["fit", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "adapter: rank must be >= 1" in cli_message(result.output)
    assert not (tmp_path / "run").exists()
