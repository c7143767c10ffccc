"""Does every shipped release reproduce from its package alone? docs/results/release_reproduction.md

    python -m benchmarks.reproduce_releases [--only ALIAS ...] [--data PATH]

For each shipped model that records the settings of its stages after training (every release since
v1.1; v1 has no noise head), this runs ``pipelines/release_model.py --from-package`` into scratch
folders under results/release/reproduce/<name> (a run folder and a package folder: the shipped one
is not touched). That refits the noise head and the calibration from the package's weights with the
settings its model.json records, and scores the test split again. The reproduced release.json is
then compared with the shipped one: the noise-head variant chosen, every number of the test scores,
and the noise head's weights. A release already reproduced there from the same package (its
model.json's checksum, recorded in the folder's source.json) is not run again (delete the folder to
redo it); a folder reproduced from another package (a folder name passes to the next release) is
replaced. Needs the QMOF data; a release takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from safetensors.torch import load_file

from mofbalora.data.io import sha256_file, write_text_atomic
from mofbalora.model_folder import NOISE_HEAD_FILE, package_versions, read_model_json
from mofbalora.pretrained import SHIPPED
from pipelines.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]

SCRATCH = ROOT / "results" / "release" / "reproduce"
#: in a scratch folder: which package (its model.json's checksum) was reproduced there
SOURCE_FILE = "source.json"
REPORT = ROOT / "docs" / "results" / "release_reproduction.md"
#: a test figure that moves by more than this (in its own unit) is listed as a difference
TOLERANCE = 1e-5


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a JSON value with its path (``a.b[2].c``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{path}[{index}]")
    else:
        yield path, value


def compare_scores(shipped: dict[str, Any], reproduced: dict[str, Any]) -> dict[str, Any]:
    """Numbers compared, the largest absolute difference of a non-integer figure, each leaf that
    differs by more than :data:`TOLERANCE` (or is missing from the reproduction, or is not a number
    and differs), and the figures today's test stage adds that the shipped record predates (absent
    or None there: not a difference)."""
    left, right = dict(numbers(shipped)), dict(numbers(reproduced))
    largest, compared, differing, added = 0.0, 0, [], []
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        if a is None and b is not None:
            added.append(key)
            continue
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            compared += 1
            if isinstance(a, float) or isinstance(b, float):  # a figure; counts are compared, not measured
                largest = max(largest, abs(a - b))
            if abs(a - b) > TOLERANCE:
                differing.append({"key": key, "shipped": a, "reproduced": b})
        elif a != b:
            differing.append({"key": key, "shipped": a, "reproduced": b})
    return {"compared": compared, "largest_abs_difference": largest, "differing": differing, "added": added}


def head_difference(shipped: Path, reproduced: Path) -> float | None:
    """The largest absolute difference between the two noise heads' tensors (None: a head is missing
    or their tensors differ in name or shape)."""
    if not (shipped / NOISE_HEAD_FILE).exists() or not (reproduced / NOISE_HEAD_FILE).exists():
        return None
    a, b = load_file(shipped / NOISE_HEAD_FILE), load_file(reproduced / NOISE_HEAD_FILE)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return None
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def reproduce(folder: Path, scratch: Path, data: str | None) -> Path:
    """Run the release pipeline from ``folder``'s package into ``scratch`` (skipped when done for this
    very package: a folder name is reused by the next release); the reproduced package folder."""
    package, run, source = scratch / "package", scratch / "run", scratch / SOURCE_FILE
    source_sha256 = sha256_file(folder / "model.json")
    if not source.exists() or json.loads(source.read_text()).get("model_json_sha256") != source_sha256:
        if scratch.exists():
            shutil.rmtree(scratch)  # another package's reproduction (or one from before this record)
        scratch.mkdir(parents=True)
        write_text_atomic(source, json.dumps({"package": str(folder), "model_json_sha256": source_sha256}) + "\n")
    if not (package / "release.json").exists():  # an interrupted run resumes
        command = [sys.executable, str(ROOT / "pipelines" / "release_model.py"), "--from-package", str(folder),
                   "--run-dir", str(run), "--package-dir", str(package), "--figures-dir", str(run / "figures")]
        with open(scratch / "release_model.log", "a") as log:
            done = subprocess.run(command + (["--data", data] if data else []), cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{folder.name}: the release pipeline failed; see {scratch / 'release_model.log'}")
    return package


#: the test figures quoted for a release that did not reproduce
HEADLINE = ("mae_ev", "coverage_95", "spearman_calibrated_std_abs_error", "crps_ev", "small_gap_coverage_95")


def row(shipped_model: Any, package: Path) -> dict[str, Any]:
    shipped = json.loads((shipped_model.folder / "release.json").read_text())
    reproduced = json.loads((package / "release.json").read_text())
    stages = [s for s in reproduced["stages"] if s["stage"] != "fit"]
    return {"alias": shipped_model.alias, "name": shipped_model.folder_name,
            "head_chosen": [shipped["noise_head"]["chosen"], reproduced["noise_head"]["chosen"]],
            # the selection's inputs: the validation MAE noise off and of the mean of S draws, and each
            # variant's validation NLL, shipped and reproduced
            "val_mae_ev": [shipped["noise_head"].get("val_mae_ev"), reproduced["noise_head"].get("val_mae_ev")],
            "headline": {key: [shipped["test"][key]["value"], reproduced["test"][key]["value"]] for key in HEADLINE
                         if isinstance(shipped["test"].get(key), dict) and isinstance(reproduced["test"].get(key), dict)},
            "test": compare_scores(shipped["test"], reproduced["test"]),
            "noise_head_largest_abs_difference": head_difference(shipped_model.folder, package),
            # what the shipped record may predate: coverage on the validation split, which the calibrator never saw
            "validation_coverage_95": reproduced["calibration"].get("validation_coverage_95"),
            "test_small_gap": shipped["test"]["small_gap"],
            "stages_after_training_wall_s": sum(s["wall_s"] or 0 for s in stages),
            "stages_git_commit": sorted({s["git_commit"] for s in stages}),
            "selection": [shipped["noise_head"]["selection"], reproduced["noise_head"]["selection"]]}


def _pair(values: list[float | None], digits: int = 4) -> str:
    return " / ".join("–" if v is None else f"{v:.{digits}f}" for v in values)


def report(rows: list[dict[str, Any]], commit: str) -> str:
    lines = [
        "# Do the shipped releases reproduce from their packages?",
        "",
        f"Generated by `python -m benchmarks.reproduce_releases` at commit `{commit}`.",
        "",
        "Each release was rerun from its shipped package alone (`python -m pipelines.release_model --from-package "
        "mofbalora/pretrained/<name>`, here into scratch folders under results/release/reproduce/): the noise head "
        "and the calibration refitted from its weights with the settings its model.json records, the test split "
        "scored again. Below, the reproduced release.json against the shipped one. `qmof-pbe-v1` records no such "
        "settings (it predates the noise head) and is not rerun.",
        "",
        f"A test figure is listed when it moved by more than {TOLERANCE:g}.",
        "",
        "| release | noise head chosen (shipped / reproduced) | test numbers compared | largest difference of a figure | "
        "moved by more than the tolerance | added since (figures the shipped record predates) | "
        "noise-head weights: largest difference | validation MAE noise off, "
        "shipped / reproduced (eV) | validation MAE of the mean of S draws, shipped / reproduced (eV) | "
        "stages after training (min) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        test, head = r["test"], r["noise_head_largest_abs_difference"]
        maes = [[(m or {}).get(k) for m in r["val_mae_ev"]] for k in ("noise_off", next(
            (k for k in (r["val_mae_ev"][0] or {}) if k.startswith("mean_of_S")), "mean_of_S"))]
        lines.append(f"| `{r['alias']}` | {' / '.join(r['head_chosen'])} | {test['compared']} | "
                     f"{test['largest_abs_difference']:.1e} | {len(test['differing']) or 'none'} | "
                     f"{len(test['added']) or 'none'} | "
                     f"{'–' if head is None else f'{head:.1e}'} | {_pair(maes[0])} | {_pair(maes[1])} | "
                     f"{r['stages_after_training_wall_s'] / 60:.1f} |")
    for r in rows:
        if not r["test"]["differing"]:
            continue
        shipped_nll = {row["inputs"]: row["val_nll_total"] for row in r["selection"][0]}
        reproduced_nll = {row["inputs"]: row["val_nll_total"] for row in r["selection"][1]}
        lines += ["", f"**`{r['alias']}` does not reproduce.** {len(r['test']['differing'])} test figures moved by more "
                  f"than {TOLERANCE:g} (all in docs/results/release_reproduction.json). The noise head's validation NLL "
                  "per variant, shipped / reproduced: " + "; ".join(
                      f"{name} {_pair([shipped_nll.get(name), reproduced_nll.get(name)], digits=4)}"
                      for name in shipped_nll) + ". Headline test figures, shipped → reproduced: " + "; ".join(
                      f"{key} {a:.3f} → {b:.3f}" for key, (a, b) in r["headline"].items()) + "."]
    lines += ["", "95% coverage of the reproduced calibration on the validation split, which the calibrator never sees "
              "(recorded by the calibration stage since 2026-12-01; nothing is chosen on it), beside the shipped test "
              "figures:", "",
              "| release | validation: all | validation: each predicted-gap bin | validation: true gap < 0.5 eV | "
              "test: true gap < 0.5 eV |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        val, small = r["validation_coverage_95"], r["test_small_gap"]
        if val is None:
            continue
        bins = ", ".join(f"{b['coverage']:.3f}" for b in val["by_bin"] if b["coverage"] is not None)
        lines.append(f"| `{r['alias']}` | {val['all']:.3f} (n = {val['n']}) | {bins} | "
                     f"{val['small_gap']['coverage']:.3f} (n = {val['small_gap']['n']}) | "
                     f"{small['coverage_95']:.3f} (n = {small['n']}) |")
    lines += ["", "Package versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="these aliases only (e.g. qmof-pbe qmof-pbe-v2.2)")
    parser.add_argument("--data", default=None, help="QMOF folder or archive (default: ../shared/data/qmof)")
    args = parser.parse_args()
    commit = git_commit()  # before this script writes a tracked file
    rows = []
    for shipped in SHIPPED:
        if args.only and shipped.alias not in args.only:
            continue
        meta = read_model_json(shipped.folder)
        if not (meta.get("noise_head") or {}).get("config") or not (shipped.folder / "release.json").exists():
            continue
        print(f"{shipped.alias}: reproducing", flush=True)
        rows.append(row(shipped, reproduce(shipped.folder, SCRATCH / shipped.folder_name, args.data)))
    write_text_atomic(REPORT.with_suffix(".json"), json.dumps(rows, indent=1))
    text = report(rows, commit)
    write_text_atomic(REPORT, text)
    print(text)


if __name__ == "__main__":
    main()
