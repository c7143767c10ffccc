import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(path: Path) -> ModuleType:
    """A script (pipelines/, benchmarks/: not a package) as a module, registered under its file's
    stem as an import would (its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def load_pipeline(name: str) -> ModuleType:
    """``pipelines/<name>.py`` as a module."""
    return load_script(ROOT / "pipelines" / f"{name}.py")


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
