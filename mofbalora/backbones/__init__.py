"""Pretrained graph backbones behind one interface; add one with a module and a registry line."""

from __future__ import annotations

from typing import Any, Callable

from mofbalora.backbones.base import GraphBackbone

_REGISTRY: dict[str, Callable[..., GraphBackbone]] = {}


def _cgcnn(**kwargs: Any) -> GraphBackbone:
    from mofbalora.backbones.cgcnn import CGCNNBackbone

    return CGCNNBackbone(**kwargs)


def _chgnet(**kwargs: Any) -> GraphBackbone:
    from mofbalora.backbones.chgnet import CHGNetBackbone

    return CHGNetBackbone(**kwargs)


def _sevennet(**kwargs: Any) -> GraphBackbone:
    from mofbalora.backbones.sevennet import SevenNetBackbone

    return SevenNetBackbone(**kwargs)


def _cgcnn_sevennet(**kwargs: Any) -> GraphBackbone:
    from mofbalora.backbones.fusion import CGCNNSevenNetBackbone

    return CGCNNSevenNetBackbone(**kwargs)


def _sevennet_early(**kwargs: Any) -> GraphBackbone:
    from mofbalora.backbones.sevennet import SevenNetEarlyBackbone

    return SevenNetEarlyBackbone(**kwargs)


#: backbones whose head starts from a seeded random init (the seed is passed to the factory)
SEEDED_HEADS = frozenset({"chgnet", "sevennet-early"})


def register_backbone(name: str, factory: Callable[..., GraphBackbone]) -> None:
    """Make ``get_backbone(name)`` build ``factory(**kwargs)``."""
    _REGISTRY[name] = factory


register_backbone("cgcnn", _cgcnn)
register_backbone("chgnet", _chgnet)
register_backbone("sevennet", _sevennet)
register_backbone("sevennet-early", _sevennet_early)
register_backbone("cgcnn-sevennet", _cgcnn_sevennet)


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str, **kwargs: Any) -> GraphBackbone:
    """Load a pretrained backbone from the weights inside its pip package (no network access).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose from {available_backbones()}")
    return _REGISTRY[name](**kwargs)


__all__ = ["SEEDED_HEADS", "GraphBackbone", "available_backbones", "get_backbone", "register_backbone"]
