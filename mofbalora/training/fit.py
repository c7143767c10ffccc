"""Train one method: data, split, features, Lightning training per member, the (uncalibrated) model folder.

A rerun with the same config, data and split resumes: finished members are kept, an interrupted
member continues from its last checkpoint, and ``model.json`` is written last. A folder that was
started with anything different is refused, naming the difference, unless ``overwrite``.
Calibration on the held-out calibration split is the next step (``mofbalora.fit_calibrate``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import save_file

from mofbalora.backbones.batching import GraphDataset, compute_frozen_embeddings
from mofbalora.data.datasets import LabelledDataset, default_cache_dir, load_labelled_dataset
from mofbalora.data.io import atomic_path, write_table_atomic, write_text_atomic
from mofbalora.data.splits import Split, make_split
from mofbalora.data.targets import TargetNormaliser
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.featurise.base import sample_num_atoms
from mofbalora.model_folder import (
    BASE_WEIGHTS_FILE, MODEL_FILE, NOISE_FILE, bare_member, build_member, full_fit_weights, member_seeds, package_versions,
    model_json_sha256, save_member, save_train_embeddings, warm_start_weights, weights_checksum,
    apply_warm_start, read_model_json, write_model_json,
)
from mofbalora.pretrained import resolve_model
from mofbalora.training.config import TrainConfig
from mofbalora.training.data import BandgapDataModule
from mofbalora.training.module import BandgapRegressor

logger = logging.getLogger(__name__)


IDENTITY_FILE = "fit_identity.json"
#: per member: epochs run, wall time of training with validation (s), training-set size
TIMING_FILE = "timing.json"
LOGS_DIR = "logs"


class FolderMismatchError(ValueError):
    """A model folder was started with another config, data or split."""


@dataclass
class PreparedData:
    """Featurised parts of one split (ids, samples, gaps eV): train, val, calibration (may be empty), test."""

    split: Split
    parts: dict[str, tuple[list[str], list[Any], np.ndarray]]
    skipped: pd.DataFrame
    labels_sha256: str


def select_subset(dataset: LabelledDataset, config: TrainConfig) -> pd.DataFrame:
    table = dataset.table
    if config.max_structures is not None and config.max_structures < len(table):
        rng = np.random.default_rng(config.split.seed)
        table = table.iloc[np.sort(rng.choice(len(table), config.max_structures, replace=False))]
    return table.reset_index(drop=True)


def prepare_data(config: TrainConfig, dataset: LabelledDataset, out_dir: Path, *, progress: bool = True,
                 split: Split | None = None) -> PreparedData:
    """Split (or reuse ``split`` / the saved one), featurise through the shared cache, drop failures."""
    split = resolve_split(config, dataset, out_dir, split)
    split.save(out_dir / "split.json")
    featuriser = get_featuriser(config.backbone)
    indexed = dataset.table.set_index("id")
    parts, skipped = {}, []
    for part in Split.PARTS:
        ids = split.part(part)
        result = featurise_paths(list(indexed.loc[ids, "path"]), featuriser, cache_dir=default_cache_dir(),
                                 max_atoms=config.max_atoms, progress=progress)
        kept = result.ids
        parts[part] = (kept, result.samples, indexed.loc[kept, dataset.target].to_numpy(dtype=float))
        skipped.append(result.skipped.assign(split=part))
    skipped_table = pd.concat(skipped, ignore_index=True)
    return PreparedData(split, parts, skipped_table, dataset.labels_sha256)


def prepare_folder_data(folder: str | os.PathLike, data: str | os.PathLike | None = None, *,
                        progress: bool = False) -> tuple[TrainConfig, LabelledDataset, PreparedData]:
    """A fitted model folder's config, the labelled data and the folder's own split of it,
    featurised (:func:`prepare_data`), without writing into the folder: a shipped package stays as it is."""
    import tempfile

    folder = Path(folder)
    meta = read_model_json(folder)
    config = TrainConfig.from_dict(meta["train_config"])
    dataset = load_labelled_dataset(data, target=config.target)
    with tempfile.TemporaryDirectory() as scratch:  # prepare_data writes the split it used there
        prepared = prepare_data(config, dataset, Path(scratch), progress=progress,
                                split=Split.load(folder / meta["split_file"]))
    return config, dataset, prepared


def _log_version(member_dir: Path) -> int:
    """A new CSV log version for each session that trains a member: Lightning's CSV writer deletes
    the metrics file of a version it reopens, so a resumed fit would lose its earlier epochs."""
    used = [int(folder.name.removeprefix("version_")) for folder in (member_dir / LOGS_DIR).glob("version_*")
            if (folder / "metrics.csv").exists() and folder.name.removeprefix("version_").isdigit()]
    return max(used, default=-1) + 1


def epoch_history(member_dir: Path) -> pd.DataFrame:
    """A member's training log over every session that trained it: its CSV logs in session order
    (``logs/version_<k>/metrics.csv``), one row per logged step, with ``session`` added. A step
    logged twice (an epoch redone after a resume) keeps the later session's row."""
    logs = sorted((member_dir / LOGS_DIR).glob("version_*/metrics.csv"),
                  key=lambda path: int(path.parent.name.removeprefix("version_")))
    if not logs:
        raise FileNotFoundError(f"{member_dir}: no training log (logs/version_*/metrics.csv)")
    history = pd.concat([pd.read_csv(path).assign(session=i) for i, path in enumerate(logs)], ignore_index=True)
    # a step has a training row and, at an epoch's end, a validation row: dedupe each kind apart
    is_val = history.filter(like="val_").notna().any(axis=1)
    history = history.assign(_is_val=is_val).drop_duplicates(subset=["epoch", "step", "_is_val"], keep="last")
    return history.drop(columns="_is_val").sort_values(["epoch", "step"], kind="stable").reset_index(drop=True)


def validation_curve(member_dir: Path) -> dict[str, Any]:
    """From :func:`epoch_history`: epochs run, the best epoch (1-based) and its validation MAE, the
    validation MAE per epoch (eV, noise-off, what early stopping watches), and the sessions."""
    history = epoch_history(member_dir)
    val = history.dropna(subset=["val_mae_ev"]).sort_values("epoch")
    return {"epochs_run": int(val["epoch"].max()) + 1, "best_epoch": int(val.loc[val["val_mae_ev"].idxmin(), "epoch"]) + 1,
            "best_val_mae_ev": float(val["val_mae_ev"].min()),
            "val_mae_ev_by_epoch": [float(v) for v in val["val_mae_ev"]],
            "sessions": int(history["session"].max()) + 1}


class _StopAtStepCap(L.Callback):
    """Ends training at the end of the epoch that reaches ``step_cap`` optimiser steps (``--max-steps``).

    Lightning's own ``max_steps`` stop left its epoch counter one ahead in a session resumed from
    such a stop: the next resume skipped an epoch, or declared the fit finished one epoch early.
    Stopped this way, a session ends like an interrupted one, from whose last epoch a rerun resumes.
    """

    def __init__(self, step_cap: int) -> None:
        self.step_cap = step_cap

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step >= self.step_cap:
            trainer.should_stop = True


def _trainer(config: TrainConfig, member_dir: Path, *, progress: bool, overrides: dict[str, Any],
             step_cap: int | None = None) -> tuple[L.Trainer, ModelCheckpoint, EarlyStopping, Timer]:
    checkpoint = ModelCheckpoint(dirpath=member_dir / "checkpoints", filename="best", monitor="val_mae_ev",
                                 mode="min")
    # every epoch's end, for resuming: Lightning >= 2.5 writes ``save_last`` only when a new best is
    # saved, so a run resumed from it lost (and repeated) every epoch since its best
    last = ModelCheckpoint(dirpath=member_dir / "checkpoints", filename="last", enable_version_counter=False)
    early_stop = EarlyStopping(monitor="val_mae_ev", mode="min", patience=config.patience)
    timer = Timer()  # its elapsed time is checkpointed, so a resumed fit keeps counting
    callbacks = [checkpoint, last, early_stop, timer] + ([] if step_cap is None else [_StopAtStepCap(step_cap)])
    kwargs = {"accelerator": "cpu", "devices": 1, **{k: v for k, v in overrides.items() if v is not None}}
    trainer = L.Trainer(max_epochs=config.epochs, callbacks=callbacks,
                        logger=CSVLogger(member_dir, name=LOGS_DIR, version=_log_version(member_dir)),
                        enable_progress_bar=progress,
                        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0,
                        use_distributed_sampler=False, **kwargs)
    return trainer, checkpoint, early_stop, timer


def train_member(config: TrainConfig, data: PreparedData, *, seed: int, member_dir: Path,
                 normaliser: TargetNormaliser, frozen: dict[str, torch.Tensor] | None, progress: bool,
                 trainer_overrides: dict[str, Any], base_weights: dict[str, torch.Tensor] | None = None,
                 warm_start: tuple[dict[str, torch.Tensor], float | None] | None = None,
                 ) -> tuple[torch.nn.Module, bool]:
    """Train one member; returns (model with the best weights, whether training finished).

    ``warm_start``: (adapter tensors, noise std in eV) of a trained member to start from
    (``config.warm_start_from``); a resumed fit's checkpoint replaces them anyway.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_member(backbone=config.backbone, method=config.method, adapter=config.adapter, seed=seed,
                         head=config.head, base_weights=base_weights)
    if warm_start is not None:
        apply_warm_start(model, warm_start[0])
    train_ids, train_samples, train_gaps = data.parts["train"]
    _, val_samples, val_gaps = data.parts["val"]
    datamodule = BandgapDataModule(
        train=GraphDataset(train_samples, normaliser.to_standard(train_gaps), frozen and frozen["train"]),
        val=GraphDataset(val_samples, normaliser.to_standard(val_gaps), frozen and frozen["val"]),
        backbone=model, batch_size=config.batch_size, seed=seed, num_workers=config.num_workers,
    )
    overrides = dict(trainer_overrides)
    step_cap = overrides.pop("max_steps", None)
    last = member_dir / "checkpoints" / "last.ckpt"
    reached = (torch.load(last, map_location="cpu", weights_only=False)["global_step"]
               if step_cap is not None and last.exists() else 0)
    if step_cap is not None and reached >= step_cap:
        logger.warning("%s: already at step %d, past the cap of %d steps; nothing trained", member_dir, reached, step_cap)
        return model, False
    trainer, checkpoint, early_stop, timer = _trainer(config, member_dir, progress=progress, overrides=overrides,
                                                      step_cap=step_cap)
    steps_per_epoch = int(np.ceil(len(train_samples) / trainer.world_size / config.batch_size))
    module = BandgapRegressor(model, config=config, normaliser=normaliser, n_train=len(train_samples),
                              steps_per_epoch=steps_per_epoch)
    if warm_start is not None and warm_start[1] is not None and config.likelihood == "gaussian":
        with torch.no_grad():
            module.log_noise_std.fill_(float(np.log(warm_start[1] / normaliser.std_ev)))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    finished = trainer.current_epoch >= config.epochs or early_stop.stopped_epoch > 0
    best = checkpoint.best_model_path
    if finished and best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    if finished and trainer.is_global_zero:
        write_text_atomic(member_dir / NOISE_FILE, json.dumps({"noise_std_ev": module.noise_std_ev}))
        write_text_atomic(member_dir / TIMING_FILE, json.dumps(
            {"epochs": trainer.current_epoch, "train_wall_s": timer.time_elapsed("train"),
             "n_train": len(train_samples), "load_average_1min_at_end": os.getloadavg()[0]}))
    if trainer.world_size > 1:
        # Every rank records what it holds, so DDP consistency can be checked after the run.
        write_text_atomic(member_dir / "rank_checksums" / f"rank{trainer.global_rank}.txt", weights_checksum(model))
    return model, finished and trainer.is_global_zero


def warm_start_folder(config: TrainConfig) -> Path:
    """The finished model folder ``config.warm_start_from`` names (a path or a shipped model).

    Raises:
        FileNotFoundError: naming it, when no finished model is there (train that one first).
    """
    try:
        folder = resolve_model(config.warm_start_from)
    except FileNotFoundError:
        folder = Path(str(config.warm_start_from))
    if not (folder / MODEL_FILE).exists():
        raise FileNotFoundError(f"warm_start_from {config.warm_start_from!r}: no finished model folder there "
                                f"(no {MODEL_FILE}); train that model first")
    return folder


def fit_identity(config: TrainConfig, dataset: LabelledDataset, split: Split, *,
                 warm_start_sha256: str | None = None) -> dict[str, Any]:
    """What a model folder was started with: config, data and split (and the model a warm
    restart starts from, by content). A rerun must match it.

    ``warm_start_sha256``: that model's checksum as a release record gives it, for a folder seeded
    from a package whose warm-start source is not on this machine (it is read from there otherwise).
    """
    identity = {"train_config": config.to_dict(), "data_source": str(dataset.source),
                "labels_sha256": dataset.labels_sha256, "split_sha256": split.fingerprint()}
    if config.warm_start_from is not None:
        identity["warm_start_model_json_sha256"] = warm_start_sha256 or model_json_sha256(warm_start_folder(config))
    return identity


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [f"{prefix.rstrip('.')}: folder has {saved!r}, this run {current!r}"]


def clear_folder(out_dir: Path) -> None:
    """Delete everything ``out_dir`` holds (``--overwrite``), keeping the folder."""
    if out_dir.exists():
        for child in out_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def check_model_folder(out_dir: Path, identity: dict[str, Any], *, resume: bool) -> None:
    """Refuse a folder started with a different identity.

    Raises:
        FolderMismatchError: naming every difference (or, with ``resume``, that there is nothing
            to resume).
    """
    path = out_dir / IDENTITY_FILE
    if not path.exists():
        if resume:
            raise FolderMismatchError(f"{out_dir}: nothing to resume (no {IDENTITY_FILE})")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FolderMismatchError(f"{out_dir}: not empty and not a mofbalora fit folder; "
                                      "choose another --out or pass --overwrite")
        return
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(identity))
    if TrainConfig.from_dict(current["train_config"]).was_recorded_as(saved.get("train_config", {})):
        saved["train_config"] = current["train_config"]  # settings added since the folder began read as defaults
    differences = _differences(saved, current)
    if differences:
        raise FolderMismatchError(f"{out_dir} was started with a different setup: " + "; ".join(differences)
                                  + ". Use another --out, or --overwrite to start again.")


def _check_trainable(train_ids, val_ids, what: str) -> None:
    """Training needs two training structures (the target normaliser's std) and one validation
    structure (early stopping watches its MAE); a clear error instead of Lightning's."""
    if len(train_ids) < 2 or len(val_ids) < 1:
        raise ValueError(f"the split has {len(train_ids)} training and {len(val_ids)} validation structures {what}; "
                         f"training needs at least 2 and 1: use more structures or larger split fractions")


def resolve_split(config: TrainConfig, dataset: LabelledDataset, out_dir: Path, split: Split | None) -> Split:
    """The given split, else the one saved in ``out_dir``, else a new one from the config."""
    if split is not None:
        return split
    if (out_dir / "split.json").exists():
        return Split.load(out_dir / "split.json")
    table = select_subset(dataset, config)
    return make_split(list(table["id"]), table[dataset.target].to_numpy(), fractions=config.split.fractions,
                      seed=config.split.seed, method=config.split.method)


def fit(config: TrainConfig, *, data: str | os.PathLike | None = None, out_dir: str | os.PathLike,
        progress: bool = True, trainer_overrides: dict[str, Any] | None = None,
        split: Split | None = None, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Train ``config.method`` and write the model folder ``out_dir`` (calibrate it next).

    Returns:
        ``out_dir`` once the model is complete, or None if training stopped early (e.g. a
        ``max_steps`` override) or this is not the global-zero rank; rerun to resume.

    Raises:
        FolderMismatchError: ``out_dir`` holds a fit with another config, data or split.
    """
    out_dir = Path(out_dir)
    overrides = dict(trainer_overrides or {})
    dataset = load_labelled_dataset(data, target=config.target)
    if not dataset.report.complete:  # shown without --verbose: a user's own table rarely joins completely by design
        logger.warning("%s: %s", dataset.source, dataset.report.summary())
    if overwrite:
        clear_folder(out_dir)
    split = resolve_split(config, dataset, out_dir, split)
    _check_trainable(split.part("train"), split.part("val"), "assigned")
    identity = fit_identity(config, dataset, split)
    check_model_folder(out_dir, identity, resume=resume)
    if (out_dir / MODEL_FILE).exists():
        logger.info("%s is complete", out_dir)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / IDENTITY_FILE, json.dumps(identity, indent=1))
    write_text_atomic(out_dir / "train_config.json", json.dumps(config.to_dict(), indent=1))
    prepared = prepare_data(config, dataset, out_dir, progress=progress, split=split)
    write_table_atomic(prepared.skipped, out_dir / "skipped.csv")
    _check_trainable(prepared.parts["train"][0], prepared.parts["val"][0], "usable (skipped.csv lists the rest)")
    normaliser = TargetNormaliser.fit(prepared.parts["train"][2])
    if config.warm_start_from is not None:
        # the source's scale, whatever labels were added since: its weights predict on it (the
        # suggest -> compute -> refit loop, docs/method.md §15)
        scale = read_model_json(warm_start_folder(config))["normaliser"]
        normaliser = TargetNormaliser(float(scale["mean_ev"]), float(scale["std_ev"]))
    base_weights = None if config.init_from is None else full_fit_weights(
        config.init_from, backbone=config.backbone, head=config.head,
        normaliser={"mean_ev": normaliser.mean_ev, "std_ev": normaliser.std_ev})
    warm_starts = None if config.warm_start_from is None else warm_start_weights(
        warm_start_folder(config), config=config.to_dict(),
        normaliser={"mean_ev": normaliser.mean_ev, "std_ev": normaliser.std_ev})
    bare = bare_member(backbone=config.backbone, head="pretrained", seed=config.seed)
    # z(x) does not change during training: computed once per structure (docs/method.md §2); the
    # training embeddings also anchor the embedding-distance OOD flag (§9).
    parts = ("train", "val") if config.method == "balora" else ("train",)
    frozen = {part: compute_frozen_embeddings(bare, prepared.parts[part][1]) for part in parts}
    seeds, noise_std_ev = member_seeds(config.method, config.seed, config.ensemble_size, config.members), []
    if warm_starts is not None and len(warm_starts) != len(seeds):
        raise ValueError(f"{config.warm_start_from}: {len(warm_starts)} members to warm-start {len(seeds)}")
    for number, seed in enumerate(seeds):
        member_dir = out_dir / "members" / str(number)
        if not (member_dir / "done").exists():
            model, finished = train_member(config, prepared, seed=seed, member_dir=member_dir, normaliser=normaliser,
                                           frozen=frozen if config.method == "balora" else None, progress=progress,
                                           trainer_overrides=overrides, base_weights=base_weights,
                                           warm_start=None if warm_starts is None else warm_starts[number])
            if not finished:
                logger.warning("training stopped before the end; rerun the same command to resume")
                return None
            save_member(model, member_dir, config.method)
            write_text_atomic(member_dir / "done", "finished\n")
        noise_std_ev.append(json.loads((member_dir / NOISE_FILE).read_text())["noise_std_ev"])
    train_atoms = [sample_num_atoms(s) for s in prepared.parts["train"][1]]
    save_train_embeddings(out_dir, frozen["train"])
    if base_weights is not None:
        with atomic_path(out_dir / BASE_WEIGHTS_FILE) as tmp:
            save_file(base_weights, str(tmp))
    meta = {
        "method": config.method,
        "backbone": {"name": bare.name, "version": bare.version},  # checked again on every load
        "members": [f"members/{n}" for n in range(len(seeds))],
        "member_seeds": seeds,
        "normaliser": {"mean_ev": normaliser.mean_ev, "std_ev": normaliser.std_ev},
        # Members' noise variances are averaged: the ensemble's aleatoric part (docs/method.md §7).
        "noise_std_ev": (float(np.sqrt(np.mean(np.square(noise_std_ev))))
                         if all(v is not None for v in noise_std_ev) else None),
        "train_config": config.to_dict(),
        "data": {"source": str(dataset.source), "target": dataset.target, "labels_sha256": prepared.labels_sha256,
                 "split_sha256": split.fingerprint(),
                 **{f"n_{part}": len(prepared.parts[part][0]) for part in Split.PARTS},
                 "n_skipped": len(prepared.skipped), "train_n_atoms_max": int(max(train_atoms))},
        "split_file": "split.json",
        **({"base_weights": BASE_WEIGHTS_FILE} if base_weights is not None else {}),
        "versions": package_versions(),
        "calibration": None,
    }
    write_model_json(out_dir, meta)
    logger.info("wrote %s; calibrate it next", out_dir)
    return out_dir
