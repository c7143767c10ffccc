import pytest
import torch

from mofbalora.data import read_structure


@pytest.fixture(scope="module")
def backbone_batches(small_qmof, cgcnn_backbone_factory, chgnet_backbone_factory, sevennet_backbone_factory):
    """Per backbone name: (factory, batch of 3 real small MOFs)."""
    _, paths, _ = small_qmof
    out = {}
    for name, factory in [("cgcnn", cgcnn_backbone_factory), ("chgnet", chgnet_backbone_factory),
                          ("sevennet", sevennet_backbone_factory)]:
        backbone = factory()
        featuriser = backbone.make_featuriser()
        n = 3 if name == "cgcnn" else 2
        samples = [featuriser.featurise(read_structure(p), p.stem) for p in paths[:n]]
        out[name] = (factory, samples)
    from mofbalora.backbones import get_backbone

    # the early variant reads block 1, which leads these samples' atom blocks too (its head's rows are atoms)
    out["sevennet-early"] = (lambda: get_backbone("sevennet-early"), out["sevennet"][1])
    fused = get_backbone("cgcnn-sevennet").make_featuriser()
    out["cgcnn-sevennet"] = (lambda: get_backbone("cgcnn-sevennet"),
                             [fused.featurise(read_structure(p), p.stem) for p in paths[:3]])
    return out


def randomise_b(model, std=0.2, seed=0):
    """Give every B a non-zero value, as after training (B = 0 at init hides most bugs)."""
    from mofbalora.adapters import adapter_layers

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * std)
