"""The per-structure data-noise head: a known answer on synthetic data, and the stage on real QMOF."""

import json

import numpy as np
import pytest
import torch

from mofbalora.backbones.heads import DataNoiseHead
from mofbalora.training.noise_head import NoiseHeadConfig, fit_noise_head, load_uncertainty_config
from tests.conftest import ROOT

from .conftest import tiny_config

CONFIG_FILE = "pipelines/configs/uncertainty.yaml"


def _clusters(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Two clusters of embeddings; the truth scatters 10x more around the mean in cluster 1."""
    generator = torch.Generator().manual_seed(seed)
    cluster = torch.arange(n) % 2
    z = torch.randn(n, 8, generator=generator) * 0.3 + cluster[:, None] * 2.0
    mean = torch.randn(n, generator=generator)
    truth = mean + torch.randn(n, generator=generator) * torch.where(cluster == 1, 1.0, 0.1)
    return z, mean, truth


def _fit_on_clusters(inputs: str, config: NoiseHeadConfig) -> tuple:
    """A head fitted on :func:`_clusters`; (head, train, z, mean, σ_n, quiet median, noisy median) on fresh ones."""
    train, val = _clusters(2000, 0), _clusters(500, 1)
    head = fit_noise_head(inputs=inputs, config=config, std_scale=1.0, train=train, val=val)
    z, mean, _ = _clusters(1000, 2)
    with torch.no_grad():
        std = head(z, mean)
    return head, train, z, mean, std, std[::2].median().item(), std[1::2].median().item()


def test_embedding_head_learns_which_cluster_is_noisy():
    config = NoiseHeadConfig(epochs=300, patience=30, floor_ev=0.01)
    _, train, z, mean, _, quiet, noisy = _fit_on_clusters("embedding", config)
    assert quiet == pytest.approx(0.1, rel=0.3) and noisy == pytest.approx(1.0, rel=0.2)
    val = _clusters(500, 1)
    constant = fit_noise_head(inputs="constant", config=config, std_scale=1.0, train=train, val=val)
    with torch.no_grad():
        values = constant(z, mean)
    assert torch.allclose(values, values[0]) and values[0].item() == pytest.approx(np.sqrt((0.01 + 1) / 2), rel=0.15)


def test_neighbours_head_learns_the_local_error_scale_from_neighbours_alone(tmp_path):
    """The ``neighbours`` variant sees only its kNN residual feature: it recovers each cluster's
    scale, and two structures with the same neighbours get the same σ_n whatever else z says."""
    from mofbalora.model_folder import load_noise_head, save_noise_head, save_train_embeddings

    config = NoiseHeadConfig(epochs=300, patience=30, floor_ev=0.01, neighbours=10)
    head, train, z, mean, std, quiet, noisy = _fit_on_clusters("neighbours", config)
    assert quiet == pytest.approx(0.1, rel=0.35) and noisy == pytest.approx(1.0, rel=0.25)
    assert head.mlp[0].in_features == 1
    with torch.no_grad():  # the same neighbour feature, another mean: the same σ_n
        torch.testing.assert_close(head(z[:5], mean[:5]), head(z[:5], mean[:5] + 3.0))
    save_train_embeddings(tmp_path, train[0])
    loaded = load_noise_head(tmp_path, save_noise_head(tmp_path, head))
    with torch.no_grad():
        torch.testing.assert_close(loaded(z[:7], mean[:7]), std[:7])


def _chemistry(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Embeddings that say nothing; the truth scatters 10x more around the mean for the Cu
    frameworks (odd rows) than for the Zn ones, which share one composition each."""
    from mofbalora.featurise.base import N_ELEMENT_COLUMNS

    generator = torch.Generator().manual_seed(seed)
    copper = torch.arange(n) % 2 == 1
    counts = torch.zeros(n, N_ELEMENT_COLUMNS, dtype=torch.int64)
    counts[:, 6], counts[:, 8], counts[:, 1] = 8, 4, 6  # C8 O4 H6 linker atoms
    counts[copper, 29] = 2
    counts[~copper, 30] = 2
    z = torch.randn(n, 8, generator=generator)
    mean = torch.randn(n, generator=generator)
    truth = mean + torch.randn(n, generator=generator) * torch.where(copper, 1.0, 0.1)
    return z, mean, truth, counts


def test_composition_head_learns_which_chemistry_is_noisy(tmp_path):
    """Where z carries no information and the composition does, ``neighbours+composition``
    recovers each chemistry's scale and ``neighbours`` (z alone) cannot; the head survives
    saving with its sparse training compositions, and refuses to run without counts."""
    from mofbalora.model_folder import load_noise_head, save_noise_head, save_train_embeddings

    config = NoiseHeadConfig(epochs=300, patience=30, floor_ev=0.01, neighbours=10, composition_neighbours=50)
    (*train, train_counts), (*val, val_counts) = _chemistry(2000, 0), _chemistry(500, 1)
    z, mean, _, counts = _chemistry(400, 2)
    stds = {}
    for inputs in ("neighbours", "neighbours+composition"):
        head = fit_noise_head(inputs=inputs, config=config, std_scale=1.0, train=tuple(train), val=tuple(val),
                              element_counts=(train_counts, val_counts))
        with torch.no_grad():
            stds[inputs] = head(z, mean, element_counts=counts)
    composition = stds["neighbours+composition"]
    assert composition[::2].median().item() == pytest.approx(0.1, rel=0.35)
    assert composition[1::2].median().item() == pytest.approx(1.0, rel=0.25)
    blind = stds["neighbours"]
    assert blind[1::2].median() / blind[::2].median() < 2  # z alone cannot tell the two apart
    assert len(head.reference_elements) == 4 * 2000  # four elements a structure, stored sparse
    save_train_embeddings(tmp_path, train[0])
    loaded = load_noise_head(tmp_path, save_noise_head(tmp_path, head))
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, mean, element_counts=counts.numpy()), composition)
    with pytest.raises(ValueError, match="element counts"):
        loaded(z, mean)


def test_a_training_structure_is_not_its_own_neighbour_among_duplicates():
    """Five training structures with one composition: with k = 4 each one's feature is the mean
    |residual| of the other four, whichever order the tied neighbours come back in."""
    from mofbalora.featurise.base import N_ELEMENT_COLUMNS

    counts = torch.zeros(5, N_ELEMENT_COLUMNS, dtype=torch.int64)
    counts[:, 30], counts[:, 8] = 1, 1
    residual = torch.tensor([0.1, 0.2, 0.4, 0.8, 1.6])
    head = DataNoiseHead(embedding_dim=2, inputs="neighbours+composition", hidden=4, floor=0.01, neighbours=4,
                         n_reference=5, composition_neighbours=4)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    head.set_reference(z, initial_std=0.5).set_neighbours(z, residual, counts)
    others = (residual.sum() - residual) / 4
    torch.testing.assert_close(head.neighbour_features(z, counts, exclude_self=True)[:, 1],
                               torch.log(0.02 + others))


def test_floor_and_bad_settings():
    head = DataNoiseHead(embedding_dim=4, inputs="embedding+mean", hidden=8, floor=0.3)
    head.set_reference(torch.randn(50, 4), initial_std=0.2)  # below the floor: starts at the floor
    with torch.no_grad():
        head.bias.fill_(-50.0)
        assert torch.allclose(head(torch.randn(5, 4), torch.zeros(5)), torch.full((5,), 0.3))
    with pytest.raises(ValueError, match="inputs must be one of"):
        DataNoiseHead(embedding_dim=4, inputs="graph", hidden=8, floor=0.1)
    with pytest.raises(ValueError, match="non-empty subset"):
        NoiseHeadConfig(variants=["constant", "graph"])


def test_declared_config_is_what_the_defaults_are():
    """The CLI (no YAML) and the pipelines (the YAML) use the same declared rule."""
    from mofbalora.fit_calibrate import CalibrationSettings

    declared = load_uncertainty_config(ROOT / CONFIG_FILE)
    assert declared["noise_head"] == NoiseHeadConfig()
    assert CalibrationSettings.from_dict(declared["calibration"]) == CalibrationSettings()


@pytest.mark.qmof
def test_noise_stage_on_real_qmof(tmp_path, tiny_dataset):
    """Smoke setting: fit a LoRA model, then the head stage chooses a variant on validation and
    predictions carry a per-structure aleatoric std at or above the floor."""
    from mofbalora.data.splits import Split
    from mofbalora.fit_calibrate import fit_calibrated
    from mofbalora.predict import load_model

    config = NoiseHeadConfig(epochs=50, patience=10)
    folder = fit_calibrated(tiny_config("lora", epochs=2), data=tiny_dataset, out_dir=tmp_path / "lora",
                            noise_head=config, progress=False)
    meta = json.loads((folder / "model.json").read_text())
    record = meta["noise_head"]
    assert [row["inputs"] for row in record["selection"]] == list(config.variants)
    best = min(record["selection"], key=lambda row: row["val_nll_total"])
    assert record["chosen"] == best["inputs"] and (folder / record["file"]).exists()
    assert meta["calibration"]["conformal"]["normalised"]  # normalised by sigma_n(x) although LoRA has no epistemic std
    split = Split.load(folder / "split.json")
    table = load_model(folder).predict([tiny_dataset / f"{i}.cif" for i in split.test])
    aleatoric = table["bandgap_std_aleatoric_ev"]
    assert (aleatoric >= config.floor_ev - 1e-9).all() and table["bandgap_std_epistemic_ev"].isna().all()
    if record["chosen"] != "constant":
        assert aleatoric.nunique() == len(table)
    assert (table["bandgap_mean_ev"] >= 0).all() and (table["lower_95_ev"] >= 0).all()
    assert table["p_metallic"].between(0, 1).all()
    # the composition-aware head through the whole path: stage, saved folder, predict on CIFs
    from mofbalora.fit_calibrate import complete_uncertainty_stages

    complete_uncertainty_stages(folder, data=tiny_dataset, noise_head=NoiseHeadConfig(
        epochs=50, patience=10, variants=("neighbours+composition",)))
    composition = load_model(folder)
    assert composition.noise_head.needs_composition
    table = composition.predict([tiny_dataset / f"{i}.cif" for i in split.test])
    aleatoric = table["bandgap_std_aleatoric_ev"]
    assert (aleatoric >= config.floor_ev - 1e-9).all() and aleatoric.nunique() == len(table)
    assert table["upper_95_ev"].gt(table["lower_95_ev"]).all()


def test_neighbour_feature_reads_the_nearest_training_residuals(tmp_path):
    """The neighbour variant's input is the log mean |residual| of the k nearest training
    structures, without the structure itself when it is one of them; it survives saving."""
    from mofbalora.model_folder import TRAIN_EMBEDDINGS_FILE, load_noise_head, save_noise_head, save_train_embeddings

    z, mean, truth = _clusters(400, 3)
    head = DataNoiseHead(embedding_dim=8, inputs="embedding+neighbours", hidden=4, floor=0.01, neighbours=5,
                         n_reference=400)
    head.set_reference(z, initial_std=0.5).set_neighbours(z, (truth - mean).abs())
    quiet, noisy = head.neighbour_features(z[:2])[:, 0]  # row 0 in the quiet cluster, row 1 in the noisy one
    assert float(torch.exp(quiet)) == pytest.approx(0.02 + 0.1 * np.sqrt(2 / np.pi), abs=0.05)
    assert float(torch.exp(noisy)) == pytest.approx(0.02 + np.sqrt(2 / np.pi), rel=0.35)
    single = DataNoiseHead(embedding_dim=8, inputs="embedding+neighbours", hidden=4, floor=0.01, neighbours=1,
                           n_reference=400).set_neighbours(z, (truth - mean).abs())
    own = torch.log(0.02 + (truth - mean).abs()[:5])
    assert torch.allclose(single.neighbour_features(z[:5])[:, 0], own)  # itself is its own nearest neighbour
    assert not torch.allclose(single.neighbour_features(z[:5], exclude_self=True)[:, 0], own)
    save_train_embeddings(tmp_path, z)
    loaded = load_noise_head(tmp_path, save_noise_head(tmp_path, head))
    assert (tmp_path / TRAIN_EMBEDDINGS_FILE).exists()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z[:7], mean[:7]), head(z[:7], mean[:7]))
