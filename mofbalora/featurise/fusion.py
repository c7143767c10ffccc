"""CGCNN's crystal graph with SevenNet-0's pooled block-1 invariants beside it (late fusion; issue 44).

The graph is :class:`CGCNNFeaturiser`'s, unchanged; ``sevennet_pooled`` [1, 256] is the mean and
max over atoms of SevenNet-0's block-1 invariant features, from the network cut after block 1
(:class:`SevenNetFeaturiser` with ``through_block=1``). The backbone that reads it is
``backbones/fusion.py`` (docs/method.md §16).
"""

from __future__ import annotations

from typing import Any

from pymatgen.core import Structure

from mofbalora.featurise.base import Featuriser
from mofbalora.featurise.cgcnn import CGCNNFeaturiser, CGCNNGraph
from mofbalora.featurise.sevennet import EARLY_BLOCK, SevenNetFeaturiser

#: the SevenNet-0 block whose pooled invariants are fused
FUSED_BLOCK = EARLY_BLOCK


class CGCNNSevenNetFeaturiser(Featuriser):
    name = "cgcnn-sevennet"
    upstream_packages = tuple(dict.fromkeys(CGCNNFeaturiser.upstream_packages + SevenNetFeaturiser.upstream_packages))

    def __init__(self) -> None:
        self.graph = CGCNNFeaturiser()
        self.sevennet = SevenNetFeaturiser(atom_blocks=(FUSED_BLOCK,), through_block=FUSED_BLOCK)

    def config(self) -> dict[str, Any]:
        return {"cgcnn": self.graph.config(), "cgcnn_rules": self.graph.rules, "sevennet": self.sevennet.config()}

    def featurise(self, structure: Structure, structure_id: str) -> CGCNNGraph:
        graph = self.graph.featurise(structure, structure_id)  # refuses what CGCNN refuses, first (cheap)
        graph.sevennet_pooled = self.sevennet.featurise(structure, structure_id).pooled[:, FUSED_BLOCK]
        return graph
