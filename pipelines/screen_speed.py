"""How fast a chemist's screen runs, timed one way everywhere (the benchmarks' screening group and
the accuracy pilot): the first ``n`` CoRE-MOF 2019 CIFs (structures no model trained on), a cold
feature cache so featurisation counts, and one ``predict`` call at the model's shipped S."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mofbalora.data.coremof import extract_coremof


@contextmanager
def coremof_screen_inputs(n: int) -> Iterator[tuple[list[Path], Path]]:
    """The first ``n`` CoRE-MOF 2019 CIFs and an empty feature-cache folder, in a temporary folder
    removed on exit."""
    work = Path(tempfile.mkdtemp(prefix="mofbalora-screen-"))
    try:
        yield extract_coremof(work / "cifs", limit=n), work / "cache"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed_predict(model: Any, cifs: list[Path], cache_dir: Path) -> tuple[Any, float]:
    """``model.predict`` on ``cifs`` at the model's default S: (its table, wall seconds)."""
    start = time.perf_counter()
    table = model.predict(cifs, samples=model.default_samples, cache_dir=cache_dir)
    return table, time.perf_counter() - start
