"""SevenNet-0's frozen features: the pretrained interatomic potential run once per structure (issue 44).

SevenNet-0 (the ``7net-0`` checkpoint of 11 Jul 2024, inside the ``sevenn`` wheel; no network) is
too slow to run in every epoch on CPU (~0.3 s per 100-atom structure, ~40× CGCNN), so its frozen
part runs here, once per structure, and the feature cache (``featurise.cache``) keeps the output
by content. A sample holds, read with forward hooks on each interaction block's equivariant gate
(the first 128 columns of the node features are the invariant 0e channels):

- ``block_scalars`` [n_atoms, len(atom_blocks), 128]: the invariant per-atom features of the blocks
  in ``atom_blocks`` (default the second and the last: an early block, where a frozen-feature probe
  found the most band-gap information, and the one SevenNet's own readout reads);
- ``pooled`` [1, n_run, 256]: mean and max over atoms of the invariant features of every block run;
- ``energy_per_atom_ev``: SevenNet-0's total energy per atom (only when the whole network runs).

``through_block`` cuts the network after that block's gate: a head that reads an early block needs
nothing after it, and a featuriser that stops at block 1 runs ~2/5 of the interaction blocks
(the blocks it runs give the same features as the whole network's, tests/backbones/test_sevennet.py).

Which block the trainable part reads, and how, is the accuracy pilot's choice (docs/method.md §16).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from torch_geometric.data import Data

from mofbalora.data.structures import structure_content_key
from mofbalora.featurise.base import Featuriser

CHECKPOINT = "7net-0"
N_BLOCKS = 5
N_SCALARS = 128  # the 0e channels that lead every block's node features
#: the block a frozen-feature probe found the most band-gap information in (issue 44); early heads read it
EARLY_BLOCK = 1


#: per process: featuriser copies sent to worker processes load the model once, not once per structure
_LOADED: dict[tuple[str, int | None], tuple[torch.nn.Module, float]] = {}


def load_sevennet(checkpoint: str = CHECKPOINT, through_block: int | None = None) -> tuple[torch.nn.Module, float]:
    """SevenNet's model (eval, on CPU, forces and stress off) and its cutoff (Å), from the weights
    inside the ``sevenn`` wheel; with ``through_block``, only the modules up to that block's gate."""
    import sevenn.util

    loaded = sevenn.util.load_checkpoint(checkpoint)
    model = loaded.build_model()
    model.set_is_batch_data(False)
    # energy only: the force/stress module differentiates through positions, which a frozen
    # featuriser does not need
    model.delete_module_by_key("force_output")
    if through_block is not None:
        keys = list(model._modules)
        for key in keys[keys.index(f"{through_block}_equivariant_gate") + 1:]:
            model.delete_module_by_key(key)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, float(loaded.config["cutoff"])


class SevenNetFeaturiser(Featuriser):
    name = "sevennet"
    upstream_packages = ("sevenn", "e3nn", "pymatgen")

    def __init__(self, *, checkpoint: str = CHECKPOINT, atom_blocks: tuple[int, ...] = (1, 4),
                 through_block: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.atom_blocks = tuple(atom_blocks)
        self.through_block = through_block
        if not all(0 <= b <= self.last_block for b in atom_blocks) or self.last_block >= N_BLOCKS:
            raise ValueError(f"atom_blocks must lie in 0..{self.last_block} (through_block {through_block}), "
                             f"got {atom_blocks}")

    @property
    def last_block(self) -> int:
        """The last interaction block this featuriser runs."""
        return N_BLOCKS - 1 if self.through_block is None else self.through_block

    def config(self) -> dict[str, Any]:
        config = {"checkpoint": self.checkpoint, "atom_blocks": list(self.atom_blocks)}
        # only when set, so the whole network's cached features keep their key
        return config if self.through_block is None else {**config, "through_block": self.through_block}

    def _load(self) -> tuple[torch.nn.Module, float]:
        key = (self.checkpoint, self.through_block)
        if key not in _LOADED:
            _LOADED[key] = load_sevennet(self.checkpoint, self.through_block)
        return _LOADED[key]

    @torch.no_grad()
    def run(self, structure: Structure) -> tuple[list[torch.Tensor], float | None]:
        """The invariant per-atom features [n_atoms, 128] of every block run, and the energy per atom
        (eV; None when the network is cut after ``through_block``)."""
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        model, cutoff = self._load()
        atoms = AseAtomsAdaptor.get_atoms(structure)
        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, cutoff, with_shift=False))
        blocks: list[torch.Tensor] = []
        hooks = [model._modules[f"{b}_equivariant_gate"].register_forward_hook(
            lambda _m, _i, out: blocks.append(out[KEY.NODE_FEATURE][:, :N_SCALARS].detach().clone()))
            for b in range(self.last_block + 1)]
        try:
            output = model(data)
        finally:
            for hook in hooks:
                hook.remove()
        if self.through_block is not None:
            return blocks, None
        return blocks, float(output[KEY.PRED_TOTAL_ENERGY].reshape(-1)[0]) / len(structure)

    def featurise(self, structure: Structure, structure_id: str) -> Data:
        blocks, energy_per_atom = self.run(structure)
        pooled = torch.stack([torch.cat([b.mean(0), b.max(0).values]) for b in blocks])
        energy = {} if energy_per_atom is None else {
            "energy_per_atom_ev": torch.tensor([energy_per_atom], dtype=torch.float32)}
        return Data(
            atomic_number=torch.tensor(np.array([site.specie.Z for site in structure]), dtype=torch.long),
            block_scalars=torch.stack([blocks[b] for b in self.atom_blocks], dim=1).float(),
            pooled=pooled.float().unsqueeze(0),
            **energy,
            num_nodes=len(structure),
            structure_id=structure_id,
            content_key=structure_content_key(structure),
        )
