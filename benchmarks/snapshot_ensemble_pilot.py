"""Does pooling the BaLoRA draws of qmof-pbe's three training snapshots rank errors better? Validation only.

    python benchmarks/snapshot_ensemble_pilot.py [--out docs/results/snapshot_ensemble_pilot.json]

The candidates, the rule and why are declared in ``pipelines/configs/snapshot_ensemble_pilot.yaml``
(committed before any run). For each candidate this pools ``samples_per_member`` BaLoRA draws from
each listed shipped package (sampling seed = ``seed`` + the member's position), takes the pooled
mean and spread, adds the shipped model's σ_n(x) in quadrature, and scores the release split's
validation part: MAE, RMSE, Spearman ρ of the epistemic and the total std with |error|, and the
paired BCa CI of each candidate's ρ(total) minus the single model's. Prints one JSON line per
candidate and the rule's choice, and writes everything to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))

from bandgap_benchmark import git_commit  # noqa: E402

from mofbalora.data.io import write_text_atomic  # noqa: E402
from mofbalora.model_folder import package_versions  # noqa: E402
from mofbalora.predict import load_model  # noqa: E402
from mofbalora.pretrained import resolve_model  # noqa: E402
from mofbalora.training.fit import prepare_folder_data  # noqa: E402
from mofbalora.uncertainty import metrics as um  # noqa: E402


def scores(mean: np.ndarray, epistemic: np.ndarray, total: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"val_mae_ev": um.mae(mean, truth), "val_rmse_ev": um.rmse(mean, truth),
            "val_spearman_epistemic_std_abs_error": um.spearman_std_error(mean, epistemic, truth),
            "val_spearman_total_std_abs_error": um.spearman_std_error(mean, total, truth),
            "val_epistemic_std_median_ev": float(np.median(epistemic))}


def rho(std: np.ndarray, abs_error: np.ndarray) -> float:
    """Spearman ρ(std, |error|) from the |errors| themselves."""
    return um.spearman_std_error(np.zeros_like(abs_error), std, abs_error)


def choose(rows: list[dict], rule: dict) -> str:
    """The declared rule: the single model unless a snapshot candidate gains enough ρ at no MAE cost."""
    single = rows[0]
    passing = [row for row in rows[1:]
               if row["rho_gain"]["value"] >= rule["min_rho_gain"] and row["rho_gain"]["ci_low"] > 0
               and row["val_mae_ev"] <= single["val_mae_ev"] + rule["mae_tolerance_ev"]]
    if not passing:
        return single["name"]
    best = max(row["val_spearman_total_std_abs_error"] for row in passing)
    return next(row["name"] for row in passing if row["val_spearman_total_std_abs_error"] >= best - rule["rho_tie"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "snapshot_ensemble_pilot.yaml"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "snapshot_ensemble_pilot.json"))
    args = parser.parse_args()
    logging.disable(logging.INFO)
    config = yaml.safe_load(Path(args.config).read_text())
    folders = {key: resolve_model(name) for key, name in config["members"].items()}
    shipped = load_model(resolve_model("qmof-pbe"))
    _, dataset, prepared = prepare_folder_data(shipped.folder)
    _, samples, truth = prepared.parts["val"]
    truth = np.asarray(truth, dtype=float)
    # every snapshot was fitted on the shipped model's split: the validation part is the same
    for folder in folders.values():
        if (folder / "split.json").read_bytes() != (shipped.folder / "split.json").read_bytes():
            raise SystemExit(f"{folder}: not fitted on the shipped model's split")
    frozen = shipped.frozen_embeddings(samples)
    frozen_tensor = torch.from_numpy(frozen)
    counts = shipped.head_element_counts(samples)
    models = {key: load_model(folder) for key, folder in folders.items()}
    cache: dict[tuple[str, int, int], np.ndarray] = {}
    rows = []
    for candidate in config["candidates"]:
        parts = []
        for position, key in enumerate(candidate["members"]):
            s, seed = candidate["samples_per_member"], config["seed"] + position
            if (key, s, seed) not in cache:
                cache[key, s, seed] = models[key].predict_draws(samples, n_samples=s, seed=seed,
                                                                frozen_embeddings=frozen_tensor)
            parts.append(cache[key, s, seed])
        draws = np.concatenate(parts)
        mean, epistemic = draws.mean(0), draws.std(0, ddof=1)
        total = shipped.total_std(epistemic, shipped.aleatoric_std(frozen, mean, counts))
        rows.append({"name": candidate["name"], "members": candidate["members"],
                     "samples_per_member": candidate["samples_per_member"], "draws": int(draws.shape[0]),
                     **scores(mean, epistemic, total, truth), "_abs_error": np.abs(mean - truth), "_total_std": total})
    single, rule = rows[0], config["rule"]
    bca = dict(n_resamples=rule["bootstrap_resamples"], seed=config["seed"], level=rule["confidence"])
    for row in rows:
        row["rho_total"] = um.bca_interval(rho, row["_total_std"], row["_abs_error"], **bca)
        row["rho_gain"] = None if row is single else um.bca_interval(
            lambda s, e, s0, e0: rho(s, e) - rho(s0, e0),
            row["_total_std"], row["_abs_error"], single["_total_std"], single["_abs_error"], **bca)
    for row in rows:
        del row["_abs_error"], row["_total_std"]
        print(json.dumps(row))
    choice = choose(rows, rule)
    print(json.dumps({"choice": choice}))
    result = {"n_validation": len(truth), "candidates": rows, "choice": choice, "rule": rule,
              "config": config, "seed": config["seed"], "git_commit": git_commit(), "versions": package_versions(),
              "labels_sha256": dataset.labels_sha256}
    write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
