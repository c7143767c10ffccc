"""Structure pictures for notebooks: a static matplotlib 3-D view and, where installed, py3Dmol."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase.data.colors import jmol_colors
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

logger = logging.getLogger(__name__)


def draw_structure(structure: Structure, ax: Any, *, title: str = "", atom_size: float = 30.0) -> Any:
    """Atoms of one cell on a matplotlib 3-D axis, Jmol colours, one legend entry per element, Å axes."""
    coords = structure.cart_coords
    numbers = np.array([site.specie.Z for site in structure])
    for z in sorted(set(numbers)):
        mask = numbers == z
        ax.scatter(*coords[mask].T, s=atom_size, color=jmol_colors[z], edgecolors="k", linewidths=0.3,
                   label=structure[int(np.flatnonzero(mask)[0])].specie.symbol, depthshade=True)
    fractional = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners = fractional @ structure.lattice.matrix
    for a in range(8):
        for b in range(a + 1, 8):
            if np.count_nonzero(fractional[a] != fractional[b]) == 1:  # the 12 cell edges
                ax.plot(*corners[[a, b]].T, color="grey", lw=0.6)
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_zlabel("z (Å)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def interactive_view(structure: Structure, *, width: int = 420, height: int = 320) -> Any:
    """A py3Dmol view of the cell, or None (with a log message) when py3Dmol is not installed."""
    try:
        import py3Dmol
    except ImportError:
        logger.info("py3Dmol is not installed; pip install py3Dmol for an interactive view")
        return None
    view = py3Dmol.view(width=width, height=height)
    view.addModel(str(CifWriter(structure)), "cif")
    view.setStyle({"sphere": {"scale": 0.3}, "stick": {"radius": 0.12}})
    view.addUnitCell()
    view.zoomTo()
    return view
