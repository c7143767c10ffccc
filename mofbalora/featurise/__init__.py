"""Structure-to-graph featurisers (one per backbone) with an on-disk, content-keyed cache."""

from __future__ import annotations

from functools import partial
from typing import Any

from mofbalora.featurise.base import Featuriser
from mofbalora.featurise.cache import FeatureCache
from mofbalora.featurise.runner import FeaturisedSet, featurise_paths


def get_featuriser(name: str, **kwargs: Any) -> Featuriser:
    """Featuriser by backbone name (the featuriser modules are imported on first use).

    Raises:
        ValueError: listing the valid names.
    """
    from mofbalora.featurise.cgcnn import CGCNNFeaturiser
    from mofbalora.featurise.chgnet import CHGNetFeaturiser
    from mofbalora.featurise.fusion import CGCNNSevenNetFeaturiser
    from mofbalora.featurise.sevennet import EARLY_BLOCK, SevenNetFeaturiser

    # sevennet-early reads one early block only, so its featuriser cuts the network there
    registry = {"cgcnn": CGCNNFeaturiser, "chgnet": CHGNetFeaturiser, "sevennet": SevenNetFeaturiser,
                "sevennet-early": partial(SevenNetFeaturiser, atom_blocks=(EARLY_BLOCK,), through_block=EARLY_BLOCK),
                "cgcnn-sevennet": CGCNNSevenNetFeaturiser}
    if name not in registry:
        raise ValueError(f"unknown featuriser {name!r}; choose from {sorted(registry)}")
    return registry[name](**kwargs)


__all__ = ["FeatureCache", "Featuriser", "FeaturisedSet", "featurise_paths", "get_featuriser"]
