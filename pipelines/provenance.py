"""Provenance every study and release records beside its results: the code's commit and the logging set-up.

Package versions and data checksums come from :mod:`mofbalora.model_folder`, which model folders use too.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def git_commit() -> str:
    """The commit of the code producing the report, '+dirty' when the tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def quiet_logging() -> None:
    """INFO logging with timestamps, Lightning's own chatter kept to warnings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
