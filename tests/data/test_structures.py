
import pytest
from typer.testing import CliRunner

from mofbalora.cli import app
from mofbalora.data import InvalidReason, InvalidStructureError, read_structure, validate_inputs
from mofbalora.data.structures import expand_inputs, structure_id, unique_structure_ids
from tests.conftest import cli_message, copy_cifs

CELL = """data_test
_cell_length_a {a}
_cell_length_b 10.0
_cell_length_c 10.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _symmetry_equiv_pos_as_xyz
 'x, y, z'
"""
SITES = """loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
{rows}
"""


def cif(rows: str, a: float = 10.0) -> str:
    return CELL.format(a=a) + SITES.format(rows=rows)


GOOD_ROWS = " Zn Zn1 0.0 0.0 0.0 1.0\n O O1 0.2 0.0 0.0 1.0\n"

CASES = {
    "empty": ("", InvalidReason.UNREADABLE),
    "garbage": ("this is not a crystal file\n1 2 3\n", InvalidReason.UNREADABLE),
    "truncated": (cif(GOOD_ROWS)[:-12], InvalidReason.UNREADABLE),
    "truncated_header": (cif(GOOD_ROWS)[:40], InvalidReason.NO_3D_LATTICE),
    "no_atoms": (CELL.format(a=10.0), InvalidReason.NO_ATOMS),
    "partial": (cif(" Zn Zn1 0.0 0.0 0.0 0.5\n O O1 0.2 0.0 0.0 1.0\n"), InvalidReason.DISORDERED),
    "unknown_element": (cif(" Xq Xq1 0.0 0.0 0.0 1.0\n O O1 0.2 0.0 0.0 1.0\n"), InvalidReason.UNKNOWN_ELEMENT),
    "too_close": (cif(" Zn Zn1 0.0 0.0 0.0 1.0\n O O1 0.03 0.0 0.0 1.0\n"), InvalidReason.ATOMS_TOO_CLOSE),
    "too_close_periodic": (cif(" Zn Zn1 0.001 0.0 0.0 1.0\n O O1 0.998 0.0 0.0 1.0\n"), InvalidReason.ATOMS_TOO_CLOSE),
    "flat_cell": (cif(GOOD_ROWS, a=0.0), InvalidReason.NO_3D_LATTICE),
    # no symmetry loop: pymatgen's own path merges the two rows into one site of occupancy 2
    "one_position_twice": (cif(" C C1 0.0 0.0 0.0 1.0\n C C2 0.0 0.0 0.0 1.0\n O O1 0.2 0.0 0.0 1.0\n")
                           .replace("loop_\n _symmetry_equiv_pos_as_xyz\n 'x, y, z'\n", ""), InvalidReason.ATOMS_TOO_CLOSE),
    "nan_coordinate": (cif(" C C1 nan 0.0 0.0 1.0\n O O1 0.2 0.0 0.0 1.0\n"), InvalidReason.UNREADABLE),
    # '.' read as 0 by pymatgen: the atom moved to the origin
    "dot_coordinate": (cif(" Zn Zn1 . 0.0 0.0 1.0\n O O1 0.2 0.0 0.0 1.0\n"), InvalidReason.UNREADABLE),
    "cartesian_only": (CELL.format(a=10.0) + "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_Cartn_x\n"
                       " _atom_site_Cartn_y\n _atom_site_Cartn_z\n Zn Zn1 0 0 0\n O O1 2.0 0 0\n", InvalidReason.UNREADABLE),
    # a rounding above 1 on one site is not two atoms on one position
    "occupancy_above_one": (cif(" Zn Zn1 0.0 0.0 0.0 1.0001\n O O1 0.2 0.0 0.0 1.0\n"), InvalidReason.DISORDERED),
}
DETAILS = {"one_position_twice": "atoms on one position", "nan_coordinate": "site 0 (C at nan, 0, 0) has a coordinate that is not a number",
           "dot_coordinate": "site Zn1 has no coordinate (_atom_site_fract_x is '.')",
           "cartesian_only": "only Cartesian coordinates", "occupancy_above_one": "occupancy above 1"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_invalid_reason_names_file_and_reason(tmp_path, case):
    text, reason = CASES[case]
    path = tmp_path / f"{case}.cif"
    path.write_text(text)
    with pytest.raises(InvalidStructureError) as info:
        read_structure(path)
    assert info.value.reason is reason
    assert str(path) in str(info.value) and reason.value in str(info.value)
    assert DETAILS.get(case, "") in info.value.detail  # pymatgen's reason, not only its first line


def test_too_many_atoms(tmp_path):
    path = tmp_path / "ok.cif"
    path.write_text(cif(GOOD_ROWS))
    assert len(read_structure(path)) == 2
    with pytest.raises(InvalidStructureError) as info:
        read_structure(path, max_atoms=1)
    assert info.value.reason is InvalidReason.TOO_MANY_ATOMS


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(InvalidStructureError) as info:
        read_structure(tmp_path / "nope.cif")
    assert info.value.reason is InvalidReason.UNREADABLE


def test_compressed_cifs_read_like_plain_ones_and_a_corrupt_one_names_its_file(tmp_path):
    import bz2
    import gzip
    import lzma

    text = cif(GOOD_ROWS).encode()
    (tmp_path / "plain.cif").write_bytes(text)
    for suffix, compress in {".cif.gz": gzip.compress, ".cif.bz2": bz2.compress, ".cif.xz": lzma.compress}.items():
        (tmp_path / f"packed{suffix}").write_bytes(compress(text))
        (tmp_path / f"cut{suffix}").write_bytes(compress(text)[:20])
    plain = read_structure(tmp_path / "plain.cif")
    for suffix in (".cif.gz", ".cif.bz2", ".cif.xz"):
        assert read_structure(tmp_path / f"packed{suffix}") == plain
        with pytest.raises(InvalidStructureError) as info:
            read_structure(tmp_path / f"cut{suffix}")
        assert info.value.reason is InvalidReason.UNREADABLE and f"cut{suffix}" in str(info.value)
    (tmp_path / "gone.cif").symlink_to(tmp_path / "moved_away.cif")  # listed, so that it is reported
    found = expand_inputs([tmp_path])
    assert sorted(p.name for p in found) == sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InvalidStructureError, match="gone.cif: unreadable or not a CIF .a link to a missing file"):
        read_structure(tmp_path / "gone.cif")
    (tmp_path / "nothing_here").mkdir()
    (tmp_path / "nothing_here" / "POSCAR").write_text("not a CIF")
    assert expand_inputs([tmp_path / "nothing_here"]) == [tmp_path / "nothing_here"]  # kept, to be reported
    with pytest.raises(InvalidStructureError, match="nothing_here: unreadable or not a CIF.*a folder with no CIF files"):
        read_structure(tmp_path / "nothing_here")
    assert [structure_id(p) for p in found if p.name.startswith("packed")] == ["packed"] * 3


def test_a_byte_order_mark_or_utf16_is_read_like_plain_text(tmp_path):
    """Notepad's UTF-8 byte-order mark hid the data block from pymatgen ('Invalid CIF file with no
    structures!'), and PowerShell's UTF-16 was refused as binary; both are the same CIF."""
    text = cif(GOOD_ROWS)
    (tmp_path / "plain.cif").write_text(text)
    (tmp_path / "bom.cif").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "utf16.cif").write_bytes(text.replace("\n", "\r\n").encode("utf-16"))
    plain = read_structure(tmp_path / "plain.cif")
    assert read_structure(tmp_path / "bom.cif") == plain and read_structure(tmp_path / "utf16.cif") == plain


def test_an_occupancy_placeholder_means_a_whole_atom(tmp_path):
    """CIF's '.' (inapplicable) and '?' (unknown) occupancy default to 1; pymatgen read '.' as 0 and
    dropped the atom without a word (ZnO came out as O)."""
    (tmp_path / "plain.cif").write_text(cif(GOOD_ROWS))
    (tmp_path / "placeholders.cif").write_text(cif(" Zn Zn1 0.0 0.0 0.0 .\n O O1 0.2 0.0 0.0 ?\n"))
    assert read_structure(tmp_path / "placeholders.cif") == read_structure(tmp_path / "plain.cif")


def test_oxidation_states_are_read_as_their_elements(tmp_path):
    """A CIF with an _atom_type_oxidation_number loop (ICSD exports, pymatgen's CifWriter) and a
    Structure decorated with oxidation states were refused as 'unknown element (Zn2+)'."""
    from pymatgen.core import DummySpecies, Lattice, Structure

    from mofbalora.data.structures import check_structure

    plain = tmp_path / "plain.cif"
    plain.write_text(cif(GOOD_ROWS))
    oxidised = tmp_path / "oxidised.cif"
    oxidised.write_text(cif(" Zn2+ Zn1 0.0 0.0 0.0 1.0\n O2- O1 0.2 0.0 0.0 1.0\n").replace(
        "loop_\n _atom_site_type_symbol",
        "loop_\n _atom_type_symbol\n _atom_type_oxidation_number\n Zn2+ 2\n O2- -2\nloop_\n _atom_site_type_symbol"))
    assert read_structure(oxidised) == read_structure(plain)
    decorated = read_structure(plain)
    decorated.add_oxidation_state_by_element({"Zn": 2, "O": -2})
    assert check_structure(decorated, "decorated") == read_structure(plain)
    assert decorated.composition.reduced_formula == "ZnO" and "Zn2+" in str(decorated.composition)  # not modified
    dummy = Structure(Lattice.cubic(10.0), [DummySpecies("X"), "O"], [[0, 0, 0], [0.2, 0, 0]])
    with pytest.raises(InvalidStructureError, match="unknown element"):
        check_structure(dummy, "dummy")


def test_ids_are_unique_for_suffix_twins_and_same_named_files_in_other_folders(tmp_path):
    for relative in ("a/x.cif", "a/x.CIF", "a/x.cif.gz", "b/x.cif", "c/d/y.cif", "e/d/y.cif", "z.cif"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    paths = [tmp_path / r for r in ("a/x.cif", "a/x.CIF", "a/x.cif.gz", "b/x.cif", "c/d/y.cif", "e/d/y.cif", "z.cif")]
    assert unique_structure_ids(paths) == ["x.cif", "x.CIF", "x.cif.gz", "x", "c/d/y", "e/d/y", "z"]
    with pytest.raises(ValueError, match="listed more than once"):
        unique_structure_ids([paths[0], tmp_path / "a" / ".." / "a" / "x.cif"])
    # a symlink is named by its own name (a folder of refcode links to hashed files), also a
    # dangling one (it used to get its target's name)
    (tmp_path / "hashed").mkdir()
    (tmp_path / "hashed" / "3f9c.cif").write_text("")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "MOF-5.cif").symlink_to(tmp_path / "hashed" / "3f9c.cif")
    (tmp_path / "links" / "gone.cif").symlink_to(tmp_path / "hashed" / "moved_away.cif")
    assert unique_structure_ids([tmp_path / "links" / "MOF-5.cif", tmp_path / "links" / "gone.cif"]) == ["MOF-5", "gone"]
    with pytest.raises(ValueError, match="listed more than once"):
        unique_structure_ids([tmp_path / "links" / "MOF-5.cif", tmp_path / "hashed" / "3f9c.cif"])


def test_qmof_cifs_with_extra_columns_parse(small_qmof):
    _, paths, _ = small_qmof
    for path in paths[:10]:
        structure = read_structure(path)
        assert structure.is_ordered and len(structure) > 0


def test_coremof_cifs_parse(coremof_paths):
    rows = validate_inputs(coremof_paths)
    assert sum(r.status == "valid" for r in rows) >= 4


def test_validate_cli_folder_glob_and_csv(tmp_path, small_qmof):
    _, paths, _ = small_qmof
    folder = copy_cifs(paths[:3], tmp_path / "in")
    (folder / "broken.cif").write_text("")
    out = tmp_path / "report.csv"
    result = CliRunner().invoke(app, ["validate", str(folder), str(tmp_path / "in" / "*.cif"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [l for l in result.stdout.splitlines() if l]
    assert len(lines) == 8  # 4 files via the folder + 4 via the glob
    assert any("broken, invalid, unreadable" in l for l in lines)
    import pandas as pd

    table = pd.read_csv(out)
    assert list(table.columns[:5]) == ["id", "status", "reason", "n_atoms", "formula"]
    assert (table["status"] == "valid").sum() == 6
    # the ids predict gives: x.cif and x.cif.gz in one folder are told apart (both were 'x')
    import gzip

    (folder / "broken.cif.gz").write_bytes(gzip.compress(b""))
    rows = validate_inputs([folder / "broken.cif", folder / "broken.cif.gz", folder / "broken.cif"])
    assert [row.id for row in rows] == ["broken.cif", "broken.cif.gz", "broken.cif"]


def test_validate_cli_fails_only_when_nothing_valid(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("nonsense")
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1


def _general_parse(path):
    import warnings

    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(path.read_text(), occupancy_tolerance=1.0).parse_structures(primitive=False)[0]


def test_p1_cifs_read_as_pymatgen_reads_them(small_qmof, coremof_paths):
    """The direct P1 reader (no O(n²) symmetry merging) gives pymatgen's Structure: same lattice,
    species in the same order, same wrapped fractional coordinates."""
    import warnings

    import numpy as np
    from pymatgen.io.cif import CifParser

    from mofbalora.data.structures import _p1_structure

    _, qmof_paths, _ = small_qmof
    for path in list(qmof_paths[:8]) + list(coremof_paths):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = _p1_structure(CifParser.from_str(path.read_text(), occupancy_tolerance=1.0))
        assert direct is not None, path  # these files are plain P1
        general = _general_parse(path)
        assert [str(s.specie) for s in direct] == [str(s.specie) for s in general], path
        np.testing.assert_allclose(direct.frac_coords, general.frac_coords, atol=1e-9)
        np.testing.assert_allclose(direct.lattice.matrix, general.lattice.matrix, atol=1e-9)


def test_cifs_with_symmetry_operations_take_pymatgens_path(tmp_path, small_qmof):
    """Symmetry operations beyond the identity are pymatgen's job: the direct reader declines."""
    import warnings

    from pymatgen.io.cif import CifParser

    from mofbalora.data.structures import _p1_structure

    _, paths, _ = small_qmof
    text = paths[0].read_text()
    assert "  1  'x, y, z'\n" in text  # QMOF's symmetry loop: site id, operation
    inverted = text.replace("  1  'x, y, z'\n", "  1  'x, y, z'\n  2  '-x, -y, -z'\n", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _p1_structure(CifParser.from_str(text)) is not None
        assert _p1_structure(CifParser.from_str(inverted)) is None
    path = tmp_path / "inverted.cif"
    path.write_text(inverted)
    # pymatgen's general path applies the inversion: its images of a P1 framework land on top of
    # other atoms (or leave no structure), and the reader refuses the file by name and reason
    with pytest.raises(InvalidStructureError) as refused:
        read_structure(path)
    assert refused.value.path == str(path)
    assert "atoms closer than" in str(refused.value) or "not a CIF" in str(refused.value)


def test_an_in_memory_structure_never_shares_an_id_with_a_file(tmp_path):
    from pymatgen.core import Lattice, Structure

    from mofbalora.predict import resolve_inputs

    (tmp_path / "structure_0.cif").write_text(cif(GOOD_ROWS))
    structure = Structure(Lattice.cubic(10.0), ["Zn", "O"], [[0, 0, 0], [0.2, 0, 0]])
    _, ids = resolve_inputs([structure, tmp_path / "structure_0.cif", structure])
    assert ids == ["structure_0_in_memory", "structure_0", "structure_2"]


def test_an_empty_path_is_refused_not_read_as_the_working_folder(tmp_path, monkeypatch):
    """``"$DIR"`` with DIR unset gives "", which Path() reads as "." and would predict whatever
    CIFs the working folder holds; a bytes path is a path; anything else is named by position."""
    from pymatgen.core import Lattice, Structure

    from mofbalora.predict import resolve_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.cif").write_text(cif(GOOD_ROWS))
    with pytest.raises(ValueError, match="empty path"):
        expand_inputs([""])
    for command in (["validate"], ["featurise"], ["predict", "-o", str(tmp_path / "p.csv")]):
        result = CliRunner().invoke(app, [*command, str(tmp_path / "here.cif"), ""])
        assert result.exit_code == 2 and "empty path" in cli_message(result.output), (command, result.output)
    assert not (tmp_path / "p.csv").exists()
    slots, ids = resolve_inputs([str(tmp_path / "here.cif").encode()])
    assert slots == [tmp_path / "here.cif"] and ids == ["here"]
    structure = Structure(Lattice.cubic(10.0), ["Zn", "O"], [[0, 0, 0], [0.2, 0, 0]])
    with pytest.raises(TypeError, match="input 1: .* got NoneType"):
        resolve_inputs([structure, None])
    with pytest.raises(TypeError, match="got int"):
        resolve_inputs(5)


def test_a_file_with_several_structures_is_refused_naming_its_blocks(tmp_path, small_qmof):
    """An export of several structures in one CIF used to be read as its first structure only."""
    _, paths, _ = small_qmof
    both = tmp_path / "both.cif"
    both.write_text(paths[0].read_text() + "\n" + paths[1].read_text())
    with pytest.raises(InvalidStructureError, match="2 structures in one file") as refused:
        read_structure(both)
    assert refused.value.path == str(both) and "give one structure per file" in str(refused.value)
    rows = validate_inputs([both, paths[0]])
    assert [r.status for r in rows] == ["invalid", "valid"]
    shouting = tmp_path / "shouting.cif"  # CIF tags are case-insensitive, and pymatgen keeps their case
    shouting.write_text(both.read_text().replace("_atom_site_fract_x", "_Atom_Site_Fract_X"))
    with pytest.raises(InvalidStructureError, match="2 structures in one file"):
        read_structure(shouting)
    # a journal's CIF: a block of publication details, then the structure's; it was refused
    # ('No structure parsed for section 1 in CIF. _atom_site_label')
    journal = tmp_path / "journal.cif"
    journal.write_text("data_global\n_journal_name_full 'A Journal'\n_publ_section_title 'A MOF'\n\n"
                       + paths[0].read_text())
    assert read_structure(journal) == read_structure(paths[0])


def test_a_pattern_matching_a_folder_searches_it_as_the_shell_expansion_would(tmp_path):
    """``'mofs/*'`` matching a sub-folder used to report the sub-folder as "a folder with no CIF
    files" although it held CIFs; ``'mofs/**'`` reaches a file through its folder and by itself,
    and lists it once."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.cif").write_text(cif(GOOD_ROWS))
    (tmp_path / "sub" / "b.cif").write_text(cif(GOOD_ROWS))
    (tmp_path / "empty").mkdir()
    star = expand_inputs([str(tmp_path / "*")])
    assert star == [tmp_path / "a.cif", tmp_path / "empty", tmp_path / "sub" / "b.cif"]
    assert sorted(expand_inputs([str(tmp_path / "**")])) == [tmp_path / "a.cif", tmp_path / "empty",
                                                          tmp_path / "sub" / "b.cif"]
    assert [r.status for r in validate_inputs([str(tmp_path / "*")])] == ["valid", "invalid", "valid"]
