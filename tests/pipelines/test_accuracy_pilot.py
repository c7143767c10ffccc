"""The accuracy pilot's shared parts (issue 44): the screen subset and each candidate's steps."""

from pathlib import Path

import pytest

from pipelines import accuracy_pilot as pilot


def test_screen_subset_is_seeded_inside_the_training_part_and_never_touches_test():
    design = pilot.load_design()
    release = pilot.release_split(design)
    parts = pilot.screen_parts(design, release)
    assert len(parts["train"]) == design["screen_subset"]["train"] == len(set(parts["train"]))
    assert set(parts["train"]) <= set(release.train) and parts["val"] == release.val
    assert parts == pilot.screen_parts(design, release)  # the same subset every call
    split = pilot.screen_split(design)
    assert split.test == [] and not set(split.train) & (set(release.test) | set(release.val) | set(release.calibration))
    other = pilot.screen_parts({**design, "screen_subset": {**design["screen_subset"], "seed": 1}}, release)
    assert other["train"] != parts["train"]


def test_each_candidate_resolves_to_its_steps(tmp_path):
    design = pilot.load_design()
    steps = pilot.step_configs(design, "c-sevennet-early", tmp_path)
    (head_folder, head), (folder, balora) = steps
    assert head.method == "full" and head.adapter == {} and head.backbone == "sevennet-early"
    assert balora.init_from == str(head_folder) and folder == tmp_path / "c-sevennet-early" / "step1"
    # the release recipe underneath, the recipe's adapter keys on top
    assert balora.adapter["rank"] == 8 and balora.adapter["target_modules"] == [r"^head\.(hidden|out)$"]
    (_, baseline), = pilot.step_configs(design, "a-baseline", tmp_path)
    assert baseline == pilot.load_train_config(pilot.RELEASE_RECIPE)
    with pytest.raises(ValueError, match="no recipe"):
        pilot.step_configs(design, "z-unknown", tmp_path)
    with pytest.raises(ValueError, match="previous"):
        pilot.step_configs({"recipes": {"x": [{"init_from": "previous"}]}}, "x", Path(tmp_path))


def test_the_rule_takes_the_most_accurate_fast_candidate_and_prefers_a_faster_near_tie():
    import numpy as np
    import pandas as pd

    design = {"min_screen_mofs_per_s": 3.0, "tie_ev": 0.01}
    table = pd.DataFrame({"mae_ev": [0.30, 0.20, 0.25, 0.255, np.nan],
                          "mofs_per_s": [13.0, 1.0, 4.0, 9.0, 20.0]},
                         index=["baseline", "slow-best", "fast-best", "faster-near-tie", "not-scored"])
    assert pilot.choose(table, design) == "faster-near-tie"  # slow-best is under the floor
    assert pilot.choose(table.drop(index="faster-near-tie"), design) == "fast-best"
    assert pilot.choose(table.assign(mofs_per_s=1.0), design) is None


def test_no_choice_is_written_while_a_declared_candidate_is_unscored(tmp_path):
    out = tmp_path / "pilot.md"
    assert pilot.write_report(tmp_path / "results", out) is None
    text = out.read_text()
    assert "No choice yet" in text and "`a-baseline`" in text and "| e-members | not run |" in text


def _scores(mae_ev: float, ence: float, mofs_per_s: float) -> dict:
    """A candidate's scores.json as `run` and `throughput` write it (the figures the rule reads)."""
    value = lambda v: {"value": v, "ci_low": v, "ci_high": v}  # noqa: E731
    return {"validation": {"mae_ev": value(mae_ev), "spearman_std_abs_error": value(0.2), "coverage_95": 0.95,
                           "consistency": {"ence": value(ence), "zms": value(1.0), "zms_by_metal_family": []}},
            "train_cost_full_data_h_estimate": 1.0, "training": [{"epochs": 30}],
            "screen_throughput": {"mofs_per_s": mofs_per_s, "featurisation_only": False}}


def test_members_are_built_from_the_choice_and_kept_by_their_own_rule(tmp_path):
    import json

    design = {"candidates": {n: {"what": n} for n in ("x", "y", "e")}, "min_screen_mofs_per_s": 3.0, "tie_ev": 0.01,
              "recipes": {"x": [{"lr": 0.01}], "y": [{"method": "full", "adapter": {}}, {"init_from": "previous"}],
                          "e": {"members_of_choice": 3}}}
    run_dir = tmp_path / "pilot"
    with pytest.raises(ValueError, match="built from the pilot's choice, and there is none yet"):
        pilot.step_configs(design, "e", run_dir)

    def score(name: str, *figures: float) -> None:
        (run_dir / name).mkdir(parents=True, exist_ok=True)
        (run_dir / name / "scores.json").write_text(json.dumps(_scores(*figures)))

    score("x", 0.30, 0.10, 7.0)
    assert pilot.pilot_choice(design, tmp_path) == (None, "x", ["y"])  # y unscored: no choice
    score("y", 0.28, 0.10, 7.0)
    assert pilot.pilot_choice(design, tmp_path) == ("y", "y", [])
    (full_folder, full), (folder, members) = pilot.step_configs(design, "e", run_dir)
    (y_full_folder, _), (_, y_last) = pilot.step_configs(design, "y", run_dir)
    assert full_folder == y_full_folder and folder == run_dir / "e" / "step1"  # the full fine-tune is shared
    assert members.members == 3 and members.to_dict() == {**y_last.to_dict(), "members": 3}
    score("e", 0.28, 0.08, 3.5)
    table = pilot.pilot_table(design, tmp_path)
    assert pilot.keep_members(table, "y", "e", design) is True
    for worse in (table.assign(mae_ev=[0.30, 0.28, 0.281]), table.assign(ence=[0.1, 0.1, 0.1]),
                  table.assign(mofs_per_s=[7.0, 7.0, 2.9])):
        assert pilot.keep_members(worse, "y", "e", design) is False


def test_members_start_from_the_choices_own_fit_as_member_0(tmp_path, small_qmof):
    """e's member 0 is the choice's last step, copied, not retrained: the members fit trains only
    members 1.., and its member 0 predicts as the one-member fit does."""
    import numpy as np

    from mofbalora.data.splits import Split
    from mofbalora.featurise import featurise_paths
    from mofbalora.predict import load_model
    from mofbalora.training.config import TrainConfig
    from mofbalora.training.fit import fit
    from tests.conftest import copy_cifs, write_labels

    ids, paths, gaps = small_qmof
    data = copy_cifs(paths[:60], tmp_path / "data")
    write_labels(data, ids[:60], gaps[:60])
    alone = TrainConfig.from_dict({"backbone": "cgcnn", "method": "balora", "epochs": 1, "batch_size": 8,
                                   "adapter": {"rank": 2, "alpha": 4, "target_modules": ["fc_full"]},
                                   "split": {"fractions": [0.5, 0.2, 0.2, 0.1], "method": "random", "seed": 0}})
    members = TrainConfig.from_dict({**alone.to_dict(), "members": 2})
    source = fit(alone, data=str(data), out_dir=tmp_path / "alone", progress=False)
    split = Split.load(source / "split.json")
    assert pilot.share_first_member(source, tmp_path / "e", members, data=str(data), split=split)
    copied = (tmp_path / "e" / "members" / "0" / "done").stat().st_mtime_ns
    assert fit(members, data=str(data), out_dir=tmp_path / "e", progress=False, split=split, resume=True) == tmp_path / "e"
    assert (tmp_path / "e" / "members" / "0" / "done").stat().st_mtime_ns == copied  # not retrained
    assert (tmp_path / "e" / "members" / "1" / "done").exists()
    assert not pilot.share_first_member(source, tmp_path / "e", members, data=str(data), split=split)  # started
    cifs = [data / f"{i}.cif" for i in split.test]
    one, two = load_model(source), load_model(tmp_path / "e")
    samples = featurise_paths(cifs, one.backbone.make_featuriser(), cache_dir=None, progress=False).samples
    np.testing.assert_allclose(two.predict_draws(samples, n_samples=3, seed=1)[:3],
                               one.predict_draws(samples, n_samples=3, seed=1), rtol=1e-5, atol=1e-6)
    other = TrainConfig.from_dict({**members.to_dict(), "lr": 0.01})
    with pytest.raises(ValueError, match="other settings"):
        pilot.share_first_member(source, tmp_path / "f", other, data=str(data), split=split)
