"""Shift-matched augmentation: albumentations transforms whose ranges span what production shows.

For each cause seen among the flagged images, the production measurements of
the images attributed to it are set against the training medians and turned
into transform parameters (:func:`augmentation_spec`, pure numpy; the
``why`` of each entry says where its numbers came from); :mod:`.transforms` makes
them albumentations objects, YAML and Markdown. Ranges are the
observed span with outliers dropped (:func:`.scan_io.span`). Each transform
has probability ``p`` (0.5), so clean training images stay in the mix. No
transform is added for a cause that was not seen, nor for ``content`` (new
parts need labels, not augmentation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..properties.measures import light_surface
from .scan_io import (changed_zoom, circular_mean, has_cause, how_values, relative_gradient, sheared, span,
                      stretched, uneven_threshold)


def _span(values):
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


def _r(x: float, nd: int = 3) -> float:
    return float(round(float(x), nd))


def _pair(lo: float, hi: float, nd: int = 3) -> list[float]:
    return [_r(min(lo, hi), nd), _r(max(lo, hi), nd)]


def _line_range(mean: float, half: float) -> list[float]:
    """[lo, hi] within [0, 360] around the line direction ``mean`` (a line at a + 180 is the same line)."""
    lo, hi = mean - half, mean + half
    return _pair(lo, hi, 1) if lo >= 0 and hi <= 360 else _pair(lo + 180, hi + 180, 1)


def _entry(cause: str, name: str, params: dict, why: str, p: float) -> dict:
    return {"cause": cause, "name": name, "params": params, "p": p, "why": why}


def _modes(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """The rows split by failure cluster and its modes (darker *and* brighter, +20 *and* -20 degrees)."""
    keys = [c for c in ("cluster", "mode") if c in rows]
    parts = [g for _, g in rows.groupby(keys, sort=True, dropna=False)] if keys else []
    return parts if len(parts) > 1 else [rows]


def _one_of(cause: str, children: list[dict], why: str, p: float) -> dict:
    """One entry: the single child at probability ``p``, or OneOf weighted by the children's p."""
    if len(children) == 1:
        return {**children[0], "p": p, "why": why}
    return {**_entry(cause, "OneOf", {}, why, p), "children": children}


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
    a, b = _span(alpha), _span(beta)
    b50 = rows["brightness_p50"].to_numpy(float)
    b50 = b50[(b50 > 0.02) & (b50 < 0.98)]  # a clipped median says nothing of the curve (gamma 0.01 at 0.99)
    g = _span(np.log(b50) / np.log(np.clip(b50t, 0.01, 0.99)))  # training median ** gamma (None: all clip)
    if not (a and b):
        return [], ""
    rbc = _entry("lighting", "RandomBrightnessContrast", {
        "brightness_limit": _pair(*b), "contrast_limit": _pair(a[0] - 1, a[1] - 1), "brightness_by_max": True},
        "", _r(weight / 2))
    why = (f"{len(rows)} images with mean brightness {np.median(rows['brightness']):.3f} (training {bt:.3f}): "
           f"contrast ratio {a[0]:.2f}..{a[1]:.2f} -> contrast_limit = ratio - 1, brightness_limit = mean - "
           f"ratio x training mean")
    if g is None:
        return [{**rbc, "p": _r(weight)}], why + "; no RandomGamma: every median brightness clips"
    gamma = _entry("lighting", "RandomGamma", {"gamma_limit": _pair(100 * g[0], 100 * g[1], 1)}, "", _r(weight / 2))
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


def _lighting(rows: pd.DataFrame, t: dict[str, float], p: float) -> list[dict]:
    out, children, whys = [], [], []
    for mode in _modes(rows):
        for side in _sides(mode, t):
            got, why = _exposure(side, t, len(side) / len(rows))
            children += got
            whys += [why] if why else []
    if children:
        out.append({**_entry("lighting", "OneOf", {}, "; ".join(whys), p), "children": children})
    rel = relative_gradient(rows)
    rel_t = t.get("illum_gradient", 0.0) / max(t.get("brightness", 0.5), 1e-3)
    if rel is not None and np.nanmedian(rel) > uneven_threshold(rel_t):
        out.append(_side_light(rows, rel, rel_t, p))
    if "vignetting" in rows and (vig := _vignette(rows, t.get("vignetting", 0.0), p)):
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
    inten = _span(np.clip(rel / 2, 0.01, 0.9))
    mean, res = circular_mean(rows["illum_direction"]) if "illum_direction" in rows else (np.nan, 0.0)
    # One side dominates: the measured direction (the brighter side) snapped to 45 degrees; else any side.
    angles = [float(45 * round(mean / 45) % 360)] if res > 0.7 else [0.0, 90.0, 180.0, 270.0]
    n = int(np.ceil(np.arctanh(inten[1]) / np.arctanh(MAX_ILLUMINATION)))
    each = _pair(*(max(float(np.tanh(np.arctanh(v) / n)), 0.01) for v in inten), 4)
    per_angle = []
    for a in angles:
        light = _entry("lighting", "Illumination", {"mode": "linear", "intensity_range": each,
                                                    "effect_type": "brighten", "angle_range": [a, a]}, "", 1.0)
        per_angle.append(light if n == 1 else {**_entry("lighting", "Sequential", {}, "", 1.0),
                                               "children": [light] * n})
    why = (f"uneven light: gradient / brightness {np.nanmedian(rel):.2f} (training {rel_t:.2f}) -> intensity I = "
           f"gradient / (2 x brightness) = {inten[0]:.2f}..{inten[1]:.2f}; brighter side at {mean:.0f} degrees "
           f"(resultant {res:.2f}; 0 = right, 90 = down) -> angle {', '.join(f'{a:.0f}' for a in angles)}"
           + (f"; {n} chained copies of intensity tanh(atanh(I)/{n}) (one is capped at {MAX_ILLUMINATION})"
              if n > 1 else ""))
    return _one_of("lighting", per_angle, why, p)


VIGNETTE_SIGMA = 0.6  # Illumination 'gaussian' width in image sides: within the frame, close to a fall in r^2
MIN_VIGNETTE = 0.1  # corners this much darker than training's (relative to the centre) count as a vignette
_CELLS = (np.arange(32) + 0.5) / 32 - 0.5
_R2 = _CELLS[:, None] ** 2 + _CELLS[None, :] ** 2  # squared distance from the centre, in image sides


def _falloff(i: float, n: int) -> float:
    """The ``vignetting`` that shiftbench measures on a flat square image after ``n`` copies of
    Illumination(gaussian, brighten, intensity ``i``, centred, sigma ``VIGNETTE_SIGMA``)."""
    _, _, centre, radial = light_surface((1 + i * np.exp(-_R2 / (2 * VIGNETTE_SIGMA ** 2))) ** n)
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


def _vignette(rows: pd.DataFrame, v_t: float, p: float) -> dict | None:
    """A OneOf of darker corners at up to three strengths spanning the vignetted rows, or None.

    A vignette multiplies the centre by 1 and the corners by 1 - v. albumentations has no such
    transform (Illumination 'corner' darkens one corner, and every mode stops at intensity 0.2),
    so each strength is a darkening by the centre's gain, then n copies of a centred Gaussian
    brightening: the centre comes back to where it was (nothing clips) and the corners stay darker.
    Strengths are the rows' added falloff, 1 - (1 - v) / (1 - v_train).
    """
    added = 1 - (1 - rows["vignetting"].to_numpy(float)) / max(1 - v_t, 1e-3)
    added = added[np.isfinite(added) & (added > MIN_VIGNETTE)]
    if len(added) < max(MIN_CAUSE_IMAGES, MIN_KIND_SHARE * len(rows)):
        return None
    s = _span(np.clip(added, MIN_VIGNETTE, 0.9))
    levels = [float(np.mean(s))] if s[1] - s[0] < 0.05 else list(np.linspace(s[0], s[1], 3))
    children = []
    for v in levels:
        n, i = _vignette_steps(v)
        gain = (1 + i) ** -n
        darken = _entry("lighting", "RandomBrightnessContrast", {
            "brightness_limit": [0.0, 0.0], "contrast_limit": [_r(gain - 1, 4)] * 2, "brightness_by_max": True},
            "", 1.0)
        light = _entry("lighting", "Illumination", {
            "mode": "gaussian", "intensity_range": [_r(i, 4)] * 2, "effect_type": "brighten",
            "center_range": [0.5, 0.5], "sigma_range": [VIGNETTE_SIGMA] * 2}, "", 1.0)
        children.append({**_entry("lighting", "Sequential", {}, "", _r(1 / len(levels))),
                         "children": [darken] + [light] * n})
    why = (f"vignette: {len(added)} images with corners {100 * np.median(added):.0f}% darker than the training "
           f"images' (relative to the centre) -> strengths {', '.join(f'{v:.2f}' for v in levels)}, each a "
           f"darkening by the centre's gain, then centred Gaussian Illumination copies (one is capped at "
           f"{MAX_ILLUMINATION})")
    return _one_of("lighting", children, why, p)


def _angle(rows: pd.DataFrame, t: dict[str, float], p: float) -> list[dict]:
    children, whys = [], []
    for mode in _modes(rows):
        rot = _span(mode["rotation_deg"]) if "rotation_deg" in mode else None
        z = _span(changed_zoom(mode))  # None where the camera kept its distance
        shear = sheared(mode)  # attribution fits fixed shears (pose.SHEARS): augmented both ways up to them
        if rot is None and z is None and not shear:
            continue
        rot = rot or (0.0, 0.0)
        children.append(_entry("angle", "Affine", {
            "rotate": _pair(np.floor(rot[0]), np.ceil(rot[1]), 1), "scale": _pair(*(z or (1.0, 1.0))),
            **({"shear": {a: _pair(-shear[a], shear[a], 1) if a in shear else [0.0, 0.0] for a in "xy"}}
               if shear else {}),
            "keep_ratio": True, "border_mode": REFLECT_101}, "", _r(len(mode) / len(rows))))
        whys.append(f"{len(mode)} images rotated {rot[0]:+.1f}..{rot[1]:+.1f} degrees vs their nearest training "
                    f"images, " + (f"scaled {z[0]:.2f}..{z[1]:.2f} (how_angle zoom)" if z else "no zoom")
                    + "".join(f", sheared up to {d:.0f} degrees along {a} (how_angle shear)" for a, d in shear.items()))
    out = []
    if children:
        lo = min(c["params"]["rotate"][0] for c in children)
        hi = max(c["params"]["rotate"][1] for c in children)
        signs = "both signs seen" if lo < 0 < hi else "one sign seen"
        out.append(_one_of("angle", children,
                           f"{'; '.join(whys)} ({signs}; one Affine per cluster or mode, chosen by size)", p))
    factors = stretched(rows)  # a camera tilted against a texture: attribution fits fixed stretches
    if len(factors):
        # a stretch by a along a line and 1/a across moves a corner by about (a - 1) / 2 of the image size
        # along each axis: the spread of Perspective's corner offsets
        lo, hi = _span(0.5 * (factors - 1.0))
        out.append(_entry("angle", "Perspective", {"scale": _pair(lo, hi), "keep_size": True,
                                                    "border_mode": REFLECT_101},
                          f"{len(factors)} of {len(rows)} images stretched {factors.min():.2f}..{factors.max():.2f} "
                          "against their nearest training images (how_angle stretch: a tilted camera)", p))
    return out


def _odd(n: float) -> int:
    n = max(3, int(round(n)))
    return n if n % 2 else n + 1


def _resolution(rows: pd.DataFrame, t: dict[str, float], p: float) -> list[dict]:
    out, n = [], len(rows)
    how = rows["how_resolution"] if "how_resolution" in rows else pd.Series([""] * n, index=rows.index)

    def seen(kind: str) -> np.ndarray:
        v = how_values(how, kind)
        enough = np.isfinite(v).sum() >= max(MIN_CAUSE_IMAGES, MIN_KIND_SHARE * n)
        return v[np.isfinite(v)] if enough else np.array([])

    if len(v := seen("blur")):
        s = _span(v)
        out.append(_entry("resolution", "GaussianBlur", {"sigma_limit": _pair(*s), "blur_limit": 0},
                          f"{len(v)} images matched 'blur s': sigma {s[0]:g}..{s[1]:g}", p))
    for kind, pair, what in (("downscale", (INTER_AREA, INTER_LINEAR), "lower effective resolution"),
                             ("pixelate", (INTER_NEAREST, INTER_NEAREST),
                              "pixels repeated: a nearest-neighbour resize")):
        if len(v := seen(kind)):
            s = _span(v)
            out.append(_entry("resolution", "Downscale", {
                "scale_range": _pair(max(s[0], 0.05), min(s[1], 0.95)),
                "interpolation_pair": {"downscale": pair[0], "upscale": pair[1]}},
                f"{len(v)} images matched '{kind} f' ({what}): factor {s[0]:g}..{s[1]:g}", p))
    blk, blk_t = (float(np.nanmedian(rows["blockiness"])) if "blockiness" in rows else 1.0), t.get("blockiness", 1.0)
    if len(v := seen("jpeg")) or blk > blk_t + 0.15:
        s = _span(v) if len(v) else (10.0, 40.0)
        src = f"{len(v)} images matched 'jpeg q'" if len(v) else "no quality estimate: a generic low range"
        out.append(_entry("resolution", "ImageCompression", {
            "quality_range": [int(max(1, np.floor(s[0]))), int(min(100, np.ceil(s[1])))]},
            f"JPEG blocking {blk:.2f} (training {blk_t:.2f}); {src}", p))
    an, an_t = (float(np.nanmedian(rows["blur_anisotropy"])) if "blur_anisotropy" in rows else 0.0), \
        t.get("blur_anisotropy", 0.0)
    if len(v := seen("motion")) or an > an_t + 0.15:
        s = _span(v) if len(v) else (5.0, 13.0)
        mean, res = circular_mean(rows["blur_direction"], 180.0) if "blur_direction" in rows else (np.nan, 0.0)
        angles = _line_range(mean, 20.0) if res > 0.7 else [0.0, 180.0]
        out.append(_entry("resolution", "MotionBlur", {
            "blur_limit": [_odd(s[0]), _odd(s[1])], "angle_range": angles, "direction_range": [0.0, 0.0],
            "allow_shifted": False},
            f"motion blur: anisotropy {an:.2f} (training {an_t:.2f}), kernel from 'motion n' matches "
            f"({len(v)} images), direction {mean:.0f} degrees (resultant {res:.2f})", p))
    nt = t.get("noise")
    if nt is not None and "noise" in rows and np.nanmedian(rows["noise"]) > 1.2 * nt + 1e-4:
        # Only measured noise counts: attribution's '+ noise' tops up what its own blur removed.
        nz = rows["noise"].to_numpy(float)
        extra = np.sqrt(np.maximum(nz ** 2 - nt ** 2, 0.0))  # independent noise adds in variance
        s = _span(extra[extra > 0])
        out.append(_entry("resolution", "GaussNoise", {
            "std_range": _pair(max(s[0], 0.002), max(s[1], 0.002), 4), "per_channel": False},
            f"noise sigma {np.nanmedian(nz):.4f} (training {nt:.4f}) -> std = sqrt(prod^2 - training^2), "
            f"grey noise as the luma measurement sees it", p))
    return out


_FAULTS = {"channels swapped": "ChannelShuffle", "inverted": "InvertImg", "rotated 90": "RandomRotate90",
           "mirrored": "HorizontalFlip", "upside down": "VerticalFlip"}


def _pipeline(rows: pd.DataFrame, t: dict[str, float], p: float) -> list[dict]:
    out = []
    if "how_pipeline" in rows:
        counts = rows["how_pipeline"].astype(str).value_counts()
        for fault, name in _FAULTS.items():
            if counts.get(fault, 0) >= max(1, MIN_KIND_SHARE * len(rows)):
                out.append(_entry("pipeline", name, {}, f"{counts[fault]} of {len(rows)} pipeline images match "
                                  f"'{fault}'", p))
    st = t.get("saturation")
    if st is not None and "saturation" in rows and np.nanmedian(rows["saturation"]) < 0.02 < st:
        out.append(_entry("pipeline", "ToGray", {"num_output_channels": 3},
                          f"pipeline images have no colour (saturation {np.nanmedian(rows['saturation']):.3f}, "
                          f"training {st:.3f})", p))
    return out


_BUILDERS = {"lighting": _lighting, "angle": _angle, "resolution": _resolution, "pipeline": _pipeline}


def augmentation_spec(table: pd.DataFrame, train: dict[str, float], p: float = 0.5) -> list[dict]:
    """Transform entries (cause, name, params, p, why[, children]) for the shift in ``table``.

    ``table``: scan rows (all of images.csv or only the flagged ones; rows with
    ``is_ood`` false are ignored); ``train``: training median per measurement.
    """
    table = _flagged(table)
    need = images_needed(len(table))
    spec = []
    for cause, build in _BUILDERS.items():
        rows = table[has_cause(table["cause"], cause)] if "cause" in table else table.iloc[:0]
        if len(rows) >= need:
            spec += build(rows, train, p)
    return spec


def images_needed(n_flagged: int) -> int:
    """Flagged images a cause needs for transforms: one seen on a handful of images is more likely a
    wrong call than a shift to train for."""
    return int(max(MIN_CAUSE_IMAGES, np.ceil(MIN_CAUSE_SHARE * n_flagged)))


def _flagged(table: pd.DataFrame) -> pd.DataFrame:
    if "is_ood" in table:
        return table[table["is_ood"].astype(str).str.lower().isin(("true", "1"))]
    return table
