"""Scoring: out-of-distribution scores and their calibration, on arrays."""

from .conditions import CONDITION_MEASURES, fit_standardizer, standardize, with_conditions
from .fused import FusedKNNScorer
from .knn import DEFAULT_K, Calibration, KNNScorer

__all__ = ["CONDITION_MEASURES", "DEFAULT_K", "Calibration", "FusedKNNScorer", "KNNScorer", "fit_standardizer",
           "standardize", "with_conditions"]
