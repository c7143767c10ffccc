"""`make bench`: speed and memory figures on real QMOF structures, written to benchmarks/results.json.

Each figure group runs in its own process (clean timings and peak memory). Every figure is the
median of several repeats after a warm-up; ratios are computed within one run.

    python -m benchmarks.run [--backbones cgcnn,chgnet] [--only-screening]   # the latter: screening and sampling-bound groups

The screening figures are the shipped default model (qmof-pbe) at its default S: end to end from
CIF with a cold feature cache on the first 1,000 CoRE-MOF 2019 CIFs, the time per MOF split into
reading, featurising and the model, the model's time against cell size
(benchmarks/screen_time_vs_atoms.png), and `mofbalora screen` with 1 and 2 DDP processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mofbalora.data.io import write_text_atomic
from pipelines.analysis.report import write_generated_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"
REPEATS = 5


def median_time(function: Callable[[], Any], *, repeats: int = REPEATS, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def qmof_paths(n: int, *, max_atoms: int | None = None, seed: int = 0) -> list[Path]:
    """n random QMOF CIFs (optionally only cells with <= max_atoms atoms), fixed by seed."""
    import numpy as np

    from mofbalora.data import load_labelled_dataset, read_structure

    table = load_labelled_dataset().table
    order = np.random.default_rng(seed).permutation(len(table))
    chosen = []
    for index in order:
        path = Path(table.iloc[index]["path"])
        if max_atoms is not None and len(read_structure(path)) > max_atoms:
            continue
        chosen.append(path)
        if len(chosen) == n:
            break
    return chosen


def batch_of(backbone: Any, paths: list[Path]) -> Any:
    from mofbalora.data import read_structure

    featuriser = backbone.make_featuriser()
    return backbone.collate([featuriser.featurise(read_structure(p), p.stem) for p in paths])


# --------------------------------------------------------------------------- groups

def group_featurise(backbone_name: str, n: int) -> dict[str, Any]:
    from mofbalora.featurise import featurise_paths, get_featuriser

    paths = qmof_paths(n)
    featuriser = get_featuriser(backbone_name)
    cache = Path(tempfile.mkdtemp(prefix="mofbalora-bench-"))
    try:
        start = time.perf_counter()
        cold = featurise_paths(paths, featuriser, cache_dir=cache, workers=os.cpu_count(), progress=False)
        cold_s = time.perf_counter() - start
        cached_s = median_time(lambda: featurise_paths(paths, featuriser, cache_dir=cache, progress=False), repeats=3, warmup=0)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"n_structures": n, "n_ok": len(cold.samples), "cold_s": cold_s, "cached_s": cached_s,
            "cold_structures_per_s": n / cold_s, "cached_structures_per_s": n / cached_s,
            "cached_speedup": cold_s / cached_s, "peak_rss_gb": peak_rss_gb()}


def _train_step_timer(model: Any, batch: Any, target: Any) -> Callable[[], None]:
    import torch

    from mofbalora.adapters import set_adapter_mode

    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    has_adapters = getattr(model, "_mofbalora_adapter_state", None) is not None

    def step() -> None:
        optimiser.zero_grad()
        if has_adapters:
            with set_adapter_mode(model, "train"):
                out = model(batch)
        else:
            out = model(batch)
        torch.nn.functional.mse_loss(out, target).backward()
        optimiser.step()

    return step


def group_train(backbone_name: str, batch_size: int, max_atoms: int) -> dict[str, Any]:
    import torch

    from mofbalora.backbones import get_backbone
    from mofbalora.backbones.batching import compute_frozen_embeddings
    from mofbalora.model_folder import build_member

    paths = qmof_paths(batch_size, max_atoms=max_atoms, seed=1)
    target = torch.randn(batch_size)
    bare = get_backbone(backbone_name)
    bare_batch = batch_of(bare, paths)
    with torch.no_grad():
        forward_s = median_time(lambda: bare(bare_batch), repeats=3)
    times = {}
    for method in ("lora", "balora", "full"):
        model = build_member(backbone=backbone_name, method=method, seed=0,
                             adapter={"rank": 8, "alpha": 16, "target_modules": [".*"]})
        model.train()
        batch = batch_of(model, paths)
        if method == "balora":  # z(x) cached per structure, as in training
            batch.frozen_embedding = compute_frozen_embeddings(model, [s for s in _samples(model, paths)])
        repeats = 5 if backbone_name == "cgcnn" else 3
        times[method] = median_time(_train_step_timer(model, batch, target), repeats=repeats)
    return {"batch_size": batch_size, "max_atoms": max_atoms, "step_s": times, "bare_forward_s": forward_s,
            "balora_over_lora": times["balora"] / times["lora"], "lora_over_full": times["lora"] / times["full"],
            "peak_rss_gb": peak_rss_gb()}


def _samples(backbone: Any, paths: list[Path]) -> list[Any]:
    from mofbalora.data import read_structure

    featuriser = backbone.make_featuriser()
    return [featuriser.featurise(read_structure(p), p.stem) for p in paths]


def group_infer(backbone_name: str, batch_size: int, max_atoms: int) -> dict[str, Any]:
    import torch

    from mofbalora.adapters import adapter_layers, merge_adapters, set_adapter_mode, unmerge_adapters
    from mofbalora.backbones import get_backbone
    from mofbalora.model_folder import build_member

    torch.set_grad_enabled(False)
    paths = qmof_paths(batch_size, max_atoms=max_atoms, seed=2)
    bare = get_backbone(backbone_name)
    batch = batch_of(bare, paths)
    repeats = 5 if backbone_name == "cgcnn" else 3
    bare_s = median_time(lambda: bare(batch), repeats=repeats)
    model = build_member(backbone=backbone_name, method="balora", seed=0,
                         adapter={"rank": 8, "alpha": 16, "target_modules": [".*"]})
    model.eval()
    generator = torch.Generator().manual_seed(0)
    for layer in adapter_layers(model):
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.05)
    batch = batch_of(model, paths)

    def mean_pass() -> None:
        with set_adapter_mode(model, "mean"):
            model(batch)

    def sample_pass(samples: int) -> Callable[[], None]:
        def run() -> None:
            with set_adapter_mode(model, "sample", samples=samples, seed=1):
                model(batch)
        return run

    def sequential(samples: int) -> None:
        for seed in range(samples):
            with set_adapter_mode(model, "sample", samples=1, seed=seed):
                model(batch)

    mean_s = median_time(mean_pass, repeats=repeats)
    s32_s = median_time(sample_pass(32), repeats=max(1, repeats - 2))
    s5_s = median_time(sample_pass(5), repeats=repeats)
    sequential_s = median_time(lambda: sequential(32), repeats=max(1, repeats - 2))
    merge_adapters(model)
    merged_s = median_time(mean_pass, repeats=repeats)
    unmerge_adapters(model)
    return {"batch_size": batch_size, "max_atoms": max_atoms,
            "seconds": {"bare": bare_s, "mean_unmerged": mean_s, "mean_merged": merged_s, "s32_vectorised": s32_s,
                        "s32_sequential": sequential_s, "s5_vectorised": s5_s},
            "s32_over_mean": s32_s / mean_s, "s32_over_merged_mean": s32_s / merged_s,
            "vectorised_over_sequential": s32_s / sequential_s,
            "merged_over_bare": merged_s / bare_s, "s5_over_mean": s5_s / mean_s, "peak_rss_gb": peak_rss_gb()}


def group_sampling_bound(n: int, batch_size: int = 16) -> dict[str, Any]:
    """Every shipped model's S-sample cost against its bound (docs/method.md §6): S mean passes of
    the adapted part plus one pass of the unadapted part. A shipped model's adapters start at its
    backbone's input layer (CGCNN's ``embedding``), so the adapted part is the whole model (its merged
    mean pass, ``batch_size`` structures a pass) and the unadapted part is the bare pass that gives
    BaLoRA's α(x) its z(x). The S-sample cost is ``predict_draws`` as `predict` runs it (its own
    batching), on ``n`` QMOF structures with cached features; per MOF, medians of repeats."""
    import torch

    from mofbalora.adapters import merge_adapters, set_adapter_mode, unmerge_adapters
    from mofbalora.featurise import featurise_paths
    from mofbalora.predict import load_model
    from mofbalora.pretrained import shipped_models

    torch.set_grad_enabled(False)
    out: dict[str, Any] = {"n_structures": n, "mean_pass_batch_size": batch_size, "models": {}}
    work = Path(tempfile.mkdtemp(prefix="mofbalora-bound-"))
    try:
        for shipped in shipped_models():
            model = load_model(shipped.folder)
            samples = featurise_paths(qmof_paths(n, seed=3), model.backbone.make_featuriser(), cache_dir=work,
                                      progress=False).samples
            batches = [model.backbone.collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
            member = model.members[0]
            merge_adapters(member)

            def mean_passes() -> None:
                with set_adapter_mode(member, "mean"):
                    for batch in batches:
                        member(batch)

            mean_s = median_time(mean_passes) / len(samples)
            unmerge_adapters(member)
            bare_s = median_time(lambda: model.frozen_embeddings(samples)) / len(samples)
            rows = {}
            for size in sorted({model.default_samples, 32}):
                sampled_s = median_time(lambda: model.predict_draws(samples, n_samples=size), repeats=3) / len(samples)
                bound_s = size * mean_s + bare_s
                rows[str(size)] = {"ms_per_mof": 1000 * sampled_s, "bound_ms_per_mof": 1000 * bound_s,
                                   "over_bound": sampled_s / bound_s, "mean_passes": sampled_s / mean_s}
            out["models"][shipped.alias] = {"backbone": model.meta["backbone"]["name"], "method": model.method,
                                            "default_samples": model.default_samples,
                                            "mean_pass_ms_per_mof": 1000 * mean_s, "bare_pass_ms_per_mof": 1000 * bare_s,
                                            "samples": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def group_screening(n: int, n_profiled: int = 150) -> dict[str, Any]:
    """The shipped default model at its default S, end to end from CIF with a cold feature cache,
    on the first ``n`` CoRE-MOF 2019 CIFs, as ``model.predict`` runs them (one process); then where
    the time goes: reading, featurising and the model, per MOF, and the model's time per MOF against
    its atoms on ``n_profiled`` of them (one structure per call), with the fitted slope."""
    import numpy as np

    from mofbalora.data import read_structure
    from mofbalora.featurise.base import sample_num_atoms
    from mofbalora.model_folder import model_json_sha256
    from mofbalora.predict import load_model
    from mofbalora.pretrained import DEFAULT_MODEL, resolve_model
    from pipelines.screen_speed import coremof_screen_inputs, timed_predict

    model = load_model(resolve_model(None))
    samples = model.default_samples
    with coremof_screen_inputs(n) as (cifs, cache_dir):
        table, seconds = timed_predict(model, cifs, cache_dir)
        featuriser = model.backbone.make_featuriser()
        read_s, featurise_s, featurised = 0.0, 0.0, []
        for path in cifs:
            start = time.perf_counter()
            try:
                structure = read_structure(path)
            except Exception:  # noqa: BLE001 - the screen skips it too
                read_s += time.perf_counter() - start
                continue
            middle = time.perf_counter()
            read_s += middle - start
            try:
                featurised.append(featuriser.featurise(structure, path.stem))
            except Exception:  # noqa: BLE001
                pass
            featurise_s += time.perf_counter() - middle
        model_s = timed_predict(model, cifs, cache_dir)[1]  # the same screen again, features now cached: the model's share
        rng = np.random.default_rng(0)
        profiled = [featurised[i] for i in sorted(rng.choice(len(featurised), min(n_profiled, len(featurised)),
                                                             replace=False))]
        model.predictive(profiled[:2], n_samples=samples)  # warm-up
        atoms, per_mof = [], []
        for sample in profiled:
            start = time.perf_counter()
            model.predictive([sample], n_samples=samples)
            per_mof.append(time.perf_counter() - start)
            atoms.append(sample_num_atoms(sample))
    atoms_arr, per_mof_arr = np.asarray(atoms, dtype=float), np.asarray(per_mof)
    slope, intercept = np.polyfit(atoms_arr, per_mof_arr, 1)
    exponent = float(np.polyfit(np.log(atoms_arr), np.log(per_mof_arr), 1)[0])
    figure = ROOT / "benchmarks" / "screen_time_vs_atoms.png"
    _time_vs_atoms_figure(atoms_arr, per_mof_arr, slope, intercept, exponent, figure)
    ok = int((table["status"] == "ok").sum())
    # which release the alias named when this ran (the screen in benchmarks/screen_coremof.* uses the same key)
    return {"model": DEFAULT_MODEL, "model_json_sha256_12": model_json_sha256(model.folder)[:12], "n_inputs": n,
            "n_predicted": ok, "samples": samples, "seconds": seconds,
            "mofs_per_s": n / seconds, "median_std_ev": float(np.nanmedian(table["bandgap_std_ev"])),
            "split_s_per_mof": {"reading": read_s / n, "featurising": featurise_s / n, "model_batched": model_s / n},
            "split_note": "per input; model_batched is the same screen rerun with the features cached (model and "
                          "cache reads); reading and featurising are timed one CIF at a time",
            "time_vs_atoms": {"n": len(atoms), "slope_ms_per_atom": 1000 * float(slope),
                              "intercept_ms": 1000 * float(intercept), "log_log_exponent": exponent,
                              "median_atoms": float(np.median(atoms_arr)), "figure": str(figure.relative_to(ROOT)),
                              "note": "one structure per call, so per-call overhead is in the intercept"}}


def _time_vs_atoms_figure(atoms: Any, seconds: Any, slope: float, intercept: float, exponent: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.scatter(atoms, 1000 * seconds, s=10, alpha=0.6)
    grid = np.linspace(atoms.min(), atoms.max(), 50)
    ax.plot(grid, 1000 * (slope * grid + intercept), color="tab:red",
            label=f"fit: {1000 * slope:.2f} ms/atom {1000 * intercept:+.0f} ms (log-log exponent {exponent:.2f})")
    ax.set_xlabel("atoms in the cell")
    ax.set_ylabel("model time per MOF (ms)")
    ax.set_title("qmof-pbe, one MOF per call, default S (CoRE-MOF)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def group_screening_processes(n: int) -> dict[str, Any]:
    """``mofbalora screen`` on the first ``n`` CoRE-MOF CIFs (features cached) with 1 process and with
    2 DDP processes (gloo on CPU): wall seconds each, and whether the two tables agree."""
    import numpy as np
    import pandas as pd

    from pipelines.screen_speed import coremof_screen_inputs

    with coremof_screen_inputs(n) as (cifs, cache_dir):
        work = cache_dir.parent
        env = {**os.environ, "MOFBALORA_CACHE": str(cache_dir), "PYTHONWARNINGS": "ignore"}
        base = [sys.executable, "-m", "mofbalora.cli", "screen", "--gap", "1.5:3.0", str(cifs[0].parent)]
        subprocess.run(base + ["--out", str(work / "warm.csv")], env=env, check=True, capture_output=True)  # fill the cache
        seconds = {}
        for label, extra in (("1_process", []), ("2_processes", ["--devices", "2", "--strategy", "ddp"])):
            start = time.perf_counter()
            subprocess.run(base + extra + ["--out", str(work / f"{label}.csv")], env=env, check=True, capture_output=True)
            seconds[label] = time.perf_counter() - start
        one, two = (pd.read_csv(work / f"{label}.csv").set_index("id").sort_index() for label in seconds)
        agree = bool(np.allclose(one["bandgap_mean_ev"], two["bandgap_mean_ev"], atol=1e-5, equal_nan=True))
    return {"n_inputs": len(cifs), "seconds": seconds, "speedup": seconds["1_process"] / seconds["2_processes"],
            "mofs_per_s": {label: len(cifs) / s for label, s in seconds.items()}, "tables_agree": agree}


# --------------------------------------------------------------------------- driver

def run_group(name: str, args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--run-group", name, *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"group {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu_model": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def performance_table(results: dict[str, Any]) -> str:
    rows = [("featurisation, cold (structures/s)", "featurise.cold_structures_per_s", "{:.1f}"),
            ("featurisation, cached speed-up (×)", "featurise.cached_speedup", "{:.0f}"),
            ("training step BaLoRA / LoRA", "train_step_ratio.balora_over_lora", "{:.2f}"),
            ("training step LoRA / full", "train_step_ratio.lora_over_full", "{:.2f}"),
            ("S=32 inference / mean pass", "inference_ratio.s32_over_mean", "{:.1f}"),
            ("S=32 inference / merged mean pass (target ≤ 32)", "inference_ratio.s32_over_merged_mean", "{:.1f}"),
            ("S=32 vectorised / 32 sequential", "inference_ratio.vectorised_over_sequential", "{:.2f}"),
            ("merged mean pass / bare backbone", "inference_ratio.merged_over_bare", "{:.2f}"),
            ("ensemble (M=5) / BaLoRA total cost", "ensemble5_over_balora_total_cost", "{:.2f}"),
            ("peak RSS, training batch 16 (GB)", "memory.peak_rss_gb_train_batch16", "{:.2f}")]
    lines = ["| figure | cgcnn | chgnet |", "| --- | --- | --- |"]
    for label, key, fmt in rows:
        section, _, leaf = key.rpartition(".")
        node = results
        for part in key.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        cells = [fmt.format(node[b]) if isinstance(node, dict) and b in node else "–" for b in ("cgcnn", "chgnet")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    rows_cgcnn_only: list[tuple[str, str]] = []  # (figure, cgcnn value): screening uses the shipped model
    screening = results.get("screening")
    if screening:
        rows_cgcnn_only.append((f"screening, MOFs/s end to end from CIF, cold cache ({screening.get('model', 'CGCNN')}, "
                                f"S={screening['samples']}, first {screening['n_inputs']} CoRE-MOF)",
                                f"{screening['mofs_per_s']:.2f}"))
    if screening and "split_s_per_mof" in screening:
        split, slope = screening["split_s_per_mof"], screening["time_vs_atoms"]
        rows_cgcnn_only.append(("screening, ms per MOF: reading / featurising / model",
                                " / ".join(f"{1000 * split[k]:.0f}" for k in ("reading", "featurising", "model_batched"))))
        rows_cgcnn_only.append(("screening, model time per atom (ms; log-log exponent)",
                                f"{slope['slope_ms_per_atom']:.2f} ({slope['log_log_exponent']:.2f})"))
    processes = results.get("screening_processes")
    if processes:
        rows_cgcnn_only.append((f"`screen` MOFs/s, 1 → 2 DDP processes ({processes['n_inputs']} CIFs, cached)",
                                f"{processes['mofs_per_s']['1_process']:.2f} → {processes['mofs_per_s']['2_processes']:.2f}"))
    for alias, entry in results.get("sampling_bound", {}).get("models", {}).items():
        rows_cgcnn_only.append((f"S-sample cost / its bound, S mean passes + the z(x) pass ({alias}; target ≤ 1.2)",
                                ", ".join(f"S={size}: {row['over_bound']:.2f}" for size, row in entry["samples"].items())))
    lines += [f"| {label} | {value} | – |" for label, value in rows_cgcnn_only] or ["| screening | – | – |"]
    return "\n".join(lines)


def publish_readme(results: dict[str, Any]) -> None:
    readme = ROOT / "README.md"
    machine = results["machine"]
    write_generated_block(readme, "performance",
                          f"Measured by `make bench` on {machine['cores']} cores ({machine['cpu_model']}), torch "
                          f"{machine['torch']}; medians of repeats, from [benchmarks/results.json](benchmarks/results.json)."
                          f"\n\n{performance_table(results)}", generated_by="benchmarks/run.py")
    processes = results.get("screening_processes")
    if processes:
        seconds, rate = processes["seconds"], processes["mofs_per_s"]
        write_generated_block(
            ROOT / "docs" / "scaling.md", "processes",
            f"Measured by `make bench` on this {machine['cores']}-core machine, `mofbalora screen` on "
            f"{processes['n_inputs']} CoRE-MOF CIFs with cached features: 1 process {seconds['1_process']:.0f} s "
            f"({rate['1_process']:.2f} MOFs/s), 2 DDP processes {seconds['2_processes']:.0f} s "
            f"({rate['2_processes']:.2f} MOFs/s), × {processes['speedup']:.2f}; tables "
            f"{'identical' if processes['tables_agree'] else 'DIFFERENT'} within 1e-5 eV. Two cores bound "
            "it: one process already uses both through torch's threads.", generated_by="benchmarks/run.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-group", help=argparse.SUPPRESS)
    parser.add_argument("--backbones", default="cgcnn,chgnet")
    parser.add_argument("--n-featurise", type=int, default=500)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--only-screening", action="store_true",
                        help="rerun only the end-to-end screening group, keeping the other figures in --out")
    args, rest = parser.parse_known_args()
    if args.run_group:
        kind, _, backbone = args.run_group.partition(":")
        if kind == "featurise":
            result = group_featurise(backbone, int(rest[0]))
        elif kind == "train":
            result = group_train(backbone, 16, 60 if backbone == "chgnet" else 1000)
        elif kind == "infer":
            result = group_infer(backbone, 16 if backbone == "cgcnn" else 4, 1000 if backbone == "cgcnn" else 60)
        elif kind == "screening":
            result = group_screening(1000)
        elif kind == "screening_processes":
            result = group_screening_processes(200)
        elif kind == "sampling_bound":
            result = group_sampling_bound(64)
        else:
            raise SystemExit(f"unknown group {args.run_group}")
        print(json.dumps(result))
        return
    if args.only_screening:
        results = json.loads(Path(args.out).read_text())
        results["screening"] = run_group("screening", [])
        results["screening_processes"] = run_group("screening_processes", [])
        results["sampling_bound"] = run_group("sampling_bound", [])
        finish(results, Path(args.out))
        return
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(), "featurise": {}, "train_step_ratio": {}, "inference_ratio": {},
                               "memory": {}, "ensemble5_over_balora_total_cost": {}, "raw": {}}
    for backbone in args.backbones.split(","):
        feat = run_group(f"featurise:{backbone}", [str(args.n_featurise)])
        train = run_group(f"train:{backbone}", [])
        infer = run_group(f"infer:{backbone}", [])
        results["raw"][backbone] = {"featurise": feat, "train": train, "infer": infer}
        results["featurise"].setdefault("cold_structures_per_s", {})[backbone] = feat["cold_structures_per_s"]
        results["featurise"].setdefault("cached_speedup", {})[backbone] = feat["cached_speedup"]
        results["featurise"].setdefault("peak_rss_gb", {})[backbone] = feat["peak_rss_gb"]
        results["train_step_ratio"].setdefault("balora_over_lora", {})[backbone] = train["balora_over_lora"]
        results["train_step_ratio"].setdefault("lora_over_full", {})[backbone] = train["lora_over_full"]
        for key in ("s32_over_mean", "s32_over_merged_mean", "vectorised_over_sequential", "merged_over_bare"):
            results["inference_ratio"].setdefault(key, {})[backbone] = infer[key]
        results["memory"].setdefault("peak_rss_gb_train_batch16", {})[backbone] = train["peak_rss_gb"]
        # Same training steps and test structures for both; test-time samples S = M = 5.
        steps = train["step_s"]
        per_structure_mean = infer["seconds"]["mean_merged"] / infer["batch_size"]
        per_structure_s5 = infer["seconds"]["s5_vectorised"] / infer["batch_size"]
        n_steps, n_test = 1000, 1000
        ensemble = 5 * steps["lora"] * n_steps + 5 * per_structure_mean * n_test
        balora = steps["balora"] * n_steps + per_structure_s5 * n_test
        results["ensemble5_over_balora_total_cost"][backbone] = ensemble / balora
    results["screening"] = run_group("screening", [])
    results["screening_processes"] = run_group("screening_processes", [])
    results["sampling_bound"] = run_group("sampling_bound", [])
    results["wall_s"] = time.perf_counter() - started
    finish(results, Path(args.out))


def finish(results: dict[str, Any], out: Path) -> None:
    """Write the figures, print the table, and publish it to the README when writing the default file."""
    write_text_atomic(out, json.dumps(results, indent=1))
    print(performance_table(results))
    print(f"wall time {results.get('wall_s', 0):.0f} s -> {out}")
    if out.resolve() == RESULTS.resolve():
        publish_readme(results)


if __name__ == "__main__":
    main()
