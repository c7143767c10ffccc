"""SevenNet-0 (Park et al. 2024; the ``sevenn`` wheel's ``7net-0``) as a frozen, cached encoder (issue 44).

Everything up to the interaction blocks' outputs runs once per structure in the featuriser
(``featurise/sevennet.py``) and is cached by content, so an epoch runs only what trains. The
crystal embedding z(x) is the mean over atoms of one block's invariant (0e) features,
``read_block`` (the last, 4, by default: the features SevenNet's own readout reads).

The head is SevenNet's pretrained readout, ``reduce_input_to_hidden`` (128x0e -> 64x0e) and
``reduce_hidden_to_energy`` (64x0e -> 1x0e). Both are e3nn linear maps between scalar irreps only,
which are plain linear maps with e3nn's path normalisation 1/√fan_in folded into the weights, so
they become ``nn.Linear`` layers exactly (LoRA and BaLoRA wrap them like any other; a LoRA on
e3nn's equivariant paths, 1e/2e, would need per-irrep adapters and is not offered). The readout is
linear, so on the mean-pooled block-4 embedding it equals the mean over atoms of SevenNet's scaled
atomic energies (tests/test_sevennet.py checks it against the uncached forward).
"""

from __future__ import annotations

import math
from functools import lru_cache
from importlib.metadata import version
from typing import Sequence

import torch
from torch import nn
from torch_geometric.data import Batch

from mofbalora.backbones.base import GraphBackbone, mean_pool
from mofbalora.featurise.sevennet import CHECKPOINT, EARLY_BLOCK, N_SCALARS, SevenNetFeaturiser, load_sevennet


def linear_from_e3nn(irreps_linear: nn.Module) -> nn.Linear:
    """A SevenNet ``IrrepsLinear`` between scalar irreps (``Nx0e -> Mx0e``), no bias, as ``nn.Linear``.

    Raises:
        ValueError: for a map with non-scalar irreps, which is not a plain matrix.
    """
    inner = irreps_linear.linear
    if any(ir.l != 0 for _, ir in inner.irreps_in) or any(ir.l != 0 for _, ir in inner.irreps_out):
        raise ValueError(f"{inner}: only scalar (0e) maps become nn.Linear")
    n_in, n_out = inner.irreps_in.dim, inner.irreps_out.dim
    layer = nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(inner.weight.detach().reshape(n_in, n_out).T / math.sqrt(n_in))
    return layer


@lru_cache(maxsize=2)
def _readout_weights(checkpoint: str) -> tuple[torch.Tensor, torch.Tensor]:
    model, _ = load_sevennet(checkpoint)  # ~3 s: loaded once per process
    return tuple(linear_from_e3nn(model._modules[key]).weight.detach()
                 for key in ("reduce_input_to_hidden", "reduce_hidden_to_energy"))


def pretrained_readout(checkpoint: str = CHECKPOINT) -> "SevenNetReadout":
    """A fresh copy of the checkpoint's readout as ``nn.Linear`` layers."""
    hidden_weight, out_weight = _readout_weights(checkpoint)
    hidden, out = nn.Linear(*hidden_weight.shape[::-1], bias=False), nn.Linear(*out_weight.shape[::-1], bias=False)
    with torch.no_grad():
        hidden.weight.copy_(hidden_weight)
        out.weight.copy_(out_weight)
    return SevenNetReadout(hidden, out)


class SevenNetReadout(nn.Module):
    """SevenNet-0's linear readout: [G, 128] -> [G, 1] (scaled energy per atom on a pooled input)."""

    def __init__(self, hidden: nn.Linear, out: nn.Linear) -> None:
        super().__init__()
        self.hidden = hidden
        self.out = out

    def features(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        """What the last layer reads, [G, 64]."""
        return self.hidden(crystal_fea)

    def forward(self, crystal_fea: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(crystal_fea))


class SevenNetBackbone(GraphBackbone):
    """Cached SevenNet-0 block features with SevenNet's readout as the (adaptable) head."""

    name = "sevennet"
    module_entities = {r"^head\.": "crystal"}

    def __init__(self, *, checkpoint: str = CHECKPOINT, read_block: int = 4, atom_blocks: tuple[int, ...] = (1, 4),
                 through_block: int | None = None) -> None:
        super().__init__()
        if read_block not in atom_blocks:
            raise ValueError(f"read_block {read_block} is not among the cached atom_blocks {atom_blocks}")
        self.checkpoint, self.read_block, self.atom_blocks = checkpoint, read_block, tuple(atom_blocks)
        self.through_block = through_block
        self.head = pretrained_readout(checkpoint)
        self.eval()

    @property
    def version(self) -> str:
        return f"sevenn=={version('sevenn')}/{self.checkpoint}/block{self.read_block}"

    @property
    def embedding_dim(self) -> int:
        return N_SCALARS

    def make_featuriser(self) -> SevenNetFeaturiser:
        return SevenNetFeaturiser(checkpoint=self.checkpoint, atom_blocks=self.atom_blocks,
                                  through_block=self.through_block)

    def collate(self, samples: Sequence[object]) -> Batch:
        return Batch.from_data_list(list(samples), exclude_keys=["structure_id"])

    def num_graphs(self, batch: Batch) -> int:
        return int(batch.num_graphs)

    def graph_index(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"atom": batch.batch, "crystal": torch.arange(self.num_graphs(batch), device=batch.batch.device)}

    def repeat_batch(self, batch: Batch, copies: int) -> Batch:
        # the head reads only the pooled embedding, so copies tile the structures' atoms as they are
        n_graphs = self.num_graphs(batch)
        offsets = torch.arange(copies, device=batch.batch.device)
        tiled = Batch(block_scalars=batch.block_scalars.repeat(copies, 1, 1),
                      batch=(batch.batch.unsqueeze(0) + (offsets * n_graphs).view(-1, 1)).reshape(-1))
        tiled._num_graphs = n_graphs * copies
        return tiled

    def embed(self, batch: Batch) -> torch.Tensor:
        atoms = batch.block_scalars[:, self.atom_blocks.index(self.read_block)]
        return mean_pool(atoms, batch.batch, self.num_graphs(batch))


class AtomwiseMLPHead(nn.Module):
    """A trainable MLP on every atom's invariant features, [N, 128] -> [N, 1] (hidden SiLU layer);
    the backbone averages its outputs per structure. Seeded, so a member's start depends on its seed only."""

    def __init__(self, n_in: int = N_SCALARS, hidden: int = 64, *, seed: int = 0) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.hidden, self.act, self.out = nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        torch.random.set_rng_state(generator_state)

    def forward(self, atom_fea: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(atom_fea)))


class SevenNetEarlyBackbone(SevenNetBackbone):
    """Cached SevenNet-0 block-1 invariants (the network cut after block 1) read atom by atom by a
    trainable MLP, averaged per structure (the accuracy pilot's candidate c-early; docs/method.md
    §16). The head starts from a seeded random init, so it is trained first (method ``full``, which here trains only the head:
    nothing upstream has parameters) and adapters go on that fit (``init_from``). Its rows are atoms,
    so BaLoRA's per-structure noise reaches them through the atoms' structure index."""

    name = "sevennet-early"
    module_entities = {r"^head\.": "atom"}

    def __init__(self, *, checkpoint: str = CHECKPOINT, read_block: int = EARLY_BLOCK, hidden: int = 64,
                 seed: int = 0) -> None:
        # the network is cut after the block the head reads: nothing later is run or cached
        super().__init__(checkpoint=checkpoint, read_block=read_block, atom_blocks=(read_block,),
                         through_block=read_block)
        self.head = AtomwiseMLPHead(N_SCALARS, hidden, seed=seed)

    @property
    def version(self) -> str:
        return f"{super().version}/atomwise-mlp"

    def forward(self, batch: Batch) -> torch.Tensor:
        atoms = batch.block_scalars[:, self.atom_blocks.index(self.read_block)]
        # the head (also a residual one: linear per atom, then the mean) per atom, then the mean
        return mean_pool(self.head(atoms), batch.batch, self.num_graphs(batch)).squeeze(-1)
