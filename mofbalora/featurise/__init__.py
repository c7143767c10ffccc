"""Structure-to-graph featurisers (one per backbone) with an on-disk, content-keyed cache."""

from mofbalora.featurise.base import Featuriser, get_featuriser
from mofbalora.featurise.cache import FeatureCache
from mofbalora.featurise.runner import FeaturisedSet, featurise_paths

__all__ = ["FeatureCache", "Featuriser", "FeaturisedSet", "featurise_paths", "get_featuriser"]
