"""The study's Markdown report, written from metrics.json only (no numbers typed by hand)."""

from __future__ import annotations

import math
from typing import Any


def _fmt(entry: dict[str, float] | float | None, digits: int = 3) -> str:
    if entry is None:
        return "–"
    if isinstance(entry, dict):
        return f"{entry['value']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
    return f"{entry:.{digits}f}"


def accuracy_table(metrics: dict[str, Any]) -> str:
    lines = ["| method | MAE (eV) [95% CI] | RMSE (eV) [95% CI] | R² [95% CI] |", "| --- | --- | --- | --- |"]
    for method, values in metrics["accuracy"].items():
        lines.append(f"| {method} | {_fmt(values['mae_ev'])} | {_fmt(values['rmse_ev'])} | {_fmt(values['r2'])} |")
    return "\n".join(lines)


def uncertainty_table(metrics: dict[str, Any]) -> str:
    lines = ["| method | Spearman ρ [95% CI] | Pearson r [95% CI] | AUSE (eV) | NLL raw / recal. | "
             "miscal. area raw / recal. | coverage 68% raw / recal. | coverage 95% raw / recal. |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, u in metrics["uncertainty"].items():
        raw, rec = u["raw"], u.get("recalibrated", u["raw"])
        lines.append(
            f"| {method} | {_fmt(u['spearman'])} | {_fmt(u['pearson'])} | {u['ause_ev']:.3f} | "
            f"{raw['nll']:.2f} / {rec['nll']:.2f} | {raw['miscalibration_area']:.3f} / {rec['miscalibration_area']:.3f} | "
            f"{raw['coverage_68']:.2f} / {rec['coverage_68']:.2f} | {raw['coverage_95']:.2f} / {rec['coverage_95']:.2f} |")
    return "\n".join(lines)


def sweep_tables(metrics: dict[str, Any]) -> str:
    sweep = metrics["balora_sample_sweep"]
    lines = ["| S | Spearman ρ (mean ± sd over seeds) | Pearson r (mean ± sd) | MAE of mean (eV) |", "| --- | --- | --- | --- |"]
    for size in sorted(sweep, key=int):
        row = sweep[size]
        lines.append(f"| {size} | {row['spearman_mean']:.3f} ± {row['spearman_sd']:.3f} | "
                     f"{row['pearson_mean']:.3f} ± {row['pearson_sd']:.3f} | {row['mae_mean_ev']:.3f} |")
    lines += ["", "| ensemble members M | Spearman ρ [95% CI] | Pearson r | MAE (eV) |", "| --- | --- | --- | --- |"]
    for size, row in metrics["ensemble_size_sweep"].items():
        lines.append(f"| {size} | {_fmt(row['spearman'])} | {row['pearson']:.3f} | {row['mae_ev']:.3f} |")
    return "\n".join(lines)


def cost_table(metrics: dict[str, Any]) -> str:
    lines = ["| method | training runs | training wall (s) | training fwd+bwd passes | test inference wall (s) | "
             "test forward passes per structure |", "| --- | --- | --- | --- | --- | --- |"]
    for method, c in metrics["cost"].items():
        lines.append(f"| {method} | {c['training_runs']} | {c['train_wall_s']:.0f} | {c['train_passes']} | "
                     f"{c['inference_wall_s']:.1f} | {c['inference_passes_per_structure']} |")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _optional(value: float | None, digits: int = 3) -> str:
    """A number, or "–" when it is missing or not finite."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def calibration_table(metrics: dict[str, Any]) -> str:
    rows = []
    for method, c in metrics["calibration"].items():
        for kind in ("raw_epistemic", "raw_total", "recalibrated", "conformal"):
            if kind in c:
                label = kind.replace("_", " ") + (f" (×{c['recalibration_scale']:.2f})" if kind == "recalibrated" else "")
                v = c[kind]
                rows.append([method, _optional(c.get("noise_std_ev")), label, f"{v['coverage_68']:.3f}",
                             f"{v['coverage_95']:.3f}", f"{v['mean_width_95_ev']:.2f}"])
    return _table(["method", "learned noise std (eV)", "interval", "coverage 68%", "coverage 95%",
                   "mean 95% width (eV)"], rows)


def coverage_summary(metrics: dict[str, Any]) -> str:
    """Test coverage of the calibrated (conformal) intervals next to the raw epistemic ones."""
    rows = []
    for method, c in metrics["calibration"].items():
        raw = c.get("raw_epistemic")
        rows.append([method, f"{c['conformal']['coverage_68']:.2f}", f"{c['conformal']['coverage_95']:.2f}",
                     f"{c['conformal']['mean_width_95_ev']:.2f}", "–" if raw is None else f"{raw['coverage_95']:.2f}"])
    return _table(["method", "calibrated 68% coverage", "calibrated 95% coverage", "mean 95% width (eV)",
                   "raw epistemic 95% coverage"], rows)


def floor_table(metrics: dict[str, Any]) -> str:
    rows = [[name, f"{f['min_prediction_ev']:.3f}", f"{f['share_within_tolerance_of_min']:.3f}",
             f"{f['mae_gap_below_ev']:.3f}", str(f["n_gap_below"])] for name, f in metrics["floor"].items()]
    return _table(["predictions", "smallest prediction (eV)", "share within 0.02 eV of it", "MAE on gap < 1 eV (eV)",
                   "n gap < 1 eV"], rows)


def ood_table(metrics: dict[str, Any]) -> str:
    rows = [[method, kind.replace("_", " "), f"{o[kind]['flag_rate']:.3f}", str(o[kind]["n_flagged"]),
             _optional(o[kind]["mae_flagged_ev"]), _optional(o[kind]["mae_unflagged_ev"])]
            for method, o in metrics["ood"].items() for kind in ("epistemic_std", "embedding", "any")]
    return _table(["method", "flag", "test flag rate", "n flagged", "MAE flagged (eV)", "MAE unflagged (eV)"], rows)


def claims_section(metrics: dict[str, Any]) -> str:
    c1, c2, c3 = (metrics["claims"][k] for k in ("claim_1_correlation_vs_ensemble", "claim_2_monotone_in_samples",
                                                 "claim_3_accuracy"))
    d1 = c1["spearman_difference_balora_minus_ensemble"]
    growth_key = next(k for k in c2 if k.startswith("spearman_difference_S"))
    d3 = c3["mae_difference_balora_minus_lora_ev"]
    return "\n".join([
        f"1. **{c1['statement']}: {c1['verdict']}.** ρ(BaLoRA, S={c1['balora_samples']}) − ρ(ensemble) = {_fmt(d1)} "
        "(paired bootstrap over test structures).",
        f"2. **{c2['statement']}: {c2['verdict']}.** Seed-averaged ρ by S {c2['sizes']}: "
        f"{', '.join(f'{v:.3f}' for v in c2['spearman_mean_by_size'])}; monotone: {c2['monotone_non_decreasing']}; "
        f"{growth_key.replace('_', ' ')} = {_fmt(c2[growth_key])}.",
        f"3. **{c3['statement']}: {c3['verdict']}.** MAE(BaLoRA) − MAE(LoRA) = {_fmt(d3)} eV; MAE BaLoRA "
        f"{c3['mae_ev']['balora']:.3f}, LoRA {c3['mae_ev']['lora']:.3f}, full {c3['mae_ev']['full']:.3f} eV; "
        f"BaLoRA closer to full fine-tuning: {c3['closer_to_full']}.",
    ])


def render_report(metrics: dict[str, Any]) -> str:
    setup = metrics["setup"]
    return f"""# Band-gap uncertainty study: BaLoRA vs a LoRA ensemble vs LoRA vs full fine-tuning

Profile `{setup['profile']}`, backbone `{setup['backbone']}`, QMOF PBE band gaps
({setup['n_train']} train / {setup['n_val']} val / {setup['n_test']} test structures; {setup['subset_note']}).
Generated by `pipelines/bandgap_benchmark.py` on {setup['finished']}; every number below comes from `metrics.json`.
Hyperparameters were chosen on the validation split only ({setup['selection_note']}); the test split was used once.
Code: git commit `{setup.get('git_commit', 'unknown')}`; split sha256 `{setup.get('split_sha256', '')[:16]}`.

## Verdicts on the paper's claims

{claims_section(metrics)}

A claim "holds" only when the 95% bootstrap CI of the deciding difference excludes zero in its favour,
"does not hold" when it excludes zero against it, and is "inconclusive" otherwise.

## Calibration on the test split

Each method was calibrated on a held-out calibration split ({setup['n_calibration']} structures) used for
nothing else. "raw epistemic": Gaussian on the sample/ensemble std alone (the std the paper's claims are
about); "raw total": Gaussian on sqrt(epistemic² + learned noise²); "recalibrated": raw total times one factor
fitted on the calibration split by miscalibration area (uncertainty-toolbox; a diagnostic); "conformal": the
crepes conformal predictive system stored in the model folder, which `predict` and `screen` use. LoRA is
deterministic: its conformal interval has constant width.

{calibration_table(metrics)}

## The prediction floor

A saturated softplus head makes predictions pile up at one value. "before" is LoRA with the pretrained head,
on this split; the other rows use the head chosen on validation ({metrics['head_selection']['chosen']}).

{floor_table(metrics)}

## Out-of-distribution flags on the test split

Thresholds are the calibration split's {metrics['ood'][next(iter(metrics['ood']))]['thresholds']['quantile']:.0%} quantiles of the
epistemic std and of the mean distance to the k nearest training structures in the frozen embedding space;
cells larger than any training cell are flagged too.

{ood_table(metrics)}

## Accuracy on the test split

{accuracy_table(metrics)}

## Uncertainty quality on the test split

Correlations are between the epistemic std and the absolute error. "recal." = after one scalar variance
recalibration of the epistemic std (miscalibration area, uncertainty-toolbox, fitted on the validation split).

{uncertainty_table(metrics)}

## Number of samples and ensemble size

{sweep_tables(metrics)}

![rho vs S](rho_vs_S.png)

## Cost

{cost_table(metrics)}

![cost](cost.png)

## Figures

![parity BaLoRA](parity_balora.png) ![parity ensemble](parity_lora-ensemble.png)

![calibration](calibration.png) ![error retention](error_retention.png)
"""
