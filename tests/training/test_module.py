"""The loss of the LightningModule: KL scaling and the Gaussian likelihood (docs/method.md eq. 6)."""

import math

import pytest
import torch

from mofbalora.adapters import AdapterConfig, adapter_kl_per_graph, inject_adapters, set_adapter_mode
from mofbalora.data.targets import TargetNormaliser
from mofbalora.training.config import TrainConfig
from mofbalora.training.module import BandgapRegressor


def _module(backbone_factory, samples, *, kl_scaling, likelihood="gaussian", kl_weight=0.5, n_train=40):
    model = backbone_factory()
    inject_adapters(model, AdapterConfig(kind="balora", rank=4, alpha=8, target_modules=["fc_full"], seed=0,
                                         kl_scaling=kl_scaling, kl_weight=kl_weight))
    config = TrainConfig(method="balora", likelihood=likelihood)
    module = BandgapRegressor(model, config=config, normaliser=TargetNormaliser(2.0, 1.0), n_train=n_train,
                              steps_per_epoch=1)
    with set_adapter_mode(model, "train"):
        model(model.collate(samples))
    return module, model


def test_kl_scaling_dataset_divides_by_n(cgcnn_backbone_factory, cgcnn_samples):
    per_dataset, model = _module(cgcnn_backbone_factory, cgcnn_samples, kl_scaling="dataset", n_train=40)
    per_point, _ = _module(cgcnn_backbone_factory, cgcnn_samples, kl_scaling="datapoint", n_train=40)
    kl = adapter_kl_per_graph(model).mean()
    assert float(per_dataset.kl_term()) == pytest.approx(0.5 * float(kl) / 40, rel=1e-5)
    assert float(per_point.kl_term()) == pytest.approx(0.5 * float(kl), rel=1e-5)


def test_gaussian_likelihood_is_the_normal_nll(cgcnn_backbone_factory, cgcnn_samples):
    module, _ = _module(cgcnn_backbone_factory, cgcnn_samples, kl_scaling="dataset")
    with torch.no_grad():
        module.log_noise_std.fill_(math.log(0.5))
    prediction, target = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 1.0, 0.0])
    expected = -torch.distributions.Normal(prediction, 0.5).log_prob(target).mean()
    torch.testing.assert_close(module.data_term(prediction, target), expected)
    assert module.noise_std_ev == pytest.approx(0.5 * 1.0)
    mse, _ = _module(cgcnn_backbone_factory, cgcnn_samples, kl_scaling="dataset", likelihood="mse")
    torch.testing.assert_close(mse.data_term(prediction, target), ((prediction - target) ** 2).mean())
    assert mse.noise_std_ev is None and not mse.log_noise_std.requires_grad


def test_mean_mode_noise_fit_trains_the_noise_scale_on_noise_off_residuals(cgcnn_backbone_factory, cgcnn_samples):
    """``noise_std_fit="mean_mode"``: the sampled prediction's NLL gives the noise scale no gradient;
    the noise-off prediction's NLL gives it all of it (docs/method.md §5)."""
    module, model = _module(cgcnn_backbone_factory, cgcnn_samples, kl_scaling="dataset")
    module.config = TrainConfig(method="balora", noise_std_fit="mean_mode")
    graphs, target = model.collate(cgcnn_samples), torch.tensor([0.3, -0.2, 1.0])
    with set_adapter_mode(model, "train"):
        sampled = model(graphs)
    assert module.data_term(sampled, target, noise_std_grad=False).grad_fn is not None
    term = module.noise_std_term(graphs, target)
    (grad,) = torch.autograd.grad(term, module.log_noise_std)
    with set_adapter_mode(model, "mean"), torch.no_grad():
        mean = model(graphs)
    log_std = module.log_noise_std.detach().requires_grad_()
    expected = torch.nn.functional.gaussian_nll_loss(mean, target, torch.exp(2 * log_std).expand_as(mean), full=True)
    (expected_grad,) = torch.autograd.grad(expected, log_std)
    torch.testing.assert_close(grad, expected_grad)
    module.config = TrainConfig(method="balora")  # joint: no separate term
    assert float(module.noise_std_term(graphs, target)) == 0.0


def test_alpha_net_gets_its_own_learning_rate(cgcnn_backbone_factory, cgcnn_samples):
    module, model = _module(cgcnn_backbone_factory, cgcnn_samples, kl_scaling="dataset")
    module.config = TrainConfig(method="balora", lr=0.002, alpha_net_lr_factor=10.0)
    groups = module.configure_optimizers()["optimizer"].param_groups
    alpha_params = {id(p) for p in model.balora_alpha_net.parameters()}
    assert [g["lr"] for g in groups] == [0.002, pytest.approx(0.02)]
    assert {id(p) for p in groups[1]["params"]} == alpha_params
    assert not alpha_params & {id(p) for p in groups[0]["params"]}


@pytest.mark.parametrize("schedule", ["warmup_cosine", "onecycle"])
def test_learning_rate_schedule_runs_its_whole_course(cgcnn_backbone_factory, schedule):
    """Every planned step (the peak at lr, the fall to near 0) without the scheduler overrunning;
    one-cycle warms up over 30% of the steps from lr/25, the default over warmup_fraction."""
    model = cgcnn_backbone_factory()
    inject_adapters(model, AdapterConfig(kind="balora", rank=4, alpha=8, target_modules=["fc_full"], seed=0))
    config = TrainConfig(method="balora", schedule=schedule, epochs=4, lr=0.01, alpha_net_lr_factor=2.0)
    module = BandgapRegressor(model, config=config, normaliser=TargetNormaliser(2.0, 1.0), n_train=40,
                              steps_per_epoch=25)
    setup = module.configure_optimizers()
    optimiser, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(100):
        rates.append([group["lr"] for group in optimiser.param_groups])
        optimiser.step()
        scheduler.step()
    rates = torch.tensor(rates)
    peak = int(rates[:, 0].argmax())
    torch.testing.assert_close(rates.max(dim=0).values, torch.tensor([0.01, 0.02]), rtol=1e-3, atol=0)
    assert rates[-1, 0] < 0.01 * 0.01
    if schedule == "onecycle":
        assert rates[0, 0] == pytest.approx(0.01 / 25) and 25 <= peak <= 35
    else:
        assert peak == 4  # warm-up over 5% of 100 steps
