"""Which production images to label first: budget split by harm, diversity within each cluster.

The budget goes to clusters in proportion to their harm (:func:`cluster_weights`),
with a floor per cluster so that no failure mode is left without examples
(:func:`allocate`). Within a cluster, k-center greedy on the L2-normalised
embeddings (Sener & Savarese 2018) starts from the medoid and then repeatedly
takes the image farthest from everything chosen so far: a handful of labels
then covers the cluster's variety instead of repeating its most common look.
"""

from __future__ import annotations

import numpy as np

from ..explain.clusters import mean_distances


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def medoid(x: np.ndarray) -> int:
    """Row of (N, D) ``x`` with the smallest mean distance to the others."""
    return int(np.argmin(mean_distances(x)))


def k_center_greedy(x: np.ndarray, k: int, start: int | None = None,
                    weights: np.ndarray | None = None) -> tuple[list[int], list[float]]:
    """Pick ``k`` rows of (N, D) ``x`` that cover it: each next pick is the farthest from those chosen.

    Parameters
    ----------
    x : (N, D) features (normalise them first for cosine-like distances).
    k : how many to pick (at most N).
    start : first pick; default the medoid (with ``weights``: the heaviest row).
    weights : optional (N,) non-negative worth of each row, e.g. the model's
        uncertainty ``1 - confidence``: the next pick maximises distance x weight,
        so that among equally new-looking images the ones the model is least
        sure of come first (uncertainty and diversity together, as in BADGE-like
        active learning).

    Returns
    -------
    picks, gaps
        Row indices in the order chosen, and for each the distance to the nearest
        earlier pick at the time it was chosen (``nan`` for the first). Ties go to
        the lowest index, so the result is deterministic.
    """
    n = len(x)
    k = min(int(k), n)
    if k <= 0:
        return [], []
    w = np.ones(n) if weights is None else np.maximum(np.nan_to_num(np.asarray(weights, float)), 1e-6)
    first = int(start) if start is not None else (medoid(x) if weights is None else int(np.argmax(w)))
    picks, gaps = [first], [float("nan")]
    nearest = np.sqrt(((x - x[first]) ** 2).sum(1))
    while len(picks) < k:
        nearest[picks] = -1.0  # never re-pick (duplicates have distance 0, still > -1)
        j = int(np.argmax(nearest * w))
        picks.append(j)
        gaps.append(float(nearest[j]))
        nearest = np.minimum(nearest, np.sqrt(((x - x[j]) ** 2).sum(1)))
    return picks, gaps


def cluster_weights(sizes, error_rates, uncertainty=None) -> tuple[np.ndarray, str]:
    """Harm per cluster and the rule used, in words.

    Harm is the expected number of misclassified images, ``error_rate x size``,
    when every cluster has an error rate (labelled production images); else the
    model's own estimate of it, ``mean(1 - confidence) x size``, when every cluster
    has one (``uncertainty``: model-aware scans); otherwise the cluster's size.
    """
    sizes = np.asarray(sizes, dtype=float)
    for rates, rule in ((error_rates, "harm = error rate x size (expected misclassified images per cluster)"),
                        (uncertainty, "harm = estimated error rate x size (the model's mean 1 - confidence "
                                      "per cluster; no labels)")):
        if rates is None:
            continue
        r = np.asarray([np.nan if v is None else v for v in rates], dtype=float)
        if len(r) and np.isfinite(r).all() and (r * sizes).sum() > 0:
            return r * sizes, rule
    return sizes, "harm = size (share of the flagged images; the scan has no error rates or predictions)"


def allocate(weights, total: int, minimum: int = 0, caps=None, prefer=None) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights``, each at least ``minimum``.

    ``caps`` bound each share (a cluster cannot give more images than it has);
    what a capped share cannot take goes to the others. The floor shrinks to
    ``total // n`` when ``total`` cannot give everyone ``minimum``. Rounding is by
    largest remainder (ties to the larger weight, then to clusters where ``prefer``
    (n,) bool is true, then to the earlier cluster).

    Returns (n,) int64 summing to ``min(total, sum(caps))``.
    """
    w = np.maximum(np.asarray(weights, dtype=float), 0.0)
    n = len(w)
    pref = np.zeros(n, bool) if prefer is None else np.asarray(prefer, bool)
    total = max(int(total), 0)
    caps = np.full(n, total, dtype=np.int64) if caps is None else np.asarray(caps, dtype=np.int64)
    total = int(min(total, caps.sum())) if n else 0
    out = np.zeros(n, dtype=np.int64)
    if total == 0:
        return out
    floor = min(int(minimum), total // n)
    out = np.minimum(np.full(n, floor), caps)
    while (left := total - out.sum()) > 0:
        open_ = out < caps
        ww = np.where(open_, w, 0.0)
        if ww.sum() <= 0:
            ww = open_.astype(float)  # all remaining weights zero: split evenly among open clusters
        ideal = out + left * ww / ww.sum()
        add = np.minimum(np.floor(ideal).astype(np.int64), caps) - out
        add = np.maximum(add, 0)
        if add.sum() == 0:  # fractions only: hand out one each by largest remainder
            frac = np.where(open_, ideal - np.floor(ideal), -1.0)
            order = sorted(range(n), key=lambda i: (-frac[i], -w[i], not pref[i], i))
            for i in order[:left]:
                if open_[i]:
                    add[i] = 1
        out += add
    return out


def label_order(per_cluster: list[list[int]], shares: list[int]) -> list[tuple[int, int]]:
    """Interleave the clusters' picks into one ranking: (cluster position, pick position) pairs.

    Picks are ordered by how far into its own allocation each one is, so that
    labelling the first K images of the list is still balanced by harm.
    """
    items = [((j + 0.5) / max(shares[c], 1), c, j) for c, picks in enumerate(per_cluster)
             for j in range(len(picks))]
    return [(c, j) for _, c, j in sorted(items)]
