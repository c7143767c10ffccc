"""The shipped release model: present, small, documented, the CLI default, and its predictions pinned.

These run on real CoRE-MOF CIFs from the ``core-mof`` package (public, unlabelled), with a fresh
feature cache, and need neither QMOF nor training nor the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mofbalora.cli import app
from mofbalora.pretrained import DEFAULT_MODEL, SHIPPED, resolve_model, shipped_models
from tests.conftest import cli_message

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("pretrained_expected.json")
RELEASE = SHIPPED[0]


@pytest.fixture(scope="module")
def coremof_cifs(tmp_path_factory):
    from mofbalora.data.coremof import extract_coremof

    folder = tmp_path_factory.mktemp("coremof")
    return folder, extract_coremof(folder / "cifs", limit=12)


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFBALORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_release_model_ships_complete_small_and_documented():
    folder = resolve_model(None)
    assert folder == RELEASE.folder and DEFAULT_MODEL == RELEASE.alias
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 5 * 1024 * 1024
    record = json.loads((folder / "release.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    mae = record["test"]["mae_ev"]
    # the card's figures are the committed run's, not typed in
    assert f"{mae['value']:.3f} [{mae['ci_low']:.3f}, {mae['ci_high']:.3f}]" in card
    assert record["data"]["split_sha256"] in card and "CC BY 4.0" in card
    meta = json.loads((folder / "model.json").read_text())
    assert meta["calibration"]["samples"] == record["calibration"]["samples"]
    assert "/" not in meta["data"]["source"]  # no path of the machine that trained it
    assert len(json.loads((folder / "split.json").read_text())["test"]) == record["data"]["n_test"]


def test_models_lists_each_shipped_model_with_its_test_figures():
    """One line per model in the wheel (one per release: earlier ones come from their git tags), with
    the figures of its own release.json."""
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "missing" not in result.output
    lines = [line for line in result.output.splitlines() if not line.startswith(" ")]
    assert len(lines) == len(SHIPPED) == len(shipped_models())
    for shipped, line in zip(SHIPPED, lines):
        test = json.loads((shipped.folder / "release.json").read_text())["test"]
        assert line.startswith(f"{shipped.alias}{' (default)' if shipped.alias == DEFAULT_MODEL else ''}:")
        assert f"test MAE {test['mae_ev']['value']:.3f} eV" in line
        assert f"below 0.5 eV {test['small_gap_coverage_95']['value']:.2f}" in line
        assert f"ρ(std, |error|) {test['spearman_calibrated_std_abs_error']['value']:.2f}" in line


def test_unknown_model_name_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["predict", "--model", "qmof-hse", str(tmp_path)])
    names = ", ".join(m.alias for m in SHIPPED)
    assert result.exit_code == 2 and f"not a shipped model ({names})" in cli_message(result.output)


def test_a_retired_release_names_the_tag_that_has_it(tmp_path):
    """A screen made with an earlier release names it; asking for it says where it went."""
    from mofbalora.pretrained import RETIRED

    for alias, version in RETIRED.items():
        with pytest.raises(FileNotFoundError, match=f"retired release.*git checkout v{version} && make install"):
            resolve_model(alias)
    with pytest.raises(FileNotFoundError, match="--intervals central"):
        resolve_model("qmof-pbe-v2.3")


def test_a_model_folder_under_home_is_found_from_python(tmp_path, monkeypatch):
    """``load_model("~/runs/x")``, ``predict("~/mofs")``, ``--data ~/data`` from a config: no shell
    expands the ~ in Python."""
    from mofbalora.data.datasets import resolve_data_dir
    from mofbalora.data.structures import expand_inputs

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "mofs").mkdir()
    (tmp_path / "mofs" / "a.cif").write_text("")
    assert resolve_model("~/runs/x") == tmp_path / "runs" / "x"
    assert expand_inputs(["~/mofs", "~/mofs/*.cif"]) == [tmp_path / "mofs" / "a.cif"] * 2
    assert resolve_data_dir("~/mofs") == tmp_path / "mofs"


def test_a_model_folder_named_like_a_shipped_model_is_not_passed_over_silently(tmp_path, monkeypatch):
    """``fit --out qmof-pbe`` then ``--model qmof-pbe`` predicted with the shipped model, not the
    user's; the name is refused as ambiguous, ./qmof-pbe is the folder, no --model the default."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qmof-pbe").mkdir()
    (tmp_path / "qmof-pbe" / "model.json").write_text("{}")
    with pytest.raises(ValueError, match="names a shipped model and also the model folder"):
        resolve_model("qmof-pbe")
    assert resolve_model("./qmof-pbe") == Path("qmof-pbe")
    assert resolve_model(None) == RELEASE.folder
    (tmp_path / RELEASE.folder_name).mkdir()  # a folder without a model is no model: the shipped one
    assert resolve_model(RELEASE.folder_name) == RELEASE.folder


def test_screen_uses_the_shipped_model_by_default(coremof_cifs, fresh_cache, tmp_path):
    folder, _ = coremof_cifs
    out = tmp_path / "screen.csv"
    env = {**os.environ, "MOFBALORA_CACHE": str(fresh_cache)}
    done = subprocess.run([sys.executable, "-m", "mofbalora.cli", "screen", "--gap", "1.5:3.0", str(folder / "cifs"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out)
    assert len(table) == 12
    ok = table[table.status == "ok"]
    assert len(ok) >= 8
    assert list(table["status"][:len(ok)]) == ["ok"] * len(ok)  # skipped rows rank last
    assert ok["p_in_window"].is_monotonic_decreasing and list(ok["rank"]) == list(range(1, len(ok) + 1))
    assert (ok["lower_95_ev"] < ok["bandgap_mean_ev"]).all() and (ok["bandgap_mean_ev"] < ok["upper_95_ev"]).all()
    explicit = tmp_path / "explicit.csv"  # in process: the CLI's code path, without a second start-up
    result = CliRunner().invoke(app, ["screen", "--model", "qmof-pbe", "--gap", "1.5:3.0", str(folder / "cifs"),
                                      "--out", str(explicit)])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(explicit), table)


def _pinned_predictions(cifs: list[Path]) -> dict[str, dict[str, float]]:
    from mofbalora.predict import load_model

    model = load_model(resolve_model(None))
    table = model.predict(cifs[:6], window_ev=(1.5, 3.0))  # at the calibrated S, the default
    columns = ["bandgap_mean_ev", "bandgap_std_ev", "bandgap_std_epistemic_ev", "bandgap_std_aleatoric_ev",
               "lower_95_ev", "upper_95_ev", "p_in_window", "p_metallic"]
    return {row["id"]: {c: float(row[c]) for c in columns} | {"status": row["status"]}
            for row in table.to_dict("records")}


def test_shipped_model_predictions_are_pinned(coremof_cifs, fresh_cache):
    """Set MOFBALORA_REPIN=1 to rewrite the pins after a deliberate change of the model."""
    _, cifs = coremof_cifs
    current = _pinned_predictions(cifs)
    if os.environ.get("MOFBALORA_REPIN") == "1":  # the new pins are checked by the next run, not this one
        PINNED.write_text(json.dumps(current, indent=1) + "\n")
        pytest.skip(f"pins rewritten to {PINNED}; rerun without MOFBALORA_REPIN to check them")
    expected = json.loads(PINNED.read_text())
    assert sorted(current) == sorted(expected)
    assert sum(v["status"] == "ok" for v in expected.values()) >= 4
    for structure_id, values in expected.items():
        assert current[structure_id]["status"] == values["status"], structure_id  # a skipped CIF stays skipped
        for column, value in values.items():
            if column != "status" and values["status"] == "ok":
                assert np.isclose(current[structure_id][column], value, rtol=1e-4, atol=1e-4), (structure_id, column)


def test_wheel_carries_the_release_model_and_no_study_code(tmp_path):
    """What users run, and nothing else: the shipped model, no pipelines, benchmarks or tests, and
    no file stored twice; at most 8 MB."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("mofbalora-*.whl"))
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    shipped = {str(p.relative_to(ROOT)) for model in SHIPPED for p in model.folder.rglob("*") if p.is_file()}
    assert shipped and shipped <= names
    packages = {name.split("/")[0] for name in names if not name.startswith("mofbalora-")}
    assert packages == {"mofbalora"}, packages
    assert not any(part in name for name in names for part in ("/analysis/", "synthetic"))
    digests = [hashlib.sha256(archive.read(name)).hexdigest() for name in names if not name.endswith("/")
               and archive.getinfo(name).file_size > 1024]
    assert len(digests) == len(set(digests)), "a file is stored twice in the wheel"
    assert wheel.stat().st_size <= 8 * 1024 * 1024


def test_no_negative_gap_where_the_raw_mean_is_below_zero(tmp_path, fresh_cache):
    """ACIBIY (CoRE-MOF 2019-ASR) got a mean of −0.42 eV in the first release's screen. AKOHEO's raw
    mean of the shipped model's draws is below 0 eV; what is reported (mean, bounds, window
    probabilities) respects gap ≥ 0, with either interval choice."""
    from mofbalora.data import read_structure
    from mofbalora.data.coremof import extract_coremof
    from mofbalora.predict import load_model

    cif = next(p for p in extract_coremof(tmp_path / "cifs", limit=144) if p.stem == "AKOHEO_clean")
    model = load_model(resolve_model(None))
    sample = model.backbone.make_featuriser().featurise(read_structure(cif), cif.stem)
    assert model.predictive([sample]).mean[0] < 0  # the case this test is about
    for intervals in ("calibrated", "central"):
        row = load_model(resolve_model(None), intervals=intervals).predict([cif], window_ev=(0.0, 0.5)).iloc[0]
        assert row["status"] == "ok" and row["bandgap_mean_ev"] >= 0
        assert 0 <= row["lower_95_ev"] <= row["upper_95_ev"] and row["upper_95_ev"] > 0
        # nearly all of its calibrated mass lies in [0, 0.5] eV, the point mass at 0 included
        assert row["p_in_window"] > 0.9 and row["p_metallic"] > 0.5


def test_central_intervals_move_only_the_interval(coremof_cifs, fresh_cache, tmp_path):
    """``--intervals central`` leaves 2.5% on each side: the same means, stds and
    probabilities, and intervals shifted up against the calibrated ones (these leave 1.5% below and
    3.5% above); the CLI and Python agree."""
    from mofbalora.predict import load_model

    _, cifs = coremof_cifs
    paths = [p for p in cifs if _pinned_ok(p)][:3]
    calibrated = load_model(resolve_model(None)).predict(paths, window_ev=(1.5, 3.0))
    central = load_model(resolve_model(None), intervals="central").predict(paths, window_ev=(1.5, 3.0))
    same = ["bandgap_mean_ev", "bandgap_std_ev", "p_in_window", "p_metallic"]
    pd.testing.assert_frame_equal(calibrated[same], central[same])
    assert (central["lower_95_ev"] >= calibrated["lower_95_ev"]).all()  # both often clipped at 0 eV
    assert (central["upper_95_ev"] > calibrated["upper_95_ev"]).all()
    out = tmp_path / "central.csv"
    result = CliRunner().invoke(app, ["predict", *map(str, paths), "--intervals", "central", "-o", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(pd.read_csv(out)["lower_95_ev"], central["lower_95_ev"], rtol=1e-9)
    result = CliRunner().invoke(app, ["predict", str(paths[0]), "--intervals", "wide", "-o", str(out)])
    assert result.exit_code == 2 and "intervals must be one of calibrated, central" in cli_message(result.output)


def test_predict_prints_no_lightning_banner(coremof_cifs, fresh_cache, tmp_path):
    """A user sees one progress bar and a summary, not Lightning's start-up messages or library
    warnings once per chunk (those come with --verbose)."""
    folder, _ = coremof_cifs
    env = {**os.environ, "MOFBALORA_CACHE": str(fresh_cache)}
    quiet = subprocess.run([sys.executable, "-m", "mofbalora.cli", "predict", str(folder / "cifs"), "--out",
                            str(tmp_path / "p.csv"), "--chunk-size", "4"], capture_output=True, text=True,
                           timeout=600, env=env)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    output = quiet.stdout + quiet.stderr
    for banner in ("GPU available", "TPU available", "Tip:", "Warning", "warn("):
        assert banner not in output, (banner, output[-2000:])
    assert "predicted" in quiet.stderr and "MOF" in quiet.stderr  # the summary and the progress bar


def test_top_level_load_model_predicts_paths_structures_and_atoms_in_one_list(coremof_cifs, fresh_cache):
    """``mofbalora.load_model(name).predict([...])`` as matgl's and CHGNet's loaders work: a path, a
    pymatgen Structure and an ASE Atoms of the same MOF give the same prediction in one call, and
    ``screen`` ranks them like the CLI."""
    from pymatgen.core import IStructure
    from pymatgen.io.ase import AseAtomsAdaptor

    import mofbalora
    from mofbalora.data import read_structure

    _, cifs = coremof_cifs
    model = mofbalora.load_model("qmof-pbe")
    assert model.folder == resolve_model("qmof-pbe")
    path = next(p for p in cifs if _pinned_ok(p))
    structure = read_structure(path)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    frozen = IStructure.from_sites(structure)  # pymatgen's immutable kind was refused as 'not a Structure'
    table = model.predict([path, structure, atoms, frozen])
    assert list(table["status"]) == ["ok"] * 4
    assert list(table["id"]) == [path.stem, "structure_1", "structure_2", "structure_3"]
    values = table[["bandgap_mean_ev", "bandgap_std_ev", "lower_95_ev", "upper_95_ev"]].to_numpy()
    for other in values[1:]:
        np.testing.assert_allclose(other, values[0], atol=1e-5)
    ranked = model.screen([atoms, path], gap_ev=(1.5, 3.0))
    assert list(ranked["rank"]) == [1, 2]
    window = model.predict([path], window_ev=(1.5, 3.0))["p_in_window"].iloc[0]
    np.testing.assert_allclose(ranked["p_in_window"], [window, window], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a shipped model"):
        mofbalora.load_model("no-such-model")


def test_in_memory_inputs_get_the_checks_a_cif_gets_and_a_bad_one_loses_nothing(coremof_cifs, fresh_cache):
    """A molecule (ASE Atoms without a cell), a disordered Structure and one with atoms 0.01 Å apart
    are skipped with the reasons a CIF would get, beside a MOF that is still predicted; the molecule
    used to raise numpy's LinAlgError for the whole call, the close atoms were predicted. A lone
    atom in a 10 Å cell, whose CGCNN graph upstream pads with empty neighbours, was predicted at a
    mean of about 4,000 eV; it is refused by the featuriser. A MOF as ASE Atoms with pbc=False was
    featurised as a finite cluster."""
    from ase.build import molecule
    from pymatgen.core import Lattice, Structure

    import mofbalora
    from mofbalora.data import read_structure

    _, cifs = coremof_cifs
    path = next(p for p in cifs if _pinned_ok(p))
    disordered = Structure(Lattice.cubic(10.0), [{"Zn": 0.5, "Cu": 0.5}, "O"], [[0, 0, 0], [0.2, 0, 0]])
    too_close = Structure(Lattice.cubic(10.0), ["Zn", "O"], [[0, 0, 0], [0.001, 0, 0]])
    lone_atom = Structure(Lattice.cubic(10.0), ["Xe"], [[0, 0, 0]])
    oganesson = Structure(Lattice.cubic(4.0), ["Og", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cluster = read_structure(path).to_ase_atoms()
    cluster.pbc = False  # a cell, but not periodic: was featurised as a cluster
    table = mofbalora.load_model("qmof-pbe").predict([molecule("H2O"), disordered, too_close, lone_atom, oganesson,
                                                      cluster, path])
    assert list(table["status"]) == ["skipped"] * 6 + ["ok"]
    reasons = list(table["reason"])
    assert reasons[0].startswith("no 3-D lattice") and reasons[1] == "partial occupancy or disorder"
    assert reasons[2].startswith("atoms closer than 0.5 Å")
    assert reasons[3].startswith("featurisation failed") and "1 of 1 atoms have fewer than 12 neighbours within 8 Å" in reasons[3]
    assert reasons[4].endswith("no CGCNN atom_init features for Og")
    assert reasons[5].startswith("no 3-D lattice: not periodic in every direction (pbc (False, False, False))")


def test_a_bad_window_or_sample_count_is_refused_before_any_work(coremof_cifs, tmp_path):
    """A reversed, empty, NaN or three-number window, S = 0 and a seed torch cannot take are refused
    before featurising (the feature cache stays empty): the window used to fail only after every
    structure was predicted, S = 0 was a ZeroDivisionError."""
    import mofbalora

    _, cifs = coremof_cifs
    model = mofbalora.load_model("qmof-pbe")
    cache = tmp_path / "cache"
    for window in [(3.0, 1.5), (2.0, 2.0), (float("nan"), 2.0), (1.0, 2.0, 3.0)]:
        with pytest.raises(ValueError, match="window"):
            model.predict(cifs[:2], window_ev=window, cache_dir=cache)
        with pytest.raises(ValueError, match="window"):
            model.screen(cifs[:2], gap_ev=window[:2] if len(window) == 2 else window, cache_dir=cache)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        model.predict(cifs[:2], samples=0, cache_dir=cache)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        model.predict_draws([], n_samples=0)
    with pytest.raises(ValueError, match="seed must lie in"):  # it failed mid-run: 'Overflow when unpacking'
        model.predict(cifs[:2], seed=2**64, cache_dir=cache)
    assert not cache.exists()
    for gap in ["3:1.5", "1:2:3", "a:b"]:
        result = CliRunner().invoke(app, ["screen", str(cifs[0]), "--gap", gap, "-o", str(tmp_path / "s.csv")])
        assert result.exit_code == 2 and "expected LOW:HIGH" in cli_message(result.output), (gap, result.output)
    result = CliRunner().invoke(app, ["predict", str(cifs[0]), "--seed", str(2**64), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "seed must lie in" in cli_message(result.output) and not (tmp_path / "p.csv.parts").exists()


def test_a_larger_cell_limit_can_be_asked_for(coremof_cifs, tmp_path):
    """Cells above 1,000 atoms (559 of CoRE-MOF's 12,020) could not be screened at all: predict and
    screen had no --max-atoms, only validate did. The limit now goes both ways, from Python and
    from the command line, and the CLI's default is the library's."""
    import mofbalora
    from mofbalora.cli import MAX_ATOMS
    from mofbalora.data import read_structure
    from mofbalora.data.structures import DEFAULT_MAX_ATOMS

    assert MAX_ATOMS.default == DEFAULT_MAX_ATOMS
    _, cifs = coremof_cifs
    path = next(p for p in cifs if _pinned_ok(p))
    n_atoms = len(read_structure(path))
    model = mofbalora.load_model("qmof-pbe")
    refused = model.predict([path], max_atoms=n_atoms - 1).iloc[0]
    assert refused["status"] == "skipped" and refused["reason"] == f"more atoms than max_atoms: {n_atoms} > {n_atoms - 1}"
    assert model.predict([path], max_atoms=n_atoms).iloc[0]["status"] == "ok"
    result = CliRunner().invoke(app, ["predict", str(path), "--max-atoms", str(n_atoms - 1), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "0 predicted, 1 skipped" in result.output


def _pinned_ok(path: Path) -> bool:
    return json.loads(PINNED.read_text()).get(path.stem, {}).get("status") == "ok"


def test_noise_feature_of_a_structure_does_not_depend_on_batch_or_threads():
    """A prediction depends on the structure, not on its neighbours in the input list: the shipped
    head's kNN features of training compositions (many near-ties after per-element
    standardisation) are the same in one batch on 2 BLAS threads as one at a time on 1, and so
    is σ_n, bit for bit."""
    from threadpoolctl import threadpool_limits

    from mofbalora.backbones.heads import COMPOSITION_INPUTS
    from mofbalora.predict import load_model

    folder = next(model.folder for model in shipped_models()
                  if (json.loads((model.folder / "model.json").read_text()).get("noise_head") or {}).get("inputs")
                  in COMPOSITION_INPUTS)
    head = load_model(folder).noise_head
    counts = head._reference_counts()[::50].long().numpy()
    z = torch.randn(len(counts), len(head.z_mean), generator=torch.Generator().manual_seed(0))
    with threadpool_limits(limits=2):
        batch = head.neighbour_features(z, counts)
    with threadpool_limits(limits=1):
        single = torch.cat([head.neighbour_features(z[i:i + 1], counts[i:i + 1]) for i in range(len(counts))])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-6)
    mean = torch.linspace(-1, 2, len(counts))  # and σ_n itself, to the last bit
    with torch.no_grad():
        whole = head(z, mean, element_counts=counts)
        apart = torch.cat([head(z[i:i + 1], mean[i:i + 1], element_counts=counts[i:i + 1]) for i in range(len(counts))])
    assert torch.equal(whole, apart)


def test_a_sample_count_other_than_the_calibrated_one_is_named(coremof_cifs, fresh_cache, tmp_path):
    """`--samples` other than the S the intervals were calibrated at gets one warning line; S = 1 also
    says that the epistemic-std OOD flag cannot fire. The calibrated S (the default) warns of nothing."""
    from mofbalora.predict import load_model

    _, cifs = coremof_cifs
    paths = [str(p) for p in cifs if _pinned_ok(p)][:2]
    runner = CliRunner()
    calibrated = load_model(resolve_model(None)).default_samples
    for samples, expected in ((None, None), (calibrated, None), (calibrated * 2, f"at S = {calibrated * 2}"),
                              (1, "no structure is flagged by its epistemic std")):
        args = ["predict", *paths, "--out", str(tmp_path / f"p{samples}.csv")]
        result = runner.invoke(app, args + (["--samples", str(samples)] if samples else []))
        assert result.exit_code == 0, result.output
        warned = [line for line in result.output.splitlines() if line.startswith("warning: the model was calibrated")]
        if expected is None:
            assert not warned, result.output
        else:
            assert len(warned) == 1 and expected in warned[0] and f"calibrated at S = {calibrated}" in warned[0]
    # the Python API (a notebook) says the same, as a UserWarning; the calibrated S says nothing
    model = load_model(resolve_model(None))
    with pytest.warns(UserWarning, match=f"calibrated at S = {calibrated}; at S = 1 .*no structure is flagged"):
        model.predict(paths[:1], samples=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.predict(paths[:1], samples=calibrated)
