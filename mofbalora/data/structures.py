"""Read one crystal structure from a CIF file and reject it with one clear reason if unusable."""

from __future__ import annotations

import enum
import glob
import hashlib
import logging
import lzma
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from monty.io import zopen
from pymatgen.core import Element, Species, Structure
from pymatgen.io.cif import CifParser

from mofbalora.data.io import decode_text

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATOMS = 1000
MIN_INTERATOMIC_DISTANCE_ANGSTROM = 0.5
#: structure files read: plain CIFs and CIFs compressed whole (monty's ``zopen`` reads all three)
CIF_SUFFIXES = (".cif", ".cif.gz", ".cif.bz2", ".cif.xz")
#: bumped when :func:`read_structure` accepts or rejects files differently; part of the feature
#: cache's key, so whether a file is predicted never depends on what the cache holds (2: a file
#: with several structures is refused, where its first one was read; 3: a coordinate that is not a
#: number or a placeholder ('.', '?') is refused, where a P1 file's "nan" was read and pymatgen read
#: '.' as 0; an occupancy '.' or '?' is 1, where pymatgen dropped the atom; a file with a byte-order
#: mark, in UTF-16, with oxidation states or with a data block of publication details before the
#: structure's is read, where it was refused)
READER_RULES = 3


class InvalidReason(str, enum.Enum):
    """The fixed set of reasons a structure is rejected."""

    UNREADABLE = "unreadable or not a CIF"
    NO_ATOMS = "no atoms"
    DISORDERED = "partial occupancy or disorder"
    UNKNOWN_ELEMENT = "unknown element"
    ATOMS_TOO_CLOSE = "atoms closer than 0.5 Å"
    TOO_MANY_ATOMS = "more atoms than max_atoms"
    NO_3D_LATTICE = "no 3-D lattice"


class InvalidStructureError(ValueError):
    """A structure file that cannot be used; names the file, the reason and a detail."""

    def __init__(self, path: str | os.PathLike, reason: InvalidReason, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        message = f"{self.path}: {reason.value}"
        super().__init__(f"{message} ({detail})" if detail else message)

    @property
    def reason_text(self) -> str:
        """The reason and its detail without the path, as a table's ``reason`` column shows them."""
        return self.reason.value + (f": {self.detail}" if self.detail else "")


_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c")
_CELL_PARAMS = _CELL_TAGS + ("_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_NUMBER = re.compile(r"^\s*(_cell_(?:length|angle)_\w+)\s+([-+0-9.eE]+)", re.MULTILINE | re.IGNORECASE)


def _check_cell_parameters(path: Path, text: str) -> None:
    """Reject a degenerate cell before pymatgen does, so the reason is the right one."""
    found = {tag.lower(): value for tag, value in _NUMBER.findall(text)}
    try:
        values = [float(found[tag]) for tag in _CELL_PARAMS]
    except (KeyError, ValueError):
        return  # unusual notation (e.g. uncertainties); pymatgen decides
    lengths, angles = np.array(values[:3]), np.radians(values[3:])
    cosines = np.cos(angles)
    volume_factor = 1 - (cosines**2).sum() + 2 * np.prod(cosines)
    if (lengths <= 1e-3).any() or volume_factor <= 1e-9:
        raise InvalidStructureError(path, InvalidReason.NO_3D_LATTICE, f"cell {values}")


_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")
_FRACTIONAL = ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")
_CARTESIAN = ("_atom_site_cartn_x", "_atom_site_cartn_y", "_atom_site_cartn_z")


def _p1_structure(parser: CifParser) -> Structure | None:
    """The structure of a plain P1 CIF, built directly; None for anything else (pymatgen parses it).

    Plain P1: one data block, the identity as the only symmetry operation, fractional
    coordinates, element type symbols, no partial occupancy. pymatgen's general path compares
    every site with every other to merge symmetry copies, O(n²) and most of the time of reading
    a CoRE-MOF or QMOF CIF (0.2–0.6 s); in P1 there are no copies to merge. The sites come out
    in pymatgen's order (a stable sort by species of the file order), so both paths give the
    same Structure (tests/data/test_structures.py).
    """
    blocks = list(parser._cif.data.values())
    if len(blocks) != 1:
        return None
    data = blocks[0].data
    symops = [op for tag in _SYMOP_TAGS for op in data.get(tag, [])]
    if [re.sub(r"[\s']", "", op).lower() for op in symops] != ["x,y,z"]:
        return None
    if not all(tag in data for tag in _FRACTIONAL) or "_atom_site_type_symbol" not in data:
        return None
    if any(tag.startswith("_atom_site_moment") for tag in data):
        return None
    symbols = list(data["_atom_site_type_symbol"])
    if not all(Element.is_valid_symbol(symbol) for symbol in symbols):
        return None
    try:
        if any(float(value) != 1.0 for value in data.get("_atom_site_occupancy", [])):
            return None
        # wrapped into [0, 1) as pymatgen's symmetry expansion does
        coords = np.mod(np.array([[float(value) for value in data[tag]] for tag in _FRACTIONAL]).T, 1.0)
    except ValueError:  # e.g. uncertainties in parentheses: pymatgen's parser reads those
        return None
    if len(coords) != len(symbols):
        return None
    lattice = parser.get_lattice(data)
    if lattice is None:
        return None
    return Structure(lattice, symbols, coords).get_sorted_structure()


def _read_cif_placeholders(path: Path, parser: CifParser) -> None:
    """CIF's placeholders in the atom-site loop, read as the CIF core dictionary means them: an
    occupancy of '.' (inapplicable) or '?' (unknown) is its default, 1; pymatgen read '.' as 0
    and silently dropped the atom. A coordinate given as '.' or '?' is refused (pymatgen read '.'
    as 0 and moved the atom to the origin)."""
    def values(data: dict, tag: str) -> list[str]:  # a one-row value may be stored as a bare string
        found = data.get(tag, [])
        return [found] if isinstance(found, str) else list(found)

    for block in parser._cif.data.values():
        data = block.data
        if "_atom_site_occupancy" in data:
            occupancies = ["1" if value.strip() in (".", "?") else value for value in values(data, "_atom_site_occupancy")]
            data["_atom_site_occupancy"] = occupancies[0] if isinstance(data["_atom_site_occupancy"], str) else occupancies
        labels = values(data, "_atom_site_label") or values(data, "_atom_site_type_symbol")
        coordinates = [tag for tag in data if tag.lower() in (*_FRACTIONAL, *_CARTESIAN)]
        for tag in coordinates:
            for number, value in enumerate(values(data, tag)):
                if value.strip() in (".", "?"):
                    site = labels[number] if number < len(labels) else f"row {number}"
                    raise InvalidStructureError(path, InvalidReason.UNREADABLE,
                                                f"site {site} has no coordinate ({tag} is '{value.strip()}')")


def _check_one_structure(path: Path, parser: CifParser) -> None:
    """Refuse a file with atoms in more than one data block (an export of several structures):
    pymatgen would read them all and one row could only show the first. Blocks without atoms (a
    journal's data_global of publication details) are set aside: pymatgen tried to read them as
    structures and refused the whole file ('No structure parsed for section 1 ... _atom_site_label')."""
    blocks = [name for name, block in parser._cif.data.items()
              if any(tag.lower() in ("_atom_site_fract_x", "_atom_site_cartn_x") for tag in block.data)]
    if len(blocks) > 1:
        shown = ", ".join(f"data_{name}" for name in blocks[:3]) + (", …" if len(blocks) > 3 else "")
        raise InvalidStructureError(path, InvalidReason.UNREADABLE,
                                    f"{len(blocks)} structures in one file ({shown}); give one structure per file")
    if len(blocks) == 1 and len(parser._cif.data) > 1:
        parser._cif.data = {blocks[0]: parser._cif.data[blocks[0]]}


def _parse_cif(path: Path, text: str) -> Structure:
    lowered = text.lower()
    if "data_" not in lowered:
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, "no CIF data block")
    if not all(tag in lowered for tag in _CELL_TAGS):
        raise InvalidStructureError(path, InvalidReason.NO_3D_LATTICE, "cell lengths missing")
    _check_cell_parameters(path, text)
    if "_atom_site_fract_" not in lowered and "_atom_site_cartn_" not in lowered:
        raise InvalidStructureError(path, InvalidReason.NO_ATOMS, "no _atom_site loop")
    if "_atom_site_fract_" not in lowered:  # pymatgen reads only fractional ones (a KeyError otherwise)
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, "only Cartesian coordinates (_atom_site_Cartn_x); "
                                    "give fractional ones (_atom_site_fract_x), e.g. by re-exporting from ASE or VESTA")
    with warnings.catch_warnings():
        # pymatgen warns about every extra per-atom column (QMOF charges, spins); they are fine.
        warnings.simplefilter("ignore")
        try:
            parser = CifParser.from_str(text, occupancy_tolerance=1.0)
            _check_one_structure(path, parser)
            _read_cif_placeholders(path, parser)
            p1 = _p1_structure(parser)
            structures = [p1] if p1 is not None else parser.parse_structures(primitive=False, on_error="raise")
        except InvalidStructureError:
            raise
        except Exception as exc:  # pymatgen raises many exception types for bad CIFs
            # every line: pymatgen's first ("No structure parsed for section 1") hides the reason
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines())[:300] or type(exc).__name__
            excess = re.search(r"occupancy ([0-9.]+) exceeded tolerance", detail, re.IGNORECASE)
            if excess and float(excess.group(1)) >= 1.5:
                # pymatgen merged atoms on one position into one site: 0 Å apart (duplicated rows,
                # symmetry images on other atoms, or alternative disorder sites)
                raise InvalidStructureError(path, InvalidReason.ATOMS_TOO_CLOSE, f"atoms on one position; {detail}") from exc
            if excess:  # one site's occupancies sum to a little over 1
                raise InvalidStructureError(path, InvalidReason.DISORDERED, f"occupancy above 1; {detail}") from exc
            if "lattice" in detail.lower() or "singular" in detail.lower():
                raise InvalidStructureError(path, InvalidReason.NO_3D_LATTICE, detail) from exc
            if "element" in detail.lower() or "species" in detail.lower():
                raise InvalidStructureError(path, InvalidReason.UNKNOWN_ELEMENT, detail) from exc
            raise InvalidStructureError(path, InvalidReason.UNREADABLE, detail) from exc
    if not structures:
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, "no structure in file")
    return structures[0]


def check_structure(
    structure: Structure, path: str | os.PathLike, *, max_atoms: int = DEFAULT_MAX_ATOMS
) -> Structure:
    """Apply the validity checks to a parsed structure; return it or raise InvalidStructureError."""
    if len(structure) == 0:
        raise InvalidStructureError(path, InvalidReason.NO_ATOMS)
    coordinates = np.asarray(structure.frac_coords)
    if not np.isfinite(coordinates).all():  # a P1 CIF's "nan" reads as a float; pymatgen keeps it
        site = int(np.flatnonzero(~np.isfinite(coordinates).all(axis=1))[0])
        position = ", ".join(f"{value:g}" for value in coordinates[site])
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, f"site {site} ({structure[site].species_string} "
                                    f"at {position}) has a coordinate that is not a number")
    lattice = structure.lattice
    if not all(lattice.pbc):  # ASE Atoms with a cell but pbc=False: the neighbours would be a cluster's
        raise InvalidStructureError(path, InvalidReason.NO_3D_LATTICE,
                                    f"not periodic in every direction (pbc {tuple(bool(p) for p in lattice.pbc)}); "
                                    "set pbc=True if the cell is the crystal's")
    if not np.isfinite(lattice.matrix).all() or lattice.volume < 1e-3 or min(lattice.abc) < 1e-3:
        raise InvalidStructureError(
            path, InvalidReason.NO_3D_LATTICE, f"cell volume {lattice.volume:.3g} Å^3"
        )
    if not structure.is_ordered:
        raise InvalidStructureError(path, InvalidReason.DISORDERED)
    if any(type(site.specie) is Species for site in structure):
        # oxidation states (a CIF's _atom_type_oxidation_number loop, a decorated Structure): the
        # element is what the graph takes; they were refused as unknown elements ("Zn2+")
        structure = structure.copy()
        structure.remove_oxidation_states()
    for site in structure:
        specie = site.specie
        if not isinstance(specie, Element) or specie.Z < 1:
            raise InvalidStructureError(path, InvalidReason.UNKNOWN_ELEMENT, str(specie))
    if len(structure) > max_atoms:
        raise InvalidStructureError(
            path, InvalidReason.TOO_MANY_ATOMS, f"{len(structure)} > {max_atoms}"
        )
    if min(lattice.abc) < MIN_INTERATOMIC_DISTANCE_ANGSTROM:
        raise InvalidStructureError(path, InvalidReason.ATOMS_TOO_CLOSE, "lattice vector shorter than 0.5 Å")
    centers, _, _, distances = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE_ANGSTROM)
    if len(centers):
        raise InvalidStructureError(
            path,
            InvalidReason.ATOMS_TOO_CLOSE,
            f"site {int(centers[0])} at {float(distances.min()):.3f} Å from a neighbour",
        )
    return structure


def read_cif_bytes(path: str | os.PathLike) -> bytes:
    """A structure file's content, decompressed if its name says so (:data:`CIF_SUFFIXES`).

    The featuriser cache keys on these bytes, so a file is read the same way whether or not its
    content was featurised before, and a CIF and its compressed copy share one entry.

    Raises:
        InvalidStructureError: unreadable (missing, or a corrupt or truncated compressed file).
    """
    if os.path.isdir(path):
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, f"a folder with no CIF files ({', '.join(CIF_SUFFIXES)})")
    try:
        with zopen(path, "rb") as handle:
            return handle.read()
    except OSError as exc:  # a missing file, or a corrupt .gz / .bz2 (BadGzipFile and bz2's errors are OSErrors)
        if os.path.islink(path) and not os.path.exists(path):
            raise InvalidStructureError(path, InvalidReason.UNREADABLE,
                                        f"a link to a missing file ({os.readlink(path)})") from exc
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, exc.strerror or str(exc)) from exc
    except (EOFError, lzma.LZMAError) as exc:  # a truncated stream; a corrupt .xz
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, f"corrupt compressed file: {exc}") from exc


def read_structure(path: str | os.PathLike, *, max_atoms: int = DEFAULT_MAX_ATOMS) -> Structure:
    """Read a CIF file (plain, or compressed whole as ``.cif.gz``, ``.cif.bz2``, ``.cif.xz``) into a
    pymatgen ``Structure``.

    Args:
        path: CIF file.
        max_atoms: largest cell accepted.

    Raises:
        InvalidStructureError: naming the file and one :class:`InvalidReason`.
    """
    path = Path(path)
    raw = read_cif_bytes(path)
    if not raw.strip():
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, "empty file")
    text = decode_text(raw)  # a byte-order mark (Notepad) hid the first data block from pymatgen
    if "\x00" in text:
        raise InvalidStructureError(path, InvalidReason.UNREADABLE, "binary content")
    structure = _parse_cif(path, text)
    return check_structure(structure, path, max_atoms=max_atoms)


def structure_id(path: str | os.PathLike) -> str:
    """The id of a structure file: its name without the .cif suffix (or .cif.gz, .cif.bz2, .cif.xz)."""
    name = os.path.basename(os.fspath(path))
    suffix = next((s for s in CIF_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


#: the content key's grid (Å, fractional) and its offset, in steps: decimal values written with up to
#: six digits, as CIFs write them, never lie on a cell boundary of the shifted grid, so float noise
#: (an ASE round trip, another reader) cannot move them across one; a plain rounding to 1e-4 put
#: every 5-digit coordinate ending in 5 exactly on a boundary
KEY_STEP = 1e-4
KEY_OFFSET = 0.237


def _key_grid(values: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) / KEY_STEP + KEY_OFFSET).astype(np.int64)


def structure_content_key(structure: Structure) -> int:
    """A 63-bit key of the parsed structure's content: lattice, species and wrapped positions, on
    a 1e-4 grid (Å, fractional; :data:`KEY_STEP`), so the same structure read from a CIF, built in
    pymatgen or passed as ASE Atoms gives the same key. BaLoRA seeds each structure's noise stream
    from it (docs/method.md §6), so a prediction depends on the structure, the model and the seed only.
    """
    digest = hashlib.sha256()
    digest.update(_key_grid(structure.lattice.matrix).tobytes())
    digest.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
    cells = round(1.0 / KEY_STEP)
    digest.update((_key_grid(np.mod(structure.frac_coords, 1.0)) % cells).tobytes())  # 0.99999… and 0 alike
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def unique_structure_ids(paths: Iterable[str | os.PathLike]) -> list[str]:
    """File-stem ids, made unique by the parent folders where two files share a stem.

    ``a/x.cif`` and ``b/x.cif`` become ``a/x`` and ``b/x``. Files in one folder whose names differ
    only in the suffix (``x.cif``, ``x.CIF``, ``x.cif.gz``) keep their whole names as ids. A
    symlink's id is its own name, not its target's. A file given twice (also through a symlink)
    raises, since the same file would get two rows.

    Raises:
        ValueError: when the same file is listed more than once.
    """
    paths = [Path(p) for p in paths]
    seen: dict[Path, str] = {}
    for path in paths:
        real = path.resolve()
        if real in seen:
            raise ValueError(f"{path}: listed more than once (also as {seen[real]})")
        seen[real] = str(path)
    # ids from the names as given (a symlink's own name, not its target's), '..' removed
    named = [Path(os.path.abspath(path)) for path in paths]
    in_folder = Counter((path.parent, structure_id(path)) for path in named)
    names = [path.name if in_folder[path.parent, structure_id(path)] > 1 else structure_id(path) for path in named]
    ids = list(names)
    depth = 1
    deepest = max((len(path.parts) for path in named), default=0)
    while len(set(ids)) < len(ids) and depth < deepest:
        counts = Counter(ids)
        depth += 1
        ids = [
            "/".join([*path.parts[-depth:-1], name]) if counts[value] > 1 else value
            for value, path, name in zip(ids, named, names)
        ]
    counts = Counter(ids)  # left equal only by contrived names (x.cif.cif beside x.cif and x.CIF): the full path
    return [str(path) if counts[value] > 1 else value for value, path in zip(ids, named)]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (their CIFs, :data:`CIF_SUFFIXES`, recursively) and glob patterns, in input order.

    A path or pattern that matches nothing, and a folder without CIFs, is kept as-is, so the caller
    reports it instead of dropping it. ``bytes`` paths are decoded as ``os.fsdecode`` does, and a
    leading ``~`` is the home folder.

    Raises:
        ValueError: for an empty path, which would otherwise mean the working folder (an unset
            shell variable in ``"$DIR"`` gives one).
    """
    paths: list[Path] = []
    for item in inputs:
        item = os.path.expanduser(os.fsdecode(item))  # "~/mofs" from Python, where no shell expands it
        if not item.strip():
            raise ValueError(f"an empty path ({item!r}) among the inputs; an unset shell variable gives one")
        if any(ch in item for ch in "*?[") and not os.path.exists(item):
            # each match as if named on its own (a folder searched, as the shell's expansion would
            # give it), a file reached twice within one pattern (mofs/** matches it and its folder) once
            matches = sorted(glob.glob(item, recursive=True))
            found = [path for match in matches for path in _file_or_folder(match)]
            paths.extend(dict.fromkeys(found)) if found else paths.append(Path(item))
        else:
            paths.extend(_file_or_folder(item))
    return paths


def _file_or_folder(item: str) -> list[Path]:
    """A folder's CIFs (recursively), or the folder itself when it has none (reported, not dropped);
    any other path as it is."""
    if not os.path.isdir(item):
        return [Path(item)]
    found = sorted(p for p in Path(item).rglob("*") if p.name.lower().endswith(CIF_SUFFIXES) and not p.is_dir())
    return found or [Path(item)]


@dataclass(frozen=True)
class ValidationRow:
    """One input's validation outcome."""

    id: str
    path: str
    status: str
    reason: str
    n_atoms: int | None
    formula: str


def validate_one(path: Path, *, max_atoms: int = DEFAULT_MAX_ATOMS, row_id: str | None = None) -> ValidationRow:
    """Validate one file without raising; ``row_id`` defaults to :func:`structure_id`."""
    row_id = structure_id(path) if row_id is None else row_id
    try:
        structure = read_structure(path, max_atoms=max_atoms)
    except InvalidStructureError as err:
        return ValidationRow(row_id, str(path), "invalid", err.reason_text, None, "")
    return ValidationRow(row_id, str(path), "valid", "", len(structure), structure.composition.reduced_formula)


def validate_inputs(inputs: Iterable[str | os.PathLike], *, max_atoms: int = DEFAULT_MAX_ATOMS) -> list[ValidationRow]:
    """Validate every input (files, folders, globs); one row per file, in input order, with the ids
    ``predict`` gives them (:func:`unique_structure_ids`), so the two tables join; a file listed
    twice gets two rows with one id.

    Raises:
        ValueError: for an empty path.
    """
    paths = expand_inputs(inputs)
    first = {}  # each file under the first name it was given
    for path in paths:
        first.setdefault(path.resolve(), path)
    ids = dict(zip(first, unique_structure_ids(list(first.values()))))
    return [validate_one(path, max_atoms=max_atoms, row_id=ids[path.resolve()]) for path in paths]
