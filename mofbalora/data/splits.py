"""Deterministic train/val/calibration/test splits by seed, saved as id lists so every method sees the same one.

The calibration part is used only to fit the conformal calibrator and the OOD thresholds after
training: never for early stopping nor for choosing hyperparameters (those use val).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mofbalora.data.io import write_text_atomic


@dataclass(frozen=True)
class Split:
    """Id lists of one split."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    method: str
    calibration: list[str] = field(default_factory=list)

    PARTS = ("train", "val", "calibration", "test")

    def part(self, name: str) -> list[str]:
        if name not in self.PARTS:
            raise ValueError(f"split part must be one of {self.PARTS}, got {name!r}")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """sha256 of the id lists, recorded with every model and report."""
        payload = json.dumps({p: self.part(p) for p in self.PARTS}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        return cls(**json.loads(Path(path).read_text()))


def make_split(
    ids: list[str],
    targets: np.ndarray | pd.Series | None = None,
    *,
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
    seed: int = 0,
    method: Literal["random", "stratified"] = "random",
    n_strata: int = 10,
) -> Split:
    """Split ids into train/val/test, or train/val/calibration/test with four fractions.

    Args:
        ids: structure ids; the result does not depend on their order.
        targets: band gaps (eV), needed for ``method="stratified"`` (quantile strata).
        fractions: train, val, test (three) or train, val, calibration, test (four); must sum to 1.
        seed: the split is a pure function of (sorted ids, targets, fractions, seed, method).
    """
    if len(fractions) not in (3, 4):
        raise ValueError(f"fractions must have 3 (train, val, test) or 4 (train, val, calibration, test) values, got {fractions}")
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    if method not in ("random", "stratified"):
        raise ValueError(f"method must be 'random' or 'stratified', got {method!r}")
    order = np.argsort(np.asarray(ids, dtype=object).astype(str), kind="stable")
    sorted_ids = [str(ids[i]) for i in order]
    if len(set(sorted_ids)) != len(sorted_ids):
        raise ValueError("ids must be unique")
    rng = np.random.default_rng(seed)
    if method == "random":
        groups = [np.arange(len(sorted_ids))]
    else:
        if targets is None:
            raise ValueError("a stratified split needs targets")
        values = np.asarray(targets, dtype=float)[order]
        edges = np.quantile(values, np.linspace(0, 1, n_strata + 1)[1:-1])
        strata = np.searchsorted(edges, values, side="right")
        groups = [np.flatnonzero(strata == s) for s in range(n_strata)]
    names = ("train", "val", "test") if len(fractions) == 3 else ("train", "val", "calibration", "test")
    parts: dict[str, list[int]] = {name: [] for name in names}
    for group in groups:
        shuffled = rng.permutation(group)
        start = 0
        for name, fraction in zip(names[:-1], fractions[:-1]):
            count = int(round(fraction * len(shuffled)))
            parts[name] += shuffled[start : start + count].tolist()
            start += count
        parts[names[-1]] += shuffled[start:].tolist()
    pick = lambda idx: sorted(sorted_ids[i] for i in idx)  # noqa: E731
    return Split(pick(parts["train"]), pick(parts["val"]), pick(parts["test"]), seed, method,
                 calibration=pick(parts.get("calibration", [])))


def check_disjoint(selection: dict[str, list[str]], held_out: dict[str, list[str]]) -> None:
    """Refuse a selection set (ids that choose a model or a setting) holding any held-out id.

    Args:
        selection: name -> ids used for selection (validation sets).
        held_out: name -> ids that must stay unseen by selection (test, calibration, shifted test sets).

    Raises:
        ValueError: naming the first overlapping pair, its size and a few of the ids.
    """
    for chosen_name, chosen in selection.items():
        chosen_ids = set(chosen)
        for held_name, held in held_out.items():
            overlap = sorted(chosen_ids.intersection(held))
            if overlap:
                raise ValueError(f"selection set {chosen_name!r} holds {len(overlap)} ids of {held_name!r} "
                                 f"(e.g. {', '.join(overlap[:3])}); they must not steer any choice")
