"""The BaLoRA design study: staged, pre-declared variants scored on the validation split only.

Every variant is BaLoRA trained with the benchmark profile's data, split, head and settings, with
some adapter fields changed (pipelines/configs/ablation_<profile>.yaml declares the stages, the
variants and the selection rule before the run). Each is scored on validation at S samples:
ρ(epistemic std, |error|), MAE, coverage, calibrated NLL and collapse diagnostics (α(x)/c per
layer, std quantiles, size and gap confounds). The winner is chosen by the declared rule; the
test split is never touched.

    python -m pipelines.balora_ablation --profile cpu|smoke [--data PATH] [--results DIR] [--no-publish]

Runs live in results/runs/<benchmark profile>/ (shared with the study, which reuses the winner's
run) and per-variant scores in results/runs/<benchmark profile>/ablation_scores/, so a rerun
resumes. The report goes to results/<timestamp>-ablation-<profile>/; the cpu profile's is also
published as docs/results/ablation.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pymatgen.core import Element

from mofbalora.adapters.model import ALPHA_NET_NAME, adapter_state
from mofbalora.data.datasets import default_cache_dir
from mofbalora.data.io import write_text_atomic
from mofbalora.data.splits import Split, check_disjoint
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.featurise.base import sample_num_atoms
from mofbalora.model_folder import draws_identity_sha256, package_versions
from mofbalora.predict import BandgapModel, load_model
from mofbalora.pretrained import resolve_model
from mofbalora.uncertainty import metrics as um
from pipelines.analysis import ablation, figures
from pipelines.bandgap_benchmark import (
    CONFIG_DIR,
    base_config,
    element_sets,
    epochs_run,
    load_profile,
    noise_head_config,
    pipeline_parser,
    run_method,
    shift_sets,
    stamp_rendering_commit,
    study_data,
)
from pipelines.provenance import git_commit, quiet_logging

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("balora_ablation")

def report_files(design: dict[str, Any]) -> dict[str, str]:
    """Names of the report, figure and metrics: ``<publish_as>.md`` etc. (default prefix ``ablation``),
    so that a follow-up design publishes next to the main one instead of over it."""
    prefix = design.get("publish_as", "ablation")
    return {"report": f"{prefix}.md", "figure": f"{prefix}_rho_vs_mae.png", "metrics": f"{prefix}_metrics.json"}


def load_design(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"ablation_{name}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown ablation profile {name!r}: no {path}")
    design = yaml.safe_load(path.read_text())
    for stage in design["stages"]:
        if stage["mode"] not in ("sequential", "parallel"):
            raise SystemExit(f"{path}: stage {stage['name']!r} has mode {stage['mode']!r}; use sequential or parallel")
    return design


class Study:
    """Trains (or reuses) and scores variants; remembers every score for the report."""

    def __init__(self, design: dict[str, Any], profile: dict[str, Any], *, data: str | None, run_dir: Path,
                 split: Any, selection: dict[str, tuple[list[str], list[Any], np.ndarray]]) -> None:
        self.design, self.profile, self.data, self.run_dir = design, profile, data, run_dir
        self.split = split
        self.val_ids, self.val_samples, self.val_truth = selection["val"]
        self.shift_val = selection.get("shift_val")
        self.n_atoms = np.array([sample_num_atoms(sample) for sample in self.val_samples])
        self.variants: dict[str, dict[str, Any]] = {}
        self.rng = np.random.default_rng(design["sampling_seed"])

    def draws(self, model: BandgapModel, samples: list[Any] | None = None) -> np.ndarray:
        return model.predict_draws(self.val_samples if samples is None else samples, n_samples=self.design["samples"],
                                   seed=self.design["sampling_seed"], progress=True)

    def scores_of(self, model: BandgapModel, draws: np.ndarray) -> dict[str, Any]:
        mean, std = draws.mean(0), draws.std(0, ddof=1)
        total = model.total_std(std, model.aleatoric_std_of(self.val_samples, mean))
        scores = ablation.validation_scores(
            draws, self.val_truth, self.n_atoms, total_std=total,
            calibrated_interval=model.calibrator.interval(mean, total, confidence=0.95),
            calibrated_std=model.calibrator.calibrated_std(mean, total),
            rng=self.rng, n_boot=self.design["bootstrap"])
        if self.shift_val is not None:
            _, samples, truth = self.shift_val
            shift_draws = self.draws(model, samples)
            shift_mean = shift_draws.mean(0)
            rho = um.bootstrap_ci(um.spearman_std_error, shift_mean, shift_draws.std(0, ddof=1), truth, rng=self.rng,
                                  n_boot=self.design["bootstrap"])
            scores["shift_val"] = {"mae_ev": um.mae(shift_mean, truth), "n": len(truth),
                                   "spearman": dict(zip(("value", "ci_low", "ci_high"), rho))}
        return scores

    def selection_key(self) -> str:
        """A fingerprint of the selection sets' ids, so cached scores follow a change of them."""
        ids = {"val": self.val_ids, "shift_val": self.shift_val[0] if self.shift_val else []}
        return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()

    def alpha_over_c(self, model: BandgapModel) -> dict[str, dict[str, float]]:
        member = model.members[0]
        state = adapter_state(member)
        z = torch.as_tensor(model.frozen_embeddings(self.val_samples), dtype=torch.float32)
        with torch.no_grad():
            alpha = getattr(member, ALPHA_NET_NAME)(z).numpy()
        return ablation.alpha_quantiles(alpha / state.config.prior_c, state.target_names)

    def evaluate(self, factors: dict[str, dict[str, Any]], stage: str) -> str:
        """Train (or reuse) and score the variant made of ``factors`` (factor -> level); returns its name."""
        name = "+".join(level["name"] for level in factors.values())
        if name in self.variants:
            return name
        adapter: dict[str, Any] = {}
        train: dict[str, Any] = {}
        for level in factors.values():
            adapter.update(level.get("adapter", {}))
            train.update(level.get("train", {}))
        config = base_config(self.profile, "balora", adapter=adapter, head=self.design["head"], **train)
        folder = run_method(f"balora-{name}-head-{self.design['head']}", config, data=self.data,
                            run_dir=self.run_dir, split=self.split, noise_head=noise_head_config(self.profile))
        cache = self.run_dir / "ablation_scores" / f"{folder.name}.json"
        key = {"samples": self.design["samples"], "sampling_seed": self.design["sampling_seed"],
               "bootstrap": self.design["bootstrap"], "split_sha256": self.split.fingerprint(),
               "selection_sha256": self.selection_key(), "draws_identity_sha256": draws_identity_sha256(folder)}
        cached = json.loads(cache.read_text()) if cache.exists() else None
        if cached is None or cached["key"] != key:
            model = load_model(folder)
            logger.info("scoring %s on validation", name)
            cached = {"key": key, "scores": self.scores_of(model, self.draws(model)),
                      "alpha_over_c": self.alpha_over_c(model), "noise_std_ev": model.noise_std_ev}
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps(cached, indent=1))
        timing = json.loads((folder / "timing.json").read_text())
        self.variants[name] = {"stage": stage, "factors": {f: lv["name"] for f, lv in factors.items()},
                               "adapter": adapter, "train": train, "folder": str(folder.relative_to(self.run_dir)),
                               # what was trained: the profile's adapter settings under the variant's
                               "trained_adapter": json.loads((folder / "train_config.json").read_text())["adapter"],
                               "epochs": epochs_run(folder)[0], "train_wall_s": timing["train_wall_s"],
                               **{k: cached[k] for k in ("scores", "alpha_over_c", "noise_std_ev")}}
        return name


def held_out_ids(design: dict[str, Any], profile: dict[str, Any], dataset: Any, split: Split,
                 run_dir: Path) -> dict[str, list[str]]:
    """Every id that must not steer a choice: the study's test and calibration parts, its shifted
    test sets, and the test and calibration parts of the shipped model named by
    ``design["held_out_release_model"]`` (whose settings this study chooses)."""
    held = {"study test": split.test, "study calibration": split.calibration}
    held.update({f"{name}-shift test": ids for name, (ids, _, _) in shift_sets(profile, dataset, run_dir).items()})
    if design.get("held_out_release_model"):
        release = Split.load(resolve_model(design["held_out_release_model"]) / "split.json")
        held.update({"release test": release.test, "release calibration": release.calibration})
    return held


def shift_validation(design: dict[str, Any], profile: dict[str, Any], dataset: Any, split: Split,
                     train_ids: list[str], held: dict[str, list[str]],
                     run_dir: Path) -> tuple[list[str], list[Any], np.ndarray] | None:
    """The chemistry-shift validation set ``design["shift_validation"]`` (method.md §10): structures
    outside the study's split holding a metal that no training structure (``train_ids``, those
    trained on) holds, none of the chemistry-shift test metals, and no held-out id; a seeded
    shuffle of the candidates among ``pool`` structures (null: all), cut to ``n`` with cells <= the
    profile's max_atoms. The candidate ids are saved in run_dir/shift_val_ids.json and reused."""
    config = design.get("shift_validation")
    if not config:
        return None
    ids_path = run_dir / "shift_val_ids.json"
    if ids_path.exists():
        chosen = json.loads(ids_path.read_text())
    else:
        excluded = set(profile.get("shift", {}).get("chemistry", {}).get("held_out_metals", []))
        train_metals = {e for elements in element_sets(dataset, train_ids, run_dir).values() for e in elements
                        if Element(e).is_metal}
        taken = set().union(*(split.part(p) for p in Split.PARTS), *held.values())
        pool = [i for i in dataset.table["id"] if i not in taken]
        pool = [str(i) for i in np.random.default_rng(config["seed"]).permutation(pool)[:config.get("pool")]]
        elements = element_sets(dataset, pool, run_dir)
        chosen = [i for i in pool if {e for e in elements[i] if Element(e).is_metal} - train_metals
                  and not excluded & set(elements[i])]
        write_text_atomic(ids_path, json.dumps(chosen))
    indexed = dataset.table.set_index("id")
    result = featurise_paths(list(indexed.loc[chosen, "path"]), get_featuriser(profile["backbone"]),
                             cache_dir=default_cache_dir(), max_atoms=profile["max_atoms"], progress=True)
    ids = result.ids[:config["n"]]
    return ids, result.samples[:config["n"]], indexed.loc[ids, dataset.target].to_numpy(dtype=float)


def selection_sets(design: dict[str, Any], profile: dict[str, Any], dataset: Any, split: Split,
                   parts: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The sets that choose among variants: validation less any held-out id, and the shift-validation
    set; checked to hold no held-out id (:func:`~mofbalora.data.splits.check_disjoint`)."""
    held = held_out_ids(design, profile, dataset, split, run_dir)
    forbidden = set().union(*held.values())
    ids, samples, truth = parts["val"]
    keep = [k for k, i in enumerate(ids) if i not in forbidden]
    selection: dict[str, Any] = {"val": ([ids[k] for k in keep], [samples[k] for k in keep], truth[keep])}
    shift = shift_validation(design, profile, dataset, split, parts["train"][0], held, run_dir)
    if shift is not None:
        selection["shift_val"] = shift
    check_disjoint({name: part[0] for name, part in selection.items()}, held)
    logger.info("selection sets: %s (val less %d held-out ids)",
                {name: len(part[0]) for name, part in selection.items()}, len(ids) - len(keep))
    return selection, held


def reference(study: Study, method: str) -> dict[str, Any]:
    """LoRA (or the LoRA ensemble) on the same split, head and settings: val MAE (and ρ)."""
    head = study.design["head"]
    folder = run_method(f"{method}-head-{head}", base_config(study.profile, method, head=head), data=study.data,
                        run_dir=study.run_dir, split=study.split, noise_head=noise_head_config(study.profile))
    draws = load_model(folder).predict_draws(study.val_samples)
    mean = draws.mean(0)
    out: dict[str, Any] = {"label": f"`{folder.name}`", "folder": str(folder.relative_to(study.run_dir)),
                           "mae_ev": um.mae(mean, study.val_truth)}
    if draws.shape[0] > 1:
        out["spearman"] = dict(zip(("value", "ci_low", "ci_high"), um.bootstrap_ci(
            um.spearman_std_error, mean, draws.std(0, ddof=1), study.val_truth, rng=study.rng,
            n_boot=study.design["bootstrap"])))
    return out


def run_stages(study: Study, lora_mae_ev: float) -> tuple[str, list[dict[str, Any]]]:
    """The declared stages in order; returns the final winner and every comparison made."""
    design = study.design
    rule = design["selection"]
    baseline = design["baseline"]
    incumbent: dict[str, dict[str, Any]] = {baseline["factor"]: {
        "name": baseline["name"], "adapter": baseline.get("adapter", {}), "train": baseline.get("train", {})}}
    incumbent_name = study.evaluate(incumbent, "baseline")
    steps = []
    factor_sets = {incumbent_name: incumbent}

    def compare(stage: str, names: list[str], factor: str | None = None) -> str:
        choice = ablation.select({n: study.variants[n]["scores"] for n in names}, lora_mae_ev=lora_mae_ev,
                                 mae_margin_ev=rule["mae_margin_ev"], tie_rho=rule["tie_rho"],
                                 criterion=rule.get("criterion", "val"))
        steps.append({"stage": stage, "factor": factor, "candidates": names, **choice})
        for name in names:
            study.variants[name]["eligible"] = name in choice["eligible"]
        return choice["winner"]

    for stage in design["stages"]:
        def variant(levels: dict[str, dict[str, Any]]) -> str:
            factors = {**factor_sets[incumbent_name], **levels}
            name = study.evaluate(factors, stage["name"])
            factor_sets[name] = factors
            return name

        if stage["mode"] == "sequential":
            names = [incumbent_name] + [variant({factor: level}) for factor, levels in stage["factors"].items()
                                        for level in levels]
            incumbent_name = compare(stage["name"], names)
            continue
        winners: dict[str, str] = {}  # factor -> its winning variant, when that is not the incumbent
        for factor, levels in stage["factors"].items():
            names = [incumbent_name] + [variant({factor: level}) for level in levels]
            best = compare(stage["name"], names, factor)
            if best != incumbent_name:
                winners[factor] = best
        finalists = [incumbent_name, *winners.values()]
        if len(winners) >= 2:
            levels = {factor: factor_sets[name][factor] for factor, name in winners.items()}
            ablation.merge_overrides(*(level.get("adapter", {}) for level in levels.values()))  # refuses a clash
            ablation.merge_overrides(*(level.get("train", {}) for level in levels.values()))
            finalists.append(variant(levels))
        incumbent_name = compare(stage["name"], finalists, "combined") if len(finalists) > 1 else incumbent_name
    return incumbent_name, steps  # every variant took part in a comparison, which set its "eligible"


def publish(report_dir: Path, design: dict[str, Any]) -> None:
    target = ROOT / "docs" / "results"
    target.mkdir(parents=True, exist_ok=True)
    for name in report_files(design).values():
        shutil.copy(report_dir / name, target / name)


def render_outputs(report_dir: Path, results_dict: dict[str, Any]) -> None:
    """The report and the figure, from the results dict (which holds every number)."""
    files = report_files(results_dict["design"])
    figures.ablation_rho_vs_mae(results_dict, report_dir / files["figure"])
    write_text_atomic(report_dir / files["report"], ablation.render(results_dict, figure=files["figure"]))


def rerender(report_dir: Path, *, publish_it: bool) -> Path:
    """The report and figure again from ablation_metrics.json (no number recomputed), e.g. after a
    change of wording; records the commit that rendered it."""
    results_dict = stamp_rendering_commit(next(report_dir.glob("*_metrics.json")))
    render_outputs(report_dir, results_dict)
    if publish_it:
        publish(report_dir, results_dict["design"])
    return report_dir


def main(argv: list[str] | None = None) -> Path:
    args = pipeline_parser(__doc__, profiles="cpu (default) or smoke", publish_to="docs/results").parse_args(argv)
    if args.rerender:
        return rerender(Path(args.rerender), publish_it=bool(args.publish))
    quiet_logging()
    started = time.perf_counter()
    code_commit = git_commit()
    design = load_design(args.profile)
    profile = load_profile(design["benchmark_profile"])
    results = Path(args.results)
    run_dir = results / "runs" / design["benchmark_profile"]
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_dir = results / f"{stamp}-ablation-{args.profile}"
    report_dir.mkdir(parents=True, exist_ok=True)
    head = design["head"]
    # The design is on disk before any variant trains.
    write_text_atomic(report_dir / "design.md", ablation.design_markdown(design, f"`lora-head-{head}`") + "\n")
    write_text_atomic(report_dir / "config.yaml", yaml.safe_dump({"design": design, "benchmark_profile": profile}))

    dataset, split, parts = study_data(profile, args.data, run_dir)
    selection, held = selection_sets(design, profile, dataset, split, parts, run_dir)
    study = Study(design, profile, data=args.data, run_dir=run_dir, split=split, selection=selection)
    references = {"lora": reference(study, "lora")}
    winner, steps = run_stages(study, references["lora"]["mae_ev"])
    references["lora-ensemble"] = reference(study, "lora-ensemble")
    results_dict: dict[str, Any] = {
        "design": design, "references": references, "variants": study.variants, "steps": steps, "winner": winner,
        "selection_ids": {name: part[0] for name, part in selection.items()},
        "held_out_counts": {name: len(ids) for name, ids in held.items()},
        "winner_adapter": study.variants[winner]["adapter"],
        "winner_trained_adapter": study.variants[winner]["trained_adapter"],
        "mae_limit_ev": references["lora"]["mae_ev"] + design["selection"]["mae_margin_ev"],
        "setup": {"profile": args.profile, "backbone": profile["backbone"], "n_train": len(parts["train"][2]),
                  "n_val": len(study.val_truth), "n_val_before_held_out": len(parts["val"][0]),
                  "n_shift_val": len(study.shift_val[0]) if study.shift_val else 0,
                  "split_sha256": split.fingerprint(), "git_commit": code_commit,
                  "finished": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
                  "wall_s": time.perf_counter() - started, "versions": package_versions(),
                  "labels_sha256": dataset.labels_sha256, "data_source": str(dataset.source)},
    }
    files = report_files(design)
    write_text_atomic(report_dir / files["metrics"], json.dumps(results_dict, indent=1, default=float))
    render_outputs(report_dir, results_dict)
    if args.publish or (args.publish is None and args.profile.startswith("cpu")):
        publish(report_dir, design)
    logger.info("winner %s; report %s (%.0f s)", winner, report_dir / files["report"], results_dict["setup"]["wall_s"])
    print(report_dir)
    return report_dir


if __name__ == "__main__":
    main()
