"""A single-seed check made after the design study chose its winner, on the cpu study's
chemistry-shift test set (structures holding Co, Ni or Cd, which no training structure holds):
ρ(epistemic std, |error|) and MAE of the winner, of the old default BaLoRA, of the study's LoRA
ensemble and of MC-dropout LoRA, with the study's hierarchical-bootstrap CIs, and the winner's
paired ρ differences. The seeded answer is pipelines/alpha_adaptivity.py's; this is one seed.

Needs the cpu study's and the design study's runs in results/runs/cpu:

    python pipelines/chemistry_shift_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))

from bandgap_benchmark import load_profile, quiet_logging, shift_sets, study_data, study_spread  # noqa: E402
from mofbalora.analysis import study  # noqa: E402
from mofbalora.predict import load_model  # noqa: E402

WINNER = "balora-loguniform-layer-d0.01-head-residual"  # docs/results/ablation.md
SAMPLES = 16  # the study's claim_samples


def main() -> None:
    quiet_logging()
    profile = load_profile("cpu")
    run_dir = ROOT / "results" / "runs" / "cpu"
    dataset, _, _ = study_data(profile, None, run_dir)
    _, samples, truth = shift_sets(profile, dataset, run_dir)["chemistry"]
    runs: dict[str, study.MethodRuns] = {}
    for label, folder in (("winner", WINNER), ("old default BaLoRA", "balora-seed0")):
        draws = load_model(run_dir / "methods" / folder).predict_draws(samples, n_samples=SAMPLES, seed=0)
        runs[label] = study.MethodRuns(label, draws.mean(0)[None], study_spread(draws)[None])
    cached = run_dir / "predictions"
    members = np.load(cached / f"lora-ensemble-S{SAMPLES}.npz")["shift_chemistry"]
    runs["LoRA ensemble"] = study.MethodRuns("ensemble", members, np.full_like(members, np.nan), pooled=True)
    dropout = [np.load(cached / f"lora-mcdropout-seed{seed}-S{SAMPLES}.npz")["shift_chemistry"] for seed in (0, 1)]
    runs["MC-dropout LoRA"] = study.MethodRuns("mcdropout", np.stack([d.mean(0) for d in dropout]),
                                               np.stack([study_spread(d) for d in dropout]))
    rng = np.random.default_rng(0)
    print(f"chemistry-shift test set, n = {len(truth)}")
    for label, method in runs.items():
        rho = study.score(study.spearman, method, truth, rng, 1000)
        mae = study.score(study.mae, method, truth, rng, 1000)
        print(f"{label}: rho {rho['value']:.3f} [{rho['ci_low']:.3f}, {rho['ci_high']:.3f}], MAE {mae['value']:.3f} eV")
    for label in ("LoRA ensemble", "MC-dropout LoRA", "old default BaLoRA"):
        diff = study.paired_difference(study.spearman, runs["winner"], runs[label], truth, rng, 1000)
        print(f"winner - {label}: {diff['value']:.3f} [{diff['ci_low']:.3f}, {diff['ci_high']:.3f}]")


if __name__ == "__main__":
    main()
