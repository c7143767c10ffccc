"""The adapter maths on plain layers: PEFT parity, KL, Monte Carlo moments, merging."""

import pytest
import torch
from torch import nn

from mofbalora.adapters import AdapterConfig, BaLoRALinear, inject_adapters, kl_multiplicative_gaussian, merge_adapters, unmerge_adapters
from mofbalora.adapters.noise import NoiseContext, per_graph_matmul, row_layout


def stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))


def test_lora_equals_peft():
    peft = pytest.importorskip("peft")
    ours = inject_adapters(stack(), AdapterConfig(kind="lora", rank=4, alpha=8, target_modules=[r"^(0|2)$"]))
    reference = peft.get_peft_model(stack(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("0", "2"):
            layer = ours.get_submodule(name)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))
            ref = reference.base_model.model.get_submodule(name)
            ref.lora_A["default"].weight.copy_(layer.lora_A)
            ref.lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randn(32, 12, generator=generator)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=0)


def test_no_matching_module_is_a_clear_error():
    with pytest.raises(ValueError, match="no nn.Linear module matches"):
        inject_adapters(stack(), AdapterConfig(target_modules=["nothing_here"]))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="kind"):
        AdapterConfig(kind="dora")
    with pytest.raises(ValueError, match="prior_p"):
        AdapterConfig(prior_p=1.0)
    with pytest.raises(ValueError, match="needs dropout > 0"):
        AdapterConfig(kind="mcdropout")
    with pytest.raises(ValueError, match="dropout must lie"):
        AdapterConfig(kind="mcdropout", dropout=1.0)


def test_closed_form_kl_matches_torch():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randn(7, generator=generator)
        noise_alpha = torch.rand(7, generator=generator) * 3 + 1e-3
        p = float(torch.rand(1, generator=generator) * 0.9 + 0.05)
        c = p / (1 - p)
        q = torch.distributions.Normal(a, (noise_alpha * a**2).sqrt())
        prior = torch.distributions.Normal(torch.zeros_like(a), (c * a**2).sqrt())
        torch.testing.assert_close(kl_multiplicative_gaussian(noise_alpha, c),
                                   torch.distributions.kl_divergence(q, prior), atol=1e-5, rtol=1e-5)


def balora_layer(noise_on="A", per_rank=False, per_row=False):
    torch.manual_seed(0)
    base = nn.Linear(6, 3)
    layer = BaLoRALinear(base, rank=4, scaling=0.5, generator=torch.Generator().manual_seed(0), entity="crystal",
                         slot=0, noise_on=noise_on, per_rank=per_rank, context=NoiseContext(), module_name="test",
                         per_row=per_row)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(3, 4))
    return layer


@pytest.mark.parametrize("per_rank,per_row", [(False, False), (True, False), (False, True), (True, True)])
def test_monte_carlo_moments_match_analytic(per_rank, per_row):
    """Per-structure and per-row (local reparameterisation) sampling have the same marginal moments."""
    layer = balora_layer(per_rank=per_rank, per_row=per_row)
    x = torch.randn(6)
    n = 10_000
    noise_alpha = torch.tensor([0.3, 0.1, 0.5, 0.2]) if per_rank else torch.tensor(0.3)
    alpha_rows = noise_alpha.expand(n, 1, 4) if per_rank else noise_alpha.expand(n, 1)
    layer.context.set(graph_index={"crystal": torch.arange(n)}, num_graphs=n, noise_alpha=alpha_rows,
                      generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = layer(x.expand(n, 6))
    a, b, s = layer.lora_A, layer.lora_B, layer.scaling
    mean = layer.base_layer(x) + s * b @ (a @ x)
    per_component = (a**2 @ x**2) * (noise_alpha if per_rank else noise_alpha)  # Var[(A~ x)_j]
    variance = s**2 * (b**2 @ per_component)
    torch.testing.assert_close(out.mean(0), mean.detach(), atol=4 * (variance / n).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(out.var(0), variance.detach(), rtol=0.06, atol=0)


def test_per_graph_matmul_is_exact_for_any_row_order():
    generator = torch.Generator().manual_seed(0)
    index = torch.tensor([2, 0, 0, 1, 2, 2, 0] * 50)
    rows = torch.randn(len(index), 5, generator=generator)
    weights = torch.randn(3, 4, 5, generator=generator)
    out = per_graph_matmul(rows, weights, row_layout(index, 3, block_rows=16))
    expected = torch.einsum("nd,nod->no", rows, weights[index])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_merge_unmerge_restores_exactly():
    model = inject_adapters(stack(), AdapterConfig(kind="lora", rank=4, target_modules=[r"^(0|2)$"]))
    with torch.no_grad():
        for name in ("0", "2"):
            model.get_submodule(name).lora_B.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 12)
    unmerged_out = model(x)
    merge_adapters(model)
    torch.testing.assert_close(model(x), unmerged_out, atol=1e-5, rtol=1e-5)
    assert not torch.equal(model.get_submodule("0").base_layer.weight, before["0.base_layer.weight"])
    unmerge_adapters(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_log_uniform_kl_is_molchanovs_approximation():
    """Molchanov et al. (2017) eq. 14: −KL ≈ k1 σ(k2 + k3 log α) − ½ log(1 + 1/α) − k1; it decreases
    in α and vanishes as α → ∞ (no minimum at a finite α, unlike the Gaussian prior's at c)."""
    from mofbalora.adapters import kl_log_uniform

    alpha = torch.logspace(-4, 4, 50)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    expected = -(k1 * torch.sigmoid(k2 + k3 * alpha.log()) - 0.5 * torch.log1p(1 / alpha) - k1)
    torch.testing.assert_close(kl_log_uniform(alpha), expected)
    assert bool((kl_log_uniform(alpha).diff() < 0).all())
    assert float(kl_log_uniform(torch.tensor(1e8))) < 1e-6
    # the Gaussian prior's KL has its minimum at alpha = c
    gaussian = kl_multiplicative_gaussian(alpha, 0.25)
    assert abs(float(alpha[gaussian.argmin()]) - 0.25) < 0.1


@pytest.mark.parametrize("per_rank", [False, True])
def test_kl_counted_per_element_or_once_per_noise_level(per_rank):
    """``kl_count="element"`` is n_l = r·d copies of the per-element KL; ``"layer"`` one per noise level."""
    layers = {count: BaLoRALinear(nn.Linear(6, 3), rank=4, scaling=0.5, generator=torch.Generator().manual_seed(0),
                                  entity="crystal", slot=0, noise_on="A", per_rank=per_rank, context=NoiseContext(),
                                  module_name="test", kl_count=count) for count in ("element", "layer")}
    noise_alpha = torch.rand(5, 1, 4) + 0.1 if per_rank else torch.rand(5, 1) + 0.1
    per_element = kl_multiplicative_gaussian(noise_alpha[:, 0], 0.5)
    expected_layer = per_element.sum(1) if per_rank else per_element
    torch.testing.assert_close(layers["layer"].kl_per_graph(noise_alpha, 0.5), expected_layer)
    expected_element = 6 * (per_element.sum(1) if per_rank else 4 * per_element)
    torch.testing.assert_close(layers["element"].kl_per_graph(noise_alpha, 0.5), expected_element)
