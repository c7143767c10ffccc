"""The BaLoRA design study: validation scores and diagnostics of one variant, the declared
selection rule, the staged design's bookkeeping and the report (pipelines/balora_ablation.py).

Everything here works on arrays already drawn on the validation split; nothing trains or predicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from mofbalora.adapters.config import AdapterConfig
from mofbalora.uncertainty import metrics as um
from mofbalora.uncertainty.intervals import gaussian_interval
from pipelines.analysis.report import _optional as _fmt
from pipelines.analysis.report import _table

#: quantiles reported for the std and for alpha(x)/c
QUANTILES = (0.05, 0.5, 0.95)
#: a std below this (eV) is "collapsed"
COLLAPSED_STD_EV = 1e-3
#: the gap (eV) that splits the validation structures for the rho-by-gap diagnostic
GAP_SPLIT_EV = 1.0


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def validation_scores(draws: np.ndarray, truth: np.ndarray, n_atoms: np.ndarray, *, total_std: np.ndarray,
                      calibrated_interval: tuple[np.ndarray, np.ndarray], calibrated_std: np.ndarray,
                      rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """Accuracy, uncertainty quality and collapse diagnostics of one variant on validation.

    Args:
        draws: [S, n] validation draws (eV) at the study's S.
        truth, n_atoms: [n] PBE gaps (eV) and cell sizes.
        total_std: [n] sqrt(epistemic² + learned noise²) (eV), uncalibrated.
        calibrated_interval: the model's conformal 95% interval (eV) for these structures.
        calibrated_std: [n] the conformally calibrated std (eV), for the tie-breaking NLL.
    """
    mean, std = draws.mean(0), draws.std(0, ddof=1)
    errors = np.abs(mean - truth)
    rho, rho_low, rho_high = um.bootstrap_ci(um.spearman_std_error, mean, std, truth, rng=rng, n_boot=n_boot)
    low_gap = truth < GAP_SPLIT_EV
    out: dict[str, Any] = {
        "mae_ev": um.mae(mean, truth),
        "spearman": {"value": rho, "ci_low": rho_low, "ci_high": rho_high},
        "calibrated_nll": um.gaussian_nll(mean, um.positive_std(calibrated_std), truth),
        "coverage_95": {
            "raw_epistemic": um.interval_share(*gaussian_interval(mean, um.positive_std(std), coverage=0.95), truth),
            "raw_total": um.interval_share(*gaussian_interval(mean, total_std, coverage=0.95), truth),
            "conformal": um.interval_share(*calibrated_interval, truth),
        },
        "std_quantiles_ev": dict(zip([f"q{int(100 * q):02d}" for q in QUANTILES], np.quantile(std, QUANTILES).tolist())),
        "share_std_below_1e-3": float(np.mean(std < COLLAPSED_STD_EV)),
        "spearman_std_n_atoms": _spearman(std, n_atoms.astype(float)),
        "spearman_by_gap": {f"gap<{GAP_SPLIT_EV:g}": _spearman(std[low_gap], errors[low_gap]),
                            f"gap>={GAP_SPLIT_EV:g}": _spearman(std[~low_gap], errors[~low_gap])},
        "n_by_gap": {f"gap<{GAP_SPLIT_EV:g}": int(low_gap.sum()), f"gap>={GAP_SPLIT_EV:g}": int((~low_gap).sum())},
    }
    return out


def alpha_quantiles(alpha_over_c: np.ndarray, layer_names: list[str]) -> dict[str, dict[str, float]]:
    """Quantiles of alpha(x)/c per adapted layer over structures (and rank components).

    Args:
        alpha_over_c: [n, L] or [n, L, r].
    """
    out = {}
    for slot, name in enumerate(layer_names):
        values = alpha_over_c[:, slot].reshape(-1)
        out[name] = dict(zip([f"q{int(100 * q):02d}" for q in QUANTILES], np.quantile(values, QUANTILES).tolist()))
    return out


def selection_rho(scores: dict[str, Any], criterion: str = "val") -> float:
    """The rho a variant is ranked by: the in-distribution val rho (``"val"``), or the mean of it and
    the shift-validation rho (``"val_and_shift_val"``; a missing shift rho counts as 0)."""
    rho = scores["spearman"]["value"]
    if criterion == "val":
        return rho
    if criterion != "val_and_shift_val":
        raise ValueError(f"selection criterion must be 'val' or 'val_and_shift_val', got {criterion!r}")
    shift = (scores.get("shift_val") or {}).get("spearman", {}).get("value")
    return 0.5 * (rho + (shift if shift is not None else 0.0))


def select(scores: dict[str, dict[str, Any]], *, lora_mae_ev: float, mae_margin_ev: float, tie_rho: float,
           criterion: str = "val") -> dict[str, Any]:
    """The declared rule: among variants with val MAE <= LoRA's + margin, the highest rho (by
    ``criterion``, see :func:`selection_rho`); rho within ``tie_rho`` of the best ties, broken by the
    lowest calibrated val NLL. With no eligible variant, the lowest val MAE wins.

    Returns:
        ``{"winner", "eligible", "reason"}``.
    """
    eligible = [name for name, s in scores.items() if s["mae_ev"] <= lora_mae_ev + mae_margin_ev]
    if not eligible:
        winner = min(scores, key=lambda n: scores[n]["mae_ev"])
        return {"winner": winner, "eligible": [], "reason": "no variant within the MAE margin: lowest val MAE"}
    rho = {name: selection_rho(scores[name], criterion) for name in eligible}
    best = max(rho.values())
    tied = [name for name in eligible if rho[name] >= best - tie_rho]
    winner = min(tied, key=lambda n: scores[n]["calibrated_nll"])
    reason = "highest rho among eligible" if len(tied) == 1 else f"tie on rho among {tied}: lowest calibrated val NLL"
    return {"winner": winner, "eligible": eligible, "reason": reason}


def merge_overrides(*overrides: dict[str, Any]) -> dict[str, Any]:
    """Adapter overrides applied left to right; raises when two set one key to different values."""
    merged: dict[str, Any] = {}
    for override in overrides:
        for key, value in override.items():
            if key in merged and merged[key] != value:
                raise ValueError(f"conflicting adapter overrides for {key!r}: {merged[key]!r} vs {value!r}")
            merged[key] = value
    return merged


def level_overrides(level: dict[str, Any]) -> dict[str, Any]:
    """A level's adapter fields, and its training fields under ``train``."""
    return {**level.get("adapter", {}), **({"train": level["train"]} if level.get("train") else {})}


def design_markdown(design: dict[str, Any], lora_reference: str) -> str:
    """The declared design (stages, variants, rule) as written before any variant is trained."""
    rule = design["selection"]
    lines = [
        "## Declared design (written before the run; from `pipelines/configs/ablation_"
        f"{design['profile']}.yaml`)", "",
        f"- Data, split and training settings: the `{design['benchmark_profile']}` benchmark profile; head "
        f"`{design['head']}`; every variant is scored on the **validation split only**, with S = {design['samples']} "
        f"weight samples (seed {design['sampling_seed']}).",
        f"- Baseline ({design['baseline'].get('label', 'the old default')}): `{design['baseline']['name']}` = "
        f"{level_overrides(design['baseline'])}.",
        f"- Selection rule: among variants whose val MAE is within {rule['mae_margin_ev']} eV of LoRA's "
        f"({lora_reference}), the highest "
        + ("mean of the in-distribution val ρ and the shift-validation ρ (Spearman, epistemic std vs |error|)"
           if rule.get("criterion") == "val_and_shift_val" else "val Spearman ρ(epistemic std, |error|)")
        + f"; ρ within {rule['tie_rho']} of the best ties, broken by the lowest conformally calibrated val NLL; "
        "with no eligible variant, the lowest val MAE.",
        "- Stages, in order (a `sequential` stage puts all its variants, applied on the current winner, against "
        "that winner; a `parallel` stage compares each factor's levels with the current winner one factor at a "
        "time, then trains the winning levels of two or more factors together and picks among all of them):",
    ]
    for stage in design["stages"]:
        levels = "; ".join(f"{factor}: " + ", ".join(f"`{lv['name']}` {level_overrides(lv)}" for lv in levels_)
                           for factor, levels_ in stage["factors"].items())
        lines.append(f"  - `{stage['name']}` ({stage['mode']}): {levels}")
    return "\n".join(lines)


KL_FIELDS = ("prior", "kl_count", "kl_scaling", "kl_weight", "prior_p", "alpha_net_input")


def trained_kl_table(results: dict[str, Any]) -> str:
    """The KL settings each variant trained with (AdapterConfig's defaults where its config is silent)."""
    defaults = AdapterConfig().to_dict()
    rows = []
    for name, entry in results["variants"].items():
        trained = {**defaults, **entry.get("trained_adapter", {})}
        rows.append([f"**{name}**" if name == results["winner"] else name, *(str(trained[f]) for f in KL_FIELDS),
                     ", ".join(f"{k}={v}" for k, v in (entry.get("train") or {}).items()) or "–"])
    return _table(["variant", *KL_FIELDS, "training"], rows)


def variant_table(results: dict[str, Any]) -> str:
    rows = []
    winner = results["winner"]
    for name, entry in results["variants"].items():
        s = entry["scores"]
        rho = s["spearman"]
        shift = (s.get("shift_val") or {}).get("spearman")
        rows.append([
            f"**{name}**" if name == winner else name, entry["stage"], _fmt(s["mae_ev"]),
            "yes" if entry["eligible"] else "no",
            f"{_fmt(rho['value'])} [{_fmt(rho['ci_low'], 2)}, {_fmt(rho['ci_high'], 2)}]",
            f"{_fmt(shift['value'])} [{_fmt(shift['ci_low'], 2)}, {_fmt(shift['ci_high'], 2)}]" if shift else "–",
            _fmt((s.get("shift_val") or {}).get("mae_ev")), _fmt(s["calibrated_nll"]),
            _fmt(s["coverage_95"]["raw_epistemic"]), _fmt(s["coverage_95"]["raw_total"]),
            _fmt(s["coverage_95"]["conformal"]), _fmt(entry.get("epochs"), 0) if entry.get("epochs") else "–",
        ])
    return _table(["variant", "stage", "val MAE (eV)", "within margin", "val ρ [95% CI]", "shift-val ρ [95% CI]",
                   "shift-val MAE (eV)", "cal. NLL",
                   "raw 95% cov. (epistemic)", "raw 95% cov. (total)", "conformal 95% cov.", "epochs"], rows)


def diagnostics_table(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["variants"].items():
        s = entry["scores"]
        q = s["std_quantiles_ev"]
        by_gap = list(s["spearman_by_gap"].values())
        rows.append([name, f"{q['q05']:.2e} / {q['q50']:.2e} / {q['q95']:.2e}", _fmt(s["share_std_below_1e-3"]),
                     _fmt(s["spearman_std_n_atoms"]), _fmt(by_gap[0]), _fmt(by_gap[1]),
                     _fmt(entry.get("noise_std_ev"))])
    gaps = list(next(iter(results["variants"].values()))["scores"]["n_by_gap"].items())
    return _table(["variant", "std q05 / q50 / q95 (eV)", "share std < 1e-3 eV", "ρ(std, n_atoms)",
                   f"ρ(std, \\|err\\|), {gaps[0][0]} eV (n={gaps[0][1]})", f"ρ(std, \\|err\\|), {gaps[1][0]} eV (n={gaps[1][1]})",
                   "learned noise std (eV)"], rows)


def alpha_table(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["variants"].items():
        for layer, q in entry["alpha_over_c"].items():
            rows.append([name, f"`{layer}`", _fmt(q["q05"]), _fmt(q["q50"]), _fmt(q["q95"])])
    return _table(["variant", "layer", "α/c q05", "α/c q50", "α/c q95"], rows)


def alpha_summary(results: dict[str, Any]) -> str:
    """One sentence on how far alpha(x)/c moves: across structures (input adaptivity) and from 1 (the prior)."""
    lows = {name: min(q["q05"] for q in entry["alpha_over_c"].values()) for name, entry in results["variants"].items()}
    highs = {name: max(q["q95"] for q in entry["alpha_over_c"].values()) for name, entry in results["variants"].items()}
    spread = {name: max(q["q95"] - q["q05"] for q in entry["alpha_over_c"].values())
              for name, entry in results["variants"].items()}
    widest = max(spread, key=spread.get)
    return (f"α(x)/c over validation structures and layers lies between {min(lows.values()):.3f} and "
            f"{max(highs.values()):.3f} across all variants; the widest 5–95% range within one layer is "
            f"{spread[widest]:.3f} (`{widest}`). A range near 0 means α(x) hardly depends on the input; values "
            "near 1 mean α sits at the prior's c.")


def render(results: dict[str, Any], *, figure: str = "ablation_rho_vs_mae.png") -> str:
    """docs/results/ablation.md from the study's results dict."""
    setup = results["setup"]
    ensemble = results["references"].get("lora-ensemble")
    winner = results["winner"]
    best_rho = max(v["scores"]["spearman"]["value"] for v in results["variants"].values())
    beats = [n for n, v in results["variants"].items()
             if ensemble and v["scores"]["spearman"]["value"] > ensemble["spearman"]["value"]]
    lines = [
        "# BaLoRA design study (validation split only)", "",
        f"Profile `{setup['profile']}`, {setup['n_train']} training and {setup['n_val']} validation structures, "
        f"backbone {setup['backbone']}, git `{setup['git_commit']}`"
        + (f" (report rendered by `{setup['rendered_by_git_commit']}`)" if setup.get("rendered_by_git_commit") else "")
        + f", finished {setup['finished']}, "
        f"{setup['wall_s'] / 60:.0f} min. Reproduce: `make balora-ablation PROFILE={setup['profile']}`.", "",
        *([f"**Purpose:** {results['design']['purpose'].strip()}", ""] if results["design"].get("purpose") else []),
        design_markdown(results["design"], results["references"]["lora"]["label"]), "",
        *([f"Selection sets: {setup['n_val']} validation structures (the split's {setup['n_val_before_held_out']} "
           "less those that are test or calibration structures of the shipped model)"
           + (f" and {setup['n_shift_val']} shift-validation structures (metals no training structure holds, "
              "none of the chemistry-shift test metals)" if setup.get("n_shift_val") else "")
           + ". Held out from both, and checked before any training: "
           + ", ".join(f"{name} ({n})" for name, n in results.get("held_out_counts", {}).items()) + ".", ""]
          if "n_val_before_held_out" in setup else []),
        "## Result", "",
        *([f"Every variant's KL settings as trained (the benchmark profile's adapter settings under the "
           "variant's; a level replaces the incumbent's level of the same factor, it is not added to it):", "",
           trained_kl_table(results), ""] if any("trained_adapter" in v for v in results["variants"].values()) else []),
        f"**Winner: `{winner}`** = {results['winner_adapter']}"
        + (f", training {results['variants'][winner]['train']}" if results["variants"][winner].get("train") else "")
        + ".", "",
        f"References on the same validation split: LoRA val MAE {results['references']['lora']['mae_ev']:.3f} eV "
        f"(so the MAE limit is {results['mae_limit_ev']:.3f} eV)"
        + (f"; LoRA ensemble val MAE {ensemble['mae_ev']:.3f} eV, val ρ {ensemble['spearman']['value']:.3f} "
           f"[{ensemble['spearman']['ci_low']:.2f}, {ensemble['spearman']['ci_high']:.2f}]." if ensemble else "."),
        "",
        (f"Variants with a higher val ρ than the ensemble's: {', '.join(f'`{b}`' for b in beats)}."
         if beats else f"**No variant beats the LoRA ensemble's val ρ** (best variant ρ {best_rho:.3f}).")
        if ensemble else "",
        "",
        "Selection, stage by stage:", "",
        *[f"- `{step['stage']}`{' / ' + step['factor'] if step.get('factor') else ''}: "
          f"candidates {', '.join(f'`{c}`' for c in step['candidates'])} → `{step['winner']}` ({step['reason']})"
          for step in results["steps"]],
        "",
        alpha_summary(results), "",
        "The validation split is small: ρ's 95% CIs (bootstrap) overlap for most variants, so the ranking among "
        "them is weak evidence. The test split is not used here.", "",
        "## Every variant", "", variant_table(results), "",
        f"![val rho vs val MAE]({figure})", "",
        "## Diagnostics", "",
        "Std = epistemic std over the S weight samples. ρ(std, n_atoms) measures a size confound.", "",
        diagnostics_table(results), "",
        "### α(x)/c per adapted layer (validation structures; c = p/(1−p) is where the KL alone puts α)", "",
        alpha_table(results), "",
    ]
    return "\n".join(lines)
