"""The ``mofbalora`` command line (typer). Only this module prints."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="PBE band-gap prediction for MOFs with calibrated LoRA/BaLoRA uncertainty (eV).")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download and inspect.")
app.add_typer(data_app, name="data")


VERBOSE = typer.Option(False, "--verbose", "-v", help="Show Lightning's messages and library warnings.")
#: what every command that reads structures takes (data.structures.CIF_SUFFIXES, not imported: the CLI loads lazily)
INPUTS_HELP = "CIF files (also .cif.gz, .cif.bz2, .cif.xz), folders or glob patterns."
MAX_ATOMS = typer.Option(1000, "--max-atoms", min=1,  # data.structures.DEFAULT_MAX_ATOMS (not imported: fast --help)
                         help="Skip cells with more atoms than this (a larger cell than every training cell is "
                              "flagged out of distribution).")

#: loggers whose start-up banners (accelerators found, tips) a user of predict/screen does not need
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def _print_version(value: bool) -> None:
    if value:
        from mofbalora import __version__
        from mofbalora.pretrained import DEFAULT_MODEL

        typer.echo(f"mofbalora {__version__} (default model: {DEFAULT_MODEL})")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and the default model, then exit.")) -> None:
    """Options before any command (the app's help text is the Typer's)."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        import warnings

        import crepes  # noqa: F401  its import puts "always show UserWarning" first in the filters; ours go before it
        import lightning.pytorch  # noqa: F401  its import sets its loggers' levels; ours must come after
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"lightning(\.|$)")


def _table_out(value: Optional[Path]) -> Optional[Path]:
    """--out of a table: refused before any work when its name is not .csv, .csv.gz or .parquet, or
    it cannot be written (a folder, or under a file)."""
    from mofbalora.data.io import check_table_path

    if value is not None:
        try:
            check_table_path(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return value


@app.command()
def validate(
    paths: List[str] = typer.Argument(..., help=INPUTS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", callback=_table_out, help="Also write the table here (.csv, .csv.gz or .parquet)."),
    max_atoms: int = MAX_ATOMS,
) -> None:
    """Check structures; print `id, status, reason, n_atoms, formula` per input.

    Exits non-zero only when no input is valid.
    """
    import pandas as pd

    from mofbalora.data.io import write_table_atomic
    from mofbalora.data.structures import validate_inputs

    try:
        rows = validate_inputs(paths, max_atoms=max_atoms)
    except ValueError as exc:  # an empty path
        raise typer.BadParameter(str(exc), param_hint="INPUTS") from exc
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
    source = url or release.url
    import urllib.error

    try:
        path = download(source, dest / release.filename, sha256=sha256 or release.sha256)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # the network: before OSError, which they are
        typer.echo(f"download of {source} failed: {exc} (offline? --url takes a mirror)", err=True)
        raise typer.Exit(1)
    except OSError as exc:  # this machine: the destination cannot be written (no mirror would help)
        typer.echo(f"cannot write the download to {dest}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1)
    except Exception as exc:  # a checksum mismatch, a broken stream: reported, not traced
        typer.echo(f"download of {source} failed: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(str(path))


@data_app.command("info")
def data_info(data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder or archive.")) -> None:
    """Join CIFs and labels and print the join report."""
    from mofbalora.data.datasets import load_labelled_dataset

    try:
        dataset = load_labelled_dataset(data)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot read the dataset: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{dataset.source}: {dataset.report.summary()}")


@app.command()
def featurise(
    paths: List[str] = typer.Argument(..., help=INPUTS_HELP),
    backbone: str = typer.Option("cgcnn", help="cgcnn, chgnet, sevennet, sevennet-early or cgcnn-sevennet."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache (default $MOFBALORA_CACHE or ~/.cache/mofbalora)."),
    workers: int = typer.Option(0, min=0, help="Processes; 0 = all cores."),
    skipped: Optional[Path] = typer.Option(None, callback=_table_out,
                                           help="Write skipped inputs with reasons here (.csv, .csv.gz or .parquet)."),
    verbose: bool = VERBOSE,
) -> None:
    """Featurise structures into the cache (later runs load from it)."""
    _setup_logging(verbose)
    from mofbalora.data.datasets import default_cache_dir
    from mofbalora.data.io import probe_writable
    from mofbalora.data.structures import expand_inputs
    from mofbalora.featurise import featurise_paths, get_featuriser

    try:
        featuriser = get_featuriser(backbone)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backbone") from exc
    try:
        expanded = expand_inputs(paths)
    except ValueError as exc:  # an empty path
        raise typer.BadParameter(str(exc), param_hint="INPUTS") from exc
    cache_dir = cache_dir or default_cache_dir()
    try:  # filling the cache is this command's whole job
        probe_writable(cache_dir)
    except OSError as exc:
        raise typer.BadParameter(f"{cache_dir}: cannot write there ({exc.strerror or exc})",
                                 param_hint="--cache-dir") from exc
    result = featurise_paths(expanded, featuriser, cache_dir=cache_dir, workers=workers, skipped_csv=skipped)
    typer.echo(f"{len(result.samples)} featurised ({result.n_cache_hits} from cache, {result.n_built} built), "
               f"{len(result.skipped)} skipped")
    if not result.samples:
        raise typer.Exit(1)


def _trainer_kwargs(accelerator: str, devices: str, num_nodes: int, strategy: str) -> dict:
    parsed_devices: int | str = int(devices) if devices.isdigit() else devices
    return {"accelerator": accelerator, "devices": parsed_devices, "num_nodes": num_nodes, "strategy": strategy}


def _prediction_trainer_kwargs(accelerator: str, devices: str, num_nodes: int, strategy: str) -> dict | None:
    """Trainer settings for predict/screen; None (predict in this process, no Trainer) for one CPU process."""
    kwargs = _trainer_kwargs(accelerator, devices, num_nodes, strategy)
    single = accelerator == "cpu" and kwargs["devices"] == 1 and num_nodes == 1 and strategy == "auto"
    return None if single else kwargs


ACCELERATOR = typer.Option("cpu", help="Lightning accelerator: cpu, gpu, auto.")
def _devices(value: str) -> str:
    """--devices as Lightning takes it: a count, 'auto', -1 (all) or device ids '0,1'."""
    if not re.fullmatch(r"auto|-1|\d+|\d+(,\d+)+,?", value.strip()):
        raise typer.BadParameter(f"{value!r}: give a number of devices, 'auto', -1 (all) or device ids such as 0,1")
    return value.strip()


DEVICES = typer.Option("1", callback=_devices, help="Devices per node (a number, 'auto', -1 or ids such as 0,1).")
NUM_NODES = typer.Option(1, min=1, help="Nodes (multi-node DDP; see docs/scaling.md).")
STRATEGY = typer.Option("auto", help="Lightning strategy, e.g. ddp.")
CHUNK_SIZE = typer.Option(256, "--chunk-size", help="Inputs per saved chunk (in OUT.parts/ until all are done).")
RESUME = typer.Option(True, "--resume/--no-resume",
                      help="Skip inputs an interrupted run with the same settings already saved in OUT.parts/.")
MODEL = typer.Option(None, "--model", help="A shipped model (`mofbalora models`; default qmof-pbe) or a model "
                                           "folder from `mofbalora fit`.")
SAMPLES = typer.Option(None, help="Weight samples S (BaLoRA); default: the S the model was calibrated with.")
INTERVALS = typer.Option("calibrated", "--intervals",
                         help="Where a 95% interval leaves its 5% of misses: 'calibrated' (the split chosen on "
                              "validation; qmof-pbe: 1.5% below, 3.5% above, so near-metals are covered) or 'central' "
                              "(2.5% each side: sharper, fewer near-metals covered). Means, stds and probabilities "
                              "are the same.")


@app.command()
def fit(
    config: Path = typer.Argument(..., help="YAML training config (pipelines/configs/fit_*.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder or archive (default: $MOFBALORA_DATA, data/qmof, ../shared/data/qmof)."),
    out: Path = typer.Option(Path("runs/model"), "--out", "-o", help="Model folder to write."),
    method: Optional[str] = typer.Option(None, help="Override the config: head, full, lora, balora, lora-ensemble, lora-mcdropout (needs adapter.dropout > 0)."),
    epochs: Optional[int] = typer.Option(None, help="Override the config's epochs."),
    max_structures: Optional[int] = typer.Option(None, help="Override the config's data subset size."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Put the adapters on the weights of this finished full fine-tune (a `--method full` folder with the same split) instead of the pretrained backbone."),
    warm_start_from: Optional[str] = typer.Option(None, "--warm-start-from", help="Start from this finished model's adapters, head and noise scale (a folder or a shipped name, e.g. qmof-pbe; same method, backbone, head and adapters as the config): a refit after new labels keeps its band-gap scale."),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop at the end of the epoch that reaches this many optimiser steps (rerun to resume)."),
    target: Optional[str] = typer.Option(None, "--target", help="Label column of the dataset CSV (default: its second column; the first holds the ids)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fit in --out (same config, data and split)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete what --out holds and fit from scratch."),
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    num_nodes: int = NUM_NODES,
    strategy: str = STRATEGY,
    verbose: bool = VERBOSE,
) -> None:
    """Fine-tune a backbone on PBE band gaps, calibrate it on a held-out split, write a model folder.

    A rerun with the same config, data and split resumes; a folder started differently is refused
    (naming the difference) unless --overwrite.
    """
    _setup_logging(verbose)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from mofbalora.fit_calibrate import complete_uncertainty_stages
    from mofbalora.training.config import load_train_config
    from mofbalora.training.fit import FolderMismatchError, fit as fit_model

    if resume and overwrite:
        raise typer.BadParameter("--resume and --overwrite exclude each other")
    try:
        train_config = load_train_config(config).with_overrides(
            method=method, epochs=epochs, max_structures=max_structures, target=target,
            init_from=None if init_from is None else str(init_from), warm_start_from=warm_start_from)
    except (OSError, ValueError) as exc:
        typer.echo(f"bad config: {exc}", err=True)
        raise typer.Exit(2)
    overrides = _trainer_kwargs(accelerator, devices, num_nodes, strategy)
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    try:
        result = fit_model(train_config, data=data, out_dir=out, trainer_overrides=overrides, resume=resume,
                           overwrite=overwrite)
    except FolderMismatchError as exc:
        typer.echo(f"refusing to fit: {exc}", err=True)
        raise typer.Exit(2)
    except (OSError, ValueError, MisconfigurationException, ImportError) as exc:  # no dataset, bad labels, no such accelerator
        if verbose:
            raise
        typer.echo(f"cannot fit: {exc}", err=True)
        raise typer.Exit(2)
    if result is not None:
        try:
            result = complete_uncertainty_stages(result, data=data)
        except ValueError as exc:  # trained, but the calibration split cannot calibrate it (e.g. too small)
            typer.echo(f"model in {out} is trained but NOT calibrated: {exc}", err=True)
            raise typer.Exit(1)
        typer.echo(f"model written to {result}")
    elif max_steps is not None:
        typer.echo(f"stopped at the end of the epoch that reached {max_steps} steps (or before it, if an earlier "
                   "session got there); rerun with a larger --max-steps, or none, to go on", err=True)


def _predict_table(model_name: Optional[str], inputs: List[str], samples: Optional[int], seed: int,
                   trainer_kwargs: dict | None, out: Path, chunk_size: int, resume: bool,
                   window_ev: tuple[float, float] | None = None, *, max_atoms: int, intervals: str = "calibrated"):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from mofbalora.predict import load_model
    from mofbalora.pretrained import resolve_model
    from mofbalora.streaming import stream_predictions

    try:
        model = load_model(resolve_model(model_name), intervals=intervals)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot load model: {exc}", err=True)
        raise typer.Exit(2)
    if model.calibrator is None:
        typer.echo("warning: this model folder is not calibrated; intervals are raw Gaussian ones", err=True)
    if message := model.samples_warning(samples):
        typer.echo(f"warning: {message}", err=True)
    try:
        table = stream_predictions(model, inputs, out, samples=samples, seed=seed, window_ev=window_ev,
                                   chunk_size=chunk_size, resume=resume, write=_is_global_zero(),
                                   trainer_kwargs=trainer_kwargs, max_atoms=max_atoms)
    except ValueError as exc:
        typer.echo(f"cannot predict: {exc}", err=True)
        raise typer.Exit(2)
    except (MisconfigurationException, ImportError) as exc:  # --accelerator gpu where there is none; tpu without torch_xla
        typer.echo(f"cannot predict with --accelerator {(trainer_kwargs or {}).get('accelerator', 'cpu')}: {exc}", err=True)
        raise typer.Exit(2)
    return model, table


def _is_global_zero() -> bool:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


@app.command()
def predict(
    inputs: List[str] = typer.Argument(..., help=INPUTS_HELP),
    model: Optional[str] = MODEL,
    samples: Optional[int] = SAMPLES,
    intervals: str = INTERVALS,
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", callback=_table_out, help=".csv, .csv.gz or .parquet."),
    chunk_size: int = CHUNK_SIZE,
    resume: bool = RESUME,
    max_atoms: int = MAX_ATOMS,
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    num_nodes: int = NUM_NODES,
    strategy: str = STRATEGY,
    verbose: bool = VERBOSE,
) -> None:
    """Predict PBE band gaps (eV) with calibrated uncertainty; one row per input, invalid ones marked skipped.

    Results are saved chunk by chunk; rerunning an interrupted command resumes where it stopped.

    Columns: id, bandgap_mean_ev (>= 0), bandgap_std_ev (total: epistemic + data noise,
    calibrated), bandgap_std_epistemic_ev, bandgap_std_aleatoric_ev (the structure's data noise),
    lower_95_ev, upper_95_ev (conformal 95% interval, >= 0), p_metallic (calibrated P(gap < 0.1
    eV)), out_of_distribution, ood_reason, status, reason. Deterministic methods (head, full,
    lora) report the epistemic std as NaN. PBE gaps underestimate experimental ones.
    """
    _setup_logging(verbose)
    _, table = _predict_table(model, inputs, samples, seed,
                              _prediction_trainer_kwargs(accelerator, devices, num_nodes, strategy), out, chunk_size,
                              resume, max_atoms=max_atoms, intervals=intervals)
    if _is_global_zero():
        n_ok = int((table["status"] == "ok").sum())
        typer.echo(f"{n_ok} predicted, {len(table) - n_ok} skipped -> {out}", err=True)
    if not (table["status"] == "ok").any():
        raise typer.Exit(1)


def _parse_window(gap: str) -> tuple[float, float]:
    from mofbalora.uncertainty.intervals import check_window

    try:
        return check_window([float(x) for x in gap.split(":")])
    except ValueError as exc:  # not numbers, not two of them, or LOW >= HIGH
        raise typer.BadParameter(f"expected LOW:HIGH in eV, got {gap!r}: {exc}") from exc


@app.command()
def screen(
    inputs: List[str] = typer.Argument(..., help=INPUTS_HELP),
    model: Optional[str] = MODEL,
    gap: str = typer.Option(..., "--gap", help="Band-gap window LOW:HIGH in eV, e.g. 1.5:3.0."),
    samples: Optional[int] = SAMPLES,
    intervals: str = INTERVALS,
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(Path("screen.csv"), "--out", "-o", callback=_table_out, help="Ranked table (.csv, .csv.gz or .parquet)."),
    top: int = typer.Option(10, min=0, help="Rows shown in the summary."),
    in_distribution_first: bool = typer.Option(
        False, "--in-distribution-first",
        help="Rank structures flagged out of distribution after all others (each group by probability)."),
    chunk_size: int = CHUNK_SIZE,
    resume: bool = RESUME,
    max_atoms: int = MAX_ATOMS,
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    num_nodes: int = NUM_NODES,
    strategy: str = STRATEGY,
    verbose: bool = VERBOSE,
) -> None:
    """Rank structures by the calibrated probability that their PBE band gap lies in the window.

    Results are saved chunk by chunk; rerunning an interrupted screen resumes where it stopped.

    p_in_window comes from the conformal predictive distribution fitted on the model's held-out
    calibration split. out_of_distribution flags a structure whose epistemic std or embedding
    distance to the training structures exceeds the calibration split's 95th percentile, or whose
    cell is larger than any training cell; ood_reason says which.
    """
    from mofbalora.data.io import write_table_atomic, write_text_atomic
    from mofbalora.uncertainty.screening import rank_by_window, screening_summary

    _setup_logging(verbose)
    low, high = _parse_window(gap)
    _, table = _predict_table(model, inputs, samples, seed,
                              _prediction_trainer_kwargs(accelerator, devices, num_nodes, strategy), out, chunk_size,
                              resume, window_ev=(low, high), max_atoms=max_atoms, intervals=intervals)
    if not _is_global_zero():
        return
    ranked = rank_by_window(table, low, high, in_distribution_first=in_distribution_first)
    write_table_atomic(ranked, out)
    summary = screening_summary(ranked, low, high, top=top)
    write_text_atomic(Path(str(out) + ".summary.md"), summary)
    typer.echo(summary)
    if not (ranked["status"] == "ok").any():
        raise typer.Exit(1)


def _read_exclude(path: Optional[Path]) -> list[str]:
    """The ids of an --exclude CSV (column ``id``, else the first column); a clear error otherwise."""
    if path is None:
        return []
    from mofbalora.streaming import read_predictions

    try:
        table = read_predictions(path)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: cannot read the ids to exclude ({exc})") from exc
    if table.empty and not len(table.columns):
        raise typer.BadParameter(f"{path}: no column of ids")
    column = "id" if "id" in table.columns else table.columns[0]
    return [str(i) for i in table[column]]


@app.command()
def suggest(
    inputs: List[str] = typer.Argument(..., help="The pool: " + INPUTS_HELP),
    budget: int = typer.Option(..., "--budget", "-k", help="How many structures to compute next (K)."),
    goal: str = typer.Option(..., "--goal", help="'learn' (the most uncertain) or 'window:LO:HI' (find gaps in "
                                                 "LO-HI eV)."),
    model: Optional[str] = MODEL,
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="CSV of ids already computed (column id)."),
    samples: Optional[int] = SAMPLES,
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(Path("suggestions.csv"), "--out", "-o", callback=_table_out,
                             help="The K structures in the order to compute them (.csv, .csv.gz or .parquet); "
                                  "the pool's predictions go to OUT.pool.csv."),
    chunk_size: int = CHUNK_SIZE,
    resume: bool = RESUME,
    max_atoms: int = MAX_ATOMS,
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    num_nodes: int = NUM_NODES,
    strategy: str = STRATEGY,
    verbose: bool = VERBOSE,
) -> None:
    """Which structures of a pool to compute (DFT) next, one row each in the order to compute them.

    Columns: rank, id, bandgap_mean_ev, bandgap_std_ev, p_in_window (window goal), acquisition,
    reason. 'learn' picks the largest calibrated std; 'window:LO:HI' the upper confidence bound
    P + sqrt(P(1 - P)) of a hit, P = p_in_window. Near-duplicates (close in the backbone's frozen
    embedding) never share a batch. The pool is predicted as `screen` does (streamed, resumable, DDP).
    """
    from mofbalora.data.io import write_table_atomic
    from mofbalora.predict import resolve_inputs
    from mofbalora.suggest import check_budget, embeddings_of, parse_goal, predicted_pool, shortlist
    from mofbalora.suggest import suggest_from_predictions

    _setup_logging(verbose)
    try:  # every bad input is refused before any structure is predicted
        parsed = parse_goal(goal)
        excluded = set(_read_exclude(exclude))
        slots, ids = resolve_inputs(inputs)
        check_budget(budget, len(set(ids) - excluded))
    except (ValueError, TypeError) as exc:
        typer.echo(f"cannot suggest: {exc}", err=True)
        raise typer.Exit(2)
    loaded, table = _predict_table(model, inputs, samples, seed,
                                   _prediction_trainer_kwargs(accelerator, devices, num_nodes, strategy),
                                   Path(str(out) + ".pool.csv"), chunk_size, resume,
                                   window_ev=parsed.window_ev, max_atoms=max_atoms)
    if not _is_global_zero():
        return
    pool = predicted_pool(table, sorted(excluded))
    try:
        check_budget(budget, len(pool))
    except ValueError as exc:
        typer.echo(f"cannot suggest: {exc} (structures that could not be predicted are in {out}.pool.csv)", err=True)
        raise typer.Exit(2)
    candidates = shortlist(pool, parsed, budget)
    embeddings = embeddings_of(loaded, candidates, dict(zip(ids, slots)))
    chosen = suggest_from_predictions(candidates, embeddings, budget=budget, goal=parsed)
    write_table_atomic(chosen, out)
    typer.echo(f"{len(chosen)} of {len(pool)} structures suggested for goal {parsed} -> {out}", err=True)
    if len(chosen) < budget:
        typer.echo(f"warning: only {len(chosen)} structures left once near-duplicates of the picks were removed",
                   err=True)


@app.command()
def models() -> None:
    """List the models that ship with mofbalora (usable offline with `--model NAME`)."""
    import json

    from mofbalora.pretrained import DEFAULT_MODEL, SHIPPED

    for shipped in SHIPPED:
        present = (shipped.folder / "model.json").exists()
        line = f"{shipped.alias}{' (default)' if shipped.alias == DEFAULT_MODEL else ''}: {shipped.summary}"
        release = shipped.folder / "release.json"
        if release.exists():
            test = json.loads(release.read_text())["test"]
            rho = test.get("spearman_calibrated_std_abs_error")  # how well its std ranks the errors
            small = test.get("small_gap_coverage_95")  # how often conductors' intervals hold
            line += (f"; test MAE {test['mae_ev']['value']:.3f} eV, calibrated 95% coverage "
                     f"{test['coverage_95']['value']:.3f}"
                     + (f" (true gaps below {test['small_gap']['threshold_ev']:g} eV {small['value']:.2f})" if small else "")
                     + (f", ρ(std, |error|) {rho['value']:.2f}" if rho else "") + f" (n = {test['n_test']})")
        typer.echo(line if present else f"{line} [missing from this install]")
        typer.echo(f"    {shipped.folder}{'/MODEL_CARD.md' if present else ''}")


def render_cli_reference() -> str:
    """docs/cli.md, generated from the commands' own help (tests check it has not drifted)."""
    root = typer.main.get_command(app)
    lines = ["# `mofbalora` command reference", "",
             "Generated from the CLI's help by `make docs`; `tests/test_docs.py` fails if it drifts.", ""]

    def walk(command, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name in sorted(command.commands):
                walk(command.commands[name], [*path, name])
            return
        lines.extend([f"## `mofbalora {' '.join(path)}`", "", (command.help or "").strip(), ""])
        for param in command.params:
            if param.name == "help":
                continue
            if param.param_type_name == "argument":
                lines.append(f"- `{param.name.upper()}` (argument{', several' if param.nargs == -1 else ''})")
                continue
            default = "" if param.default in (None, False) or param.required else f" (default: `{param.default}`)"
            required = " **required**" if param.required else ""
            lines.append(f"- `{'`, `'.join(param.opts)}`{required}: {getattr(param, 'help', '') or ''}{default}")
        lines.append("")

    walk(root, [])
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
