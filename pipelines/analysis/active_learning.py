"""The simulated campaign's statistics, figures and report (pipelines.active_learning; issue 46).

Rules, as declared in ``pipelines/configs/active_learning_cpu.yaml`` before the run:

- learning: per seed, the area under test MAE against labels (trapezoid over the fits, divided by
  the label range: the campaign's mean MAE), divided by the reference strategy's of the same seed;
  the mean over seeds with a 95% CI from resampling seeds (paired) and test structures;
- discovery: true in-window structures among the queries, divided by random's of the same seed; the
  mean over seeds with a 95% percentile CI over resampled seeds;
- verdicts: a ratio's CI entirely below (above) 1 resolves it; otherwise no difference is resolved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mofbalora.data.io import write_text_atomic  # noqa: E402
from pipelines.analysis.figures import _save  # noqa: E402
from pipelines.analysis.report import _ci, _table  # noqa: E402
from pipelines.provenance import ROOT  # noqa: E402

PAGE = Path("docs") / "studies" / "active_learning.md"  # under ROOT
ASSETS = Path("docs") / "studies" / "active_learning"  # metrics.json and figures, under ROOT
RANDOM, ENSEMBLE = "random", "ensemble-std"
LEVEL = 0.95


def campaign_records(folder: Path, rounds: int) -> list[dict[str, Any]] | None:
    """The saved rounds of one campaign, or None while it is unfinished."""
    paths = [folder / f"round_{r:02d}.json" for r in range(rounds + 1)]
    if not all(p.exists() for p in paths) or not (folder / "test_abs_errors.npy").exists():
        return None
    return [json.loads(p.read_text()) for p in paths]


def complete_seeds(run_dir: Path, design: dict[str, Any], setting: str) -> list[int]:
    """Seeds whose campaigns are finished for every strategy of the setting."""
    return [seed for seed in design["seeds"]
            if all(campaign_records(run_dir / setting / s / f"seed{seed}", design["rounds"]) is not None
                   for s in design["strategies"])]


def mean_mae_over_labels(mae: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Area under MAE against labels divided by the label range (the last axis runs over fits)."""
    return np.trapezoid(mae, labels, axis=-1) / (labels[-1] - labels[0])


def _interval(values: list[float]) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def ratio_verdict(entry: dict[str, float], below: str, above: str) -> str:
    if entry["ci_high"] < 1:
        return below
    if entry["ci_low"] > 1:
        return above
    return "no difference resolved"


def learning_ratios(errors: dict[str, np.ndarray], labels: np.ndarray, reference: str, rng: np.random.Generator,
                    n_boot: int) -> dict[str, dict[str, float]]:
    """Per strategy: the mean over seeds of its mean MAE over labels divided by ``reference``'s, with
    the hierarchical bootstrap CI (seeds paired, test structures shared). ``errors``: [seeds, fits, n]."""
    n_seeds, _, n_test = errors[reference].shape

    def statistic(seed_index: np.ndarray, weights: np.ndarray) -> dict[str, float]:
        area = {s: mean_mae_over_labels(e[seed_index] @ weights, labels) for s, e in errors.items()}
        return {s: float(np.mean(area[s] / area[reference])) for s in errors}

    point = statistic(np.arange(n_seeds), np.full(n_test, 1.0 / n_test))
    replicates: dict[str, list[float]] = {s: [] for s in errors}
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, n_test, n_test), minlength=n_test) / n_test
        for s, value in statistic(rng.integers(0, n_seeds, n_seeds), weights).items():
            replicates[s].append(value)
    out = {}
    for s in errors:
        low, high = _interval(replicates[s])
        out[s] = {"value": point[s], "ci_low": low, "ci_high": high}
    return out


def mae_curves(errors: dict[str, np.ndarray], rng: np.random.Generator, n_boot: int) -> dict[str, dict[str, list[float]]]:
    """Per strategy and fit: the mean test MAE over seeds with its hierarchical 95% CI."""
    out = {}
    for s, e in errors.items():
        n_seeds, _, n_test = e.shape
        replicates = []
        for _ in range(n_boot):
            weights = np.bincount(rng.integers(0, n_test, n_test), minlength=n_test) / n_test
            replicates.append((e[rng.integers(0, n_seeds, n_seeds)] @ weights).mean(0))
        low, high = np.quantile(np.array(replicates), [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
        out[s] = {"mae_ev": e.mean(-1).mean(0).tolist(), "ci_low": low.tolist(), "ci_high": high.tolist()}
    return out


def discovery(hits: dict[str, np.ndarray], rng: np.random.Generator, n_boot: int) -> dict[str, dict[str, Any]]:
    """Per strategy: in-window structures found (per seed, [seeds]) and the enrichment against random."""
    n_seeds = len(hits[RANDOM])
    out = {}
    for s, found in hits.items():
        # undefined (NaN, so no verdict) for a seed where random found nothing
        ratio = np.where(hits[RANDOM] > 0, found / np.maximum(hits[RANDOM], 1), np.nan)
        replicates = [float(ratio[rng.integers(0, n_seeds, n_seeds)].mean()) for _ in range(n_boot)]
        low, high = _interval(replicates) if np.isfinite(ratio).all() else (float("nan"), float("nan"))
        enrichment = {"value": float(ratio.mean()), "ci_low": low, "ci_high": high}
        out[s] = {"hits_per_seed": found.tolist(), "hits_mean": float(found.mean()), "enrichment": enrichment,
                  "verdict": ratio_verdict(enrichment, "fewer hits than random", "enriched against random")
                  if s != RANDOM else "reference"}
    return out


def mae_at_time(records: list[dict[str, Any]], budget_s: float) -> tuple[float, int]:
    """(test MAE, labels) of the last fit a campaign finished within ``budget_s`` of decision time."""
    elapsed, best = 0.0, (records[0]["test_mae_ev"], records[0]["n_labels"])
    for record in records:
        elapsed += record["fit_s"]
        if elapsed > budget_s and record is not records[0]:
            break
        best = (record["test_mae_ev"], record["n_labels"])
        elapsed += record.get("predict_pool_s", 0.0) + record.get("select_s", 0.0)
    return best


def equal_time_from_costs(curves: dict[str, dict[str, list[float]]], labels: np.ndarray, costs: dict[str, Any],
                          reference: str, rounds: int) -> dict[str, dict[str, float]]:
    """Each strategy's fit reached within the time ``reference`` takes for all ``rounds`` rounds, at
    the quiet per-round costs (``costs.json``): its labels and mean test MAE."""
    budget = rounds * costs[reference]["decision_s"]
    out = {}
    for s, cost in costs.items():
        done = min(rounds, int(budget // cost["decision_s"]))
        out[s] = {"rounds": done, "labels": float(labels[done]), "mae_ev": curves[s]["mae_ev"][done]}
    return out


def analyse_setting(run_dir: Path, design: dict[str, Any], setting: str, pool_gaps: dict[str, float],
                    rng: np.random.Generator, costs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    seeds = complete_seeds(run_dir, design, setting)
    if not seeds:
        return None
    strategies = list(design["strategies"])
    records = {s: [campaign_records(run_dir / setting / s / f"seed{k}", design["rounds"]) for k in seeds] for s in strategies}
    errors = {s: np.stack([np.load(run_dir / setting / s / f"seed{k}" / "test_abs_errors.npy") for k in seeds]).astype(float)
              for s in strategies}
    labels = np.array([r["n_labels"] for r in records[RANDOM][0]], dtype=float)
    n_boot = design["bootstrap"]
    versus_random = learning_ratios(errors, labels, RANDOM, rng, n_boot)
    versus_ensemble = learning_ratios(errors, labels, ENSEMBLE, rng, n_boot) if ENSEMBLE in errors else {}
    learning = {}
    for s in strategies:
        shifted = [[r["test_mae_shifted_metals_ev"] for r in run] for run in records[s]]
        learning[s] = {
            "mean_mae_ratio_vs_random": versus_random[s],
            "verdict_vs_random": ratio_verdict(versus_random[s], "learns faster than random", "learns slower than random")
            if s != RANDOM else "reference",
            **({"mean_mae_ratio_vs_ensemble": versus_ensemble[s],
                "verdict_vs_ensemble": ratio_verdict(versus_ensemble[s], "learns faster than the ensemble",
                                                     "learns slower than the ensemble")
                if s != ENSEMBLE else "reference"} if versus_ensemble else {}),
            "final_mae_ev": float(errors[s][:, -1].mean()),
            "shifted_metals_mae_ev": None if shifted[0][0] is None else np.mean(shifted, axis=0).tolist(),
            "decision_s_per_round": float(np.mean([r["decision_wall_s"] for run in records[s] for r in run[:-1]])),
            "quiet_decision_s_per_round": None if costs is None else costs[s]["decision_s"],
            "decision_s_total": float(np.mean([sum(r["decision_wall_s"] for r in run) for run in records[s]])),
        }
    time_reference = "balora-std" if "balora-std" in learning else RANDOM
    curves = mae_curves(errors, rng, n_boot)
    if costs is not None:
        reference_time = design["rounds"] * costs[time_reference]["decision_s"]
        equal_time = equal_time_from_costs(curves, labels, costs, time_reference, design["rounds"])
    else:  # the campaign's own wall times
        reference_time = learning[time_reference]["decision_s_total"]
        equal_time = {}
        for s in strategies:
            reached = [mae_at_time(run, reference_time) for run in records[s]]
            equal_time[s] = {"mae_ev": float(np.mean([m for m, _ in reached])), "labels": float(np.mean([n for _, n in reached]))}
    windows = {}
    for window_name, (low, high) in design["windows"].items():
        hits = {}
        for s in strategies:
            per_round = np.array([[sum(low <= pool_gaps[i] <= high for i in r["queried"]) for r in run[:-1]]
                                  for run in records[s]])
            hits[s] = per_round
        found = discovery({s: h.sum(1) for s, h in hits.items()}, rng, n_boot)
        for s in strategies:
            found[s]["hits_by_round"] = np.cumsum(hits[s], axis=1).mean(0).tolist()
        windows[window_name] = {"window_ev": [low, high], "strategies": found,
                                "pool_share": float(np.mean([low <= g <= high for g in pool_gaps.values()]))}
    return {"seeds": seeds, "labels": labels.tolist(), "curves": curves, "learning": learning,
            "equal_wall_time": {"reference": time_reference, "budget_s": reference_time, "strategies": equal_time,
                                "from": "quiet costs" if costs is not None else "campaign wall times"}, "windows": windows,
            "queries_per_round": design["queries_per_round"]}


def analyse(run_dir: Path, design: dict[str, Any], parts: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """Every setting with at least one finished seed; ``parts``: the campaign's pool/val/test Parts."""
    rng = np.random.default_rng(0)
    pool_gaps = dict(zip(parts["pool"].ids, parts["pool"].gaps_ev.tolist()))
    costs_path = run_dir / "costs.json"
    costs = json.loads(costs_path.read_text()) if costs_path.exists() else None
    settings = {s: analyse_setting(run_dir, design, s, pool_gaps, rng, None if costs is None else costs["strategies"])
                for s in design["settings"]}
    return {"provenance": provenance, "costs": costs, "settings": {k: v for k, v in settings.items() if v is not None}}


def mae_figure(metrics: dict[str, Any], path: Path) -> Path:
    settings = metrics["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
    for ax, (setting, result) in zip(axes[0], settings.items()):
        for s, curve in result["curves"].items():
            if s.startswith(("greedy-p", "ucb")):
                continue
            line = ax.plot(result["labels"], curve["mae_ev"], "o-", ms=3, label=s)[0]
            ax.fill_between(result["labels"], curve["ci_low"], curve["ci_high"], color=line.get_color(), alpha=0.15)
        ax.set(xlabel="labelled structures (DFT calls incl. the initial set)", ylabel="test MAE (eV)",
               title=f"{setting}: {len(result['seeds'])} seeds, 95% CI bands")
        ax.legend(fontsize=8)
    return _save(fig, path)


def hits_figure(metrics: dict[str, Any], path: Path) -> Path:
    panels = [(setting, name, window) for setting, result in metrics["settings"].items()
              for name, window in result["windows"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (setting, name, window) in zip(axes[0], panels):
        per_round = metrics["settings"][setting]["queries_per_round"]
        for s, found in window["strategies"].items():
            if s.startswith(("greedy-p", "ucb")) and not s.endswith(name):
                continue
            calls = per_round * np.arange(1, len(found["hits_by_round"]) + 1)
            ax.plot(calls, found["hits_by_round"], "o-", ms=3, label=s)
        low, high = window["window_ev"]
        ax.set(xlabel="DFT calls after the initial set", ylabel="in-window MOFs found (mean over seeds)",
               title=f"{setting}: gap {low:g}-{high:g} eV")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _verdict_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s, entry in result["learning"].items():
        rows.append([f"`{s}`", f"{entry['final_mae_ev']:.3f}", _ci(entry["mean_mae_ratio_vs_random"]), entry["verdict_vs_random"],
                     _ci(entry.get("mean_mae_ratio_vs_ensemble")), entry.get("verdict_vs_ensemble", "–"),
                     "–" if entry["quiet_decision_s_per_round"] is None else f"{entry['quiet_decision_s_per_round']:.1f}",
                     f"{entry['decision_s_per_round']:.1f}"])
    return rows


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The verdicts in a few lines, read off the tables below (nothing typed in)."""
    lines = ["## In short", ""]
    for setting, result in metrics["settings"].items():
        learning = result["learning"]
        by_verdict = {verdict: [f"`{s}`" for s, e in learning.items() if e["verdict_vs_random"] == verdict]
                      for verdict in ("learns faster than random", "learns slower than random")}
        lines.append(f"- **{setting}**, learning ({len(result['seeds'])} seeds): faster than random: "
                     f"{', '.join(by_verdict['learns faster than random']) or 'none'}; slower than random: "
                     f"{', '.join(by_verdict['learns slower than random']) or 'none'}; the rest unresolved.")
        for name, window in result["windows"].items():
            low, high = window["window_ev"]
            best = max(window["strategies"].items(), key=lambda item: item[1]["enrichment"]["value"])
            lines.append(f"  Window {low:g}–{high:g} eV: most hits `{best[0]}`, {_ci(best[1]['enrichment'], 2)}× random's.")
    return lines + [""]


def render(metrics: dict[str, Any]) -> str:
    provenance = metrics["provenance"]
    design = provenance["design"]
    sizes = provenance["sizes"]
    lines = [
        "# Which MOFs to compute next: a simulated DFT campaign on QMOF",
        "",
        f"Generated by `make al-benchmark` (`python -m pipelines.active_learning --profile {provenance['profile']}`) "
        f"at commit `{provenance['git_commit']}`, {provenance['created']}; the design "
        f"(`pipelines/configs/active_learning_{provenance['profile']}.yaml`) was declared before the run. "
        f"Labels sha256 `{provenance['labels_sha256'][:16]}…`; packages: "
        + ", ".join(f"{k} {v}" for k, v in provenance["packages"].items()) + ".",
        "",
        f"**Set-up.** Pool: the release split's training part ({sizes['pool']} structures, labels hidden until "
        f"queried). Test: its test part ({sizes['test']}). Early stopping: its validation part ({sizes['val']}), "
        f"the same for every strategy. Each seed starts every strategy from the same {design['initial_labels']} "
        f"random labels, then {design['rounds']} rounds of {design['queries_per_round']} queries, each fit "
        "warm-started from the round before. The model is CGCNN with its convolutions frozen and run once "
        "(`pipelines/cached_trunk.py`), adapters on the head: a small-data, frozen-trunk regime "
        "whose MAEs are far from the shipped model's 0.30 eV. The campaign judges the acquisition, not the model. "
        f"S = {design['samples']} draws for BaLoRA and MC dropout; the ensemble has M = {design['ensemble_size']} "
        "LoRA members. The campaign's wall times ran two campaigns at a time, one thread each, beside other "
        "work; the quiet column re-times one round per strategy alone on one thread (`--costs`).",
        "",
        "**Rules** (declared): the mean MAE over the label range (area under the curve / range) divided by "
        "random's of the same seed, averaged over seeds, 95% CI resampling seeds and test structures; a "
        "ratio below 1 means faster learning, resolved when the CI excludes 1. Discovery: in-window MOFs among "
        "the queries over random's, 95% CI over seeds.",
        "",
    ]
    lines += summary_lines(metrics)
    for setting, result in metrics["settings"].items():
        lines += [f"## {setting} ({len(result['seeds'])} seeds: {result['seeds']})", "",
                  _table(["strategy", "final MAE (eV)", "mean-MAE ratio vs random [95% CI]", "verdict",
                          "ratio vs ensemble [95% CI]", "verdict", "s/round, quiet", "s/round, campaign"],
                         _verdict_rows(result)), ""]
        shifted = {s: e["shifted_metals_mae_ev"] for s, e in result["learning"].items() if e["shifted_metals_mae_ev"]}
        if shifted:
            lines += ["Test MAE on the test structures holding Co, Ni or Cd (eV), first fit → last:", "",
                      _table(["strategy", "first", "last"], [[f"`{s}`", f"{v[0]:.3f}", f"{v[-1]:.3f}"] for s, v in shifted.items()]), ""]
        equal = result["equal_wall_time"]
        lines += [f"Equal wall time ({equal['from']}): within the {equal['budget_s']:.1f} s of decisions (fits, pool "
                  f"predictions, selections) `{equal['reference']}`'s campaign takes, each strategy reaches:", "",
                  _table(["strategy", "labels", "test MAE (eV)"],
                         [[f"`{s}`", f"{v['labels']:.0f}", f"{v['mae_ev']:.3f}"] for s, v in equal["strategies"].items()
                          if not s.startswith(("greedy-p", "ucb"))]), ""]
        for name, window in result["windows"].items():
            low, high = window["window_ev"]
            rows = [[f"`{s}`", f"{f['hits_mean']:.1f}", " ".join(str(h) for h in f["hits_per_seed"]),
                     _ci(f["enrichment"], 2), f["verdict"]] for s, f in window["strategies"].items()]
            lines += [f"Window {low:g}–{high:g} eV ({100 * window['pool_share']:.0f}% of the pool): in-window MOFs "
                      f"among the {design['rounds'] * result['queries_per_round']} queries", "",
                      _table(["strategy", "found (mean)", "per seed", "enrichment vs random [95% CI]", "verdict"], rows), ""]
    lines += ["![test MAE against labels](active_learning/mae_vs_labels.png)", "",
              "![in-window MOFs against DFT calls](active_learning/hits_vs_calls.png)", ""]
    return "\n".join(lines)


def write(report_dir: Path, metrics: dict[str, Any], *, publish: bool) -> Path:
    """metrics.json, figures and the page into ``report_dir``; with ``publish`` also to docs/studies/."""
    assets = report_dir / "active_learning"
    assets.mkdir(parents=True, exist_ok=True)
    write_text_atomic(assets / "metrics.json", json.dumps(metrics, indent=1, default=float))
    mae_figure(metrics, assets / "mae_vs_labels.png")
    hits_figure(metrics, assets / "hits_vs_calls.png")
    write_text_atomic(report_dir / "active_learning.md", render(metrics))
    if publish:
        shutil.copytree(assets, ROOT / ASSETS, dirs_exist_ok=True)
        shutil.copy(report_dir / "active_learning.md", ROOT / PAGE)
    return report_dir / "active_learning.md"
