"""The study's figures (matplotlib, PNG). Every axis has units; every figure a title and legend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mofbalora.uncertainty import metrics as um  # noqa: E402
from pipelines.analysis.study import MethodPredictions  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def rho_vs_samples(sweeps: dict[str, Any], ensemble_sweep: dict[str, Any], path: Path) -> Path:
    """ρ against S for each sampling method, with the curve sampling noise alone predicts (dashed),
    and the LoRA ensemble against its member count M."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, sweep in sweeps.items():
        line = ax.plot(sweep["sizes"], sweep["spearman"], "o-", label=f"{name}, S samples")[0]
        expected = [np.nan if v is None else v for v in sweep["noise_only_expected_spearman"]]
        ax.plot(sweep["sizes"], expected, "--", color=line.get_color(),
                label=f"{name}, sampling noise alone")
    members = sorted(int(m) for m in ensemble_sweep)
    ax.plot(members, [ensemble_sweep[str(m)]["spearman"] for m in members], "s:", color="tab:grey",
            label="LoRA ensemble, M members")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("forward passes at test time (S samples or M members)")
    ax.set_ylabel("Spearman ρ(predicted std, |error|)")
    ax.set_title("Uncertainty–error correlation vs number of samples (test)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def parity(pred: MethodPredictions, truth: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    points = ax.scatter(truth, pred.mean, c=pred.std, cmap="viridis", s=10)
    fig.colorbar(points, ax=ax, label="predicted std (eV)")
    limits = [min(truth.min(), pred.mean.min()), max(truth.max(), pred.mean.max())]
    ax.plot(limits, limits, "k--", lw=1, label="y = x")
    ax.set_xlabel("PBE band gap (eV)")
    ax.set_ylabel("predicted band gap (eV)")
    ax.set_title(f"{pred.name}: test parity, MAE {um.mae(pred.mean, truth):.3f} eV")
    ax.legend(loc="upper left")
    return _save(fig, path)


def error_retention(preds: list[MethodPredictions], truth: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for pred in preds:
        fractions, model, oracle = um.error_retention_curve(pred.mean, um.positive_std(pred.std), truth)
        line = ax.plot(fractions, model, label=f"{pred.name} (AUSE {np.mean(model - oracle):.3f} eV)")[0]
        ax.plot(fractions, oracle, ":", color=line.get_color(), label=f"{pred.name} oracle")
    ax.set_xlabel("fraction of test structures kept (most certain first)")
    ax.set_ylabel("MAE of kept structures (eV)")
    ax.set_title("Error retention (sparsification)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def cost_bars(cost: dict[str, dict[str, float]], path: Path) -> Path:
    """Training wall time per seed and test inference time per structure, per method."""
    methods = list(cost)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, scale, label in [(axes[0], "train_wall_s_per_seed", 1.0, "training wall time per seed (s)"),
                                  (axes[1], "inference_wall_s_per_structure", 1000.0, "test inference per structure (ms)")]:
        ax.bar(methods, [scale * cost[m].get(key, np.nan) for m in methods], color="tab:blue")
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0].capitalize())
        ax.tick_params(axis="x", rotation=35)
    return _save(fig, path)


def ablation_rho_vs_mae(results: dict[str, Any], path: Path) -> Path:
    """Validation ρ(std, |error|) vs validation MAE, one point per BaLoRA variant, the winner marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in results["variants"].items():
        s = entry["scores"]
        rho = s["spearman"]
        is_winner = name == results["winner"]
        ax.errorbar(s["mae_ev"], rho["value"], yerr=[[rho["value"] - rho["ci_low"]], [rho["ci_high"] - rho["value"]]],
                    fmt="*" if is_winner else "o", markersize=14 if is_winner else 5, capsize=2,
                    color="tab:red" if is_winner else "tab:blue", alpha=1.0 if is_winner else 0.7)
        ax.annotate(name, (s["mae_ev"], rho["value"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvline(results["mae_limit_ev"], color="grey", linestyle="--", label="MAE limit (LoRA + margin)")
    ensemble = results["references"].get("lora-ensemble")
    if ensemble:
        ax.axhline(ensemble["spearman"]["value"], color="tab:orange", label="LoRA ensemble val ρ")
    ax.plot([], [], "*", color="tab:red", markersize=12, label=f"winner: {results['winner']}")
    ax.set_xlabel("validation MAE (eV)")
    ax.set_ylabel("validation Spearman ρ(epistemic std, |error|)")
    ax.set_title("BaLoRA design study (error bars: bootstrap 95% CI)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def screen_gap_vs_width(table: Any, low_ev: float, high_ev: float, path: Path, *, title: str) -> Path:
    """Predicted PBE gap vs calibrated 95% interval width of a screen, OOD-flagged points apart."""
    ok = table[table["status"] == "ok"]
    width = ok["upper_95_ev"] - ok["lower_95_ev"]
    flagged = ok["out_of_distribution"].astype(bool).to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(ok["bandgap_mean_ev"][~flagged], width[~flagged], s=4, alpha=0.4, color="tab:blue",
               label=f"in distribution ({int((~flagged).sum())})")
    ax.scatter(ok["bandgap_mean_ev"][flagged], width[flagged], s=4, alpha=0.4, color="tab:red",
               label=f"flagged out of distribution ({int(flagged.sum())})")
    ax.axvspan(low_ev, high_ev, color="tab:green", alpha=0.1, label=f"window {low_ev:g}–{high_ev:g} eV")
    ax.set_xlabel("predicted PBE band gap (eV)")
    ax.set_ylabel("calibrated 95% interval width (eV)")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=3)
    return _save(fig, path)


def window_reliability(reliability: dict[str, Any], path: Path, *, title: str) -> Path:
    """Reliability of a window probability: observed share against mean predicted P per bin,
    with the bin counts (``analysis.release`` scores, ``p_in_window_reliability``)."""
    bins = reliability["bins"]
    predicted = np.array([b["mean_predicted"] for b in bins])
    observed = np.array([b["observed_share"] for b in bins])
    counts = np.array([b["n"] for b in bins])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly reliable")
    ax.plot(predicted, observed, marker="o", color="tab:blue", label="test split")
    for x, y, n in zip(predicted, observed, counts):
        ax.annotate(f"{n}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("mean predicted P(in window) in bin")
    ax.set_ylabel("observed share in window")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left")
    return _save(fig, path)


def rmse_vs_rmv(deciles: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Error-based calibration (Levi et al. 2022): RMSE against RMV (eV) per std decile, with the
    ratio's CI as error bars, against the diagonal a consistent std lies on
    (``analysis.release.consistency_scores``, ``rmse_over_rmv_by_std_decile``)."""
    rmv = np.array([d["rmv_ev"] for d in deciles])
    rmse = np.array([d["rmse_ev"] for d in deciles])
    low = np.array([d["ratio"]["ci_low"] for d in deciles]) * rmv
    high = np.array([d["ratio"]["ci_high"] for d in deciles]) * rmv
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 1.1 * max(rmv.max(), high.max())
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="consistent (RMSE = RMV)")
    ax.errorbar(rmv, rmse, yerr=[rmse - low, high - rmse], marker="o", color="tab:blue", capsize=3,
                label="test split, std deciles (95% CI)")
    ax.set_xlabel("RMV: root mean predicted variance (eV)")
    ax.set_ylabel("RMSE of the errors (eV)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left")
    return _save(fig, path)


def learning_curve(val_mae_ev_by_epoch: list[float], path: Path, *, title: str,
                   reference_ev: dict[str, float] | None = None) -> Path:
    """Validation MAE (eV, noise-off mean mode, what early stopping watches) per epoch, the best
    epoch marked, with optional horizontal references (e.g. the previous release's test MAE)."""
    epochs = np.arange(1, len(val_mae_ev_by_epoch) + 1)
    values = np.asarray(val_mae_ev_by_epoch, dtype=float)
    best = int(np.argmin(values))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, values, marker="o", markersize=3, color="tab:blue", label="validation MAE")
    ax.scatter([epochs[best]], [values[best]], color="tab:red", zorder=3,
               label=f"best: epoch {epochs[best]}, {values[best]:.3f} eV")
    for (label, value), style in zip((reference_ev or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MAE (eV)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)
