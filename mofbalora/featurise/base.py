"""The featuriser interface every backbone's featuriser implements (the registry is the package's ``get_featuriser``)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from importlib.metadata import version
from typing import Any, Sequence

import numpy as np
from pymatgen.core import Structure

from mofbalora.data.structures import READER_RULES

#: bumped when samples gain or change fields, so older cache entries are rebuilt (2: content_key;
#: 3: the content key on a shifted grid, robust to float noise)
SAMPLE_FORMAT = 3


class Featuriser(ABC):
    """Turns one pymatgen ``Structure`` into one backbone-ready graph sample (CPU tensors)."""

    #: registry name, equal to the backbone's
    name: str
    #: distributions whose version changes the features
    upstream_packages: tuple[str, ...] = ()
    #: bumped when this featuriser's output changes under the same config; part of the cache key
    rules: int = 1

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Every setting that changes the output; part of the cache key."""

    @abstractmethod
    def featurise(self, structure: Structure, structure_id: str) -> Any:
        """Build the graph sample for one structure."""

    def cache_tag(self) -> str:
        """Featuriser config plus package versions, as a stable string."""
        versions = {pkg: version(pkg) for pkg in ("mofbalora", *self.upstream_packages)}
        return json.dumps({"name": self.name, "config": self.config(), "versions": versions,
                           "sample_format": SAMPLE_FORMAT, "reader_rules": READER_RULES,
                           "featuriser_rules": self.rules}, sort_keys=True)


def sample_num_atoms(sample: Any) -> int:
    """Atoms in the cell of a featurised sample (every featuriser keeps ``atomic_number``)."""
    return int(len(sample.atomic_number))


#: columns of :func:`element_counts`: atomic numbers 0..118
N_ELEMENT_COLUMNS = 119


def element_counts(samples: Sequence[Any]) -> np.ndarray:
    """Atoms per element in each featurised sample's cell, [n, N_ELEMENT_COLUMNS] int64 (column = Z)."""
    if not len(samples):
        return np.zeros((0, N_ELEMENT_COLUMNS), dtype=np.int64)
    return np.stack([np.bincount(np.asarray(sample.atomic_number, dtype=np.int64), minlength=N_ELEMENT_COLUMNS)
                     for sample in samples])


def _metal_columns() -> np.ndarray:
    from pymatgen.core.periodic_table import Element

    return np.array([z >= 1 and Element.from_Z(z).is_metal for z in range(N_ELEMENT_COLUMNS)])


def metal_family(counts: np.ndarray) -> np.ndarray:
    """The metal family of each cell, [n] int: the atomic number of the metal (pymatgen's
    ``Element.is_metal``) with the most atoms in the cell, the heavier one on a tie; 0 when the
    cell has no metal. ``counts``: :func:`element_counts` [n, N_ELEMENT_COLUMNS]."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != N_ELEMENT_COLUMNS:
        raise ValueError(f"counts must have shape [n, {N_ELEMENT_COLUMNS}], got {counts.shape}")
    metals = np.where(_metal_columns()[None, :], counts, 0)
    heaviest_of_most = N_ELEMENT_COLUMNS - 1 - np.argmax(metals[:, ::-1], axis=1)
    return np.where(metals.max(axis=1) > 0, heaviest_of_most, 0)
