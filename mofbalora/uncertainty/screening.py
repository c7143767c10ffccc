"""Rank candidate structures for a band-gap window by their calibrated window probability."""

from __future__ import annotations

import numpy as np
import pandas as pd


def rank_by_window(predictions: pd.DataFrame, low_ev: float, high_ev: float, *,
                   in_distribution_first: bool = False) -> pd.DataFrame:
    """Sort a prediction table with ``p_in_window`` by probability, skipped rows last; add ``rank``.

    Ties are broken by the distance of the mean from the window centre, then by id, so the ranking
    does not depend on the order of the inputs (duplicate structures tie exactly). With
    ``in_distribution_first``, every structure flagged ``out_of_distribution`` ranks after every
    unflagged one (each group by probability): the calibration says little about flagged ones.
    """
    if "p_in_window" not in predictions:
        raise ValueError("predictions need a p_in_window column (BandgapModel.predict(..., window_ev=...))")
    if in_distribution_first and "out_of_distribution" not in predictions:
        raise ValueError("in_distribution_first needs an out_of_distribution column")
    table = predictions.copy()
    ok = table["status"] == "ok"
    centre_distance = (table["bandgap_mean_ev"] - (low_ev + high_ev) / 2).abs()
    flagged = table["out_of_distribution"].fillna(True).astype(bool) if in_distribution_first else False
    table = table.assign(_missing=~ok, _flagged=flagged, _centre=centre_distance)
    table = table.sort_values(["_missing", "_flagged", "p_in_window", "_centre", "id"],
                              ascending=[True, True, False, True, True], kind="stable")
    table = table.drop(columns=["_missing", "_flagged", "_centre"]).reset_index(drop=True)
    table.insert(0, "rank", np.where(table["status"] == "ok", np.arange(1, len(table) + 1), 0))
    return table


def screening_summary(ranked: pd.DataFrame, low_ev: float, high_ev: float, *, top: int = 10) -> str:
    """A short Markdown summary of a ranked screen (PBE band gaps, calibrated 95% intervals)."""
    ok = ranked[ranked["status"] == "ok"]
    lines = [
        f"# Screen for PBE band gap {low_ev:g}–{high_ev:g} eV",
        "",
        f"- inputs: {len(ranked)}; predicted: {len(ok)}; skipped: {len(ranked) - len(ok)}",
        f"- expected number in window (sum of calibrated probabilities): {ok['p_in_window'].sum():.1f}",
        # 0.9, not 0.99: a model with a 0.3 eV typical error puts no candidate above 0.99
        f"- P(in window) ≥ 0.9: {int((ok['p_in_window'] >= 0.9).sum())}; ≥ 0.5: {int((ok['p_in_window'] >= 0.5).sum())}",
        f"- flagged out of distribution: {int(ok['out_of_distribution'].sum())}",
        "",
        "| rank | id | gap mean (eV) | 95% interval (eV) | P(in window) | OOD |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in ok.head(top).itertuples():
        cell_id = str(row.id).replace("|", "\\|")  # a '|' in a file name would split the row
        lines.append(f"| {row.rank} | {cell_id} | {row.bandgap_mean_ev:.2f} | {row.lower_95_ev:.2f}–{row.upper_95_ev:.2f} | "
                     f"{row.p_in_window:.2f} | {row.ood_reason if row.out_of_distribution else ''} |")
    return "\n".join(lines) + "\n"
