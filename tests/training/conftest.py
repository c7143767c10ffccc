import pytest

from mofbalora.training.config import TrainConfig
from tests.conftest import copy_cifs, write_labels


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, small_qmof):
    """100 small real QMOF structures with their PBE band gaps, as a labelled folder (never committed)."""
    ids, paths, gaps = small_qmof
    folder = copy_cifs(paths[:100], tmp_path_factory.mktemp("tiny_qmof"))
    write_labels(folder, ids[:100], gaps[:100])
    return folder


def tiny_config(method: str, **overrides) -> TrainConfig:
    values = dict(backbone="cgcnn", method=method, epochs=4, batch_size=6, lr=0.001 if method == "full" else 0.01, warmup_fraction=0.1,
                  patience=10, ensemble_size=2, calibration_samples=8,
                  adapter={"rank": 4, "alpha": 8, "target_modules": ["^embedding$", "fc_full"]},
                  split={"fractions": [0.3, 0.1, 0.45, 0.15], "method": "random", "seed": 0})
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="session")
def cgcnn_samples(small_qmof):
    """Three real small MOFs featurised for CGCNN."""
    from mofbalora.data import read_structure
    from mofbalora.featurise import get_featuriser

    _, paths, _ = small_qmof
    featuriser = get_featuriser("cgcnn")
    return [featuriser.featurise(read_structure(p), p.stem) for p in paths[:3]]
