"""Explain: attribution of flagged images to causes, and failure clusters (on arrays and tables).

The attribution and agreement names are loaded on first use: attribution needs the embedding
models (torch), and both the search index (faiss), while the clusters' table helpers serve
``collect``, which should start without them.
"""

from .clusters import cluster_cards, cluster_flagged, describe_change, explained_share
from .ranges import light_field_range, new_pixel_size
from .views import Views, views

_LAZY = {"CAUSES": "attribution", "attribute": "attribution", "attribute_one": "attribution",
         "agree_with_neighbours": "agreement", "explain_flagged": "flagged", "train_sizes": "flagged"}

__all__ = ["CAUSES", "Views", "agree_with_neighbours", "attribute", "attribute_one", "cluster_cards",
           "cluster_flagged", "describe_change", "explain_flagged", "explained_share", "light_field_range",
           "new_pixel_size", "train_sizes", "views"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
