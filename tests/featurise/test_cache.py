import os

import pytest
import torch

from mofbalora.featurise import FeatureCache, featurise_paths, get_featuriser
from tests.conftest import cli_message


def test_cache_hit_on_rerun_and_corrupt_entry_rebuilt(tmp_path, small_qmof):
    _, paths, _ = small_qmof
    featuriser = get_featuriser("cgcnn")
    inputs = list(paths[:4]) + [tmp_path / "missing.cif"]
    broken = tmp_path / "broken.cif"
    broken.write_text("data_x\n_cell_length_a 1\n")
    inputs.append(broken)
    first = featurise_paths(inputs, featuriser, cache_dir=tmp_path / "c", workers=1, progress=False,
                            skipped_csv=tmp_path / "skipped.csv")
    assert (first.n_built, first.n_cache_hits) == (4, 0)
    assert sorted(first.skipped["id"]) == ["broken", "missing"]
    assert (tmp_path / "skipped.csv").read_text().count("\n") == 3
    second = featurise_paths(inputs, featuriser, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert (second.n_built, second.n_cache_hits) == (0, 4)
    for a, b in zip(first.samples, second.samples):
        torch.testing.assert_close(a.nbr_dist, b.nbr_dist)
    cache = FeatureCache(tmp_path / "c", featuriser)
    entries = sorted(cache.directory.rglob("*.pt"))
    entries[0].write_bytes(b"corrupt")
    third = featurise_paths(inputs, featuriser, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert (third.n_built, third.n_cache_hits) == (1, 3)
    assert not list(cache.directory.rglob("*.tmp"))


def test_parallel_workers_match_serial(tmp_path, small_qmof):
    _, paths, _ = small_qmof
    featuriser = get_featuriser("cgcnn")
    serial = featurise_paths(paths[:12], featuriser, cache_dir=None, workers=1, progress=False)
    parallel = featurise_paths(paths[:12], featuriser, cache_dir=tmp_path / "c", workers=2, progress=False)
    assert parallel.ids == serial.ids and parallel.n_built == 12
    for a, b in zip(serial.samples, parallel.samples):
        assert torch.equal(a.nbr_idx, b.nbr_idx)


def test_cache_key_changes_with_featuriser_config(tmp_path):
    a = FeatureCache(tmp_path, get_featuriser("cgcnn"))
    b = FeatureCache(tmp_path, get_featuriser("cgcnn", max_neighbours=8))
    assert a.directory != b.directory


def test_cache_hit_still_applies_max_atoms(tmp_path, small_qmof):
    """A structure cached under a generous limit is rejected on a hit under a tighter one."""
    from mofbalora.featurise.base import sample_num_atoms

    _, paths, _ = small_qmof
    featuriser = get_featuriser("cgcnn")
    first = featurise_paths(paths[:3], featuriser, cache_dir=tmp_path / "c", workers=1, progress=False)
    sizes = [sample_num_atoms(s) for s in first.samples]
    limit = min(sizes)
    second = featurise_paths(paths[:3], featuriser, cache_dir=tmp_path / "c", workers=1, progress=False,
                             max_atoms=limit)
    too_big = [i for i, n in zip(first.ids, sizes) if n > limit]
    assert too_big and sorted(second.skipped["id"]) == sorted(too_big)
    assert all(r.startswith("more atoms than max_atoms") for r in second.skipped["reason"])
    assert second.n_cache_hits == len(paths[:3]) - len(too_big)


def test_samples_carry_a_content_key(tmp_path, small_qmof):
    """The key depends on the structure only: same file elsewhere, same key; other structure, other key."""
    from mofbalora.data import read_structure
    from mofbalora.data.structures import structure_content_key

    _, paths, _ = small_qmof
    copy = tmp_path / "renamed.cif"
    copy.write_bytes(paths[0].read_bytes())
    result = featurise_paths([paths[0], copy, *paths[1:6]], get_featuriser("cgcnn"), cache_dir=None, workers=1,
                             progress=False)
    keys = [s.content_key for s in result.samples]
    assert keys[0] == keys[1] and len(set(keys[1:])) == 6
    assert keys[0] == structure_content_key(read_structure(paths[0]))
    shifted = read_structure(paths[0])
    shifted.translate_sites([0], [0.01, 0, 0], frac_coords=False)
    assert structure_content_key(shifted) != keys[0]


def test_content_key_survives_float_noise_and_an_ase_round_trip(small_qmof):
    """A coordinate written with five decimals ending in 5 (0.12345) sat exactly on a 1e-4 rounding
    boundary, so 1e-16 of noise changed the key and with it every BaLoRA draw of that structure."""
    import numpy as np
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from mofbalora.data import read_structure
    from mofbalora.data.structures import structure_content_key

    on_boundary = Structure(Lattice.cubic(10.0), ["Zn", "O"], [[0.12345, 0.5, 0.25], [0.0, 0.99995, 0.5]])
    nudged = Structure(Lattice.cubic(10.0), ["Zn", "O"], np.array(on_boundary.frac_coords) + 2e-16)
    assert structure_content_key(nudged) == structure_content_key(on_boundary)
    _, paths, _ = small_qmof
    for path in paths[:20]:
        structure = read_structure(path)
        round_trip = AseAtomsAdaptor.get_structure(AseAtomsAdaptor.get_atoms(structure))
        assert structure_content_key(round_trip) == structure_content_key(structure), path.name


def test_parallel_featurising_does_not_hold_a_file_per_tensor(tmp_path, small_qmof):
    """Samples built in worker processes must not come back as shared-memory file descriptors:
    the parent would hold several per sample and a QMOF-sized run exceeds the open-file limit."""
    import subprocess
    import sys
    import textwrap

    _, paths, _ = small_qmof
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))
        from mofbalora.featurise import featurise_paths, get_featuriser
        paths = {[str(p) for p in paths[:100]]!r}
        result = featurise_paths(paths, get_featuriser("cgcnn"), cache_dir=None, workers=2, progress=False)
        assert len(result.samples) + len(result.skipped) == 100, (len(result.samples), len(result.skipped))
        print("built", len(result.samples))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "built" in run.stdout


def test_a_compressed_copy_shares_the_cache_and_a_misnamed_file_is_skipped_whatever_is_cached(tmp_path, small_qmof):
    """The cache keys on the content as the reader sees it, so a hit never accepts a file the reader rejects."""
    import gzip

    _, paths, _ = small_qmof
    raw = paths[0].read_bytes()
    (tmp_path / "packed.cif.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "not_packed.cif.gz").write_bytes(raw)  # plain CIF bytes under a .gz name
    featuriser = get_featuriser("cgcnn")
    first = featurise_paths([paths[0]], featuriser, cache_dir=tmp_path / "c", workers=1, progress=False)
    second = featurise_paths([tmp_path / "packed.cif.gz", tmp_path / "not_packed.cif.gz"], featuriser,
                             cache_dir=tmp_path / "c", workers=1, progress=False)
    assert (second.ids, second.n_cache_hits, second.n_built) == (["packed"], 1, 0)
    torch.testing.assert_close(second.samples[0].nbr_dist, first.samples[0].nbr_dist)
    assert list(second.skipped["id"]) == ["not_packed"]
    assert second.skipped["reason"].iloc[0].startswith("unreadable or not a CIF: Not a gzipped file")


def test_the_cache_key_carries_the_reader_and_featuriser_rules(tmp_path, monkeypatch):
    """An entry cached under other reader rules (a file the reader then accepted) or other
    featuriser rules (another neighbour order) is not served."""
    import mofbalora.featurise.base as base
    from mofbalora.featurise.cgcnn import CGCNNFeaturiser

    now = FeatureCache(tmp_path, get_featuriser("cgcnn"))
    monkeypatch.setattr(base, "READER_RULES", base.READER_RULES - 1)
    before = FeatureCache(tmp_path, get_featuriser("cgcnn"))
    assert before.directory != now.directory
    monkeypatch.undo()
    monkeypatch.setattr(CGCNNFeaturiser, "rules", CGCNNFeaturiser.rules - 1)
    assert FeatureCache(tmp_path, get_featuriser("cgcnn")).directory not in (now.directory, before.directory)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's sysfs, which refuses new files")
def test_an_unwritable_cache_costs_time_not_the_run(small_qmof, caplog, tmp_path):
    """A cache folder that cannot be written ($MOFBALORA_CACHE on a read-only mount) stopped predict
    with a traceback; the structures are featurised without it, with one warning per process.
    `mofbalora featurise`, whose job is the cache, refuses it up front."""
    import logging

    from typer.testing import CliRunner

    from mofbalora.cli import app

    _, paths, _ = small_qmof
    featuriser = get_featuriser("cgcnn")
    unwritable = f"/sys/mofbalora-{tmp_path.name}"  # a name no other test warned about
    with caplog.at_level(logging.WARNING, logger="mofbalora.featurise.runner"):
        first = featurise_paths(paths[:3], featuriser, cache_dir=unwritable, workers=1, progress=False)
        second = featurise_paths(paths[:3], featuriser, cache_dir=unwritable, workers=1, progress=False)
    assert len(first.samples) == len(second.samples) == 3 and first.n_cache_hits == 0
    warned = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(warned) == 1  # once per process, not once per chunk
    result = CliRunner().invoke(app, ["featurise", str(paths[0]), "--cache-dir", unwritable])
    assert result.exit_code == 2 and "cannot write there" in cli_message(result.output)

