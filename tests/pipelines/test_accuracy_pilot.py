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
