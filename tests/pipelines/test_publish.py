"""Publishing a study report: docs/results/<profile>/ and the generated sections of docs/studies/bandgap_benchmark.md."""

import json
import shutil

from .conftest import ROOT, load_pipeline


def test_publish_keeps_one_study_page_section_per_profile(tmp_path, monkeypatch):
    """cpu-large gets its own generated section of the study's page, put before the cpu one once and
    replaced in place after; the cpu section and the rest of the page stay as they were. The committed cpu
    report stands in for a cpu-large one."""
    pipeline = load_pipeline("bandgap_benchmark")
    report = tmp_path / "run"
    shutil.copytree(ROOT / "docs" / "results", report)
    (report / "predictions").mkdir()
    (report / "predictions" / "balora.csv").write_text("id,mean_ev,std_ev\n")
    metrics = json.loads((report / "metrics.json").read_text())
    metrics["setup"]["profile"] = "cpu-large"
    repo = tmp_path / "repo"
    page = repo / pipeline.STUDY_PAGE
    page.parent.mkdir(parents=True)
    cpu_block = "<!-- results:start (generated) -->\nthe cpu table\n<!-- results:end -->"
    page.write_text(f"# title\n\n## Latest results\n\n{cpu_block}\n\n## After\n")
    monkeypatch.setattr(pipeline, "ROOT", repo)
    for finished in ("first", "second"):
        metrics["setup"]["finished"] = finished
        pipeline.publish(report, metrics)
        text = page.read_text()
        assert text.count("<!-- results-cpu-large:start") == 1 and text.count("<!-- results-cpu-large:end -->") == 1
        assert text.index("results-cpu-large:end") < text.index("<!-- results:start") and cpu_block in text
        assert f"Latest `cpu-large` run ({finished}," in text and text.endswith("## After\n")
        claim_2 = metrics["claims"]["claim_2_improves_with_samples"]
        beyond = claim_2["balora"]["rise_beyond_noise"]
        assert f"noise-only expectation: BaLoRA {beyond:+.3f}" in text  # a verdict never stands without its numbers
        assert "](../results/cpu-large/" in text  # links from docs/studies/
    assert (repo / "docs" / "results" / "cpu-large" / "report.md").exists()
    assert not (repo / "docs" / "results" / "cpu-large" / "predictions").exists()  # predictions stay unpublished


def test_other_profiles_leave_the_study_page_alone(tmp_path, monkeypatch):
    pipeline = load_pipeline("bandgap_benchmark")
    metrics = json.loads((ROOT / "docs" / "results" / "metrics.json").read_text())
    metrics["setup"]["profile"] = "gpu"
    page = tmp_path / pipeline.STUDY_PAGE
    page.parent.mkdir(parents=True)
    page.write_text("untouched\n")
    monkeypatch.setattr(pipeline, "ROOT", tmp_path)
    pipeline.publish(ROOT / "docs" / "results", metrics)
    assert page.read_text() == "untouched\n"
    assert (tmp_path / "docs" / "results" / "gpu" / "metrics.json").exists()
