"""Fuse nearest-neighbour scores from several feature views into one calibrated score.

Each view (penultimate layer, early layers...) gets its own k-NN scorer and
leave-one-out calibration. An image's per-view evidence is ``-log p_v``, with
``p_v`` its conformal p-value in that view; the fused score is their sum
(Fisher's method), so a view that is far out counts as much as its rarity, in
whatever units its distances come. The fused score is calibrated once more, on
the training images' leave-one-out fused scores, so the flag threshold still
holds the target false-alarm rate.
"""

from __future__ import annotations

import numpy as np

from ..search import search
from .knn import DEFAULT_K, Calibration, KNNScorer


def _neglog_p(cal_sorted: np.ndarray, s: np.ndarray) -> np.ndarray:
    """-log conformal p-value, extended beyond the largest calibration score.

    Inside the sample: ``-log((1 + #{cal >= s}) / (n + 1))``. Beyond its maximum the
    p-value would stay at 1/(n+1) and every far-out image would tie; there the
    value keeps growing linearly in ``s`` with the slope of the upper tail, so the
    ranking of clearly-shifted images is kept.
    """
    n = len(cal_sorted)
    ge = n - np.searchsorted(cal_sorted, s, side="left")
    out = -np.log((1.0 + ge) / (n + 1.0))
    top, q90 = cal_sorted[-1], cal_sorted[int(0.9 * (n - 1))]
    slope_span = np.log(n + 1.0) - np.log(10.0)
    tau = (top - q90) / slope_span if slope_span > 0 and top > q90 else max(abs(top), 1e-6)
    beyond = s > top
    out[beyond] = np.log(n + 1.0) + (s[beyond] - top) / tau
    return out


def _loo_neglog_p(loo: np.ndarray) -> np.ndarray:
    """-log p of each training score against the *other* training scores, as :func:`_neglog_p` gives
    a new image against all of them: the largest score, beyond the others, gets the same extension
    (without it, a new in-distribution image beyond the top of a view, as likely as 1 in n + 1,
    outscored every training image, and the fused false-alarm rate exceeded its target: 0.020 for
    0.01 with 100 training images)."""
    n = len(loo)
    srt = np.sort(loo)
    ge = n - np.searchsorted(srt, loo, side="left")  # includes itself
    out = -np.log(ge / n)
    if n > 2 and np.isfinite(srt[-1]) and srt[-1] > srt[-2]:  # (inf: every other image a copy; log n stays)
        top = int(np.argmax(loo))
        out[top] = _neglog_p(srt[:-1], loo[top:top + 1])[0]
    return out


class FusedKNNScorer:
    """Fisher fusion of k-NN scores over feature views; higher = more out-of-distribution.

    Parameters
    ----------
    views : list of (name, size)
        How the feature vector splits into views, in order (sizes sum to D).
    k, index
        Passed to each view's :class:`KNNScorer`.
    raw_views : tuple of str
        Views compared without L2 normalisation (standardised measurements).

    Attributes (after :meth:`fit` or :meth:`restore`)
    --------------------------------------------------
    scorers_ : dict name -> fitted KNNScorer
    calibration_ : :class:`Calibration` of the fused leave-one-out scores
    """

    def __init__(self, views: list[tuple[str, int]], k: int = DEFAULT_K, index: str = "auto",
                 raw_views: tuple[str, ...] = ()):
        self.views, self.k, self.index_kind = [(str(n), int(d)) for n, d in views], k, index
        self.raw_views = tuple(raw_views)

    def _slices(self):
        start = 0
        for name, size in self.views:
            yield name, slice(start, start + size)
            start += size

    def fit(self, features: np.ndarray, copies: np.ndarray | None = None) -> "FusedKNNScorer":
        """Fit on (N, D) training features (no NaN rows); ``copies`` (N,) labels (content hashes):
        copies of one image are left out together (:meth:`KNNScorer.fit`)."""
        self.scorers_ = {name: KNNScorer(self.k, self.index_kind, normalize=name not in self.raw_views)
                         .fit(features[:, sl], copies) for name, sl in self._slices()}
        return self._calibrate()

    def restore(self, scorers: dict[str, KNNScorer]) -> "FusedKNNScorer":
        self.scorers_ = scorers
        return self._calibrate()

    def _calibrate(self) -> "FusedKNNScorer":
        fused = sum(_loo_neglog_p(sc.loo_) for sc in self.scorers_.values())
        self.calibration_ = Calibration(np.sort(fused))
        return self

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Score (M, D) features (NaN rows give NaN).

        Returns
        -------
        scores : (M,) float64 fused score
        nearest : (M,) int64, nearest training row in the first view (-1 for NaN rows)
        distances : dict view name -> (M,) k-th neighbour distance in that view
        """
        scores = np.zeros(len(features))
        distances, nearest = {}, None
        for name, sl in self._slices():
            sc = self.scorers_[name]
            d, nn = sc.score(features[:, sl])
            distances[name] = d
            nearest = nn if nearest is None else nearest
            scores += _neglog_p(sc.calibration_.scores, np.nan_to_num(d, nan=0.0))
        scores[np.isnan(features).any(axis=1)] = np.nan
        return scores, nearest, distances

    def score_with(self, features: np.ndarray, extra: np.ndarray, per_view: bool = False):
        """Fused (M,) scores of (M, D) features with (M, E, D) extra references per row.

        See :meth:`KNNScorer.score_with`; fused exactly as :meth:`score`, so the
        result compares with its scores. ``per_view`` also returns each view's
        evidence ``-log p`` (dict name -> (M,)).
        """
        views = {}
        for name, sl in self._slices():
            sc = self.scorers_[name]
            d = sc.score_with(features[:, sl], extra[:, :, sl])
            views[name] = _neglog_p(sc.calibration_.scores, np.nan_to_num(d, nan=0.0))
        scores = sum(views.values())
        return (scores, views) if per_view else scores

    def nearest(self, features: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """The ``k`` nearest training rows of (M, D) features in each view: name -> (M, k) int64, -1 if none."""
        return {name: search(self.scorers_[name].index_, self.scorers_[name]._prepare(features[:, sl]), k)[1]
                for name, sl in self._slices()}

    @property
    def index_info_(self) -> dict:
        return {name: sc.index_info_ for name, sc in self.scorers_.items()}
