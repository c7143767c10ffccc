"""pipelines/alpha_adaptivity.py's declared pieces: which runs the two arms are, how the paired ρ
difference is read, and how the verdict goes into the study report (the runs themselves take an
hour on 2 cores and are not repeated here)."""

import pytest

from .conftest import load_pipeline


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline("alpha_adaptivity")


def test_arms_are_the_winner_with_and_without_input_adaptivity(pipeline, monkeypatch):
    from pipelines.bandgap_benchmark import load_profile

    design = pipeline.load_design("cpu-large")
    profile = load_profile(design["benchmark_profile"])
    # a winner that was itself the constant-alpha variant: the adaptive arm must still read z(x)
    monkeypatch.setattr(pipeline, "winner_of", lambda _: (
        "w+alpha-constant", {"prior": "log_uniform", "kl_count": "layer", "alpha_net_input": "constant"},
        {"noise_std_fit": "mean_mode"}))
    arms = pipeline.arms(design, profile)
    assert set(arms) == {"balora", "balora-constant-alpha", *design["references"]}
    for arm, alpha_input in (("balora", "frozen_embedding"), ("balora-constant-alpha", "constant")):
        runs = arms[arm]
        assert [config.seed for _, config in runs] == design["seeds"] and len(runs) >= 3
        for name, config in runs:
            assert name.startswith(f"{arm}-w-seed")
            assert config.adapter["alpha_net_input"] == alpha_input
            assert config.adapter["prior"] == "log_uniform" and config.adapter["kl_count"] == "layer"
            assert config.adapter["rank"] == profile["adapter"]["rank"] and config.noise_std_fit == "mean_mode"
    assert [name for name, _ in arms["lora-ensemble"]] == ["lora-ensemble"]
    assert set(pipeline.arms(design, profile, references_only=True)) == set(design["references"])


def test_reading_of_the_paired_difference(pipeline):
    assert pipeline.reading({"ci_low": 0.01, "ci_high": 0.2}) == "helps"
    assert pipeline.reading({"ci_low": -0.2, "ci_high": -0.01}) == "hurts"
    assert pipeline.reading({"ci_low": -0.1, "ci_high": 0.1}) == "makes no detectable difference"


def test_verdict_section_replaces_itself_in_the_study_report(pipeline, tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# Study\n\nbody\n")
    diff = {"value": 0.05, "ci_low": -0.01, "ci_high": 0.11}
    results = {"winner": "w", "design": {"seeds": [0, 1, 2]},
               "sets": {"test": {"verdict": "makes no detectable difference",
                                 "spearman_difference_adaptive_minus_constant": diff}}}
    pipeline.publish_section(report, results)
    results["sets"]["test"]["verdict"] = "helps"
    pipeline.publish_section(report, results)
    text = report.read_text()
    assert text.startswith("# Study\n\nbody\n") and text.count(pipeline.SECTION_START) == 1
    assert "input adaptivity **helps**" in text and "no detectable" not in text
