"""Building blocks of the augmentation spec (:mod:`.augment`): entries, ranges, thresholds.

An entry is a plain dict ``{cause, name, params, p, why[, children]}`` naming an
albumentations transform and its arguments, so that the spec stays pure data until
:mod:`.transforms` instantiates it.
"""

from __future__ import annotations

import pandas as pd

from .scan_io import span


def central_span(values):
    """Augmentation ranges: the 10th-90th percentiles of the estimates (outliers dropped first).

    Central, not min..max: misattributed images have wild estimates (on the steel
    benchmark min..max reached gamma 0.01-6.4 and rotations of +-75 degrees), and
    training on them hurts more than missing the extremes of the true shift.
    """
    return span(values, 10.0, 90.0)

REFLECT_101 = 4  # cv2.BORDER_REFLECT_101: rotated training images get no black corners
INTER_NEAREST, INTER_LINEAR, INTER_AREA = 0, 1, 3
MAX_ILLUMINATION = 0.2  # albumentations' largest Illumination intensity
MIN_CAUSE_IMAGES, MIN_CAUSE_SHARE = 3, 0.05  # a cause seen on fewer flagged images gets no transforms
# A degradation kind must match at least this share of a cause's images (and MIN_CAUSE_IMAGES):
# one cause often mixes kinds (blur, compression, motion on different stations), and a kind
# left out of the augmentation is a kind the fine-tuned model never sees.
MIN_KIND_SHARE = 0.1


def rounded(x: float, nd: int = 3) -> float:
    return float(round(float(x), nd))


def pair(lo: float, hi: float, nd: int = 3) -> list[float]:
    return [rounded(min(lo, hi), nd), rounded(max(lo, hi), nd)]


def line_range(mean: float, half: float) -> list[float]:
    """[lo, hi] within [0, 360] around the line direction ``mean`` (a line at a + 180 is the same line)."""
    lo, hi = mean - half, mean + half
    return pair(lo, hi, 1) if lo >= 0 and hi <= 360 else pair(lo + 180, hi + 180, 1)


def entry(cause: str, name: str, params: dict, why: str, p: float) -> dict:
    return {"cause": cause, "name": name, "params": params, "p": p, "why": why}


def modes(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows split by failure cluster and its modes (darker *and* brighter, +20 *and* -20 degrees)."""
    keys = [c for c in ("cluster", "mode") if c in rows]
    parts = [g for _, g in rows.groupby(keys, sort=True, dropna=False)] if keys else []
    return parts if len(parts) > 1 else [rows]


def one_of(cause: str, children: list[dict], why: str, p: float) -> dict:
    """One entry: the single child at probability ``p``, or OneOf weighted by the children's p."""
    if len(children) == 1:
        return {**children[0], "p": p, "why": why}
    return {**entry(cause, "OneOf", {}, why, p), "children": children}
