"""Predict for many inputs chunk by chunk, each chunk saved as it finishes, resuming after an interruption.

While a run is under way its chunks live in ``<out>.parts/`` (one CSV per chunk, each written
atomically, plus ``settings.json``). A rerun with the same inputs, model and sampling settings
skips every id already saved, so a killed screen of thousands of CIFs loses at most one chunk.
When all inputs are done the table is written to ``<out>`` atomically and the folder removed.
A structure's numbers depend only on the structure, the model and the seed (docs/method.md §6),
so the chunking never changes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from mofbalora.data.io import check_table_path, write_table_atomic, write_text_atomic
from mofbalora.data.structures import DEFAULT_MAX_ATOMS
from mofbalora.model_folder import model_json_sha256
from mofbalora.predict import BandgapModel, check_samples, resolve_inputs
from mofbalora.uncertainty.intervals import check_window

#: inputs per chunk by default: a few minutes of work on 2 cores at S = 32
DEFAULT_CHUNK_SIZE = 256
_TEXT_COLUMNS = ("id", "ood_reason", "status", "reason")


def parts_folder(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".parts")


def _settings(model: BandgapModel, ids: list[str], **sampling: Any) -> dict[str, Any]:
    return {"model": str(model.folder.resolve()), "model_json_sha256": model_json_sha256(model.folder),
            "n_inputs": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), **sampling}


def read_predictions(*paths: str | os.PathLike) -> pd.DataFrame:
    """Prediction tables saved as CSV, concatenated, with ids and text columns read back as text
    (a structure named ``nan``, ``NA`` or ``null`` keeps its id; pandas reads those as missing)."""
    return pd.concat([_read_one_table(p) for p in paths], ignore_index=True)


def _read_one_table(path: str | os.PathLike) -> pd.DataFrame:
    columns = pd.read_csv(path, nrows=0).columns
    text = [column for column in columns if column in _TEXT_COLUMNS]
    return pd.read_csv(path, dtype={column: str for column in text}, keep_default_na=False,
                       na_values={column: ["", "nan", "NaN"] for column in columns if column not in text})


def _read_chunks(folder: Path) -> pd.DataFrame | None:
    files = sorted(folder.glob("chunk-*.csv"))
    return read_predictions(*files) if files else None


def skipped_summary(tables: list[pd.DataFrame]) -> str:
    """"skipped N (mostly: <reason>)" over the tables so far, for the progress line; the reason is
    cut at its first colon (the kind, not the file's details)."""
    if not tables:
        return "skipped 0"
    status = pd.concat([t[["status", "reason"]] for t in tables], ignore_index=True)
    reasons = status.loc[status["status"] == "skipped", "reason"].astype(str).str.split(":").str[0].str.strip()
    if reasons.empty:
        return "skipped 0"
    return f"skipped {len(reasons)} (mostly: {reasons.value_counts().index[0][:40]})"


def stream_predictions(model: BandgapModel, inputs: Sequence[str | os.PathLike | Structure] | str | os.PathLike,
                       out: str | os.PathLike, *, samples: int | None = None, seed: int = 0,
                       window_ev: tuple[float, float] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       resume: bool = True, write: bool = True, progress: bool = True,
                       cache_dir: str | os.PathLike | None = None, workers: int = 0,
                       trainer_kwargs: dict[str, Any] | None = None,
                       max_atoms: int = DEFAULT_MAX_ATOMS) -> pd.DataFrame:
    """Predict every input, saving each chunk of ``chunk_size`` as it finishes; returns the whole
    table in input order, also written to ``out`` (CSV or parquet) when ``write``.

    Args:
        resume: skip ids saved by an earlier, interrupted run with the same settings; False starts over.
        write: False on non-zero DDP ranks: they compute but never touch the files.

    Raises:
        ValueError: when ``<out>.parts/`` holds an unfinished run with other inputs, model or
            settings (resuming it would mix two runs), ``chunk_size`` or ``samples`` < 1, or ``out``
            is not a .csv, .csv.gz or .parquet file or cannot be one (a folder, a path under a file).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_samples(samples, seed)  # here too, so that a long run fails before it writes anything
    if window_ev is not None:
        window_ev = check_window(window_ev)
    if write:
        check_table_path(out)
    samples = model.default_samples if samples is None else samples  # the S the calibrator saw
    slots, ids = resolve_inputs(inputs)
    folder = parts_folder(out)
    # max_atoms and intervals recorded only when not the default, so a run begun before they existed still resumes
    settings = _settings(model, ids, samples=samples, seed=seed, window_ev=list(window_ev) if window_ev else None,
                         **({"max_atoms": max_atoms} if max_atoms != DEFAULT_MAX_ATOMS else {}),
                         **({"intervals": model.interval_tails} if model.interval_tails != "calibrated" else {}))
    done = None
    if folder.exists() and resume:
        saved_path = folder / "settings.json"
        saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
        if saved != settings:
            differ = sorted(k for k in settings if saved.get(k) != settings[k])
            raise ValueError(f"{folder}: an unfinished run with other {', '.join(differ)}; rerun it with the same "
                             f"inputs and settings to resume, or pass --no-resume to start over")
        done = _read_chunks(folder)
    elif folder.exists() and write:
        shutil.rmtree(folder)
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "settings.json", json.dumps(settings, indent=1))
    finished = set(done["id"]) if done is not None else set()
    todo = [number for number, structure_id in enumerate(ids) if structure_id not in finished]
    next_chunk = len(list(folder.glob("chunk-*.csv"))) if folder.exists() else 0
    tables = [done] if done is not None else []
    with tqdm(total=len(ids), initial=len(ids) - len(todo), unit="MOF", desc="predicting", disable=not progress) as bar:
        bar.set_postfix_str(skipped_summary(tables), refresh=False)
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            table = model.predict_resolved([slots[i] for i in chunk], [ids[i] for i in chunk], samples=samples,
                                           seed=seed, window_ev=window_ev, cache_dir=cache_dir, workers=workers,
                                           trainer_kwargs=trainer_kwargs, max_atoms=max_atoms)
            if write:
                write_table_atomic(table, folder / f"chunk-{next_chunk:06d}.csv")
            next_chunk += 1
            tables.append(table)
            bar.set_postfix_str(skipped_summary(tables), refresh=False)
            bar.update(len(chunk))
    if not tables:  # no inputs at all: an empty table with every column
        tables = [model.predict_resolved([], [], samples=samples, seed=seed, window_ev=window_ev)]
    table = pd.concat(tables, ignore_index=True).set_index("id").loc[ids].reset_index()
    if write:
        write_table_atomic(table, out)
        shutil.rmtree(folder)
    return table
