"""The accuracy pilot of issue 44: which model becomes the next ``qmof-pbe``.

Design, candidates and rule: ``pipelines/configs/accuracy_pilot.yaml`` (declared before any
candidate was trained). This module holds what every candidate shares: the screen subset (a seeded
``screen_subset.train`` structures of the release split's training part, plus its whole validation
and calibration parts; the test part is not touched) and the cached frozen features of the SevenNet
candidates, filled once and resumable (``mofbalora.featurise``'s content-keyed cache); each
candidate's training steps (``recipes``: settings over ``release_qmof.yaml``'s), run resumably into
``results/pilot/<candidate>/step<k>``; and its validation scores, written beside them.

    python -m pipelines.accuracy_pilot featurise --backbone sevennet   # resumable; ~30 min on 2 cores
    python -m pipelines.accuracy_pilot run c-sevennet-early            # train, calibrate, score on validation
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mofbalora.data.datasets import default_cache_dir, load_labelled_dataset
from mofbalora.data.io import write_text_atomic
from mofbalora.data.splits import Split
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.fit_calibrate import fit_calibrated
from mofbalora.model_folder import package_versions
from mofbalora.pretrained import resolve_model
from mofbalora.training.config import TrainConfig, load_train_config
from mofbalora.training.fit import prepare_folder_data
from mofbalora.uncertainty import metrics as um
from pipelines.analysis.release import consistency_scores
from pipelines.provenance import git_commit, quiet_logging
from pipelines.release_model import part_predictions

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "configs" / "accuracy_pilot.yaml"
RELEASE_RECIPE = ROOT / "pipelines" / "configs" / "release_qmof.yaml"
logger = logging.getLogger(__name__)


def load_design(path: Path = CONFIG) -> dict:
    return yaml.safe_load(path.read_text())


def screen_parts(design: dict, split: Split) -> dict[str, list[str]]:
    """Ids per part of the pilot's screen: ``train`` a seeded subset of the split's training part
    (sorted, so the choice does not depend on the split file's order), ``val`` and ``calibration``
    whole."""
    subset = design["screen_subset"]
    train = sorted(split.part("train"))
    if subset["train"] > len(train):
        raise ValueError(f"screen_subset.train = {subset['train']} > the {len(train)} training structures")
    chosen = np.random.default_rng(subset["seed"]).choice(len(train), subset["train"], replace=False)
    return {"train": [train[i] for i in np.sort(chosen)], "val": split.part("val"),
            "calibration": split.part("calibration")}


def release_split(design: dict) -> Split:
    return Split.load(resolve_model(design["split_from"]) / "split.json")


def featurise(backbone: str, *, data: str | None, workers: int, skipped_csv: Path | None) -> None:
    """Fill the feature cache for every structure of the screen (cache hits are skipped)."""
    design = load_design()
    parts = screen_parts(design, release_split(design))
    paths = load_labelled_dataset(data).table.set_index("id")["path"]
    ids = [i for part in parts.values() for i in part]
    missing = sorted(set(ids) - set(paths.index))
    if missing:
        raise ValueError(f"{len(missing)} screen structures are not in the dataset, e.g. {missing[:3]}")
    logger.info("featurising %d screen structures with %s", len(ids), backbone)
    result = featurise_paths([paths[i] for i in ids], get_featuriser(backbone), cache_dir=default_cache_dir(),
                             workers=workers, skipped_csv=skipped_csv)
    logger.info("%d featurised, %d skipped", len(result.samples), len(result.skipped))


def screen_split(design: dict) -> Split:
    """The pilot's split: the screen's training subset, the release's validation and calibration
    parts, and no test part (the test split is read once, for the winner, after the choice)."""
    release = release_split(design)
    parts = screen_parts(design, release)
    return Split(train=parts["train"], val=parts["val"], calibration=parts["calibration"], test=[],
                 seed=release.seed, method=f"{release.method}; train: screen subset {design['screen_subset']}")


def step_configs(design: dict, candidate: str, run_dir: Path) -> list[tuple[Path, TrainConfig]]:
    """(folder, config) of each training step of ``candidate``: its recipe's settings over the
    release recipe's (the adapter's merged key by key; a ``full`` step has none), a step with
    ``init_from: previous`` starting from the step before it."""
    if candidate not in design.get("recipes", {}):
        raise ValueError(f"no recipe for {candidate!r}; recipes: {sorted(design.get('recipes', {}))}")
    base = load_train_config(RELEASE_RECIPE).to_dict()
    steps: list[tuple[Path, TrainConfig]] = []
    for number, step in enumerate(design["recipes"][candidate]):
        values = {**base, **{k: v for k, v in step.items() if k != "adapter"}}
        values["adapter"] = {} if values["method"] == "full" else {**base["adapter"], **step.get("adapter", {})}
        if values.get("init_from") == "previous":
            if not steps:
                raise ValueError(f"{candidate}: its first step cannot start from a previous one")
            values["init_from"] = str(steps[-1][0])
        steps.append((run_dir / candidate / f"step{number}", TrainConfig.from_dict(values)))
    return steps


def validation_scores(folder: Path, *, data: str | None) -> dict[str, Any]:
    """The pilot's figures on the validation split: MAE (BCa CI), ρ(std, |error|) with the ρ the
    std promises, and the consistency metrics of the release's test stage (ENCE, ZMS overall and
    per metal family), from the calibrated predictions (written to ``val_predictions.csv``)."""
    _, _, prepared = prepare_folder_data(folder, data)
    table = part_predictions(folder, prepared.parts["val"], folder / "val_predictions.csv")
    truth, mean = table["bandgap_true_ev"].to_numpy(float), table["bandgap_mean_ev"].to_numpy(float)
    std = table["bandgap_std_ev"].to_numpy(float)
    return {"n": len(table), "mae_ev": um.bca_interval(um.mae, mean, truth),
            "spearman_std_abs_error": um.bca_interval(um.spearman_std_error, mean, std, truth),
            "coverage_95": float(np.mean((truth >= table["lower_95_ev"]) & (truth <= table["upper_95_ev"]))),
            "consistency": consistency_scores(table)}


def run_candidate(candidate: str, *, data: str | None, results: Path) -> dict[str, Any]:
    """Train (resumably) and calibrate every step of ``candidate``, score the last on validation,
    and write ``scores.json`` (with the config, seed, versions and code) beside the steps."""
    design = load_design()
    split = screen_split(design)
    run_dir = results / "pilot"
    steps = step_configs(design, candidate, run_dir)
    wall_s = []
    for folder, config in steps:
        start = time.perf_counter()
        if fit_calibrated(config, data=data, out_dir=folder, split=split, resume=True, progress=True) is None:
            raise RuntimeError(f"{folder}: training did not finish; rerun to resume")
        wall_s.append(time.perf_counter() - start)
    last = steps[-1][0]
    n_train_full = len(release_split(design).part("train"))
    scores = {"candidate": candidate, "what": design["candidates"][candidate]["what"],
              "validation": validation_scores(last, data=data),
              "train_wall_s_this_call": wall_s,
              "train_cost_full_data_h_estimate": sum(wall_s) * n_train_full / len(split.train) / 3600,
              "steps": [{"folder": str(f), "config": c.to_dict()} for f, c in steps],
              "split_sha256": split.fingerprint(), "git_commit": git_commit(), "versions": package_versions()}
    write_text_atomic(run_dir / candidate / "scores.json", json.dumps(scores, indent=1, default=float))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fill = commands.add_parser("featurise", help="fill the feature cache for the screen subset")
    fill.add_argument("--backbone", default="sevennet")
    fill.add_argument("--data", default=None, help="QMOF folder (default: $MOFBALORA_DATA, data/qmof, ../shared/data/qmof)")
    fill.add_argument("--workers", type=int, default=0, help="processes; 0 = all cores")
    fill.add_argument("--skipped", type=Path, default=None, help="write skipped inputs here (.csv)")
    run = commands.add_parser("run", help="train, calibrate and score one candidate on validation (resumable)")
    run.add_argument("candidate")
    run.add_argument("--data", default=None, help="QMOF folder (default: $MOFBALORA_DATA, data/qmof, ../shared/data/qmof)")
    run.add_argument("--results", type=Path, default=ROOT / "results", help="where results/pilot/ goes")
    args = parser.parse_args(argv)
    quiet_logging()
    if args.command == "featurise":
        featurise(args.backbone, data=args.data, workers=args.workers, skipped_csv=args.skipped)
    else:
        scores = run_candidate(args.candidate, data=args.data, results=args.results)
        print(json.dumps({k: scores["validation"][k] for k in ("n", "mae_ev", "spearman_std_abs_error", "coverage_95")},
                         default=float))


if __name__ == "__main__":
    main()
