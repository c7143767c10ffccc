"""Structures, labelled datasets, splits and the dataset downloader."""

from mofbalora.data.datasets import LabelledDataset, load_labelled_dataset, resolve_data_dir
from mofbalora.data.splits import Split, make_split
from mofbalora.data.structures import (
    InvalidReason,
    InvalidStructureError,
    expand_inputs,
    read_structure,
    structure_id,
    validate_inputs,
)

__all__ = [
    "InvalidReason",
    "InvalidStructureError",
    "LabelledDataset",
    "Split",
    "expand_inputs",
    "load_labelled_dataset",
    "make_split",
    "read_structure",
    "resolve_data_dir",
    "structure_id",
    "validate_inputs",
]
