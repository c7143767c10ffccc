"""Adapters on the real CGCNN, CHGNet and SevenNet-0 backbones, driven by a table of backbones x kinds."""

import pytest
import torch

from mofbalora.adapters import (
    AdapterConfig,
    adapter_kl_per_graph,
    inject_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    set_adapter_mode,
    unmerge_adapters,
)
from mofbalora.data import read_structure

from .conftest import randomise_b

CASES = [(b, k) for b in ("cgcnn", "chgnet", "sevennet", "sevennet-early", "cgcnn-sevennet")
         for k in ("lora", "balora", "mcdropout")]
TARGETS = {"cgcnn": [r"^embedding$", r"fc_full", r"^head\."], "cgcnn-sevennet": [r"^embedding$", r"fc_full", r"^head\."],
           "chgnet": [r"twoBody_atom", r"mlp_out", r"^head\."],
           "sevennet": [r"^head\.(hidden|out)$"], "sevennet-early": [r"^head\.(hidden|out)$"]}


def adapted(backbone_batches, backbone, kind, **overrides):
    factory, samples = backbone_batches[backbone]
    model = factory()
    if kind == "mcdropout":
        overrides = {"dropout": 0.2, **overrides}
    config = AdapterConfig(kind=kind, rank=4, alpha=8, target_modules=TARGETS[backbone],
                           modules_to_save=[r"^head\."], seed=1, **overrides)
    return inject_adapters(model, config), model.collate(samples)


@pytest.mark.parametrize("backbone,kind", CASES)
def test_initial_adapter_is_identity_in_every_mode(backbone_batches, backbone, kind):
    factory, samples = backbone_batches[backbone]
    bare = factory()
    with torch.no_grad():
        expected = bare(bare.collate(samples))
    model, batch = adapted(backbone_batches, backbone, kind)
    with torch.no_grad():
        for mode in ("train", "mean"):
            with set_adapter_mode(model, mode):
                torch.testing.assert_close(model(batch), expected, atol=1e-5, rtol=1e-5)
        with set_adapter_mode(model, "sample", samples=3):
            out = model(batch)
    assert out.shape == (3, len(samples))
    torch.testing.assert_close(out, expected.expand(3, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone,kind", CASES)
def test_gradients_reach_adapters_and_backbone_stays_frozen(backbone_batches, backbone, kind):
    model, batch = adapted(backbone_batches, backbone, kind)
    randomise_b(model, std=0.05)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.endswith("lora_A") for n in trainable) and any(n.endswith("lora_B") for n in trainable)
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith(("head.", "balora_alpha_net.")) for n in trainable)
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with set_adapter_mode(model, "train"):
        loss = model(batch).pow(2).mean() + adapter_kl_per_graph(model).mean() * 1e-4
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in grads.items():
        if name.endswith("lora_A") or name.endswith("lora_B"):
            assert grad is not None and grad.abs().sum() > 0, name
    optimiser.step()
    for name, value in model.named_parameters():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name
    if kind == "balora":
        # the whole inference network learns, not only its zero-initialised output layer: after one
        # step that layer is non-zero, and the next loss reaches every alpha-net weight through it
        optimiser.zero_grad()
        with set_adapter_mode(model, "train"):
            loss = model(batch).pow(2).mean() + adapter_kl_per_graph(model).mean() * 1e-4
        loss.backward()
        alpha_net = {n: p for n, p in model.named_parameters() if n.startswith("balora_alpha_net")}
        assert alpha_net
        for name, param in alpha_net.items():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backbone", ["cgcnn", "chgnet", "sevennet", "sevennet-early"])
def test_one_weight_sample_per_structure_supercell(backbone_batches, small_qmof, backbone):
    """A 2x1x1 supercell with the same noise draws gives the same samples: the noise is per structure.

    A per-atom (local reparameterisation) scheme would shrink the supercell's std by about sqrt(2).
    """
    factory, _ = backbone_batches[backbone]
    model = inject_adapters(factory(), AdapterConfig(kind="balora", rank=4, alpha=8,
                                                     target_modules=TARGETS[backbone], seed=2))
    randomise_b(model, std=0.3)
    featuriser = model.make_featuriser()
    structure = read_structure(small_qmof[1][0])
    supercell = structure.copy()
    supercell.make_supercell([2, 1, 1])
    cell_batch = model.collate([featuriser.featurise(structure, "cell")])
    super_batch = model.collate([featuriser.featurise(supercell, "super")])
    samples = 400 if backbone == "cgcnn" else 60
    with torch.no_grad():
        with set_adapter_mode(model, "mean"):
            torch.testing.assert_close(model(super_batch), model(cell_batch), atol=1e-4, rtol=0)
        with set_adapter_mode(model, "sample", samples=samples, seed=11):
            cell = model(cell_batch)[:, 0]
        with set_adapter_mode(model, "sample", samples=samples, seed=11):
            big = model(super_batch)[:, 0]
    assert cell.std() > 1e-3
    torch.testing.assert_close(big, cell, atol=1e-4, rtol=1e-4)
    assert 0.9 < float(big.std() / cell.std()) < 1.1


def test_sampling_is_vectorised_seeded_and_reproducible(backbone_batches):
    model, batch = adapted(backbone_batches, "cgcnn", "balora")
    randomise_b(model)
    head_rows = []
    model.head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[0]))
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=16, seed=3):
        first = model(batch)
    assert head_rows == [16 * 3]  # one pass over S x batch, not S passes
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=16, seed=3):
        again = model(batch)
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=16, seed=4):
        other = model(batch)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first.std(0) > 0).all()


@pytest.mark.parametrize("backbone,kind", CASES)
def test_merged_mean_mode_equals_unmerged(backbone_batches, backbone, kind):
    model, batch = adapted(backbone_batches, backbone, kind)
    randomise_b(model)
    weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with torch.no_grad(), set_adapter_mode(model, "mean"):
        unmerged = model(batch)
        merge_adapters(model)
        merged = model(batch)
        unmerge_adapters(model)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name


@pytest.mark.parametrize("backbone,kind", CASES)
def test_save_load_round_trip_is_exact(tmp_path, backbone_batches, backbone, kind):
    model, batch = adapted(backbone_batches, backbone, kind)
    randomise_b(model)
    save_adapters(model, tmp_path / "adapter")
    factory, _ = backbone_batches[backbone]
    loaded = load_adapters(factory(), tmp_path / "adapter")
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(saved_state) == list(loaded_state)  # same names, same order: nothing dropped or extra
    for name, value in saved_state.items():
        assert torch.equal(value, loaded_state[name]), name
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=4), set_adapter_mode(loaded, "sample", samples=4):
        assert torch.equal(model(batch), loaded(batch))
    saved_names = __import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not any(n.startswith(("convs.", "chgnet.")) and not n.endswith(("lora_A", "lora_B")) for n in saved_names)


def test_loading_onto_wrong_backbone_raises(tmp_path, backbone_batches):
    model, _ = adapted(backbone_batches, "cgcnn", "balora")
    save_adapters(model, tmp_path / "adapter")
    chgnet_factory, _ = backbone_batches["chgnet"]
    with pytest.raises(ValueError, match="trained on backbone cgcnn"):
        load_adapters(chgnet_factory(), tmp_path / "adapter")
    cgcnn_factory, _ = backbone_batches["cgcnn"]
    other_version = cgcnn_factory()
    with torch.no_grad():
        other_version.convs[0].fc_full.weight.add_(1e-3)
    with pytest.raises(ValueError, match="frozen weights differ"):
        load_adapters(other_version, tmp_path / "adapter")


@pytest.mark.parametrize("overrides", [{"noise_on": "AB"}, {"alpha_granularity": "rank"}, {"alpha_net_input": "constant"},
                                       {"noise_sampling": "row"}, {"noise_sampling": "row", "alpha_granularity": "rank"}])
def test_alternative_choices_run_and_have_kl(backbone_batches, overrides):
    model, batch = adapted(backbone_batches, "cgcnn", "balora", **overrides)
    randomise_b(model)
    with set_adapter_mode(model, "train"):
        out = model(batch)
    kl = adapter_kl_per_graph(model)
    assert out.shape == (3,) and kl.shape == (3,) and torch.isfinite(kl).all()
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=8):
        assert (model(batch).std(0) > 0).all()


def test_per_row_noise_is_independent_per_row_and_keyed_per_structure(backbone_batches, small_qmof):
    """The local reparameterisation draws noise per row, so a 2x1x1 supercell averages it out
    (its std shrinks); with noise keys a structure's draws do not depend on its batch."""
    factory, samples = backbone_batches["cgcnn"]
    model = inject_adapters(factory(), AdapterConfig(kind="balora", rank=4, alpha=8, target_modules=TARGETS["cgcnn"],
                                                     noise_sampling="row", seed=2))
    randomise_b(model, std=0.3)
    featuriser = model.make_featuriser()
    structure = read_structure(small_qmof[1][0])
    supercell = structure.copy()
    supercell.make_supercell([2, 1, 1])
    with torch.no_grad():
        with set_adapter_mode(model, "sample", samples=400, seed=11):
            cell = model(model.collate([featuriser.featurise(structure, "cell")]))[:, 0]
        with set_adapter_mode(model, "sample", samples=400, seed=11):
            big = model(model.collate([featuriser.featurise(supercell, "super")]))[:, 0]
    assert cell.std() > 1e-3 and float(big.std() / cell.std()) < 0.9

    def keyed(batch_samples, keys):
        batch = model.collate(batch_samples)
        batch.noise_keys = torch.tensor(keys)
        with torch.no_grad(), set_adapter_mode(model, "sample", samples=8, seed=5):
            return model(batch)

    together = keyed(samples, [10, 11, 12])
    alone = keyed(samples[1:2], [11])
    reordered = keyed([samples[2], samples[1]], [12, 11])
    torch.testing.assert_close(alone[:, 0], together[:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reordered[:, 1], together[:, 1], atol=1e-5, rtol=1e-5)
    assert together.std(0).min() > 0


@pytest.mark.parametrize("kind", ["balora", "mcdropout"])
@pytest.mark.parametrize("merged", [False, True])
def test_split_weight_sampling_equals_sampling_the_built_rows(backbone_batches, monkeypatch, merged, kind):
    """CGCNN's fc_full in sample mode projects atoms and shared edges separately (forward_pairwise);
    it must give what the layer gives on the concatenated rows with the same noise draws, and keep
    the gradients of training."""
    from mofbalora.adapters import BaLoRALinear, DropoutLoRALinear
    from mofbalora.backbones.base import pairwise_concat

    model, batch = adapted(backbone_batches, "cgcnn", kind)
    randomise_b(model)
    if merged:
        merge_adapters(model)
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=4, seed=2):
        split = model(batch)
    with set_adapter_mode(model, "train"):
        torch.manual_seed(0)
        model(batch).sum().backward()
    split_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    def built_rows(self, node, nbr_idx, edge, *, copies=1):
        return self.forward(pairwise_concat(node, nbr_idx, edge, copies=copies))

    monkeypatch.setattr(BaLoRALinear if kind == "balora" else DropoutLoRALinear, "forward_pairwise", built_rows)
    with torch.no_grad(), set_adapter_mode(model, "sample", samples=4, seed=2):
        built = model(batch)
    with set_adapter_mode(model, "train"):
        torch.manual_seed(0)
        model(batch).sum().backward()
    assert (split.std(0) > 0).all()
    torch.testing.assert_close(split, built, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        if name in split_grads:
            torch.testing.assert_close(split_grads[name], param.grad, atol=1e-4, rtol=1e-4)


def test_lora_split_weight_equals_the_built_rows_with_gradients(backbone_batches, monkeypatch):
    """Plain LoRA's fc_full trains by the split weight W0 + s·B·A (forward_pairwise): the same outputs
    and the same gradients for A, B and the head as the adapter applied to the concatenated rows."""
    from mofbalora.adapters import LoRALinear
    from mofbalora.backbones.base import pairwise_concat

    model, batch = adapted(backbone_batches, "cgcnn", "lora")
    randomise_b(model)

    def output_and_grads():
        model.zero_grad()
        with set_adapter_mode(model, "train"):
            out = model(batch)
        (out * torch.linspace(-1, 1, len(out))).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    split, split_grads = output_and_grads()
    monkeypatch.setattr(LoRALinear, "forward_pairwise",
                        lambda self, node, nbr_idx, edge, *, copies=1: self(pairwise_concat(node, nbr_idx, edge,
                                                                                               copies=copies)))
    built, built_grads = output_and_grads()
    torch.testing.assert_close(split, built, atol=1e-5, rtol=1e-5)
    assert any("fc_full.lora_A" in name for name in split_grads) and split_grads.keys() == built_grads.keys()
    for name, grad in split_grads.items():
        torch.testing.assert_close(grad, built_grads[name], atol=1e-4, rtol=1e-4)


def test_mc_dropout_samples_keyed_masks_and_mean_mode_is_lora(backbone_batches):
    """MC-dropout LoRA: samples differ, a structure's draws do not depend on its batch (noise keys),
    mean mode is the deterministic LoRA output, and about p of the adapter inputs are dropped."""
    from mofbalora.adapters import DropoutLoRALinear, adapter_layers

    model, batch = adapted(backbone_batches, "cgcnn", "mcdropout")
    randomise_b(model, std=0.3)
    _, samples = backbone_batches["cgcnn"]

    def keyed(batch_samples, keys, seed=5):
        keyed_batch = model.collate(batch_samples)
        keyed_batch.noise_keys = torch.tensor(keys)
        with torch.no_grad(), set_adapter_mode(model, "sample", samples=8, seed=seed):
            return model(keyed_batch)

    together = keyed(samples, [10, 11, 12])
    torch.testing.assert_close(keyed(samples[1:2], [11])[:, 0], together[:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keyed([samples[2], samples[1]], [12, 11])[:, 1], together[:, 1], atol=1e-5, rtol=1e-5)
    assert together.std(0).min() > 0 and not torch.equal(together, keyed(samples, [10, 11, 12], seed=6))
    with torch.no_grad(), set_adapter_mode(model, "mean"):
        mean_once, mean_twice = model(batch), model(batch)
    assert torch.equal(mean_once, mean_twice)
    layer = next(m for m in adapter_layers(model) if isinstance(m, DropoutLoRALinear) and m.module_name == "embedding")
    seen = []  # the mask is applied before A: capture A's masked input
    original = torch.nn.functional.linear

    def spy(x, weight, *args):
        if weight.shape == layer.lora_A.shape:  # A / (1 − p) reading the masked rows
            seen.append(x.detach())
        return original(x, weight, *args)

    unmasked = []
    handle = layer.register_forward_pre_hook(lambda module, args: unmasked.append(args[0].detach()))
    torch.nn.functional.linear = spy
    try:
        with torch.no_grad(), set_adapter_mode(model, "sample", samples=4, seed=1):
            model(batch)
    finally:
        torch.nn.functional.linear = original
        handle.remove()
    rows = unmasked[0].reshape(-1, unmasked[0].shape[-1])
    nonzero = rows != 0
    kept = nonzero & (seen[0] != 0)
    torch.testing.assert_close(seen[0][kept], rows[kept])  # kept entries pass unchanged; 1/(1 − p) is on A
    dropped = float((seen[0][nonzero] == 0).float().mean())
    assert int(nonzero.sum()) > 300 and abs(dropped - 0.2) < 0.06, (dropped, int(nonzero.sum()))
