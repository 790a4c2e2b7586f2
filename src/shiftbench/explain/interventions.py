"""Interventions: give a training image the conditions measured on a production image.

Attribution asks, for each suspected cause, "if the training set had been shot
under *this* image's lighting (or angle, or optics, or pipeline), would the image
still look out of distribution?". Each function here makes that counterfactual
training image from a real one (``src``, a nearest training neighbour) and the
production image (``ref``): pure functions of uint8 RGB arrays, OpenCV and numpy.

The parameters of each change are *estimated from measurements* (histograms,
gradient orientations, spectra), never chosen by the embedding distance they
are later judged by, so an intervention cannot explain an image by search alone.

A large image is worked on at two scales (:class:`Views`): the whole of it at the
model's input scale, which is all the embedding sees, and its full-resolution
centre crop, which is all that optics are measured on (:func:`~shiftbench.properties.measures.measure`).
Each change is estimated once and made on both with matching parameters, so that a
counterfactual of a 4000 px image costs about what one of a 224 px image does.

Lighting is changed in :mod:`.lighting`, the camera pose (angle) in :mod:`.pose`.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..properties.measures import OPTICS_FIELDS, noise_sigma, optics_parts
from .views import REFLECT, Views, each

# --- optics and resolution ------------------------------------------------------

OPTICS_MATCHED = ("sharpness", "hf_ratio", "blockiness", "blur_anisotropy", "noise", "repeats")
# Spreads of matched measurements that detection does not use (the bank's condition standardiser
# has none): repeated pixels rise with any smoothing, so they only tell degradations apart.
# 0.05: about the robust spread over NEU steel.
MATCH_SPREAD = {"repeats": 0.05}


def _motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), -angle_deg, 1.0)
    k = cv2.warpAffine(k, rot, (length, length))
    return k / max(k.sum(), 1e-6)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else img


LOW_PASS = tuple([f"blur {s}" for s in (0.6, 0.9, 1.2, 1.6, 2.0, 2.6, 3.4, 4.5)]
                 + [f"downscale {f}" for f in (0.2, 0.3, 0.4, 0.5, 0.65, 0.8)]
                 + [f"motion {n}" for n in (5, 9, 13, 17)])
# tried whatever the sharpness: hard block edges can read sharper than the image itself
BLOCKY = tuple([f"pixelate {f}" for f in (0.25, 0.35, 0.5)] + [f"jpeg {q}" for q in (5, 10, 20, 40)])
DEGRADATIONS = ("none", *LOW_PASS, *BLOCKY)


def degrade(src: np.ndarray, name: str, blur_direction: float = 0.0) -> np.ndarray:
    """``src`` under one named candidate degradation (blur, lower resolution, motion, compression,
    a nearest-neighbour resize) of :data:`DEGRADATIONS`, e.g. ``"blur 2.0"`` or ``"jpeg 10"``."""
    kind, _, value = name.partition(" ")
    h, w = src.shape[:2]
    if kind == "none":
        return src
    if kind == "blur":
        return cv2.GaussianBlur(src, (0, 0), float(value))
    if kind == "downscale":
        f = float(value)
        small = cv2.resize(src, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "motion":
        return cv2.filter2D(src, -1, _motion_kernel(int(value), blur_direction), borderType=REFLECT)
    if kind == "pixelate":  # fewer pixels shown by repeating them: blocks with hard edges
        f = float(value)
        small = cv2.resize(src, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_NEAREST)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    if kind == "jpeg":
        return _jpeg(src, int(value))
    raise ValueError(f"unknown degradation {name!r}")


def _degrade_whole(v: Views, name: str, blur_direction: float) -> np.ndarray:
    """``v.whole`` as it would look had the full-resolution image been degraded by ``name``:
    the same change in full-resolution pixels, scaled to the whole's."""
    kind, _, value = name.partition(" ")
    (h, w), (wh, ww) = v.shape, v.whole.shape[:2]
    sx, sy = ww / w, wh / h
    if kind == "blur":
        return cv2.GaussianBlur(v.whole, (0, 0), float(value) * sx, sigmaY=float(value) * sy)
    if kind == "downscale":  # to the same pixel count; a no-op where the whole is smaller already
        size = (min(ww, max(1, round(w * float(value)))), min(wh, max(1, round(h * float(value)))))
        if size == (ww, wh):
            return v.whole
        small = cv2.resize(v.whole, size, interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (ww, wh), interpolation=cv2.INTER_LINEAR)
    if kind == "motion":
        length = round(int(value) * np.sqrt(sx * sy))
        return degrade(v.whole, f"motion {length}", blur_direction) if length >= 2 else v.whole
    if kind in ("jpeg", "pixelate") and v.image is not None:  # blocks are full-resolution artefacts: made there
        return cv2.resize(degrade(v.image, name), (ww, wh), interpolation=cv2.INTER_AREA)
    return degrade(v.whole, name, blur_direction)


def grey_noise(img: np.ndarray) -> bool:
    """Whether the noise of an RGB uint8 image is the same in every channel (a monochrome sensor,
    grey noise added to a colour image, or chroma smoothed by JPEG) rather than per channel.

    Per-channel noise of sigma s puts s * sqrt(2) into each channel difference and about 0.67 s
    into the luma: a ratio of about 2; noise common to all channels puts none there.
    """
    f = img.astype(np.float32)
    luma = noise_sigma(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32))
    chroma = 0.5 * (noise_sigma(f[..., 0] - f[..., 1]) + noise_sigma(f[..., 2] - f[..., 1]))
    return chroma <= luma  # rendered colour parts with their own noise: 0.8-1.5; grey noise on them 0.1-0.4


def _add_noise(img: np.ndarray, sigma: float, grey: bool) -> np.ndarray:
    """``img`` with Gaussian noise of ``sigma`` grey levels, the same in every channel where
    ``grey`` (per channel, a noise that a monochrome sensor never shows, would add colour speckle)."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, sigma, img.shape[:2] + (1,) if grey else img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def degrade_like(src: Views, ref_measures: dict, scale: dict[str, float],
                 known: dict[str, dict] | None = None, grey: bool = True) -> tuple[Views, str]:
    """The degradation of ``src`` (one of :data:`DEGRADATIONS`) whose optics measurements come closest
    to ``ref_measures``.

    ``scale`` gives each measurement's training spread (distances are in those
    units). Noise is then topped up to the reference's level, the same in every channel where
    ``grey`` (:func:`grey_noise` of the reference). Returns the degraded
    views and the name of the chosen degradation. ``known``: a dict kept per ``src`` across
    calls, filled with the optics of its candidates that do not depend on the
    reference (all but motion blur), so that a training image that neighbours many
    flagged images is measured once.

    Blur, downscaling and motion blur only lower sharpness and high-frequency energy,
    so they are not tried when the reference is at least as sharp as ``src`` on both:
    nothing low-passed can explain a sharper image (and the search is cut to blocky
    candidates: a nearest-neighbour resize and JPEG).
    Candidates are measured on ``src``'s crop, as ``ref_measures`` were on the
    reference's; the chosen one is then made on the crop and, scaled, on the whole. The
    search is exact but measures lazily: every candidate's cheap pixel statistics first
    (:func:`~shiftbench.properties.measures.optics_parts`), then the closest candidates
    further, and a candidate whose distance so far already reaches the best full one's is
    measured no further (a distance only grows with each measurement added).
    """
    known = {} if known is None else known
    direction = ref_measures.get("blur_direction", 0.0)
    seen: dict[str, dict] = {}  # this call's measurements, possibly partial
    pending: dict = {}  # candidate -> the parts of its optics not measured yet

    def more(name: str) -> bool:
        """Measure the next part of a candidate's optics; False when it has all of them."""
        if name not in seen:
            seen[name] = dict(known.get(name, {}))
        if len(seen[name]) == len(OPTICS_FIELDS):
            return False
        if name not in pending:  # a partly known candidate is made again (its first part is cheap)
            pending[name] = optics_parts(degrade(src.crop, name, direction))
        part = next(pending[name], None)
        if part is None:
            return False
        seen[name].update(part)
        if not name.startswith("motion"):  # motion blur depends on the reference's blur direction
            known[name] = seen[name]
        return True

    def measured(name: str) -> dict:
        while more(name):
            pass
        return seen[name]

    spread = {**MATCH_SPREAD, **scale}
    fields = [c for c in OPTICS_MATCHED if c in spread and np.isfinite(ref_measures.get(c, np.nan))]

    def distance(name: str) -> float:  # over the fields measured so far
        m = seen[name]
        return sum(((m[c] - ref_measures[c]) / spread[c]) ** 2 for c in fields if c in m)

    plain = measured("none")
    low_pass = not all(ref_measures.get(c, np.nan) >= plain[c] for c in ("sharpness", "hf_ratio"))
    names = [n for n in DEGRADATIONS if low_pass or n not in LOW_PASS]
    for name in names:
        more(name)
    best = (np.inf, len(names))  # (distance, position): ties go to the earlier candidate, as in a scan
    for i, name in sorted(enumerate(names), key=lambda t: distance(t[1])):
        while (distance(name), i) < best and more(name):
            pass
        if (distance(name), i) < best:
            best = (distance(name), i)
    best_name = names[best[1]] if best[1] < len(names) else "none"
    crop = degrade(src.crop, best_name, direction)
    whole = crop if src.single else _degrade_whole(src, best_name, direction)
    have, want = measured(best_name)["noise"], ref_measures.get("noise", 0.0)
    if np.isfinite(want) and want > 1.2 * have:
        sigma = 255.0 * np.sqrt(want ** 2 - have ** 2)
        crop = _add_noise(crop, sigma, grey)
        # averaging k full-resolution pixels into one divides the noise by sqrt(k)
        shrink = np.sqrt(whole.shape[0] * whole.shape[1] / (src.shape[0] * src.shape[1]))
        whole = crop if src.single else _add_noise(whole, sigma * shrink, grey)
        best_name += " + noise"
    if best_name == "none":
        return src, best_name
    return Views(whole, crop, src.shape, crop if src.single else None), best_name


# --- pipeline faults --------------------------------------------------------------

def is_colour(a: np.ndarray) -> bool:
    """Whether an (H, W, 3) uint8 image has colour (its red and blue differ by more than 2 levels on average)."""
    return bool(np.abs(a[..., 0].astype(np.int16) - a[..., 2]).mean() > 2.0)


def is_cast(a: np.ndarray, tol: float = 3.0) -> bool:
    """Whether an (H, W, 3) uint8 image's colour is a cast: each channel a tone curve of the green one
    (coloured light or a white balance on grey parts), so that matching the red and blue histograms to
    the green one leaves a grey image (within ``tol`` levels on average). Colour that varies across the
    image (coloured parts seen by a colour camera) does not match away."""
    g = a[..., 1].ravel()
    ref_cdf = np.cumsum(np.bincount(g, minlength=256)) / g.size
    for c in (0, 2):
        ch = a[..., c].ravel()
        src_cdf = np.cumsum(np.bincount(ch, minlength=256)) / ch.size
        mapped = np.interp(src_cdf, ref_cdf, np.arange(256))[ch]
        if np.abs(mapped - g).mean() > tol:
            return False
    return True


def to_grey(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB as grey, in three equal channels (what a mono camera or decoder gives)."""
    return np.ascontiguousarray(np.repeat(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2))


def pipeline_faults(src: Views, grey: bool = False) -> dict[str, Views]:
    """Common preprocessing faults applied to ``src``: channel order, inversion, orientation (rotated
    by 90 degrees, mirrored, upside down: a flipped read-out), and,
    where the production image is ``grey`` and ``src`` has colour, the colour dropped.

    Channel swap only for colour images (it changes nothing in grey ones).
    """
    out = {"inverted": each(src, lambda a: 255 - a),
           "rotated 90": each(src, lambda a: np.ascontiguousarray(np.rot90(a)), shape=src.shape[::-1]),
           "mirrored": each(src, lambda a: np.ascontiguousarray(a[:, ::-1])),
           "upside down": each(src, lambda a: np.ascontiguousarray(a[::-1]))}
    if is_colour(src.whole):
        out["channels swapped"] = each(src, lambda a: np.ascontiguousarray(a[..., ::-1]))
        if grey:
            out["colour dropped (grey)"] = each(src, to_grey)
    return out
