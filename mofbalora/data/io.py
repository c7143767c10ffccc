"""Atomic file writes and content hashes, shared by every stage that writes results."""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write CSV, or parquet when the name ends in .parquet, atomically."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)


def read_versioned_json(path: str | os.PathLike, *, expected_version: int, missing: str) -> dict:
    """A JSON file carrying ``format_version``; a clear error when absent or of another version."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {missing}")
    values = json.loads(path.read_text())
    if values.get("format_version") != expected_version:
        raise ValueError(f"{path}: format version {values.get('format_version')}, expected {expected_version}")
    return values


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
