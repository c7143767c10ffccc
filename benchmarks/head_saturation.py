"""Why predictions floor: pre-activations of the CGCNN head's hidden layer on a model's validation split.

    python benchmarks/head_saturation.py results/runs/cpu/methods/lora-head-pretrained [--part val]

Prints, for the structures whose prediction lies within 0.02 eV of the smallest one and for the
rest, the largest pre-activation over the hidden units of ``conv_to_fc``. When all of them are
strongly negative, every softplus is ~0 and the output is the last layer's bias: a floor
(docs/method.md §8).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mofbalora.data.datasets import load_labelled_dataset  # noqa: E402
from mofbalora.data.splits import Split  # noqa: E402
from mofbalora.predict import load_model  # noqa: E402
from mofbalora.training.config import TrainConfig  # noqa: E402
from mofbalora.training.fit import prepare_data  # noqa: E402


def hidden_layer(head: torch.nn.Module) -> torch.nn.Module:
    """The pretrained head's first hidden Linear, through a residual wrapper if there is one."""
    return getattr(head, "pretrained", head).conv_to_fc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--part", default="val", choices=["val", "calibration", "test"])
    parser.add_argument("--tolerance-ev", type=float, default=0.02)
    args = parser.parse_args()
    model = load_model(args.model)
    config = TrainConfig.from_dict(model.meta["train_config"])
    dataset = load_labelled_dataset(model.meta["data"]["source"], target=model.meta["data"]["target"])
    split = Split.load(Path(args.model) / "split.json")
    _, samples, gaps = prepare_data(config, dataset, Path(args.model), progress=False, split=split).parts[args.part]
    captured: list[torch.Tensor] = []
    hooks = [hidden_layer(m.head).register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
             for m in model.members[:1]]
    mean, _ = model.predict_samples(samples, n_samples=1)
    for hook in hooks:
        hook.remove()
    largest = torch.cat(captured).max(dim=1).values.numpy()
    near = mean <= mean.min() + args.tolerance_ev
    quantiles = lambda x: [round(float(v), 2) for v in np.quantile(x, [0, 0.5, 1])] if len(x) else None  # noqa: E731
    print(json.dumps({
        "model": args.model, "part": args.part, "n": int(len(mean)), "head": config.head,
        "min_prediction_ev": float(mean.min()), "share_within_tolerance_of_min": float(near.mean()),
        "largest_preactivation_near_min_q0_q50_q100": quantiles(largest[near]),
        "largest_preactivation_rest_q0_q50_q100": quantiles(largest[~near]),
        "mae_near_min_ev": float(np.abs(mean - gaps)[near].mean()),
        "mae_gap_below_1ev": float(np.abs(mean - gaps)[gaps < 1].mean()),
    }, indent=1))


if __name__ == "__main__":
    main()
