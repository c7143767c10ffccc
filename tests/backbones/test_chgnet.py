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


def test_repeated_training_steps_on_one_batch(small_qmof):
    """The assembled-graph cache must never carry autograd history from one step into the next."""
    from mofbalora.adapters import forward_in_mode
    from mofbalora.model_folder import build_member

    _, paths, _ = small_qmof
    for method in ("full", "lora"):
        model = build_member(backbone="chgnet", method=method, adapter={"rank": 2, "target_modules": ["mlp_out"]}, seed=0)
        featuriser = model.make_featuriser()
        batch = model.collate([featuriser.featurise(read_structure(p), p.stem) for p in paths[:2]])
        for _ in range(2):
            forward_in_mode(model, batch, "train").sum().backward()
        grads = [p.grad for n, p in model.named_parameters() if n.endswith("lora_B") or n == "head.0.weight"]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
