"""Injecting adapters into a model, switching modes, merging, KL, and saving/loading adapter weights."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from mofbalora.adapters.config import AdapterConfig
from mofbalora.adapters.layers import AlphaNet, BaLoRALinear, DropoutLoRALinear, LoRALinear
from mofbalora.adapters.noise import NoiseContext
from mofbalora.data.io import atomic_path, load_tensors, read_versioned_json, write_text_atomic

logger = logging.getLogger(__name__)

AdapterMode = Literal["train", "mean", "sample"]
ALPHA_NET_NAME = "balora_alpha_net"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 1
_STATE_ATTR = "_mofbalora_adapter_state"
_GRAPH_METHODS = ("embed", "graph_index", "num_graphs", "repeat_batch", "embedding_dim")


@dataclass
class AdapterState:
    """What inject_adapters attaches to a model (outside its module tree)."""

    config: AdapterConfig
    target_names: list[str]
    context: NoiseContext
    mode: AdapterMode = "train"
    samples: int = 1
    generator: torch.Generator | None = None
    sample_seed: int = 0
    last_noise_alpha: torch.Tensor | None = None
    hooks: list[Any] = field(default_factory=list)


def adapter_state(model: nn.Module) -> AdapterState:
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"{type(model).__name__} has no adapters; call inject_adapters first")
    return state


def adapter_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _is_trainable(name: str, config: AdapterConfig) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("lora_A", "lora_B") or name.startswith(ALPHA_NET_NAME + "."):
        return True
    return any(re.search(pattern, name) for pattern in config.modules_to_save)


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Wrap the ``nn.Linear`` layers matching ``config.target_modules`` and freeze everything else.

    Parameters matching ``config.modules_to_save`` (e.g. the head) stay trainable. For BaLoRA
    the model must be a graph backbone (``embed``, ``graph_index``, ...) so that noise can be
    drawn per structure; an inference network ``balora_alpha_net`` is added.

    Returns:
        The same model, modified in place.

    Raises:
        ValueError: when nothing matches, or the model already has adapters.
    """
    if getattr(model, _STATE_ATTR, None) is not None:
        raise ValueError("model already has adapters")
    allowed = set(model.adaptable_modules()) if hasattr(model, "adaptable_modules") else None
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in linears if any(re.search(p, n) for p in config.target_modules)]
    if allowed is not None:
        names = [n for n in names if n in allowed]
    if not names:
        candidates = sorted(allowed) if allowed is not None else linears
        raise ValueError(
            f"no nn.Linear module matches target_modules {config.target_modules}; "
            f"candidates: {candidates[:20]}{' ...' if len(candidates) > 20 else ''}"
        )
    if config.kind != "lora":
        missing = [m for m in _GRAPH_METHODS if not hasattr(model, m)]
        if missing:
            raise ValueError(f"{config.kind} needs a graph backbone; {type(model).__name__} lacks {missing}")
    generator = torch.Generator().manual_seed(config.seed)
    context = NoiseContext()
    for slot, name in enumerate(names):
        base = model.get_submodule(name)
        if config.kind == "lora":
            wrapper: LoRALinear = LoRALinear(base, rank=config.rank, scaling=config.scaling, generator=generator)
        elif config.kind == "mcdropout":
            wrapper = DropoutLoRALinear(base, rank=config.rank, scaling=config.scaling, generator=generator,
                                        dropout=config.dropout, entity=model.entity_of(name), context=context,
                                        module_name=name)
        else:
            wrapper = BaLoRALinear(
                base, rank=config.rank, scaling=config.scaling, generator=generator,
                entity=model.entity_of(name), slot=slot, noise_on=config.noise_on,
                per_rank=config.alpha_granularity == "rank", context=context, module_name=name,
                per_row=config.noise_sampling == "row", prior=config.prior, kl_count=config.kl_count,
            )
        set_submodule(model, name, wrapper)
    if config.kind == "balora":
        alpha_net = AlphaNet(
            embedding_dim=model.embedding_dim, hidden=config.alpha_net_hidden, n_layers=len(names),
            rank=config.rank if config.alpha_granularity == "rank" else None,
            alpha_init=config.alpha_init or config.prior_c,
            constant_input=config.alpha_net_input == "constant", generator=generator,
        )
        model.add_module(ALPHA_NET_NAME, alpha_net)
    for name, param in model.named_parameters():
        param.requires_grad_(_is_trainable(name, config))
    state = AdapterState(config=config, target_names=names, context=context)
    object.__setattr__(model, _STATE_ATTR, state)
    state.hooks = [
        model.register_forward_pre_hook(_before_forward),
        model.register_forward_hook(_after_forward),
    ]
    logger.info("injected %s into %d modules", config.kind, len(names))
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the bare backbone: every adapter layer passes its input through W0 only."""
    layers = adapter_layers(model)
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, previous):
            layer.disabled = flag


def frozen_embedding(model: nn.Module, batch: Any) -> torch.Tensor:
    """z(x): the backbone's crystal embedding with adapters off, no gradient [G, embedding_dim].

    A batch that carries ``frozen_embedding`` (precomputed once per structure) is used as-is.
    """
    cached = getattr(batch, "frozen_embedding", None)
    if cached is not None:
        return cached
    with adapters_disabled(model), torch.no_grad():
        return model.embed(batch)


def _before_forward(model: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    state: AdapterState = getattr(model, _STATE_ATTR)
    if state.config.kind == "lora" or state.mode == "mean":
        state.context.clear()
        return None
    batch = args[0]
    balora = state.config.kind == "balora"  # MC dropout needs no z(x) and no alpha(x)
    z = frozen_embedding(model, batch) if balora else None
    n_graphs = model.num_graphs(batch)
    if state.mode == "sample":
        batch = model.repeat_batch(batch, state.samples)
        z = z.repeat(state.samples, 1) if balora else None
        n_graphs *= state.samples
    noise_alpha = getattr(model, ALPHA_NET_NAME)(z) if balora else None
    state.last_noise_alpha = noise_alpha
    state.context.set(
        graph_index=model.graph_index(batch), num_graphs=n_graphs, noise_alpha=noise_alpha,
        generator=state.generator if state.mode == "sample" else None,
        noise_keys=getattr(args[0], "noise_keys", None) if state.mode == "sample" else None,
        noise_seed=state.sample_seed,
    )
    return (batch, *args[1:])


def _after_forward(model: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
    state: AdapterState = getattr(model, _STATE_ATTR)
    state.context.clear()
    if state.mode != "sample":
        return None
    if state.config.kind == "lora":
        return output.unsqueeze(0).expand(state.samples, *output.shape)
    return output.reshape(state.samples, -1, *output.shape[1:])


def has_adapters(model: nn.Module) -> bool:
    return getattr(model, _STATE_ATTR, None) is not None


def forward_in_mode(model: nn.Module, batch: Any, mode: AdapterMode) -> torch.Tensor:
    """``model(batch)`` in adapter ``mode``; a model without adapters is simply called."""
    if not has_adapters(model):
        return model(batch)
    with set_adapter_mode(model, mode):
        return model(batch)


class set_adapter_mode:  # noqa: N801 - used as a function and as a context manager
    """Switch the adapter mode; also a context manager that restores the previous mode.

    Modes:
        ``"train"``: one weight sample per structure per forward pass (BaLoRA); output [G].
        ``"mean"``: A~ = A, exactly standard LoRA (mergeable); output [G].
        ``"sample"``: S samples in one pass, S x batch folded into the batch; output [S, G].
            Seeded by ``seed`` (default ``config.seed``) and reproducible. A batch carrying
            ``noise_keys`` (one integer per structure) gets draws that depend only on
            (seed, key), whatever the batching or sharding.
    """

    def __init__(self, model: nn.Module, mode: AdapterMode, *, samples: int = 1, seed: int | None = None) -> None:
        if mode not in ("train", "mean", "sample"):
            raise ValueError(f"mode must be 'train', 'mean' or 'sample', got {mode!r}")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        state = adapter_state(model)
        self._state = state
        self._previous = (state.mode, state.samples, state.generator, state.sample_seed)
        state.mode, state.samples = mode, samples if mode == "sample" else 1
        state.sample_seed = state.config.seed if seed is None else seed
        state.generator = torch.Generator().manual_seed(state.sample_seed) if mode == "sample" else None

    def __enter__(self) -> "set_adapter_mode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._state.mode, self._state.samples, self._state.generator, self._state.sample_seed = self._previous


def adapter_kl_per_graph(model: nn.Module) -> torch.Tensor:
    """Per-structure KL of the last stochastic forward pass, summed over layers, [G] (eq. 5).

    Zero for LoRA and MC-dropout LoRA.
    """
    state = adapter_state(model)
    if state.config.kind != "balora" or state.last_noise_alpha is None:
        return torch.zeros(1)
    layers = [layer for layer in adapter_layers(model) if isinstance(layer, BaLoRALinear)]
    return sum(layer.kl_per_graph(state.last_noise_alpha, state.config.prior_c) for layer in layers)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold s·BA into every adapted W0 (mean mode then costs one bare backbone pass)."""
    for layer in adapter_layers(model):
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapters`, restoring the original W0 exactly."""
    for layer in adapter_layers(model):
        layer.unmerge()
    return model


def backbone_identity(model: nn.Module) -> dict[str, str]:
    """Name, version and a fingerprint of the frozen weights the adapters sit on."""
    digest = hashlib.sha256()
    config = adapter_state(model).config
    for name in adapter_state(model).target_names:
        if _is_trainable(f"{name}.base_layer.weight", config):
            continue  # trained and saved with the adapters, so not part of the frozen identity
        layer = model.get_submodule(name)
        digest.update(name.encode())
        digest.update(layer.original_weight().detach().cpu().contiguous().numpy().tobytes())
    return {
        "name": getattr(model, "name", type(model).__name__),
        "version": str(getattr(model, "version", "unversioned")),
        "weights_sha256": digest.hexdigest(),
    }


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter matrices, inference network and ``modules_to_save`` parameters (never the backbone)."""
    config = adapter_state(model).config
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if _is_trainable(name, config)
    }


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into folder ``path``."""
    state = adapter_state(model)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ADAPTER_WEIGHTS_FILE) as tmp:
        save_file(trainable_state_dict(model), str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    meta = {
        "format_version": FORMAT_VERSION,
        "config": state.config.to_dict(),
        "target_names": state.target_names,
        "backbone": backbone_identity(model),
    }
    write_text_atomic(folder / ADAPTER_CONFIG_FILE, json.dumps(meta, indent=1))
    return folder


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    return read_versioned_json(Path(path) / ADAPTER_CONFIG_FILE, expected_version=FORMAT_VERSION,
                               missing="no adapter config (not a saved adapter folder)")


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load saved adapters onto ``model`` (injecting them first if it has none). Strict.

    Raises:
        ValueError: if the backbone's name, version or frozen weights differ from the saved
            ones, or if any tensor is missing, unexpected or of another shape.
    """
    meta = read_adapter_config(path)
    config = AdapterConfig.from_dict(meta["config"])
    saved = meta["backbone"]
    name = getattr(model, "name", type(model).__name__)
    version = str(getattr(model, "version", "unversioned"))
    if (saved["name"], saved["version"]) != (name, version):
        raise ValueError(
            f"{path}: adapters were trained on backbone {saved['name']} {saved['version']}, "
            f"not {name} {version}"
        )
    if getattr(model, _STATE_ATTR, None) is None:
        inject_adapters(model, config)
    state = adapter_state(model)
    if state.target_names != meta["target_names"]:
        raise ValueError(f"{path}: adapted modules differ from the model's ({len(meta['target_names'])} saved)")
    if backbone_identity(model)["weights_sha256"] != saved["weights_sha256"]:
        raise ValueError(f"{path}: the backbone's frozen weights differ from those the adapters were trained on")
    tensors = load_tensors(Path(path) / ADAPTER_WEIGHTS_FILE)
    expected = trainable_state_dict(model)
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if params[key].shape != value.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, model has {tuple(params[key].shape)}")
            params[key].copy_(value)
    return model
