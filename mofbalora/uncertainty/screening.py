"""Rank candidate structures for a band-gap window, with out-of-distribution flags."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mofbalora.uncertainty.intervals import window_probability


def rank_by_window(predictions: pd.DataFrame, low_ev: float, high_ev: float, *,
                   ood_std_threshold_ev: float | None) -> pd.DataFrame:
    """Add ``p_in_window`` and ``out_of_distribution``; sort by probability, skipped rows last.

    Ties (e.g. deterministic models, probability 0 or 1) are broken by the distance of the mean
    from the window centre.
    """
    table = predictions.copy()
    ok = table["status"] == "ok"
    table["p_in_window"] = np.nan
    table.loc[ok, "p_in_window"] = window_probability(
        table.loc[ok, "bandgap_mean_ev"].to_numpy(), table.loc[ok, "bandgap_std_ev"].to_numpy(), low_ev, high_ev)
    threshold = np.inf if ood_std_threshold_ev is None else ood_std_threshold_ev
    table["out_of_distribution"] = ok & (table["bandgap_std_ev"].fillna(0.0) > threshold)
    centre_distance = (table["bandgap_mean_ev"] - (low_ev + high_ev) / 2).abs()
    table = table.assign(_missing=~ok, _centre=centre_distance)
    table = table.sort_values(["_missing", "p_in_window", "_centre"], ascending=[True, False, True], kind="stable")
    table = table.drop(columns=["_missing", "_centre"]).reset_index(drop=True)
    table.insert(0, "rank", np.where(table["status"] == "ok", np.arange(1, len(table) + 1), 0))
    return table


def screening_summary(ranked: pd.DataFrame, low_ev: float, high_ev: float, *, ood_std_threshold_ev: float | None,
                      top: int = 10) -> str:
    """A short Markdown summary of a ranked screen."""
    ok = ranked[ranked["status"] == "ok"]
    threshold = "none (deterministic model)" if ood_std_threshold_ev is None else f"{ood_std_threshold_ev:.3f} eV"
    lines = [
        f"# Screen for band gap {low_ev:g}–{high_ev:g} eV",
        "",
        f"- inputs: {len(ranked)}; predicted: {len(ok)}; skipped: {len(ranked) - len(ok)}",
        f"- expected number in window (sum of probabilities): {ok['p_in_window'].sum():.1f}",
        f"- flagged out of distribution (std > {threshold}): {int(ok['out_of_distribution'].sum())}",
        "",
        "| rank | id | gap mean (eV) | std (eV) | P(in window) | OOD |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in ok.head(top).itertuples():
        lines.append(f"| {row.rank} | {row.id} | {row.bandgap_mean_ev:.2f} | {row.bandgap_std_ev:.3f} | "
                     f"{row.p_in_window:.2f} | {'yes' if row.out_of_distribution else ''} |")
    return "\n".join(lines) + "\n"
