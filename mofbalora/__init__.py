"""mofbalora: band-gap fine-tuning of pretrained crystal graph models on MOFs, with LoRA and
Bayesian LoRA (BaLoRA) uncertainty.

Pipeline: data -> featurise -> backbones -> adapters -> uncertainty -> training -> predict -> cli.

    import mofbalora
    model = mofbalora.load_model("qmof-pbe")          # a shipped model, or a model folder
    table = model.predict(["MOF-5.cif", structure, atoms])   # paths, pymatgen Structures, ASE Atoms
    ranked = model.screen("cifs/", gap_ev=(1.5, 3.0))
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mofbalora.predict import BandgapModel

__version__ = "0.2.0"

__all__ = ["__version__", "load_model"]


def load_model(model: str | os.PathLike | None = None, *, intervals: str = "calibrated") -> "BandgapModel":
    """A model ready to ``predict`` and ``screen``: a shipped model's name (default ``qmof-pbe``;
    ``mofbalora models`` lists them) or the path of a model folder, as ``--model`` takes.
    ``intervals="central"`` leaves 2.5% of misses on each side of a 95% interval instead of the
    split the calibration chose (``calibrated``, the default)."""
    from mofbalora.predict import load_model as load_folder
    from mofbalora.pretrained import resolve_model

    return load_folder(resolve_model(model), intervals=intervals)
