"""LoRA, BaLoRA and MC-dropout LoRA adapters: config, layers, injection, modes, merging and saving.

The method is written up in docs/method.md; equation numbers in docstrings refer to it.
"""

from mofbalora.adapters.config import AdapterConfig
from mofbalora.adapters.layers import AlphaNet, BaLoRALinear, DropoutLoRALinear, LoRALinear, kl_log_uniform, kl_multiplicative_gaussian
from mofbalora.adapters.model import (
    adapter_kl_per_graph,
    adapter_layers,
    adapter_state,
    adapters_disabled,
    forward_in_mode,
    frozen_embedding,
    has_adapters,
    inject_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    set_adapter_mode,
    unmerge_adapters,
)

__all__ = [
    "AdapterConfig",
    "AlphaNet",
    "BaLoRALinear",
    "DropoutLoRALinear",
    "LoRALinear",
    "adapter_kl_per_graph",
    "adapter_layers",
    "adapter_state",
    "adapters_disabled",
    "forward_in_mode",
    "frozen_embedding",
    "has_adapters",
    "inject_adapters",
    "kl_log_uniform",
    "kl_multiplicative_gaussian",
    "load_adapters",
    "merge_adapters",
    "save_adapters",
    "set_adapter_mode",
    "unmerge_adapters",
]
