import torch

from mofbalora.data import read_structure


def test_chgnet_loads_offline_and_embeds(small_qmof, chgnet_backbone_factory):
    _, paths, _ = small_qmof
    backbone = chgnet_backbone_factory()
    assert sum(p.numel() for p in backbone.chgnet.parameters()) == 412_525
    assert backbone.embedding_dim == 64 and backbone.version.startswith("chgnet==0.4.2/0.3.0")
    assert len(backbone.adaptable_modules()) == 47
    featuriser = backbone.make_featuriser()
    structure = read_structure(paths[0])
    supercell = structure.copy()
    supercell.make_supercell([2, 1, 1])
    batch = backbone.collate([featuriser.featurise(structure, "a"), featuriser.featurise(supercell, "b")])
    with torch.no_grad():
        embedding = backbone.embed(batch)
        out = backbone(batch)
    assert embedding.shape == (2, 64) and torch.isfinite(out).all()
    torch.testing.assert_close(embedding[1], embedding[0], atol=1e-4, rtol=0)
    index = backbone.graph_index(batch)
    assert set(index) == {"atom", "edge", "bond", "angle", "crystal"}
    assert int(index["atom"].bincount()[1]) == 2 * len(structure)
