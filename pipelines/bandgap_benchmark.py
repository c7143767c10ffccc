"""The band-gap uncertainty study: full fine-tuning, LoRA, a LoRA ensemble and BaLoRA on one split.

Steps: choose the regression head on validation (LoRA, pretrained vs residual head); fit every
method with it; choose BaLoRA's KL weight on validation; calibrate each method on the held-out
calibration split; draw test predictions once; score accuracy, uncertainty (epistemic std, for
the paper's claims) and calibration (raw, recalibrated, conformal), the prediction floor and the
OOD flags.

    python pipelines/bandgap_benchmark.py --profile cpu|gpu|smoke [--fresh] [--data PATH]

Method runs and predictions live in results/runs/<profile>/ and are reused by a rerun
(--fresh redoes everything); each run writes its report to results/<timestamp>-<profile>/.
The cpu profile's report is also published to docs/results/ and the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofbalora.analysis import figures, study  # noqa: E402
from mofbalora.analysis.report import accuracy_table, coverage_summary, render_report  # noqa: E402
from mofbalora.calibrate import fit_calibrated  # noqa: E402
from mofbalora.data.datasets import load_labelled_dataset  # noqa: E402
from mofbalora.data.io import write_text_atomic  # noqa: E402
from mofbalora.data.splits import Split, make_split  # noqa: E402
from mofbalora.featurise.base import sample_num_atoms  # noqa: E402
from mofbalora.model_folder import member_adapter_config, package_versions  # noqa: E402
from mofbalora.predict import BandgapModel, load_model  # noqa: E402
from mofbalora.training.config import ADAPTER_METHODS, TrainConfig  # noqa: E402
from mofbalora.training.fit import FolderMismatchError, prepare_data, select_subset  # noqa: E402
from mofbalora.uncertainty import metrics as um  # noqa: E402
from mofbalora.uncertainty.intervals import gaussian_interval  # noqa: E402
from mofbalora.uncertainty.ood import ood_reasons  # noqa: E402

logger = logging.getLogger("bandgap_benchmark")
CONFIG_DIR = ROOT / "pipelines" / "configs"


def load_profile(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"benchmark_{name}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown profile {name!r}: no {path}")
    return yaml.safe_load(path.read_text())


def base_config(profile: dict[str, Any], method: str, **extra: Any) -> TrainConfig:
    values = {**profile["train"], "backbone": profile["backbone"], "method": method, "adapter": dict(profile["adapter"]),
              "likelihood": profile["likelihood"], "head": profile["heads"][0],
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


def study_data(profile: dict[str, Any], data: str | None, run_dir: Path) -> tuple[Any, Split, dict[str, Any]]:
    """The profile's dataset, its split (saved in run_dir/split.json and reused) and the featurised
    parts ``{part: (ids, samples, gaps_ev)}``."""
    dataset = load_labelled_dataset(data)
    subset = select_subset(dataset, base_config(profile, "lora"))
    split_path = run_dir / "split.json"
    split = Split.load(split_path) if split_path.exists() else make_split(
        list(subset["id"]), subset[dataset.target].to_numpy(), fractions=tuple(profile["split"]["fractions"]),
        seed=profile["split"]["seed"], method=profile["split"]["method"])
    split.save(split_path)
    parts = prepare_data(base_config(profile, "lora"), dataset, run_dir, progress=False, split=split).parts
    return dataset, split, parts


def run_method(name: str, config: TrainConfig, *, data: Any, run_dir: Path, split: Split) -> Path:
    """Fit and calibrate one method unless a finished run with the same training config exists
    (under this name or another: the study reuses the design study's runs); record its training
    wall time.

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
            return folder
    if out in finished:
        raise FolderMismatchError(f"{out}: holds a finished run with another training config; remove it or rename {name}")
    timing_path = out / "timing.json"
    logger.info("fitting %s", name)
    start = time.perf_counter()
    result = fit_calibrated(config, data=data, out_dir=out, progress=False, split=split)
    if result is None:
        raise RuntimeError(f"{name}: training did not finish")
    previous = json.loads(timing_path.read_text())["train_wall_s"] if timing_path.exists() else 0.0
    write_text_atomic(timing_path, json.dumps({"train_wall_s": previous + time.perf_counter() - start}))
    return out


def epochs_run(model_dir: Path) -> list[int]:
    counts = []
    for logs in sorted(model_dir.glob("members/*/logs/version_0/metrics.csv")):
        table = pd.read_csv(logs)
        counts.append(int(table.dropna(subset=["train_loss"])["epoch"].max()) + 1)
    return counts


def predictions(name: str, model_dir: Path, parts: dict[str, Any], run_dir: Path, *, samples: int,
                seeds: list[int], calibration_samples: int) -> dict[str, Any]:
    """Draws on val, calibration and test, plus test embedding distances, cached in
    run_dir/predictions/<name>.npz (name: the model folder's), with the test inference wall time."""
    cache = run_dir / "predictions" / f"{name}.npz"
    if cache.exists():
        loaded = np.load(cache)
        return {key: loaded[key] for key in loaded.files}
    model = load_model(model_dir)
    out: dict[str, Any] = {}
    logger.info("predicting with %s", name)
    start = time.perf_counter()
    if model.method == "balora":  # the study's longest phase: a progress bar per seed
        for seed in seeds:
            out[f"test_seed{seed}"] = model.predict_draws(parts["test"][1], n_samples=samples, seed=seed, progress=True)
    else:
        out["test"] = model.predict_draws(parts["test"][1])
    out["inference_wall_s"] = np.array(time.perf_counter() - start)
    for part in ("val", "calibration"):
        out[part] = model.predict_draws(parts[part][1], n_samples=calibration_samples, seed=seeds[0], progress=True)
    out["test_embedding_distance"] = model.embedding_distance.score(model.frozen_embeddings(parts["test"][1]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def choose_head(head_runs: dict[str, Path], val_samples: list[Any], val_truth: np.ndarray, *,
                max_floor_share: float) -> tuple[str, dict[str, Any]]:
    """The head with the lowest LoRA validation MAE among those whose validation predictions do not
    pile up at their minimum (share within 0.02 eV of it <= ``max_floor_share``); rule declared in
    the profile before the run. Falls back to the lowest MAE if no head qualifies."""
    mae, floor = {}, {}
    for head, folder in head_runs.items():
        mean = load_model(folder).predict_samples(val_samples)[0]
        mae[head] = float(np.mean(np.abs(mean - val_truth)))
        floor[head] = um.floor_statistics(mean, val_truth)["share_within_tolerance_of_min"]
    eligible = [h for h in head_runs if floor[h] <= max_floor_share] or list(head_runs)
    chosen = min(eligible, key=mae.get)
    return chosen, {"val_mae_ev": mae, "val_floor_share": floor, "max_floor_share": max_floor_share,
                    "eligible": eligible, "chosen": chosen}


def spread(draws: np.ndarray) -> np.ndarray:
    """Std over draws [D, n] -> [n]; NaN for a single draw (deterministic methods)."""
    return draws.std(0, ddof=1) if draws.shape[0] > 1 else np.full(draws.shape[1], np.nan)


def calibration_comparison(model: BandgapModel, test_draws: np.ndarray, cal_draws: np.ndarray,
                           truth: np.ndarray, cal_truth: np.ndarray) -> dict[str, Any]:
    """Test coverage at 68/95% of four interval kinds, side by side, with mean 95% widths (eV).

    raw_epistemic: Gaussian on the epistemic std alone (what the paper's std claims);
    raw_total: Gaussian on sqrt(epistemic² + learned noise²); recalibrated: raw_total times one
    factor fitted on the calibration split (uncertainty-toolbox, diagnostic); conformal: the
    model's stored crepes calibrator. ``test_draws`` must use the calibration's S.
    """
    mean, epistemic = test_draws.mean(0), spread(test_draws)
    total = model.total_std(np.nan_to_num(epistemic, nan=0.0))
    cal_total = model.total_std(np.nan_to_num(spread(cal_draws), nan=0.0))
    kinds: dict[str, Any] = {}
    if np.isfinite(epistemic).all():
        kinds["raw_epistemic"] = lambda level: gaussian_interval(mean, epistemic, coverage=level)
    if (total > 0).all():
        kinds["raw_total"] = lambda level: gaussian_interval(mean, total, coverage=level)
        recalibrator = um.ScalarVarianceRecalibrator().fit(cal_draws.mean(0), cal_total, cal_truth)
        kinds["recalibrated"] = lambda level: gaussian_interval(mean, recalibrator.predict(total), coverage=level)
    sigma = total if np.isfinite(epistemic).all() else np.full_like(mean, np.nan)
    kinds["conformal"] = lambda level: model.calibrator.interval(mean, sigma, confidence=level)
    out: dict[str, Any] = {}
    for kind, bounds in kinds.items():
        low68, high68 = bounds(0.68)
        low95, high95 = bounds(0.95)
        out[kind] = {"coverage_68": um.interval_share(low68, high68, truth),
                     "coverage_95": um.interval_share(low95, high95, truth),
                     "mean_width_95_ev": float(np.mean(high95 - low95))}
    if "recalibrated" in kinds:
        out["recalibration_scale"] = recalibrator.scale_
    out["noise_std_ev"] = model.noise_std_ev
    return out


def ood_summary(model: BandgapModel, test_draws: np.ndarray, distance: np.ndarray, n_atoms: np.ndarray,
                truth: np.ndarray) -> dict[str, Any]:
    """Flag rate on the test split and MAE of flagged vs unflagged structures, per flag kind."""
    mean, epistemic = test_draws.mean(0), spread(test_draws)
    reasons = ood_reasons(epistemic_std_ev=epistemic, embedding_distance=distance, n_atoms=n_atoms,
                          thresholds=model.ood_thresholds)
    errors = np.abs(mean - truth)
    out: dict[str, Any] = {"thresholds": model.ood_thresholds}
    for kind, needle in (("any", ""), ("epistemic_std", "epistemic std"), ("embedding", "embedding far")):
        flagged = np.array([bool(r) and needle in r for r in reasons])
        out[kind] = {"flag_rate": float(flagged.mean()), "n_flagged": int(flagged.sum()),
                     "mae_flagged_ev": float(errors[flagged].mean()) if flagged.any() else None,
                     "mae_unflagged_ev": float(errors[~flagged].mean()) if (~flagged).any() else None}
    return out


def method_predictions(name: str, draws: np.ndarray, val_draws: np.ndarray) -> study.MethodPredictions:
    spread = lambda d: d.std(0, ddof=1) if d.shape[0] > 1 else np.full(d.shape[1], np.nan)  # noqa: E731
    return study.MethodPredictions(name, draws.mean(0), spread(draws), val_draws.mean(0), spread(val_draws))


def git_commit() -> str:
    """The commit of the code producing the report, '+dirty' when the tree has changes."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def publish(report_dir: Path, metrics: dict[str, Any]) -> None:
    """Copy the report to docs/results/ and refresh the README's generated section."""
    target = ROOT / "docs" / "results"  # also holds the design study's ablation.* files: overwrite, never wipe
    shutil.copytree(report_dir, target, ignore=shutil.ignore_patterns("predictions"), dirs_exist_ok=True)
    readme = ROOT / "README.md"
    if not readme.exists():
        return
    claims = metrics["claims"]
    verdicts = "\n".join(f"- {c['statement']}: **{c['verdict']}**" for c in claims.values())
    block = (f"<!-- results:start (generated by pipelines/bandgap_benchmark.py; do not edit) -->\n"
             f"Latest `{metrics['setup']['profile']}` run ({metrics['setup']['finished']}, "
             f"{metrics['setup']['n_test']} test structures, backbone {metrics['setup']['backbone']}):\n\n"
             f"{verdicts}\n\n{accuracy_table(metrics)}\n\nIntervals on the test split (PBE gaps; calibrated on a held-out "
             f"calibration split):\n\n{coverage_summary(metrics)}\n\n![rho vs S](docs/results/rho_vs_S.png)\n\n"
             f"Full report: [docs/results/report.md](docs/results/report.md)\n<!-- results:end -->")
    text = readme.read_text()
    text = re.sub(r"<!-- results:start.*?<!-- results:end -->", lambda _: block, text, flags=re.S)
    write_text_atomic(readme, text)


def rerender(report_dir: Path, *, publish_it: bool) -> Path:
    """report.md again from metrics.json (no number recomputed), e.g. after a change of wording."""
    metrics = json.loads((report_dir / "metrics.json").read_text())
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


def quiet_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> Path:
    parser = pipeline_parser(__doc__, profiles="cpu (default), gpu or smoke", publish_to="docs/results and the README")
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
    split_path = run_dir / "split.json"

    # Step 1: the regression head, chosen by LoRA's validation MAE (docs/method.md §8).
    truth, val_truth, cal_truth = parts["test"][2], parts["val"][2], parts["calibration"][2]
    head_runs = {head: run_method(f"lora-head-{head}", base_config(profile, "lora", head=head), data=args.data,
                                  run_dir=run_dir, split=split) for head in profile["heads"]}
    head, head_selection = choose_head(head_runs, parts["val"][1], val_truth,
                                       max_floor_share=profile["head_max_floor_share"])
    head_val_mae = head_selection["val_mae_ev"]
    logger.info("head chosen on validation: %s (%s)", head, head_selection)

    # Step 2: every method with that head.
    model_dirs = {"full": run_method("full", base_config(profile, "full", lr=profile["full_lr"], head=head),
                                     data=args.data, run_dir=run_dir, split=split),
                  "lora": head_runs[head],
                  "lora-ensemble": run_method(f"lora-ensemble-head-{head}", base_config(profile, "lora-ensemble", head=head),
                                              data=args.data, run_dir=run_dir, split=split)}
    sizes, seeds = profile["sample_sizes"], list(range(profile["sampling_seeds"]))
    cal_samples = profile["train"]["calibration_samples"]

    # Step 3: BaLoRA in the configuration the design study chose on validation (docs/results/ablation.md).
    balora = profile["balora"]
    chosen = f"balora-{balora['variant']}-head-{head}"
    model_dirs["balora"] = run_method(chosen, base_config(profile, "balora", adapter=balora["adapter"], head=head),
                                      data=args.data, run_dir=run_dir, split=split)

    # Step 4: predictions, drawn once.
    raw = {name: predictions(folder.name, folder, parts, run_dir, samples=max(sizes),
                             seeds=seeds, calibration_samples=cal_samples)
           for name, folder in model_dirs.items()}
    before = predictions("lora-head-pretrained", head_runs["pretrained"], parts, run_dir, samples=max(sizes),
                         seeds=seeds, calibration_samples=cal_samples)
    members = raw["lora-ensemble"]["test"]
    balora_draws = [raw["balora"][f"test_seed{s}"] for s in seeds]
    tests = {"full": raw["full"]["test"], "lora": raw["lora"]["test"], "lora-ensemble": members,
             "balora": balora_draws[0]}
    preds = {name: study.MethodPredictions(name, draws.mean(0), spread(draws), raw[name]["val"].mean(0),
                                           spread(raw[name]["val"]))
             for name, draws in tests.items()}

    # Step 5: scores.
    rng = np.random.default_rng(profile["seed"])
    n_boot = profile["bootstrap"]
    train_ids = parts["train"][0]
    train_mean = float(parts["train"][2].mean())
    mean_predictor = study.MethodPredictions("mean predictor", np.full_like(truth, train_mean), np.full_like(truth, np.nan))
    metrics: dict[str, Any] = {"accuracy": {name: study.accuracy(p, truth, rng, n_boot)
                                            for name, p in {**preds, "mean predictor": mean_predictor}.items()}}
    metrics["uncertainty"] = {name: study.uncertainty(p, truth, val_truth, rng, n_boot)
                              for name, p in preds.items() if p.has_std}
    metrics["balora_sample_sweep"] = study.sample_size_sweep(balora_draws, truth, sizes)
    metrics["ensemble_size_sweep"] = study.ensemble_size_sweep(members, truth, rng, n_boot)
    metrics["claims"] = study.claims(balora=preds["balora"], balora_draws=balora_draws[0], ensemble=preds["lora-ensemble"],
                                     lora=preds["lora"], full=preds["full"], truth=truth,
                                     sweep=metrics["balora_sample_sweep"], rng=rng, n_boot=n_boot)
    loaded = {name: load_model(model_dirs[name]) for name in ("balora", "lora-ensemble", "lora")}
    calibration_draws = {"balora": balora_draws[0][:cal_samples], "lora-ensemble": members, "lora": raw["lora"]["test"]}
    metrics["calibration"] = {name: calibration_comparison(model, calibration_draws[name], raw[name]["calibration"],
                                                           truth, cal_truth) for name, model in loaded.items()}
    metrics["floor"] = {"before: lora, pretrained head": um.floor_statistics(before["test"].mean(0), truth),
                        **{name: um.floor_statistics(p.mean, truth) for name, p in preds.items()}}
    n_atoms = np.array([sample_num_atoms(sample) for sample in parts["test"][1]])
    metrics["ood"] = {name: ood_summary(model, calibration_draws[name], raw[name]["test_embedding_distance"], n_atoms,
                                        truth) for name, model in loaded.items()}
    metrics["head_selection"] = head_selection
    n_train, n_val, n_test = len(train_ids), len(val_truth), len(truth)
    timing = {n: json.loads((d / "timing.json").read_text())["train_wall_s"] for n, d in model_dirs.items()}
    lora_epochs = epochs_run(model_dirs["lora"])
    ensemble_epochs = epochs_run(model_dirs["lora-ensemble"])
    metrics["cost"] = {
        "full": {"training_runs": 1, "train_wall_s": timing["full"], "train_passes": epochs_run(model_dirs["full"])[0] * n_train,
                 "inference_wall_s": float(raw["full"]["inference_wall_s"]), "inference_passes_per_structure": 1},
        "lora": {"training_runs": 1, "train_wall_s": timing["lora"], "train_passes": lora_epochs[0] * n_train,
                 "inference_wall_s": float(raw["lora"]["inference_wall_s"]),
                 "inference_passes_per_structure": 1},
        "lora-ensemble": {"training_runs": len(ensemble_epochs), "train_wall_s": timing["lora-ensemble"],
                          "train_passes": sum(ensemble_epochs) * n_train,
                          "inference_wall_s": float(raw["lora-ensemble"]["inference_wall_s"]),
                          "inference_passes_per_structure": int(members.shape[0])},
        "balora": {"training_runs": 1, "train_wall_s": timing["balora"],
                   "train_passes": epochs_run(model_dirs["balora"])[0] * n_train + n_train + n_val,
                   "inference_wall_s": float(raw["balora"]["inference_wall_s"]) / len(seeds),
                   "inference_passes_per_structure": int(max(sizes)) + 1},
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    metrics["setup"] = {
        "profile": args.profile, "backbone": profile["backbone"], "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "subset_note": profile["subset_note"], "finished": stamp,
        "selection_note": f"head from {profile['heads']}: the lowest LoRA validation MAE among heads with at most "
                          f"{profile['head_max_floor_share']:.0%} of validation predictions within 0.02 eV of their minimum: "
                          f"{head} (MAE {', '.join(f'{k}: {v:.3f} eV' for k, v in head_val_mae.items())}; floor share "
                          f"{', '.join(f'{k}: {v:.3f}' for k, v in head_selection['val_floor_share'].items())}); "
                          f"BaLoRA: `{balora['variant']}` {balora['adapter']}, {balora['chosen_by']}",
        "n_calibration": len(cal_truth), "split_sha256": split.fingerprint(), "git_commit": code_commit,
        "sample_sizes": sizes, "sampling_seeds": seeds, "bootstrap": n_boot, "wall_s": time.perf_counter() - started,
        "config": profile, "versions": package_versions(), "labels_sha256": dataset.labels_sha256,
        "data_source": str(dataset.source),
    }
    report_dir = results / f"{stamp}-{args.profile}"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "predictions").mkdir(exist_ok=True)
    for name, p in preds.items():
        pd.DataFrame({"id": parts["test"][0], "truth": truth, "mean": p.mean, "std": p.std}).to_csv(
            report_dir / "predictions" / f"{name}.csv", index=False)
    shutil.copy(split_path, report_dir / "split.json")
    write_text_atomic(report_dir / "config.yaml", yaml.safe_dump(profile))
    figures.rho_vs_samples(metrics["balora_sample_sweep"], metrics["ensemble_size_sweep"], report_dir / "rho_vs_S.png")
    for name in ("balora", "lora-ensemble"):
        figures.parity(preds[name], truth, report_dir / f"parity_{name}.png")
    recalibrated = {name: loaded[name].total_std(spread(calibration_draws[name])) * metrics["calibration"][name]["recalibration_scale"]
                    for name in ("balora", "lora-ensemble")}
    figures.calibration([preds["balora"], preds["lora-ensemble"]], truth, recalibrated, report_dir / "calibration.png")
    figures.error_retention([preds["balora"], preds["lora-ensemble"]], truth, report_dir / "error_retention.png")
    figures.cost_bars(metrics["cost"], report_dir / "cost.png")
    write_text_atomic(report_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    write_text_atomic(report_dir / "report.md", render_report(metrics))
    if args.publish or (args.publish is None and args.profile == "cpu"):
        publish(report_dir, metrics)
    logger.info("report: %s (%.0f s)", report_dir / "report.md", metrics["setup"]["wall_s"])
    print(report_dir)
    return report_dir


if __name__ == "__main__":
    main()
