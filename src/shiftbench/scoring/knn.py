"""Deep nearest-neighbour out-of-distribution score with conformal calibration.

Score (Sun et al. 2022, "Out-of-distribution detection with deep nearest
neighbors"): the Euclidean distance from an L2-normalised embedding to its
k-th nearest training embedding. Higher = more out-of-distribution.

Calibration needs no out-of-distribution examples: each training image is
scored against the bank *without itself* (leave-one-out), which gives the
distribution of scores that in-distribution images receive. A production image's
conformal p-value is the share of those scores at least as large as its own;
flagging ``p <= fpr`` keeps the false-alarm rate on in-distribution images at
``fpr`` (in expectation, for images exchangeable with the training set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..search import build_index, l2_normalize, search, tune_recall

DEFAULT_K = 1  # chosen on the steel benchmark (scripts/bench_detection.py, docs/benchmarks.md)
# A training neighbour closer than NEAR_COPY x the distance to the 5th neighbour (the set's median, or the
# row's own where smaller) is a near-copy (a frame of the same burst, a re-save): leave-one-out skips it
# (see KNNScorer._leave_one_out).
NEAR_COPY, SPACING_RANK = 0.25, 5
# The row's own spacing is read at a deeper rank, 1% of the set (5 to 32): a burst of up to that many frames
# still has its spacing outside the burst, while a dense mode (many more alike images) has it inside.
BURST_SHARE, MAX_BURST = 0.01, 32
SHIFT_P = 0.01  # a batch has shifted where "its flags are all false alarms" is this unlikely (false_alarm_test)


@dataclass
class Calibration:
    """In-distribution score sample and the threshold derived for a target false-alarm rate.

    ``scores``: (n,) sorted leave-one-out scores of the training images.
    """

    scores: np.ndarray
    method: str = "leave-one-out"

    def p_values(self, s: np.ndarray) -> np.ndarray:
        """Conformal p-values (M,) of scores (M,): (1 + #{cal >= s}) / (n + 1). NaN stays NaN."""
        s = np.asarray(s, dtype=np.float64)
        n = len(self.scores)
        ge = n - np.searchsorted(self.scores, np.nan_to_num(s, nan=np.inf), side="left")
        return np.where(np.isnan(s), np.nan, (1.0 + ge) / (n + 1.0))

    def threshold(self, fpr: float) -> float:
        """Score above which an image is flagged at false-alarm rate ``fpr``.

        ``s > threshold(fpr)`` is the same decision as ``p_value(s) <= fpr``
        (up to ties); ``inf`` when the calibration set is too small for ``fpr``.
        """
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        n = len(self.scores)
        rank = int(np.ceil((1 - fpr) * (n + 1)))  # 1-based rank in the sorted sample
        return float(self.scores[rank - 1]) if rank <= n else float("inf")

    def false_alarm_test(self, n_images: int, n_flagged: int, fpr: float) -> dict:
        """Whether ``n_flagged`` of ``n_images`` flagged at ``fpr`` is more than false alarms explain.

        An image is flagged when its score exceeds the m-th largest calibration score, m =
        floor(fpr (n + 1)). Over draws of the calibration sample, the false-alarm rate of an image
        exchangeable with it is Beta(m, n + 1 - m), mean m / (n + 1) <= fpr, so the number of false
        alarms in a batch of in-distribution images scanned against one bank is beta-binomial (a
        binomial at ``fpr`` would ignore the bank's own luck: 1.3 points of spread for 300 training
        images at 5%, against the batch's 0.9 for 600 images). The batch's images are taken as
        independent: bursts of near-identical frames count as several images and make a shift look
        likelier than it is. Returns the expected count and its central 95% range, the flags beyond
        it, and ``p_value``, the chance of at least ``n_flagged`` false alarms: small means that some
        of the batch is unlike the training set.
        """
        from scipy.special import logsumexp
        from scipy.stats import betabinom
        n = len(self.scores)
        m = int(np.floor(fpr * (n + 1) + 1e-9))
        if m == 0 or n_images == 0:  # nothing can be flagged: no evidence either way
            return {"expected_false_alarms": 0.0, "false_alarm_range_95": [0, 0], "excess_flagged": int(n_flagged),
                    "p_value": 1.0}
        dist = betabinom(n_images, m, n + 1 - m)
        expected = n_images * m / (n + 1)
        # the upper tail summed term by term: sf() is 1 - cdf, which bottoms out near 1e-10
        tail = float(np.exp(logsumexp(dist.logpmf(np.arange(n_flagged, n_images + 1))))) if n_flagged > 0 else 1.0
        return {"expected_false_alarms": float(expected),
                "false_alarm_range_95": [int(dist.ppf(0.025)), int(dist.ppf(0.975))],
                "excess_flagged": max(0, int(round(n_flagged - expected))), "p_value": min(tail, 1.0)}

    def summary(self, fpr: float) -> dict:
        q = np.quantile(self.scores, [0.5, 0.9, 0.95, 0.99]) if len(self.scores) else [np.nan] * 4
        return {"method": self.method, "n": int(len(self.scores)), "fpr_target": fpr,
                "threshold": self.threshold(fpr),
                "score_quantiles": dict(zip(["p50", "p90", "p95", "p99"], map(float, q)))}


def p_text(p: float) -> str:
    """A p-value in words: two significant digits, or below the smallest double."""
    return f"p = {p:.2g}" if p > 0 else "p < 1e-300"


def shift_verdict(test: dict) -> str:
    """:meth:`Calibration.false_alarm_test`'s result in words."""
    lo, hi = test["false_alarm_range_95"]
    e = test["expected_false_alarms"]
    count = f"{e:.1f}" if e < 10 else f"{e:.0f}"
    alarms = f"in-distribution images would give {count} false alarm{'' if count == '1.0' else 's'} (95%: {lo}-{hi})"
    if test["p_value"] < SHIFT_P:
        return f"the batch has shifted: {alarms}, {test['excess_flagged']} flags more ({p_text(test['p_value'])})"
    return f"{alarms}: no more flags than false alarms explain ({p_text(test['p_value'])})"


class KNNScorer:
    """k-th nearest-neighbour distance on normalised features; higher = more OOD.

    Parameters
    ----------
    k : int
        Which neighbour's distance is the score.
    normalize : bool
        L2-normalise rows first (embeddings); False for already standardised
        measurements, where the length carries the information.
    index : str
        faiss index kind (``auto``, ``flat``, ``ivf``, ``hnsw``); approximate
        kinds are tuned to recall@10 >= ``recall_target`` against exact search.

    Attributes (after :meth:`fit`)
    ------------------------------
    index_ : faiss index over the normalised training features
    index_info_ : dict, kind, search breadth and measured recall
    loo_ : (N,) leave-one-out score of each training row
    calibration_ : :class:`Calibration` from leave-one-out scores
    """

    def __init__(self, k: int = DEFAULT_K, index: str = "auto", recall_target: float = 0.95,
                 normalize: bool = True):
        self.k, self.index_kind, self.recall_target = k, index, recall_target
        self.normalize = normalize

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(x) if self.normalize else np.ascontiguousarray(x, dtype=np.float32)

    def fit(self, features: np.ndarray, copies: np.ndarray | None = None) -> "KNNScorer":
        """Index (N, D) training features and calibrate by leave-one-out.

        ``copies`` (N,) labels (e.g. content hashes): rows with the same label are copies
        of one image, left out together.
        """
        if len(features) < 2:
            raise ValueError("need at least 2 training images to calibrate")
        x = self._prepare(features)
        self.index_ = build_index(x, self.index_kind)
        self.index_info_ = tune_recall(self.index_, x, target=self.recall_target)
        self.index_info_["n"] = len(x)
        self.loo_, self.index_info_["copy_radius"], self.index_info_["rows_with_copies"] = \
            self._leave_one_out(x, copies)
        self.calibration_ = Calibration(np.sort(self.loo_))
        return self

    @classmethod
    def restore(cls, index, index_info: dict, loo: np.ndarray, k: int, normalize: bool = True) -> "KNNScorer":
        """A fitted scorer from a saved index and its leave-one-out scores (no refit)."""
        self = cls(k=k, index=index_info.get("kind", "auto"), normalize=normalize)
        self.index_, self.index_info_ = index, index_info
        self.loo_ = np.asarray(loo, dtype=np.float32)
        self.calibration_ = Calibration(np.sort(self.loo_))
        return self

    def _leave_one_out(self, x: np.ndarray, copies: np.ndarray | None = None,
                       batch: int = 4096) -> tuple[np.ndarray, float, int]:
        """(N,) score of each training row against the others, the near-copy radius, and how many
        rows had a copy left out.

        Leave-one-out stands for a new image of the same kind. A training set of video
        frames or bursts holds near-copies of each image, and a new image has none: scored
        against its copy, every training image would look far more typical than any new one,
        and every production image would be flagged. So the score skips neighbours with the
        same ``copies`` label or closer than the copy radius, ``NEAR_COPY`` x the distance
        to the ``SPACING_RANK``-th neighbour (a pair that much closer than its neighbours is one
        image twice): the set's median such distance, or where smaller the row's own distance to
        its r-th neighbour, r = 1% of the set (5 to ``MAX_BURST``). The row's own keeps a dense
        mode from being taken for copies (empty frames of a belt, 40% of a set and all alike: their
        neighbours are as close as a new empty frame's would be, and with the median alone every
        one was skipped, which lifted the calibration until nothing could be flagged); a burst of
        fewer than r frames still reaches past itself. On sets without copies nothing changes.
        """
        n, k = len(x), min(self.k, len(x) - 1)
        typical = self._spacing(x, copies, SPACING_RANK)
        burst = int(min(max(SPACING_RANK, BURST_SHARE * n), MAX_BURST))
        own = self._spacing(x, copies, burst) if burst != SPACING_RANK else typical
        finite = typical[np.isfinite(typical)]
        median = float(np.median(finite)) if len(finite) else 0.0
        radii = NEAR_COPY * np.minimum(own, median)
        radius = NEAR_COPY * median
        out, skipped = np.empty(n, dtype=np.float32), 0
        for lo in range(0, n, batch):
            rows = np.arange(lo, min(lo + batch, n))
            depth = k + 1
            while True:  # deeper where copies take up the nearest places
                dist, ids = search(self.index_, x[rows], depth)
                other = (ids >= 0) & (ids != rows[:, None]) & (dist >= radii[rows][:, None])
                if copies is not None:
                    other &= copies[np.maximum(ids, 0)] != copies[rows][:, None]
                found = other.sum(1) >= k
                if found.all() or depth >= n:
                    break
                depth = min(4 * depth, n)
            # the k-th remaining neighbour (inf where none remains: every other image is a copy)
            out[rows] = np.sort(np.where(other, dist, np.inf), axis=1)[:, k - 1]
            plain = np.sort(np.where((ids >= 0) & (ids != rows[:, None]), dist, np.inf), axis=1)[:, k - 1]
            skipped += int((out[rows] > plain).sum())
        return out, radius, skipped

    def _spacing(self, x: np.ndarray, copies: np.ndarray | None, rank: int, batch: int = 4096) -> np.ndarray:
        """(N,) distance of each row to its ``rank``-th nearest *other image* (inf where there is none):
        exact copies (same ``copies`` label) count once, so a set of every image twice has the
        spacing of the set once."""
        n = len(x)
        codes = np.unique(copies, return_inverse=True)[1].astype(np.int64) if copies is not None \
            else np.arange(n, dtype=np.int64)
        most = int(np.bincount(codes).max())  # deep enough when every neighbour has that many copies
        depth, rank = min((rank + 1) * most, n, max(256, rank + 1)), min(rank, int(codes.max())) if n else 0
        d = np.full(n, np.inf)
        for lo in range(0, n, batch):
            rows = np.arange(lo, min(lo + batch, n))
            dist, ids = search(self.index_, x[rows], depth)
            c = np.where(ids >= 0, codes[np.maximum(ids, 0)], -1)
            firsts = _first_of_each(c) & (c != codes[rows][:, None]) & (c >= 0)  # one entry per other image
            hit = np.cumsum(firsts, axis=1) == rank
            d[rows] = np.where(hit.any(1), dist[np.arange(len(rows)), hit.argmax(1)], np.inf)
        return d

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of (M, D) features.

        Returns
        -------
        scores : (M,) float32, k-th neighbour distance (higher = more OOD); NaN rows stay NaN
        nearest : (M,) int64, row of the nearest training feature (-1 for NaN rows)
        """
        features = np.asarray(features, dtype=np.float32)
        valid = ~np.isnan(features).any(axis=1)
        scores = np.full(len(features), np.nan, dtype=np.float32)
        nearest = np.full(len(features), -1, dtype=np.int64)
        if valid.any():
            k = min(self.k, self.index_.ntotal)
            dist, ids = search(self.index_, self._prepare(features[valid]), k)
            scores[valid], nearest[valid] = dist[:, k - 1], ids[:, 0]
        return scores, nearest

    def score_with(self, features: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """Scores of (M, D) features against the training set plus per-row extra references.

        ``extra`` is (M, E, D): row ``i`` is scored as if ``extra[i]`` had been
        added to the training set (attribution adds transformed copies of an
        image's neighbours and asks how much closer the image gets). Returns (M,).
        """
        features = np.asarray(features, dtype=np.float32)
        m, e, d = extra.shape
        k = min(self.k, self.index_.ntotal)
        dist, _ = search(self.index_, self._prepare(features), k)
        x = self._prepare(features)[:, None, :]
        ref = self._prepare(extra.reshape(m * e, d)).reshape(m, e, d)
        extra_d = np.sqrt(np.maximum(((ref - x) ** 2).sum(-1), 0.0))
        extra_d = np.where(np.isnan(extra_d), np.inf, extra_d)
        both = np.sort(np.concatenate([dist, extra_d], axis=1), axis=1)
        return both[:, k - 1].astype(np.float32)


def _first_of_each(codes: np.ndarray) -> np.ndarray:
    """(M, K) bool: where each row's value appears for the first time (left to right)."""
    m, k = codes.shape
    order = np.argsort(codes * k + np.arange(k), axis=1, kind="stable")  # by value, then position
    by_value = np.take_along_axis(codes, order, axis=1)
    first = np.ones_like(by_value, dtype=bool)
    first[:, 1:] = by_value[:, 1:] != by_value[:, :-1]
    out = np.empty_like(first)
    np.put_along_axis(out, order, first, axis=1)
    return out
