"""Does the data-noise head rank errors better when fitted on held-out residuals? Validation only.

    python benchmarks/noise_residual_source.py results/release/qmof-pbe-cgcnn-balora

The noise stage (``mofbalora.data_noise``) fits σ_n(x) on the training split's residuals, which are
in-sample: smaller than unseen ones once the mean has converged (v2 of qmof-pbe: training RMSE
0.381 eV against 0.442 on validation). This fits each head variant both ways and scores them on
the validation split by the declared rule's NLL and by ρ(total std, |error|):

- ``train``: as the noise stage does (training residuals, early stopping on validation);
- ``validation-crossfit``: on one half of the validation split's residuals, early-stopped on the
  other half and scoring it; then the halves swap (out-of-fold σ_n for every structure).

The neighbour variant searches its own fitting set, so it runs only on training residuals. Nothing
here touches the calibration or test split. Prints a table; docs/method.md §13 records the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofbalora.backbones.heads import NEIGHBOUR_INPUTS  # noqa: E402
from mofbalora.data_noise import _part_inputs  # noqa: E402
from mofbalora.featurise.base import element_counts  # noqa: E402
from mofbalora.model_folder import load_train_embeddings, read_model_json  # noqa: E402
from mofbalora.predict import load_model  # noqa: E402
from mofbalora.training.fit import prepare_folder_data  # noqa: E402
from mofbalora.training.noise_head import fit_noise_head, load_uncertainty_config  # noqa: E402
from mofbalora.uncertainty import metrics as um  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a fitted model folder (with split.json)")
    parser.add_argument("--uncertainty-config", default=str(ROOT / "pipelines" / "configs" / "uncertainty.yaml"))
    parser.add_argument("--seed", type=int, default=0, help="of the validation halves")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    folder = Path(args.model)
    meta = read_model_json(folder)
    _, _, prepared = prepare_folder_data(folder)
    noise_config = load_uncertainty_config(args.uncertainty_config)["noise_head"]
    model = load_model(folder)
    model.noise_head = None
    _, train_samples, train_gaps = prepared.parts["train"]
    z_train = load_train_embeddings(folder).float()
    train = (z_train, *_part_inputs(model, train_samples, train_gaps, z=z_train)[1:])
    _, val_samples, val_gaps = prepared.parts["val"]
    val = _part_inputs(model, val_samples, val_gaps)
    predictive = model.predictive(val_samples, seed=meta["train_config"]["seed"])
    halves = np.array_split(np.random.default_rng(args.seed).permutation(len(val_gaps)), 2)
    halves = [torch.as_tensor(np.sort(half)) for half in halves]

    def scores(aleatoric: np.ndarray) -> dict[str, float]:
        total = model.total_std(predictive.std_epistemic, aleatoric)
        return {"val_nll_total": um.gaussian_nll(predictive.mean, total, val_gaps),
                "val_spearman_total_std_abs_error": um.spearman_std_error(predictive.mean, total, val_gaps)}

    counts = element_counts(train_samples), element_counts(val_samples)

    def fitted(inputs: str, fit_on: tuple[torch.Tensor, ...], stop_on: tuple[torch.Tensor, ...]):
        model.noise_head = fit_noise_head(inputs=inputs, config=noise_config, std_scale=model.normaliser.std_ev,
                                          train=fit_on, val=stop_on, element_counts=counts)
        return model

    rows = []
    for inputs in noise_config.variants:
        aleatoric = fitted(inputs, train, val).aleatoric_std(val[0].numpy(), predictive.mean, counts[1])
        rows.append({"inputs": inputs, "residuals": "train", **scores(aleatoric)})
        if inputs in NEIGHBOUR_INPUTS:
            continue
        out_of_fold = np.zeros(len(val_gaps))
        for fit_half, score_half in (halves, halves[::-1]):
            part = lambda index: tuple(t[index] for t in val)  # noqa: E731
            out_of_fold[score_half.numpy()] = fitted(inputs, part(fit_half), part(score_half)).aleatoric_std(
                val[0][score_half].numpy(), predictive.mean[score_half.numpy()])
        rows.append({"inputs": inputs, "residuals": "validation-crossfit", **scores(out_of_fold)})
    for row in rows:
        print(json.dumps(row))
    residual = lambda part: model.predict_mean_mode(prepared.parts[part][1]) - prepared.parts[part][2]  # noqa: E731
    print(json.dumps({f"{part}_rmse_ev": float(np.sqrt(np.mean(residual(part) ** 2))) for part in ("train", "val")}))


if __name__ == "__main__":
    main()
