"""Models that ship inside the package, and resolving a ``--model`` argument to a model folder.

Each shipped model is a complete model folder (``mofbalora.model_folder``) under this package,
with a ``MODEL_CARD.md``; ``python -m pipelines.release_model`` writes it. One model ships per
release; earlier ones stay reproducible from their git tags (CHANGELOG.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class ShippedModel:
    """A model folder in the package: its short name for ``--model`` and its folder name."""

    alias: str
    folder_name: str
    summary: str

    @property
    def folder(self) -> Path:
        return Path(str(resources.files(__name__))) / self.folder_name


SHIPPED = (
    ShippedModel("qmof-pbe", "qmof-pbe-cgcnn-balora",
                 "v2.5: CGCNN + BaLoRA on all of QMOF (PBE band gaps, eV), a composition-aware per-structure "
                 "data-noise head, a std that grows with the distance to the training data, Mondrian-conformal "
                 "intervals censored at 0 eV whose 5% misses are split between the ends as chosen on validation "
                 "(--intervals central for 2.5% each side)"),
)
#: releases no longer in the wheel: the mofbalora version whose git tag still has each (CHANGELOG.md)
RETIRED = {"qmof-pbe-v2.4": "0.2.0", "qmof-pbe-v2.3": "0.1.0", "qmof-pbe-v2.2": "0.1.0", "qmof-pbe-v2.1": "0.1.0", "qmof-pbe-v2": "0.1.0",
           "qmof-pbe-v1.1": "0.1.0", "qmof-pbe-v1": "0.1.0"}
DEFAULT_MODEL = "qmof-pbe"


def shipped_models() -> list[ShippedModel]:
    """The shipped models whose weights are present in this install."""
    return [model for model in SHIPPED if (model.folder / "model.json").exists()]


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The model folder for ``--model``: a shipped model's name (default :data:`DEFAULT_MODEL`) or a path.

    Raises:
        FileNotFoundError: naming the shipped models, when neither matches.
        ValueError: when the name is a shipped model's and also a model folder here (``fit --out
            qmof-pbe``): which one was meant is unknown, and the shipped one used to win silently.
    """
    name = DEFAULT_MODEL if model is None else str(model)
    for shipped in SHIPPED:
        if name in (shipped.alias, shipped.folder_name):
            local = Path(name)
            if model is not None and (local / "model.json").exists() and local.resolve() != shipped.folder.resolve():
                raise ValueError(f"--model {name!r} names a shipped model and also the model folder {local.resolve()}; "
                                 f"pass ./{name} for the folder, or rename it")
            if not (shipped.folder / "model.json").exists():
                raise FileNotFoundError(f"the shipped model {shipped.alias!r} is missing from this install "
                                        f"({shipped.folder}); reinstall mofbalora or pass --model <folder>")
            return shipped.folder
    path = Path(name).expanduser()  # "~/runs/x" from Python, where no shell expands it
    if path.exists():
        return path
    names = ", ".join(m.alias for m in SHIPPED)
    if name in RETIRED:
        # v2.3 differed from v2.4 only in its central intervals (CHANGELOG.md, 0.2.0)
        hint = " (its intervals are v2.4's with --intervals central)" if name == "qmof-pbe-v2.3" else ""
        raise FileNotFoundError(f"--model {name!r} is a retired release{hint}; it ships with mofbalora "
                                f"{RETIRED[name]}: git checkout v{RETIRED[name]} && make install (CHANGELOG.md). "
                                f"Shipped now: {names}")
    raise FileNotFoundError(f"--model {name!r}: no such model folder, and not a shipped model ({names})")
