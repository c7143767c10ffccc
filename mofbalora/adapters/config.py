"""Adapter configuration (see docs/method.md for the meaning of every field)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from mofbalora.config_schema import strict_from_dict

AdapterKind = Literal["lora", "balora", "mcdropout"]
NoiseOn = Literal["A", "AB"]
AlphaGranularity = Literal["layer", "rank"]
AlphaNetInput = Literal["frozen_embedding", "constant"]
KLScaling = Literal["dataset", "datapoint"]
NoiseSampling = Literal["structure", "row"]
Prior = Literal["gaussian", "log_uniform"]
KLCount = Literal["element", "layer"]

#: the training methods (``training.config.Method``) that train adapters
ADAPTER_METHODS = ("lora", "balora", "lora-ensemble", "lora-mcdropout")
#: the adapter kind each of them trains
ADAPTER_KIND: dict[str, AdapterKind] = {"lora": "lora", "lora-ensemble": "lora", "balora": "balora",
                                        "lora-mcdropout": "mcdropout"}
#: methods whose predictive draws are S stochastic forward passes of one model (docs/method.md §7)
SAMPLING_METHODS = ("balora", "lora-mcdropout")


def _check_choice(name: str, value: Any, kind: Any) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass
class AdapterConfig:
    """LoRA / BaLoRA settings.

    Attributes:
        kind: ``"lora"`` (point estimate), ``"balora"`` (input-dependent multiplicative noise on A) or
            ``"mcdropout"`` (LoRA with dropout on the adapter input, kept on when sampling; method.md §11).
        rank: r, the LoRA rank.
        alpha: LoRA scale numerator; the update is scaled by ``alpha / rank`` (method.md, eq. 1).
        target_modules: regexes over module names; matching ``nn.Linear`` layers are wrapped.
        prior_p: dropout-rate hyperparameter p of the prior N(0, c A^2), c = p / (1 - p) (eq. 4).
        kl_weight: beta, the weight of the KL term in the loss (eq. 6).
        alpha_net_hidden: hidden width of the inference network that outputs alpha(x) (eq. 3).
        seed: seeds adapter initialisation and, by default, test-time sampling.
        modules_to_save: regexes of parameter names that stay trainable (e.g. ``"^head\\."``).
        noise_on: noise on A only (the paper's abstract) or on A and B (our alternative).
        alpha_granularity: one alpha per adapted layer (default) or one per rank component.
        alpha_net_input: the frozen crystal embedding z(x) (default) or a constant (input-independent
            ablation).
        alpha_init: alpha(x) at initialisation; None means the prior's c.
        kl_scaling: ``"dataset"`` divides the mean per-structure KL by the training-set size,
            ``"datapoint"`` does not (eq. 6).
        dropout: PEFT's ``lora_dropout`` p, the share of adapter-input elements zeroed; used by
            ``kind="mcdropout"`` only (in training and, per sample, at test time).
        noise_sampling: ``"structure"`` draws one A~ per structure, shared by all of its rows
            (ours, method.md §3); ``"row"`` draws independent noise for every row at the rank-r
            bottleneck (the local reparameterisation, eq. 2b); only with ``noise_on="A"``.
        prior: ``"gaussian"`` N(0, c A²) (eqs. 4–5) or ``"log_uniform"``, the scale-invariant prior of
            variational dropout with Molchanov et al.'s KL (eq. 5b); the latter ignores ``prior_p``
            except as the scale of the reported alpha / c and of ``alpha_init``'s default.
        kl_count: ``"element"`` counts the KL once per noisy element of A~ (the KL of the weights);
            ``"layer"`` once per noise level alpha_l (per rank component with per-rank alpha), a
            tempering that weighs every layer alike (method.md §4).
    """

    kind: AdapterKind = "lora"
    rank: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: [r".*"])
    prior_p: float = 0.1
    kl_weight: float = 1.0
    alpha_net_hidden: int = 64
    seed: int = 0
    modules_to_save: list[str] = field(default_factory=list)
    noise_on: NoiseOn = "A"
    alpha_granularity: AlphaGranularity = "layer"
    alpha_net_input: AlphaNetInput = "frozen_embedding"
    alpha_init: float | None = None
    kl_scaling: KLScaling = "dataset"
    noise_sampling: NoiseSampling = "structure"
    dropout: float = 0.0
    prior: Prior = "gaussian"
    kl_count: KLCount = "element"

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, AdapterKind)
        _check_choice("noise_on", self.noise_on, NoiseOn)
        _check_choice("alpha_granularity", self.alpha_granularity, AlphaGranularity)
        _check_choice("alpha_net_input", self.alpha_net_input, AlphaNetInput)
        _check_choice("kl_scaling", self.kl_scaling, KLScaling)
        _check_choice("noise_sampling", self.noise_sampling, NoiseSampling)
        _check_choice("prior", self.prior, Prior)
        _check_choice("kl_count", self.kl_count, KLCount)
        if self.noise_sampling == "row" and self.noise_on != "A":
            raise ValueError("noise_sampling='row' (local reparameterisation) needs noise_on='A'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.kind == "mcdropout" and self.dropout == 0.0:
            raise ValueError("kind='mcdropout' needs dropout > 0 (PEFT's lora_dropout)")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 < self.prior_p < 1.0:
            raise ValueError(f"prior_p must lie in (0, 1), got {self.prior_p}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.alpha_net_hidden < 1:
            raise ValueError(f"alpha_net_hidden must be >= 1, got {self.alpha_net_hidden}")
        if self.alpha_init is not None and self.alpha_init <= 0:
            raise ValueError(f"alpha_init must be > 0, got {self.alpha_init}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError("target_modules must be a non-empty list of regexes")
        self.target_modules = list(self.target_modules)
        self.modules_to_save = list(self.modules_to_save)

    @property
    def scaling(self) -> float:
        """s = alpha / r."""
        return self.alpha / self.rank

    @property
    def prior_c(self) -> float:
        """c = p / (1 - p)."""
        return self.prior_p / (1.0 - self.prior_p)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AdapterConfig":
        return strict_from_dict(cls, values, "adapter")
