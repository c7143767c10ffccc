"""The ``mofbalora`` command line (typer). Only this module prints."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Band-gap prediction for MOFs with LoRA/BaLoRA uncertainty.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download and inspect.")
app.add_typer(data_app, name="data")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def validate(
    paths: List[str] = typer.Argument(..., help="CIF files, folders or glob patterns."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table as CSV here."),
    max_atoms: int = typer.Option(1000, help="Reject cells with more atoms than this."),
) -> None:
    """Check structures; print `id, status, reason, n_atoms, formula` per input.

    Exits non-zero only when no input is valid.
    """
    import pandas as pd

    from mofbalora.data.io import write_table_atomic
    from mofbalora.data.structures import validate_inputs

    rows = validate_inputs(paths, max_atoms=max_atoms)
    table = pd.DataFrame([r.__dict__ for r in rows], columns=["id", "path", "status", "reason", "n_atoms", "formula"])
    for row in rows:
        n_atoms = "" if row.n_atoms is None else row.n_atoms
        typer.echo(f"{row.id}, {row.status}, {row.reason}, {n_atoms}, {row.formula}")
    if out is not None:
        write_table_atomic(table[["id", "status", "reason", "n_atoms", "formula", "path"]], out)
    n_valid = sum(r.status == "valid" for r in rows)
    typer.echo(f"{n_valid} of {len(rows)} valid", err=True)
    if n_valid == 0:
        raise typer.Exit(1)


@data_app.command("download")
def data_download(
    name: str = typer.Argument("qmof", help="Release to fetch: qmof."),
    dest: Path = typer.Option(Path("data/qmof"), help="Folder to write into."),
    url: Optional[str] = typer.Option(None, help="Override the release URL (e.g. a mirror)."),
    sha256: Optional[str] = typer.Option(None, help="Expected sha256 of the file."),
) -> None:
    """Fetch a dataset release (needs internet); resumes partial downloads and verifies the checksum."""
    from mofbalora.data.download import RELEASES, download

    if name not in RELEASES:
        typer.echo(f"unknown release {name!r}; choose from {sorted(RELEASES)}", err=True)
        raise typer.Exit(2)
    release = RELEASES[name]
    try:
        path = download(url or release.url, dest / release.filename, sha256=sha256 or release.sha256)
    except Exception as exc:  # network failures are reported, not traced
        typer.echo(f"download failed: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(str(path))


@data_app.command("info")
def data_info(data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder or archive.")) -> None:
    """Join CIFs and labels and print the join report."""
    from mofbalora.data.datasets import load_labelled_dataset

    dataset = load_labelled_dataset(data)
    typer.echo(f"{dataset.source}: {dataset.report.summary()}")


@app.command()
def featurise(
    paths: List[str] = typer.Argument(..., help="CIF files, folders or glob patterns."),
    backbone: str = typer.Option("cgcnn", help="cgcnn or chgnet."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache (default $MOFBALORA_CACHE or ~/.cache/mofbalora)."),
    workers: int = typer.Option(0, help="Processes; 0 = all cores."),
    skipped: Optional[Path] = typer.Option(None, help="Write skipped inputs with reasons here."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Featurise structures into the cache (later runs load from it)."""
    _setup_logging(verbose)
    from mofbalora.data.datasets import default_cache_dir
    from mofbalora.data.structures import expand_inputs
    from mofbalora.featurise import featurise_paths, get_featuriser

    result = featurise_paths(
        expand_inputs(paths), get_featuriser(backbone), cache_dir=cache_dir or default_cache_dir(),
        workers=workers, skipped_csv=skipped,
    )
    typer.echo(f"{len(result.samples)} featurised ({result.n_cache_hits} from cache, {result.n_built} built), "
               f"{len(result.skipped)} skipped")
    if not result.samples:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
