"""A synthetic task with a known answer for BaLoRA's input-adaptive noise alpha(x) (docs/studies/alpha_synthetic.md).

Two clusters of inputs pass through one adapted linear layer of a frozen toy backbone:

- ``signal``: the target needs the adapter's low-rank update of the layer; noise on A perturbs
  that update and costs fit, so the data term pulls alpha down there;
- ``free``: the layer's input is zero, so the adapter, and any noise on it, changes nothing: the
  data term says nothing about alpha there and only the prior's KL sets it.

So the right answer is alpha(free) > alpha(signal), by as much as the objective lets the data move
alpha in the signal cluster. The alpha network reads a cluster descriptor z(x), as it reads the
frozen crystal embedding on QMOF. :func:`fit_two_clusters` trains BaLoRA with the real objective
(:class:`~mofbalora.training.module.BandgapRegressor`) and reports the separation. The scales are
the QMOF fit's: rank 8, about a thousand noisy elements in the layer, and a data-noise std half the
signal's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mofbalora.adapters import AdapterConfig, inject_adapters
from mofbalora.adapters.model import ALPHA_NET_NAME, forward_in_mode
from mofbalora.data.targets import TargetNormaliser
from mofbalora.training.config import TrainConfig
from mofbalora.training.module import BandgapRegressor

WIDTH = 128  # the adapted layer's input width: rank 8 x 128 = 1,024 noisy elements
HIDDEN = 32


@dataclass
class ToyBatch:
    """One row per structure: the adapted layer's input x [G, WIDTH] and the descriptor z [G, 2]."""

    x: torch.Tensor
    z: torch.Tensor


class ToyBackbone(nn.Module):
    """A frozen one-layer "backbone" with the graph interface adapters need (one row per structure).

    y = head(tanh(layer(x))); z(x), a one-hot cluster descriptor, is the frozen embedding alpha(x) reads.
    """

    embedding_dim = 2

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.layer = nn.Linear(WIDTH, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(HIDDEN, WIDTH, generator=generator) / WIDTH**0.5)
            self.layer.bias.zero_()
            self.head.weight.copy_(torch.randn(1, HIDDEN, generator=generator) / HIDDEN**0.5)
            self.head.bias.zero_()

    def adaptable_modules(self) -> list[str]:
        return ["layer"]

    def entity_of(self, name: str) -> str:
        return "crystal"

    def embed(self, batch: ToyBatch) -> torch.Tensor:
        return batch.z

    def graph_index(self, batch: ToyBatch) -> dict[str, torch.Tensor]:
        return {"crystal": torch.arange(batch.x.shape[0])}

    def num_graphs(self, batch: ToyBatch) -> int:
        return batch.x.shape[0]

    def repeat_batch(self, batch: ToyBatch, copies: int) -> ToyBatch:
        return ToyBatch(batch.x.repeat(copies, 1), batch.z.repeat(copies, 1))

    def forward(self, batch: ToyBatch) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(batch.x))).squeeze(-1)


def two_cluster_data(n_per_cluster: int, *, task_seed: int, sample_seed: int,
                     noise_std: float = 0.5) -> tuple[ToyBatch, np.ndarray, np.ndarray]:
    """Inputs of 2n structures, their targets [2n] and cluster labels (0 signal, 1 free).

    The signal cluster's target is the frozen layer (seeded by ``task_seed``, as the backbone the
    adapter trains on) plus a rank-2 update, which the adapter must learn; the free cluster's
    input is zero, so its target is the backbone's constant output. ``noise_std`` is in units of
    the signal cluster's clean-target std; ``sample_seed`` draws the inputs and the noise.
    """
    teacher = ToyBackbone(torch.Generator().manual_seed(task_seed))
    task = torch.Generator().manual_seed(task_seed + 1)
    with torch.no_grad():
        update = torch.randn(HIDDEN, 2, generator=task) @ torch.randn(2, WIDTH, generator=task)
        teacher.layer.weight += 2.0 * update / WIDTH**0.5
    generator = torch.Generator().manual_seed(sample_seed)
    x = torch.zeros(2 * n_per_cluster, WIDTH)
    x[:n_per_cluster] = torch.randn(n_per_cluster, WIDTH, generator=generator)
    clusters = np.repeat([0, 1], n_per_cluster)
    z = torch.nn.functional.one_hot(torch.as_tensor(clusters), 2).float()
    with torch.no_grad():
        clean = teacher(ToyBatch(x, z)).numpy().astype(float)
    rng = np.random.default_rng(sample_seed)
    y = clean + noise_std * clean[:n_per_cluster].std() * rng.standard_normal(len(clean))
    return ToyBatch(x, z), y, clusters


@dataclass
class TwoClusterResult:
    """alpha(x) / c on held-out inputs of each cluster, and the separation free / signal (medians)."""

    alpha_over_c_signal: float
    alpha_over_c_free: float
    separation: float
    val_mae_signal: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _loader(inputs: ToyBatch, y_standard: np.ndarray, batch_size: int, seed: int) -> DataLoader:
    rows = [(inputs.x[i], inputs.z[i], float(y_standard[i]), i) for i in range(len(y_standard))]

    def collate(items: list[tuple[Any, ...]]) -> tuple[ToyBatch, torch.Tensor, list[int]]:
        return (ToyBatch(torch.stack([r[0] for r in items]), torch.stack([r[1] for r in items])),
                torch.tensor([r[2] for r in items], dtype=torch.float32), [r[3] for r in items])

    return DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def fit_two_clusters(adapter: dict[str, Any], *, train: dict[str, Any] | None = None, n_per_cluster: int = 512,
                     seed: int = 0) -> TwoClusterResult:
    """Train BaLoRA (``adapter``: AdapterConfig fields over rank 8, alpha 16; ``train``: TrainConfig
    fields) on the two-cluster task and measure alpha(x) on fresh inputs of each cluster."""
    torch.manual_seed(seed)
    config = TrainConfig(**{"method": "balora", "epochs": 40, "batch_size": 32, "lr": 3e-3, "seed": seed,
                            **(train or {})})
    # the head trains, as the QMOF fit's residual head does: it takes the target's offset and scale
    adapter_config = AdapterConfig(kind="balora", rank=8, alpha=16.0, target_modules=["^layer$"], seed=seed,
                                   modules_to_save=["^head\\."], **adapter)
    inputs, y, _ = two_cluster_data(n_per_cluster, task_seed=seed, sample_seed=seed + 1)
    normaliser = TargetNormaliser.fit(y)
    model = inject_adapters(ToyBackbone(torch.Generator().manual_seed(seed)), adapter_config)
    loader = _loader(inputs, normaliser.to_standard(y), config.batch_size, seed)
    module = BandgapRegressor(model, config=config, normaliser=normaliser, n_train=len(y),
                              steps_per_epoch=len(loader))
    trainer = L.Trainer(max_epochs=config.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=True)
    trainer.fit(module, train_dataloaders=loader)
    held_out, y_held, clusters = two_cluster_data(n_per_cluster, task_seed=seed, sample_seed=seed + 2)
    model.eval()
    with torch.no_grad():
        alpha = getattr(model, ALPHA_NET_NAME)(held_out.z).reshape(len(y_held), -1).mean(1).numpy()
        mean = normaliser.to_ev(forward_in_mode(model, held_out, "mean").numpy())
    c = adapter_config.prior_c
    signal, free = np.median(alpha[clusters == 0]) / c, np.median(alpha[clusters == 1]) / c
    return TwoClusterResult(float(signal), float(free), float(free / signal),
                            float(np.abs(mean - y_held)[clusters == 0].mean()))


#: the objectives of docs/studies/alpha_synthetic.md's table (AdapterConfig fields; TrainConfig ones under "train")
OBJECTIVES: dict[str, dict[str, Any]] = {
    "Gaussian prior, KL per element, datapoint β = 0.01 (design study 1's winner)":
        {"kl_scaling": "datapoint", "kl_weight": 0.01, "prior_p": 0.5},
    "same, inference network at 10× the learning rate":
        {"kl_scaling": "datapoint", "kl_weight": 0.01, "prior_p": 0.5, "train": {"alpha_net_lr_factor": 10.0}},
    "same, σ_n fitted on noise-off residuals":
        {"kl_scaling": "datapoint", "kl_weight": 0.01, "prior_p": 0.5, "train": {"noise_std_fit": "mean_mode"}},
    "Gaussian prior, KL per element, datapoint β = 1e-6":
        {"kl_scaling": "datapoint", "kl_weight": 1e-6, "prior_p": 0.5},
    "log-uniform prior, KL per element, datapoint β = 0.01":
        {"kl_scaling": "datapoint", "kl_weight": 0.01, "prior_p": 0.5, "prior": "log_uniform"},
    "Gaussian prior, KL once per layer, datapoint β = 0.01":
        {"kl_scaling": "datapoint", "kl_weight": 0.01, "prior_p": 0.5, "kl_count": "layer"},
    "log-uniform prior, KL once per layer, datapoint β = 0.01":
        {"kl_scaling": "datapoint", "kl_weight": 0.01, "prior_p": 0.5, "prior": "log_uniform", "kl_count": "layer"},
}


def main() -> None:
    """Print docs/studies/alpha_synthetic.md's table: ``python -m pipelines.synthetic``."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print("| objective | α/c, signal cluster | α/c, free cluster | separation (free / signal) | signal MAE |")
    print("| --- | --- | --- | --- | --- |")
    for label, values in OBJECTIVES.items():
        adapter = {k: v for k, v in values.items() if k != "train"}
        result = fit_two_clusters(adapter, train=values.get("train"))
        print(f"| {label} | {result.alpha_over_c_signal:.3g} | {result.alpha_over_c_free:.3g} | "
              f"{result.separation:.3g} | {result.val_mae_signal:.3f} |", flush=True)


if __name__ == "__main__":
    main()
