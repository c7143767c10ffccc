"""SevenNet-0 from the sevenn wheel: offline, its cached features equal the uncached forward, its
readout becomes nn.Linear exactly, and a smoke fit on real QMOF. (LoRA numerics: tests/adapters.)"""

import json
import socket

import pytest
import torch

from mofbalora.backbones.sevennet import SevenNetBackbone, linear_from_e3nn
from mofbalora.data import read_structure
from mofbalora.featurise import featurise_paths, get_featuriser
from mofbalora.featurise.sevennet import load_sevennet
from tests.conftest import copy_cifs, write_labels


def test_loads_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model, cutoff = load_sevennet()
    assert cutoff == 5.0 and "4_equivariant_gate" in model._modules and "force_output" not in model._modules
    backbone = SevenNetBackbone()
    assert backbone.version.startswith("sevenn==0.13.0/7net-0") and backbone.embedding_dim == 128


def test_cached_features_equal_the_uncached_forward(small_qmof, tmp_path):
    """Through the feature cache (written, then read back), the backbone's output is SevenNet-0's own
    mean scaled atomic energy and the sample's energy its total energy per atom, to 1e-5."""
    import sevenn._keys as KEY
    from pymatgen.io.ase import AseAtomsAdaptor
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    _, paths, _ = small_qmof
    featuriser = get_featuriser("sevennet")
    featurise_paths(paths[:3], featuriser, cache_dir=tmp_path, progress=False)
    cached = featurise_paths(paths[:3], featuriser, cache_dir=tmp_path, progress=False)
    assert cached.n_cache_hits == 3
    backbone = SevenNetBackbone()
    with torch.no_grad():
        out = backbone(backbone.collate(cached.samples))
    model, cutoff = load_sevennet()
    for path, sample, value in zip(paths[:3], cached.samples, out):
        structure = read_structure(path)
        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(AseAtomsAdaptor.get_atoms(structure), cutoff,
                                                                      with_shift=False))
        with torch.no_grad():
            reference = model(data)
        torch.testing.assert_close(value, reference[KEY.SCALED_ATOMIC_ENERGY].mean(), atol=1e-5, rtol=0)
        energy = float(reference[KEY.PRED_TOTAL_ENERGY].reshape(-1)[0]) / len(structure)
        assert float(sample.energy_per_atom_ev) == pytest.approx(energy, abs=1e-5)
        assert sample.block_scalars.shape == (len(structure), 2, 128) and sample.pooled.shape == (1, 5, 256)


def test_network_cut_after_block_1_gives_the_whole_networks_block_1(small_qmof, tmp_path):
    """sevennet-early's featuriser runs blocks 0-1 only; through the cache its features equal the
    whole network's block 1 (and its pooled blocks 0-1) to 1e-5."""
    _, paths, _ = small_qmof
    whole, cut = get_featuriser("sevennet"), get_featuriser("sevennet-early")
    assert "1_equivariant_gate" in cut._load()[0]._modules and "2_self_connection_intro" not in cut._load()[0]._modules
    featurise_paths(paths[:3], cut, cache_dir=tmp_path, progress=False)
    cached = featurise_paths(paths[:3], cut, cache_dir=tmp_path, progress=False)
    assert cached.n_cache_hits == 3
    for path, sample in zip(paths[:3], cached.samples):
        reference = whole.featurise(read_structure(path), "reference")
        torch.testing.assert_close(sample.block_scalars[:, 0], reference.block_scalars[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(sample.pooled[0], reference.pooled[0, :2], atol=1e-5, rtol=0)


def test_only_scalar_maps_become_linear():
    model, _ = load_sevennet()
    linear = linear_from_e3nn(model._modules["reduce_input_to_hidden"])
    x = torch.randn(4, 128)
    torch.testing.assert_close(linear(x), model._modules["reduce_input_to_hidden"].linear(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="only scalar"):
        linear_from_e3nn(model._modules["1_self_interaction_1"])


def test_smoke_fit_on_real_qmof(small_qmof, tmp_path):
    from mofbalora.training.fit import fit

    from tests.training.conftest import tiny_config

    ids, paths, gaps = small_qmof
    data = copy_cifs(paths[:14], tmp_path / "data")
    write_labels(data, ids[:14], gaps[:14])
    config = tiny_config("balora", backbone="sevennet", epochs=3,
                         adapter={"rank": 4, "alpha": 8, "target_modules": [r"^head\.pretrained\.(hidden|out)$"]},
                         split={"fractions": [0.5, 0.25, 0.0, 0.25], "method": "random", "seed": 0})
    folder = fit(config, data=data, out_dir=tmp_path / "model", progress=False)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["backbone"]["name"] == "sevennet"
    assert (folder / "members" / "0" / "adapter" / "adapter_model.safetensors").exists()


def test_early_head_trains_then_carries_adapters_on_real_qmof(small_qmof, tmp_path):
    """The pilot's c-early: the atom-wise head is fitted (``full`` trains only it: nothing upstream has
    parameters), then BaLoRA goes on that fit (``init_from``) and starts from its weights."""
    from safetensors.torch import load_file

    from mofbalora.backbones import get_backbone
    from mofbalora.training.fit import fit
    from tests.training.conftest import tiny_config

    ids, paths, gaps = small_qmof
    data = copy_cifs(paths[:14], tmp_path / "data")
    write_labels(data, ids[:14], gaps[:14])
    split = {"fractions": [0.5, 0.25, 0.0, 0.25], "method": "random", "seed": 0}
    head = fit(tiny_config("full", backbone="sevennet-early", epochs=3, head="pretrained", lr=0.01, split=split),
               data=data, out_dir=tmp_path / "head", progress=False)
    trained = {k: v for k, v in load_file(next((head / "members" / "0").glob("*.safetensors"))).items()}
    start = get_backbone("sevennet-early").state_dict()
    assert set(trained) == set(start) and not torch.equal(trained["head.hidden.weight"], start["head.hidden.weight"])
    folder = fit(tiny_config("balora", backbone="sevennet-early", epochs=2, head="pretrained", init_from=str(head),
                             adapter={"rank": 4, "alpha": 8, "target_modules": [r"^head\.(hidden|out)$"]}, split=split),
                 data=data, out_dir=tmp_path / "balora", progress=False)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["backbone"]["name"] == "sevennet-early" and meta["train_config"]["init_from"] == str(head)
