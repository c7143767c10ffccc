"""The studies' cached draws belong to the fit that made them: a retrained fit is predicted again."""

import json
import shutil

import numpy as np
from safetensors.torch import load_file, save_file

from mofbalora.model_folder import draws_identity_sha256
from mofbalora.pretrained import resolve_model

from .conftest import load_pipeline


def test_a_cached_result_is_computed_again_when_another_fit_made_it(tmp_path):
    cached = load_pipeline("bandgap_benchmark").cached
    path = tmp_path / "draws.npz"
    calls = []

    def compute(value):
        return lambda: calls.append(value) or {"test": np.full(3, value)}

    assert cached(path, compute(1.0), made_by="fit-a")["test"][0] == 1.0
    assert set(cached(path, compute(2.0), made_by="fit-a")) == {"test"} and calls == [1.0]  # reused, key hidden
    assert cached(path, compute(2.0), made_by="fit-b")["test"][0] == 2.0 and calls == [1.0, 2.0]  # another fit
    assert cached(path, compute(3.0), made_by="fit-b")["test"][0] == 2.0 and calls == [1.0, 2.0]
    np.savez(path, test=np.zeros(3))  # saved before fits were recorded: not trusted for a keyed call
    assert cached(path, compute(4.0), made_by="fit-b")["test"][0] == 4.0
    assert cached(path, compute(5.0))["test"][0] == 4.0  # an unkeyed call (frozen embeddings) reuses


def test_draws_identity_follows_the_weights_not_the_noise_head_or_calibration(tmp_path):
    folder = shutil.copytree(resolve_model("qmof-pbe"), tmp_path / "model")
    before = draws_identity_sha256(folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["calibration"] = {"refitted": True}
    meta["noise_head"]["validation_nll"] = 0.0
    (folder / "model.json").write_text(json.dumps(meta))
    assert draws_identity_sha256(folder) == before
    adapter = next(folder.glob("members/0/adapter/*.safetensors"))
    tensors = load_file(adapter)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, adapter)
    assert draws_identity_sha256(folder) != before
