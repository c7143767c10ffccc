"""Which inputs of the data-noise head rank unseen errors? Validation only (docs/method.md §13).

    python benchmarks/noise_feature_check.py results/release/qmof-pbe-cgcnn-balora-v2.2 \
        --compare results/release/v1.1

For a fitted model folder this takes the training and validation splits' noise-off residuals and
two feature spaces: z(x), the bare pretrained backbone's crystal embedding (what the noise head
reads), and h(x), the fine-tuned model's own crystal features (its head's input). In each
(standardised with the training split's statistics) it forms the kNN residual feature: the log
mean |training residual| of the k nearest training structures, a training structure itself left
out. For each feature set it fits σ_n = floor + softplus(a + b·feature) by Gaussian NLL on the
training residuals and reports, on the validation split, the NLL of N(mean_S, σ_epi² + σ_n²) (eV)
and Spearman ρ(total std, |error|), next to the folder's own noise head. Two rows ask whether the
inputs, not the fit, set the ceiling: the same two-feature scale fitted on the validation split's
own (unseen) residuals, scored by 5-fold cross-validation within it, and a gradient-boosted
regressor of log |residual| on z, h, both kNN features and the predicted gap (trained on the
training residuals; its output ranks, so only its ρ is reported).

Three more sources of information about the error, none of them a noise head today:
- the composition: the same kNN residual feature among the element-fraction vectors (k
  ``--composition-neighbours``), alone and beside the one in z;
- the sensitivity of the prediction to the structure: the mean |change| of the noise-off
  prediction when every atom is moved by ``--perturb-angstrom`` in a random direction (pymatgen's
  ``Structure.perturb``, ``--perturb-draws`` seeded draws), alone and added in quadrature to the head's std;
- with ``--compare FOLDER``, another model trained on the same split: its own total std, the
  disagreement of the two means, and its |error| (known only on labelled data: how much of the
  error the two models share).

Another row asks whether the training residuals, which the fitted model has partly memorised,
hide what an unseen error looks like: a second, independent model (gradient boosting of the gap on
z, the composition and log atom count) gives out-of-fold residuals on the training split (5
folds); a gradient-boosted regressor of their log |value| on the same inputs, and their kNN mean in
z, rank this model's validation errors. The second model's own validation |error| and its
disagreement with this model's mean go beside them.

A last row asks whether what is left of the error is in the labels or in the model: for the
validation structures whose nearest training structure in z has the same composition and atom
count (a near-duplicate), how far apart the two DFT gaps are, how large the model's errors on the
pair are, and how alike (Pearson r of the two residuals).

Nothing here touches the calibration or test split. Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofbalora.adapters.model import forward_in_mode  # noqa: E402
from mofbalora.backbones.batching import Collate, GraphDataset  # noqa: E402
from mofbalora.backbones.heads import NEIGHBOUR_EPSILON  # noqa: E402
from mofbalora.data.splits import Split  # noqa: E402
from mofbalora.data.structures import read_structure  # noqa: E402
from mofbalora.featurise import get_featuriser  # noqa: E402
from mofbalora.featurise.base import element_counts, sample_num_atoms  # noqa: E402
from mofbalora.model_folder import load_train_embeddings, read_model_json  # noqa: E402
from mofbalora.predict import load_model  # noqa: E402
from mofbalora.training.fit import prepare_folder_data  # noqa: E402
from mofbalora.training.noise_head import gaussian_nll_std, load_uncertainty_config  # noqa: E402


def head_inputs_and_means(model, samples) -> tuple[np.ndarray, np.ndarray]:
    """The first member's head input h(x) [n, F] and its noise-off prediction (eV) [n]."""
    member, captured, means = model.members[0], [], []
    hook = member.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    loader = DataLoader(GraphDataset(samples), batch_size=64, shuffle=False, collate_fn=Collate(model.backbone))
    try:
        with torch.inference_mode():
            for graphs, _, _ in loader:
                means.append(model.normaliser.to_ev(forward_in_mode(member, graphs, "mean")))
    finally:
        hook.remove()
    return torch.cat(captured).numpy(), torch.cat(means).double().numpy().ravel()


def knn_feature(train: np.ndarray, val: np.ndarray, abs_residual: np.ndarray, k: int, epsilon_ev: float):
    """log(ε + mean |residual| of the k nearest training structures), for training (itself left out) and validation."""
    scaler = StandardScaler().fit(train)
    index = NearestNeighbors(n_neighbors=k + 1).fit(scaler.transform(train))
    own = index.kneighbors(scaler.transform(train))[1][:, 1:]
    other = index.kneighbors(scaler.transform(val), n_neighbors=k)[1]
    return np.log(epsilon_ev + abs_residual[own].mean(1)), np.log(epsilon_ev + abs_residual[other].mean(1))


def element_fractions(samples) -> np.ndarray:
    """Each structure's composition as fractions of its atoms per element, [n, 119]."""
    counts = element_counts(samples)
    return counts / counts.sum(1, keepdims=True)


def perturbed_means(model, structures, ids, featuriser, distance_angstrom: float, draws: int) -> np.ndarray:
    """Noise-off predictions (eV) [draws, n] after moving every atom by ``distance_angstrom`` (seeds 0..draws-1)."""
    return np.stack([model.predict_mean_mode([featuriser.featurise(s.copy().perturb(distance_angstrom, seed=draw), i)
                                              for s, i in zip(structures, ids)]) for draw in range(draws)])


def near_duplicate_row(z_pair, fractions_pair, atoms_pair, gaps_pair, residual_pair) -> dict:
    """Validation structures whose nearest training structure in standardised z has the same
    composition and number of atoms: their label gap to it, and the model's noise-off errors on
    both. Each argument is a (training, validation) pair of arrays."""
    scaler = StandardScaler().fit(z_pair[0])
    nearest = NearestNeighbors(n_neighbors=1).fit(scaler.transform(z_pair[0])).kneighbors(
        scaler.transform(z_pair[1]))[1][:, 0]
    twin = ((np.abs(fractions_pair[1] - fractions_pair[0][nearest]).sum(1) < 1e-9)
            & (atoms_pair[1] == atoms_pair[0][nearest]))
    pair = nearest[twin]
    return {"noise_input": "near-duplicates: validation structures whose nearest training structure in z has their "
                           "composition and atom count",
            "n": int(twin.sum()),
            "median_abs_label_difference_ev": float(np.median(np.abs(gaps_pair[1][twin] - gaps_pair[0][pair]))),
            "val_mae_ev_on_them": float(np.abs(residual_pair[1][twin]).mean()),
            "train_mae_ev_on_their_twins": float(np.abs(residual_pair[0][pair]).mean()),
            "residual_pearson_r": float(np.corrcoef(residual_pair[1][twin], residual_pair[0][pair])[0, 1])}


def sensitivity_row(perturbed, mean_ev, total_std_ev, error_ev, gaps_ev, distance_angstrom: float) -> dict:
    """How well the mean |change| of the noise-off prediction under perturbation ranks |error|, alone
    and added in quadrature to the folder's total std."""
    sensitivity = np.abs(perturbed - mean_ev).mean(0)
    return {"noise_input": f"sensitivity: mean |change| of the prediction, atoms moved {distance_angstrom} Å "
                           f"({len(perturbed)} draws)",
            "val_spearman_abs_error": float(spearmanr(sensitivity, np.abs(error_ev))[0]),
            "val_spearman_with_head_in_quadrature": float(spearmanr(np.hypot(total_std_ev, sensitivity), np.abs(error_ev))[0]),
            "val_mae_perturbed_ev": float(np.abs(perturbed.mean(0) - gaps_ev).mean())}


def compare_row(other_folder: Path, samples, gaps_ev, mean_ev, error_ev) -> dict:
    """What another model on the same split says about this one's validation errors: its total std,
    the two noise-off means' disagreement, and its own |error| (known on labelled data only)."""
    other = load_model(other_folder)
    predictive = other.predictive(samples, n_samples=read_model_json(other_folder)["calibration"]["samples"])
    other_mean = other.predict_mean_mode(samples)
    return {"noise_input": f"another model ({other_folder}): its total std; the disagreement of the noise-off means; "
                           "its |error| (labelled data only)",
            "val_spearman_other_total_std": float(spearmanr(predictive.std_total_raw, np.abs(error_ev))[0]),
            "val_spearman_mean_disagreement": float(spearmanr(np.abs(other_mean - mean_ev), np.abs(error_ev))[0]),
            "val_spearman_other_abs_error": float(spearmanr(np.abs(predictive.mean - gaps_ev), np.abs(error_ev))[0]),
            "val_mae_other_ev": float(np.abs(predictive.mean - gaps_ev).mean())}


def out_of_fold_row(inputs_pair, gaps_pair, z_pair, mean_val_ev, error_ev, neighbours: int, epsilon_ev: float) -> dict:
    """What a second, independent model's out-of-fold training residuals say about this model's
    validation errors (the inputs are (training, validation) pairs)."""
    (x_train, x_val), (gaps_train, gaps_val) = inputs_pair, gaps_pair

    def booster():
        return HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, random_state=0)

    residual = gaps_train - cross_val_predict(booster(), x_train, gaps_train, cv=KFold(5, shuffle=True, random_state=0))
    hardness = booster().fit(x_train, np.log(np.abs(residual) + epsilon_ev)).predict(x_val)
    knn = knn_feature(*z_pair, np.abs(residual), neighbours, epsilon_ev)[1]
    second = booster().fit(x_train, gaps_train).predict(x_val)
    return {"noise_input": "a second model (gradient boosting on z, composition, log atoms): its out-of-fold training "
                           "residuals, learnt (boosting) or as a kNN mean in z; its own |error| and its disagreement",
            "oof_mae_ev": float(np.abs(residual).mean()), "val_mae_second_ev": float(np.abs(second - gaps_val).mean()),
            "val_spearman_oof_hardness": float(spearmanr(hardness, np.abs(error_ev))[0]),
            "val_spearman_oof_knn_z": float(spearmanr(knn, np.abs(error_ev))[0]),
            "val_spearman_second_abs_error": float(spearmanr(np.abs(second - gaps_val), np.abs(error_ev))[0]),
            "val_spearman_mean_disagreement": float(spearmanr(np.abs(second - mean_val_ev), np.abs(error_ev))[0])}


def fit_scale(features_train: np.ndarray, residual_train: np.ndarray, features_val: np.ndarray, floor_ev: float):
    """σ_n = floor + softplus(a + features·b), b and a by Gaussian NLL (L-BFGS) on the training residuals."""
    x, y = torch.from_numpy(features_train), torch.from_numpy(residual_train)
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = gaussian_nll_std(floor_ev + torch.nn.functional.softplus(bias + x @ weight), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return (floor_ev + torch.nn.functional.softplus(bias + torch.from_numpy(features_val) @ weight)).numpy()


def cross_fitted_scale(features: np.ndarray, residual: np.ndarray, floor_ev: float, folds: int = 5) -> np.ndarray:
    """σ_n of each structure from :func:`fit_scale` fitted on the other folds' residuals (the same split)."""
    out = np.empty(len(residual))
    for fit_rows, score_rows in KFold(folds, shuffle=True, random_state=0).split(features):
        out[score_rows] = fit_scale(features[fit_rows], residual[fit_rows], features[score_rows], floor_ev)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a fitted model folder with a noise head (and split.json)")
    parser.add_argument("--uncertainty-config", default=str(ROOT / "pipelines" / "configs" / "uncertainty.yaml"))
    parser.add_argument("--composition-neighbours", type=int, default=100, help="k of the kNN in composition")
    parser.add_argument("--perturb-angstrom", type=float, default=0.05, help="how far each atom is moved (Å)")
    parser.add_argument("--perturb-draws", type=int, default=3)
    parser.add_argument("--compare", help="another fitted model folder on the same split (e.g. an earlier release)")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    folder = Path(args.model)
    if args.compare and set(Split.load(Path(args.compare) / "split.json").part("train")) & set(
            Split.load(folder / "split.json").part("val")):
        raise SystemExit(f"{args.compare}: trained on structures of {folder}'s validation split; compare on the same split")
    meta = read_model_json(folder)
    noise_config = load_uncertainty_config(args.uncertainty_config)["noise_head"]
    config, dataset, prepared = prepare_folder_data(folder)
    model = load_model(folder)
    (_, train_samples, train_gaps), (val_ids, val_samples, val_gaps) = prepared.parts["train"], prepared.parts["val"]
    h_train, mean_train = head_inputs_and_means(model, train_samples)
    h_val, mean_val = head_inputs_and_means(model, val_samples)
    residual_train = np.asarray(train_gaps) - mean_train
    predictive = model.predictive(val_samples, n_samples=meta["calibration"]["samples"])
    error = predictive.mean - np.asarray(val_gaps)
    spaces = {"z": (load_train_embeddings(folder).numpy(), model.frozen_embeddings(val_samples)), "h": (h_train, h_val)}
    epsilon_ev = NEIGHBOUR_EPSILON * model.normaliser.std_ev
    knn = {name: knn_feature(*pair, np.abs(residual_train), noise_config.neighbours, epsilon_ev)
           for name, pair in spaces.items()}

    def score(label: str, aleatoric: np.ndarray) -> dict:
        total = np.sqrt(aleatoric ** 2 + predictive.std_epistemic ** 2)
        return {"noise_input": label, "val_nll_ev": float(np.mean(np.log(total) + 0.5 * (error / total) ** 2)),
                "val_spearman_total_std_abs_error": float(spearmanr(total, np.abs(error))[0])}

    rows = [score(f"the folder's head ({meta['noise_head']['chosen']})", predictive.std_aleatoric)]
    features = {names: tuple(np.stack([knn[n][i] for n in names], 1) for i in (0, 1))
                for names in (("z",), ("h",), ("z", "h"))}  # (training, validation)
    for names, (train_features, val_features) in features.items():
        rows.append(score("kNN residual in " + " and ".join(names),
                          fit_scale(train_features, residual_train, val_features, noise_config.floor_ev)))
    train_both, val_both = features[("z", "h")]
    residual_val = np.asarray(val_gaps) - mean_val
    rows.append(score("kNN residual in z and h, fitted on validation residuals (5-fold)",
                      cross_fitted_scale(val_both, residual_val, noise_config.floor_ev)))
    boosted = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0).fit(
        np.column_stack([spaces["z"][0], h_train, train_both, mean_train]), np.log(np.abs(residual_train) + epsilon_ev))
    ranking = boosted.predict(np.column_stack([spaces["z"][1], h_val, val_both, mean_val]))
    rows.append({"noise_input": "gradient boosting of log |residual| on z, h, both kNN features and the mean",
                 "val_spearman_abs_error": float(spearmanr(ranking, np.abs(error))[0])})
    fractions = element_fractions(train_samples), element_fractions(val_samples)
    composition = knn_feature(*fractions, np.abs(residual_train), args.composition_neighbours, epsilon_ev)
    rows.append(score(f"kNN residual in the composition (element fractions, k = {args.composition_neighbours})",
                      fit_scale(composition[0][:, None], residual_train, composition[1][:, None], noise_config.floor_ev)))
    rows.append(score("kNN residual in z and in the composition",
                      fit_scale(np.stack([knn["z"][0], composition[0]], 1), residual_train,
                                np.stack([knn["z"][1], composition[1]], 1), noise_config.floor_ev)))
    structures = [read_structure(path) for path in dataset.table.set_index("id").loc[val_ids, "path"]]
    perturbed = perturbed_means(model, structures, val_ids, get_featuriser(config.backbone), args.perturb_angstrom,
                                args.perturb_draws)
    rows.append(sensitivity_row(perturbed, mean_val, predictive.std_total_raw, error, np.asarray(val_gaps),
                                args.perturb_angstrom))
    if args.compare:
        rows.append(compare_row(Path(args.compare), val_samples, np.asarray(val_gaps), mean_val, error))
    atoms = tuple(np.array([sample_num_atoms(s) for s in part]) for part in (train_samples, val_samples))
    rows.append(near_duplicate_row(spaces["z"], fractions, atoms, (np.asarray(train_gaps), np.asarray(val_gaps)),
                                   (residual_train, residual_val)))
    present = (fractions[0] > 0).any(0)  # elements seen in training
    inputs = tuple(np.column_stack([z, f[:, present], np.log(n)]) for z, f, n in zip(spaces["z"], fractions, atoms))
    rows.append(out_of_fold_row(inputs, (np.asarray(train_gaps), np.asarray(val_gaps)), spaces["z"], mean_val, error,
                                noise_config.neighbours, epsilon_ev))
    rows.append({"train_rmse_ev": float(np.sqrt(np.mean(residual_train ** 2))),
                 "val_rmse_ev": float(np.sqrt(np.mean(residual_val ** 2))),
                 "h_dim": int(h_train.shape[1]), "neighbours": noise_config.neighbours})
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
