"""Late fusion (CGCNN + SevenNet-0's pooled block 1): its sample is the two featurisers' outputs side
by side, it starts exactly at pretrained CGCNN, and its head reads the SevenNet part once trained."""

import torch

from mofbalora.backbones import get_backbone
from mofbalora.data import read_structure
from mofbalora.featurise import get_featuriser


def test_fused_sample_is_cgcnn_graph_beside_sevennet_block_1(small_qmof):
    _, paths, _ = small_qmof
    fused, graph, early = (get_featuriser(name) for name in ("cgcnn-sevennet", "cgcnn", "sevennet-early"))
    structure = read_structure(paths[0])
    sample = fused.featurise(structure, "x")
    reference, block_1 = graph.featurise(structure, "x"), early.featurise(structure, "x")
    for key in ("atom_fea", "nbr_dist", "nbr_idx", "atomic_number"):
        assert torch.equal(sample[key], reference[key]), key
    torch.testing.assert_close(sample.sevennet_pooled, block_1.pooled[:, 1], atol=0, rtol=0)
    assert sample.sevennet_pooled.shape == (1, 256)


def test_starts_at_pretrained_cgcnn_and_reads_sevennet_once_its_columns_move(small_qmof):
    _, paths, _ = small_qmof
    featuriser = get_featuriser("cgcnn-sevennet")
    samples = [featuriser.featurise(read_structure(p), p.stem) for p in paths[:3]]
    fusion, cgcnn = get_backbone("cgcnn-sevennet"), get_backbone("cgcnn")
    batch = fusion.collate(samples)
    with torch.no_grad():
        torch.testing.assert_close(fusion(batch), cgcnn(cgcnn.collate(samples)), atol=1e-6, rtol=0)
        assert fusion.embed(batch).shape == (3, fusion.embedding_dim) == (3, 64 + 256)
        fusion.head.conv_to_fc.weight[:, 64:].normal_(0, 0.1)
        before = fusion(batch)
        batch.sevennet_pooled = batch.sevennet_pooled + 1.0
        assert (fusion(batch) - before).abs().min() > 1e-4
