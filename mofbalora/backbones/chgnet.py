"""CHGNet 0.3.0 (Deng et al. 2023) as a frozen graph encoder with a new band-gap head.

The crystal embedding is the mean over atoms of CHGNet's last, layer-normalised atom features
(64-d). CHGNet's energy readout, magmom and composition model are not used.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from importlib.metadata import version
from typing import Sequence

import torch
from chgnet.graph import CrystalGraph
from chgnet.model import CHGNet
from chgnet.model.model import BatchedGraph
from torch import nn

from mofbalora.backbones.base import GraphBackbone, mean_pool
from mofbalora.featurise.chgnet import CHGNetFeaturiser


@dataclass
class CHGNetBatch:
    """A list of CHGNet crystal graphs; batched on the fly by the model's basis expansions."""

    graphs: list[CrystalGraph]

    def __len__(self) -> int:
        return len(self.graphs)


class CHGNetBackbone(GraphBackbone):
    name = "chgnet"
    module_entities = {
        r"^chgnet\.bond_(embedding|weights_ag|weights_bg)$": "bond",
        r"^chgnet\.angle_embedding$": "angle",
        r"^chgnet\.atom_conv_layers\.\d+\.twoBody_atom\.": "edge",
        r"^chgnet\.atom_conv_layers\.\d+\.mlp_out\.": "atom",
        r"^chgnet\.bond_conv_layers\.\d+\.twoBody_bond\.": "angle",
        r"^chgnet\.bond_conv_layers\.\d+\.mlp_out\.": "bond",
        r"^chgnet\.angle_layers\.\d+\.twoBody_bond\.": "angle",
        r"^head\.": "crystal",
    }

    def __init__(self, *, model_name: str = "0.3.0", head_hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints on load
            self.chgnet = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
        self.model_name = model_name
        dim = self._embedding_dim = self.chgnet.atom_fea_dim
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.head = nn.Sequential(nn.Linear(dim, head_hidden), nn.SiLU(), nn.Linear(head_hidden, 1))
        torch.random.set_rng_state(generator_state)
        self._cache: tuple[CHGNetBatch, BatchedGraph] | None = None
        self.eval()

    @property
    def version(self) -> str:
        return f"chgnet=={version('chgnet')}/{self.model_name}"

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def make_featuriser(self) -> CHGNetFeaturiser:
        return CHGNetFeaturiser()

    def collate(self, samples: Sequence[CrystalGraph]) -> CHGNetBatch:
        return CHGNetBatch(list(samples))

    def num_graphs(self, batch: CHGNetBatch) -> int:
        return len(batch.graphs)

    def repeat_batch(self, batch: CHGNetBatch, copies: int) -> CHGNetBatch:
        return CHGNetBatch(batch.graphs * copies)

    def batched(self, batch: CHGNetBatch) -> BatchedGraph:
        """The assembled graph. Reused for the same batch object while the basis expansions are
        frozen (their output is then a constant); rebuilt each time when they are being trained."""
        expansions = (self.chgnet.bond_basis_expansion, self.chgnet.angle_basis_expansion)
        trainable = torch.is_grad_enabled() and any(p.requires_grad for m in expansions for p in m.parameters())
        if not trainable and self._cache is not None and self._cache[0] is batch:
            return self._cache[1]
        # No forces or stresses are needed, so geometry never needs a gradient; only trainable
        # basis expansions (full fine-tuning) are built with autograd.
        with torch.set_grad_enabled(trainable):
            graph = BatchedGraph.from_graphs(
                batch.graphs,
                bond_basis_expansion=self.chgnet.bond_basis_expansion,
                angle_basis_expansion=self.chgnet.angle_basis_expansion,
                compute_stress=False,
            )
        # Holding the batch itself keeps `is` from matching a recycled object id.
        self._cache = None if trainable else (batch, graph)
        return graph

    def graph_index(self, batch: CHGNetBatch) -> dict[str, torch.Tensor]:
        g = self.batched(batch)
        atom = g.atom_owners.long()
        edge = atom[g.batched_atom_graph[:, 0]]
        bond = torch.zeros(len(g.bond_bases_ag), dtype=torch.long, device=atom.device)
        bond[g.directed2undirected] = edge
        angle = atom[g.batched_bond_graph[:, 0].long()] if len(g.angle_bases) else atom.new_zeros(0)
        crystal = torch.arange(self.num_graphs(batch), device=atom.device)
        return {"atom": atom, "edge": edge, "bond": bond, "angle": angle, "crystal": crystal}

    def embed(self, batch: CHGNetBatch) -> torch.Tensor:
        net, g = self.chgnet, self.batched(batch)
        atom_feas = net.atom_embedding(g.atomic_numbers - 1)
        bond_feas = net.bond_embedding(g.bond_bases_ag)
        bond_weights_ag = net.bond_weights_ag(g.bond_bases_ag)
        bond_weights_bg = net.bond_weights_bg(g.bond_bases_bg)
        has_angles = len(g.angle_bases) != 0
        angle_feas = net.angle_embedding(g.angle_bases) if has_angles else None
        layers = zip(net.atom_conv_layers[:-1], net.bond_conv_layers, net.angle_layers, strict=False)
        for atom_layer, bond_layer, angle_layer in layers:
            atom_feas = atom_layer(
                atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=bond_weights_ag,
                atom_graph=g.batched_atom_graph, directed2undirected=g.directed2undirected,
            )
            if has_angles and bond_layer is not None:
                bond_feas = bond_layer(
                    atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=bond_weights_bg,
                    angle_feas=angle_feas, bond_graph=g.batched_bond_graph,
                )
                if angle_layer is not None:
                    angle_feas = angle_layer(
                        atom_feas=atom_feas, bond_feas=bond_feas, angle_feas=angle_feas,
                        bond_graph=g.batched_bond_graph,
                    )
        atom_feas = net.atom_conv_layers[-1](
            atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=bond_weights_ag,
            atom_graph=g.batched_atom_graph, directed2undirected=g.directed2undirected,
        )
        if net.readout_norm is not None:
            atom_feas = net.readout_norm(atom_feas)
        return mean_pool(atom_feas, g.atom_owners.long(), self.num_graphs(batch))
