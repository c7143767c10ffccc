"""Last-layer Laplace (laplace-torch) on a real CGCNN + LoRA model and real QMOF structures."""

import numpy as np
import pytest
import torch

from mofbalora.adapters import AdapterConfig, inject_adapters, set_adapter_mode
from mofbalora.backbones.heads import apply_head, last_linear
from mofbalora.data import read_structure
from mofbalora.uncertainty.laplace import LastLayerLaplace


@pytest.fixture(scope="module")
def lora_model_and_data(small_qmof, cgcnn_backbone_factory):
    _, paths, gaps = small_qmof
    model = apply_head(cgcnn_backbone_factory(), "residual")
    inject_adapters(model, AdapterConfig(kind="lora", rank=4, alpha=8, target_modules=[r"^embedding$", "fc_full"],
                                         modules_to_save=[r"^head\."], seed=0))
    with torch.no_grad():  # a trained-looking residual path
        model.head.linear.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    featuriser = model.make_featuriser()
    samples = [featuriser.featurise(read_structure(p), p.stem) for p in paths[:60]]
    targets = (np.asarray(gaps[:60]) - 2.0) / 1.5
    return model, samples, targets


def test_last_linear_reproduces_the_head(lora_model_and_data):
    model, samples, _ = lora_model_and_data
    batch = model.collate(samples[:5])
    features, layer = last_linear(model.head)
    with torch.no_grad(), set_adapter_mode(model, "mean"):
        z = model.embed(batch)
        torch.testing.assert_close(layer(features(z)).squeeze(-1), model(batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no known last linear layer"):
        last_linear(torch.nn.Linear(3, 1))


def test_glm_predictive_mean_is_the_model_and_std_grows_with_less_data(lora_model_and_data):
    model, samples, targets = lora_model_and_data
    test = samples[40:]
    laplace = LastLayerLaplace().fit(model, samples[:40], targets[:40], noise_std=0.5)
    mean, std = laplace.predict(test)
    with torch.no_grad(), set_adapter_mode(model, "mean"):
        expected = model(model.collate(test)).numpy()
    np.testing.assert_allclose(mean, expected, atol=1e-4)  # the linearised predictive is centred on the MAP
    assert np.isfinite(std).all() and (std > 0).all()
    assert laplace.prior_precision_ > 0
    fewer = LastLayerLaplace().fit(model, samples[:8], targets[:8], noise_std=0.5)
    assert np.median(fewer.predict(test)[1]) > np.median(std)  # less data, a wider posterior
    with pytest.raises(ValueError, match="noise_std"):
        LastLayerLaplace().fit(model, samples[:8], targets[:8], noise_std=0.0)
