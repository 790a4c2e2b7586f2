"""What lies outside the training images' range: a new pixel size, an unusual light field.

Plain functions of measurement columns (a bank's table and a production image's measurements):
attribution asks them before it names lighting or angle, or tries to undo a light field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# the smooth light field's measurements: where one exceeds the training images' 95th percentile,
# attribution also undoes the light field alone (:func:`~.attribution._undo_lighting`)
LIGHT_FIELD = ("vignetting", "illum_gradient")
LIGHT_FIELD_PERCENTILE = 95


def new_pixel_size(heights: np.ndarray, widths: np.ndarray, train_heights: np.ndarray,
                   train_widths: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each (N,) height or width lies outside the range of the training images'
    heights or widths (a fixed-size training set: any other size; a training set of many sizes:
    one beyond them all)."""
    th, tw = np.asarray(train_heights, float), np.asarray(train_widths, float)
    h, w = np.asarray(heights, float), np.asarray(widths, float)
    if not (np.isfinite(th).any() and np.isfinite(tw).any()):
        return np.zeros(len(h), dtype=bool)
    return (h < np.nanmin(th)) | (h > np.nanmax(th)) | (w < np.nanmin(tw)) | (w > np.nanmax(tw))


def light_field_range(train: pd.DataFrame) -> dict[str, float]:
    """The 95th percentile of each of the light field's measurements (:data:`LIGHT_FIELD`) over the
    readable rows of ``train`` (a bank's table); those it lacks are left out."""
    ok = train[train["status"] == "ok"]
    out = {}
    for c in LIGHT_FIELD:
        v = ok[c].to_numpy(float) if c in ok else np.array([])
        v = v[np.isfinite(v)]
        if len(v):
            out[c] = float(np.percentile(v, LIGHT_FIELD_PERCENTILE))
    return out


def unusual_light_field(x_meas: dict, light_range: dict[str, float] | None) -> bool:
    """Whether ``x`` shows more vignetting or more uneven light than ``light_range`` (a falloff
    or a gradient weaker than the training images' is no light to undo: another plant's flat-lit
    images are)."""
    return any(x_meas.get(c, np.nan) > top for c, top in (light_range or {}).items())
