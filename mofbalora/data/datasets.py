"""Labelled datasets: a folder or .tar.xz of CIFs joined to a CSV ``id,<target>``, with a join report."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from mofbalora.data.io import decode_text, sha256_file
from mofbalora.data.structures import CIF_SUFFIXES, structure_id

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "MOFBALORA_DATA"
CACHE_ENV_VAR = "MOFBALORA_CACHE"
QMOF_TARGET = "bandgap_pbe_ev"


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """``$MOFBALORA_CACHE``, else ``~/.cache/mofbalora``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "mofbalora"


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """Where the labelled data lives.

    Order: the ``data`` argument (``--data``), ``$MOFBALORA_DATA``, ``data/qmof/`` in the project,
    then ``../shared/data/qmof/`` beside the project.

    Raises:
        FileNotFoundError: listing every place looked at.
    """
    candidates: list[Path] = []
    if data is not None:
        candidates.append(Path(data).expanduser())  # "~/data" from Python or a config, where no shell expands it
    elif os.environ.get(DATA_ENV_VAR):
        candidates.append(Path(os.environ[DATA_ENV_VAR]).expanduser())
    else:
        root = project_root()
        candidates += [root / "data" / "qmof", root.parent / "shared" / "data" / "qmof"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no dataset found (looked at {tried}); pass --data, set {DATA_ENV_VAR}, "
        "or run `mofbalora data download qmof`"
    )


def _find_labels_csv(folder: Path) -> Path:
    csvs = sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))
    if not csvs:
        raise FileNotFoundError(f"{folder}: no label CSV (expected a file `id,<target>`)")
    if len(csvs) > 1:
        preferred = [p for p in csvs if p.stem in ("bandgaps", "labels", "id_prop")]
        if preferred:
            return preferred[0]
        raise ValueError(f"{folder}: several CSV files, pass the labels file explicitly: {csvs}")
    return csvs[0]


def unpack_archive_once(archive: Path, cache_dir: Path | None = None) -> Path:
    """Unpack a .tar.xz of CIFs into the cache once; later calls return the same folder.

    The folder is keyed by the archive's content (sha256; about 0.2 s for QMOF's 68 MB), not its
    path or modification time, so the same archive copied anew (each session) or reached by
    another path reuses one unpack. A marker file is written last, so an interrupted unpack is
    redone, never used half-done.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = sha256_file(archive)[:16]
    target = cache_dir / "unpacked" / f"{archive.name.split('.')[0]}-{key}"
    marker = target / ".complete"
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if marker.exists():
            return target
        if target.exists():
            shutil.rmtree(target)
        partial = target.with_name(target.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        logger.info("unpacking %s into %s (once)", archive, target)
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(partial, filter="data")
        os.replace(partial, target)
        marker.write_text(str(archive))
    return target


@dataclass
class JoinReport:
    """What happened when CIFs and labels were joined."""

    n_cifs: int = 0
    n_labels: int = 0
    n_joined: int = 0
    labels_without_cif: list[str] = field(default_factory=list)
    cifs_without_label: list[str] = field(default_factory=list)
    #: ids whose label is missing, not a number, or infinite
    nan_labels: list[str] = field(default_factory=list)
    negative_labels: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    #: ids that name more than one CIF (``a/x.cif``, ``b/x.cif``): left out, since the label's structure is unknown
    ambiguous_cif_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every label joined a CIF and every CIF a label."""
        return self.n_joined == self.n_labels == self.n_cifs

    def summary(self) -> str:
        """Counts of each outcome, with up to three ids of each one that left something out."""
        def part(ids: list[str], what: str) -> str:
            examples = f" (e.g. {', '.join(ids[:3])})" if ids else ""
            return f"{len(ids)} {what}{examples}"

        return (
            f"{self.n_joined} joined from {self.n_cifs} CIFs and {self.n_labels} labels; "
            + ", ".join([part(self.labels_without_cif, "labels without CIF"),
                         part(self.cifs_without_label, "CIFs without label"), part(self.nan_labels, "NaN labels"),
                         part(self.negative_labels, "negative labels"), part(self.duplicate_ids, "duplicate ids"),
                         part(self.ambiguous_cif_ids, "ids naming several CIFs")])
        )


@dataclass
class LabelledDataset:
    """CIF paths joined to a target column.

    Attributes:
        table: columns ``id``, ``path`` and the target (eV for band gaps), one row per usable entry.
        target: the target column's name.
        report: the join report.
        labels_sha256: checksum of the label file, recorded with every run.
    """

    table: pd.DataFrame
    target: str
    report: JoinReport
    labels_sha256: str
    source: Path

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, ids: list[str]) -> "LabelledDataset":
        indexed = self.table.set_index("id")
        missing = [i for i in ids if i not in indexed.index]
        if missing:
            raise KeyError(f"{len(missing)} ids not in dataset {self.source}, e.g. {missing[:3]}")
        table = indexed.loc[ids].reset_index()
        return LabelledDataset(table, self.target, self.report, self.labels_sha256, self.source)


def _cif_index(folder: Path) -> tuple[dict[str, str], list[str]]:
    """The CIF paths under ``folder`` by id (file name without its suffix), and the ids that name more
    than one file (``a/x.cif`` and ``b/x.cif``), which are left out of the index."""
    found: dict[str, list[str]] = {}
    # os.walk and plain strings: QMOF's 18k files took ~2 s through sorted Path.rglob, once per load
    for root, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(CIF_SUFFIXES):
                found.setdefault(structure_id(name), []).append(os.path.join(root, name))
    index = {key: paths[0] for key, paths in found.items() if len(paths) == 1}
    return index, sorted(key for key, paths in found.items() if len(paths) > 1)


def _label_id(raw: str, cif_ids: set[str]) -> str:
    """A label's id as the CIF index spells it: surrounding spaces dropped, and a file name
    (``x.cif``, ``x.cif.gz``) read as its stem when that stem names a CIF."""
    value = raw.strip()
    if value not in cif_ids:
        for suffix in CIF_SUFFIXES:
            if value.lower().endswith(suffix) and value[: -len(suffix)] in cif_ids:
                return value[: -len(suffix)]
    return value


def load_labelled_dataset(
    data: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    target: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LabelledDataset:
    """Join a folder (or .tar.xz) of CIFs with a label CSV, reporting every mismatch.

    Args:
        data: a folder holding the CIFs (or an archive of them) and a label CSV; see
            :func:`resolve_data_dir` for the default.
        labels: the label CSV, when it is not in ``data``.
        target: the target column; default, the CSV's second column.
        cache_dir: where archives are unpacked.
    """
    source = resolve_data_dir(data)
    if source.is_file() and source.name.endswith((".tar.xz", ".tar.gz", ".tar")):
        cif_root = unpack_archive_once(source, Path(cache_dir) if cache_dir else None)
        label_dir = source.parent
    else:
        archives = sorted(source.glob("*.tar.xz"))
        loose = any(p.suffix.lower() == ".cif" for p in source.rglob("*.cif"))
        if archives and not loose:
            cif_root = unpack_archive_once(archives[0], Path(cache_dir) if cache_dir else None)
        else:
            cif_root = source
        label_dir = source
    labels_path = Path(labels) if labels else _find_labels_csv(label_dir)
    # UTF-16 (Excel's "Unicode text") or Latin-1 raised a UnicodeDecodeError that named no file
    text = decode_text(labels_path.read_bytes())
    # Excel writes ';' where the decimal mark is a comma (a '.' still reads: to_numeric below), and
    # tabs as "Unicode text"; a header without a comma names the separator
    header = text.split("\n", 1)[0]
    separator = next((sep for sep in (",", ";", "\t") if sep in header), ",")
    frame = pd.read_csv(io.StringIO(text), sep=separator, decimal="," if separator == ";" else ".")
    if len(frame.columns):  # ids as written: pandas reads 0001 as 1, 1.10 as 1.1 and NA as missing
        frame[frame.columns[0]] = pd.read_csv(io.StringIO(text), sep=separator, usecols=[0], dtype=str,
                                              keep_default_na=False).iloc[:, 0]
    if frame.shape[1] < 2:
        raise ValueError(f"{labels_path}: expected columns `id,<target>`, got {list(frame.columns)}")
    id_column = frame.columns[0]
    target = target or frame.columns[1]
    if target not in frame.columns:
        raise ValueError(f"{labels_path}: no column {target!r} (have {list(frame.columns)})")
    frame = frame[[id_column, target]].rename(columns={id_column: "id"})
    cifs, ambiguous = _cif_index(cif_root)
    cif_ids = set(cifs) | set(ambiguous)
    frame["id"] = [_label_id(value, cif_ids) for value in frame["id"].astype(str)]
    numbers = pd.to_numeric(frame[target], errors="coerce")
    text = frame[target][numbers.isna() & frame[target].notna()].astype(str)
    if len(text) * 2 > frame[target].notna().sum():  # a unit in every cell ("1.2 eV"), or another column
        raise ValueError(f"{labels_path}: {len(text)} of {len(frame)} values of {target!r} are not numbers "
                         f"(e.g. {', '.join(repr(v) for v in text.head(3))}); give band gaps in eV as plain numbers")
    # a few unreadable values, and infinite ones (inf, 1e999), are reported with the NaN labels;
    # one infinite label used to stop the whole fit ('need at least two finite training targets')
    frame[target] = numbers.where(np.isfinite(numbers))

    report = JoinReport(n_labels=len(frame), ambiguous_cif_ids=ambiguous)
    duplicated = frame["id"].duplicated(keep=False)
    report.duplicate_ids = sorted(frame.loc[duplicated, "id"].unique().tolist())
    # A duplicated id is ambiguous: drop every copy rather than guess which label is right.
    frame = frame[~duplicated]
    nan_mask = frame[target].isna()
    report.nan_labels = frame.loc[nan_mask, "id"].tolist()
    frame = frame[~nan_mask]
    # A band gap is >= 0 eV, and every later stage (the censored intervals, p_metallic) assumes it.
    negative = frame[target] < 0
    report.negative_labels = frame.loc[negative, "id"].tolist()
    if negative.sum() * 2 > len(frame):
        raise ValueError(f"{labels_path}: {int(negative.sum())} of {len(frame)} values of {target!r} are negative; "
                         f"mofbalora fits band gaps (>= 0 eV), so this column looks like another quantity")
    frame = frame[~negative]

    report.n_cifs = len(cifs) + len(ambiguous)
    report.labels_without_cif = sorted(set(frame["id"]) - cif_ids)
    labelled = set(frame["id"]) | set(report.nan_labels) | set(report.negative_labels) | set(report.duplicate_ids)
    report.cifs_without_label = sorted(set(cifs) - labelled)
    frame = frame[frame["id"].isin(cifs)].copy()
    frame["path"] = frame["id"].map(cifs)
    frame = frame.sort_values("id").reset_index(drop=True)[["id", "path", target]]
    report.n_joined = len(frame)
    logger.info("%s: %s", source, report.summary())

    return LabelledDataset(frame, target, report, sha256_file(labels_path), source)
