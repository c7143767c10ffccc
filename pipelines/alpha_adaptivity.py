"""Does BaLoRA's input-dependent noise level help? The design study's winner against the same
objective with alpha(x) cut off from x, each over several training seeds (docs/method.md §10).

Declared in pipelines/configs/alpha_adaptivity_<profile>.yaml before the run: the benchmark
profile (split, shifted test sets, training settings), the seeds, the references, and where the
winner comes from (the design study's metrics). Both arms train and predict exactly as the study
does (the same run folders, reused by a later full study); the paired ρ difference uses the study's
hierarchical bootstrap over seeds and structures, in distribution and on both shifted test sets.

    python -m pipelines.alpha_adaptivity [--profile cpu-large] [--data PATH] [--results DIR] [--no-publish]

Runs and cached draws live in results/runs/<benchmark profile>/, so a rerun resumes; the report goes
to results/<timestamp>-alpha-adaptivity-<profile>/ and is published as
docs/results/<benchmark profile>/alpha_adaptivity.md, with its verdict in that folder's report.md.
"""

from __future__ import annotations

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

from mofbalora.adapters.model import ALPHA_NET_NAME, adapter_state
from mofbalora.data.io import write_text_atomic
from mofbalora.featurise.base import element_counts
from mofbalora.model_folder import draws_identity_sha256, package_versions
from mofbalora.predict import load_model
from pipelines.analysis import ablation, study
from pipelines.analysis.report import _ci, _table
from pipelines.bandgap_benchmark import (
    CONFIG_DIR,
    aleatoric_by_set,
    base_config,
    cached,
    frozen_by_set,
    load_profile,
    method_draws,
    pipeline_parser,
    run_method,
    shift_sets,
    study_data,
    study_spread,
)
from pipelines.provenance import git_commit, quiet_logging

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("alpha_adaptivity")
SECTION_START, SECTION_END = "<!-- alpha-adaptivity: start -->", "<!-- alpha-adaptivity: end -->"


def load_design(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"alpha_adaptivity_{name}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown profile {name!r}: no {path}")
    return yaml.safe_load(path.read_text())


def winner_of(design: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The design study's winner: (name, adapter fields, training fields)."""
    metrics = json.loads((ROOT / design["winner_from"]).read_text())
    name = metrics["winner"]
    return name, metrics["winner_adapter"], metrics["variants"][name].get("train", {})


def arms(design: dict[str, Any], profile: dict[str, Any], *,
         references_only: bool = False) -> dict[str, list[tuple[str, Any]]]:
    """Every method's (run name, training config) per seed: the two arms and the references."""
    head = profile["head"]
    out: dict[str, list[tuple[str, Any]]] = {}
    name, adapter, train = winner_of(design) if not references_only else ("", {}, {})
    # the adaptive arm reads z(x) even if the winner was the constant-alpha variant
    inputs = (("balora", "frozen_embedding"), ("balora-constant-alpha", "constant"))
    for arm, alpha_input in () if references_only else inputs:
        extra = {"alpha_net_input": alpha_input}
        out[arm] = [(f"{arm}-{name.replace('+alpha-constant', '')}-seed{seed}",
                     base_config(profile, "balora", adapter={**adapter, **extra}, head=head, seed=seed, **train))
                    for seed in design["seeds"]]
    for reference, spec in design["references"].items():
        extra = {key: value for key, value in spec.items() if key not in ("method", "seeds")}
        seeds = spec.get("seeds", [profile["seed"]])
        out[reference] = [(reference if spec["method"] == "lora-ensemble" else f"{reference}-seed{seed}",
                           base_config(profile, spec["method"], head=head, seed=seed, **extra)) for seed in seeds]
    return out


def method_runs(name: str, models: list[Any], draws: list[dict[str, np.ndarray]], sets: list[str],
                frozen: dict[str, np.ndarray], counts: dict[str, np.ndarray]) -> dict[str, study.MethodRuns]:
    """The study's MethodRuns per set (an ensemble's members pooled), with its data noise σ_n(x)
    (``frozen``: z(x), ``counts``: element counts, of every set)."""
    if name == "lora-ensemble":
        model, members = models[0], draws[0]
        noise = aleatoric_by_set(model, {s: members[s].mean(0) for s in sets}, frozen, counts)
        return {s: study.MethodRuns(name, members[s], np.full_like(members[s], np.nan), pooled=True,
                                    aleatoric=noise[s][None]) for s in sets}
    noise = [aleatoric_by_set(m, {s: d[s].mean(0) for s in sets}, frozen, counts) for m, d in zip(models, draws)]
    return {s: study.MethodRuns(name, np.stack([d[s].mean(0) for d in draws]), np.stack([study_spread(d[s]) for d in draws]),
                                aleatoric=np.stack([n[s] for n in noise])) for s in sets}


def alpha_over_c(model: Any, frozen: np.ndarray) -> dict[str, dict[str, float]]:
    member = model.members[0]
    state = adapter_state(member)
    with torch.no_grad():
        alpha = getattr(member, ALPHA_NET_NAME)(torch.as_tensor(frozen, dtype=torch.float32)).numpy()
    return ablation.alpha_quantiles(alpha / state.config.prior_c, state.target_names)


def reading(diff: dict[str, float]) -> str:
    """The verdict on input adaptivity from the paired ρ difference (adaptive − constant)."""
    if diff["ci_low"] > 0:
        return "helps"
    if diff["ci_high"] < 0:
        return "hurts"
    return "makes no detectable difference"


def render(results: dict[str, Any]) -> str:
    setup, design = results["setup"], results["design"]
    lines = [
        f"# Does input adaptivity help? BaLoRA's α(x) against a constant α (`{setup['profile']}` split)", "",
        f"Winner of the design study: `{results['winner']}` = {results['winner_adapter']}"
        + (f", training {results['winner_train']}" if results["winner_train"] else "")
        + f"; constant α is the same with `alpha_net_input: constant`. Seeds {design['seeds']} per arm; "
        f"{setup['n_train']} training structures; S = {setup['samples']} draws per structure. CIs resample the "
        f"seeds, then the structures ({setup['bootstrap']} resamples; docs/method.md §12). Git "
        f"`{setup['git_commit']}`, finished {setup['finished']}, {setup['wall_s'] / 60:.0f} min. Reproduce: "
        f"`python -m pipelines.alpha_adaptivity --profile {setup['profile']}`.", "",
        "## Verdict (declared reading: the paired ρ(epistemic std, |error|) difference, adaptive − constant; "
        "CI above 0 helps, below 0 hurts)", "",
    ]
    for name, entry in results["sets"].items():
        diff = entry["spearman_difference_adaptive_minus_constant"]
        lines.append(f"- **{name}** (n = {entry['n']}): input adaptivity **{entry['verdict']}**: "
                     f"Δρ = {_ci(diff)}; ρ(total std) difference {_ci(entry['total_spearman_difference_adaptive_minus_constant'])}; "
                     f"MAE difference {_ci(entry['mae_difference_adaptive_minus_constant_ev'])} eV.")
    lines += ["", "## Every method, per set", ""]
    rows = []
    for name, entry in results["sets"].items():
        for method, scores in entry["methods"].items():
            rows.append([name, method, _ci(scores["mae_ev"]), _ci(scores["spearman"]),
                         _ci(scores.get("spearman_total")),
                         ", ".join(f"{v:.3f}" for v in scores["spearman"]["per_seed"])])
    lines.append(_table(["set", "method", "MAE (eV)", "ρ(epistemic std, \\|err\\|)", "ρ(total std, \\|err\\|)",
                         "ρ per seed"], rows))
    lines += ["", "## α(x)/c per adapted layer (winner, seed 0, test structures)", ""]
    lines.append(_table(["layer", "q05", "q50", "q95"],
                        [[f"`{layer}`", f"{q['q05']:.3f}", f"{q['q50']:.3f}", f"{q['q95']:.3f}"]
                         for layer, q in results["alpha_over_c_test"].items()]))
    return "\n".join(lines) + "\n"


def publish_section(report_md: Path, results: dict[str, Any]) -> None:
    """Put the verdict into the profile's study report between markers (replacing an older one)."""
    summary = [SECTION_START, "## Input adaptivity: α(x) against a constant α (issue 21)", "",
               f"From `pipelines/alpha_adaptivity.py` ([alpha_adaptivity.md](alpha_adaptivity.md)); winner of the "
               f"leak-free design study `{results['winner']}`, {len(results['design']['seeds'])} seeds per arm.", ""]
    for name, entry in results["sets"].items():
        summary.append(f"- {name}: input adaptivity **{entry['verdict']}**, Δρ = "
                       f"{_ci(entry['spearman_difference_adaptive_minus_constant'])}.")
    summary += ["", SECTION_END]
    text = report_md.read_text() if report_md.exists() else ""
    if SECTION_START in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + "\n".join(summary) + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(summary) + "\n"
    write_text_atomic(report_md, text)


def main(argv: list[str] | None = None) -> Path:
    parser = pipeline_parser(__doc__, profiles="cpu-large (default)", publish_to="docs/results/<benchmark profile>/")
    parser.add_argument("--references-only", action="store_true",
                        help="train and predict the references only (they do not depend on the winner), then stop")
    args = parser.parse_args(argv)
    quiet_logging()
    started = time.perf_counter()
    code_commit = git_commit()
    name = args.profile if args.profile != "cpu" else "cpu-large"  # the parser's shared default is cpu
    design = load_design(name)
    profile = load_profile(design["benchmark_profile"])
    results_root = Path(args.results)
    run_dir = results_root / "runs" / design["benchmark_profile"]
    run_dir.mkdir(parents=True, exist_ok=True)
    report_dir = results_root / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-alpha-adaptivity-{name}"
    report_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report_dir / "config.yaml", yaml.safe_dump({"design": design, "benchmark_profile": profile}))

    dataset, split, parts = study_data(profile, args.data, run_dir)
    shifts = shift_sets(profile, dataset, run_dir)
    sets = {"test": parts["test"][1], **{f"shift_{n}": v[1] for n, v in shifts.items()}}
    truth = {"test": parts["test"][2], **{f"shift_{n}": v[2] for n, v in shifts.items()}}
    frozen = cached(run_dir / "predictions" / "alpha-adaptivity-frozen.npz",
                    lambda: frozen_by_set(profile["backbone"], sets))
    counts = {name: element_counts(part) for name, part in sets.items()}
    samples = profile["claim_samples"]
    runs: dict[str, dict[str, study.MethodRuns]] = {}
    winner_seed0 = None
    for method, specs in arms(design, profile, references_only=args.references_only).items():
        models, draws = [], []
        for run_name, config in specs:
            folder = run_method(run_name, config, data=args.data, run_dir=run_dir, split=split, progress=True)
            model = load_model(folder)
            models.append(model)
            draws.append(cached(run_dir / "predictions" / f"alpha-adaptivity-{folder.name}-S{samples}.npz",
                                lambda: method_draws(model, sets, samples=samples, label=folder.name),
                                made_by=draws_identity_sha256(folder)))
        runs[method] = method_runs(method, models, draws, list(sets), frozen, counts)
        if method == "balora":
            winner_seed0 = models[0]
    if args.references_only:
        logger.info("references trained and predicted; rerun without --references-only for the arms")
        return report_dir
    rng = np.random.default_rng(profile["seed"])
    n_boot = profile["bootstrap"]
    per_set: dict[str, Any] = {}
    for set_name in sets:
        y = truth[set_name]
        adaptive, constant = runs["balora"][set_name], runs["balora-constant-alpha"][set_name]
        diff = study.paired_difference(study.spearman, adaptive, constant, y, rng, n_boot)
        per_set[set_name] = {
            "n": len(y), "verdict": reading(diff), "spearman_difference_adaptive_minus_constant": diff,
            "total_spearman_difference_adaptive_minus_constant": study.paired_difference(
                study.spearman, adaptive.total(), constant.total(), y, rng, n_boot),
            "mae_difference_adaptive_minus_constant_ev": study.paired_difference(study.mae, adaptive, constant, y, rng, n_boot),
            "methods": {method: {"mae_ev": study.score(study.mae, r[set_name], y, rng, n_boot),
                                 "spearman": study.score(study.spearman, r[set_name], y, rng, n_boot),
                                 "spearman_total": study.score(study.spearman, r[set_name].total(), y, rng, n_boot)}
                        for method, r in runs.items()},
        }
    winner, adapter, train = winner_of(design)
    results = {
        "design": design, "winner": winner, "winner_adapter": adapter, "winner_train": train, "sets": per_set,
        "alpha_over_c_test": alpha_over_c(winner_seed0, frozen["test"]),
        "setup": {"profile": name, "n_train": len(parts["train"][2]), "samples": samples, "bootstrap": n_boot,
                  "split_sha256": split.fingerprint(), "git_commit": code_commit, "versions": package_versions(),
                  "labels_sha256": dataset.labels_sha256, "wall_s": time.perf_counter() - started,
                  "finished": f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"},
    }
    write_text_atomic(report_dir / "alpha_adaptivity_metrics.json", json.dumps(results, indent=1, default=float))
    write_text_atomic(report_dir / "alpha_adaptivity.md", render(results))
    if args.publish or (args.publish is None and name.startswith("cpu")):
        target = ROOT / "docs" / "results" / design["benchmark_profile"]
        target.mkdir(parents=True, exist_ok=True)
        for file in ("alpha_adaptivity.md", "alpha_adaptivity_metrics.json"):
            shutil.copy(report_dir / file, target / file)
        publish_section(target / "report.md", results)
    logger.info("report %s", report_dir / "alpha_adaptivity.md")
    print(report_dir)
    return report_dir


if __name__ == "__main__":
    main()
