"""Fit the per-structure data-noise head σ_n(x) on a trained mean model's residuals (docs/method.md §13).

The mean is trained first (``training.fit``) and stays fixed; the head is then fitted by Gaussian
NLL on the training split's residuals, with early stopping on the validation split's. A fixed mean
is the limit of "warm up the mean before the variance trains": the variance head cannot hide hard
structures to help the mean, which is what makes a jointly trained head unstable (Seitzer et al.
2022). Inputs are tensors only (embeddings, predicted means and truths in standardised units); the
folder-level stage that computes them is ``mofbalora.data_noise``. It stands apart from the head's
module (``backbones.heads``, which inference loads) because it trains, and from the stage because it
knows nothing of model folders.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, get_args

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from mofbalora.backbones.heads import NEIGHBOUR_INPUTS, DataNoiseHead, NoiseInputs
from mofbalora.config_schema import read_yaml_mapping, strict_from_dict

logger = logging.getLogger(__name__)


@dataclass
class NoiseHeadConfig:
    """Settings of the data-noise stage, read from the ``noise_head`` section of
    ``pipelines/configs/uncertainty.yaml``.

    Attributes:
        variants: head inputs tried (``backbones.heads.NoiseInputs``); ``constant`` is the
            homoscedastic baseline. The one with the lowest validation NLL of the total predictive
            N(mean, σ_epi² + σ_n²) is kept (the rule is declared in the YAML before any test run).
        hidden: MLP width.
        floor_ev: smallest σ_n (eV).
        neighbours: k of the neighbour variants' nearest training structures in z.
        composition_neighbours: k of the composition variant's nearest training compositions.
        epochs, batch_size, lr, weight_decay, patience: AdamW on the training residuals, early
            stopping on the validation NLL.
        seed: initialisation and shuffling seed.
    """

    variants: tuple[str, ...] = ("constant", "embedding", "embedding+mean", "embedding+neighbours", "neighbours",
                                 "neighbours+composition")
    hidden: int = 32
    floor_ev: float = 0.05
    neighbours: int = 10
    composition_neighbours: int = 100
    epochs: int = 300
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-2
    patience: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        unknown = [v for v in self.variants if v not in get_args(NoiseInputs)]
        if unknown or not self.variants:
            raise ValueError(f"noise_head.variants must be a non-empty subset of {get_args(NoiseInputs)}, "
                             f"got {list(self.variants)}")
        for name in ("hidden", "epochs", "batch_size", "patience", "neighbours", "composition_neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"noise_head.{name} must be >= 1, got {getattr(self, name)}")
        if self.floor_ev < 0 or self.lr <= 0:
            raise ValueError("noise_head.floor_ev must be >= 0 and lr > 0")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["variants"] = list(self.variants)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NoiseHeadConfig":
        return strict_from_dict(cls, values, "noise_head")


def load_uncertainty_config(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML of the uncertainty stages: ``noise_head`` (a :class:`NoiseHeadConfig`) and the
    ``calibration`` mapping (Mondrian bins, the mean rule; ``calibrate.CalibrationSettings``)."""
    values = read_yaml_mapping(path, "the sections noise_head and calibration")
    if set(values) - {"noise_head", "calibration"}:
        raise ValueError(f"{path}: expected the sections noise_head and calibration")
    try:
        noise = NoiseHeadConfig.from_dict(values.get("noise_head") or {})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return {"noise_head": noise, "calibration": values.get("calibration") or {}}


def gaussian_nll_std(std: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian NLL of residuals under N(0, std²), without the constant."""
    return (torch.log(std) + 0.5 * (residual / std) ** 2).mean()


class _NoiseHeadModule(L.LightningModule):
    def __init__(self, head: DataNoiseHead, config: NoiseHeadConfig) -> None:
        super().__init__()
        self.head, self.config = head, config

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> torch.Tensor:
        z, mean, residual, neighbour = batch
        loss = gaussian_nll_std(self.head(z, mean, neighbour), residual)
        self.log("train_nll", loss, on_step=False, on_epoch=True, batch_size=len(mean))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_index: int) -> None:
        z, mean, residual, neighbour = batch
        self.log("val_nll", gaussian_nll_std(self.head(z, mean, neighbour), residual), on_epoch=True,
                 batch_size=len(mean))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.head.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)


def fit_noise_head(*, inputs: str, config: NoiseHeadConfig, std_scale: float, train: tuple[torch.Tensor, ...],
                   val: tuple[torch.Tensor, ...], element_counts: tuple[Any, Any] | None = None) -> DataNoiseHead:
    """One head variant fitted on ``train`` = (z [n, F], mean [n], truth [n]), standardised units.

    ``std_scale`` (eV per standardised unit) turns ``config.floor_ev`` into the head's floor.
    The weights of the epoch with the lowest validation NLL are returned. For the neighbour
    variants, ``z_train`` is also the set searched, and a training structure's own residual is
    left out of its feature. ``element_counts`` = (training, validation) counts
    [n, N_ELEMENT_COLUMNS] (``featurise.base.element_counts``) are needed by the composition variant.
    """
    z_train, mean_train, truth_train = (t.float() for t in train)
    z_val, mean_val, truth_val = (t.float() for t in val)
    L.seed_everything(config.seed, verbose=False)
    residual_train = truth_train - mean_train
    head = DataNoiseHead(embedding_dim=z_train.shape[1], inputs=inputs, hidden=config.hidden,
                         floor=config.floor_ev / std_scale, neighbours=config.neighbours, n_reference=len(z_train),
                         composition_neighbours=config.composition_neighbours)
    head.set_reference(z_train, initial_std=float(residual_train.pow(2).mean().sqrt()))
    counts_train, counts_val = element_counts if element_counts is not None else (None, None)
    if head.needs_composition and element_counts is None:
        raise ValueError(f"the {inputs} noise head needs the element counts of the training and validation structures")
    if inputs in NEIGHBOUR_INPUTS:
        head.set_neighbours(z_train, residual_train.abs(), counts_train)
        neighbour_train = head.neighbour_features(z_train, counts_train, exclude_self=True)
        neighbour_val = head.neighbour_features(z_val, counts_val)
    else:
        neighbour_train, neighbour_val = torch.zeros(len(z_train), 1), torch.zeros(len(z_val), 1)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(TensorDataset(z_train, mean_train, residual_train, neighbour_train),
                              batch_size=config.batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(TensorDataset(z_val, mean_val, truth_val - mean_val, neighbour_val), batch_size=len(mean_val))
    module = _NoiseHeadModule(head, config)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = ModelCheckpoint(dirpath=scratch, filename="best", monitor="val_nll", mode="min")
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=config.epochs, logger=False,
                            callbacks=[checkpoint, EarlyStopping(monitor="val_nll", mode="min", patience=config.patience)],
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)  # the head's _index (not a tensor) survives
    logger.info("noise head %s: best val NLL %.4f after %d epochs", inputs, float(checkpoint.best_model_score),
                trainer.current_epoch)
    return head.eval()
