import numpy as np
import pytest

from mofbalora.data.splits import Split, make_split

IDS = [f"m{i:03d}" for i in range(200)]
GAPS = np.linspace(0, 6, 200)


@pytest.mark.parametrize("method", ["random", "stratified"])
def test_split_is_deterministic_disjoint_and_complete(method, tmp_path):
    a = make_split(IDS, GAPS, seed=3, method=method)
    b = make_split(list(reversed(IDS)), GAPS[::-1], seed=3, method=method)
    assert a == b
    assert not set(a.train) & set(a.val) and not set(a.train) & set(a.test) and not set(a.val) & set(a.test)
    assert sorted(a.train + a.val + a.test) == IDS
    assert (len(a.train), len(a.val), len(a.test)) == (160, 20, 20)
    a.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == a
    assert make_split(IDS, GAPS, seed=4, method=method).test != a.test


def test_stratified_split_covers_every_quantile():
    split = make_split(IDS, GAPS, seed=0, method="stratified")
    lookup = dict(zip(IDS, GAPS))
    test_gaps = np.array([lookup[i] for i in split.test])
    counts, _ = np.histogram(test_gaps, bins=np.quantile(GAPS, np.linspace(0, 1, 11)))
    assert (counts == 2).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="sum to 1"):
        make_split(IDS, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="targets"):
        make_split(IDS, method="stratified")


def test_check_disjoint_names_the_leak():
    from mofbalora.data.splits import check_disjoint

    check_disjoint({"val": ["a", "b"]}, {"test": ["c"], "calibration": ["d"]})
    with pytest.raises(ValueError, match=r"'val' holds 1 ids of 'calibration' \(e.g. b\)"):
        check_disjoint({"val": ["a", "b"]}, {"test": ["c"], "calibration": ["b", "e"]})
