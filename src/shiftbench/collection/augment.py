"""Shift-matched augmentation: albumentations transforms whose ranges span what production shows.

For each cause seen among the flagged images, the production measurements of
the images attributed to it are set against the training medians and turned
into transform parameters (:func:`augmentation_spec`, pure numpy; the
``why`` of each entry says where its numbers came from); :mod:`.transforms` makes
them albumentations objects, YAML and Markdown; the lighting entries are built in
:mod:`.light_augment`, from the blocks of :mod:`.entries`. Ranges are the
observed span with outliers dropped (:func:`.scan_io.span`). Each transform
has probability ``p`` (0.5), so clean training images stay in the mix. No
transform is added for a cause that was not seen, nor for ``content`` (new
parts need labels, not augmentation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .entries import (INTER_AREA, INTER_LINEAR, INTER_NEAREST, MIN_CAUSE_IMAGES, MIN_CAUSE_SHARE, MIN_KIND_SHARE,
                      REFLECT_101, central_span, entry, line_range, modes, one_of, pair, rounded)
from .light_augment import lighting
from .scan_io import changed_zoom, circular_mean, has_cause, how_values, sheared, stretched


def _angle(rows: pd.DataFrame, t: dict[str, float], p: float) -> list[dict]:
    children, whys = [], []
    for mode in modes(rows):
        stray = not mode["cause"].astype(str).str.startswith("angle").any() if "cause" in mode else False
        if stray and len(mode) < MIN_CAUSE_IMAGES <= len(rows):  # a few of another cluster (resolution+angle)
            continue
        rot = central_span(mode["rotation_deg"]) if "rotation_deg" in mode else None
        z = central_span(changed_zoom(mode))  # None where the camera kept its distance
        shear = sheared(mode)  # attribution fits fixed shears (pose.SHEARS): augmented both ways up to them
        if rot is None and z is None and not shear:
            continue
        rot = rot or (0.0, 0.0)
        children.append(entry("angle", "Affine", {
            "rotate": pair(np.floor(rot[0]), np.ceil(rot[1]), 1), "scale": pair(*(z or (1.0, 1.0))),
            **({"shear": {a: pair(-shear[a], shear[a], 1) if a in shear else [0.0, 0.0] for a in "xy"}}
               if shear else {}),
            "keep_ratio": True, "border_mode": REFLECT_101}, "", rounded(len(mode) / len(rows))))
        whys.append(f"{len(mode)} images rotated {rot[0]:+.1f}..{rot[1]:+.1f} degrees vs their nearest training "
                    f"images, " + (f"scaled {z[0]:.2f}..{z[1]:.2f} (how_angle zoom)" if z else "no zoom")
                    + "".join(f", sheared up to {d:.0f} degrees along {a} (how_angle shear)" for a, d in shear.items()))
    out = []
    if children:
        lo = min(c["params"]["rotate"][0] for c in children)
        hi = max(c["params"]["rotate"][1] for c in children)
        signs = "both signs seen" if lo < 0 < hi else "one sign seen"
        out.append(one_of("angle", children,
                          f"{'; '.join(whys)} ({signs}; one Affine per cluster or mode, chosen by size)", p))
    factors = stretched(rows)  # a camera tilted against a texture: attribution fits fixed stretches
    if len(factors):
        # a stretch by a along a line and 1/a across moves a corner by about (a - 1) / 2 of the image size
        # along each axis: the spread of Perspective's corner offsets
        lo, hi = central_span(0.5 * (factors - 1.0))
        out.append(entry("angle", "Perspective", {"scale": pair(lo, hi), "keep_size": True,
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
        s = central_span(v)
        out.append(entry("resolution", "GaussianBlur", {"sigma_limit": pair(*s), "blur_limit": 0},
                         f"{len(v)} images matched 'blur s': sigma {s[0]:g}..{s[1]:g}", p))
    for kind, interp, what in (("downscale", (INTER_AREA, INTER_LINEAR), "lower effective resolution"),
                               ("pixelate", (INTER_NEAREST, INTER_NEAREST),
                                "pixels repeated: a nearest-neighbour resize")):
        if len(v := seen(kind)):
            s = central_span(v)
            out.append(entry("resolution", "Downscale", {
                "scale_range": pair(max(s[0], 0.05), min(s[1], 0.95)),
                "interpolation_pair": {"downscale": interp[0], "upscale": interp[1]}},
                f"{len(v)} images matched '{kind} f' ({what}): factor {s[0]:g}..{s[1]:g}", p))
    blk, blk_t = (float(np.nanmedian(rows["blockiness"])) if "blockiness" in rows else 1.0), t.get("blockiness", 1.0)
    if len(v := seen("jpeg")) or blk > blk_t + 0.15:
        s = central_span(v) if len(v) else (10.0, 40.0)
        src = f"{len(v)} images matched 'jpeg q'" if len(v) else "no quality estimate: a generic low range"
        out.append(entry("resolution", "ImageCompression", {
            "quality_range": [int(max(1, np.floor(s[0]))), int(min(100, np.ceil(s[1])))]},
            f"JPEG blocking {blk:.2f} (training {blk_t:.2f}); {src}", p))
    an, an_t = (float(np.nanmedian(rows["blur_anisotropy"])) if "blur_anisotropy" in rows else 0.0), \
        t.get("blur_anisotropy", 0.0)
    if len(v := seen("motion")) or an > an_t + 0.15:
        s = central_span(v) if len(v) else (5.0, 13.0)
        mean, res = circular_mean(rows["blur_direction"], 180.0) if "blur_direction" in rows else (np.nan, 0.0)
        angles = line_range(mean, 20.0) if res > 0.7 else [0.0, 180.0]
        out.append(entry("resolution", "MotionBlur", {
            "blur_limit": [_odd(s[0]), _odd(s[1])], "angle_range": angles, "direction_range": [0.0, 0.0],
            "allow_shifted": False},
            f"motion blur: anisotropy {an:.2f} (training {an_t:.2f}), kernel from 'motion n' matches "
            f"({len(v)} images), direction {mean:.0f} degrees (resultant {res:.2f})", p))
    nt = t.get("noise")
    if nt is not None and "noise" in rows and np.nanmedian(rows["noise"]) > 1.2 * nt + 1e-4:
        # Only measured noise counts: attribution's '+ noise' tops up what its own blur removed.
        nz = rows["noise"].to_numpy(float)
        extra = np.sqrt(np.maximum(nz ** 2 - nt ** 2, 0.0))  # independent noise adds in variance
        s = central_span(extra[extra > 0])
        out.append(entry("resolution", "GaussNoise", {
            "std_range": pair(max(s[0], 0.002), max(s[1], 0.002), 4), "per_channel": False},
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
                out.append(entry("pipeline", name, {}, f"{counts[fault]} of {len(rows)} pipeline images match "
                                 f"'{fault}'", p))
    st = t.get("saturation")
    if st is not None and "saturation" in rows and np.nanmedian(rows["saturation"]) < 0.02 < st:
        out.append(entry("pipeline", "ToGray", {"num_output_channels": 3},
                         f"pipeline images have no colour (saturation {np.nanmedian(rows['saturation']):.3f}, "
                         f"training {st:.3f})", p))
    return out


_BUILDERS = {"lighting": lighting, "angle": _angle, "resolution": _resolution, "pipeline": _pipeline}


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
