"""Train, calibrate, test and package the release band-gap model (make release-model).

Stages, each resumable (a rerun skips what is done; an interrupted fit continues from its last
checkpoint):
1. fit: CGCNN + the chosen BaLoRA default on all of QMOF. The shipped v2.4 and v2.3 have the fit of v2.2
   (pipelines/configs/release_qmof_v2.2.yaml, the default), a warm restart of v2.1
   (release_qmof_v2.1.yaml), itself a warm restart of v2 (release_qmof.yaml); their fits must exist
   first: ``python -m pipelines.release_model --config pipelines/configs/release_qmof.yaml
   --run-dir results/release/qmof-pbe-cgcnn-balora --stop-after fit``, then the same with
   release_qmof_v2.1.yaml and ``--run-dir results/release/qmof-pbe-cgcnn-balora-v2.1``
   (``make release-model`` runs all three);
2. noise: the per-structure data-noise head, its variant chosen on validation
   (pipelines/configs/uncertainty.yaml; mofbalora.data_noise). v2.3 differs from v2.2 only here:
   the fourth round of variants chose the composition-aware head (docs/method.md §13);
3. calibrate on the held-out calibration split (Mondrian conformal intervals, mean rule, where the
   95% interval leaves its 5%, OOD thresholds). v2.4 differs from v2.3 only in that choice;
4. test: predictions on the test split at the model's S, scored with BCa bootstrap CIs, and the
   reliability figure of the window probability;
5. package: the files prediction needs, the split ids, release.json and MODEL_CARD.md into
   mofbalora/pretrained/qmof-pbe-cgcnn-balora/ (at most 5 MB; checked).

    python -m pipelines.release_model [--data PATH] [--stop-after fit|noise|calibrate|test]
                                      [--from-package DIR] [--keep-calibration]
                                      [--config YAML --run-dir DIR --package-dir DIR]  (smoke tests)

``--from-package DIR`` reproduces a shipped release from its package alone, on a machine that never
trained it: the run folder (default results/release/from-package/<name>) starts from the package's
weights, split and training record, the noise head and calibration are refitted with the settings its
model.json records, the test split is scored and DIR is rewritten, so that ``git diff`` shows what
changed (for v2.3 on 2 cores: about 6 minutes, every figure of release.json within 1e-5).
``--keep-calibration`` scores a folder as it is, without a new noise head or calibration (the
"before" of a change; with ``--from-package``, an archived release rescored by today's test stage).
``--current-settings`` with ``--from-package`` refits them with pipelines/configs/uncertainty.yaml
instead: a new release from a shipped model's weights (v2.4 is v2.3's weights, noise head and
calibration refitted with the lower miss share chosen on validation, docs/method.md §9).

The run folder is results/release/qmof-pbe-cgcnn-balora-v2.4/ (test predictions stay there: they
hold QMOF labels and are never committed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from mofbalora.data.datasets import load_labelled_dataset
from mofbalora.data.io import write_table_atomic, write_text_atomic
from mofbalora.data.splits import Split
from mofbalora.data_noise import fit_data_noise
from mofbalora.featurise.base import sample_num_atoms
from mofbalora.fit_calibrate import CalibrationSettings, calibrate
from mofbalora.model_folder import (
    NOISE_HEAD_FILE,
    copy_for_prediction,
    package_versions,
    read_model_json,
)
from mofbalora.predict import load_model
from mofbalora.pretrained import SHIPPED, ShippedModel
from mofbalora.training.config import TrainConfig, load_train_config
from mofbalora.training.fit import (
    IDENTITY_FILE,
    TIMING_FILE,
    fit,
    fit_identity,
    prepare_data,
    validation_curve,
    warm_start_folder,
)
from mofbalora.training.noise_head import NoiseHeadConfig, load_uncertainty_config
from mofbalora.uncertainty.conformal import ConformalCalibrator
from pipelines.analysis.figures import learning_curve, rmse_vs_rmv, window_reliability
from pipelines.analysis.release import WINDOW_EV, model_card, releases_table, test_scores
from pipelines.analysis.report import write_generated_block
from pipelines.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("release_model")
CONFIG = ROOT / "pipelines" / "configs" / "release_qmof_v2.2.yaml"
UNCERTAINTY_CONFIG = ROOT / "pipelines" / "configs" / "uncertainty.yaml"
FIGURES_DIR = ROOT / "docs" / "results" / "release"
RELEASE = SHIPPED[0]
RUN_DIR = ROOT / "results" / "release" / f"{RELEASE.folder_name}-v2.4"
PACKAGE_DIR = ROOT / "mofbalora" / "pretrained" / RELEASE.folder_name
#: where ``--from-package`` runs go by default, one folder per package
FROM_PACKAGE_RUNS = ROOT / "results" / "release" / "from-package"
TEST_TABLE = "test_predictions.csv"
MAX_PACKAGE_BYTES = 5 * 1024 * 1024
#: draws of the calibrated distributions for the ρ they promise (its spread over draws is ~0.03)
PROMISE_DRAWS = 200


def _paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Config, run folder and package folder. With ``--from-package`` they default to that
    package's own: the config file its release.json names, a run folder of its name under
    :data:`FROM_PACKAGE_RUNS`, and the package itself (``git diff`` then shows what the rerun changed)."""
    if not args.from_package:
        return (Path(args.config or CONFIG), Path(args.run_dir or RUN_DIR), Path(args.package_dir or PACKAGE_DIR))
    source = Path(args.from_package)
    if not (source / "release.json").exists():
        raise SystemExit(f"{source}: not a packaged release (no release.json)")
    recorded = json.loads((source / "release.json").read_text())["config_file"]
    return (Path(args.config) if args.config else ROOT / recorded,
            Path(args.run_dir) if args.run_dir else FROM_PACKAGE_RUNS / source.resolve().name,
            Path(args.package_dir) if args.package_dir else source)


def training_record(folder: Path) -> dict[str, Any]:
    """Epochs run, best epoch and wall time of the fit stage (from its files, or from the
    release.json of the package a ``--from-package`` run started from)."""
    seeded = seeded_record(folder)
    if seeded is not None:
        return seeded["training"]
    member = folder / "members" / "0"
    started = (folder / IDENTITY_FILE).stat().st_mtime
    finished = (member / "done").stat().st_mtime
    timing = json.loads((member / TIMING_FILE).read_text())
    return {**validation_curve(member),
            # Lightning's timer: training and validation loops only, summed over the sessions
            "train_wall_s": timing["train_wall_s"],
            # the last session's fit, from its start (the identity file is rewritten on resume) to the
            # member's end, featurising included
            "wall_s": finished - started,
            "device": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"}


def shipped_records() -> dict[str, dict[str, Any]]:
    """The release.json of every shipped model present, by alias, newest first."""
    return {shipped.alias: json.loads((shipped.folder / "release.json").read_text()) for shipped in SHIPPED
            if (shipped.folder / "release.json").exists()}


def earlier_releases_val_mae(record: dict[str, Any]) -> dict[str, float]:
    """The best validation MAE (eV) of the other shipped models trained on the same split, labelled
    by their names (models sharing weights share a line): what the learning curve is read against."""
    aliases: dict[float, list[str]] = {}
    for alias, earlier in shipped_records().items():
        if alias == record["alias"]:
            continue
        if earlier["data"]["split_sha256"] == record["data"]["split_sha256"] and "best_val_mae_ev" in earlier["training"]:
            aliases.setdefault(earlier["training"]["best_val_mae_ev"], []).append(alias)
    return {f"{' = '.join(names)}: best validation MAE": value for value, names in aliases.items()}


SEEDED_RECORD = "seeded_from_release.json"
#: the noise-head config and calibration settings a seeded package records (uncertainty.yaml's layout)
SEEDED_UNCERTAINTY = "seeded_uncertainty.json"
STAGES_FILE = "stages.json"


class StageLog:
    """Which code ran which stage when: one entry per stage that did work in each invocation
    (``run_dir/stages.json``, appended, so a fit resumed over several sessions lists each one).

    The entry is written when the stage starts and completed when it ends, so a session that
    was stopped mid-stage (the usual fate of a long fit) stays on record with
    ``"finished_utc": null``. The one exception is a fit into a folder that does not exist yet:
    the fit must find it empty, so that entry waits for the stage's end (an interrupted first
    session still shows as a session of the training log, ``training.epoch_history``).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STAGES_FILE

    def entries(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    @contextmanager
    def stage(self, name: str, *, already_done: bool) -> Iterator[None]:
        if already_done:
            yield
            return
        started = datetime.now(timezone.utc)
        entry = {"stage": name, "git_commit": git_commit(), "started_utc": started.isoformat(timespec="seconds"),
                 "finished_utc": None, "wall_s": None}
        folder = self.path.parent
        written = folder.exists() and any(folder.iterdir())
        if written:
            write_text_atomic(self.path, json.dumps(self.entries() + [entry], indent=1))
        yield
        finished = datetime.now(timezone.utc)
        entry |= {"finished_utc": finished.isoformat(timespec="seconds"),
                  "wall_s": round((finished - started).total_seconds(), 1)}
        # the started entry is the last one: stages run one after another
        entries = self.entries()[:-1] if written else self.entries()
        write_text_atomic(self.path, json.dumps(entries + [entry], indent=1))


def seed_from_package(package: Path, run_dir: Path, config: Any, data: str | None, *,
                      keep_calibration: bool = False, settings_from: str | os.PathLike | None = None) -> None:
    """Start ``run_dir`` as the fitted folder of ``package`` (same config and split): its trained
    weights, split, training record and the stage log of its fit. Without ``keep_calibration`` the
    package's noise head and calibration are left behind, so that those stages run again with the
    settings the package records (:data:`SEEDED_UNCERTAINTY`): the figures of its release.json are
    then reproduced from its weights alone. Nothing of the fit's own folder (or of the model a warm
    restart started from) needs to be on this machine. With ``settings_from`` (an uncertainty YAML)
    those stages use its settings instead: a new release from a shipped model's weights.

    Raises:
        SystemExit: when the package was trained with another config, or records no settings to
            refit its noise head and calibration with (rescore it with ``keep_calibration``).
    """
    if (run_dir / IDENTITY_FILE).exists():
        return
    meta = read_model_json(package)
    record = json.loads((package / "release.json").read_text())
    if not config.was_recorded_as(meta["train_config"]):
        raise SystemExit(f"{package} was trained with another config than this run's")
    recorded_calibration = (meta.get("calibration") or {}).get("settings")
    recorded_settings = {"noise_head": (meta.get("noise_head") or {}).get("config"),
                         "calibration": None if recorded_calibration is None
                         else CalibrationSettings.from_record(recorded_calibration).to_dict()}
    if settings_from is not None:
        declared = load_uncertainty_config(settings_from)
        recorded_settings = {"noise_head": declared["noise_head"].to_dict(),
                             "calibration": CalibrationSettings.from_dict(declared["calibration"]).to_dict()}
    if not keep_calibration and None in recorded_settings.values():
        raise SystemExit(f"{package} records no noise-head config or calibration settings to refit them with; "
                         "rescore it as it is with --keep-calibration")
    dataset = load_labelled_dataset(data, target=config.target)
    updates = {"data": {**meta["data"], "source": str(dataset.source)}}
    if not keep_calibration:
        updates |= {"noise_head": None, "calibration": None}
    copy_for_prediction(package, run_dir, meta_updates=updates)
    if not keep_calibration:
        (run_dir / NOISE_HEAD_FILE).unlink(missing_ok=True)
        write_text_atomic(run_dir / SEEDED_UNCERTAINTY, json.dumps(recorded_settings, indent=1))
    write_text_atomic(run_dir / SEEDED_RECORD, json.dumps(record, indent=1))
    # the code that made what this folder keeps: the fit's stages, and with the calibration kept the rest
    kept = [stage for stage in record.get("stages", []) if keep_calibration or stage["stage"] == "fit"]
    write_text_atomic(run_dir / STAGES_FILE, json.dumps(kept, indent=1))
    identity = fit_identity(config, dataset, Split.load(run_dir / meta["split_file"]),
                            warm_start_sha256=(record.get("warm_start") or {}).get("model_json_sha256"))
    write_text_atomic(run_dir / IDENTITY_FILE, json.dumps(identity, indent=1))


def seeded_record(folder: Path) -> dict[str, Any] | None:
    """The release.json of the package ``folder`` was seeded from, or None for a folder that trained."""
    path = folder / SEEDED_RECORD
    return json.loads(path.read_text()) if path.exists() else None


def uncertainty_settings(folder: Path, default_path: str | os.PathLike) -> dict[str, Any]:
    """The noise-head config and calibration settings of the stages after training: those a seeded
    package records, else the YAML at ``default_path`` (``pipelines/configs/uncertainty.yaml``)."""
    path = folder / SEEDED_UNCERTAINTY
    if not path.exists():
        return load_uncertainty_config(default_path)
    recorded = json.loads(path.read_text())
    return {"noise_head": NoiseHeadConfig.from_dict(recorded["noise_head"]), "calibration": recorded["calibration"]}


def test_table_current(folder: Path) -> bool:
    """Whether the cached test predictions were made by the model as it is now (a new noise head or
    calibration rewrites model.json, and the test stage then runs again)."""
    path = folder / TEST_TABLE
    return path.exists() and path.stat().st_mtime >= (folder / "model.json").stat().st_mtime


def test_predictions(folder: Path, parts: dict[str, Any]) -> pd.DataFrame:
    """The model's predictions on the test split (cached in the run folder as :data:`TEST_TABLE`)."""
    if test_table_current(folder):
        return pd.read_csv(folder / TEST_TABLE)
    return part_predictions(folder, parts["test"], folder / TEST_TABLE)


def part_predictions(folder: Path, part: tuple[list[str], list[Any], np.ndarray], path: Path) -> pd.DataFrame:
    """The model's predictions on one part of its split (ids, samples, gaps), written to ``path``:
    the calibrated summary, with each structure's true gap, cell size, metal family, CRPS,
    predicted-gap bin and probability of the :data:`WINDOW_EV` window."""
    model = load_model(folder)
    calibration = model.meta["calibration"]
    ids, samples, gaps = part
    predictive = model.predictive(samples, n_samples=calibration["samples"], seed=calibration["seed"], progress=True)
    table = model.summarise(predictive, interval_levels=(68, 95), window_ev=WINDOW_EV)
    table.insert(0, "id", ids)
    table.insert(1, "bandgap_true_ev", gaps)
    table["n_atoms"] = predictive.n_atoms
    table["metal_family"] = predictive.metal_family
    # the calibrator's inputs, from which the calibrated distributions are drawn again
    table["bandgap_mean_uncensored_ev"], table["bandgap_std_total_raw_ev"] = predictive.mean, predictive.std_total_raw
    table["crps_ev"] = model.calibrator.crps(predictive.mean, predictive.std_total_raw, gaps)
    bins = model.calibrator.gap_bins(predictive.mean)
    table["gap_bin"] = 0 if bins is None else bins
    write_table_atomic(table, path)
    return table


def calibrated_draws(folder: Path, table: pd.DataFrame) -> np.ndarray | None:
    """:data:`PROMISE_DRAWS` draws of each test structure's calibrated predictive distribution
    (seed 0), or None for a table from before its raw columns were kept."""
    if "bandgap_std_total_raw_ev" not in table:
        return None
    calibrator = ConformalCalibrator.from_dict(read_model_json(folder)["calibration"]["conformal"])
    return calibrator.sample(table["bandgap_mean_uncensored_ev"].to_numpy(float),
                             table["bandgap_std_total_raw_ev"].to_numpy(float), PROMISE_DRAWS, seed=0)


def warm_start_record(folder: Path) -> dict[str, Any] | None:
    """Which trained model a warm-restarted fit started from (by content), and that model's own
    training and warm start (from the release.json of its run folder, when there is one): a chain
    of restarts nests, oldest innermost. A folder seeded from a package has its record's."""
    seeded = seeded_record(folder)
    if seeded is not None:
        return seeded.get("warm_start")
    identity = json.loads((folder / IDENTITY_FILE).read_text())
    source = identity["train_config"].get("warm_start_from")
    if source is None:
        return None
    out = {"from": source, "model_json_sha256": identity["warm_start_model_json_sha256"]}
    prior = warm_start_folder(TrainConfig.from_dict(identity["train_config"])) / "release.json"
    if prior.exists():
        prior_record = json.loads(prior.read_text())
        training = prior_record["training"]
        out["training"] = {k: training[k] for k in ("epochs_run", "best_epoch", "best_val_mae_ev", "train_wall_s")
                           if k in training}
        if prior_record.get("warm_start"):
            out["warm_start"] = prior_record["warm_start"]
    return out


def release_record(folder: Path, parts: dict[str, Any], scores: dict[str, Any], config_path: Path, *,
                   shipped: ShippedModel = RELEASE) -> dict[str, Any]:
    meta = read_model_json(folder)
    train_atoms = [sample_num_atoms(s) for s in parts["train"][1]]
    data = meta["data"]
    return {
        "name": shipped.folder_name, "alias": shipped.alias,
        "git_commit": git_commit(),
        "config_file": str(config_path.resolve().relative_to(ROOT)) if config_path.resolve().is_relative_to(ROOT)
        else str(config_path),
        "train_config": meta["train_config"],
        "data": {"n_total": sum(data[f"n_{p}"] for p in ("train", "val", "calibration", "test")) + data["n_skipped"],
                 **{k: data[k] for k in ("n_train", "n_val", "n_calibration", "n_test", "n_skipped",
                                         "split_sha256", "labels_sha256")},
                 "train_n_atoms_range": [int(min(train_atoms)), int(max(train_atoms))]},
        "calibration": {k: meta["calibration"][k] for k in ("samples", "seed", "n_calibration", "ood", "calibration_mae_ev",
                                                             "mean_rule", "val_mae_ev_by_mean_rule", "n_bins",
                                                             "validation_coverage_95", "lower_miss_share",
                                                             "lower_miss_share_choice", "recalibration",
                                                             "recalibration_choice")
                        if k in meta["calibration"]},
        "noise_head": {k: v for k, v in meta["noise_head"].items() if k != "file"} if meta.get("noise_head") else None,
        "training": training_record(folder),
        "warm_start": warm_start_record(folder),
        # the code commit of each stage that did work, per invocation (a resumed fit lists each)
        "stages": StageLog(folder).entries(),
        "test": scores,
        "versions": package_versions(),
    }


def package(folder: Path, record: dict[str, Any], destination: Path) -> Path:
    """Copy the model into the package with its card; refuse more than 5 MB, and refuse to replace a
    packaged model trained with another recipe (tag the release that ships it and remove it first:
    one model ships per release, CHANGELOG.md)."""
    if (destination / "model.json").exists():
        shipped = read_model_json(destination)["train_config"]
        if not TrainConfig.from_dict(record["train_config"]).was_recorded_as(shipped):
            raise SystemExit(f"{destination} holds a model trained with another config; tag the release that ships "
                             "it (git tag vX.Y.Z, CHANGELOG.md) and remove the folder before packaging this one")
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
    parser.add_argument("--stop-after", choices=["fit", "noise", "calibrate", "test"], default=None)
    parser.add_argument("--from-package", default=None,
                        help="start from this packaged model's weights: refit its noise head and calibration "
                             "with the settings it records, test, and rewrite the package")
    parser.add_argument("--keep-calibration", action="store_true",
                        help="score the folder as it is: no new noise head, no new calibration")
    parser.add_argument("--current-settings", action="store_true",
                        help="with --from-package: refit the noise head and calibration with "
                             "pipelines/configs/uncertainty.yaml, not the settings the package records "
                             "(a new release from a shipped model's weights)")
    parser.add_argument("--uncertainty-config", default=str(UNCERTAINTY_CONFIG), help=argparse.SUPPRESS)
    parser.add_argument("--figures-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--package-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.current_settings and not args.from_package:
        parser.error("--current-settings goes with --from-package")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, run_dir, package_dir = _paths(args)
    config = load_train_config(config_path)
    if args.from_package:
        seed_from_package(Path(args.from_package), run_dir, config, args.data, keep_calibration=args.keep_calibration,
                          settings_from=args.uncertainty_config if args.current_settings else None)
    uncertainty = uncertainty_settings(run_dir, args.uncertainty_config)
    seeded = seeded_record(run_dir) is not None
    if seeded and not config.was_recorded_as(read_model_json(run_dir)["train_config"]):
        raise SystemExit(f"{run_dir} was seeded from a package trained with another config than {config_path}")
    log = StageLog(run_dir)
    with log.stage("fit", already_done=(run_dir / "model.json").exists()):
        # a seeded folder is a finished fit whose training folder need not be on this machine
        folder = run_dir if seeded else fit(
            config, data=args.data, out_dir=run_dir, resume=(run_dir / IDENTITY_FILE).exists())
    if folder is None or args.stop_after == "fit":
        return
    # all of QMOF's features are loaded once, for the noise head, calibration and the test stage
    prepared = prepare_data(config, load_labelled_dataset(args.data, target=config.target), folder, progress=True)
    if not args.keep_calibration:
        head = read_model_json(folder).get("noise_head")
        with log.stage("noise", already_done=bool(head) and head["config"] == uncertainty["noise_head"].to_dict()):
            fit_data_noise(folder, prepared=prepared, config=uncertainty["noise_head"], progress=True)
    if args.stop_after == "noise":
        return
    if read_model_json(folder).get("calibration") is None:
        with log.stage("calibrate", already_done=False):
            calibrate(folder, progress=True, prepared=prepared,
                      settings=CalibrationSettings.from_dict(uncertainty["calibration"]))
    if args.stop_after == "calibrate":
        return
    parts = prepared.parts
    with log.stage("test", already_done=test_table_current(folder)):
        table = test_predictions(folder, parts)
    scores = test_scores(table, predictive_draws=calibrated_draws(folder, table),
                         lower_miss_share=read_model_json(folder)["calibration"].get("lower_miss_share", 0.5))
    # the release's figures are published; another run folder (a smoke test) keeps its own
    # its commit stamp before any file is written
    record = release_record(folder, parts, scores, config_path)
    figures = (Path(args.figures_dir) if args.figures_dir else
               FIGURES_DIR if package_dir.resolve() == PACKAGE_DIR.resolve() else run_dir / "figures")
    figures.mkdir(parents=True, exist_ok=True)
    window_reliability(scores["p_in_window_reliability"], figures / "reliability_p_in_window.png",
                       title=f"{RELEASE.alias}: P(gap in {WINDOW_EV[0]:g}–{WINDOW_EV[1]:g} eV), test split")
    rmse_vs_rmv(scores["consistency"]["rmse_over_rmv_by_std_decile"], figures / "rmse_vs_rmv.png",
                title=f"{RELEASE.alias}: is the std the size of the error? (test split)")
    learning_curve(record["training"]["val_mae_ev_by_epoch"], figures / "learning_curve.png",
                   title=f"{RELEASE.alias} ({record['config_file']}): validation MAE per epoch",
                   reference_ev=earlier_releases_val_mae(record))
    write_text_atomic(folder / "release.json", json.dumps(record, indent=1, default=str))
    if args.stop_after == "test":
        return
    package(folder, record, package_dir)
    if package_dir.resolve() in {shipped.folder.resolve() for shipped in SHIPPED}:  # side by side in the README
        write_generated_block(ROOT / "README.md", "releases", releases_table(shipped_records()),
                              generated_by="pipelines/release_model.py", before="After `pip install`")
    print(f"test MAE {scores['mae_ev']['value']:.3f} eV, 95% coverage {scores['coverage_95']['value']:.3f}, "
          f"packaged into {package_dir}")


if __name__ == "__main__":
    main()
