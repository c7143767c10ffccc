"""The release's test scores on a synthetic table with known answers (no model, no data)."""

import numpy as np
import pandas as pd

from pipelines.analysis.release import CONFIDENT_P, _distribution_rows
from pipelines.analysis.release import test_scores as score_test_split  # not a test itself


def test_widths_are_reported_per_bin_and_where_a_screen_is_confident():
    """Two predicted-gap bins with interval widths 1 and 3 eV; the confident rows (P ≥ 0.9) are the
    wide bin's first 10, of which 5 hold their truth. The per-bin median widths, the confident rows'
    width and coverage, and the card's rows say exactly that."""
    n = 40
    mean = np.r_[np.full(20, 1.0), np.full(20, 2.0)]
    half = np.r_[np.full(20, 0.5), np.full(20, 1.5)]
    truth = mean.copy()
    truth[20:25] = 4.0  # outside [0.5, 3.5]: five of the confident rows miss
    p_in_window = np.r_[np.full(20, 0.1), np.full(10, 0.95), np.full(10, 0.5)]
    table = pd.DataFrame({
        "bandgap_true_ev": truth, "bandgap_mean_ev": mean, "bandgap_std_ev": half / 2,
        "bandgap_std_epistemic_ev": half / 10, "lower_68_ev": mean - half / 2, "upper_68_ev": mean + half / 2,
        "lower_95_ev": mean - half, "upper_95_ev": mean + half, "n_atoms": np.full(n, 50),
        "out_of_distribution": np.zeros(n, dtype=bool), "gap_bin": np.r_[np.zeros(20, int), np.ones(20, int)],
        "p_in_window": p_in_window})
    scores = score_test_split(table, n_resamples=50)
    assert [b["width_95_median_ev"] for b in scores["coverage_95_by_predicted_gap_bin"]] == [1.0, 3.0]
    assert scores["p_in_window_confident"] == {"p_at_least": CONFIDENT_P, "n": 10, "coverage_95": 0.5,
                                               "width_95_median_ev": 3.0}
    rows = "\n".join(_distribution_rows(scores))
    assert "(n = 20) | 1.000, median width 1.00 eV |" in rows and "(n = 20) | 0.750, median width 3.00 eV |" in rows
    assert "≥ 0.9 (n = 10) | 0.500, median width 3.00 eV |" in rows
