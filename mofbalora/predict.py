"""Load a saved model folder and predict PBE band gaps (eV) with calibrated uncertainty, sharded over DDP ranks.

The predictive distribution of a structure has two parts (docs/method.md §7): the epistemic std
(BaLoRA weight samples or ensemble spread) and the data-noise std, per structure when the folder
has a noise head (§13; ``mofbalora.data_noise``). Their total is calibrated by the conformal
calibrator fitted on the model's held-out calibration split (``mofbalora.fit_calibrate``), which gives
the intervals, window probabilities and ``p_metallic``, all censored at 0 eV. Predictions default
to the number of samples S the model was calibrated with.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from pymatgen.core import IStructure, Structure
from scipy.stats import norm
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mofbalora.adapters import forward_in_mode, set_adapter_mode
from mofbalora.adapters.config import SAMPLING_METHODS
from mofbalora.adapters.folding import fold_batchnorm
from mofbalora.backbones.batching import Collate, GraphDataset, compute_frozen_embeddings
from mofbalora.data.datasets import default_cache_dir
from mofbalora.data.structures import (
    DEFAULT_MAX_ATOMS, InvalidReason, InvalidStructureError, check_structure, expand_inputs, unique_structure_ids,
)
from mofbalora.data.targets import TargetNormaliser
from mofbalora.featurise import featurise_paths
from mofbalora.featurise.base import element_counts, metal_family, sample_num_atoms
from mofbalora.model_folder import (
    TRAIN_EMBEDDINGS_FILE, bare_member, load_members, load_noise_head, load_train_embeddings, merge_if_adapted,
)
from mofbalora.uncertainty.conformal import ConformalCalibrator
from mofbalora.uncertainty.intervals import (
    INTERVAL_TAILS, IntervalTails, check_window, gaussian_interval, window_probability,
)
from mofbalora.uncertainty.ood import EmbeddingDistance, ood_reasons
from mofbalora.uncertainty.recalibration import StdRecalibrator

if TYPE_CHECKING:
    from ase import Atoms

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["id", "bandgap_mean_ev", "bandgap_std_ev", "bandgap_std_epistemic_ev",
                      "bandgap_std_aleatoric_ev", "lower_95_ev", "upper_95_ev", "p_metallic", "out_of_distribution",
                      "ood_reason", "status", "reason"]

#: ``p_metallic`` is the calibrated P(gap < this), in eV
METALLIC_GAP_EV = 0.1


def member_seed(seed: int, number: int) -> int:
    """The sampling seed of member ``number``: ``seed`` itself for the first (a one-member model's
    draws stay as they were), then ``seed + number`` wrapped into torch's generator range."""
    return seed if number == 0 else (seed + number) % 2**64


class _PredictionStep(L.LightningModule):
    """Per batch: input indices and draws (eV): BaLoRA weight samples, ensemble members, or one."""

    def __init__(self, members: list[nn.Module], *, method: str, normaliser: TargetNormaliser, samples: int, seed: int):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.method, self.normaliser, self.samples, self.seed = method, normaliser, samples, seed

    def predict_step(self, batch: tuple[Any, Any, torch.Tensor], batch_index: int) -> dict[str, torch.Tensor]:
        graphs, _, index = batch
        if self.method in SAMPLING_METHODS:  # S draws of each member, each with its own seed: [M·S, G]
            draws = torch.cat([self._sampled(member, graphs, member_seed(self.seed, number))
                               for number, member in enumerate(self.members)])
        else:
            draws = torch.stack([forward_in_mode(member, graphs, "mean") for member in self.members])  # [M, G]
        return {"index": index, "draws": self.normaliser.to_ev(draws).T}  # [G, D] eV

    def _sampled(self, member: nn.Module, graphs: Any, seed: int) -> torch.Tensor:
        with set_adapter_mode(member, "sample", samples=self.samples, seed=seed):
            return member(graphs)  # [S, G]


@dataclass
class Predictive:
    """Per-structure predictive quantities (eV), arrays of length n.

    Attributes:
        mean: predictive mean of the draws (may be below 0; the reported mean is not).
        std_epistemic: std of the draws (NaN for one draw: deterministic methods).
        std_aleatoric: the data-noise std σ_n(x) (constant without a noise head; NaN without any).
        std_total_raw: sqrt(epistemic² + noise²) before the conformal step, recalibrated where the
            folder has a recalibration (NaN for a deterministic method without a noise head); the
            std the conformal calibrator normalises by.
        embedding_distance: mean distance to the k nearest training embeddings.
        n_atoms: atoms per cell.
        metal_family: atomic number of the cell's most frequent metal, 0 for none
            (``featurise.base.metal_family``).
    """

    mean: np.ndarray
    std_epistemic: np.ndarray
    std_aleatoric: np.ndarray
    std_total_raw: np.ndarray
    embedding_distance: np.ndarray
    n_atoms: np.ndarray
    metal_family: np.ndarray


class BandgapModel:
    """A trained model folder.

    Attributes:
        method: training method; ``balora`` samples weights and ``lora-mcdropout`` dropout masks
            (S draws), ``lora-ensemble`` uses its members, others are deterministic (epistemic std reported as NaN).
        meta: everything in ``model.json``.
        calibrator: the conformal calibrator, or None for a folder not yet calibrated.
        interval_tails: where a 95% interval's 5% of misses go (``intervals=`` at load): ``calibrated``
            (the split the calibration chose on validation; qmof-pbe leaves 1.5% below and 3.5% above) or
            ``central`` (2.5% each side: sharper where the model is sure, fewer near-metals covered).
            Means, stds and probabilities do not depend on it (docs/method.md §9).
    """

    def __init__(self, folder: Path, meta: dict[str, Any], members: list[nn.Module], *,
                 intervals: IntervalTails = "calibrated") -> None:
        if intervals not in INTERVAL_TAILS:
            raise ValueError(f"intervals must be one of {', '.join(INTERVAL_TAILS)}, got {intervals!r}")
        self.folder, self.meta, self.members = folder, meta, members
        self.interval_tails: IntervalTails = intervals
        self.method: str = meta["method"]
        self.normaliser = TargetNormaliser(**meta["normaliser"])
        self.noise_std_ev: float | None = meta.get("noise_std_ev")
        calibration = meta.get("calibration") or {}
        self.calibrator = (ConformalCalibrator.from_dict(calibration["conformal"])
                           if calibration.get("conformal") else None)
        if self.calibrator is not None and intervals == "central":
            self.calibrator.lower_miss_share = 0.5
        self.ood_thresholds: dict[str, Any] = calibration.get("ood", {})
        #: the std's recalibration before the conformal step (docs/method.md §9), or None
        self.recalibrator = (StdRecalibrator.from_dict(calibration["recalibration"])
                             if calibration.get("recalibration") else None)
        self.noise_head = load_noise_head(folder, meta["noise_head"]) if meta.get("noise_head") else None
        #: S the calibrator saw, the default of every prediction (a different S gives other stds)
        self.default_samples: int = int(calibration.get("samples") or meta["train_config"]["calibration_samples"])
        for member in members:
            if self.method not in SAMPLING_METHODS:
                merge_if_adapted(member)  # mean mode at bare-backbone cost
            fold_batchnorm(member)  # inference only: one pass less per layer, the same numbers
        self._bare: nn.Module | None = None
        self._distance: EmbeddingDistance | None = None

    @property
    def backbone(self) -> nn.Module:
        return self.members[0]

    @property
    def ood_std_threshold_ev(self) -> float | None:
        return self.ood_thresholds.get("epistemic_std_ev")

    @property
    def embedding_distance(self) -> EmbeddingDistance:
        """k-NN distance to the training structures' frozen embeddings (fitted lazily)."""
        if self._distance is None:
            k = int(self.meta["train_config"].get("ood_neighbours", 5))
            self._distance = EmbeddingDistance(k=k).fit(load_train_embeddings(self.folder).numpy())
        return self._distance

    def frozen_embeddings(self, samples: Sequence[Any]) -> np.ndarray:
        """The bare pretrained backbone's crystal embeddings [n, dim] (no adapters, no fine-tuning)."""
        if self._bare is None:
            config = self.meta["train_config"]
            self._bare = fold_batchnorm(bare_member(backbone=config["backbone"], head="pretrained",
                                                    seed=config.get("seed", 0)))
        return compute_frozen_embeddings(self._bare, samples).numpy()

    def predict_draws(self, samples: Sequence[Any], *, n_samples: int | None = None, seed: int = 0,
                      batch_size: int | None = None, progress: bool = False, progress_label: str | None = None,
                      trainer_kwargs: dict[str, Any] | None = None,
                      frozen_embeddings: torch.Tensor | None = None) -> np.ndarray:
        """Draws [D, n] in eV, in input order: D = S samples of each member (BaLoRA, MC dropout), M members, or 1.

        With ``trainer_kwargs`` (e.g. ``{"devices": 2, "strategy": "ddp"}``) a Lightning Trainer runs
        the prediction, sharded across ranks and gathered back in input order; without, it runs in
        this process. A structure's draws depend only on (seed, its content key): not on its
        position, the batching or the number of ranks. ``progress`` shows a bar per batch, named
        ``progress_label`` before S and the sampling seed (default: the method).
        ``frozen_embeddings`` [n, dim] (:meth:`frozen_embeddings`) spare BaLoRA the bare pass for z(x).
        """
        n_samples = self.default_samples if n_samples is None else n_samples
        check_samples(n_samples, seed)  # before the batch size divides by it
        if not samples:
            return np.zeros((1, 0))
        # About this many structure-samples per pass keeps tensors cache-friendly on CPU: for qmof-pbe
        # at S = 8 on 2 cores, 16 (2 structures a pass) took 48 ms per MOF against 88 ms at 64
        # (benchmarks/results.json, "screening"); the draws do not depend on it (keyed noise).
        structures_per_pass = 16
        batch_size = batch_size or max(1, structures_per_pass // (n_samples if self.method in SAMPLING_METHODS else 1))
        dataset = GraphDataset(samples, frozen_embeddings=frozen_embeddings if self.method == "balora" else None)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                            collate_fn=Collate(self.backbone))
        step = _PredictionStep(self.members, method=self.method, normaliser=self.normaliser,
                               samples=n_samples, seed=seed)
        if trainer_kwargs is None:
            step.eval()
            with torch.inference_mode():
                batches = tqdm(loader, desc=f"{progress_label or self.method}, S={n_samples}, sampling seed {seed}",
                               unit="batch", disable=not progress, leave=False)
                parts = [step.predict_step(batch, number) for number, batch in enumerate(batches)]
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
        """Mean and epistemic std (eV) over the draws of :meth:`predict_draws`; std is NaN for one draw."""
        draws = self.predict_draws(samples, **kwargs)
        mean = draws.mean(0)
        std = draws.std(0, ddof=1) if draws.shape[0] > 1 else np.full_like(mean, np.nan)
        return mean, std

    def aleatoric_std(self, frozen: np.ndarray | None, mean_ev: np.ndarray,
                      element_counts: np.ndarray | None = None) -> np.ndarray:
        """σ_n(x) in eV: the noise head's (docs/method.md §13), else the one learned number, else NaN.

        ``frozen``: z(x) [n, dim]; ``element_counts`` [n, N_ELEMENT_COLUMNS]
        (``featurise.base.element_counts``), read only by a composition-aware head."""
        if self.noise_head is None:
            return np.full(len(mean_ev), np.nan if self.noise_std_ev is None else self.noise_std_ev)
        if len(mean_ev) == 0:
            return np.zeros(0)
        with torch.inference_mode():
            std = self.noise_head(torch.as_tensor(frozen, dtype=torch.float32),
                                  torch.as_tensor(self.normaliser.to_standard(mean_ev), dtype=torch.float32),
                                  element_counts=element_counts)
        return std.double().numpy() * self.normaliser.std_ev

    @property
    def head_reads_composition(self) -> bool:
        """Whether the noise head reads the cell's element counts."""
        return self.noise_head is not None and self.noise_head.needs_composition

    def head_element_counts(self, samples: Sequence[Any]) -> np.ndarray | None:
        """The element counts of ``samples`` when the noise head reads them, else None."""
        return element_counts(samples) if self.head_reads_composition else None

    def aleatoric_std_of(self, samples: Sequence[Any], mean_ev: np.ndarray) -> np.ndarray:
        """:meth:`aleatoric_std` of featurised ``samples`` with predicted means ``mean_ev`` (eV)."""
        frozen = self.frozen_embeddings(samples) if self.noise_head is not None and len(samples) else None
        return self.aleatoric_std(frozen, np.asarray(mean_ev, dtype=float), self.head_element_counts(samples))

    def total_std(self, std_epistemic: np.ndarray, std_aleatoric: np.ndarray) -> np.ndarray:
        """sqrt(epistemic² + noise²) in eV, uncalibrated. Without a noise head it is NaN where the
        epistemic std is NaN (a deterministic model then gets the constant-width calibration);
        with one, a deterministic model's total is σ_n(x)."""
        if self.noise_head is None:
            return np.sqrt(np.square(std_epistemic) + np.nan_to_num(std_aleatoric) ** 2)
        return np.sqrt(np.square(np.nan_to_num(std_epistemic)) + np.square(std_aleatoric))

    def predict_mean_mode(self, samples: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
        """Noise-off predictions (eV) [n]: adapters in mean mode, the members' average."""
        loader = DataLoader(GraphDataset(samples), batch_size=batch_size, shuffle=False,
                            collate_fn=Collate(self.backbone))
        parts = []
        with torch.inference_mode():
            for graphs, _, _ in loader:
                draws = torch.stack([forward_in_mode(member, graphs, "mean") for member in self.members])
                parts.append(self.normaliser.to_ev(draws).mean(0))
        return torch.cat(parts).double().numpy() if parts else np.zeros(0)

    def predictive(self, samples: Sequence[Any], *, n_samples: int | None = None, seed: int = 0,
                   progress: bool = False, trainer_kwargs: dict[str, Any] | None = None) -> Predictive:
        """Mean, stds, embedding distance and size of every sample (see :class:`Predictive`)."""
        # z(x) once per structure: BaLoRA's alpha(x) input, the noise head's and the OOD score's
        has_reference = (self.folder / TRAIN_EMBEDDINGS_FILE).exists()
        needs_frozen = has_reference or self.method == "balora" or self.noise_head is not None
        frozen = self.frozen_embeddings(samples) if len(samples) and needs_frozen else None
        mean, std = self.predict_samples(samples, n_samples=n_samples, seed=seed, progress=progress,
                                         trainer_kwargs=trainer_kwargs,
                                         frozen_embeddings=None if frozen is None else torch.from_numpy(frozen))
        if not len(samples) or not has_reference:
            # a folder from before the embedding-distance flag has no reference set: no such flag
            distance = np.full(len(samples), np.nan)
        else:
            distance = self.embedding_distance.score(frozen)
        counts = element_counts(samples)
        aleatoric = self.aleatoric_std(frozen, mean, counts if self.head_reads_composition else None)
        family = metal_family(counts)
        total = self.total_std(std, aleatoric)
        if self.recalibrator is not None:
            total = self.recalibrator.predict(total, family=family, distance=distance)
        return Predictive(mean, std, aleatoric, total, distance,
                          np.array([sample_num_atoms(s) for s in samples], dtype=int), family)

    def intervals(self, predictive: Predictive, *, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated interval (eV), leaving the calibrator's lower miss share of the rest below it
        (docs/method.md §9; ½, central, for models calibrated before 2026-12-01); central Gaussian on
        the raw total std when uncalibrated."""
        if self.calibrator is None:
            return gaussian_interval(predictive.mean, predictive.std_total_raw, coverage=confidence)
        return self.calibrator.interval(predictive.mean, predictive.std_total_raw, confidence=confidence)

    def calibrated_std(self, predictive: Predictive) -> np.ndarray:
        if self.calibrator is None:
            return predictive.std_total_raw
        return self.calibrator.calibrated_std(predictive.mean, predictive.std_total_raw)

    def point_prediction(self, predictive: Predictive) -> np.ndarray:
        """The reported mean (eV, ≥ 0): the calibrator's rule, max(mean, 0) when uncalibrated."""
        if self.calibrator is None:
            return np.maximum(predictive.mean, 0.0)
        return self.calibrator.point_prediction(predictive.mean, predictive.std_total_raw)

    def cdf(self, predictive: Predictive, value_ev: float) -> np.ndarray:
        """Calibrated P(gap ≤ value), censored at 0 eV (Gaussian when uncalibrated; NaN without a std)."""
        if self.calibrator is None:
            return np.where(value_ev < 0, 0.0, norm.cdf((value_ev - predictive.mean) / predictive.std_total_raw))
        return self.calibrator.cdf(predictive.mean, predictive.std_total_raw, value_ev)

    def window_probability(self, predictive: Predictive, low_ev: float, high_ev: float) -> np.ndarray:
        """P(low ≤ gap ≤ high) from the calibrated predictive CDF (Gaussian when uncalibrated)."""
        if self.calibrator is None:
            return window_probability(predictive.mean, predictive.std_total_raw, low_ev, high_ev)
        return self.calibrator.window_probability(predictive.mean, predictive.std_total_raw, low_ev, high_ev)

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

    def predict(self, inputs: Sequence[Any] | str | os.PathLike | Structure, *, samples: int | None = None,
                seed: int = 0, cache_dir: str | os.PathLike | None = None, progress: bool = False,
                trainer_kwargs: dict[str, Any] | None = None, workers: int = 0,
                window_ev: tuple[float, float] | None = None, max_atoms: int = DEFAULT_MAX_ATOMS) -> pd.DataFrame:
        """Predict PBE band gaps for CIF paths (files, folders, globs), pymatgen Structures and ASE
        Atoms, mixed in one list. A cell with more than ``max_atoms`` atoms is skipped; one let
        through that is larger than every training cell is flagged out of distribution.

        Returns:
            One row per input, columns :data:`PREDICTION_COLUMNS` (plus ``p_in_window`` with
            ``window_ev``); ``bandgap_std_ev`` and the interval are calibrated, the epistemic std
            is the raw sample/ensemble spread. Invalid inputs get ``status="skipped"`` and the reason.
        """
        slots, ids = resolve_inputs(inputs)
        if message := self.samples_warning(samples):
            warnings.warn(message, UserWarning, stacklevel=2)
        return self.predict_resolved(slots, ids, samples=samples, seed=seed, cache_dir=cache_dir, progress=progress,
                                     trainer_kwargs=trainer_kwargs, workers=workers, window_ev=window_ev,
                                     max_atoms=max_atoms)

    def samples_warning(self, samples: int | None) -> str | None:
        """Why ``samples`` (S) other than the calibrated one is a bad idea for this model, or None."""
        if samples is None or samples == self.default_samples or self.method not in SAMPLING_METHODS:
            return None
        return (f"the model was calibrated at S = {self.default_samples}; at S = {samples} its stds are not the ones "
                "its intervals were calibrated for"
                + ("; one sample has no spread, so no structure is flagged by its epistemic std" if samples == 1
                   else ""))

    def screen(self, inputs: Sequence[Any] | str | os.PathLike | Structure, *, gap_ev: tuple[float, float],
               samples: int | None = None, seed: int = 0, in_distribution_first: bool = False,
               **kwargs: Any) -> pd.DataFrame:
        """Rank inputs (as for :meth:`predict`) by the calibrated probability ``p_in_window`` that
        their PBE gap lies in ``gap_ev`` = (low, high) eV; the table ``mofbalora screen`` writes.
        ``in_distribution_first`` ranks structures flagged out of distribution after the rest."""
        from mofbalora.uncertainty.screening import rank_by_window

        low, high = check_window(gap_ev)
        table = self.predict(inputs, samples=samples, seed=seed, window_ev=(low, high), **kwargs)
        return rank_by_window(table, low, high, in_distribution_first=in_distribution_first)

    def predict_resolved(self, slots: Sequence[Path | Structure | Atoms], ids: Sequence[str], *,
                         samples: int | None = None, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                         progress: bool = False, trainer_kwargs: dict[str, Any] | None = None, workers: int = 0,
                         window_ev: tuple[float, float] | None = None,
                         max_atoms: int = DEFAULT_MAX_ATOMS) -> pd.DataFrame:
        """:meth:`predict` for inputs already expanded by :func:`resolve_inputs` (``ids`` given)."""
        if window_ev is not None:  # before the work, which a bad window would otherwise lose at the end
            window_ev = check_window(window_ev)
        check_samples(samples, seed)
        feats, reasons = self.featurise_inputs(slots, ids, cache_dir=cache_dir, workers=workers, progress=progress,
                                                max_atoms=max_atoms)
        ids = list(ids)
        valid = [i for i, f in enumerate(feats) if f is not None]
        predictive = self.predictive([feats[i] for i in valid], n_samples=samples, seed=seed, progress=progress,
                                     trainer_kwargs=trainer_kwargs)
        table = pd.DataFrame({"id": ids, "bandgap_mean_ev": np.nan, "bandgap_std_ev": np.nan,
                              "bandgap_std_epistemic_ev": np.nan, "bandgap_std_aleatoric_ev": np.nan,
                              "lower_95_ev": np.nan, "upper_95_ev": np.nan, "p_metallic": np.nan,
                              "out_of_distribution": False, "ood_reason": "", "status": "skipped",
                              "reason": reasons})
        for column, values in self.summarise(predictive, window_ev=window_ev).items():
            if column not in table:
                table[column] = np.nan
            table.loc[valid, column] = values.to_numpy()
        table.loc[valid, "status"] = "ok"
        columns = list(PREDICTION_COLUMNS)
        if window_ev is not None:
            columns.insert(columns.index("out_of_distribution"), "p_in_window")
        return table[columns]

    def summarise(self, predictive: Predictive, *, window_ev: tuple[float, float] | None = None,
                  interval_levels: Sequence[int] = (95,)) -> pd.DataFrame:
        """The reported columns of every predicted structure: the non-negative mean, calibrated
        total std, epistemic and aleatoric stds, calibrated ``lower_<L>_ev``/``upper_<L>_ev`` per
        level L (%), ``p_metallic``, OOD flag and reason, and ``p_in_window`` with ``window_ev``."""
        table = pd.DataFrame({"bandgap_mean_ev": self.point_prediction(predictive),
                              "bandgap_std_ev": self.calibrated_std(predictive),
                              "bandgap_std_epistemic_ev": predictive.std_epistemic,
                              "bandgap_std_aleatoric_ev": predictive.std_aleatoric})
        for level in interval_levels:
            table[f"lower_{level}_ev"], table[f"upper_{level}_ev"] = self.intervals(predictive, confidence=level / 100)
        table["p_metallic"] = self.cdf(predictive, METALLIC_GAP_EV)
        why = ood_reasons(epistemic_std_ev=predictive.std_epistemic, embedding_distance=predictive.embedding_distance,
                          n_atoms=predictive.n_atoms, thresholds=self.ood_thresholds)
        table["out_of_distribution"] = [bool(w) for w in why]
        table["ood_reason"] = list(why)
        if window_ev is not None:
            table["p_in_window"] = self.window_probability(predictive, *window_ev)
        return table

    def featurise_inputs(self, slots: Sequence[Path | Structure | Atoms], ids: Sequence[str], *,
                          cache_dir: str | os.PathLike | None, workers: int, progress: bool,
                          max_atoms: int = DEFAULT_MAX_ATOMS) -> tuple[list[Any], list[str]]:
        """(sample or None, skip reason) per input, in input order; paths, Structures and Atoms may mix."""
        featuriser = self.backbone.make_featuriser()
        paths = [slot for slot in slots if isinstance(slot, Path)]
        result = featurise_paths(paths, featuriser, cache_dir=cache_dir or default_cache_dir(), workers=workers,
                                 progress=progress, max_atoms=max_atoms) if paths else None
        by_path = dict(zip(result.paths, result.samples)) if result else {}
        skipped = dict(zip(result.skipped["path"], result.skipped["reason"])) if result else {}
        feats, reasons = [], []
        for slot, structure_id in zip(slots, ids):
            if not isinstance(slot, Path):  # a Structure or an ASE Atoms
                try:
                    structure = check_structure(_as_structure(slot, structure_id), structure_id, max_atoms=max_atoms)
                    feats.append(featuriser.featurise(structure, structure_id))
                    reasons.append("")
                except InvalidStructureError as err:  # the checks a CIF gets: no 3-D cell, disorder, atoms too close
                    feats.append(None)
                    reasons.append(err.reason_text)
                except Exception as exc:  # one bad structure never loses the others
                    feats.append(None)
                    reasons.append(f"featurisation failed: {type(exc).__name__}: {exc}"[:300])
                continue
            feats.append(by_path.get(str(slot)))
            reasons.append(skipped.get(str(slot), ""))
        return feats, reasons


def check_samples(samples: int | None, seed: int = 0) -> None:
    """Refuse a number of weight samples S below 1 (None means the model's calibrated S), and a
    sampling seed that torch's generator cannot take.

    Raises:
        ValueError: S < 1, or a seed outside [-2^63, 2^64) (it failed mid-run with 'Overflow when
            unpacking long long').
    """
    if samples is not None and samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not -2**63 <= seed < 2**64:
        raise ValueError(f"seed must lie in [-2^63, 2^64), got {seed}")


def _in_memory(item: Any) -> bool:
    """A pymatgen Structure (also an immutable ``IStructure``) or an ASE ``Atoms`` (not a path)."""
    from ase import Atoms

    return isinstance(item, (IStructure, Atoms))


def _as_structure(item: IStructure | Atoms, structure_id: str) -> Structure:
    """A pymatgen Structure for a Structure, an ``IStructure`` or an ASE ``Atoms``.

    Raises:
        InvalidStructureError: an ``Atoms`` without a 3-D cell (a molecule), which no crystal graph takes.
    """
    if isinstance(item, Structure):
        return item
    if isinstance(item, IStructure):
        return Structure.from_sites(item)
    from pymatgen.io.ase import AseAtomsAdaptor

    if item.cell.rank < 3:
        raise InvalidStructureError(structure_id, InvalidReason.NO_3D_LATTICE, f"cell of rank {item.cell.rank}")
    return AseAtomsAdaptor.get_structure(item)


def resolve_inputs(inputs: Sequence[Any] | str | os.PathLike | Structure
                   ) -> tuple[list[Path | Structure | Atoms], list[str]]:
    """Expand files, folders and globs in input order and give every input its id: the file stem
    (made unique by parent folders), or ``structure_<position>`` for a pymatgen Structure or ASE
    ``Atoms`` (converted when featurised; ``_in_memory`` is appended where a file has that stem).
    The id only names the row: a prediction depends on the structure's content, the model and the
    seed, not on its position.

    Raises:
        TypeError: an input that is neither a path (str, bytes, ``os.PathLike``) nor a Structure or Atoms.
        ValueError: an empty path, or a file listed more than once.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)) or _in_memory(inputs):
        inputs = [inputs]
    elif not isinstance(inputs, Iterable):
        raise TypeError(f"inputs: expected a path, folder, glob pattern, Structure or Atoms, or a list of them; "
                        f"got {type(inputs).__name__}")
    slots: list[Path | Structure | Atoms] = []
    for number, item in enumerate(inputs):
        if _in_memory(item):
            slots.append(item)
        elif isinstance(item, (str, bytes, os.PathLike)):
            slots.extend(expand_inputs([item]))
        else:  # caught before any work, with its position, rather than read as a file named "None"
            raise TypeError(f"input {number}: expected a path, folder, glob pattern, Structure or Atoms; "
                            f"got {type(item).__name__}")
    path_ids = unique_structure_ids([slot for slot in slots if isinstance(slot, Path)])
    taken, remaining, ids = set(path_ids), iter(path_ids), []
    for number, slot in enumerate(slots):
        if not isinstance(slot, Path):
            name = f"structure_{number}"
            while name in taken:  # a file named structure_0.cif beside an in-memory structure at position 0
                name += "_in_memory"
            ids.append(name)
        else:
            ids.append(next(remaining))
    return slots, ids


def load_model(path: str | os.PathLike, *, intervals: IntervalTails = "calibrated") -> BandgapModel:
    """Load a model folder written by ``mofbalora fit``; checks the backbone name and version.
    ``intervals``: ``calibrated`` or ``central`` (:class:`BandgapModel`)."""
    if intervals not in INTERVAL_TAILS:  # before the weights load
        raise ValueError(f"intervals must be one of {', '.join(INTERVAL_TAILS)}, got {intervals!r}")
    meta, members = load_members(path)
    return BandgapModel(Path(path), meta, members, intervals=intervals)
