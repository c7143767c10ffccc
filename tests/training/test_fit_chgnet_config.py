"""The shipped CHGNet config trains, calibrates and predicts on real QMOF (smoke size), as the README
tells a user to run it."""

from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from mofbalora.cli import app
from tests.conftest import copy_cifs, write_labels

ROOT = Path(__file__).resolve().parents[2]


def test_fit_chgnet_yaml_fits_and_predicts(tmp_path, smallest_qmof):
    """pipelines/configs/fit_chgnet.yaml as shipped, on 120 small QMOF structures for one epoch; only
    the split fractions (so that a smoke-sized calibration split still holds the 39 structures a
    finite 95% interval needs) and the calibration S (time) change."""
    ids, paths, gaps = smallest_qmof(120)
    data = copy_cifs(paths, tmp_path / "data")
    write_labels(data, ids, gaps)
    config = yaml.safe_load((ROOT / "pipelines" / "configs" / "fit_chgnet.yaml").read_text())
    assert config["backbone"] == "chgnet" and config["method"] == "balora"
    config["split"]["fractions"] = [0.4, 0.1, 0.4, 0.1]
    config["calibration_samples"] = 4
    config_path = tmp_path / "fit_chgnet.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "chgnet-balora"
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", str(config_path), "--data", str(data), "--epochs", "1", "--out", str(out)])
    assert fitted.exit_code == 0, fitted.output
    predicted = runner.invoke(app, ["predict", "--model", str(out), "--samples", "4", "--out",
                                    str(tmp_path / "pred.csv"), *map(str, paths[:5])])
    assert predicted.exit_code == 0, predicted.output
    table = pd.read_csv(tmp_path / "pred.csv")
    ok = table[table["status"] == "ok"]
    assert len(ok) == 5 and (ok["bandgap_std_epistemic_ev"] > 0).all()
    assert (ok["lower_95_ev"] <= ok["bandgap_mean_ev"]).all() and (ok["bandgap_mean_ev"] <= ok["upper_95_ev"]).all()
