"""Fit one method end to end: data, split, features, Lightning training per member, the model folder.

A rerun resumes: finished members are kept, an interrupted member continues from its last
checkpoint, and the model folder's ``model.json`` is written last.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from mofbalora.data.datasets import LabelledDataset, default_cache_dir, load_labelled_dataset
from mofbalora.data.io import write_table_atomic, write_text_atomic
from mofbalora.data.splits import Split, make_split
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.model_folder import (
    build_member, load_member, member_seeds, package_versions, save_member, weights_checksum, write_model_json,
)
from mofbalora.training.config import TrainConfig
from mofbalora.training.data import BandgapDataModule, GraphDataset, TargetNormaliser, compute_frozen_embeddings
from mofbalora.training.module import BandgapRegressor

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Featurised train/val/test parts of one split (ids, samples, gaps eV)."""

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
    table = select_subset(dataset, config)
    split_path = out_dir / "split.json"
    if split is None and split_path.exists():
        split = Split.load(split_path)
    if split is None:
        split = make_split(list(table["id"]), table[dataset.target].to_numpy(), fractions=config.split.fractions,
                           seed=config.split.seed, method=config.split.method)
    split.save(split_path)
    featuriser = get_featuriser(config.backbone)
    indexed = dataset.table.set_index("id")
    parts, skipped = {}, []
    for part in ("train", "val", "test"):
        ids = getattr(split, part)
        result = featurise_paths(list(indexed.loc[ids, "path"]), featuriser, cache_dir=default_cache_dir(),
                                 max_atoms=config.max_atoms, progress=progress)
        kept = result.ids
        parts[part] = (kept, result.samples, indexed.loc[kept, dataset.target].to_numpy(dtype=float))
        skipped.append(result.skipped.assign(split=part))
    skipped_table = pd.concat(skipped, ignore_index=True)
    return PreparedData(split, parts, skipped_table, dataset.labels_sha256)


def _trainer(config: TrainConfig, member_dir: Path, *, progress: bool, overrides: dict[str, Any]) -> tuple[L.Trainer, ModelCheckpoint, EarlyStopping]:
    checkpoint = ModelCheckpoint(dirpath=member_dir / "checkpoints", filename="best", monitor="val_mae_ev",
                                 mode="min", save_last=True)
    early_stop = EarlyStopping(monitor="val_mae_ev", mode="min", patience=config.patience)
    kwargs = {"accelerator": "cpu", "devices": 1, **{k: v for k, v in overrides.items() if v is not None}}
    trainer = L.Trainer(max_epochs=config.epochs, callbacks=[checkpoint, early_stop],
                        logger=CSVLogger(member_dir, name="logs", version=0), enable_progress_bar=progress,
                        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0,
                        use_distributed_sampler=False, **kwargs)
    return trainer, checkpoint, early_stop


def train_member(config: TrainConfig, data: PreparedData, *, seed: int, member_dir: Path,
                 normaliser: TargetNormaliser, frozen: dict[str, torch.Tensor] | None, progress: bool,
                 trainer_overrides: dict[str, Any]) -> tuple[torch.nn.Module, bool]:
    """Train one member; returns (model with the best weights, whether training finished)."""
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_member(backbone=config.backbone, method=config.method, adapter=config.adapter, seed=seed)
    train_ids, train_samples, train_gaps = data.parts["train"]
    _, val_samples, val_gaps = data.parts["val"]
    datamodule = BandgapDataModule(
        train=GraphDataset(train_samples, normaliser.to_standard(train_gaps), frozen and frozen["train"]),
        val=GraphDataset(val_samples, normaliser.to_standard(val_gaps), frozen and frozen["val"]),
        backbone=model, batch_size=config.batch_size, seed=seed, num_workers=config.num_workers,
    )
    trainer, checkpoint, early_stop = _trainer(config, member_dir, progress=progress, overrides=trainer_overrides)
    steps_per_epoch = int(np.ceil(len(train_samples) / trainer.world_size / config.batch_size))
    module = BandgapRegressor(model, config=config, normaliser=normaliser, n_train=len(train_samples),
                              steps_per_epoch=steps_per_epoch)
    last = member_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    finished = trainer.current_epoch >= config.epochs or early_stop.stopped_epoch > 0
    best = checkpoint.best_model_path
    if finished and best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    if trainer.world_size > 1:
        # Every rank records what it holds, so DDP consistency can be checked after the run.
        write_text_atomic(member_dir / "rank_checksums" / f"rank{trainer.global_rank}.txt", weights_checksum(model))
    return model, finished and trainer.is_global_zero


def fit(config: TrainConfig, *, data: str | os.PathLike | None = None, out_dir: str | os.PathLike,
        progress: bool = True, trainer_overrides: dict[str, Any] | None = None,
        split: Split | None = None) -> Path | None:
    """Train ``config.method`` and write the model folder ``out_dir``.

    Returns:
        ``out_dir`` once the model is complete, or None if training stopped early (e.g. a
        ``max_steps`` override) or this is not the global-zero rank; rerun to resume.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(trainer_overrides or {})
    write_text_atomic(out_dir / "train_config.json", json.dumps(config.to_dict(), indent=1))
    dataset = load_labelled_dataset(data)
    prepared = prepare_data(config, dataset, out_dir, progress=progress, split=split)
    write_table_atomic(prepared.skipped, out_dir / "skipped.csv")
    train_gaps = prepared.parts["train"][2]
    normaliser = TargetNormaliser.fit(train_gaps)
    frozen = None
    if config.method == "balora":
        # z(x) does not change during training: compute it once per structure (docs/method.md §2).
        from mofbalora.backbones import get_backbone

        bare = get_backbone(config.backbone)
        frozen = {part: compute_frozen_embeddings(bare, prepared.parts[part][1]) for part in ("train", "val")}
    members, seeds, complete = [], member_seeds(config.method, config.seed, config.ensemble_size), True
    for number, seed in enumerate(seeds):
        member_dir = out_dir / "members" / str(number)
        if (member_dir / "done").exists():
            members.append(load_member(member_dir, backbone=config.backbone, method=config.method, seed=seed))
            continue
        model, finished = train_member(config, prepared, seed=seed, member_dir=member_dir, normaliser=normaliser,
                                       frozen=frozen, progress=progress, trainer_overrides=overrides)
        if not finished:
            complete = False
            break
        save_member(model, member_dir, config.method)
        write_text_atomic(member_dir / "done", "finished\n")
        members.append(model)
    if not complete:
        logger.warning("training stopped before the end; rerun the same command to resume")
        return None
    from mofbalora.predict import BandgapModel

    meta = {
        "method": config.method,
        "backbone": {"name": members[0].name, "version": members[0].version},
        "members": [f"members/{n}" for n in range(len(members))],
        "member_seeds": seeds,
        "normaliser": {"mean_ev": normaliser.mean_ev, "std_ev": normaliser.std_ev},
        "train_config": config.to_dict(),
        "data": {"source": str(dataset.source), "labels_sha256": prepared.labels_sha256,
                 "n_train": len(prepared.parts["train"][0]), "n_val": len(prepared.parts["val"][0]),
                 "n_test": len(prepared.parts["test"][0]), "n_skipped": len(prepared.skipped)},
        "split_file": "split.json",
        "versions": package_versions(),
    }
    predictor = BandgapModel(out_dir, meta, members)
    val_ids, val_samples, val_gaps = prepared.parts["val"]
    val_mean, val_std = predictor.predict_samples(val_samples, n_samples=config.calibration_samples, seed=config.seed)
    finite_std = val_std[np.isfinite(val_std)]
    # OOD threshold: the ood_quantile of validation stds (None for deterministic methods).
    meta["ood_std_threshold_ev"] = float(np.quantile(finite_std, config.ood_quantile)) if len(finite_std) else None
    meta["metrics"] = {"val_mae_ev": float(np.mean(np.abs(val_mean - val_gaps))),
                       "val_mean_std_ev": float(np.mean(finite_std)) if len(finite_std) else None}
    write_model_json(out_dir, meta)
    logger.info("wrote %s (val MAE %.3f eV)", out_dir, meta["metrics"]["val_mae_ev"])
    return out_dir
