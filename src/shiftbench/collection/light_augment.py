"""Lighting entries of the augmentation spec: exposure (brightness, contrast, gamma), side light, vignette.

Each builder turns the measurements of the images attributed to ``lighting`` into
albumentations parameters (see :mod:`.augment` for the whole spec and its rules).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..explain.clusters import FLAT_SCENE_VIGNETTE, uneven_light
from ..properties.measures import SURFACE_R2, light_surface
from .entries import (MAX_ILLUMINATION, MIN_CAUSE_IMAGES, MIN_KIND_SHARE, central_span, entry, modes, one_of, pair,
                      rounded)
from .scan_io import FALLOFF_P95, circular_mean


QUANTILES = ("brightness_p05", "brightness_p50", "brightness_p95")


def _gain_offset(rows: pd.DataFrame, t: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the gain and offset that take the training images' tones to its own: (N,) each.

    Matched on mean and contrast, except where the image clips (a brightness quantile
    at 0 or 1: the clipped pixels lost their spread, and a darkened image would read as a
    near-zero gain). There the quantiles still inside (0, 1) are matched to the training
    ones instead: a line through two or three, a pure offset through one, nothing (NaN)
    when all three clip.
    """
    alpha = rows["contrast"].to_numpy(float) / t["contrast"]
    beta = rows["brightness"].to_numpy(float) - alpha * t["brightness"]
    if not all(q in rows and t.get(q) is not None for q in QUANTILES):
        return alpha, beta
    qp, qt = rows[list(QUANTILES)].to_numpy(float), np.array([t[q] for q in QUANTILES])
    inside = (qp > 0.02) & (qp < 0.98)
    for i in np.flatnonzero(~inside.all(1)):
        k = inside[i]
        if k.sum() >= 2:
            alpha[i], beta[i] = np.polyfit(qt[k], qp[i, k], 1)
        elif k.sum() == 1:
            alpha[i], beta[i] = 1.0, float(qp[i, k][0] - qt[k][0])
        else:
            alpha[i] = beta[i] = np.nan
    return alpha, beta


def _exposure(rows: pd.DataFrame, t: dict[str, float], weight: float) -> tuple[list[dict], str]:
    """RandomBrightnessContrast and RandomGamma for one lighting mode, each at ``weight / 2``."""
    bt, ct, b50t = t.get("brightness"), t.get("contrast"), t.get("brightness_p50")
    if not (bt and ct and b50t) or not {"brightness", "contrast", "brightness_p50"} <= set(rows.columns):
        return [], ""
    # RandomBrightnessContrast maps x to alpha*x + beta (beta in units of the maximum); the ranges
    # span the per-image pairs of _gain_offset.
    alpha, beta = _gain_offset(rows, t)
    a, b = central_span(alpha), central_span(beta)
    b50 = rows["brightness_p50"].to_numpy(float)
    b50 = b50[(b50 > 0.02) & (b50 < 0.98)]  # a clipped median says nothing of the curve (gamma 0.01 at 0.99)
    g = central_span(np.log(b50) / np.log(np.clip(b50t, 0.01, 0.99)))  # training median ** gamma (None: all clip)
    if not (a and b):
        return [], ""
    rbc = entry("lighting", "RandomBrightnessContrast", {
        "brightness_limit": pair(*b), "contrast_limit": pair(a[0] - 1, a[1] - 1), "brightness_by_max": True},
        "", rounded(weight / 2))
    why = (f"{len(rows)} images with mean brightness {np.median(rows['brightness']):.3f} (training {bt:.3f}): "
           f"contrast ratio {a[0]:.2f}..{a[1]:.2f} -> contrast_limit = ratio - 1, brightness_limit = mean - "
           f"ratio x training mean")
    if g is None:
        return [{**rbc, "p": rounded(weight)}], why + "; no RandomGamma: every median brightness clips"
    gamma = entry("lighting", "RandomGamma", {"gamma_limit": pair(100 * g[0], 100 * g[1], 1)}, "", rounded(weight / 2))
    return [rbc, gamma], (why + f"; or RandomGamma = log(median brightness) / log(training median {b50t:.3f}) "
                          f"= {g[0]:.2f}..{g[1]:.2f} (x100) from {len(b50)} images whose median does not clip")


def _sides(rows: pd.DataFrame, t: dict[str, float]) -> list[pd.DataFrame]:
    """The rows darker and brighter than the training images (median of their mean brightness),
    each an exposure mode of its own.

    One range spanning darkened and brightened images mostly draws combinations that
    production never showed (a strong gain with a strong offset) and rarely its darkest
    images (hard seed 0 of the steel benchmark: brightness offsets -0.26..0.66 pooled,
    -0.54..0.02 for the darker side). A side seen on fewer than ``MIN_CAUSE_IMAGES`` is left
    out, unless both are.
    """
    if "brightness" not in rows or t.get("brightness") is None:
        return [rows]
    darker = rows["brightness"].to_numpy(float) < t["brightness"]
    return [side for side in (rows[darker], rows[~darker]) if len(side) >= MIN_CAUSE_IMAGES] or [rows]


def lighting(rows: pd.DataFrame, t: dict[str, float], p: float) -> list[dict]:
    """Entries for the images attributed to lighting (``rows``) against the training medians ``t``."""
    out, children, whys = [], [], []
    for mode in modes(rows):
        for side in _sides(mode, t):
            got, why = _exposure(side, t, len(side) / len(rows))
            children += got
            whys += [why] if why else []
    if children:
        out.append({**entry("lighting", "OneOf", {}, "; ".join(whys), p), "children": children})
    if uneven := uneven_light(rows, t):
        out.append(_side_light(rows, *uneven, p))
    if "vignetting" in rows and (vig := _vignette(rows, t, p)):
        out.append(vig)
    return out


def _side_light(rows: pd.DataFrame, rel: np.ndarray, rel_t: float, p: float) -> dict:
    """Illumination entries for uneven light of relative gradient ``rel`` (per row).

    Illumination 'linear' multiplies by 1-I..1+I across the image, so gradient =
    2 * I * brightness. Training's own fields point anywhere and add to I in no
    particular direction: they are not subtracted. albumentations 2.0.8 normalises
    the field only at multiples of 45 degrees (elsewhere the mean brightness shifts
    too), so directions are snapped to those; and it caps I at 0.2, so a stronger
    field is the product of n copies: ((1+i)/(1-i))^n = (1+I)/(1-I), i = tanh(atanh(I)/n).
    """
    inten = central_span(np.clip(rel / 2, 0.01, 0.9))
    mean, res = circular_mean(rows["illum_direction"]) if "illum_direction" in rows else (np.nan, 0.0)
    # One side dominates: the measured direction (the brighter side) snapped to 45 degrees; else any side.
    angles = [float(45 * round(mean / 45) % 360)] if res > 0.7 else [0.0, 90.0, 180.0, 270.0]
    n = int(np.ceil(np.arctanh(inten[1]) / np.arctanh(MAX_ILLUMINATION)))
    each = pair(*(max(float(np.tanh(np.arctanh(v) / n)), 0.01) for v in inten), 4)
    per_angle = []
    for a in angles:
        light = entry("lighting", "Illumination", {"mode": "linear", "intensity_range": each,
                                                   "effect_type": "brighten", "angle_range": [a, a]}, "", 1.0)
        per_angle.append(light if n == 1 else {**entry("lighting", "Sequential", {}, "", 1.0),
                                               "children": [light] * n})
    why = (f"uneven light: gradient / brightness {np.nanmedian(rel):.2f} (training {rel_t:.2f}) -> intensity I = "
           f"gradient / (2 x brightness) = {inten[0]:.2f}..{inten[1]:.2f}; brighter side at {mean:.0f} degrees "
           f"(resultant {res:.2f}; 0 = right, 90 = down) -> angle {', '.join(f'{a:.0f}' for a in angles)}"
           + (f"; {n} chained copies of intensity tanh(atanh(I)/{n}) (one is capped at {MAX_ILLUMINATION})"
              if n > 1 else ""))
    return one_of("lighting", per_angle, why, p)


VIGNETTE_SIGMA = 0.6  # Illumination 'gaussian' width in image sides: within the frame, close to a fall in r^2
MIN_VIGNETTE = 0.1  # corners this much darker than training's (relative to the centre) count as a vignette


def _falloff(i: float, n: int) -> float:
    """The ``vignetting`` that shiftbench measures on a flat square image after ``n`` copies of
    Illumination(gaussian, brighten, intensity ``i``, centred, sigma ``VIGNETTE_SIGMA``)."""
    _, _, centre, radial = light_surface((1 + i * np.exp(-SURFACE_R2 / (2 * VIGNETTE_SIGMA ** 2))) ** n)
    return float(-0.5 * radial / centre)


def _vignette_steps(v: float) -> tuple[int, float]:
    """(copies, intensity of each) whose falloff measures ``v``: the fewest copies that reach it at
    intensity 0.2 (albumentations' cap), then the intensity by bisection."""
    n = 1
    while _falloff(MAX_ILLUMINATION, n) < v and n < 32:
        n += 1
    lo, hi = 0.0, MAX_ILLUMINATION
    for _ in range(40):
        lo, hi = ((lo + hi) / 2, hi) if _falloff((lo + hi) / 2, n) < v else (lo, (lo + hi) / 2)
    return n, max((lo + hi) / 2, 0.01)


def _vignette(rows: pd.DataFrame, t: dict[str, float], p: float) -> dict | None:
    """A OneOf of darker corners at up to three strengths spanning the vignetted rows, or None.

    A vignette multiplies the centre by 1 and the corners by 1 - v. albumentations has no such
    transform (Illumination 'corner' darkens one corner, and every mode stops at intensity 0.2),
    so each strength is a darkening by the centre's gain, then n copies of a centred Gaussian
    brightening: the centre comes back to where it was (nothing clips) and the corners stay darker.
    Vignetted rows are those whose corners are darker than the centre, in intensity units, than
    95% of the training images' (``FALLOFF_P95``: the relative ``vignetting`` also rises where an
    exposure falls, and darkened NEU steel read as vignetted); their strengths are the added falloff
    relative to the centre, 1 - (1 - v) / (1 - v_train). Only where the training images are lit
    evenly (``|v_train|`` under ``FLAT_SCENE_VIGNETTE``): a bright part centred on a dark belt reads
    as a vignetting of 1 and more, which describes the scene, not the light.
    """
    v_t, limit = t.get("vignetting", 0.0), t.get(FALLOFF_P95)
    if limit is None or not abs(v_t) < FLAT_SCENE_VIGNETTE or "brightness" not in rows:
        return None
    v = rows["vignetting"].to_numpy(float)
    added = 1 - (1 - v) / (1 - v_t)
    added = added[(v * rows["brightness"].to_numpy(float) > limit) & (added > MIN_VIGNETTE)]
    if len(added) < max(MIN_CAUSE_IMAGES, MIN_KIND_SHARE * len(rows)):
        return None
    s = central_span(np.clip(added, MIN_VIGNETTE, 0.9))
    levels = [float(np.mean(s))] if s[1] - s[0] < 0.05 else list(np.linspace(s[0], s[1], 3))
    children = []
    for strength in levels:
        n, i = _vignette_steps(strength)
        gain = (1 + i) ** -n
        darken = entry("lighting", "RandomBrightnessContrast", {
            "brightness_limit": [0.0, 0.0], "contrast_limit": [rounded(gain - 1, 4)] * 2, "brightness_by_max": True},
            "", 1.0)
        light = entry("lighting", "Illumination", {
            "mode": "gaussian", "intensity_range": [rounded(i, 4)] * 2, "effect_type": "brighten",
            "center_range": [0.5, 0.5], "sigma_range": [VIGNETTE_SIGMA] * 2}, "", 1.0)
        children.append({**entry("lighting", "Sequential", {}, "", rounded(1 / len(levels))),
                         "children": [darken] + [light] * n})
    why = (f"vignette: {len(added)} images with corners {100 * np.median(added):.0f}% darker than the training "
           f"images' (relative to the centre) -> strengths {', '.join(f'{x:.2f}' for x in levels)}, each a "
           f"darkening by the centre's gain, then centred Gaussian Illumination copies (one is capped at "
           f"{MAX_ILLUMINATION})")
    return one_of("lighting", children, why, p)
