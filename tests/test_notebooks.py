"""Every notebook runs top to bottom with small parameters (nbclient), with no errors."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "01_explore_qmof.ipynb": "DATA = None\nN_STRUCTURES = 25\nSEED = 0",
    "02_finetune_with_uncertainty.ipynb": "DATA = None\nN_STRUCTURES = 200\nEPOCHS = 1\nSAMPLES = 4\nOUT = '{tmp}'",
    "03_screen_candidates.ipynb": ("MODEL = 'qmof-pbe'\nN_CANDIDATES = 8\nGAP_LOW_EV, GAP_HIGH_EV = 1.5, 3.0\n"
                                   "SAMPLES = None\nOUT = '{tmp}'"),
    "04_active_learning.ipynb": "MODEL = 'qmof-pbe'\nDATA = None\nN_POOL = 40\nBUDGET = 4\nWINDOW_EV = (0.0, 0.5)\nSEED = 0",
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path, qmof_dataset):
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "each notebook has one parameters cell"
    cells[0].source = SMALL[name].format(tmp=tmp_path)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_committed_notebooks_have_no_outputs_and_are_valid_with_cell_ids():
    """No outputs; and valid nbformat 4.5, every cell with an id (nbformat warns of a missing id,
    which "will become a hard error in future nbformat versions")."""
    import warnings

    for path in (ROOT / "notebooks").glob("*.ipynb"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            notebook = nbformat.read(path, as_version=4)
            nbformat.validate(notebook)
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path
        assert all(c.get("id") for c in notebook.cells), path
