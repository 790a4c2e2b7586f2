"""Index: nearest-neighbour search, the only layer that imports faiss."""

from .knn import (INDEX_KINDS, build_index, l2_normalize, load_index, recall_at_k, save_index, search,
                  set_breadth, tune_recall)

__all__ = ["INDEX_KINDS", "build_index", "l2_normalize", "load_index", "recall_at_k", "save_index",
           "search", "set_breadth", "tune_recall"]
