"""Inference-time folding of eval-mode BatchNorm into the linear layer before it.

An eval-mode BatchNorm is an affine map per output channel, y = g·x + h with g = γ/√(var + ε) and
h = β − μ·g. After a linear layer (with or without a LoRA/BaLoRA adapter) it folds exactly into that
layer: W0 → g·W0, b → g·b + h, B → g·B (so s·B·Ã → g·s·B·Ã for every weight sample), which saves
one pass over the layer's output per forward. The backbone lists which pairs may be folded
(``foldable_batchnorms``); only models that no longer train are folded (``BandgapModel``).
"""

from __future__ import annotations

import torch
from torch import nn

from mofbalora.adapters.layers import LoRALinear
from mofbalora.adapters.model import set_submodule


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every (linear, BatchNorm) pair of ``model.foldable_batchnorms()`` in place; the
    BatchNorm becomes ``nn.Identity``. A model without such pairs, or already folded, is unchanged.

    Returns:
        ``model``.
    """
    pairs = model.foldable_batchnorms() if hasattr(model, "foldable_batchnorms") else []
    for linear_name, norm_name in pairs:
        norm = model.get_submodule(norm_name)
        if isinstance(norm, nn.Identity):
            continue
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training or norm.running_var is None:
            raise ValueError(f"{norm_name}: only an eval-mode BatchNorm with running statistics can be folded")
        gain = norm.running_var.add(norm.eps).rsqrt()
        if norm.affine:
            gain = gain * norm.weight
        shift = -norm.running_mean * gain + (norm.bias if norm.affine else 0.0)
        layer = model.get_submodule(linear_name)
        base = layer.base_layer if isinstance(layer, LoRALinear) else layer
        base.weight.mul_(gain.unsqueeze(1))
        if base.bias is None:
            base.bias = nn.Parameter(shift.clone(), requires_grad=False)
        else:
            base.bias.mul_(gain).add_(shift)
        if isinstance(layer, LoRALinear):
            layer.lora_B.mul_(gain.unsqueeze(1))
            if layer._unmerged_weight is not None:  # merged: W0's copy scales like W0
                layer._unmerged_weight.mul_(gain.unsqueeze(1))
        set_submodule(model, norm_name, nn.Identity())
    return model
