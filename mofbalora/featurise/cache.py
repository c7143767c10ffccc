"""On-disk feature cache keyed by file content hash + featuriser config + package versions.

Entries are written to a temporary file and renamed, so concurrent writers never leave a
half-written entry; an entry that fails to load or carries another key is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from mofbalora.data.io import atomic_path
from mofbalora.featurise.base import Featuriser

logger = logging.getLogger(__name__)


class FeatureCache:
    """Cache of one featuriser's samples under ``root/features/<name>/<tag-hash>/``."""

    def __init__(self, root: str | os.PathLike, featuriser: Featuriser) -> None:
        self.tag = featuriser.cache_tag()
        tag_hash = hashlib.sha256(self.tag.encode()).hexdigest()[:16]
        self.directory = Path(root) / "features" / featuriser.name / tag_hash

    def entry_path(self, content_sha256: str) -> Path:
        return self.directory / content_sha256[:2] / f"{content_sha256}.pt"

    def load(self, content_sha256: str) -> Any | None:
        """The cached sample, or None when absent, corrupt or stale (a bad entry is removed)."""
        path = self.entry_path(content_sha256)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=False)
            if entry["tag"] != self.tag or entry["content_sha256"] != content_sha256:
                raise ValueError("stale entry")
            return entry["sample"]
        except Exception as exc:  # any unreadable entry is rebuilt, never fatal
            logger.warning("rebuilding cache entry %s (%s)", path, exc)
            path.unlink(missing_ok=True)
            return None

    def store(self, content_sha256: str, sample: Any) -> None:
        with atomic_path(self.entry_path(content_sha256)) as tmp:
            torch.save({"tag": self.tag, "content_sha256": content_sha256, "sample": sample}, tmp)
