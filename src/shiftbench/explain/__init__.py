"""Explain: attribution of flagged images to causes, and failure clusters (on arrays and tables).

The attribution names are loaded on first use: they need the embedding models (torch),
while the clusters' table helpers serve ``collect``, which should start without them.
"""

from .clusters import cluster_cards, cluster_flagged, describe_change, explained_share
from .views import Views, views

_ATTRIBUTION = ("CAUSES", "agree_with_neighbours", "attribute", "attribute_one", "new_pixel_size")

__all__ = ["CAUSES", "Views", "agree_with_neighbours", "attribute", "attribute_one", "cluster_cards",
           "cluster_flagged", "describe_change", "explained_share", "new_pixel_size", "views"]


def __getattr__(name: str):
    if name in _ATTRIBUTION:
        from . import attribution
        return getattr(attribution, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
