"""Which structures to compute next: batch-aware acquisition over a predicted pool (docs/method.md §15; ours).

Two goals:

- ``learn`` (improve the model): the largest calibrated total std first, the structures the model
  is least sure of;
- ``window:LO:HI`` (find MOFs with a gap in the window): an upper confidence bound on the hit,
  P + β·√(P(1 − P)) with P = ``p_in_window`` and β = 1: the expected hit plus one standard deviation
  of it. It rises with P up to P ≈ 0.85 and falls after, so below 0.85 it orders as P does; above,
  a likely hit whose label still teaches something (P ≈ 0.85) passes a near-certain one (P ≈ 1).

Either way the batch is built greedily and is batch-aware: once a structure is picked, every
structure whose frozen crystal embedding lies within the near-duplicate radius of it leaves the
batch, so that no two near-duplicates (the same framework with other solvent, a polymorph) share
one. The radius is the 10th percentile of the candidates' nearest-neighbour distances unless given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from mofbalora.uncertainty.intervals import check_window

#: β of the window goal's upper confidence bound on a hit
WINDOW_BETA = 1.0
#: candidates scored in full (embedded) per pick of the budget: the rest cannot enter the batch
CANDIDATES_PER_PICK = 20
#: the near-duplicate radius: this percentile of the candidates' nearest-neighbour embedding distances
NEAR_DUPLICATE_PERCENTILE = 10.0


@dataclass(frozen=True)
class Goal:
    """What the next DFT calculations are for: ``learn`` or ``window`` (with ``window_ev``)."""

    kind: Literal["learn", "window"]
    window_ev: tuple[float, float] | None = None

    def __str__(self) -> str:
        return "learn" if self.kind == "learn" else f"window:{self.window_ev[0]:g}:{self.window_ev[1]:g}"


def parse_goal(text: str) -> Goal:
    """``learn`` or ``window:LO:HI`` (eV, LO < HI).

    Raises:
        ValueError: anything else, naming what is expected.
    """
    if text == "learn":
        return Goal("learn")
    kind, _, window = text.partition(":")
    if kind != "window" or not window:
        raise ValueError(f"goal must be 'learn' or 'window:LO:HI' (eV), got {text!r}")
    try:
        return Goal("window", check_window([float(x) for x in window.split(":")]))
    except ValueError as exc:
        raise ValueError(f"goal {text!r}: expected window:LO:HI with LO < HI in eV ({exc})") from exc


def check_budget(budget: int, pool_size: int) -> None:
    """Refuse a budget below 1 or larger than the pool (after exclusions)."""
    if budget < 1:
        raise ValueError(f"the budget must be at least 1, got {budget}")
    if pool_size == 0:
        raise ValueError("the pool is empty: no structure left to suggest")
    if budget > pool_size:
        raise ValueError(f"the budget ({budget}) is larger than the pool ({pool_size} structures left to suggest)")


def acquisition(table: pd.DataFrame, goal: Goal) -> np.ndarray:
    """The acquisition value of each row of a prediction table (``bandgap_std_ev``, and
    ``p_in_window`` for the window goal)."""
    if goal.kind == "learn":
        return table["bandgap_std_ev"].to_numpy(float)
    p = table["p_in_window"].to_numpy(float)
    return p + WINDOW_BETA * np.sqrt(p * (1.0 - p))


def near_duplicate_radius(embeddings: np.ndarray) -> float:
    """The :data:`NEAR_DUPLICATE_PERCENTILE` th percentile of each embedding's distance to its nearest other."""
    if len(embeddings) < 2:
        return 0.0
    distances, _ = NearestNeighbors(n_neighbors=2).fit(embeddings).kneighbors(embeddings)
    return float(np.percentile(distances[:, 1], NEAR_DUPLICATE_PERCENTILE))


def select_batch(values: np.ndarray, embeddings: np.ndarray, budget: int, radius: float) -> list[int]:
    """Greedy batch: the highest value left, then every candidate within ``radius`` of it leaves; ties
    keep the input order. Returns the row indices in the order to compute them (fewer than ``budget``
    only when near-duplicates leave too few)."""
    order = np.argsort(-values, kind="stable")
    alive = np.ones(len(values), dtype=bool)
    picks: list[int] = []
    for index in order:
        if not alive[index]:
            continue
        picks.append(int(index))
        if len(picks) == budget:
            break
        alive &= np.linalg.norm(embeddings - embeddings[index], axis=1) > radius
    return picks


def suggest_from_predictions(table: pd.DataFrame, embeddings: np.ndarray, *, budget: int, goal: Goal,
                             radius: float | None = None) -> pd.DataFrame:
    """The batch of ``budget`` structures from a prediction table's rows (all predicted) and their
    frozen embeddings [n, dim]: columns ``rank, id, bandgap_mean_ev, bandgap_std_ev,
    [p_in_window,] acquisition, reason``."""
    check_budget(budget, len(table))
    values = acquisition(table, goal)
    radius = near_duplicate_radius(embeddings) if radius is None else radius
    picks = select_batch(values, embeddings, budget, radius)
    chosen = table.iloc[picks].reset_index(drop=True)
    out = pd.DataFrame({"rank": np.arange(1, len(chosen) + 1), "id": chosen["id"],
                        "bandgap_mean_ev": chosen["bandgap_mean_ev"], "bandgap_std_ev": chosen["bandgap_std_ev"]})
    if goal.kind == "window":
        out["p_in_window"] = chosen["p_in_window"]
    out["acquisition"] = values[picks]
    out["reason"] = [_reason(row, goal) for row in chosen.itertuples()]
    return out


def _reason(row: Any, goal: Goal) -> str:
    flag = "; out of distribution" if getattr(row, "out_of_distribution", False) else ""
    if goal.kind == "learn":
        return f"total std {row.bandgap_std_ev:.2f} eV, among the largest in the pool{flag}"
    low, high = goal.window_ev
    return f"P(gap in {low:g}-{high:g} eV) = {row.p_in_window:.2f} around a mean of {row.bandgap_mean_ev:.2f} eV{flag}"


def embeddings_of(model: Any, table: pd.DataFrame, slots_by_id: dict[str, Any], *,
                  cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Frozen crystal embeddings of the table's rows, featurised again (from the feature cache);
    ``slots_by_id``: each id's CIF path (``str`` or ``Path``), Structure or Atoms."""
    ids = list(table["id"])
    slots = [Path(slots_by_id[i]) if isinstance(slots_by_id[i], str) else slots_by_id[i] for i in ids]
    feats, _ = model.featurise_inputs(slots, ids, cache_dir=cache_dir, workers=0, progress=False)
    return model.frozen_embeddings(feats)


def shortlist(table: pd.DataFrame, goal: Goal, budget: int) -> pd.DataFrame:
    """The rows that can enter a batch of ``budget``: the :data:`CANDIDATES_PER_PICK` × budget best
    by acquisition value (embedding every structure of a large pool would cost a second screen)."""
    keep = np.argsort(-acquisition(table, goal), kind="stable")[:CANDIDATES_PER_PICK * budget]
    return table.iloc[np.sort(keep)].reset_index(drop=True)


def predicted_pool(table: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """The predicted rows of a pool's prediction table that are not excluded (already computed)."""
    excluded = set(exclude)
    return table[(table["status"] == "ok") & ~table["id"].isin(excluded)].reset_index(drop=True)
