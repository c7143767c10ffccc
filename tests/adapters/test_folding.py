"""Folding eval-mode BatchNorm into the linear layer before it changes no prediction (< 1e-5 eV)."""

import numpy as np
import pytest
import torch
from torch import nn

from mofbalora.adapters import AdapterConfig, inject_adapters, merge_adapters, set_adapter_mode
from mofbalora.adapters.folding import fold_batchnorm

from .conftest import randomise_b


@pytest.mark.parametrize("kind", ["none", "lora-merged", "balora"])
def test_folded_backbone_gives_the_same_outputs(backbone_batches, kind):
    factory, samples = backbone_batches["cgcnn"]
    models = []
    for _ in range(2):
        model = factory()
        if kind != "none":
            inject_adapters(model, AdapterConfig(kind="lora" if kind == "lora-merged" else "balora", rank=4, alpha=8,
                                                 target_modules=["^embedding$", "fc_full"], seed=0))
            randomise_b(model)
            if kind == "lora-merged":
                merge_adapters(model)
        models.append(model.eval())
    reference, folded = models
    fold_batchnorm(folded)
    assert all(isinstance(folded.convs[i].bn1, nn.Identity) for i in range(len(folded.convs)))
    batch = folded.collate(samples)
    with torch.no_grad():
        if kind == "balora":
            batch.noise_keys = torch.arange(len(samples))
            with set_adapter_mode(reference, "sample", samples=8, seed=3):
                expected = reference(batch)
            with set_adapter_mode(folded, "sample", samples=8, seed=3):
                got = folded(batch)
        else:
            expected, got = reference(batch), folded(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)  # float32 rounding, not a change
    assert fold_batchnorm(folded) is folded  # folding twice changes nothing
    with torch.no_grad():
        if kind == "balora":
            with set_adapter_mode(folded, "sample", samples=8, seed=3):
                again = folded(batch)
        else:
            again = folded(batch)
    torch.testing.assert_close(again, got)


def test_shipped_model_predicts_the_same_folded_and_unfolded(small_qmof):
    """The shipped model (which folds on load) against the same folder with its members unfolded."""
    from mofbalora.data import read_structure
    from mofbalora.featurise import get_featuriser
    from mofbalora.model_folder import bare_member, load_members
    from mofbalora.predict import load_model
    from mofbalora.pretrained import resolve_model

    folder = resolve_model("qmof-pbe")
    folded = load_model(folder)
    unfolded = load_model(folder)
    unfolded.members = load_members(folder)[1]
    unfolded._bare = bare_member(backbone="cgcnn", head="pretrained", seed=0)
    assert not isinstance(unfolded.members[0].convs[0].bn1, nn.Identity)
    featuriser = get_featuriser("cgcnn")
    _, paths, _ = small_qmof
    samples = [featuriser.featurise(read_structure(p), p.stem) for p in paths[:12]]
    a, b = folded.predictive(samples), unfolded.predictive(samples)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.std_epistemic, b.std_epistemic, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.std_aleatoric, b.std_aleatoric, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.embedding_distance, b.embedding_distance, atol=1e-4, rtol=1e-5)
