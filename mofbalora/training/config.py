"""Training configuration: a dataclass read from the small YAML files under pipelines/configs/."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from mofbalora.adapters.config import ADAPTER_KIND, ADAPTER_METHODS, SAMPLING_METHODS, AdapterConfig
from mofbalora.backbones.heads import HeadKind
from mofbalora.config_schema import read_yaml_mapping, strict_from_dict

Method = Literal["head", "full", "lora", "balora", "lora-ensemble", "lora-mcdropout"]
Likelihood = Literal["mse", "gaussian"]
NoiseStdFit = Literal["joint", "mean_mode"]
Schedule = Literal["warmup_cosine", "onecycle"]


@dataclass
class SplitConfig:
    """train, val, calibration, test fractions (three values: no calibration part)."""

    fractions: tuple[float, ...] = (0.7, 0.1, 0.1, 0.1)
    method: Literal["random", "stratified"] = "random"
    seed: int = 0


@dataclass
class TrainConfig:
    """One fine-tuning run.

    Attributes:
        backbone: registry name (``cgcnn``, ``chgnet``).
        method: ``head`` (frozen backbone), ``full``, ``lora``, ``balora``, ``lora-ensemble`` or
            ``lora-mcdropout`` (LoRA with ``adapter.dropout``, sampled with dropout on).
        adapter: AdapterConfig fields (``kind`` is set from ``method``).
        ensemble_size: members of ``lora-ensemble``, seeds ``seed .. seed + M - 1``.
        members: independently trained members of a sampling method (``balora``,
            ``lora-mcdropout``), seeds ``seed .. seed + members - 1``; a prediction pools S draws
            of each (members x S draws; docs/method.md §7).
        epochs, batch_size, lr, weight_decay: AdamW, peak learning rate ``lr``.
        schedule: ``warmup_cosine`` (linear warm-up over ``warmup_fraction`` of all steps, then
            cosine decay to 0) or ``onecycle`` (torch's OneCycleLR: 30% warm-up from lr/25, cosine
            decay to lr/1e4, AdamW's beta1 cycled 0.95 -> 0.85 -> 0.95; Smith & Topin 2019).
        warmup_fraction: share of all steps spent warming up (``warmup_cosine``).
        patience: early-stopping patience (epochs) on validation MAE.
        head: regression head variant (``backbones/heads.py``; docs/method.md §8).
        likelihood: data term of the loss (docs/method.md eq. 6); ``gaussian`` learns the
            data-noise scale that predictions add to the epistemic std.
        noise_std_fit: how ``likelihood="gaussian"`` learns its noise scale: ``joint`` from the
            sampled (BaLoRA: noisy) predictions, or ``mean_mode`` from the noise-off predictions, so
            that it does not absorb the weight-sampling variance (method.md §5).
        alpha_net_lr_factor: BaLoRA's inference network alpha(x) trains at ``lr`` times this.
        init_from: a complete ``full`` fine-tuning model folder (same backbone, head and training
            split) whose weights replace the pretrained ones before the adapters go on: adapters
            on a fully fine-tuned backbone instead of the frozen pretrained one. z(x), the input of
            BaLoRA's alpha(x) and of the OOD flag, still comes from the pretrained backbone.
        warm_start_from: a complete model folder (or shipped model name) of the same method,
            backbone, head and adapters whose trained adapters, head and noise scale start this
            fit, which then runs its own schedule: a warm restart (Loshchilov & Hutter 2017) of a
            converged run, or a refit after new labels (the data may differ: the fit keeps the
            source's band-gap standardisation, so the weights keep their scale). Its model.json's
            sha256 joins the fit's identity.
        calibration_samples: samples S used on the calibration split (conformal fit, OOD thresholds).
        ood_quantile: quantile on the calibration split of the epistemic std and of the embedding
            distance above which a prediction is flagged out of distribution.
        ood_neighbours: k of the k-nearest-training-structures embedding distance.
        target: label column of the dataset CSV (None: its only non-id column).
        max_structures: use a seeded random subset of the data (None = all).
        max_atoms: structures with more atoms are skipped.
    """

    backbone: str = "cgcnn"
    method: Method = "balora"
    adapter: dict[str, Any] = field(default_factory=dict)
    ensemble_size: int = 5
    members: int = 1
    epochs: int = 15
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    schedule: Schedule = "warmup_cosine"
    patience: int = 5
    seed: int = 0
    head: HeadKind = "residual"
    likelihood: Likelihood = "gaussian"
    noise_std_fit: NoiseStdFit = "joint"
    alpha_net_lr_factor: float = 1.0
    init_from: str | None = None
    warm_start_from: str | None = None
    calibration_samples: int = 32
    ood_quantile: float = 0.95
    ood_neighbours: int = 5
    target: str | None = None
    max_structures: int | None = None
    max_atoms: int = 1000
    num_workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):
            try:
                split = strict_from_dict(SplitConfig, self.split, "split")
            except ValueError as exc:
                raise ValueError(f"split: {exc}") from exc
            self.split = replace(split, fractions=tuple(split.fractions))
        if not isinstance(self.split, SplitConfig):
            raise ValueError(f"split must be a mapping of settings, got {self.split!r}")
        if self.head not in get_args(HeadKind):
            raise ValueError(f"head must be one of {get_args(HeadKind)}, got {self.head!r}")
        if self.method not in get_args(Method):
            raise ValueError(f"method must be one of {get_args(Method)}, got {self.method!r}")
        if self.likelihood not in get_args(Likelihood):
            raise ValueError(f"likelihood must be one of {get_args(Likelihood)}, got {self.likelihood!r}")
        if self.noise_std_fit not in get_args(NoiseStdFit):
            raise ValueError(f"noise_std_fit must be one of {get_args(NoiseStdFit)}, got {self.noise_std_fit!r}")
        if self.schedule not in get_args(Schedule):
            raise ValueError(f"schedule must be one of {get_args(Schedule)}, got {self.schedule!r}")
        if self.init_from is not None and self.method not in ADAPTER_METHODS:
            raise ValueError(f"init_from puts adapters on a fine-tuned backbone; method {self.method!r} has none")
        if self.warm_start_from is not None and self.method not in ADAPTER_METHODS:
            raise ValueError(f"warm_start_from continues trained adapters; method {self.method!r} has none")
        if self.alpha_net_lr_factor <= 0:
            raise ValueError(f"alpha_net_lr_factor must be > 0, got {self.alpha_net_lr_factor}")
        if self.members != 1 and self.method not in SAMPLING_METHODS:
            raise ValueError(f"members pools independently trained members of {SAMPLING_METHODS}; method "
                             f"{self.method!r} " + ("has ensemble_size" if self.method == "lora-ensemble" else "samples nothing"))
        for name in ("epochs", "batch_size", "ensemble_size", "members", "calibration_samples", "ood_neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.ood_quantile < 1:
            raise ValueError(f"ood_quantile must lie in (0, 1), got {self.ood_quantile}")
        if self.method in ADAPTER_METHODS:  # checked here, before any work, as the fit will build it
            try:
                checked = AdapterConfig.from_dict({**self.adapter, "kind": ADAPTER_KIND[self.method]})
            except ValueError as exc:
                raise ValueError(f"adapter: {exc}") from exc
            self.adapter = {key: getattr(checked, key) for key in self.adapter}  # numbers written as text read

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["split"]["fractions"] = list(self.split.fractions)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return strict_from_dict(cls, values, "training config")

    def was_recorded_as(self, recorded: dict[str, Any]) -> bool:
        """Whether a model's recorded train_config is this config; a setting added to TrainConfig
        after the model was trained reads as its default, which is the behaviour it was trained with."""
        try:
            return TrainConfig.from_dict(recorded).to_dict() == self.to_dict()
        except (TypeError, ValueError):  # a setting since removed or renamed
            return False

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML training config."""
    values = read_yaml_mapping(path, "a mapping of training settings")
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
