"""Late fusion: CGCNN with SevenNet-0's pooled block-1 invariants fed to its head (issue 44, candidate d).

The crystal embedding z(x) is CGCNN's (64) followed by the structure's cached SevenNet-0 block-1
mean and max invariants (256; ``featurise/fusion.py``). The head's first layer ``conv_to_fc``
gains 256 input columns that start at zero, so the model starts exactly at pretrained CGCNN and
training decides how much of SevenNet's view it uses; the adapters go where CGCNN's go
(docs/method.md §16). **(ours)**
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch

from mofbalora.backbones.cgcnn import CGCNNBackbone
from mofbalora.featurise.fusion import CGCNNSevenNetFeaturiser
from mofbalora.featurise.sevennet import N_SCALARS


class CGCNNSevenNetBackbone(CGCNNBackbone):
    """Pretrained CGCNN whose head also reads SevenNet-0's pooled block-1 invariants."""

    name = "cgcnn-sevennet"

    def __init__(self, *, checkpoint: str = "band-gap") -> None:
        super().__init__(checkpoint=checkpoint)
        n_fused = 2 * N_SCALARS  # mean and max
        old = self.head.conv_to_fc
        wide = nn.Linear(old.in_features + n_fused, old.out_features)
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[:, :old.in_features] = old.weight
            wide.bias.copy_(old.bias)
        self.head.conv_to_fc = wide
        self._embedding_dim += n_fused
        self.eval()

    @property
    def version(self) -> str:
        return f"{super().version}+sevennet-block1-pooled"

    def make_featuriser(self) -> CGCNNSevenNetFeaturiser:
        return CGCNNSevenNetFeaturiser()

    def repeat_batch(self, batch: Batch, copies: int) -> Batch:
        tiled = super().repeat_batch(batch, copies)
        tiled.sevennet_pooled = batch.sevennet_pooled.repeat(copies, 1)
        return tiled

    def embed(self, batch: Batch) -> torch.Tensor:
        return torch.cat([super().embed(batch), batch.sevennet_pooled], dim=1)
