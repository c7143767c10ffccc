"""A simulated DFT campaign on QMOF: does a campaign guided by BaLoRA's uncertainty learn faster, or
find more MOFs in a gap window, than random picks or a LoRA ensemble? (issue 46; docs/method.md §15)

The design is declared in ``pipelines/configs/active_learning_<profile>.yaml`` before any run: the
release split's training part is the pool with labels hidden until queried, its test part the test
set. Per seed and setting every strategy starts from the same initial labelled set; each round fits
the strategy's model (warm-started from the round before), scores it on the test set, predicts the
unlabelled pool and queries the next batch with ``mofbalora.suggest``'s acquisitions.

    python -m pipelines.active_learning --profile cpu|smoke [--data PATH] [--results DIR] [--workers 2]
                                        [--costs] [--report-only]

``--costs`` re-times one round per strategy alone on one thread (the per-round cost the report
uses); ``--report-only`` reports the seeds already complete without running more (a run stopped
early: the design asks for at least 3 of its 4 seeds).

Every finished round is saved (``results/runs/active-learning-<profile>/<setting>/<strategy>/seed<k>/``)
and a rerun resumes from it; an interrupted fit resumes from its checkpoint. The report
(``pipelines.analysis.active_learning``) is written to results/<timestamp>-al-<profile>/ and, for the
cpu profile, published to docs/studies/active_learning.md.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file

from mofbalora.adapters.config import SAMPLING_METHODS
from mofbalora.adapters.model import set_adapter_mode, trainable_state_dict
from mofbalora.backbones.batching import Collate
from mofbalora.data.datasets import default_cache_dir, load_labelled_dataset
from mofbalora.data.io import atomic_path, write_text_atomic
from mofbalora.data.splits import Split
from mofbalora.data.targets import TargetNormaliser
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.featurise.base import element_counts
from mofbalora.model_folder import member_seeds, package_versions
from mofbalora.pretrained import resolve_model
from mofbalora.suggest import Goal, shortlist, suggest_from_predictions
from mofbalora.training.config import TrainConfig
from mofbalora.training.fit import PreparedData, train_member
from mofbalora.uncertainty.intervals import window_probability
from pipelines import cached_trunk
from pipelines.bandgap_benchmark import cached
from pipelines.provenance import ROOT, git_commit, quiet_logging

logger = logging.getLogger(__name__)

CONFIG_DIR = ROOT / "pipelines" / "configs"
RELEASE_MODEL = "qmof-pbe"  # whose split the campaign uses
ROUND_FILE = "round_{:02d}.json"
ERRORS_FILE = "test_abs_errors.npy"  # [rounds + 1, n_test] float32, the fits' absolute test errors (eV)
PREDICT_CHUNK = 4096  # structures per forward pass when predicting


def load_design(profile: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"active_learning_{profile}.yaml"
    if not path.exists():
        raise SystemExit(f"unknown profile {profile!r}: no {path}")
    return yaml.safe_load(path.read_text())


@dataclass
class Part:
    """One part of the release split, featurised and run through the frozen trunk."""

    ids: list[str]
    samples: list[cached_trunk.TrunkSample]
    gaps_ev: np.ndarray
    elements: list[set[str]]

    @cached_property
    def embeddings(self) -> np.ndarray:
        """Frozen crystal embeddings [n, 64], the near-duplicate metric of ``mofbalora suggest``."""
        return torch.stack([s.crystal for s in self.samples]).numpy()

    @cached_property
    def position(self) -> dict[str, int]:
        """Each id's index in this part."""
        return {structure_id: i for i, structure_id in enumerate(self.ids)}

    def subset(self, index: np.ndarray) -> "Part":
        return Part([self.ids[i] for i in index], [self.samples[i] for i in index], self.gaps_ev[index],
                    [self.elements[i] for i in index])


def _symbols(counts: np.ndarray) -> list[set[str]]:
    from pymatgen.core.periodic_table import Element

    return [{Element.from_Z(int(z)).symbol for z in np.flatnonzero(row) if z > 0} for row in counts]


def campaign_parts(design: dict[str, Any], data: str | None, run_dir: Path) -> tuple[dict[str, Part], str]:
    """pool / val / test of the release split (each capped by ``design['data']``), featurised through
    the shared cache and the trunk run once (cached in run_dir); and the labels' checksum."""
    dataset = load_labelled_dataset(data)
    split = Split.load(resolve_model(RELEASE_MODEL) / "split.json")
    table = dataset.table.set_index("id")
    caps = design["data"]
    parts: dict[str, Part] = {}
    for name, part in (("pool", "train"), ("val", "val"), ("test", "test")):
        ids = [i for i in split.part(part) if i in table.index]
        cap = caps.get(f"max_{name}")
        if cap is not None and cap < len(ids):
            ids = sorted(np.random.default_rng(0).choice(ids, cap, replace=False))

        def compute(ids: list[str] = ids) -> dict[str, np.ndarray]:
            result = featurise_paths(list(table.loc[ids, "path"]), get_featuriser("cgcnn"), cache_dir=default_cache_dir(),
                                     max_atoms=caps["max_atoms"], progress=False)
            trunk = cached_trunk.trunk_samples(result.samples)
            return {"ids": np.array(result.ids), "crystal": torch.stack([s.crystal for s in trunk]).numpy(),
                    "keys": np.array([s.content_key for s in trunk], dtype=np.int64),
                    "counts": element_counts(result.samples)}

        saved = cached(run_dir / "trunk" / f"{name}.npz", compute, made_by=f"{dataset.labels_sha256}:{len(ids)}:{caps}")
        kept = [str(i) for i in saved["ids"]]
        samples = [cached_trunk.TrunkSample(torch.from_numpy(z), int(k)) for z, k in zip(saved["crystal"], saved["keys"])]
        parts[name] = Part(kept, samples, table.loc[kept, dataset.target].to_numpy(float), _symbols(saved["counts"]))
    return parts, dataset.labels_sha256


def initial_set(pool: Part, *, size: int, seed: int, excluded_metals: list[str]) -> np.ndarray:
    """The seed's initial labelled pool indices: uniform among structures holding none of ``excluded_metals``."""
    allowed = np.array([i for i, elements in enumerate(pool.elements) if not elements & set(excluded_metals)])
    return np.sort(np.random.default_rng(seed).choice(allowed, size, replace=False))


def train_config(design: dict[str, Any], method_name: str, seed: int) -> TrainConfig:
    spec = design["methods"][method_name]
    adapter = {**design["adapter"], **spec.get("adapter", {})}
    return TrainConfig.from_dict({**design["train"], "backbone": cached_trunk.NAME, "method": spec["method"],
                                  "adapter": adapter, "ensemble_size": design["ensemble_size"], "seed": seed})


def fit_members(config: TrainConfig, labelled: Part, val: Part, *, normaliser: TargetNormaliser, round_dir: Path,
                previous: Path | None) -> list[tuple[torch.nn.Module, float]]:
    """Train every member of the round (resuming an interrupted one), each warm-started from its own
    weights of the round before; returns (model, learned noise std eV) per member."""
    empty = ([], [], np.zeros(0))
    data = PreparedData(split=None, parts={"train": (labelled.ids, labelled.samples, labelled.gaps_ev),
                                           "val": (val.ids, val.samples, val.gaps_ev),
                                           "calibration": empty, "test": empty},
                        skipped=pd.DataFrame(), labels_sha256="")
    members = []
    for member_seed in member_seeds(config.method, config.seed, config.ensemble_size, config.members):
        member_dir = round_dir / f"member{member_seed}"
        warm = None
        if previous is not None:
            saved = json.loads((previous / f"member{member_seed}" / "noise.json").read_text())
            warm = (load_file(str(previous / f"member{member_seed}" / "trainable.safetensors")), saved["noise_std_ev"])
        model, _ = train_member(config, data, seed=member_seed, member_dir=member_dir, normaliser=normaliser,
                                frozen=None, progress=False, trainer_overrides={},
                                warm_start=warm)
        with atomic_path(member_dir / "trainable.safetensors") as tmp:
            save_file(trainable_state_dict(model), str(tmp))
        noise = json.loads((member_dir / "noise.json").read_text())["noise_std_ev"]
        members.append((model.eval(), float(noise)))
    return members


@torch.no_grad()
def predict(members: list[tuple[torch.nn.Module, float]], method: str, part: Part, *, samples: int, seed: int,
            normaliser: TargetNormaliser) -> tuple[np.ndarray, np.ndarray]:
    """Mean and total std (eV) of every structure: S draws of a sampling method (keyed by content and
    ``seed``), or the members' mean-mode predictions of an ensemble; total std = sqrt(spread² + noise²)."""
    draws = []
    for model, _ in members:
        chunks = []
        for start in range(0, len(part.samples), PREDICT_CHUNK):
            batch, _, _ = Collate(model)([(i, s, None, None) for i, s in enumerate(part.samples[start:start + PREDICT_CHUNK])])
            if method in SAMPLING_METHODS:
                with set_adapter_mode(model, "sample", samples=samples, seed=seed):
                    chunks.append(model(batch))
            else:
                with set_adapter_mode(model, "mean"):
                    chunks.append(model(batch).unsqueeze(0))
        draws.append(torch.cat(chunks, dim=1))
    ev = normaliser.to_ev(torch.cat(draws).numpy().astype(float))
    noise_ev = float(np.mean([noise for _, noise in members]))
    return ev.mean(0), np.sqrt(ev.var(0) + noise_ev ** 2)


def acquire(strategy: dict[str, Any], pool: Part, candidates: np.ndarray, mean: np.ndarray, std: np.ndarray, *,
            budget: int, rng: np.random.Generator) -> np.ndarray:
    """The pool indices to query next among ``candidates`` (predictions ``mean``/``std`` are theirs)."""
    kind = strategy["acquisition"]
    if kind == "random":
        return np.sort(rng.choice(candidates, budget, replace=False))
    if kind == "top-std":
        return candidates[np.argsort(-std, kind="stable")[:budget]]
    window = strategy.get("window")
    p_window = window_probability(mean, std, *window) if window else None
    if kind == "window-greedy":
        return candidates[np.argsort(-p_window, kind="stable")[:budget]]
    goal = Goal("learn") if kind == "batch" else Goal("window", tuple(window)) if kind == "window-ucb" else None
    if goal is None:
        raise ValueError(f"unknown acquisition {kind!r}")
    table = pd.DataFrame({"id": np.arange(len(candidates)).astype(str), "bandgap_mean_ev": mean, "bandgap_std_ev": std,
                          **({"p_in_window": p_window} if window else {})})
    listed = shortlist(table, goal, budget)  # as `mofbalora suggest` does
    rows = listed["id"].astype(int).to_numpy()
    picked = suggest_from_predictions(listed, pool.embeddings[candidates[rows]], budget=budget, goal=goal)
    return candidates[picked["id"].astype(int).to_numpy()]


def run_campaign(design: dict[str, Any], parts: dict[str, Part], *, setting: str, strategy_name: str, seed: int,
                 out_dir: Path) -> list[dict[str, Any]]:
    """One strategy's campaign for one seed and setting; resumes from its saved rounds."""
    strategy = design["strategies"][strategy_name]
    pool, val, test = parts["pool"], parts["val"], parts["test"]
    excluded = design["settings"][setting]["initial_excludes_metals"]
    labelled = initial_set(pool, size=design["initial_labels"], seed=seed, excluded_metals=excluded)
    normaliser = TargetNormaliser.fit(pool.gaps_ev[labelled])
    config = train_config(design, strategy["method"], seed)
    shifted = np.array([bool(e & set(design["settings"]["chemistry-shift"]["initial_excludes_metals"])) for e in test.elements])
    records: list[dict[str, Any]] = []
    errors = []
    previous = None
    for round_index in range(design["rounds"] + 1):
        round_dir = out_dir / f"round{round_index:02d}"
        record_path = out_dir / ROUND_FILE.format(round_index)
        if record_path.exists():
            record = json.loads(record_path.read_text())
            errors.append(np.load(round_dir / "test_abs_errors.npy"))
        else:
            started = time.perf_counter()
            members = fit_members(config, pool.subset(labelled), val, normaliser=normaliser, round_dir=round_dir,
                                  previous=previous)
            fitted = time.perf_counter()
            test_mean, test_std = predict(members, config.method, test, samples=design["samples"], seed=seed,
                                          normaliser=normaliser)
            abs_errors = np.abs(test_mean - test.gaps_ev).astype(np.float32)
            np.save(round_dir / "test_abs_errors.npy", abs_errors)
            record = {"round": round_index, "n_labels": int(len(labelled)), "test_mae_ev": float(abs_errors.mean()),
                      "test_mae_shifted_metals_ev": float(abs_errors[shifted].mean()) if shifted.any() else None,
                      "fit_s": fitted - started, "queried": []}
            if round_index < design["rounds"]:
                candidates = np.setdiff1d(np.arange(len(pool.ids)), labelled)
                predict_started = time.perf_counter()
                mean, std = predict(members, config.method, pool.subset(candidates), samples=design["samples"],
                                    seed=seed + 1000 * (round_index + 1), normaliser=normaliser)
                predicted = time.perf_counter()
                rng = np.random.default_rng([seed, 46, round_index])  # per round: a resumed run picks alike
                picks = acquire(strategy, pool, candidates, mean, std, budget=design["queries_per_round"], rng=rng)
                record.update(predict_pool_s=predicted - predict_started, select_s=time.perf_counter() - predicted,
                              queried=[pool.ids[i] for i in picks])
            # what choosing the next batch cost (fit, pool prediction, selection), test scoring not counted
            record["decision_wall_s"] = record["fit_s"] + record.get("predict_pool_s", 0.0) + record.get("select_s", 0.0)
            write_text_atomic(record_path, json.dumps(record, indent=1))
            errors.append(abs_errors)
        records.append(record)
        labelled = np.sort(np.concatenate([labelled, [pool.position[i] for i in record["queried"]]])).astype(int)
        previous = round_dir
    np.save(out_dir / ERRORS_FILE, np.stack(errors))
    return records


COSTS_FILE = "costs.json"


def measure_costs(design: dict[str, Any], parts: dict[str, Part], run_dir: Path, *, setting: str = "in-distribution",
                  seed: int = 0, round_index: int | None = None) -> dict[str, dict[str, float]]:
    """A quiet re-timing of one round per strategy (fit, pool prediction, selection; one thread):
    the campaign's own wall times ran two at a time beside other work. Each strategy repeats its
    round ``round_index`` (default the middle one) of ``seed`` from the saved labels and warm start,
    in a scratch folder; ``costs.json`` in ``run_dir`` keeps the result."""
    import tempfile

    round_index = max(1, design["rounds"] // 2) if round_index is None else round_index  # round 0 has no warm start
    pool = parts["pool"]
    costs = {}
    for name, strategy in design["strategies"].items():
        folder = campaign_dir(run_dir, setting, name, seed)
        records = [json.loads((folder / ROUND_FILE.format(r)).read_text()) for r in range(round_index)]
        initial = initial_set(pool, size=design["initial_labels"], seed=seed,
                              excluded_metals=design["settings"][setting]["initial_excludes_metals"])
        normaliser = TargetNormaliser.fit(pool.gaps_ev[initial])
        labelled = np.sort(np.concatenate([initial, [pool.position[i] for r in records for i in r["queried"]]])).astype(int)
        config = train_config(design, strategy["method"], seed)
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            members = fit_members(config, pool.subset(labelled), parts["val"], normaliser=normaliser,
                                  round_dir=Path(scratch), previous=folder / f"round{round_index - 1:02d}")
            fitted = time.perf_counter()
        candidates = np.setdiff1d(np.arange(len(pool.ids)), labelled)
        mean, std = predict(members, config.method, pool.subset(candidates), samples=design["samples"],
                            seed=seed + 1000 * (round_index + 1), normaliser=normaliser)
        predicted = time.perf_counter()
        acquire(strategy, pool, candidates, mean, std, budget=design["queries_per_round"],
                rng=np.random.default_rng([seed, 46, round_index]))
        costs[name] = {"fit_s": fitted - started, "predict_pool_s": predicted - fitted,
                       "select_s": time.perf_counter() - predicted, "n_labels": int(len(labelled)),
                       "n_pool": int(len(candidates))}
        costs[name]["decision_s"] = costs[name]["fit_s"] + costs[name]["predict_pool_s"] + costs[name]["select_s"]
        logger.info("cost of %s: %.1f s", name, costs[name]["decision_s"])
    write_text_atomic(run_dir / COSTS_FILE, json.dumps({"setting": setting, "seed": seed, "round": round_index,
                                                        "threads": torch.get_num_threads(), "strategies": costs}, indent=1))
    return costs


def campaign_dir(run_dir: Path, setting: str, strategy: str, seed: int) -> Path:
    return run_dir / setting / strategy / f"seed{seed}"


def _run_task(args: tuple[dict[str, Any], str | None, str, str, int]) -> tuple[str, int, float]:
    design, data, run_dir, setting, seed = args
    torch.set_num_threads(1)
    quiet_logging()
    run_dir = Path(run_dir)
    parts, _ = campaign_parts(design, data, run_dir)
    started = time.perf_counter()
    for strategy in design["strategies"]:
        folder = campaign_dir(run_dir, setting, strategy, seed)
        run_campaign(design, parts, setting=setting, strategy_name=strategy, seed=seed, out_dir=folder)
        logger.info("%s / %s / seed %d done", setting, strategy, seed)
    return setting, seed, time.perf_counter() - started


def main(argv: list[str] | None = None) -> Path:
    from pipelines.bandgap_benchmark import pipeline_parser

    parser = pipeline_parser(__doc__, profiles="cpu (default) or smoke", publish_to="docs/studies/active_learning.md")
    parser.add_argument("--workers", type=int, default=2, help="campaigns (seed x setting) run at once, one thread each")
    parser.add_argument("--report-only", action="store_true",
                        help="run no campaign: report the seeds whose campaigns are complete (a run stopped early)")
    parser.add_argument("--costs", action="store_true",
                        help="after the campaigns, re-time one round per strategy alone on one thread (run it on a quiet machine)")
    args = parser.parse_args(argv)
    quiet_logging()
    design = load_design(args.profile)
    code_commit = git_commit()
    results = Path(args.results)
    run_dir = results / "runs" / f"active-learning-{args.profile}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "design.yaml", yaml.safe_dump(design, sort_keys=False))
    parts, labels_sha256 = campaign_parts(design, args.data, run_dir)  # featurise once, before the workers
    tasks = [(design, args.data, str(run_dir), setting, seed) for seed in design["seeds"] for setting in design["settings"]]
    started = time.perf_counter()
    if args.report_only:
        tasks = []
    if args.workers > 1 and tasks:
        with ProcessPoolExecutor(max_workers=args.workers) as executor:
            for setting, seed, seconds in executor.map(_run_task, tasks):
                logger.info("setting %s seed %d: %.0f s", setting, seed, seconds)
    else:
        for task in tasks:
            _run_task(task)
    if args.costs:
        torch.set_num_threads(1)
        measure_costs(design, parts, run_dir, setting=next(iter(design["settings"])), seed=design["seeds"][0])
    provenance = {"profile": args.profile, "design": design, "git_commit": code_commit, "packages": package_versions(),
                  "labels_sha256": labels_sha256, "sizes": {name: len(part.ids) for name, part in parts.items()},
                  "campaign_wall_s": None if args.report_only else time.perf_counter() - started,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    from pipelines.analysis import active_learning as report

    report_dir = results / f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-al-{args.profile}"
    metrics = report.analyse(run_dir, design, parts, provenance)
    publish = args.publish if args.publish is not None else args.profile == "cpu"
    report.write(report_dir, metrics, publish=publish)
    return report_dir


if __name__ == "__main__":
    main()
