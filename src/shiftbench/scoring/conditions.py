"""The condition measurements as one more scoring view.

Early-layer features see lighting and blur, but only as far as ImageNet filters
respond to them; the measurements of :mod:`shiftbench.properties` measure them
directly. Standardised by the training set (median, robust spread) they form a
small vector whose nearest-neighbour distance is fused with the embedding views.
On the steel benchmark this adds 0.01-0.03 AUROC for lighting and angle
(docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .drift import robust_scale

# Scale-free measurements of lighting, optics and texture; not the image size
# (another line's camera changes it without the parts changing) and not angles.
CONDITION_MEASURES = ("brightness", "brightness_p05", "brightness_p50", "brightness_p95", "contrast",
                      "illum_gradient", "sharpness", "hf_ratio", "noise", "blockiness", "blur_anisotropy",
                      "orientation_coherence")


# The spread of a measurement that (nearly) never varies in training, e.g. the 5th brightness percentile of
# parts on a black belt, 0 in every image: with a spread of 1e-12 one grey level more read 4e9 spreads and
# flagged the image. The measurements vary by 0.001-1 where they vary at all (docs/benchmarks.md).
MIN_SPREAD = 5e-4


def fit_standardizer(train: pd.DataFrame, columns=CONDITION_MEASURES) -> dict:
    """Median and robust spread (at least ``MIN_SPREAD``) of each measurement over the readable training
    rows; a measurement no image has is centred at 0."""
    ok = train[train["status"] == "ok"]
    cols = [c for c in columns if c in ok.columns]
    values = [ok[c].dropna().to_numpy(float) for c in cols]
    return {"columns": cols,
            "center": [float(np.median(v)) if len(v) else 0.0 for v in values],
            "scale": [robust_scale(v, floor=MIN_SPREAD) for v in values]}


def standardize(table: pd.DataFrame, standardizer: dict) -> np.ndarray:
    """(N, C) float32 standardised measurements; NaN rows where the image is unreadable.

    A missing value in a readable row (a failed measurement) is set to the
    training median, so it adds no distance.
    """
    cols = standardizer["columns"]  # absent when no image could be measured (all unreadable)
    x = table.reindex(columns=cols).to_numpy(float)
    x = (x - np.asarray(standardizer["center"])) / np.asarray(standardizer["scale"])
    ok = (table["status"] == "ok").to_numpy()
    x[ok] = np.nan_to_num(x[ok], nan=0.0)
    x[~ok] = np.nan
    return x.astype(np.float32)


def with_conditions(features: np.ndarray, table: pd.DataFrame, standardizer: dict) -> np.ndarray:
    """(N, D) embedding features -> (N, D + C), the conditions view appended."""
    return np.hstack([features, standardize(table, standardizer)])
