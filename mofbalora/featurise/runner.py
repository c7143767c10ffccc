"""Featurise many CIFs in parallel processes through the cache; failures are recorded, never fatal."""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from mofbalora.data.io import probe_writable, write_table_atomic
from mofbalora.data.structures import (
    DEFAULT_MAX_ATOMS, InvalidReason, InvalidStructureError, read_cif_bytes, read_structure, structure_id,
)
from mofbalora.featurise.base import Featuriser, sample_num_atoms
from mofbalora.featurise.cache import FeatureCache

logger = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["id", "path", "reason"]
#: cache folders already found unwritable in this process
_UNWRITABLE_CACHES: set[str] = set()


@dataclass
class FeaturisedSet:
    """Samples in input order for the inputs that worked, and the skipped ones with reasons."""

    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    samples: list[Any] = field(default_factory=list)
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIPPED_COLUMNS))
    n_cache_hits: int = 0
    n_built: int = 0


def _content_hash(path: Path) -> str:
    """The cache key: the SHA-256 of the content as :func:`read_cif_bytes` reads it (decompressed)."""
    return hashlib.sha256(read_cif_bytes(path)).hexdigest()


def _build_one(job: tuple[str, str, Featuriser, str | None, int]) -> tuple[str, Any, str]:
    """Worker: read, featurise, store. Returns (path, sample or None, failure reason)."""
    path, content_sha, featuriser, cache_root, max_atoms = job
    try:
        structure = read_structure(path, max_atoms=max_atoms)
        sample = featuriser.featurise(structure, structure_id(path))
    except InvalidStructureError as err:
        return path, None, err.reason_text
    except Exception as exc:  # a featuriser failure on one structure must not stop the batch
        return path, None, f"featurisation failed: {type(exc).__name__}: {exc}"[:300]
    if cache_root is not None:
        try:
            FeatureCache(cache_root, featuriser).store(content_sha, sample)
        except OSError as exc:  # a full disk: the cache only saves time, the sample is still good
            logger.warning("could not cache the features of %s (%s)", path, exc.strerror or exc)
    return path, sample, ""


def _build_one_serialised(job: tuple[str, str, Featuriser, str | None, int]) -> tuple[str, bytes | None, str]:
    """Worker entry for the process pool: the sample comes back as bytes.

    Tensors returned as such travel as shared-memory file descriptors that the parent keeps open
    while the sample lives; thousands of samples exceed the open-file limit and break the pool.
    """
    path, sample, reason = _build_one(job)
    if sample is None:
        return path, None, reason
    buffer = io.BytesIO()
    torch.save(sample, buffer)
    return path, buffer.getvalue(), reason


def _init_worker() -> None:
    torch.set_num_threads(1)


def featurise_paths(
    paths: Sequence[str | os.PathLike],
    featuriser: Featuriser,
    *,
    cache_dir: str | os.PathLike | None,
    workers: int = 0,
    progress: bool = True,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    skipped_csv: str | os.PathLike | None = None,
) -> FeaturisedSet:
    """Featurise ``paths`` (cache hits are loaded, misses built in ``workers`` processes).

    Args:
        workers: processes for cache misses; 0 means ``os.cpu_count()``, 1 builds in this process.
        skipped_csv: where to write ``id,path,reason`` of the failures.
    """
    cache = FeatureCache(cache_dir, featuriser) if cache_dir is not None else None
    if cache is not None:
        try:
            probe_writable(cache.directory)
        except OSError as exc:  # an unwritable cache only costs time; it stopped the whole run
            if str(cache.directory) not in _UNWRITABLE_CACHES:  # said once, not once per chunk
                _UNWRITABLE_CACHES.add(str(cache.directory))
                logger.warning("the feature cache %s cannot be written (%s); featurising without it",
                               cache.directory, exc.strerror or exc)
            cache, cache_dir = None, None
    results: dict[str, tuple[Any, str]] = {}
    jobs = []
    out = FeaturisedSet()
    for raw in paths:
        path = str(raw)
        try:
            sha = _content_hash(Path(path))
        except InvalidStructureError as err:
            results[path] = (None, err.reason_text)
            continue
        sample = cache.load(sha) if cache is not None else None
        if sample is not None and sample_num_atoms(sample) > max_atoms:
            # the cache holds the featurised cell whatever the limit; the limit applies on every hit
            results[path] = (None, f"{InvalidReason.TOO_MANY_ATOMS.value}: {sample_num_atoms(sample)} > {max_atoms}")
        elif sample is not None:
            results[path] = (sample, "")
            out.n_cache_hits += 1
        else:
            jobs.append((path, sha, featuriser, str(cache_dir) if cache_dir is not None else None, max_atoms))
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc=f"featurise[{featuriser.name}]", disable=not progress or not jobs)
    if workers > 1 and len(jobs) > 2 * workers:
        # fork: works from unguarded scripts and notebooks; workers only parse and build graphs.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            for path, payload, reason in pool.map(_build_one_serialised, jobs, chunksize=8):
                sample = None if payload is None else torch.load(io.BytesIO(payload), weights_only=False)
                results[path] = (sample, reason)
                bar.update()
    else:
        for job in jobs:
            path, sample, reason = _build_one(job)
            results[path] = (sample, reason)
            bar.update()
    bar.close()
    skipped = []
    for raw in paths:
        path = str(raw)
        sample, reason = results[path]
        if sample is None:
            skipped.append((structure_id(path), path, reason))
            logger.debug("skipped %s: %s", path, reason)
        else:
            out.ids.append(structure_id(path))
            out.paths.append(path)
            out.samples.append(sample)
    out.n_built = sum(1 for j in jobs if results[j[0]][0] is not None)
    out.skipped = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    if skipped:
        logger.info("%d of %d inputs skipped (reasons in the skipped table)", len(skipped), len(paths))
    if skipped_csv is not None:
        write_table_atomic(out.skipped, skipped_csv)
    return out
