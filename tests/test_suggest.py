"""`mofbalora suggest` on real QMOF CIFs with the shipped model: what it picks for each goal, that
excluded ids never come back, K distinct ids, and every bad input refused with a message."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from mofbalora.cli import app
from tests.conftest import cli_message, copy_cifs

WINDOW = (1.5, 3.0)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, smallest_qmof):
    """40 small QMOF structures as a pool, and one `suggest` run of each goal over it (K = 5)."""
    folder = tmp_path_factory.mktemp("suggest")
    _, paths, _ = smallest_qmof(40)
    cifs = copy_cifs(paths, folder / "pool")
    runs = {}
    for goal in ("learn", f"window:{WINDOW[0]}:{WINDOW[1]}"):
        out = folder / f"{goal.split(':')[0]}.csv"
        result = CliRunner().invoke(app, ["suggest", str(cifs), "--budget", "5", "--goal", goal, "--out", str(out)])
        assert result.exit_code == 0, result.output
        runs[goal.split(":")[0]] = (pd.read_csv(out), pd.read_csv(str(out) + ".pool.csv"))
    return folder, cifs, runs


def test_learn_picks_are_more_uncertain_than_the_pool(pool):
    _, _, runs = pool
    picks, predicted = runs["learn"]
    assert len(picks) == 5 and picks["id"].is_unique and list(picks["rank"]) == list(range(1, 6))
    ok = predicted[predicted["status"] == "ok"]
    assert picks["bandgap_std_ev"].mean() > ok["bandgap_std_ev"].median()
    assert set(picks["id"]) <= set(ok["id"])


def test_window_picks_are_likelier_in_the_window_than_the_pool(pool):
    _, _, runs = pool
    picks, predicted = runs["window"]
    assert len(picks) == 5 and picks["id"].is_unique
    ok = predicted[predicted["status"] == "ok"]
    assert picks["p_in_window"].mean() > ok["p_in_window"].mean()
    assert (picks["acquisition"].diff().dropna() <= 1e-12).all()  # the order to compute them


def test_excluded_ids_never_come_back(pool):
    folder, cifs, runs = pool
    picks, _ = runs["learn"]
    exclude = folder / "done.csv"
    picks[["id"]].head(3).to_csv(exclude, index=False)
    out = folder / "next.csv"
    result = CliRunner().invoke(app, ["suggest", str(cifs), "-k", "5", "--goal", "learn", "--exclude", str(exclude),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = pd.read_csv(out)
    assert len(again) == 5 and again["id"].is_unique
    assert not set(again["id"]) & set(picks["id"].head(3))
    assert set(picks["id"][3:]) <= set(again["id"])  # the rest of the old batch is still wanted


def test_near_duplicates_never_share_a_batch():
    """Two copies of a structure (distance 0) and a far one: a batch of two takes one copy and the
    far one, however high the second copy's value."""
    import numpy as np

    from mofbalora.suggest import Goal, suggest_from_predictions

    table = pd.DataFrame({"id": ["a", "a-copy", "far"], "bandgap_mean_ev": [1.0, 1.0, 2.0],
                          "bandgap_std_ev": [0.5, 0.49, 0.2]})
    embeddings = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    chosen = suggest_from_predictions(table, embeddings, budget=2, goal=Goal("learn"), radius=0.1)
    assert list(chosen["id"]) == ["a", "far"]


@pytest.mark.parametrize("args, message", [
    (["--budget", "0", "--goal", "learn"], "the budget must be at least 1, got 0"),
    (["--budget", "-3", "--goal", "learn"], "the budget must be at least 1, got -3"),
    (["--budget", "500", "--goal", "learn"], "is larger than the pool"),
    (["--budget", "2", "--goal", "window:3:1.5"], "expected window:LO:HI with LO < HI"),
    (["--budget", "2", "--goal", "window:2:2"], "expected window:LO:HI with LO < HI"),
    (["--budget", "2", "--goal", "explore"], "goal must be 'learn' or 'window:LO:HI'"),
])
def test_bad_inputs_are_refused_before_any_prediction(pool, tmp_path, args, message):
    _, cifs, _ = pool
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(app, ["suggest", str(cifs), *args, "--out", str(out)])
    assert result.exit_code == 2 and message in cli_message(result.output), result.output
    assert not out.exists() and not (tmp_path / "s.csv.pool.csv").exists() and not (tmp_path / "s.csv.pool.csv.parts").exists()


def test_an_empty_pool_and_an_excluded_whole_pool_are_refused(pool, tmp_path):
    folder, cifs, runs = pool
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["suggest", str(tmp_path / "empty"), "-k", "1", "--goal", "learn",
                                      "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "the pool is empty" in cli_message(result.output), result.output
    everything = tmp_path / "all.csv"
    runs["learn"][1][["id"]].to_csv(everything, index=False)
    result = CliRunner().invoke(app, ["suggest", str(cifs), "-k", "1", "--goal", "learn", "--exclude", str(everything),
                                      "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 2 and "the pool is empty" in cli_message(result.output), result.output
