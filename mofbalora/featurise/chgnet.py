"""CHGNet's own crystal-graph converter (atom graph 6 Å, bond graph 3 Å), as CHGNet 0.3.0 uses it."""

from __future__ import annotations

from typing import Any

from chgnet.graph import CrystalGraph, CrystalGraphConverter
from pymatgen.core import Structure

from mofbalora.data.structures import structure_content_key
from mofbalora.featurise.base import Featuriser


class CHGNetFeaturiser(Featuriser):
    name = "chgnet"
    upstream_packages = ("chgnet", "pymatgen")

    def __init__(self, *, atom_graph_cutoff_angstrom: float = 6.0, bond_graph_cutoff_angstrom: float = 3.0) -> None:
        self.atom_graph_cutoff_angstrom = atom_graph_cutoff_angstrom
        self.bond_graph_cutoff_angstrom = bond_graph_cutoff_angstrom
        self._converter: CrystalGraphConverter | None = None

    def config(self) -> dict[str, Any]:
        return {
            "atom_graph_cutoff_angstrom": self.atom_graph_cutoff_angstrom,
            "bond_graph_cutoff_angstrom": self.bond_graph_cutoff_angstrom,
        }

    @property
    def converter(self) -> CrystalGraphConverter:
        if self._converter is None:
            self._converter = CrystalGraphConverter(
                atom_graph_cutoff=self.atom_graph_cutoff_angstrom,
                bond_graph_cutoff=self.bond_graph_cutoff_angstrom,
                algorithm="fast",
                on_isolated_atoms="error",
                verbose=False,
            )
        return self._converter

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_converter": None}

    def featurise(self, structure: Structure, structure_id: str) -> CrystalGraph:
        graph = self.converter(structure, graph_id=structure_id)
        graph.content_key = structure_content_key(structure)
        return graph
