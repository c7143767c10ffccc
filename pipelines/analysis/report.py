"""The study's Markdown report and README block, written from metrics.json only (no numbers typed by hand)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from mofbalora.data.io import write_text_atomic

LABELS = {"full": "full fine-tuning", "lora": "LoRA", "lora-ensemble": "LoRA ensemble", "laplace-lora": "Laplace-LoRA",
          "lora-mcdropout": "MC-dropout LoRA", "balora-constant-alpha": "BaLoRA, constant α", "balora": "BaLoRA",
          "balora-members": "BaLoRA, seeds pooled as members"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _optional(value: float | None, digits: int = 3) -> str:
    """A number, or "–" when it is missing or not finite."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """``value [low, high]``, or "–"."""
    if not entry or entry.get("value") is None or not math.isfinite(entry["value"]):
        return "–"
    return f"{entry['value']:.{digits}f} [{_optional(entry['ci_low'], digits)}, {_optional(entry['ci_high'], digits)}]"


def _label(method: str) -> str:
    return LABELS.get(method, method)


def _seeds(metrics: dict[str, Any], method: str) -> str:
    if method == "lora-ensemble":  # one ensemble; its CI resamples the members
        return f"M = {metrics['setup']['config']['ensemble_size']} members"
    source = metrics["setup"]["config"].get("pooled_members", {}).get(method)
    if source is not None:  # one model whose members are another method's seeds
        return f"M = {len(metrics['setup']['seeds'][source])} members ({_label(source)}'s seeds)"
    row = metrics["table"][method]["mae_ev"]
    return str(len(row["per_seed"]))


def method_table(metrics: dict[str, Any]) -> str:
    """Every method × {MAE, ρ, AUSE/oracle, NLL, calibrated coverage, width, training and inference cost}."""
    rows = []
    for method, row in metrics["table"].items():
        cost = row["cost"]
        rows.append([_label(method), _seeds(metrics, method), _ci(row["mae_ev"]), _ci(row.get("spearman")),
                     _ci(row.get("spearman_total")), _ci(row.get("ause_ratio"), 2), f"{_ci(row['nll_mean'], 2)} / {_optional(row['nll_median']['value'], 2)}",
                     _ci(row["coverage_68"], 2), _ci(row["coverage_95"], 2), _optional(row["median_width_95_ev"], 2),
                     _ci(row.get("zms"), 2), _ci(row.get("ence"), 2),
                     f"{cost['train_wall_s_per_seed']:.0f}", f"{cost['train_passes_per_seed']:,}",
                     f"{1000 * cost['inference_wall_s_per_structure']:.0f} "
                     f"({cost['inference_passes_per_structure']})"])
    return _table(["method", "seeds", "MAE (eV)", "Spearman ρ(epistemic std, \\|err\\|)",
                   "ρ(total std, \\|err\\|)", "AUSE / random", "NLL mean / median",
                   "cal. cov. 68%", "cal. cov. 95%", "median 95% width (eV)", "ZMS", "ENCE", "train s / seed",
                   "train passes / seed", "test ms / structure (passes)"], rows)


def _noise_only(value: float | None, spec: str = ".3f") -> str:
    """A noise-only expectation, or "undefined" where the reliability it needs is not positive."""
    return "undefined" if value is None else format(value, spec)


def training_passes_ratio(metrics: dict[str, Any], method: str, reference: str) -> float:
    """Training passes per seed (epochs × training structures; an ensemble's are all its members')
    of ``method`` over ``reference``'s: a cost that, unlike wall time, does not depend on how fast
    the machine was in the session that trained each fit (a reused fit keeps its own)."""
    table = metrics["table"]
    return table[method]["cost"]["train_passes_per_seed"] / table[reference]["cost"]["train_passes_per_seed"]


def claims_section(metrics: dict[str, Any]) -> str:
    claims = metrics["claims"]
    c1, c2, c3, c4 = (claims[k] for k in ("claim_1_correlation_vs_ensemble", "claim_2_improves_with_samples",
                                          "claim_3_accuracy", "claim_4_vs_best_bayesian_lora_peer"))
    d1, d4 = c1["spearman_difference"], c4["spearman_difference"]
    b2, k2 = c2["balora"], c2["control"]
    lines = [
        f"1. **{c1['statement']}: {c1['verdict']}.** ρ(BaLoRA) − ρ(ensemble) = {_ci(d1)} "
        f"(CI over seeds and structures; half-width {d1['half_width']:.3f}; BCa over structures only "
        f"[{_optional(d1['bca_structures_only']['ci_low'])}, {_optional(d1['bca_structures_only']['ci_high'])}])."
        + (f" Non-inferiority, declared before the run (ρ no more than {c1['non_inferiority']['margin_rho']} below "
           f"the ensemble's): **{c1['non_inferiority']['verdict']}**, at "
           f"{training_passes_ratio(metrics, 'balora', 'lora-ensemble'):.2f}× the ensemble's training passes "
           f"(epochs × structures; the recorded wall times give "
           f"{c1['non_inferiority']['training_cost_ratio_balora_over_ensemble']:.2f}×, but a reused fit keeps the "
           "wall time of the session that trained it, and this machine's speed varies between sessions)."
           if c1.get("non_inferiority") else ""),
        f"2. **{c2['statement']}: {c2['verdict']}.** BaLoRA's ρ goes {b2['spearman'][0]:.3f} → {b2['spearman'][-1]:.3f} "
        f"from S = {b2['sizes'][0]} to {b2['sizes'][-1]} (slope per doubling {_ci(b2['slope_per_doubling'])}); sampling "
        f"noise alone predicts a rise of {_noise_only(b2['noise_only_expected_rise'])}. The control "
        f"({_label(k2['method'])}) goes {k2['spearman'][0]:.3f} → {k2['spearman'][-1]:.3f} (noise alone: "
        f"{_noise_only(k2['noise_only_expected_rise'])}). "
        f"Rise of BaLoRA − rise of the control = {_ci(c2['rise_difference_balora_minus_control'])}. Rise beyond the "
        f"noise-only expectation: BaLoRA {_noise_only(b2['rise_beyond_noise'], '+.3f')}, the control "
        f"{_noise_only(k2['rise_beyond_noise'], '+.3f')} (a rise within that expectation is what a less noisy "
        "estimate of the same std gives; undefined where the std's split-half reliability at the smallest S is "
        "not positive).",
        f"3. **{c3['statement']}: {c3['verdict']}.** MAE(BaLoRA) − MAE(LoRA) = {_ci(c3['mae_difference_balora_minus_lora_ev'])} eV "
        f"against the margin {c3['margin_ev']} eV (non-inferiority: {c3['accuracy_part']}); mean per-structure distance to "
        f"full fine-tuning, BaLoRA − LoRA = {_ci(c3['distance_to_full_difference_balora_minus_lora_ev'])} eV (closer: "
        f"{c3['closer_part']}).",
        f"4. **{c4['statement']}: {c4['verdict']}.** ρ(BaLoRA) − ρ({_label(c4['peer'])}) = {_ci(d4)}.",
    ]
    return "\n".join(lines)


def peers_table(claim_1: dict[str, Any]) -> str:
    rows = [[_label(peer), _ci(entry["spearman_difference"]), f"{entry['spearman_difference']['half_width']:.3f}",
             entry["verdict"]] for peer, entry in claim_1.items()]
    return _table(["peer", "ρ(BaLoRA) − ρ(peer) [95% CI]", "CI half-width", "verdict"], rows)


def sweep_table(metrics: dict[str, Any]) -> str:
    sweeps = metrics["sweeps"]
    names = list(sweeps)
    sizes = sweeps[names[0]]["sizes"]
    header = ["S"] + [f"{_label(n)} ρ (noise-only expectation; split-half reliability)" for n in names]
    rows = [[str(size)] + [f"{sweeps[n]['spearman'][k]:.3f} ({_noise_only(sweeps[n]['noise_only_expected_spearman'][k])}; "
                           f"{sweeps[n]['split_half_reliability'][k]:.2f})" for n in names]
            for k, size in enumerate(sizes)]
    ensemble = [[m, f"{row['spearman']:.3f}", f"{row['mae_ev']:.3f}"] for m, row in metrics["ensemble_size_sweep"].items()]
    return (_table(header, rows) + "\n\nLoRA ensemble of the first M members:\n\n"
            + _table(["M", "ρ", "MAE (eV)"], ensemble))


def _recalibration(metrics: dict[str, Any]) -> str | None:
    """The recalibration of the total std the study applied to every method (its kind), or None."""
    return (metrics["setup"]["config"].get("recalibration") or {}).get("kind")


def recalibration_note(metrics: dict[str, Any]) -> str:
    """How the total std was recalibrated before ρ(total), ZMS, ENCE and the conformal step, if it was."""
    kind = _recalibration(metrics)
    return ("" if not kind else f", after the release's `{kind}` recalibration (docs/method.md §9), fitted per seed "
            "on the calibration split and applied to every method alike; the shift tables also give ρ(total) before it")


def shift_section(metrics: dict[str, Any]) -> str:
    parts = []
    kind = _recalibration(metrics)
    for name, shift in metrics["shift"].items():
        rows = [[_label(m), _ci(r["mae_ev"]), _ci(r.get("spearman")), _ci(r.get("spearman_total_raw") or r.get("spearman_total")),
                 *([_ci(r.get("spearman_total"))] if kind else []), _ci(r.get("zms"), 2), _ci(r.get("ence"), 2),
                 _ci(r["coverage_95"], 2)] for m, r in shift["table"].items()]
        header = ["method", "MAE (eV)", "ρ (epistemic)", "ρ (total)", *([f"ρ (total, {kind} recalibration)"] if kind else []),
                  "ZMS", "ENCE", "cal. cov. 95%"]
        parts.append(f"### {name} shift ({shift['n']} structures)\n\n" + _table(header, rows)
                     + "\n\nClaim 1 on this set (BaLoRA vs each peer, epistemic std):\n\n" + peers_table(shift["claim_1"]))
        if shift.get("claim_1_total"):
            parts.append("The std a user gets (total" + (f", after the {kind} recalibration" if kind else "")
                         + "), BaLoRA's against each method's:\n\n" + peers_table(shift["claim_1_total"]))
        for members, entry in shift.get("members_total_vs_ensemble", {}).items():
            parts.append(f"{_label(members)}, total std against the LoRA ensemble's: ρ difference "
                         f"{_ci(entry['spearman_difference'])} ({entry['verdict']}).")
    return "\n\n".join(parts)


def training_minutes(metrics: dict[str, Any]) -> float:
    """Training wall time recorded by the study's runs, summed over methods and seeds (min); an
    ensemble's cost is that of all its members."""
    setup = metrics["setup"]
    return sum(metrics["table"][m]["cost"]["train_wall_s_per_seed"] * len(seeds)
               for m, seeds in setup["seeds"].items()) / 60


def render_report(metrics: dict[str, Any]) -> str:
    setup = metrics["setup"]
    config = setup["config"]
    shift = config.get("shift", {})
    seeds = ", ".join(f"{_label(m)} {s}" for m, s in setup["seeds"].items())
    return f"""# Band-gap study: BaLoRA against the Bayesian-LoRA family (`{setup['profile']}` profile)

Backbone {setup['backbone']}, head `{setup['head']}`; {setup['subset_note']}. Train {setup['n_train']}, val
{setup['n_val']}, calibration {setup['n_calibration']}, test {setup['n_test']}. Shifted test sets: {', '.join(
        f'{k} {v}' for k, v in setup['n_shift'].items())} structures (size: {config['max_atoms']} < atoms ≤
{shift.get('size', {}).get('max_atoms', '–')}; chemistry: any of {', '.join(shift.get('chemistry', {}).get('held_out_metals', []))},
never in the split). Training seeds: {seeds} (LoRA's seeds are the ensemble's members; Laplace-LoRA is
fitted on each). Sampling methods use S = {setup['claim_samples']} samples. Code: `{setup['git_commit']}`{
        f" (report rendered by `{setup['rendered_by_git_commit']}`)" if setup.get('rendered_by_git_commit') else ''};
finished {setup['finished']} after {setup['wall_s'] / 60:.1f} min; its training runs recorded
{training_minutes(metrics):.1f} min of training in all (a rerun reuses finished runs, so it can take less). Split sha256 `{setup['split_sha256'][:16]}…`, labels
sha256 `{setup['labels_sha256'][:16]}…`; config, seeds and package versions are in metrics.json.

Every CI is a 95% bootstrap over training seeds (ensemble: members) and test structures together,
{setup['bootstrap']} resamples (docs/method.md §12); verdicts read it. The mean predictor's MAE is
{metrics['mean_predictor_mae_ev']:.3f} eV.

## Verdicts

{claims_section(metrics)}

## Every method on the test split

{method_table(metrics)}

ρ is Spearman's between the epistemic std and |error| (the quantity the claims are about); ρ(total)
uses the std a user gets, sqrt(epistemic² + σ_n(x)²) with each method's per-structure data-noise
head (docs/method.md §13; for deterministic methods σ_n(x) alone){recalibration_note(metrics)}. AUSE / random: the area between
the error-retention curve and the oracle's, over that of a random ranking (0 oracle, 1 random).
NLL and coverage use the conformal calibration fitted on the calibration split per seed, normalised
by the total std. Costs: training wall time per seed on 2 cores, as recorded by the session that
trained the fit (a reused fit keeps its own, so wall times from different sessions do not compare);
training passes per seed (epochs × training structures; an ensemble's are all its members'), which
do; test inference per structure, with the forward passes it takes.

![error retention](error_retention.png) ![cost](cost.png)

## Claim 1 against every uncertainty peer

{peers_table(metrics['claim_1_all_peers'])}

## Claim 2: ρ against S, and what sampling noise alone gives

Seed-0 models; the first S of S_max draws at each S. The noise-only expectation is
ρ(S_max)·√(rel(S)/rel(S_max)), rel being the split-half reliability of the S-sample std (draws
[0, S) against [S, 2S); above S_max/2 by the Spearman–Brown step-up).

{sweep_table(metrics)}

![rho vs S](rho_vs_S.png)

## Distribution shift

{shift_section(metrics)}

![parity BaLoRA](parity_balora.png) ![parity ensemble](parity_lora-ensemble.png)
"""


def readme_block(metrics: dict[str, Any], relative: str) -> str:
    """The README's results section: verdicts and the method table, linking the full report."""
    setup = metrics["setup"]
    verdicts = claims_section(metrics)  # with each verdict's numbers, so no "holds" stands without them
    return (f"Latest `{setup['profile']}` run ({setup['finished']}, {setup['n_test']} test structures, backbone "
            f"{setup['backbone']}, code `{setup['git_commit'][:12]}`; CIs over training seeds and test structures):\n\n"
            f"{verdicts}\n\n{method_table(metrics)}\n\n![rho vs S]({relative}/rho_vs_S.png)\n\n"
            f"Full report: [{relative}/report.md]({relative}/report.md)")


def write_generated_block(path: Path, marker: str, body: str, *, generated_by: str, before: str | None = None) -> None:
    """Replace the Markdown block between ``<!-- marker:start ... -->`` and ``<!-- marker:end -->``
    in ``path`` by ``body`` (atomically). A file without the block gets it inserted before the first
    occurrence of ``before``, else appended."""
    block = f"<!-- {marker}:start (generated by {generated_by}; do not edit) -->\n{body}\n<!-- {marker}:end -->"
    text = path.read_text()
    pattern = rf"<!-- {re.escape(marker)}:start.*?<!-- {re.escape(marker)}:end -->"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: block, text, flags=re.S)
    elif before is not None and before in text:
        text = text.replace(before, f"{block}\n\n{before}", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    write_text_atomic(path, text)
