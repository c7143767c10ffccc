"""The Laplace-LoRA peer: a post hoc last-layer Laplace approximation of a trained LoRA model.

The weights of the head's last linear layer get a Gaussian posterior N(w_MAP, (GGN + λI)⁻¹) with
the full generalised Gauss–Newton matrix (exact for a linear layer under a Gaussian likelihood),
the prior precision λ chosen by the marginal likelihood, and the linearised (GLM) predictive,
all from laplace-torch (docs/method.md §11). The LoRA model stays as trained: its adapted
crystal embedding z(x) and the head's hidden layers are the feature map.

Units: everything here is in the model's standardised target units; callers convert to eV.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mofbalora.backbones.heads import last_linear


def last_layer_inputs(model: nn.Module, samples: Sequence[Any], *, batch_size: int = 64) -> torch.Tensor:
    """What the head's last linear layer reads for each structure, [n, h] (mean mode, no gradient)."""
    features, _ = last_linear(model.head)
    chunks = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunks.append(features(model.embed(model.collate(samples[start:start + batch_size]))))
    return torch.cat(chunks)


class LastLayerLaplace:
    """Last-layer Laplace on a trained (LoRA) graph model; scikit-learn style.

    Args:
        hessian_structure: laplace-torch's ``"full"`` (default) or ``"kron"``.

    Fitted attributes:
        prior_precision_: λ chosen by the marginal likelihood.
        noise_std_: the data-noise std used by the likelihood (standardised units).
    """

    def __init__(self, *, hessian_structure: str = "full") -> None:
        self.hessian_structure = hessian_structure

    def fit(self, model: nn.Module, samples: Sequence[Any], targets: np.ndarray, *, noise_std: float) -> "LastLayerLaplace":
        """Fit on the training structures and their standardised targets; ``noise_std`` is the
        model's learned data-noise std (standardised units)."""
        from laplace import Laplace

        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        inputs = last_layer_inputs(model, samples)
        _, layer = last_linear(model.head)
        self._model = model
        self._la = Laplace(nn.Sequential(layer), "regression", subset_of_weights="all",
                           hessian_structure=self.hessian_structure, sigma_noise=float(noise_std))
        targets = torch.as_tensor(np.asarray(targets, dtype=np.float32)).reshape(-1, 1)
        self._la.fit(DataLoader(TensorDataset(inputs, targets), batch_size=256))
        self._la.optimize_prior_precision(method="marglik", pred_type="glm")
        self.prior_precision_ = float(self._la.prior_precision.reshape(-1)[0])
        self.noise_std_ = float(noise_std)
        return self

    def predict(self, samples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, epistemic std) per structure from the GLM predictive, standardised units."""
        if not hasattr(self, "_la"):
            raise ValueError("call fit first")
        inputs = last_layer_inputs(self._model, samples)
        with torch.no_grad():
            mean, variance = self._la(inputs, pred_type="glm")
        return mean.reshape(-1).numpy().astype(float), variance.reshape(-1).clamp_min(0).sqrt().numpy().astype(float)
