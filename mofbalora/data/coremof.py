"""Unlabelled CoRE-MOF CIFs from the ``core-mof`` pip package, for screening demos and tests."""

from __future__ import annotations

import os
import tarfile
from importlib import resources
from pathlib import Path


def extract_coremof(destination: str | os.PathLike, *, dataset: str = "2019-ASR", limit: int | None = None) -> list[Path]:
    """Write up to ``limit`` CIFs of a CoRE-MOF dataset (``2014``, ``2019-ASR``, ``2019-FSR``) to a folder.

    Streams the packaged archive once, in its stored order, so the first N are cheap.
    """
    import CoRE_MOF.data

    archive = resources.files(CoRE_MOF.data) / f"{dataset}.tar.xz"
    if not archive.is_file():
        raise ValueError(f"unknown CoRE-MOF dataset {dataset!r}; choose 2014, 2019-ASR or 2019-FSR")
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with resources.as_file(archive) as local, tarfile.open(local, "r:xz") as tar:
        for member in tar:
            if limit is not None and len(written) >= limit:
                break
            if not member.isfile() or not member.name.endswith(".cif"):
                continue
            target = destination / Path(member.name).name
            if not target.exists():
                data = tar.extractfile(member).read()
                tmp = target.with_suffix(".cif.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            written.append(target)
    return written
