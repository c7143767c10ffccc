"""Train, calibrate, test and package the release band-gap model (make release-model).

Stages, each resumable (a rerun skips what is done; an interrupted fit continues from its last
checkpoint):
1. fit: CGCNN + the chosen BaLoRA default on all of QMOF (pipelines/configs/release_qmof.yaml);
2. calibrate on the held-out calibration split (conformal intervals, OOD thresholds);
3. test: predictions on the test split at the model's S, scored with BCa bootstrap CIs;
4. package: the files prediction needs, the split ids, release.json and MODEL_CARD.md into
   mofbalora/pretrained/qmof-pbe-cgcnn-balora/ (at most 5 MB; checked).

    python pipelines/release_model.py [--data PATH] [--stop-after fit|calibrate|test]
                                      [--config YAML --run-dir DIR --package-dir DIR]  (smoke tests)

The run folder is results/release/qmof-pbe-cgcnn-balora/ (test predictions stay there: they
hold QMOF labels and are never committed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofbalora.analysis.release import model_card, test_scores  # noqa: E402
from mofbalora.calibrate import calibrate  # noqa: E402
from mofbalora.data.datasets import load_labelled_dataset  # noqa: E402
from mofbalora.data.io import write_table_atomic, write_text_atomic  # noqa: E402
from mofbalora.featurise.base import sample_num_atoms  # noqa: E402
from mofbalora.model_folder import copy_for_prediction, package_versions, read_model_json  # noqa: E402
from mofbalora.predict import load_model  # noqa: E402
from mofbalora.pretrained import SHIPPED  # noqa: E402
from mofbalora.training.config import load_train_config  # noqa: E402
from mofbalora.training.fit import fit, prepare_data  # noqa: E402

from bandgap_benchmark import git_commit  # noqa: E402

logger = logging.getLogger("release_model")
CONFIG = ROOT / "pipelines" / "configs" / "release_qmof.yaml"
RELEASE = SHIPPED[0]
RUN_DIR = ROOT / "results" / "release" / RELEASE.folder_name
PACKAGE_DIR = ROOT / "mofbalora" / "pretrained" / RELEASE.folder_name
TEST_TABLE = "test_predictions.csv"
MAX_PACKAGE_BYTES = 5 * 1024 * 1024


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    return Path(args.config), Path(args.run_dir), Path(args.package_dir)


def training_record(folder: Path) -> dict[str, Any]:
    """Epochs run, best epoch and wall time of the fit stage (from its files)."""
    metrics = pd.read_csv(folder / "members" / "0" / "logs" / "version_0" / "metrics.csv")
    val = metrics.dropna(subset=["val_mae_ev"])
    started = (folder / "fit_identity.json").stat().st_mtime
    finished = (folder / "members" / "0" / "done").stat().st_mtime
    return {"epochs_run": int(val["epoch"].max()) + 1, "best_epoch": int(val.loc[val["val_mae_ev"].idxmin(), "epoch"]) + 1,
            "best_val_mae_ev": float(val["val_mae_ev"].min()),
            "val_mae_ev_by_epoch": [float(v) for v in val.sort_values("epoch")["val_mae_ev"]],
            # from starting the folder to the member's end: includes featurising and any interruption
            "wall_s": finished - started,
            "device": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"}


def test_predictions(folder: Path, parts: dict[str, Any]) -> pd.DataFrame:
    """The model's predictions on the test split (cached in the run folder)."""
    path = folder / TEST_TABLE
    if path.exists():
        return pd.read_csv(path)
    model = load_model(folder)
    calibration = model.meta["calibration"]
    ids, samples, gaps = parts["test"]
    predictive = model.predictive(samples, n_samples=calibration["samples"], seed=calibration["seed"], progress=True)
    table = model.summarise(predictive, interval_levels=(68, 95))
    table.insert(0, "id", ids)
    table.insert(1, "bandgap_true_ev", gaps)
    table["n_atoms"] = predictive.n_atoms
    write_table_atomic(table, path)
    return table


def release_record(folder: Path, parts: dict[str, Any], scores: dict[str, Any], config_path: Path) -> dict[str, Any]:
    meta = read_model_json(folder)
    train_atoms = [sample_num_atoms(s) for s in parts["train"][1]]
    data = meta["data"]
    return {
        "name": RELEASE.folder_name, "alias": RELEASE.alias,
        "git_commit": git_commit(),
        "config_file": str(config_path.resolve().relative_to(ROOT)) if config_path.resolve().is_relative_to(ROOT)
        else str(config_path),
        "train_config": meta["train_config"],
        "data": {"n_total": sum(data[f"n_{p}"] for p in ("train", "val", "calibration", "test")) + data["n_skipped"],
                 **{k: data[k] for k in ("n_train", "n_val", "n_calibration", "n_test", "n_skipped",
                                         "split_sha256", "labels_sha256")},
                 "train_n_atoms_range": [int(min(train_atoms)), int(max(train_atoms))]},
        "calibration": {k: meta["calibration"][k] for k in ("samples", "seed", "n_calibration", "ood",
                                                             "calibration_mae_ev")},
        "training": training_record(folder),
        "test": scores,
        "versions": package_versions(),
    }


def package(folder: Path, record: dict[str, Any], destination: Path) -> Path:
    """Copy the model into the package with its card; refuse more than 5 MB."""
    card = model_card(record)
    # the shipped copy must not point at this machine's data
    meta_updates = {"data": {**read_model_json(folder)["data"], "source": "QMOF (CC BY 4.0), see MODEL_CARD.md"}}
    destination = copy_for_prediction(folder, destination, meta_updates=meta_updates,
                                      extra_files={"MODEL_CARD.md": card,
                                                   "release.json": json.dumps(record, indent=1, default=str)})
    size = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    if size > MAX_PACKAGE_BYTES:
        raise SystemExit(f"{destination}: {size / 2**20:.1f} MB, more than the 5 MB package budget")
    logger.info("packaged %s (%.2f MB)", destination, size / 2**20)
    return destination


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="QMOF folder or archive (default: ../shared/data/qmof)")
    parser.add_argument("--stop-after", choices=["fit", "calibrate", "test"], default=None)
    parser.add_argument("--config", default=str(CONFIG), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=str(RUN_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--package-dir", default=str(PACKAGE_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, run_dir, package_dir = _paths(args)
    config = load_train_config(config_path)
    folder = fit(config, data=args.data, out_dir=run_dir, resume=(run_dir / "fit_identity.json").exists())
    if folder is None or args.stop_after == "fit":
        return
    # all of QMOF's features are loaded once, for calibration and the test stage
    prepared = prepare_data(config, load_labelled_dataset(args.data, target=config.target), folder, progress=True)
    if read_model_json(folder).get("calibration") is None:
        calibrate(folder, progress=True, prepared=prepared)
    if args.stop_after == "calibrate":
        return
    parts = prepared.parts
    scores = test_scores(test_predictions(folder, parts))
    record = release_record(folder, parts, scores, config_path)
    write_text_atomic(folder / "release.json", json.dumps(record, indent=1, default=str))
    if args.stop_after == "test":
        return
    package(folder, record, package_dir)
    print(f"test MAE {scores['mae_ev']['value']:.3f} eV, 95% coverage {scores['coverage_95']['value']:.3f}, "
          f"packaged into {package_dir}")


if __name__ == "__main__":
    main()
