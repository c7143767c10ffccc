import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_smoke_target(target: str, args_variable: str, results: Path, report_glob: str) -> tuple[Path, Path, list[str]]:
    """``make <target> PROFILE=smoke`` into ``results`` (not published); returns (report folder,
    results, the command, for a rerun)."""
    command = ["make", "-s", target, "PROFILE=smoke", f"{args_variable}=--results {results} --no-publish"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = sorted(results.glob(report_glob))
    assert len(reports) == 1
    return reports[0], results, command
