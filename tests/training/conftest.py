import shutil

import pytest

from mofbalora.training.config import TrainConfig


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, small_qmof):
    """30 small real QMOF structures with their PBE band gaps, as a labelled folder (never committed)."""
    ids, paths, gaps = small_qmof
    folder = tmp_path_factory.mktemp("tiny_qmof")
    for path in paths[:30]:
        shutil.copy(path, folder / path.name)
    (folder / "bandgaps.csv").write_text("qmof_id,bandgap_pbe_ev\n" + "".join(
        f"{i},{g}\n" for i, g in zip(ids[:30], gaps[:30])))
    return folder


def tiny_config(method: str, **overrides) -> TrainConfig:
    values = dict(backbone="cgcnn", method=method, epochs=4, batch_size=6, lr=0.001 if method == "full" else 0.01, warmup_fraction=0.1,
                  patience=10, ensemble_size=2, calibration_samples=8,
                  adapter={"rank": 4, "alpha": 8, "target_modules": ["^embedding$", "fc_full"]},
                  split={"fractions": [0.6, 0.2, 0.2], "method": "random", "seed": 0})
    values.update(overrides)
    return TrainConfig.from_dict(values)
