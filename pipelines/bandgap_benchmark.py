"""The band-gap uncertainty study: BaLoRA against full fine-tuning, LoRA, a LoRA ensemble,
Laplace-LoRA, MC-dropout LoRA and input-independent (constant-α) BaLoRA, on one split and two
shifted test sets (larger cells; held-out metals).

Steps (docs/method.md §12): fit every method with every seed the profile names (LoRA's seeds are
the ensemble's members; Laplace-LoRA is fitted post hoc on each of them); calibrate each seed on
the held-out calibration split; draw predictions on every set once; score every method with CIs
over seeds and test structures; decide the claims by the rules in ``pipelines.analysis.study``.

    python -m pipelines.bandgap_benchmark --profile cpu|cpu-large|gpu|smoke [--fresh] [--data PATH]

Method runs and predictions live in results/runs/<profile>/ and are reused by a rerun (a fit's
draws only while its weights are the ones that made them; --fresh redoes everything); each run
writes its report to results/<timestamp>-<profile>/. The cpu profile's report is published to
docs/results/ and docs/studies/bandgap_benchmark.md, other profiles' (with --publish) to docs/results/<profile>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.stats import norm
from tqdm.auto import tqdm

from mofbalora.adapters.config import ADAPTER_METHODS, SAMPLING_METHODS
from mofbalora.backbones.batching import compute_frozen_embeddings
from mofbalora.data.datasets import default_cache_dir, load_labelled_dataset
from mofbalora.data.io import atomic_path, write_text_atomic
from mofbalora.data.splits import Split, make_split
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.featurise.base import element_counts, metal_family, sample_num_atoms
from mofbalora.fit_calibrate import complete_uncertainty_stages, fit_calibrated
from mofbalora.model_folder import bare_member, draws_identity_sha256, member_adapter_config, package_versions
from mofbalora.predict import BandgapModel, load_model
from mofbalora.training.config import TrainConfig
from mofbalora.training.fit import FolderMismatchError, epoch_history, prepare_data, select_subset
from mofbalora.training.noise_head import NoiseHeadConfig
from mofbalora.uncertainty import metrics as um
from mofbalora.uncertainty.conformal import ConformalCalibrator
from mofbalora.uncertainty.laplace import LastLayerLaplace
from mofbalora.uncertainty.recalibration import StdRecalibrator
from pipelines.analysis import figures, study
from pipelines.analysis.report import readme_block, render_report, write_generated_block
from pipelines.provenance import git_commit, quiet_logging

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("bandgap_benchmark")
CONFIG_DIR = ROOT / "pipelines" / "configs"


def load_profile(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"benchmark_{name}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown profile {name!r}: no {path}")
    return yaml.safe_load(path.read_text())


def base_config(profile: dict[str, Any], method: str, **extra: Any) -> TrainConfig:
    values = {**profile["train"], "backbone": profile["backbone"], "method": method, "adapter": dict(profile["adapter"]),
              "likelihood": profile["likelihood"], "head": profile["head"],
              "max_structures": profile["max_structures"], "max_atoms": profile["max_atoms"], "split": profile["split"],
              "ensemble_size": profile["ensemble_size"], "seed": profile["seed"]}
    values["adapter"].update(extra.pop("adapter", {}))
    values.update(extra)
    return TrainConfig.from_dict(values)


def comparable_config(values: dict[str, Any]) -> dict[str, Any]:
    """A training config with its adapter settings completed by their defaults, so that two
    configs that train the same model compare equal however they were spelt."""
    out = TrainConfig.from_dict(values).to_dict()
    if out["method"] in ADAPTER_METHODS:  # the member seed is part of the training config already
        out["adapter"] = member_adapter_config(method=out["method"], adapter=out["adapter"], seed=out["seed"]).to_dict()
    return out


def finished_run(folder: Path) -> bool:
    model = folder / "model.json"
    return model.exists() and (folder / "timing.json").exists() and bool(json.loads(model.read_text())["calibration"])


def element_sets(dataset: Any, ids: list[str], run_dir: Path) -> dict[str, list[str]]:
    """The chemical elements of each structure, read once from its CIF and cached in run_dir."""
    from mofbalora.data.structures import read_structure

    cache = run_dir / "elements.json"
    known: dict[str, list[str]] = json.loads(cache.read_text()) if cache.exists() else {}
    missing = [i for i in ids if i not in known]
    if missing:
        paths = dataset.table.set_index("id").loc[missing, "path"]
        for structure_id, path in tqdm(paths.items(), total=len(missing), desc="reading elements", unit="CIF"):
            try:
                known[structure_id] = sorted({site.specie.symbol for site in read_structure(path)})
            except Exception as exc:  # noqa: BLE001 - recorded and skipped, as featurising does
                logger.warning("%s: elements not read (%s)", path, exc)
                known[structure_id] = []
        write_text_atomic(cache, json.dumps(known))
    return {i: known[i] for i in ids}


def study_data(profile: dict[str, Any], data: str | None, run_dir: Path) -> tuple[Any, Split, dict[str, Any]]:
    """The profile's dataset, its split (saved in run_dir/split.json and reused) and the featurised
    parts ``{part: (ids, samples, gaps_ev)}``. Structures holding a held-out metal of the
    chemistry shift (``shift.chemistry.held_out_metals``) never enter the split."""
    dataset = load_labelled_dataset(data)
    subset = select_subset(dataset, base_config(profile, "lora"))
    held_out = set(profile.get("shift", {}).get("chemistry", {}).get("held_out_metals", []))
    if held_out:
        elements = element_sets(dataset, list(subset["id"]), run_dir)
        subset = subset[[not held_out & set(elements[i]) for i in subset["id"]]]
    split_path = run_dir / "split.json"
    split = Split.load(split_path) if split_path.exists() else make_split(
        list(subset["id"]), subset[dataset.target].to_numpy(), fractions=tuple(profile["split"]["fractions"]),
        seed=profile["split"]["seed"], method=profile["split"]["method"])
    split.save(split_path)
    parts = prepare_data(base_config(profile, "lora"), dataset, run_dir, progress=False, split=split).parts
    return dataset, split, parts


def shift_sets(profile: dict[str, Any], dataset: Any, run_dir: Path) -> dict[str, tuple[list[str], list[Any], np.ndarray]]:
    """The shifted test sets ``{name: (ids, samples, gaps_ev)}``, drawn from the profile's subset:

    - ``size``: cells larger than any training cell (max_atoms < n ≤ shift.size.max_atoms);
    - ``chemistry``: cells (≤ max_atoms) holding a held-out metal, which the split never saw.

    Each is a seeded random sample of at most ``n`` structures; the ids are saved in
    run_dir/shift_ids.json and reused.
    """
    config = profile.get("shift")
    if not config:
        return {}
    ids_path = run_dir / "shift_ids.json"
    chosen: dict[str, list[str]] = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    subset = select_subset(dataset, base_config(profile, "lora"))
    elements = element_sets(dataset, list(subset["id"]), run_dir)
    held_out = set(config.get("chemistry", {}).get("held_out_metals", []))
    limits = {"size": config.get("size", {}).get("max_atoms"), "chemistry": profile["max_atoms"]}
    featuriser = get_featuriser(profile["backbone"])
    indexed = dataset.table.set_index("id")
    out = {}
    for name in [n for n in ("size", "chemistry") if n in config]:
        if name not in chosen:
            rng = np.random.default_rng(profile["seed"])
            pool = [i for i in subset["id"] if (name == "chemistry") == bool(held_out & set(elements[i]))]
            chosen[name] = [str(i) for i in rng.permutation(pool)]  # filtered by size below, then cut to n
        result = featurise_paths(list(indexed.loc[chosen[name], "path"]), featuriser, cache_dir=default_cache_dir(),
                                 max_atoms=limits[name], progress=True)
        keep = [k for k, sample in enumerate(result.samples)
                if name == "chemistry" or sample_num_atoms(sample) > profile["max_atoms"]][:config[name]["n"]]
        ids = [result.ids[k] for k in keep]
        out[name] = (ids, [result.samples[k] for k in keep], indexed.loc[ids, dataset.target].to_numpy(dtype=float))
    write_text_atomic(ids_path, json.dumps(chosen))
    return out


def noise_head_config(profile: dict[str, Any]) -> NoiseHeadConfig | None:
    """The profile's ``noise_head`` settings over the declared ones (the smoke profile fits fewer
    variants), or None for the declared ones (``pipelines/configs/uncertainty.yaml``)."""
    if not profile.get("noise_head"):
        return None
    return NoiseHeadConfig.from_dict({**NoiseHeadConfig().to_dict(), **profile["noise_head"]})


def run_method(name: str, config: TrainConfig, *, data: Any, run_dir: Path, split: Split,
               progress: bool = False, noise_head: NoiseHeadConfig | None = None) -> Path:
    """Fit and calibrate one method unless a finished run with the same training config exists
    (under this name or another: the study reuses the design study's runs); record its training
    wall time. ``noise_head``: the data-noise stage's settings (default: the declared ones).

    Raises:
        FolderMismatchError: when ``name``'s folder holds a run with another config.
    """
    out = run_dir / "methods" / name
    wanted = comparable_config(config.to_dict())
    finished = {folder: comparable_config(json.loads((folder / "train_config.json").read_text()))
                for folder in sorted((run_dir / "methods").glob("*")) if finished_run(folder)}
    for folder in sorted(finished, key=lambda f: f != out):  # this name's own folder first
        if finished[folder] == wanted:
            logger.info("reusing finished run %s for %s", folder, name)
            # a run trained before the current noise head or calibration settings gets them now
            return complete_uncertainty_stages(folder, data=data, progress=progress, noise_head=noise_head)
    if out in finished:
        raise FolderMismatchError(f"{out}: holds a finished run with another training config; remove it or rename {name}")
    timing_path = out / "timing.json"
    logger.info("fitting %s", name)
    start = time.perf_counter()
    result = fit_calibrated(config, data=data, out_dir=out, progress=progress, split=split, noise_head=noise_head)
    if result is None:
        raise RuntimeError(f"{name}: training did not finish")
    previous = json.loads(timing_path.read_text())["train_wall_s"] if timing_path.exists() else 0.0
    write_text_atomic(timing_path, json.dumps({"train_wall_s": previous + time.perf_counter() - start}))
    return out


def epochs_run(model_dir: Path) -> list[int]:
    counts = []
    for member in sorted(model_dir.glob("members/*/"), key=lambda path: int(path.name)):
        table = epoch_history(member)
        counts.append(int(table.dropna(subset=["train_loss"])["epoch"].max()) + 1)
    return counts


CACHE_KEY = "_made_by"  # the npz entry naming what a cached result was computed from


def cached(path: Path, compute: Any, *, made_by: str | None = None) -> dict[str, np.ndarray]:
    """``compute()`` (a dict of arrays) saved to ``path`` (.npz) once and read back by a rerun.

    ``made_by`` names what the result was computed from (a model folder's
    ``draws_identity_sha256``); a saved result made by anything else, or by nothing recorded, is
    computed again, so a retrained fit is never scored with its predecessor's draws."""
    if path.exists():
        loaded = np.load(path)
        saved_by = str(loaded[CACHE_KEY]) if CACHE_KEY in loaded.files else None
        if made_by is None or saved_by == made_by:
            return {key: loaded[key] for key in loaded.files if key != CACHE_KEY}
        logger.info("%s was computed from another fit; computing it again", path.name)
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **out, **({CACHE_KEY: np.array(made_by)} if made_by is not None else {}))
    return out


def method_draws(model: BandgapModel, sets: dict[str, list[Any]], *, samples: int, label: str) -> dict[str, np.ndarray]:
    """Draws [D, n] (eV) on every set, plus the test inference wall time; D = S samples for a
    sampling method (sampling seed 0), the members for an ensemble, 1 otherwise."""
    out: dict[str, np.ndarray] = {}
    for name, structures in sets.items():
        start = time.perf_counter()
        out[name] = model.predict_draws(structures, n_samples=samples, seed=0, progress=True,
                                        progress_label=f"{label} on {name}")
        if name == "test":
            out["test_wall_s"] = np.array(time.perf_counter() - start)
    logger.info("predicted with %s", label)
    return out


def laplace_predictions(model: BandgapModel, member: int, train: tuple[Any, Any, np.ndarray], sets: dict[str, list[Any]],
                        *, noise_std_ev: float, hessian_structure: str) -> dict[str, np.ndarray]:
    """Last-layer Laplace (uncertainty.laplace) on one LoRA member: GLM mean and epistemic std (eV)
    per set, the prior precision chosen by marginal likelihood, and the fit + test wall times."""
    start = time.perf_counter()
    std_ev = model.normaliser.std_ev
    laplace = LastLayerLaplace(hessian_structure=hessian_structure).fit(
        model.members[member], train[1], model.normaliser.to_standard(train[2]), noise_std=noise_std_ev / std_ev)
    out = {"fit_wall_s": np.array(time.perf_counter() - start), "prior_precision": np.array(laplace.prior_precision_)}
    for name, structures in sets.items():
        start = time.perf_counter()
        mean, std = laplace.predict(structures)
        out[f"{name}_mean"], out[f"{name}_std"] = model.normaliser.to_ev(mean), std * std_ev
        if name == "test":
            out["test_wall_s"] = np.array(time.perf_counter() - start)
    return out


@dataclass
class Realised:
    """One method's per-seed predictions on every set (with their per-structure data noise σ_n(x)),
    and the learned homoscedastic noise per seed (the Laplace GLM's likelihood)."""

    runs: dict[str, study.MethodRuns]  # set -> runs
    noise_std_ev: list[float]  # per seed (one for a pooled ensemble)


def aleatoric_by_set(model: BandgapModel, means: dict[str, np.ndarray], frozen: dict[str, np.ndarray],
                     counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """σ_n(x) (eV) of ``model``'s noise head on every set, at the predicted means ``means`` [n]
    (``frozen``: z(x), ``counts``: element counts, of every set)."""
    return {name: model.aleatoric_std(frozen[name], means[name], counts[name]) for name in means}


def frozen_by_set(backbone: str, sets: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """The bare pretrained backbone's crystal embeddings z(x) [n, dim] of every set."""
    bare = bare_member(backbone=backbone, head="pretrained", seed=0)
    return {name: compute_frozen_embeddings(bare, samples).numpy() for name, samples in sets.items()}


def calibrated(realised: Realised, truth_by_set: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per realisation and set: conformal 68/95% hits, calibrated-Gaussian NLL and 95% width [K, n],
    the calibrator fitted on the calibration split normalised by the total std
    sqrt(epistemic² + σ_n(x)²), every method alike (docs/method.md §9, §13)."""
    cal = realised.runs["calibration"].total().realisations()
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for k, (cal_mean, cal_sigma) in enumerate(cal):
        calibrator = ConformalCalibrator().fit(cal_mean, cal_sigma, truth_by_set["calibration"])
        for name, runs in realised.runs.items():
            if name in ("calibration", "val"):
                continue
            mean, sigma = runs.total().realisations()[k]
            truth = truth_by_set[name]
            entry = out.setdefault(name, {"hit_68": [], "hit_95": [], "nll": [], "width_95_ev": [], "z2": [],
                                          "mean_ev": [], "calibrated_std_ev": []})
            for level in (68, 95):
                low, high = calibrator.interval(mean, sigma, confidence=level / 100, lower_bound_ev=None)
                entry[f"hit_{level}"].append(((truth >= low) & (truth <= high)).astype(float))
                if level == 95:
                    entry["width_95_ev"].append(high - low)
            cal_sd = um.positive_std(calibrator.calibrated_std(mean, sigma))
            entry["nll"].append(-norm.logpdf(truth, loc=mean, scale=cal_sd))
            entry["z2"].append(((truth - mean) / cal_sd) ** 2)
            entry["mean_ev"].append(mean)
            entry["calibrated_std_ev"].append(cal_sd)
    return {name: {key: np.array(values) for key, values in entry.items()} for name, entry in out.items()}


def recalibrated(realised: Realised, truth_by_set: dict[str, np.ndarray], *, family: dict[str, np.ndarray],
                 distance: dict[str, np.ndarray], settings: dict[str, Any]) -> Realised:
    """The same runs with the release's recalibration of the total std (docs/method.md §9), every
    method alike: per realisation, a :class:`StdRecalibrator` of ``settings["kind"]`` fitted on the
    calibration split, its per-structure factor kept for every set. ``family``: metal family
    (atomic number) and ``distance``: embedding distance to the training part, per set.
    Only kinds whose factor depends on the structure, not on σ, apply here (a pooled ensemble's
    bootstrap redraws its members, and with them σ)."""
    kind = settings["kind"]
    if "isotonic" in kind.split("+"):
        raise ValueError(f"recalibration {kind!r}: the study applies per-structure factors; isotonic depends on σ")
    options = {key: value for key, value in settings.items() if key != "kind"}
    factors: dict[str, list[np.ndarray]] = {name: [] for name in realised.runs}
    for cal_mean, cal_sigma in realised.runs["calibration"].total(recalibrated=False).realisations():
        recalibrator = StdRecalibrator(kind=kind, **options).fit(
            um.positive_std(cal_sigma), truth_by_set["calibration"] - cal_mean,
            family=family["calibration"], distance=distance["calibration"])
        for name in realised.runs:
            factors[name].append(recalibrator.predict(np.ones(len(family[name])), family=family[name],
                                                      distance=distance[name]))
    return replace(realised, runs={name: replace(runs, std_factor=np.stack(factors[name]))
                                   for name, runs in realised.runs.items()})


def method_table(runs: study.MethodRuns, hits: dict[str, np.ndarray], truth: np.ndarray,
                 rng: np.random.Generator, n_boot: int, *, uncertainty: bool) -> dict[str, Any]:
    """One row of the report's table on one set: MAE, ρ, AUSE/oracle, NLL mean and median, calibrated
    68/95% coverage and the median calibrated 95% width, each with its hierarchical CI."""
    row = {"mae_ev": study.score(study.mae, runs, truth, rng, n_boot)}
    if uncertainty:
        row["spearman"] = study.score(study.spearman, runs, truth, rng, n_boot)
        row["ause_ratio"] = study.score(study.ause_ratio, runs, truth, rng, n_boot)
    # the std a user gets: epistemic and per-structure data noise together (every method has it)
    row["spearman_total"] = study.score(study.spearman, runs.total(), truth, rng, n_boot)
    if runs.std_factor is not None:  # and before the recalibration
        row["spearman_total_raw"] = study.score(study.spearman, runs.total(recalibrated=False), truth, rng, n_boot)
    row["nll_mean"] = study.per_structure_score(hits["nll"], rng, n_boot)
    row["nll_median"] = study.per_structure_score(hits["nll"], rng, n_boot, reduce=np.median)
    for level in (68, 95):
        row[f"coverage_{level}"] = study.per_structure_score(hits[f"hit_{level}"], rng, n_boot)
    row["median_width_95_ev"] = float(np.median(hits["width_95_ev"]))
    # is the calibrated std the size of the error (docs/method.md §9): ZMS, and ENCE over std deciles
    row["zms"] = study.per_structure_score(hits["z2"], rng, n_boot)
    row["ence"] = study.ence_score(hits["mean_ev"], hits["calibrated_std_ev"], truth, rng, n_boot)
    return row


def claim_1_non_inferiority(profile: dict[str, Any], versus_ensemble: dict[str, Any],
                            table: dict[str, Any]) -> dict[str, Any]:
    """The declared non-inferiority reading of claim 1 (``claim_1_non_inferiority_margin_rho``): is
    BaLoRA's ρ no more than the margin below the ensemble's, and at what share of its training cost
    (BaLoRA's wall time per seed over the whole ensemble's)."""
    margin = profile.get("claim_1_non_inferiority_margin_rho")
    if margin is None:
        return {}
    ensemble_cost = table["lora-ensemble"]["cost"]["train_wall_s_per_seed"]
    return {"non_inferiority": {
        "margin_rho": margin, "verdict": study.non_inferiority(versus_ensemble["spearman_difference"], margin),
        "training_cost_ratio_balora_over_ensemble": table["balora"]["cost"]["train_wall_s_per_seed"] / ensemble_cost}}



SUMMARY_PROFILES = ("cpu", "cpu-large")  # the profiles whose results the study's page shows
STUDY_PAGE = Path("docs") / "studies" / "bandgap_benchmark.md"  # under ROOT


def publish(report_dir: Path, metrics: dict[str, Any]) -> None:
    """Copy the report to docs/results/ (cpu) or docs/results/<profile>/ and, for the profiles in
    SUMMARY_PROFILES, refresh that profile's generated section of the study's page (added before the
    cpu one when it is not there yet)."""
    profile = metrics["setup"]["profile"]
    relative = "docs/results" if profile == "cpu" else f"docs/results/{profile}"
    # docs/results also holds the design study's ablation.* files: overwrite, never wipe
    shutil.copytree(report_dir, ROOT / relative, ignore=shutil.ignore_patterns("predictions"), dirs_exist_ok=True)
    page = ROOT / STUDY_PAGE
    if profile not in SUMMARY_PROFILES or not page.exists():
        return
    marker = "results" if profile == "cpu" else f"results-{profile}"
    links = "../" + relative.removeprefix("docs/")  # from docs/studies/
    write_generated_block(page, marker, readme_block(metrics, links), generated_by="pipelines/bandgap_benchmark.py",
                          before="<!-- results:start")


def stamp_rendering_commit(metrics_path: Path) -> dict[str, Any]:
    """A report's metrics, with ``setup.rendered_by_git_commit`` set to the commit re-rendering it
    (written back); no number is recomputed."""
    metrics = json.loads(metrics_path.read_text())
    metrics["setup"]["rendered_by_git_commit"] = git_commit()
    write_text_atomic(metrics_path, json.dumps(metrics, indent=1, default=float))
    return metrics


def rerender(report_dir: Path, *, publish_it: bool) -> Path:
    """report.md again from metrics.json (no number recomputed), e.g. after a change of wording;
    records the commit that rendered it."""
    metrics = stamp_rendering_commit(report_dir / "metrics.json")
    write_text_atomic(report_dir / "report.md", render_report(metrics))
    if publish_it:
        publish(report_dir, metrics)
    return report_dir


def pipeline_parser(doc: str, *, profiles: str, publish_to: str) -> argparse.ArgumentParser:
    """The options every study pipeline shares: --profile, --data, --results, --publish, --rerender."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", help=profiles)
    parser.add_argument("--data", default=None, help="dataset folder or archive (default: $MOFBALORA_DATA, data/qmof, ../shared/data/qmof)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="where runs and reports go")
    parser.add_argument("--publish", action=argparse.BooleanOptionalAction, default=None,
                        help=f"copy the report to {publish_to} (default: cpu profile only)")
    parser.add_argument("--rerender", metavar="REPORT_DIR", default=None,
                        help="only re-render REPORT_DIR's report from its metrics (no number recomputed; publish as above)")
    return parser



def main(argv: list[str] | None = None) -> Path:
    parser = pipeline_parser(__doc__, profiles="cpu (default), cpu-large, gpu or smoke",
                             publish_to="docs/results/ (cpu) or docs/results/<profile>/, and docs/studies/bandgap_benchmark.md")
    parser.add_argument("--fresh", action="store_true", help="redo every method run and prediction")
    args = parser.parse_args(argv)
    if args.rerender:
        return rerender(Path(args.rerender), publish_it=bool(args.publish))
    quiet_logging()
    profile = load_profile(args.profile)
    started = time.perf_counter()
    code_commit = git_commit()  # at the start: the code that runs, whatever changes meanwhile
    results = Path(args.results)
    run_dir = results / "runs" / args.profile
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    dataset, split, parts = study_data(profile, args.data, run_dir)
    shifts = shift_sets(profile, dataset, run_dir)
    sets = {"val": parts["val"][1], "calibration": parts["calibration"][1], "test": parts["test"][1],
            **{f"shift_{name}": value[1] for name, value in shifts.items()}}
    truth = {"val": parts["val"][2], "calibration": parts["calibration"][2], "test": parts["test"][2],
             **{f"shift_{name}": value[2] for name, value in shifts.items()}}
    head = profile["head"]
    # z(x) of every set, once: the per-structure data-noise heads' input (docs/method.md §13)
    frozen = cached(run_dir / "predictions" / "frozen-embeddings.npz", lambda: frozen_by_set(profile["backbone"], sets))
    counts = {name: element_counts(samples) for name, samples in sets.items()}  # a composition-aware head's input

    # Step 1: every method, every seed (docs/method.md §12); LoRA's seeds are the ensemble's members.
    folders: dict[str, list[Path]] = {}
    for name, spec in profile["methods"].items():
        extra = {key: value for key, value in spec.items() if key not in ("method", "seeds")}
        folders[name] = [run_method(f"{name}-seed{seed}" if spec["method"] != "lora-ensemble" else name,
                                    base_config(profile, spec["method"], head=head, seed=seed, **extra),
                                    data=args.data, run_dir=run_dir, split=split, progress=True,
                                    noise_head=noise_head_config(profile))
                         for seed in spec.get("seeds", [profile["seed"]])]
    # which weights made each fit's draws: keys the cached draws below
    made_by = {folder: draws_identity_sha256(folder) for runs in folders.values() for folder in runs}

    # Step 2: predictions on every set, drawn once and cached.
    claim_s, sizes = profile["claim_samples"], profile["sample_sizes"]
    realised: dict[str, Realised] = {}
    cost: dict[str, dict[str, Any]] = {}
    n_train, n_test = len(parts["train"][2]), len(truth["test"])
    draws_by_method: dict[str, list[tuple[Any, dict[str, np.ndarray]]]] = {}
    for name, spec in profile["methods"].items():
        per_seed = draws_by_method[name] = []
        for folder in folders[name]:
            model = load_model(folder)
            per_seed.append((model, cached(run_dir / "predictions" / f"{folder.name}-S{claim_s}.npz",
                                           lambda: method_draws(model, sets, samples=claim_s, label=folder.name),
                                           made_by=made_by[folder])))
        pooled = spec["method"] == "lora-ensemble"
        if pooled:  # one folder; its draws are the members' predictions
            ensemble_model, members_draws = per_seed[0]
            noise = aleatoric_by_set(ensemble_model, {s: members_draws[s].mean(0) for s in sets}, frozen, counts)
            runs = {s: study.MethodRuns(name, members_draws[s], np.full_like(members_draws[s], np.nan), pooled=True,
                                        aleatoric=noise[s][None]) for s in sets}
        else:
            noise = [aleatoric_by_set(m, {s: d[s].mean(0) for s in sets}, frozen, counts) for m, d in per_seed]
            runs = {s: study.MethodRuns(name, np.stack([d[s].mean(0) for _, d in per_seed]),
                                        np.stack([study_spread(d[s]) for _, d in per_seed]),
                                        aleatoric=np.stack([n[s] for n in noise])) for s in sets}
        if pooled:
            members = [json.loads(p.read_text())["noise_std_ev"] for p in sorted(folders[name][0].glob("members/*/noise.json"))]
            realised[name] = Realised(runs, [float(ensemble_model.noise_std_ev)])
            # LoRA: each member on its own (seeds 0..M-1), with the ensemble folder's noise head at its own mean
            realised["lora"] = Realised({s: study.MethodRuns(
                "lora", members_draws[s], np.full_like(members_draws[s], np.nan),
                aleatoric=np.stack([ensemble_model.aleatoric_std(frozen[s], row, counts[s]) for row in members_draws[s]]))
                for s in sets}, members)
        else:
            realised[name] = Realised(runs, [float(m.noise_std_ev) for m, _ in per_seed])
        epochs = [sum(epochs_run(folder)) for folder in folders[name]]
        train_wall = [json.loads((folder / "timing.json").read_text())["train_wall_s"] for folder in folders[name]]
        test_wall = float(np.mean([d["test_wall_s"] for _, d in per_seed]))
        passes = claim_s if spec["method"] in SAMPLING_METHODS else per_seed[0][1]["test"].shape[0]
        cost[name] = {"train_wall_s_per_seed": float(np.mean(train_wall)), "train_passes_per_seed": int(np.mean(epochs)) * n_train,
                      "inference_wall_s_per_structure": test_wall / n_test, "inference_passes_per_structure": int(passes)}
        if pooled:
            m = len(members)
            cost["lora"] = {"train_wall_s_per_seed": cost[name]["train_wall_s_per_seed"] / m,
                            "train_passes_per_seed": cost[name]["train_passes_per_seed"] // m,
                            "inference_wall_s_per_structure": cost[name]["inference_wall_s_per_structure"] / m,
                            "inference_passes_per_structure": 1}

    # A sampling method's seeds pooled as one model's independently trained members (TrainConfig.members,
    # docs/method.md §7; issue 45): S draws of each, the members' noise variances averaged; nothing trains anew.
    for name, source in profile.get("pooled_members", {}).items():
        per_seed = draws_by_method[source]
        noise = [aleatoric_by_set(m, {s: d[s].mean(0) for s in sets}, frozen, counts) for m, d in per_seed]
        realised[name] = Realised(
            {s: study.MethodRuns(name, np.concatenate([d[s] for _, d in per_seed]),
                                 np.full((sum(len(d[s]) for _, d in per_seed), len(truth[s])), np.nan), pooled=True,
                                 aleatoric=np.sqrt(np.mean([n[s] ** 2 for n in noise], axis=0))[None]) for s in sets},
            [float(np.sqrt(np.mean([m.noise_std_ev ** 2 for m, _ in per_seed])))])
        m = len(per_seed)
        cost[name] = {key: value * m for key, value in cost[source].items()}  # one model of m members

    # Laplace-LoRA: post hoc on each LoRA seed (an ensemble member).
    ensemble_folder = folders["lora-ensemble"][0]
    ensemble_model = load_model(ensemble_folder)
    laplace_runs = []
    for member in range(len(ensemble_model.members)):
        noise = json.loads((ensemble_folder / "members" / str(member) / "noise.json").read_text())["noise_std_ev"]
        laplace_runs.append(cached(run_dir / "predictions" / f"laplace-lora-member{member}.npz",
                                   lambda: laplace_predictions(ensemble_model, member, parts["train"], sets, noise_std_ev=noise,
                                                               hessian_structure=profile["laplace"]["hessian_structure"]),
                                   made_by=made_by[ensemble_folder]))
    realised["laplace-lora"] = Realised(
        {s: study.MethodRuns("laplace-lora", np.stack([r[f"{s}_mean"] for r in laplace_runs]),
                             np.stack([r[f"{s}_std"] for r in laplace_runs]),
                             aleatoric=np.stack([ensemble_model.aleatoric_std(frozen[s], r[f"{s}_mean"], counts[s])
                                                 for r in laplace_runs])) for s in sets},
        realised["lora"].noise_std_ev)
    cost["laplace-lora"] = {**cost["lora"], "laplace_fit_wall_s_per_seed": float(np.mean([r["fit_wall_s"] for r in laplace_runs])),
                            "inference_wall_s_per_structure": cost["lora"]["inference_wall_s_per_structure"]
                            + float(np.mean([r["test_wall_s"] for r in laplace_runs])) / n_test,
                            "prior_precision": [float(r["prior_precision"]) for r in laplace_runs]}

    if profile.get("recalibration"):  # the release's recalibration of the total std, every method alike
        train_distance = load_model(folders["balora"][0]).embedding_distance  # one training part for all
        family = {name: metal_family(counts[name]) for name in sets}
        distance = {name: train_distance.score(frozen[name]) for name in sets}
        realised = {m: recalibrated(r, truth, family=family, distance=distance, settings=profile["recalibration"])
                    for m, r in realised.items()}

    # Step 3: claim 2's draws: S_max samples on the test split from seed 0 of each sampling method
    # (nested: the curve takes the first S; the split halves give the std's reliability).
    sweep_draws = {}
    for name in profile["sweep_methods"]:
        model = load_model(folders[name][0])
        sweep_draws[name] = cached(
            run_dir / "predictions" / f"{folders[name][0].name}-sweep-S{max(sizes)}.npz",
            lambda: {"test": model.predict_draws(sets["test"], n_samples=max(sizes), seed=1, progress=True,
                                                 progress_label=f"{folders[name][0].name} on test (claim 2)")},
            made_by=made_by[folders[name][0]])["test"]

    # Step 4: scores. Every CI resamples seeds and structures (docs/method.md §12).
    rng = np.random.default_rng(profile["seed"])
    n_boot = profile["bootstrap"]
    order = ["full", "lora", "lora-ensemble", "laplace-lora", "lora-mcdropout", "balora-constant-alpha",
             *profile.get("pooled_members", {}), "balora"]
    order = [m for m in order if m in realised]
    uncertain = [m for m in order if realised[m].runs["test"].has_std]
    hits = {m: calibrated(realised[m], truth) for m in order}
    metrics: dict[str, Any] = {"table": {}, "shift": {}}
    for m in tqdm(order, desc="scoring (bootstrap)", unit="method"):
        metrics["table"][m] = method_table(realised[m].runs["test"], hits[m]["test"], truth["test"], rng, n_boot,
                                           uncertainty=m in uncertain)
        metrics["table"][m]["cost"] = cost[m]
        metrics["table"][m]["val_spearman"] = (study.score(study.spearman, realised[m].runs["val"], truth["val"], rng, n_boot)
                                               if m in uncertain else None)
    mean_predictor = float(parts["train"][2].mean())
    metrics["mean_predictor_mae_ev"] = um.mae(np.full_like(truth["test"], mean_predictor), truth["test"])
    peers = [realised[m].runs["test"] for m in uncertain if m != "balora"]
    balora = realised["balora"].runs["test"]
    logger.info("claims: bootstrap over seeds and structures (%d resamples)", n_boot)
    claim1 = study.claim_1(balora, peers, truth["test"], rng, n_boot)
    ensemble_peer = "lora-ensemble"
    bayesian = [m for m in profile["bayesian_peers"] if m in uncertain]
    best = max(bayesian, key=lambda m: metrics["table"][m]["val_spearman"]["value"])
    sweeps = {name: study.sweep(name, sweep_draws[name], truth["test"], sizes, n_boot, profile["seed"]) for name in sweep_draws}
    control = profile["sweep_control"]
    rise = study.rise_difference(sweep_draws["balora"], sweep_draws[control], truth["test"], sizes, n_boot, profile["seed"])
    metrics["claims"] = {
        "claim_1_correlation_vs_ensemble": {
            "statement": "BaLoRA's std correlates with |error| more strongly than the LoRA ensemble's spread (Spearman)",
            **claim1[ensemble_peer], **claim_1_non_inferiority(profile, claim1[ensemble_peer], metrics["table"])},
        "claim_2_improves_with_samples": study.claim_2(sweeps["balora"], sweeps[control], rise),
        "claim_3_accuracy": study.claim_3(balora, realised["lora"].runs["test"], realised["full"].runs["test"], truth["test"],
                                          margin_ev=profile["non_inferiority_margin_ev"], rng=rng, n_boot=n_boot),
        "claim_4_vs_best_bayesian_lora_peer": {
            "statement": f"BaLoRA's std correlates with |error| more strongly than the best Bayesian-LoRA peer's "
                         f"(chosen on validation ρ among {', '.join(bayesian)}: {best})",
            "peer": best, **claim1[best]},
    }
    metrics["claim_1_all_peers"] = claim1
    metrics["sweeps"] = sweeps
    metrics["ensemble_size_sweep"] = study.ensemble_size_sweep(realised["lora-ensemble"].runs["test"].means, truth["test"])
    for name in tqdm(list(shifts), desc="scoring the shift sets (bootstrap)", unit="set"):
        key = f"shift_{name}"
        shift_rows = {m: method_table(realised[m].runs[key], hits[m][key], truth[key], rng, n_boot, uncertainty=m in uncertain)
                      for m in order}
        shift_claim = study.claim_1(realised["balora"].runs[key], [realised[m].runs[key] for m in uncertain if m != "balora"],
                                    truth[key], rng, n_boot)
        # the std a user gets (total, recalibrated as released): BaLoRA's against every other method's
        total_claim = study.claim_1(realised["balora"].runs[key].total(),
                                    [realised[m].runs[key].total() for m in order if m != "balora"], truth[key], rng, n_boot)
        metrics["shift"][name] = {"n": len(truth[key]), "table": shift_rows, "claim_1": shift_claim,
                                  "claim_1_total": total_claim}
        # each pooled-members model's total std against the ensemble's (issue 45: does it close the gap?)
        metrics["shift"][name]["members_total_vs_ensemble"] = {
            members: study.claim_1(realised[members].runs[key].total(), [realised["lora-ensemble"].runs[key].total()],
                                   truth[key], rng, n_boot)["lora-ensemble"]
            for members in profile.get("pooled_members", {})}

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    metrics["setup"] = {
        "profile": args.profile, "backbone": profile["backbone"], "n_train": n_train, "n_val": len(truth["val"]),
        "n_calibration": len(truth["calibration"]), "n_test": n_test,
        "n_shift": {name: len(value[2]) for name, value in shifts.items()},
        "subset_note": profile["subset_note"], "finished": stamp, "head": head,
        "seeds": {name: spec.get("seeds", [profile["seed"]]) for name, spec in profile["methods"].items()},
        "split_sha256": split.fingerprint(), "git_commit": code_commit, "claim_samples": claim_s,
        "sample_sizes": sizes, "bootstrap": n_boot, "wall_s": time.perf_counter() - started,
        "config": profile, "versions": package_versions(), "labels_sha256": dataset.labels_sha256,
        "data_source": str(dataset.source),
    }
    report_dir = results / f"{stamp}-{args.profile}"
    (report_dir / "predictions").mkdir(parents=True, exist_ok=True)
    for m in order:  # ids and predictions only; labels stay out of published folders (see publish)
        first = realised[m].runs["test"].first()
        pd.DataFrame({"id": parts["test"][0], "mean_ev": first.mean, "std_ev": first.std}).to_csv(
            report_dir / "predictions" / f"{m}.csv", index=False)
    shutil.copy(run_dir / "split.json", report_dir / "split.json")
    write_text_atomic(report_dir / "config.yaml", yaml.safe_dump(profile))
    figures.rho_vs_samples(sweeps, metrics["ensemble_size_sweep"], report_dir / "rho_vs_S.png")
    firsts = {m: realised[m].runs["test"].first() for m in order}
    for m in ("balora", "lora-ensemble"):
        figures.parity(firsts[m], truth["test"], report_dir / f"parity_{m}.png")
    figures.error_retention([firsts[m] for m in uncertain], truth["test"], report_dir / "error_retention.png")
    figures.cost_bars(cost, report_dir / "cost.png")
    write_text_atomic(report_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    write_text_atomic(report_dir / "report.md", render_report(metrics))
    if args.publish or (args.publish is None and args.profile == "cpu"):
        publish(report_dir, metrics)
    logger.info("report: %s (%.0f s)", report_dir / "report.md", metrics["setup"]["wall_s"])
    print(report_dir)
    return report_dir


def study_spread(draws: np.ndarray) -> np.ndarray:
    """Std over draws [D, n] -> [n]; NaN for a single draw (deterministic methods)."""
    return draws.std(0, ddof=1) if draws.shape[0] > 1 else np.full(draws.shape[1], np.nan)


if __name__ == "__main__":
    main()
