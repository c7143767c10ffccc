"""The qmof-pbe v2 pilot (issue 22): candidate training recipes on a seeded part of the release
split's training set, scored on its validation set, chosen by the rule declared in
pipelines/configs/release_pilot.yaml before any run (mofbalora.analysis.pilot).

Each candidate is a fit of the v1 release config (pipelines/configs/release_qmof_v1.yaml) with the
baseline's and its own settings, trained for the pilot's fixed budget; a two-stage candidate trains
its stages in order, a later one on the weights of an earlier one (``init_from``). Every finished
fit gets the data-noise head chosen on validation (mofbalora.data_noise), which also scores it:
validation MAE of the mean of S draws and ρ(total std, |error|) at the model's S.

    python pipelines/release_pilot.py [--data PATH] [--results DIR] [--only NAME ...] [--no-publish]
                                      [--design YAML --release-config YAML --docs DIR]  (smoke tests)

Fits live in results/release_pilot/<candidate>/ and resume; the page is written to
docs/results/release_pilot.md (with docs/results/release_pilot_metrics.json) after each candidate,
so an interrupted pilot still shows what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "pipelines"))

from bandgap_benchmark import git_commit, quiet_logging  # noqa: E402
from mofbalora.adapters.model import forward_in_mode  # noqa: E402
from mofbalora.analysis import pilot  # noqa: E402
from mofbalora.backbones.batching import compute_frozen_embeddings  # noqa: E402
from mofbalora.data.datasets import default_cache_dir, load_labelled_dataset  # noqa: E402
from mofbalora.data.io import write_text_atomic  # noqa: E402
from mofbalora.data.splits import Split, check_disjoint  # noqa: E402
from mofbalora.data_noise import fit_data_noise  # noqa: E402
from mofbalora.featurise import featurise_paths, get_featuriser  # noqa: E402
from mofbalora.model_folder import build_member, package_versions, read_model_json  # noqa: E402
from mofbalora.training.config import TrainConfig, load_train_config  # noqa: E402
from mofbalora.training.fit import TIMING_FILE, fit, prepare_data, resolve_split, validation_curve  # noqa: E402
from mofbalora.training.noise_head import load_uncertainty_config  # noqa: E402

logger = logging.getLogger("release_pilot")
CONFIGS = ROOT / "pipelines" / "configs"
DESIGN = CONFIGS / "release_pilot.yaml"
RELEASE_CONFIG = CONFIGS / "release_qmof_v1.yaml"  # the recipe the candidates vary
PACKAGED_SPLIT = ROOT / "mofbalora" / "pretrained" / "qmof-pbe-cgcnn-balora" / "split.json"
DOCS = ROOT / "docs" / "results"


def merged(values: dict[str, Any], *settings: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each settings dict applied in turn; ``adapter`` merges key by key."""
    out = json.loads(json.dumps(values))
    for extra in settings:
        for key, value in extra.items():
            out[key] = {**out.get(key, {}), **value} if key == "adapter" else value
    return out


def pilot_split(release: Split, design: dict[str, Any]) -> Split:
    """A seeded ``n_train`` of the release training ids (in split order) and the release validation ids."""
    rng = np.random.default_rng(design["pilot"]["subset_seed"])
    chosen = np.sort(rng.choice(len(release.train), design["pilot"]["n_train"], replace=False))
    split = Split(train=[release.train[i] for i in chosen], val=list(release.val), test=[], calibration=[],
                  seed=release.seed, method=f"{release.method}; pilot subset seed {design['pilot']['subset_seed']}")
    check_disjoint({"pilot train": split.train, "pilot val": split.val},
                   {"release test": release.test, "release calibration": release.calibration})
    return split


def stage_plan(design: dict[str, Any], candidate: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate's fits in order: name, config values, epochs, and the stage it starts from."""
    epochs, baseline = design["pilot"]["epochs"], design["baseline"]["settings"]
    common = {"patience": design["pilot"]["patience"]}
    if "config" in candidate:  # a whole other config (CHGNet): the pilot's data, budget and release S
        values = load_train_config(CONFIGS / candidate["config"]).to_dict()
        values.update(common, epochs=epochs, split=base["split"], max_structures=None,
                      calibration_samples=base["calibration_samples"])
        return [{"name": candidate["name"], "values": values, "from": None}]
    stages = candidate.get("stages") or [{"name": candidate["name"], "settings": candidate.get("settings", {})}]
    return [{"name": stage["name"] if len(stages) > 1 else candidate["name"],
             "values": merged(base, baseline, stage["settings"], {**common, "epochs": stage.get("epochs", epochs)}),
             "from": stage.get("init_from_stage")} for stage in stages]


def stage_folder(results: Path, candidate: str, stage: dict[str, Any], n_stages: int) -> Path:
    return results / candidate / (stage["name"] if n_stages > 1 else "")


def stage_record(folder: Path) -> dict[str, Any]:
    """Epochs run, best epoch (1-based), wall time and size of a finished fit's single member."""
    member = folder / "members" / "0"
    timing = json.loads((member / TIMING_FILE).read_text())
    curve = validation_curve(member)
    return {**timing, "epochs_run": curve["epochs_run"], "best_epoch": curve["best_epoch"],
            "val_mae_noise_off_by_epoch": curve["val_mae_ev_by_epoch"]}


def chgnet_gate(values: dict[str, Any], split: Split, dataset: Any, gate: dict[str, Any],
                n_epochs: int) -> dict[str, Any]:
    """Time ``gate["steps"]`` BaLoRA training steps of ``values`` on the pilot's first training
    structures and extrapolate to the whole pilot; ``passes`` when it fits ``max_pilot_hours``."""
    config = TrainConfig.from_dict(values)
    featuriser = get_featuriser(config.backbone)
    indexed = dataset.table.set_index("id")
    wanted = split.train[: gate["steps"] * config.batch_size * 2]
    result = featurise_paths(list(indexed.loc[wanted, "path"]), featuriser, cache_dir=default_cache_dir(),
                             max_atoms=config.max_atoms, progress=False)
    samples = result.samples[: gate["steps"] * config.batch_size]
    model = build_member(backbone=config.backbone, method=config.method, adapter=config.adapter, seed=0,
                         head=config.head)
    z = compute_frozen_embeddings(model, samples)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    model.train()
    started = time.perf_counter()
    for step in range(gate["steps"]):
        rows = slice(step * config.batch_size, (step + 1) * config.batch_size)
        batch = model.collate(samples[rows])
        batch.frozen_embedding = z[rows]
        loss = forward_in_mode(model, batch, "train").square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    step_s = (time.perf_counter() - started) / gate["steps"]
    steps_per_epoch = int(np.ceil(len(split.train) / config.batch_size))
    pilot_hours = step_s * steps_per_epoch * n_epochs / 3600
    return {"step_s": step_s, "structures_timed": len(samples), "kept_fraction": len(result.samples) / len(wanted),
            "extrapolated_pilot_hours": pilot_hours, "max_pilot_hours": gate["max_pilot_hours"],
            "passes": pilot_hours <= gate["max_pilot_hours"], "load_average_1min": os.getloadavg()[0]}


def run_candidate(candidate: dict[str, Any], design: dict[str, Any], base: dict[str, Any], *, dataset: Any,
                  data: str | None, split: Split, results: Path, n_full_train: int) -> dict[str, Any]:
    """Train (or resume) every stage, fit the last one's noise head, and return its table row."""
    stages = stage_plan(design, candidate, base)
    folders: dict[str, Path] = {}
    records = []
    for stage in stages:
        values = dict(stage["values"])
        if stage["from"]:
            values["init_from"] = str(folders[stage["from"]])
        config = TrainConfig.from_dict(values)
        folder = stage_folder(results, candidate["name"], stage, len(stages))
        logger.info("%s: training %s into %s", candidate["name"], stage["name"], folder)
        if fit(config, data=data, out_dir=folder, split=split, progress=False) is None:
            raise SystemExit(f"{folder}: training stopped early; rerun to resume")
        folders[stage["name"]] = folder
        records.append({"stage": stage["name"], **stage_record(folder)})
    prepared = prepare_data(config, dataset, folder, progress=False, split=split)
    noise = fit_data_noise(folder, prepared=prepared, config=load_uncertainty_config(CONFIGS / "uncertainty.yaml")["noise_head"])
    chosen = next(row for row in noise["selection"] if row["inputs"] == noise["chosen"])
    mean_of_s = next(key for key in noise["val_mae_ev"] if key.startswith("mean_of_S"))
    return {"val_mae_ev": noise["val_mae_ev"][mean_of_s], "samples": int(mean_of_s.split("=")[1]),
            "val_mae_noise_off_ev": noise["val_mae_ev"]["noise_off"],
            "val_rho_total": chosen["val_spearman_total_std_abs_error"], "noise_head": noise["chosen"],
            "stages": records, "full_data_cost_s": pilot.full_data_cost_s(records, n_full_train=n_full_train),
            "train_config": read_model_json(folder)["train_config"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="labelled QMOF folder or archive (default: ../shared)")
    parser.add_argument("--results", default=str(ROOT / "results" / "release_pilot"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these candidates (others: as measured)")
    parser.add_argument("--no-publish", action="store_true", help="do not write docs/results")
    parser.add_argument("--design", default=str(DESIGN))
    parser.add_argument("--release-config", default=str(RELEASE_CONFIG))
    parser.add_argument("--docs", default=str(DOCS), help="where release_pilot.md and its metrics go")
    args = parser.parse_args(argv)
    quiet_logging()
    design = yaml.safe_load(Path(args.design).read_text())
    base = load_train_config(args.release_config).to_dict()
    dataset = load_labelled_dataset(args.data)
    release = resolve_split(TrainConfig.from_dict(base), dataset, Path(os.devnull), None)
    if (Path(args.release_config).resolve() == RELEASE_CONFIG
            and Split.load(PACKAGED_SPLIT).fingerprint() != release.fingerprint()):
        raise SystemExit(f"the release split made from {RELEASE_CONFIG} differs from the shipped model's")
    split = pilot_split(release, design)
    results = Path(args.results)
    metrics_path = results / "pilot_metrics.json"
    measured = json.loads(metrics_path.read_text()) if metrics_path.exists() else {"rows": {}, "not_run": {}}
    candidates = [{"name": design["baseline"]["name"], "settings": {}}] + design["candidates"]
    for candidate in candidates:
        name = candidate["name"]
        if args.only is not None and name not in args.only:
            continue
        if name in measured["rows"]:
            continue
        if "config" in candidate:
            gate = measured.get("gates", {}).get(name)
            if gate is None or gate["max_pilot_hours"] != design["chgnet_gate"]["max_pilot_hours"]:
                values = stage_plan(design, candidate, base)[0]["values"]
                gate = chgnet_gate(values, split, dataset, design["chgnet_gate"], design["pilot"]["epochs"])
                measured.setdefault("gates", {})[name] = gate
            if not gate["passes"]:
                measured["not_run"][name] = (f"cost gate: {gate['step_s']:.1f} s per training step, "
                                             f"{gate['extrapolated_pilot_hours']:.1f} h for the pilot "
                                             f"(limit {gate['max_pilot_hours']} h)")
                logger.info("%s: %s", name, measured["not_run"][name])
                write_text_atomic(metrics_path, json.dumps(measured, indent=1))
                continue
        started = time.time()
        measured["rows"][name] = run_candidate(candidate, design, base, dataset=dataset, data=args.data, split=split,
                                               results=results, n_full_train=len(release.train))
        measured["not_run"].pop(name, None)
        logger.info("%s done in %.0f s: %s", name, time.time() - started,
                    {k: v for k, v in measured["rows"][name].items() if k.startswith("val_")})
        write_text_atomic(metrics_path, json.dumps(measured, indent=1))
    names = [c["name"] for c in candidates]
    done = all(n in measured["rows"] or n in measured["not_run"] for n in names)
    rows = {n: measured["rows"][n] for n in names if n in measured["rows"]}
    report = {
        "design": design, "rows": rows, "not_run": {n: measured["not_run"].get(n, "not yet run") for n in names
                                                    if n not in rows},
        "gates": measured.get("gates", {}),
        "choice": (pilot.choose(rows, baseline=design["baseline"]["name"], **design["rule"])
                   if done and design["baseline"]["name"] in rows else None),
        "n_train": len(split.train), "n_full_train": len(release.train), "n_val": len(split.val),
        "split_sha256": split.fingerprint(), "release_split_sha256": release.fingerprint(),
        "labels_sha256": dataset.labels_sha256, "git_commit": git_commit(), "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
    }
    if not args.no_publish:
        docs = Path(args.docs)
        write_text_atomic(docs / "release_pilot_metrics.json", json.dumps(report, indent=1, default=str))
        write_text_atomic(docs / "release_pilot.md", pilot.render(report))
        logger.info("wrote %s", docs / "release_pilot.md")
    return report


if __name__ == "__main__":
    main()
