"""benchmarks/screen_coremof.py: the cells a screen skipped for their size, screened again apart."""

import pandas as pd

from benchmarks import screen_coremof


def test_size_skipped_cells_are_screened_again_in_place(tmp_path, coremof_paths):
    """Real CoRE-MOF CIFs screened with a low max_atoms: the size-skipped rows come back predicted,
    in the screen's order, with the numbers of a one-call prediction at the higher limit; the other
    rows are untouched, a cell can still be skipped for another reason, and a rerun reads the saved
    pass instead of predicting again."""
    from mofbalora.data.structures import InvalidStructureError, read_structure
    from mofbalora.predict import load_model
    from mofbalora.pretrained import resolve_model
    from mofbalora.streaming import stream_predictions

    screen = screen_coremof
    model = load_model(resolve_model(None))
    atoms = []
    for path in coremof_paths:
        try:
            atoms.append(len(read_structure(path)))
        except InvalidStructureError:  # atoms too close: not a cell to size the limit by
            pass
    atoms.sort()
    low_limit = atoms[len(atoms) // 2]  # about half the cells have more atoms
    window = (1.5, 3.0)
    table = stream_predictions(model, coremof_paths, tmp_path / "screen.csv", samples=4, window_ev=window,
                               max_atoms=low_limit - 1, progress=False)
    too_large = table[table["reason"].fillna("").str.startswith("more atoms than max_atoms")]
    assert 0 < len(too_large) < len(table), (atoms, table[["id", "status", "reason"]])

    redo_limit = atoms[-1] - 1  # all but the largest valid cell come back
    assert low_limit <= redo_limit < 1000  # not the default limit, which the pass must not fall back to
    merged, again, seconds = screen.screen_large_cells(model, coremof_paths, table, tmp_path / "screen.csv", redo_limit,
                                              samples=4, window_ev=window, fresh=False)
    assert sorted(again) == sorted(too_large["id"]) and merged["id"].tolist() == table["id"].tolist()
    kept = ~merged["id"].isin(again)
    pd.testing.assert_frame_equal(merged[kept].reset_index(drop=True), table[kept].reset_index(drop=True))
    redone = merged[~kept].set_index("id")
    # the size check comes first, so a cell can now be skipped for another reason (atoms too close)
    still_too_large = redone["reason"].fillna("").str.startswith(f"more atoms than max_atoms: {atoms[-1]} > {redo_limit}")
    assert still_too_large.sum() == atoms.count(atoms[-1])
    redone = redone[redone["status"] == "ok"]
    assert len(redone) > 0
    direct = model.predict([p for p in coremof_paths if p.name.split(".")[0] in set(again)], samples=4,
                           window_ev=window).set_index("id").loc[redone.index]
    for column in ("bandgap_mean_ev", "upper_95_ev", "p_in_window"):
        pd.testing.assert_series_equal(redone[column], direct[column], rtol=1e-5)

    saved = tmp_path / f"screen-large-cells-max{redo_limit}.csv"
    stamp = saved.stat().st_mtime_ns
    rerun, _, no_seconds = screen.screen_large_cells(model, coremof_paths, table, tmp_path / "screen.csv", redo_limit,
                                         samples=4, window_ev=window, fresh=False)
    assert saved.stat().st_mtime_ns == stamp and seconds > 0 and no_seconds is None
    pd.testing.assert_frame_equal(rerun, merged)
    unchanged, none, _ = screen.screen_large_cells(model, coremof_paths, table, tmp_path / "screen.csv", 0,
                                                samples=4, window_ev=window, fresh=False)
    assert none == [] and unchanged is table
