"""Explain: attribution of flagged images to causes, and failure clusters (on arrays and tables)."""

from .attribution import CAUSES, agree_with_neighbours, attribute, attribute_one, new_pixel_size
from .clusters import cluster_cards, cluster_flagged, describe_change
from .views import Views, views

__all__ = ["CAUSES", "Views", "agree_with_neighbours", "attribute", "attribute_one", "cluster_cards",
           "cluster_flagged", "describe_change", "new_pixel_size", "views"]
