"""Shared fixtures: real QMOF structures (from ../shared or $MOFBALORA_DATA) and CoRE-MOF CIFs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Unpacked archives and features are reused across test runs, never committed (.gitignore).
os.environ.setdefault("MOFBALORA_CACHE", str(ROOT / ".cache"))
# under pytest-xdist (make test) the workers share the cores: one torch thread each, and for the
# pipelines and CLIs they start
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def qmof_dataset():
    from mofbalora.data.datasets import load_labelled_dataset, resolve_data_dir

    try:
        resolve_data_dir()
    except FileNotFoundError:
        pytest.skip("QMOF data not found (../shared/data/qmof or $MOFBALORA_DATA)")
    return load_labelled_dataset()


@pytest.fixture(scope="session")
def smallest_qmof(qmof_dataset):
    """n -> the n smallest QMOF CIFs by file size (deterministic), as (ids, paths, gaps_ev)."""
    table = qmof_dataset.table.copy()
    table["size"] = table["path"].map(lambda p: os.path.getsize(p))
    table = table.sort_values(["size", "id"])

    def first(n: int):
        head = table.head(n)
        return list(head["id"]), [Path(p) for p in head["path"]], head[qmof_dataset.target].to_numpy()

    return first


@pytest.fixture(scope="session")
def small_qmof(smallest_qmof):
    """The 110 smallest QMOF CIFs by file size (deterministic), as (ids, paths, gaps_ev)."""
    return smallest_qmof(110)


def copy_cifs(paths, folder: Path) -> Path:
    """Copy CIFs into a new folder (test data is copied at run time, never committed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def write_labels(folder: Path, ids, gaps, name: str = "bandgaps.csv") -> Path:
    """A QMOF-style label CSV for the given ids."""
    path = folder / name
    path.write_text("qmof_id,bandgap_pbe_ev\n" + "".join(f"{i},{g}\n" for i, g in zip(ids, gaps)))
    return path


@pytest.fixture(scope="session")
def coremof_paths(tmp_path_factory):
    from mofbalora.data.coremof import extract_coremof

    return extract_coremof(tmp_path_factory.mktemp("coremof"), limit=6)


@pytest.fixture(scope="session")
def cgcnn_backbone_factory():
    from mofbalora.backbones import get_backbone

    return lambda: get_backbone("cgcnn")


@pytest.fixture(scope="session")
def chgnet_backbone_factory():
    from mofbalora.backbones import get_backbone

    return lambda: get_backbone("chgnet")


@pytest.fixture(scope="session")
def sevennet_backbone_factory():
    from mofbalora.backbones import get_backbone

    return lambda: get_backbone("sevennet")


def cli_message(output: str) -> str:
    """A CLI's output as one line of words: Rich draws click's errors in a box wrapped at the
    terminal's width, so a message about a long path breaks across lines wherever the width and
    the temporary path's length put it."""
    return " ".join(output.translate(str.maketrans("│╭╮╰╯─", "      ")).split())


#: the slowest modules, started first so that two xdist workers (make test) finish together
SLOW_MODULES_FIRST = ("test_benchmark_smoke.py", "test_ablation_smoke.py", "test_cli_ddp.py", "test_release_smoke.py",
                      "test_fit_chgnet_config.py", "test_notebooks.py", "test_pretrained.py", "test_synthetic_alpha.py",
                      "test_active_learning.py", "test_sevennet.py")


def pytest_collection_modifyitems(config, items):
    """Longest modules first (the same order in every worker); within a module the order is kept."""
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
