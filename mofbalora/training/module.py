"""The LightningModule for band-gap regression, for every method (docs/method.md eq. 6)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from mofbalora.adapters.model import ALPHA_NET_NAME, adapter_kl_per_graph, adapter_state, forward_in_mode, has_adapters
from mofbalora.training.config import TrainConfig
from mofbalora.data.targets import TargetNormaliser


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class BandgapRegressor(L.LightningModule):
    """Wraps a backbone (with or without adapters) and trains it on standardised band gaps.

    Args:
        model: backbone with head; with adapters injected for lora/balora.
        config: the run's training config.
        normaliser: training-split target standardisation.
        n_train: training-set size N, for the KL scaling.
        steps_per_epoch: optimiser steps per epoch (for the schedule).
    """

    def __init__(self, model: nn.Module, *, config: TrainConfig, normaliser: TargetNormaliser, n_train: int,
                 steps_per_epoch: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.normaliser = normaliser
        self.n_train = n_train
        self.steps_per_epoch = steps_per_epoch
        self.is_balora = has_adapters(model) and adapter_state(model).config.kind == "balora"
        # Homoscedastic noise scale for likelihood="gaussian" (standardised units).
        self.log_noise_std = nn.Parameter(torch.zeros(()), requires_grad=config.likelihood == "gaussian")

    @property
    def noise_std_ev(self) -> float | None:
        """The learned data-noise std (eV) for ``likelihood="gaussian"``, else None."""
        if self.config.likelihood != "gaussian":
            return None
        return float(torch.exp(self.log_noise_std.detach())) * self.normaliser.std_ev

    def data_term(self, prediction: torch.Tensor, target: torch.Tensor, *, noise_std_grad: bool = True) -> torch.Tensor:
        if self.config.likelihood == "mse":
            return nn.functional.mse_loss(prediction, target)
        log_std = self.log_noise_std if noise_std_grad else self.log_noise_std.detach()
        variance = torch.exp(2 * log_std).expand_as(prediction)
        return nn.functional.gaussian_nll_loss(prediction, target, variance, full=True)

    def noise_std_term(self, graphs: Any, target: torch.Tensor) -> torch.Tensor:
        """``noise_std_fit="mean_mode"``: the Gaussian NLL of the noise-off prediction, which trains
        only the noise scale (method.md §5); zero otherwise."""
        if self.config.likelihood != "gaussian" or self.config.noise_std_fit != "mean_mode" or not self.is_balora:
            return torch.zeros((), device=self.device)
        with torch.no_grad():
            mean_prediction = forward_in_mode(self.model, graphs, "mean")
        return self.data_term(mean_prediction, target)

    def kl_term(self) -> torch.Tensor:
        if not self.is_balora:
            return torch.zeros((), device=self.device)
        adapter_config = adapter_state(self.model).config
        kl = adapter_kl_per_graph(self.model).mean()
        scale = 1.0 / self.n_train if adapter_config.kl_scaling == "dataset" else 1.0
        return adapter_config.kl_weight * scale * kl

    def on_train_epoch_start(self) -> None:
        self.model.train()  # backbones keep their BatchNorm layers in eval mode
        # Noise draws depend only on (seed, epoch, rank): a resumed run repeats an uninterrupted one.
        torch.manual_seed(self.config.seed * 100_003 + self.current_epoch * 1_009 + self.global_rank)

    def training_step(self, batch: tuple[Any, torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        graphs, target, _ = batch
        prediction = forward_in_mode(self.model, graphs, "train")
        separate_noise_fit = self.config.noise_std_fit == "mean_mode" and self.is_balora
        data = self.data_term(prediction, target, noise_std_grad=not separate_noise_fit)
        kl = self.kl_term()
        loss = data + kl + self.noise_std_term(graphs, target)
        size = len(target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train_data_term", data, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        if self.is_balora:
            self.log("train_kl_term", kl, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
            self.log_alpha_statistics(size)
        if self.config.likelihood == "gaussian":
            self.log("train_noise_std", torch.exp(self.log_noise_std.detach()), on_step=False, on_epoch=True,
                     batch_size=size, sync_dist=True)
        return loss

    def log_alpha_statistics(self, batch_size: int) -> None:
        """alpha(x) / c over the batch's structures and layers: its epoch mean, min and max.

        A minimum near 0 means the noise collapsed somewhere; values at 1 mean alpha sits at the
        prior's c, where the KL alone puts it (docs/method.md §4).
        """
        state = adapter_state(self.model)
        ratio = state.last_noise_alpha.detach() / state.config.prior_c
        for name, value, reduce in (("mean", ratio.mean(), "mean"), ("min", ratio.min(), "min"),
                                    ("max", ratio.max(), "max")):
            self.log(f"train_alpha_over_c_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size,
                     reduce_fx=reduce, sync_dist=True)

    def validation_step(self, batch: tuple[Any, torch.Tensor, torch.Tensor], batch_index: int) -> None:
        graphs, target, _ = batch
        prediction = forward_in_mode(self.model, graphs, "mean")
        mae_ev = (prediction - target).abs().mean() * self.normaliser.std_ev
        self.log("val_mae_ev", mae_ev, on_epoch=True, prog_bar=True, batch_size=len(target), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        alpha_net = [p for n, p in self.named_parameters() if p.requires_grad and f".{ALPHA_NET_NAME}." in f".{n}"]
        taken = {id(p) for p in alpha_net}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        groups = [{"params": params}]
        if alpha_net:
            groups.append({"params": alpha_net, "lr": self.config.lr * self.config.alpha_net_lr_factor})
        optimiser = torch.optim.AdamW(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)
        total = max(1, self.steps_per_epoch * self.config.epochs)
        if self.config.schedule == "onecycle":
            # OneCycleLR raises past its last step: one spare step for an epoch a batch longer than planned
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimiser, max_lr=[group["lr"] for group in optimiser.param_groups], total_steps=total + 1)
        else:
            warmup = max(1, int(self.config.warmup_fraction * total))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimiser, lambda step: warmup_cosine(step, total_steps=total, warmup_steps=warmup)
            )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
