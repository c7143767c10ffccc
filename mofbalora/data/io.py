"""Atomic file writes, content hashes and the decoding of users' text files, shared by every stage."""

from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd


def _default_file_mode() -> int:
    """The mode ``open`` gives a new file: 0o666 less the process umask (read without changing it for long)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    The file gets the mode a plain ``open`` would give it: ``mkstemp`` creates it private (0o600),
    writers reopen it in place or (safetensors) replace it with their own private file, so without
    this a model folder or a prediction table would be unreadable to anyone else on a shared machine.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_file_mode())  # after the writer: some (safetensors) replace the file with their own
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def decode_text(raw: bytes) -> str:
    """Text files as users save them: UTF-16 with its byte-order mark (PowerShell's '>', Excel's
    "Unicode text"), UTF-8 with or without one (Notepad writes one), else Latin-1."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


#: table files written, by how the name ends
TABLE_FORMATS = {".csv": "csv", ".csv.gz": "csv.gz", ".parquet": "parquet"}


def table_format(path: str | os.PathLike) -> str:
    """``csv``, ``csv.gz`` or ``parquet``, from the file name.

    Raises:
        ValueError: naming the file, for any other name (a CSV written as ``.xlsx`` would not open).
    """
    name = Path(path).name.lower()
    for suffix, kind in TABLE_FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise ValueError(f"{path}: cannot write a table of this kind; name it .csv, .csv.gz or .parquet")


def check_table_path(path: str | os.PathLike) -> str:
    """:func:`table_format` of a table about to be written, checked before the work that fills it:
    the path is not a folder, and its nearest existing parent is a folder we can write in (a file
    is created there and removed at once: permissions alone do not tell, e.g. on a read-only mount).

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    kind = table_format(path)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the table a file name")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{path}: {parent} is a file, not a folder")
    if parent is not None:
        try:
            probe_writable(parent)
        except OSError as exc:
            raise ValueError(f"{path}: cannot write in {parent} ({exc.strerror or exc})") from exc
    return kind


def probe_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed, then a file in it, removed at once; permissions alone do not
    tell (a read-only mount, root on a network share).

    Raises:
        OSError: when it cannot be written.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".mofbalora.", suffix=".probe", dir=folder)
    os.close(fd)
    os.unlink(probe)


def write_table_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table atomically: CSV, gzip-compressed CSV or parquet, by the name (:func:`table_format`)."""
    kind = table_format(path)
    with atomic_path(path) as tmp:
        if kind == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if kind == "csv.gz" else None)


def read_versioned_json(path: str | os.PathLike, *, expected_version: int, missing: str) -> dict:
    """A JSON file carrying ``format_version``; a clear error when absent or of another version."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {missing}")
    try:
        values = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
    if values.get("format_version") != expected_version:
        raise ValueError(f"{path}: format version {values.get('format_version')}, expected {expected_version}")
    return values


def load_tensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file (on CPU), with an error naming the file when it is missing
    or damaged (a truncated copy raises safetensors' own error, which names neither)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: missing; the model folder is incomplete") from exc
    except SafetensorError as exc:
        raise ValueError(f"{path}: damaged weights ({exc}); copy or refit the model folder again") from exc


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
