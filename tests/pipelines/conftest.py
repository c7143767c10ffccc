import importlib
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_pipeline(name: str) -> ModuleType:
    """``pipelines/<name>.py`` as a module (``pipelines.<name>``)."""
    return importlib.import_module(f"pipelines.{name}")


def run_make(*arguments: str, timeout: int = 900) -> None:
    """``make -s <arguments>`` in the repository, which must succeed (its stderr tail otherwise)."""
    done = subprocess.run(["make", "-s", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def run_smoke_target(target: str, args_variable: str, results: Path, report_glob: str) -> tuple[Path, Path, list[str]]:
    """``make <target> PROFILE=smoke`` into ``results`` (not published); returns (report folder,
    results, the command, for a rerun)."""
    command = ["make", "-s", target, "PROFILE=smoke", f"{args_variable}=--results {results} --no-publish"]
    run_make(*command[2:])
    reports = sorted(results.glob(report_glob))
    assert len(reports) == 1
    return reports[0], results, command
