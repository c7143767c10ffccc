import tarfile

import numpy as np
import pytest

from mofbalora.data.datasets import load_labelled_dataset, resolve_data_dir, unpack_archive_once
from tests.conftest import copy_cifs


@pytest.fixture
def messy_folder(tmp_path, small_qmof):
    ids, paths, gaps = small_qmof
    folder = copy_cifs(paths[:5], tmp_path / "set")
    rows = [f"{ids[0]},{gaps[0]}", f"{ids[1]},nan", f"{ids[2]},{gaps[2]}", f"{ids[2]},1.0", f"{ids[3]},{gaps[3]}",
            "qmof-missing,1.5"]
    (folder / "labels.csv").write_text("id,bandgap_ev\n" + "\n".join(rows) + "\n")
    return folder, ids


def test_join_reports_every_mismatch(messy_folder):
    folder, ids = messy_folder
    dataset = load_labelled_dataset(folder)
    report = dataset.report
    assert report.labels_without_cif == ["qmof-missing"]
    assert report.cifs_without_label == [ids[4]]
    assert report.nan_labels == [ids[1]]
    assert report.duplicate_ids == [ids[2]]
    assert sorted(dataset.table["id"]) == sorted([ids[0], ids[3]])
    assert dataset.target == "bandgap_ev" and len(dataset.labels_sha256) == 64


def test_ids_written_as_file_names_join_and_a_stem_naming_two_cifs_is_left_out(tmp_path, small_qmof):
    """A label table of file names (``x.cif``, with stray spaces) joins its CIFs instead of 0 of them;
    two CIFs sharing a stem in different folders are ambiguous (which one is labelled?): both are
    left out and named, where the first in path order used to be trained on silently."""
    ids, paths, gaps = small_qmof
    folder = copy_cifs(paths[:4], tmp_path / "set")
    copy_cifs(paths[3:4], folder / "again")
    rows = [f" {ids[0]}.cif ,{gaps[0]}", f"{ids[1]}.CIF,{gaps[1]}", f"{ids[2]},{gaps[2]}", f"{ids[3]},{gaps[3]}",
            "elsewhere.cif,1.0"]
    (folder / "labels.csv").write_text("file,bandgap_ev\n" + "\n".join(rows) + "\n")
    dataset = load_labelled_dataset(folder)
    report = dataset.report
    assert sorted(dataset.table["id"]) == sorted(ids[:3])
    assert report.ambiguous_cif_ids == [ids[3]] and report.labels_without_cif == ["elsewhere.cif"]
    assert f"1 ids naming several CIFs (e.g. {ids[3]})" in report.summary()
    assert "1 labels without CIF (e.g. elsewhere.cif)" in report.summary()


def test_ids_that_read_as_numbers_or_missing_join_as_written(tmp_path, small_qmof):
    """A user's set named 0001.cif, 1.10.cif and NA.cif: pandas read the ids as 1, 1.1 and NaN, so
    none joined its CIF (all three were 'labels without CIF')."""
    ids, paths, gaps = small_qmof
    folder = tmp_path / "set"
    folder.mkdir()
    names = ["0001", "1.10", "NA"]
    for name, path in zip(names, paths):
        (folder / f"{name}.cif").write_bytes(path.read_bytes())
    (folder / "labels.csv").write_text("id,bandgap_ev\n" + "".join(f"{n},{g}\n" for n, g in zip(names, gaps)))
    dataset = load_labelled_dataset(folder)
    assert sorted(dataset.table["id"]) == sorted(names) and dataset.report.labels_without_cif == []
    np.testing.assert_allclose(dataset.table.set_index("id").loc[names, "bandgap_ev"], gaps[:3])


def test_label_tables_as_excel_writes_them_join(tmp_path, small_qmof):
    """Excel saves CSV with ';' and decimal commas where the comma is the decimal mark, and its
    'Unicode text' as UTF-16 with tabs; the first was one column ('expected columns `id,<target>`'),
    the second a UnicodeDecodeError that named no file, as was a Latin-1 file."""
    ids, paths, gaps = small_qmof
    folder = copy_cifs(paths[:3], tmp_path / "set")
    for separator, decimal, encoding in ((";", ",", "utf-8"), ("\t", ".", "utf-16")):
        rows = [f"{i}{separator}{g:.4f}".replace(".", decimal) for i, g in zip(ids[:3], gaps[:3])]
        (folder / "labels.csv").write_text(f"id{separator}bandgap_ev\n" + "\n".join(rows) + "\n", encoding=encoding)
        dataset = load_labelled_dataset(folder)
        assert sorted(dataset.table["id"]) == sorted(ids[:3]), separator
        np.testing.assert_allclose(dataset.table.set_index("id").loc[ids[:3], "bandgap_ev"], gaps[:3], atol=1e-4)
    # a Latin-1 file (an accented id, 'é' as one byte) raised a UnicodeDecodeError
    (folder / f"{ids[0]}.cif").rename(folder / "MOF-\u00e9.cif")
    rows = ["MOF-\u00e9,1.5"] + [f"{i},{g}" for i, g in zip(ids[1:3], gaps[1:3])]
    (folder / "labels.csv").write_text("id,bandgap_ev\n" + "\n".join(rows) + "\n", encoding="latin-1")
    assert sorted(load_labelled_dataset(folder).table["id"]) == sorted(["MOF-\u00e9", *ids[1:3]])


def test_a_column_of_text_is_refused_and_a_few_unreadable_values_are_reported(tmp_path, small_qmof):
    """Gaps written with their unit ("1.2 eV") used to become NaN, one by one, and the fit then
    failed on an empty split without saying why."""
    ids, paths, gaps = small_qmof
    folder = copy_cifs(paths[:4], tmp_path / "set")
    rows = [f"{i},{g:.2f} eV" for i, g in zip(ids[:4], gaps[:4])]
    (folder / "labels.csv").write_text("id,gap\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"4 of 4 values of 'gap' are not numbers \(e.g. '.* eV'"):
        load_labelled_dataset(folder)
    rows = [f"{ids[0]},about 2"] + [f"{i},{g}" for i, g in zip(ids[1:4], gaps[1:4])]
    (folder / "labels.csv").write_text("id,gap\n" + "\n".join(rows) + "\n")
    dataset = load_labelled_dataset(folder)
    assert dataset.report.nan_labels == [ids[0]] and sorted(dataset.table["id"]) == sorted(ids[1:4])
    # an infinite label is left out and reported too; it used to stop the whole fit at the
    # target normaliser ('need at least two finite training targets')
    rows = [f"{ids[0]},inf", f"{ids[1]},1e999"] + [f"{i},{g}" for i, g in zip(ids[2:4], gaps[2:4])]
    (folder / "labels.csv").write_text("id,gap\n" + "\n".join(rows) + "\n")
    dataset = load_labelled_dataset(folder)
    assert dataset.report.nan_labels == ids[:2] and sorted(dataset.table["id"]) == sorted(ids[2:4])


def test_negative_gaps_are_reported_and_dropped_and_a_mostly_negative_column_is_refused(tmp_path, small_qmof):
    ids, paths, gaps = small_qmof
    folder = copy_cifs(paths[:4], tmp_path / "set")
    rows = [f"{ids[0]},-0.2", f"{ids[1]},{gaps[1]}", f"{ids[2]},{gaps[2]}", f"{ids[3]},0.0"]
    (folder / "labels.csv").write_text("id,bandgap_ev\n" + "\n".join(rows) + "\n")
    dataset = load_labelled_dataset(folder)
    assert dataset.report.negative_labels == [ids[0]] and dataset.report.cifs_without_label == []
    assert sorted(dataset.table["id"]) == sorted(ids[1:4])  # 0 eV is a gap (a metal), not an error
    rows = [f"{ids[i]},{-1.0 - i}" for i in range(3)] + [f"{ids[3]},{gaps[3]}"]  # e.g. formation energies
    (folder / "labels.csv").write_text("id,energy_ev\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="3 of 4 values of 'energy_ev' are negative"):
        load_labelled_dataset(folder)


def test_archive_is_unpacked_once(tmp_path, messy_folder):
    folder, _ = messy_folder
    archive_dir = tmp_path / "arch"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "set.tar.xz", "w:xz") as tar:
        for cif in folder.glob("*.cif"):
            tar.add(cif, arcname=f"structures/{cif.name}")
    (archive_dir / "labels.csv").write_text((folder / "labels.csv").read_text())
    first = unpack_archive_once(archive_dir / "set.tar.xz", tmp_path / "cache")
    marker_time = (first / ".complete").stat().st_mtime_ns
    second = unpack_archive_once(archive_dir / "set.tar.xz", tmp_path / "cache")
    assert first == second and (second / ".complete").stat().st_mtime_ns == marker_time
    dataset = load_labelled_dataset(archive_dir, cache_dir=tmp_path / "cache")
    assert len(dataset) == 2


def test_two_runs_share_one_unpack_of_the_same_archive(tmp_path, messy_folder):
    """The same archive, copied anew (a new session's ../shared) or reached by another path, maps to
    one unpacked folder: the key is the content, not the path or the modification time."""
    import os
    import shutil

    folder, _ = messy_folder
    first_dir, second_dir = tmp_path / "session1", tmp_path / "session2"
    first_dir.mkdir()
    with tarfile.open(first_dir / "set.tar.xz", "w:xz") as tar:
        for cif in folder.glob("*.cif"):
            tar.add(cif, arcname=f"structures/{cif.name}")
    shutil.copytree(first_dir, second_dir)
    os.utime(second_dir / "set.tar.xz", ns=(1, 1))  # another mtime, as a fresh copy has
    cache = tmp_path / "cache"
    first = unpack_archive_once(first_dir / "set.tar.xz", cache)
    second = unpack_archive_once(second_dir / "set.tar.xz", cache)
    assert first == second
    assert [p.name for p in (cache / "unpacked").iterdir() if p.is_dir()] == [first.name]


def test_data_location_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFBALORA_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "..") == tmp_path / ".."
    monkeypatch.setenv("MOFBALORA_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        resolve_data_dir()


def test_qmof_joins_completely(qmof_dataset):
    assert len(qmof_dataset) == 18372
    assert qmof_dataset.report.labels_without_cif == [] and qmof_dataset.report.nan_labels == []
    gaps = qmof_dataset.table[qmof_dataset.target].to_numpy()
    assert np.isclose(gaps.mean(), 2.09, atol=0.01)
