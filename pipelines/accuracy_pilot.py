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
    python -m pipelines.accuracy_pilot throughput c-sevennet-early     # MOFs/s on new CIFs (quiet machine)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mofbalora.data.datasets import default_cache_dir, load_labelled_dataset
from mofbalora.data.io import write_text_atomic
from mofbalora.data.splits import Split
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.fit_calibrate import fit_calibrated
from mofbalora.model_folder import package_versions, read_model_json
from mofbalora.pretrained import resolve_model
from mofbalora.training.config import TrainConfig, load_train_config
from mofbalora.training.fit import IDENTITY_FILE, TIMING_FILE, fit_identity, prepare_folder_data
from mofbalora.uncertainty import metrics as um
from pipelines.analysis.release import MIN_GROUP_SIZE, consistency_scores
from pipelines.provenance import git_commit, quiet_logging
from pipelines.release_model import part_predictions

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "configs" / "accuracy_pilot.yaml"
RELEASE_RECIPE = ROOT / "pipelines" / "configs" / "release_qmof.yaml"
BASELINE = "a-baseline"  # today's recipe: every other candidate's MAE is compared with its, paired
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


def single_candidates(design: dict) -> list[str]:
    """The candidates the rule chooses among: those with a recipe of their own (a list of steps);
    one built from the choice (``members_of_choice``) is not among them."""
    return [name for name, recipe in design.get("recipes", {}).items() if isinstance(recipe, list)]


def step_configs(design: dict, candidate: str, run_dir: Path) -> list[tuple[Path, TrainConfig]]:
    """(folder, config) of each training step of ``candidate``: its recipe's settings over the
    release recipe's (the adapter's merged key by key; a ``full`` step has none), a step with
    ``init_from: previous`` starting from the step before it. A recipe ``{members_of_choice: M}``
    is the chosen candidate's steps, its earlier folders shared, and its last step again in this
    candidate's folder with ``members: M``."""
    recipe = design.get("recipes", {}).get(candidate)
    if recipe is None:
        raise ValueError(f"no recipe for {candidate!r}; recipes: {sorted(design.get('recipes', {}))}")
    if isinstance(recipe, dict):
        chosen = pilot_choice(design, run_dir.parent)[0]
        if chosen is None:
            raise ValueError(f"{candidate} is built from the pilot's choice, and there is none yet")
        steps = step_configs(design, chosen, run_dir)
        last = len(steps) - 1
        return steps[:last] + [(run_dir / candidate / f"step{last}",
                                TrainConfig.from_dict({**steps[last][1].to_dict(), "members": recipe["members_of_choice"]}))]
    base = load_train_config(RELEASE_RECIPE).to_dict()
    steps: list[tuple[Path, TrainConfig]] = []
    for number, step in enumerate(recipe):
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


def share_first_member(source: Path, folder: Path, config: TrainConfig, *, data: str | None, split: Split) -> bool:
    """Start the members fit ``folder`` with the finished member 0 of ``source``, the same step
    trained alone: member 0 of ``members: M`` has the one-member fit's seed, data and settings, so it is
    the same training (``tests/training/test_fit.py::test_balora_members_pool_each_members_draws``),
    copied rather than repeated. Only into a fit not yet started; True if copied."""
    if (folder / IDENTITY_FILE).exists() or not (source / "members" / "0" / "done").exists():
        return False
    alone = TrainConfig.from_dict(read_model_json(source)["train_config"])
    if alone.to_dict() != {**config.to_dict(), "members": 1}:
        raise ValueError(f"{source} was trained with other settings than {folder}'s member 0")
    dataset = load_labelled_dataset(data, target=config.target)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "members" / "0", folder / "members" / "0")
    write_text_atomic(folder / IDENTITY_FILE, json.dumps(fit_identity(config, dataset, split), indent=1))
    return True


def run_candidate(candidate: str, *, data: str | None, results: Path) -> dict[str, Any]:
    """Train (resumably) and calibrate every step of ``candidate``, score the last on validation,
    and write ``scores.json`` (with the config, seed, versions and code) beside the steps. Members
    built from the choice start from its finished last step as member 0 (:func:`share_first_member`)."""
    design = load_design()
    split = screen_split(design)
    run_dir = results / "pilot"
    steps = step_configs(design, candidate, run_dir)
    if isinstance(design["recipes"][candidate], dict):
        chosen = pilot_choice(design, results)[0]
        share_first_member(step_configs(design, chosen, run_dir)[-1][0], steps[-1][0], steps[-1][1],
                           data=data, split=split)
    for folder, config in steps:
        resume = (folder / IDENTITY_FILE).exists()  # a step started before: go on from its checkpoint
        if fit_calibrated(config, data=data, out_dir=folder, split=split, resume=resume, progress=True) is None:
            raise RuntimeError(f"{folder}: training did not finish; rerun to resume")
    # each member's training wall time (with validation), kept across resumes by the fit itself
    timings = [{"folder": str(path.parent), **json.loads(path.read_text())}
               for folder, _ in steps for path in sorted(folder.rglob(TIMING_FILE))]
    last = steps[-1][0]
    n_train_full = len(release_split(design).part("train"))
    scores = {"candidate": candidate, "what": design["candidates"][candidate]["what"],
              "validation": validation_scores(last, data=data),
              "training": timings,
              "train_cost_full_data_h_estimate": sum(t["train_wall_s"] for t in timings)
              * n_train_full / len(split.train) / 3600,
              "steps": [{"folder": str(f), "config": c.to_dict()} for f, c in steps],
              "split_sha256": split.fingerprint(), "git_commit": git_commit(), "versions": package_versions()}
    write_text_atomic(run_dir / candidate / "scores.json", json.dumps(scores, indent=1, default=float))
    return scores


def screen_throughput(candidate: str, *, results: Path, n: int = 200) -> dict[str, Any]:
    """MOFs/s of ``candidate``'s last step as a chemist's screen runs it: the first ``n`` CoRE-MOF 2019
    CIFs (new structures), a cold feature cache (so featurisation counts), the model's shipped S, one
    ``predict`` call (featurising on every core); written into ``scores.json``. A candidate not yet
    trained gets its featurisation alone timed the same way, an upper bound on its screening speed
    (``featurisation_only``): one under the floor cannot pass the rule, whatever its accuracy.
    Timed alone on the machine, or the figure means nothing."""
    from mofbalora.model_folder import MODEL_FILE
    from mofbalora.predict import load_model
    from pipelines.screen_speed import coremof_screen_inputs, timed_predict

    design = load_design()
    folder, config = step_configs(design, candidate, results / "pilot")[-1]
    trained = (folder / MODEL_FILE).exists()
    with coremof_screen_inputs(n) as (cifs, cache_dir):
        if trained:
            model = load_model(folder)
            samples = model.default_samples
            table, seconds = timed_predict(model, cifs, cache_dir)
            n_ok = int((table["status"] == "ok").sum())
        else:
            samples = None
            start = time.perf_counter()
            n_ok = len(featurise_paths(cifs, get_featuriser(config.backbone), cache_dir=cache_dir).samples)
            seconds = time.perf_counter() - start
    figures = {"n_inputs": n, "n_predicted": n_ok, "samples": samples, "seconds": seconds, "mofs_per_s": n / seconds,
               "featurisation_only": not trained, "cores": os.cpu_count()}
    scores_path = results / "pilot" / candidate / "scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {"candidate": candidate}
    write_text_atomic(scores_path, json.dumps({**scores, "screen_throughput": figures}, indent=1, default=float))
    return figures


def pilot_table(design: dict, results: Path, names: list[str] | None = None) -> pd.DataFrame:
    """One row per declared candidate (or per one of ``names``) from its ``scores.json`` (NaN where
    it was not run or not timed)."""
    rows = []
    for candidate, spec in design["candidates"].items():
        if names is not None and candidate not in names:
            continue
        path = results / "pilot" / candidate / "scores.json"
        scores = json.loads(path.read_text()) if path.exists() else {}
        validation, speed = scores.get("validation"), scores.get("screen_throughput", {})
        row = {"candidate": candidate, "what": spec["what"], "mofs_per_s": speed.get("mofs_per_s", np.nan),
               "speed_bound_only": bool(speed.get("featurisation_only", False))}
        if validation:
            consistency = validation["consistency"]
            family_zms = [g["zms"]["value"] for g in consistency.get("zms_by_metal_family", [])]
            row.update({"mae_ev": validation["mae_ev"]["value"], "mae_ci": validation["mae_ev"],
                        "rho_total": validation["spearman_std_abs_error"]["value"],
                        "coverage_95": validation["coverage_95"], "ence": consistency["ence"]["value"],
                        "zms": consistency["zms"]["value"],
                        "zms_family_range": (min(family_zms), max(family_zms)) if family_zms else None,
                        "train_cost_full_data_h": scores["train_cost_full_data_h_estimate"],
                        "epochs": " + ".join(str(t["epochs"]) for t in scores["training"]),
                        "delta_mae": None if candidate == BASELINE else paired_mae_difference(results, design, candidate)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("candidate")


def paired_mae_difference(results: Path, design: dict, candidate: str, baseline: str = BASELINE) -> dict | None:
    """Validation MAE of ``candidate`` minus the baseline's on the same structures (eV), with its
    paired BCa CI; None unless both have validation predictions."""
    tables = []
    for name in (candidate, baseline):
        path = step_configs(design, name, results / "pilot")[-1][0] / "val_predictions.csv"
        if not path.exists():
            return None
        tables.append(pd.read_csv(path, usecols=["id", "bandgap_true_ev", "bandgap_mean_ev"]).set_index("id"))
    ours, base = tables[0], tables[1].loc[tables[0].index]
    error = lambda t: (t["bandgap_mean_ev"] - t["bandgap_true_ev"]).abs().to_numpy()  # noqa: E731
    return um.bca_interval(lambda a, b: float(np.mean(a - b)), error(ours), error(base))


def choose(table: pd.DataFrame, design: dict) -> str | None:
    """The declared rule: among candidates screening at least ``min_screen_mofs_per_s``, the lowest
    validation MAE; one within ``tie_ev`` of it and faster is preferred (the fastest such). None when
    no scored candidate is fast enough."""
    eligible = table[(table["mofs_per_s"] >= design["min_screen_mofs_per_s"]) & table["mae_ev"].notna()] \
        if "mae_ev" in table else table.iloc[:0]
    if eligible.empty:
        return None
    near = eligible[eligible["mae_ev"] <= eligible["mae_ev"].min() + design["tie_ev"]]
    return str(near["mofs_per_s"].idxmax())


def pilot_choice(design: dict, results: Path, table: pd.DataFrame | None = None) -> tuple[str | None, str | None, list[str]]:
    """(the choice, the rule's leader so far, the candidates still to score), from ``table`` (the
    pilot's, read when not given). The rule chooses among every single candidate, so there is no
    choice while one is unscored; one whose featurisation alone is under the speed floor cannot
    pass the rule and needs no score."""
    singles = single_candidates(design)
    table = pilot_table(design, results, singles) if table is None else table[table.index.isin(singles)]
    leader = choose(table, design)
    scored = table["mae_ev"].notna() if "mae_ev" in table else pd.Series(False, index=table.index)
    excluded = table["speed_bound_only"] & (table["mofs_per_s"] < design["min_screen_mofs_per_s"])
    pending = [name for name in singles
               if not scored.get(name, False) and not excluded.get(name, False)]
    return (None if pending else leader), leader, pending


def keep_members(table: pd.DataFrame, chosen: str, members: str, design: dict) -> bool | None:
    """The declared rule for the members built from the choice: kept if their validation MAE is no
    worse than the choice's, their ENCE lower, and they still screen at the speed floor; None while
    they are unscored or untimed."""
    row, base = table.loc[members], table.loc[chosen]
    if pd.isna(row.get("mae_ev")) or pd.isna(row.get("mofs_per_s")):
        return None
    return bool(row["mae_ev"] <= base["mae_ev"] and row["ence"] < base["ence"]
                and row["mofs_per_s"] >= design["min_screen_mofs_per_s"])


def write_report(results: Path, out: Path = ROOT / "docs" / "results" / "accuracy_pilot.md") -> str | None:
    """The pilot's table and the rule's choice, as markdown (atomic); returns the choice (None while a
    single candidate is unscored)."""
    design = load_design()
    table = pilot_table(design, results)  # a candidate built from the choice has scores only after it
    winner, leader, pending = pilot_choice(design, results, table)

    def cell(row: pd.Series, key: str, fmt: str) -> str:
        value = row.get(key)
        return "not run" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, fmt)

    lines = ["# Accuracy pilot (issue 44)", "",
             f"Declared in `pipelines/configs/accuracy_pilot.yaml` before any candidate was trained. Generated by "
             f"`python -m pipelines.accuracy_pilot report` at commit `{git_commit()}`.", "",
             f"- **Data:** the release split of `{design['split_from']}`: a seeded {design['screen_subset']['train']} "
             "of its training part (seed "
             f"{design['screen_subset']['seed']}); every figure below is on its validation part. The test part is untouched.",
             f"- **Rule:** among candidates that screen ≥ {design['min_screen_mofs_per_s']} MOFs/s on this machine "
             "(new CoRE-MOF CIFs, cold feature cache, the model's S, one `predict` call featurising on every "
             "core), the lowest validation MAE; one "
             f"within {design['tie_ev']} eV of it and faster is preferred.",
             "- ρ is Spearman's (calibrated std, |error|); ENCE and ZMS as in the release's test stage "
             "(docs/method.md §9); ZMS per family: the range over metal families with ≥ "
             f"{MIN_GROUP_SIZE} validation structures.",
             "- Training cost: each step's training wall time (with validation) × full/pilot training size.", "",
             "| candidate | val MAE (eV) [95% CI] | − baseline's (paired) | ρ(total) | cov. 95% | ENCE | ZMS "
             "| ZMS per family | epochs | full-data cost (h) | MOFs/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in table.iterrows():
        if "mae_ev" not in row or pd.isna(row.get("mae_ev")):
            speed = cell(row, 'mofs_per_s', '.2f')
            speed = f"≤ {speed} (featurisation alone)" if row["speed_bound_only"] else speed
            lines.append(f"| {name} | not run | | | | | | | | | {speed} |")
            continue
        ci, family, delta = row["mae_ci"], row["zms_family_range"], row["delta_mae"]
        delta = "–" if not isinstance(delta, dict) else \
            f"{delta['value']:+.3f} [{delta['ci_low']:+.3f}, {delta['ci_high']:+.3f}]"
        lines.append(f"| {name} | {ci['value']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] | {delta} "
                     f"| {row['rho_total']:.3f} "
                     f"| {row['coverage_95']:.3f} | {row['ence']:.3f} | {row['zms']:.2f} "
                     f"| {'–' if family is None else f'{family[0]:.2f}–{family[1]:.2f}'} | {row['epochs']} "
                     f"| {row['train_cost_full_data_h']:.2f} | {cell(row, 'mofs_per_s', '.2f')} |")
    derived = [name for name in design.get("recipes", {}) if name not in single_candidates(design)]
    if pending:
        lines += ["", f"**No choice yet:** {', '.join(f'`{n}`' for n in pending)} not scored; leader so far by the "
                      f"rule: `{leader}`. Built from the choice, so not yet run: "
                      f"{', '.join(f'`{n}`' for n in derived) or 'none'}.", ""]
    elif winner is None:
        lines += ["", "**No choice:** no scored candidate has a screening speed at or above the floor.", ""]
    else:
        lines += ["", f"**Choice: `{winner}`** (by the rule above)."]
        for name in derived:
            kept = keep_members(table, winner, name, design) if name in table.index else None
            verdict = {None: "not yet scored and timed", True: "kept (the rule for members holds)",
                       False: "not kept (the rule for members fails)"}[kept]
            lines.append(f"- `{name}`, built from `{winner}`: {verdict}.")
        lines.append("")
    lines += [f"- `{name}`: {row['what']}" for name, row in table.iterrows()]
    write_text_atomic(out, "\n".join(lines) + "\n")
    return winner


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
    speed = commands.add_parser("throughput", help="MOFs/s of a trained candidate on new CoRE-MOF CIFs, cold cache")
    speed.add_argument("candidate")
    speed.add_argument("-n", type=int, default=200, help="CoRE-MOF CIFs to screen")
    speed.add_argument("--results", type=Path, default=ROOT / "results", help="where results/pilot/ is")
    report = commands.add_parser("report", help="the pilot's table and the rule's choice -> docs/results/accuracy_pilot.md")
    report.add_argument("--results", type=Path, default=ROOT / "results", help="where results/pilot/ is")
    args = parser.parse_args(argv)
    quiet_logging()
    if args.command == "featurise":
        featurise(args.backbone, data=args.data, workers=args.workers, skipped_csv=args.skipped)
    elif args.command == "report":
        print(f"choice: {write_report(args.results)}")
    elif args.command == "throughput":
        print(json.dumps(screen_throughput(args.candidate, results=args.results, n=args.n), default=float))
    else:
        scores = run_candidate(args.candidate, data=args.data, results=args.results)
        print(json.dumps({k: scores["validation"][k] for k in ("n", "mae_ev", "spearman_std_abs_error", "coverage_95")},
                         default=float))


if __name__ == "__main__":
    main()
