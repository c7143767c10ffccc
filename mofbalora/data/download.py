"""Resumable, checksum-verified download of a dataset release (the official QMOF one by default)."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mofbalora.data.io import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseSource:
    """Where a release lives and what its bytes must hash to (``sha256=None`` only warns)."""

    name: str
    url: str
    filename: str
    sha256: str | None


# The QMOF database release on figshare (CC BY 4.0, Rosen et al. 2021/2022). The checksum of the
# upstream archive could not be verified from this offline workplace, so it is left None and the
# computed hash is logged for the user to pin; pass --sha256 to enforce one.
QMOF_RELEASE = ReleaseSource(
    name="qmof",
    url="https://figshare.com/ndownloader/articles/13147324/versions/14",
    filename="qmof_database.zip",
    sha256=None,
)

RELEASES = {"qmof": QMOF_RELEASE}


class ChecksumError(RuntimeError):
    """The downloaded file's sha256 does not match the expected one."""


def download(
    url: str,
    destination: str | os.PathLike,
    *,
    sha256: str | None = None,
    chunk_bytes: int = 1 << 20,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``destination``, resuming a ``.part`` file with an HTTP Range request.

    The file only takes its final name after the checksum (when given) matches; a mismatch
    deletes the partial file and raises :class:`ChecksumError`.
    """
    destination = Path(destination)
    if destination.exists() and (sha256 is None or sha256_file(destination) == sha256):
        logger.info("%s already downloaded", destination)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the partial file is already whole
            response = None
        else:
            raise
    if response is not None:
        with response:
            resumed = offset and response.status == 206
            if offset and not resumed:
                logger.info("server ignored the Range request; restarting %s", destination.name)
                offset = 0
            total = response.headers.get("Content-Length")
            total = int(total) + offset if total is not None else None
            mode = "ab" if resumed else "wb"
            with open(partial, mode) as handle, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, disable=not progress,
                desc=destination.name,
            ) as bar:
                for chunk in iter(lambda: response.read(chunk_bytes), b""):
                    handle.write(chunk)
                    bar.update(len(chunk))
    digest = sha256_file(partial)
    if sha256 is not None and digest != sha256:
        partial.unlink()
        raise ChecksumError(f"{url}: sha256 {digest} does not match expected {sha256}; partial file removed")
    if sha256 is None:
        logger.warning("%s: no expected checksum given; sha256 is %s", destination.name, digest)
    os.replace(partial, destination)
    return destination
