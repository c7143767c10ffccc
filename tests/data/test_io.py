import os
import stat

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from mofbalora.data.io import atomic_path, write_table_atomic, write_text_atomic
from tests.conftest import cli_message


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")
        write_text_atomic(tmp_path / "atomic.txt", "x")
        write_table_atomic(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")
        write_table_atomic(pd.DataFrame({"a": [1]}), tmp_path / "table.parquet")
        with atomic_path(tmp_path / "weights.safetensors") as tmp:  # safetensors writes a file of its own
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("atomic.txt", "table.csv", "table.parquet", "weights.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_table_format_follows_the_name_and_refuses_others(tmp_path):
    from mofbalora.data.io import table_format

    assert [table_format(n) for n in ("a.csv", "a.CSV", "a.csv.gz", "run.v2.parquet")] == ["csv", "csv", "csv.gz", "parquet"]
    for name in ("a.xlsx", "a.gz", "a.csv.bz2", "a"):
        with pytest.raises(ValueError, match=f"{name}: cannot write a table"):
            table_format(name)
    frame = pd.DataFrame({"id": ["x", "y"], "bandgap_mean_ev": [1.0, 2.5]})
    write_table_atomic(frame, tmp_path / "t.csv.gz")
    assert (tmp_path / "t.csv.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv.gz"), frame)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's sysfs, which refuses new files")
def test_a_table_path_that_cannot_be_written_is_refused_before_the_work(tmp_path):
    """A folder named x.csv, or a path under a file, used to fail with a traceback after every
    structure was predicted; both are refused up front (the CLI's --out, streaming)."""
    from typer.testing import CliRunner

    from mofbalora.cli import app
    from mofbalora.data.io import check_table_path

    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "plain").write_text("")
    assert check_table_path(tmp_path / "new" / "deeper" / "t.parquet") == "parquet"
    with pytest.raises(ValueError, match="is a folder"):
        check_table_path(tmp_path / "folder.csv")
    with pytest.raises(ValueError, match="plain is a file, not a folder"):
        check_table_path(tmp_path / "plain" / "t.csv")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "none.cif"), "-o", str(tmp_path / "folder.csv")])
    assert result.exit_code == 2 and "is a folder" in cli_message(result.output)
    # a folder that refuses new files (sysfs refuses even root): a traceback before, now refused up front
    assert not list(tmp_path.glob(".*.probe")) and not (tmp_path / "new").exists()  # the check leaves nothing
    with pytest.raises(ValueError, match="cannot write in /sys"):
        check_table_path("/sys/predictions.csv")
    for command in (["predict", str(tmp_path / "none.cif"), "-o", "/sys/p.csv"], ["validate", str(tmp_path), "-o", "/sys/v.csv"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "cannot write in /sys" in cli_message(result.output), result.output
