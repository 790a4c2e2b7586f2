"""Scoring: out-of-distribution scores and their calibration, on arrays."""

from .fused import FusedKNNScorer
from .knn import DEFAULT_K, Calibration, KNNScorer

__all__ = ["DEFAULT_K", "Calibration", "FusedKNNScorer", "KNNScorer"]
