"""The data-noise stage of a trained model folder: fit σ_n(x), choose its variant on validation.

It runs between ``training.fit`` and ``calibrate`` (docs/method.md §13). On the training split it
takes the model's noise-off predictions and the bare backbone's embeddings z(x), and fits each head
variant of the config (``training.noise_head``). On the validation split it scores each by the NLL
of the total predictive N(mean_S, σ_epi² + σ_n²) at the model's S, and keeps the lowest (the rule
declared in ``pipelines/configs/uncertainty.yaml``). The head is saved in the folder, and the
folder's calibration is cleared: it was fitted on the old total std. It stands apart from the fit
(``training.noise_head``) because it reads and writes model folders and predicts with them, which the
tensor-level fit must not depend on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mofbalora.featurise.base import element_counts
from mofbalora.model_folder import (
    TRAIN_EMBEDDINGS_FILE, load_train_embeddings, read_model_json, save_noise_head, write_model_json,
)
from mofbalora.predict import BandgapModel, load_model
from mofbalora.training.fit import PreparedData
from mofbalora.training.noise_head import NoiseHeadConfig, fit_noise_head
from mofbalora.uncertainty import metrics as um

logger = logging.getLogger(__name__)


def _part_inputs(model: BandgapModel, samples: list[Any], gaps_ev: np.ndarray, *,
                 z: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(z(x), noise-off mean, truth) in standardised units, as tensors; ``z`` when already known."""
    z = torch.from_numpy(model.frozen_embeddings(samples)).float() if z is None else z
    mean = model.normaliser.to_standard(model.predict_mean_mode(samples))
    truth = model.normaliser.to_standard(np.asarray(gaps_ev, dtype=float))
    return z, torch.as_tensor(mean).float(), torch.as_tensor(truth).float()


def fit_data_noise(folder: str | os.PathLike, *, prepared: PreparedData, config: NoiseHeadConfig,
                   progress: bool = False) -> dict[str, Any]:
    """Fit, select and save the folder's noise head; returns the record stored as ``model.json["noise_head"]``.

    A folder that already has a head fitted with the same config is left as it is.
    """
    folder = Path(folder)
    meta = read_model_json(folder)
    if meta.get("noise_head") and meta["noise_head"]["config"] == config.to_dict():
        return meta["noise_head"]
    n_val = len(prepared.parts["val"][2])
    if n_val < 2:  # the choice scores each head's NLL and rank correlation on validation
        raise ValueError(f"the validation split has {n_val} usable structure(s); choosing the data-noise head needs "
                         f"at least 2: use more structures or a larger validation fraction")
    model = load_model(folder)
    model.noise_head = None  # the selection scores each candidate head on its own
    # the training split's z(x) were stored by the fit (the OOD reference, in split order); the
    # neighbour variant searches that same file at prediction time
    _, train_samples, train_gaps = prepared.parts["train"]
    z_train = load_train_embeddings(folder).float()
    if len(z_train) != len(train_samples):
        raise ValueError(f"{folder}: {TRAIN_EMBEDDINGS_FILE} holds {len(z_train)} embeddings for "
                         f"{len(train_samples)} training structures")
    train = (z_train, *_part_inputs(model, train_samples, train_gaps, z=z_train)[1:])
    val = _part_inputs(model, *prepared.parts["val"][1:])
    _, val_samples, val_gaps = prepared.parts["val"]
    val_predictive = model.predictive(val_samples, seed=meta["train_config"]["seed"], progress=progress)
    counts = element_counts(train_samples), element_counts(val_samples)
    mean_mode_ev = model.normaliser.to_ev(val[1].double().numpy())
    rows = []
    heads = {}
    for inputs in config.variants:
        head = fit_noise_head(inputs=inputs, config=config, std_scale=model.normaliser.std_ev, train=train, val=val,
                              element_counts=counts)
        heads[inputs] = head
        model.noise_head = head
        aleatoric = model.aleatoric_std(val[0].numpy(), val_predictive.mean, counts[1])
        total = model.total_std(val_predictive.std_epistemic, aleatoric)
        rows.append({"inputs": inputs,
                     "val_nll_total": um.gaussian_nll(val_predictive.mean, total, val_gaps),
                     "val_spearman_total_std_abs_error": um.spearman_std_error(val_predictive.mean, total, val_gaps),
                     "val_noise_std_ev_p10_p50_p90": [float(q) for q in np.quantile(aleatoric, [0.1, 0.5, 0.9])]})
        logger.info("noise head %s: %s", inputs, rows[-1])
    chosen = min(rows, key=lambda row: row["val_nll_total"])["inputs"]
    record = {
        **save_noise_head(folder, heads[chosen]),
        "config": config.to_dict(),
        "rule": "lowest validation NLL of N(mean_S, epistemic^2 + noise^2)",
        "selection": rows,
        "chosen": chosen,
        # early stopping selects on the noise-off MAE, predictions report the mean of S draws
        "val_mae_ev": {"noise_off": um.mae(mean_mode_ev, val_gaps),
                       f"mean_of_S={model.default_samples}": um.mae(val_predictive.mean, val_gaps)},
    }
    meta = read_model_json(folder)
    meta.update(noise_head=record, calibration=None)
    write_model_json(folder, {k: v for k, v in meta.items() if k != "format_version"})
    logger.info("noise head of %s: %s (val NLL %.3f)", folder, chosen, min(r["val_nll_total"] for r in rows))
    return record
