"""Let alike flagged images agree on their cause (arrays in, arrays out).

Attribution (:mod:`.attribution`) names a cause per image from that image's own
interventions, which are noisy; one failure mode changes many images alike. The vote
here runs on the attribution's outputs only: causes, standardised measurements and
explained shares.
"""

from __future__ import annotations

import numpy as np

from ..search import build_index, search

AGREE_K = 7  # an image's own neighbourhood: itself and its 6 nearest flagged images
SHARE_WEIGHT = 2.0  # explained shares (0-1) against measurements in training spreads
# (own cause, majority's cause) that the vote does not change: a warp interpolates, so a rotated or tilted
# image also looks a little blurred and sits among blurred images, while a blur rotates nothing. On the
# attribution benchmarks 40 such changes were wrong and 10 right (docs/benchmarks.md)
KEPT_AGAINST = frozenset({("angle", "resolution")})
# An image whose k-th nearest flagged image is this many times as far as is typical (the median of that
# distance) has no alike images to agree with: it keeps its own cause. A scan's two odd files (a 16-bit
# TIFF and an RGBA WebP of noise) were otherwise voted into the angle cluster beside them; on the twelve
# attribution benchmarks no image the vote changes is that isolated (docs/benchmarks.md)
ISOLATED = 4.0


def agree_with_neighbours(causes: np.ndarray, conditions: np.ndarray, shares: np.ndarray,
                          k: int = AGREE_K, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Causes made consistent among flagged images that look alike.

    One failure mode (a relit station, a tilted camera) gives many images the same
    changed conditions, while one image's interventions are noisy: a rotation
    misread on a texture, a blur that a zoom also explains. Each image takes the
    primary cause of a strict majority of its ``k`` nearest flagged images (itself
    included) in the space of its standardised measurements and its explained shares
    (times ``SHARE_WEIGHT``), and keeps its own where there is none, where its own is
    angle and the majority's resolution (``KEPT_AGAINST``), or where those images are not
    alike (``ISOLATED``). A group of
    ``k // 2 + 1`` or more alike images thus keeps its own cause, however many
    images of other causes surround it; with fewer than ``k`` flagged images (in a
    group, with ``groups``) nothing changes.

    Parameters
    ----------
    causes : (N,) str, per-image causes (``lighting+angle`` counts as ``lighting``).
    conditions : (N, C) float, measurements standardised by the training set.
    shares : (N, S) float in [0, 1], the share of the distance each cause explains.
    groups : optional (N,) labels: images vote only within their own group (images at a
        pixel size the training set has, and images at another: they are not alike).

    Returns
    -------
    (N,) causes (an image's own where kept, else the majority's primary cause) and
    (N,) agreement: the fraction of its neighbourhood whose primary cause is the returned one's.
    """
    causes = np.asarray(causes, dtype=object)
    if groups is not None:
        groups = np.asarray(groups)
        out, agreement = causes.copy(), np.zeros(len(causes))
        for g in np.unique(groups):
            m = groups == g
            out[m], agreement[m] = agree_with_neighbours(causes[m], conditions[m], shares[m], k)
        return out, agreement
    primary = np.array([str(c).split("+")[0] for c in causes], dtype=object)
    if len(causes) < k:
        return causes, np.array([np.mean(primary == p) for p in primary], dtype=float)
    z = np.hstack([np.clip(np.nan_to_num(conditions), -10, 10), SHARE_WEIGHT * np.nan_to_num(shares)])
    dist, nn = search(build_index(z, "flat"), z, k)
    isolated = dist[:, -1] > ISOLATED * np.median(dist[:, -1])
    out, agreement = causes.copy(), np.zeros(len(causes))
    for i, row in enumerate(nn):
        votes = primary[row[row >= 0]]
        names, counts = np.unique(votes, return_counts=True)
        major = names[counts.argmax()]
        if counts.max() > k / 2 and major != primary[i] and (primary[i], major) not in KEPT_AGAINST \
                and not isolated[i]:
            out[i] = major
        agreement[i] = np.mean(votes == str(out[i]).split("+")[0])
    return out, agreement
