"""Load a saved model folder and predict band gaps (eV) with uncertainty, sharded over DDP ranks."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure
from torch import nn
from torch.utils.data import DataLoader

from mofbalora.adapters import forward_in_mode, set_adapter_mode
from mofbalora.data.datasets import default_cache_dir
from mofbalora.data.structures import expand_inputs
from mofbalora.featurise import featurise_paths
from mofbalora.model_folder import load_members, merge_if_adapted
from mofbalora.training.data import Collate, GraphDataset, TargetNormaliser
from mofbalora.uncertainty.intervals import gaussian_interval

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["id", "bandgap_mean_ev", "bandgap_std_ev", "lower_95_ev", "upper_95_ev", "status", "reason"]


class _PredictionStep(L.LightningModule):
    """Per batch: input indices and draws (eV): BaLoRA weight samples, ensemble members, or one."""

    def __init__(self, members: list[nn.Module], *, method: str, normaliser: TargetNormaliser, samples: int, seed: int):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.method, self.normaliser, self.samples, self.seed = method, normaliser, samples, seed

    def predict_step(self, batch: tuple[Any, Any, torch.Tensor], batch_index: int) -> dict[str, torch.Tensor]:
        graphs, _, index = batch
        if self.method == "balora":
            with set_adapter_mode(self.members[0], "sample", samples=self.samples, seed=self.seed):
                draws = self.members[0](graphs)  # [S, G]
        else:
            draws = torch.stack([forward_in_mode(member, graphs, "mean") for member in self.members])  # [M, G]
        return {"index": index, "draws": self.normaliser.to_ev(draws).T}  # [G, D] eV


class BandgapModel:
    """A trained model folder.

    Attributes:
        method: training method; ``balora`` samples weights, ``lora-ensemble`` uses its members,
            others are deterministic (std reported as NaN).
        meta: everything in ``model.json``.
    """

    def __init__(self, folder: Path, meta: dict[str, Any], members: list[nn.Module]) -> None:
        self.folder, self.meta, self.members = folder, meta, members
        self.method: str = meta["method"]
        self.normaliser = TargetNormaliser(**meta["normaliser"])
        for member in members:
            if self.method != "balora":
                merge_if_adapted(member)  # mean mode at bare-backbone cost

    @property
    def backbone(self) -> nn.Module:
        return self.members[0]

    @property
    def ood_std_threshold_ev(self) -> float | None:
        return self.meta.get("ood_std_threshold_ev")

    def predict_draws(self, samples: Sequence[Any], *, n_samples: int = 32, seed: int = 0,
                      batch_size: int | None = None, progress: bool = False,
                      trainer_kwargs: dict[str, Any] | None = None) -> np.ndarray:
        """Draws [D, n] in eV, in input order: D = S weight samples (BaLoRA), M members, or 1.

        With ``trainer_kwargs`` (e.g. ``{"devices": 2, "strategy": "ddp"}``) a Lightning Trainer runs
        the prediction, sharded across ranks and gathered back in input order; without, it runs in
        this process. Sample draws depend on (seed, input position) only, not on batching.
        """
        if not samples:
            return np.zeros((1, 0))
        # About this many structure-samples per pass keeps tensors cache-friendly on CPU.
        structures_per_pass = 64 if self.backbone.name == "cgcnn" else 16
        batch_size = batch_size or max(1, structures_per_pass // (n_samples if self.method == "balora" else 1))
        loader = DataLoader(GraphDataset(samples), batch_size=batch_size, shuffle=False,
                            collate_fn=Collate(self.backbone))
        step = _PredictionStep(self.members, method=self.method, normaliser=self.normaliser,
                               samples=n_samples, seed=seed)
        if trainer_kwargs is None:
            step.eval()
            with torch.inference_mode():
                parts = [step.predict_step(batch, number) for number, batch in enumerate(loader)]
        else:
            parts = self._predict_with_trainer(step, loader, trainer_kwargs, progress)
        index = torch.cat([p["index"] for p in parts]).numpy()
        draws = torch.cat([p["draws"] for p in parts]).double().numpy()
        # DistributedSampler pads shards with repeats; keep one row per input index.
        order = np.unique(index, return_index=True)[1]
        index, draws = index[order], draws[order]
        if not np.array_equal(index, np.arange(len(samples))):
            raise RuntimeError("prediction lost inputs while gathering shards")
        return draws.T

    def predict_samples(self, samples: Sequence[Any], **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (eV) over the draws of :meth:`predict_draws`; std is NaN for one draw."""
        draws = self.predict_draws(samples, **kwargs)
        mean = draws.mean(0)
        std = draws.std(0, ddof=1) if draws.shape[0] > 1 else np.full_like(mean, np.nan)
        return mean, std

    @staticmethod
    def _predict_with_trainer(step: L.LightningModule, loader: DataLoader, trainer_kwargs: dict[str, Any],
                              progress: bool) -> list[dict[str, torch.Tensor]]:
        """Lightning predict (DDP shards the inputs); every rank gets all shards back."""
        trainer = L.Trainer(**{"accelerator": "cpu", "devices": 1, **trainer_kwargs}, logger=False,
                            enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                            inference_mode=True)
        outputs = trainer.predict(step, dataloaders=loader)
        parts = [{k: v.cpu() for k, v in out.items()} for out in outputs]
        if trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, parts)
            parts = [part for rank_parts in gathered for part in rank_parts]
        return parts

    def predict(self, inputs: Sequence[str | os.PathLike | Structure] | str | os.PathLike, *, samples: int = 32,
                seed: int = 0, cache_dir: str | os.PathLike | None = None, progress: bool = False,
                trainer_kwargs: dict[str, Any] | None = None, workers: int = 0) -> pd.DataFrame:
        """Predict band gaps for CIF paths (files, folders, globs) or pymatgen Structures.

        Returns:
            One row per input, columns ``id, bandgap_mean_ev, bandgap_std_ev, lower_95_ev,
            upper_95_ev, status, reason``; invalid inputs get ``status="skipped"`` and the reason.
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        featuriser = self.backbone.make_featuriser()
        ids, reasons, feats = [], [], []
        structures = [x for x in inputs if isinstance(x, Structure)]
        if structures:
            for number, structure in enumerate(structures):
                ids.append(f"structure_{number}")
                feats.append(featuriser.featurise(structure, ids[-1]))
                reasons.append("")
        else:
            paths = expand_inputs(inputs)
            result = featurise_paths(paths, featuriser, cache_dir=cache_dir or default_cache_dir(),
                                     workers=workers, progress=progress)
            by_path = dict(zip(result.paths, result.samples))
            skipped = dict(zip(result.skipped["path"], result.skipped["reason"]))
            for path in paths:
                ids.append(path.name[:-4] if path.name.lower().endswith(".cif") else path.name)
                feats.append(by_path.get(str(path)))
                reasons.append(skipped.get(str(path), ""))
        valid = [i for i, f in enumerate(feats) if f is not None]
        mean, std = self.predict_samples([feats[i] for i in valid], n_samples=samples, seed=seed, progress=progress,
                                         trainer_kwargs=trainer_kwargs)
        table = pd.DataFrame({"id": ids, "bandgap_mean_ev": np.nan, "bandgap_std_ev": np.nan,
                              "status": "skipped", "reason": reasons})
        table.loc[valid, "bandgap_mean_ev"] = mean
        table.loc[valid, "bandgap_std_ev"] = std
        table.loc[valid, "status"] = "ok"
        lower, upper = gaussian_interval(table["bandgap_mean_ev"].to_numpy(), table["bandgap_std_ev"].to_numpy())
        table["lower_95_ev"], table["upper_95_ev"] = lower, upper
        return table[PREDICTION_COLUMNS]


def load_model(path: str | os.PathLike) -> BandgapModel:
    """Load a model folder written by ``mofbalora fit``; checks the backbone name and version."""
    meta, members = load_members(path)
    return BandgapModel(Path(path), meta, members)
