"""Screen all of CoRE-MOF 2019 (from the ``core-mof`` package) with a shipped or fitted model.

    python -m benchmarks.screen_coremof [--model qmof-pbe] [--n N] [--gap 1.5:3.0] [--samples S]
                                        [--throughput-n 200]

1. Throughput: the first ``--throughput-n`` CIFs end to end from CIF with a cold (fresh) feature
   cache at the model's default S, then again with the features cached (the model's share).
2. The screen: every CIF (or the first ``--n``), streamed in chunks with resume
   (``mofbalora.streaming``) through the default feature cache; rerun to continue after a kill.
3. The cells the screen skipped for having more than the default ``max_atoms`` atoms, screened
   again apart with ``--large-cells-max-atoms`` (all flagged out of distribution, as larger than
   every training cell) and merged into the table; 0 leaves them skipped.
Writes benchmarks/screen_coremof.md (summary, throughput, top of the ranking), the ranked
benchmarks/screen_coremof.csv and benchmarks/screen_coremof.png (predicted gap vs calibrated 95%
interval width, OOD flagged apart).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.run import machine_info
from mofbalora.data.coremof import extract_coremof
from mofbalora.data.io import write_table_atomic, write_text_atomic
from mofbalora.data.structures import DEFAULT_MAX_ATOMS, InvalidReason, unique_structure_ids
from mofbalora.model_folder import model_json_sha256
from mofbalora.predict import load_model
from mofbalora.pretrained import resolve_model
from mofbalora.streaming import read_predictions, stream_predictions
from mofbalora.uncertainty.screening import rank_by_window, screening_summary
from pipelines.analysis.figures import screen_gap_vs_width

ROOT = Path(__file__).resolve().parents[1]

WORK = ROOT / "results" / "coremof"


def throughput(model, cifs: list[Path], samples: int, window_ev: tuple[float, float]) -> tuple[dict[str, float], Any]:
    """MOFs/s end to end from CIF with a fresh feature cache, and with the features cached; and the
    (uninterrupted, one-call) predictions, to compare with the streamed screen."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        table = model.predict(cifs, samples=samples, cache_dir=cache, window_ev=window_ev)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        model.predict(cifs, samples=samples, cache_dir=cache, window_ev=window_ev)
        cached_s = time.perf_counter() - start
    return {"n": len(cifs), "cold_s": cold_s, "cached_s": cached_s, "cold_mofs_per_s": len(cifs) / cold_s,
            "cached_mofs_per_s": len(cifs) / cached_s, "featurise_share": 1 - cached_s / cold_s}, table


def largest_difference(one_call: Any, streamed: Any) -> float:
    """Largest difference (eV or probability) between two tables' numbers on their shared ids."""
    columns = ["bandgap_mean_ev", "bandgap_std_ev", "lower_95_ev", "upper_95_ev", "p_in_window"]
    joined = one_call.set_index("id")[columns].merge(streamed.set_index("id")[columns], left_index=True,
                                                     right_index=True, how="inner", suffixes=("", "_streamed"))
    return float(max((joined[c] - joined[f"{c}_streamed"]).abs().max() for c in columns))


def screen_large_cells(model, cifs: list[Path], table: pd.DataFrame, streamed: Path, max_atoms: int, *,
                       samples: int, window_ev: tuple[float, float],
                       fresh: bool) -> tuple[pd.DataFrame, list[str], float | None]:
    """Screen again, with ``max_atoms``, the inputs ``table`` skipped for their size, and put their
    rows in its place (same order); returns the merged table, the ids screened again and the
    seconds this call spent predicting them (None when a saved pass was read)."""
    too_large = table[(table["status"] == "skipped")
                      & table["reason"].fillna("").str.startswith(InvalidReason.TOO_MANY_ATOMS.value)]
    if max_atoms <= 0 or too_large.empty:
        return table, [], None
    by_id = dict(zip(unique_structure_ids(cifs), cifs))
    path = streamed.with_name(f"{streamed.stem}-large-cells-max{max_atoms}{streamed.suffix}")
    start, seconds = time.perf_counter(), None
    if path.exists() and not fresh:
        large = read_predictions(path)
    else:
        large = stream_predictions(model, [by_id[i] for i in too_large["id"]], path, samples=samples,
                                   window_ev=window_ev, resume=True, max_atoms=max_atoms)
        seconds = time.perf_counter() - start
    if set(large["id"]) != set(too_large["id"]):  # the subset's ids must be the whole screen's
        raise RuntimeError(f"{path}: ids differ from the screen's size-skipped ones; rerun with --fresh")
    merged = pd.concat([table[~table["id"].isin(large["id"])], large], ignore_index=True)
    return merged.set_index("id").loc[table["id"]].reset_index(), large["id"].tolist(), seconds


def large_cells_line(ranked: pd.DataFrame, large_ids: list[str], max_atoms: int, seconds: float | None) -> str:
    """The report's line on the cells screened again for their size."""
    if not large_ids:
        return (f"- Cells with more than {DEFAULT_MAX_ATOMS} atoms: "
                + ("not screened again (`--large-cells-max-atoms 0`)." if max_atoms <= 0 else "none skipped."))
    large = ranked[ranked["id"].isin(large_ids)]
    ok = large[large["status"] == "ok"]
    return (f"- Cells with more than {DEFAULT_MAX_ATOMS} atoms: {len(large)} skipped by the screen, screened again "
            f"apart with `max_atoms` {max_atoms} (`--large-cells-max-atoms`) and counted in every figure here; "
            f"{len(ok)} predicted, of them {int(ok['out_of_distribution'].sum())} flagged out of distribution, "
            f"{int((ok['p_in_window'] >= 0.9).sum())} at P ≥ 0.9; {len(large) - len(ok)} skipped for another reason"
            + (f"; {seconds / 60:.1f} min." if seconds is not None else " (a saved pass, summarised again)."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="shipped model name or folder (default: qmof-pbe)")
    parser.add_argument("--n", type=int, default=None, help="first N structures of CoRE-MOF 2019-ASR (default all)")
    parser.add_argument("--gap", default="1.5:3.0")
    parser.add_argument("--samples", type=int, default=None, help="default: the model's calibration S")
    parser.add_argument("--throughput-n", type=int, default=200)
    parser.add_argument("--fresh", action="store_true", help="redo a finished screen instead of summarising it")
    parser.add_argument("--large-cells-max-atoms", type=int, default=12000,
                        help=f"screen the cells skipped for more than {DEFAULT_MAX_ATOMS} atoms again with this "
                             "limit (0: leave them skipped)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "screen_coremof"))
    args = parser.parse_args()
    low, high = (float(x) for x in args.gap.split(":"))
    folder = resolve_model(args.model)
    model = load_model(folder)
    samples = args.samples or model.default_samples
    cifs = extract_coremof(WORK / "cifs", limit=args.n)
    speed, one_call = throughput(model, cifs[: args.throughput_n], samples, (low, high))
    print(json.dumps(speed))
    start = time.perf_counter()
    # keyed by the model's content too: a new release in the same folder is a new screen
    model_key = model_json_sha256(folder)[:12]
    streamed = WORK / f"screen-{folder.name}-{model_key}-{args.n or 'all'}-S{samples}-{low:g}-{high:g}.csv"
    if streamed.exists() and not args.fresh:  # a finished screen is summarised again, not redone
        table, screen_s = read_predictions(streamed), None
    else:
        table = stream_predictions(model, cifs, streamed, samples=samples, window_ev=(low, high), resume=True)
        screen_s = time.perf_counter() - start
    table, large_ids, large_s = screen_large_cells(model, cifs, table, streamed, args.large_cells_max_atoms,
                                                   samples=samples, window_ev=(low, high), fresh=args.fresh)
    ranked = rank_by_window(table, low, high)
    write_table_atomic(ranked, args.out + ".csv")
    # same numbers whether a CIF was predicted in one call or streamed in chunks (and resumed)
    speed["largest_difference_one_call_vs_streamed"] = largest_difference(one_call, table)
    ok = ranked[ranked.status == "ok"]
    skipped = ranked[ranked.status == "skipped"]["reason"].str.split(":").str[0].value_counts().to_dict()
    counts, _ = np.histogram(ok["p_in_window"], bins=np.linspace(0, 1, 11))
    reasons = {kind: int(ok["ood_reason"].str.contains(needle, regex=False).sum())
               for kind, needle in (("epistemic std", "epistemic std"), ("embedding distance", "embedding far"),
                                    ("cell larger than training", "more than any training"))}
    name = args.model or "qmof-pbe"
    machine = machine_info()  # with the CPU model: throughput and the last digits differ between CPUs
    figure = screen_gap_vs_width(ranked, low, high, Path(args.out + ".png"),
                                 title=f"CoRE-MOF 2019-ASR, {len(ok)} MOFs, model {name}")
    header = "\n".join([
        f"# Screening CoRE-MOF 2019 with `{name}`",
        "",
        f"Model `{name}` ({model.method}; `{folder.name}`), S = {samples}, sampling seed 0; CoRE-MOF 2019-ASR from "
        f"the `core-mof` package, {len(cifs)} CIFs{' (the first, in the archive order)' if args.n else ''}; window {low:g}–{high:g} eV (PBE). "
        f"Machine: {machine['cores']} CPU cores ({machine['cpu_model']}), torch {machine['torch']}.",
        "",
        "## Throughput",
        f"- End to end from CIF, cold feature cache, first {speed['n']} CIFs: **{speed['cold_mofs_per_s']:.1f} MOFs/s** "
        f"({speed['cold_s']:.0f} s); with the features cached: {speed['cached_mofs_per_s']:.1f} MOFs/s. Reading and "
        f"featurising (2 worker processes) account for {speed['featurise_share']:+.0%} of the cold time. "
        "One timing each, on a machine whose speed varies between runs by tens of %; `make bench` gives "
        "medians of repeats (benchmarks/results.json).",
        (f"- The screen (features cached beforehand by `mofbalora featurise`): {screen_s / 60:.1f} min for the part "
         "run in the last invocation (it resumes)." if screen_s is not None else
         f"- The screen itself was run earlier (`{streamed.relative_to(ROOT)}`) and is summarised here."),
        f"- The first {speed['n']} predicted in one call and in the streamed screen differ by at most "
        f"{speed['largest_difference_one_call_vs_streamed']:.2g} (eV or probability).",
        "",
        "## Results",
        f"- Skipped by reason: {skipped}.",
        large_cells_line(ranked, large_ids, args.large_cells_max_atoms, large_s),
        f"- Calibrated P(in window), counts per bin of 0.1 from 0 to 1: {counts.tolist()}; P ≥ 0.9: "
        f"{int((ok['p_in_window'] >= 0.9).sum())} MOFs; share ≥ 0.99: "
        f"{float((ok['p_in_window'] >= 0.99).mean()):.3f}; max {ok['p_in_window'].max():.3f}.",
        f"- Median calibrated std {ok['bandgap_std_ev'].median():.3f} eV, median epistemic std "
        f"{ok['bandgap_std_epistemic_ev'].median():.3f} eV"
        + (f", data-noise std 10th / 50th / 90th percentile "
           f"{' / '.join(f'{q:.3f}' for q in ok['bandgap_std_aleatoric_ev'].quantile([0.1, 0.5, 0.9]))} eV"
           if "bandgap_std_aleatoric_ev" in ok else "")
        + f"; 95% width 10th / 50th / 90th percentile "
        f"{' / '.join(f'{q:.2f}' for q in (ok['upper_95_ev'] - ok['lower_95_ev']).quantile([0.1, 0.5, 0.9]))} eV.",
        f"- Below 0 eV: {int((ok['bandgap_mean_ev'] < 0).sum())} means, {int((ok['lower_95_ev'] < 0).sum())} lower and "
        f"{int((ok['upper_95_ev'] < 0).sum())} upper bounds"
        + (f"; P(gap < 0.1 eV) ≥ 0.5 for {int((ok['p_metallic'] >= 0.5).sum())} MOFs." if "p_metallic" in ok else "."),
        f"- Flagged out of distribution: {int(ok['out_of_distribution'].sum())} of {len(ok)} ({json.dumps(reasons)}).",
        f"- Figure: [{figure.name}]({figure.name}); ranked table: [{Path(args.out).name}.csv]({Path(args.out).name}.csv).",
        "",
        "Reproduce: `python -m benchmarks.screen_coremof` (needs only the installed package).",
        "",
    ])
    write_text_atomic(args.out + ".md", header + "\n" + screening_summary(ranked, low, high, top=20))
    record = {"throughput": speed, "screen_s": screen_s, "samples": samples, "machine": machine,
              "n_inputs": len(cifs), "n_predicted": len(ok), "large_cells_max_atoms": args.large_cells_max_atoms,
              "n_large_cells_screened_again": len(large_ids), "large_cells_s": large_s}
    write_text_atomic(args.out + ".json", json.dumps(record, indent=1))
    print(header)


if __name__ == "__main__":
    main()
