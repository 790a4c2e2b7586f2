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
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from ..properties.measures import optics
from .views import Views, each, resize_map

REFLECT = cv2.BORDER_REFLECT_101
POSE_SIDE = 512  # the camera pose is estimated on copies at most this large (ORB, spectra)


def _cached(cache: dict | None, key: tuple, fn):
    """``fn()``, kept in ``cache`` under ``key``: a production image's own quantities are
    computed once for all of its neighbours (no memo without a cache)."""
    if cache is None:
        return fn()
    if key not in cache:
        cache[key] = fn()
    return cache[key]


# --- lighting -----------------------------------------------------------------

def _illumination_fit(img: np.ndarray) -> np.ndarray:
    """Coefficients (6,) of a quadratic surface fitted to the 32x32 luma (+1) of ``img``."""
    low = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, 32), np.linspace(-0.5, 0.5, 32))
    basis = np.stack([np.ones_like(u), u, v, u * u, v * v, u * v], -1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(basis, low.reshape(-1).astype(np.float64) + 1.0, rcond=None)
    return coef


def _surface(coef: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The surface at columns ``u`` (1, W) and rows ``v`` (H, 1), in image widths from the centre."""
    full = coef[0] + coef[1] * u + coef[2] * v + coef[3] * u * u + coef[4] * v * v + coef[5] * (v * u)
    return np.maximum(full, 1.0)  # broadcast, no (H, W, 6)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-0.5, 0.5, w)[None, :], np.linspace(-0.5, 0.5, h)[:, None]


def _illumination(img: np.ndarray, coef: np.ndarray | None = None) -> np.ndarray:
    """Smooth illumination field (H, W) float32 with mean 1: quadratic surface fitted to 32x32 luma
    (``coef``: that fit, where it is known)."""
    full = _surface(_illumination_fit(img) if coef is None else coef, *_grid(*img.shape[:2]))
    return (full / full.mean()).astype(np.float32)


def _crop_illumination(v: Views, coef: np.ndarray) -> np.ndarray:
    """The mean-1 field of ``coef`` (fitted to ``v``'s whole) over ``v``'s crop."""
    (h, w), (left, top) = v.shape, v.crop_offset()
    u, vv = _grid(h, w)
    mean = _surface(coef, *_grid(*v.whole.shape[:2])).mean()  # the whole image's mean, on the small grid
    ch, cw = v.crop.shape[:2]
    return (_surface(coef, u[:, left:left + cw], vv[top:top + ch]) / mean).astype(np.float32)


def _histogram_luts(src: np.ndarray, ref: np.ndarray) -> list[np.ndarray]:
    """Per channel, the monotone LUT (256,) uint8 that gives ``src`` the histogram of ``ref``."""
    luts = []
    for c in range(src.shape[2]):
        s_hist = np.bincount(src[..., c].ravel(), minlength=256).cumsum() / src[..., c].size
        r_hist = np.bincount(ref[..., c].ravel(), minlength=256).cumsum() / ref[..., c].size
        luts.append(np.interp(s_hist, r_hist, np.arange(256)).round().clip(0, 255).astype(np.uint8))
    return luts


def _apply_luts(img: np.ndarray, luts: list[np.ndarray]) -> np.ndarray:
    out = np.empty_like(img)
    for c, lut in enumerate(luts):
        out[..., c] = lut[img[..., c]]
    return out


def _scaled(img: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    return np.clip(img.astype(np.float32) * ratio[..., None], 0, 255).astype(np.uint8)


def relight_like(src: Views, ref: Views, cache: dict | None = None) -> Views:
    """``src`` under the lighting of ``ref``: its illumination field, then its histogram per channel.

    The field (low-order surface of the luma) carries uneven light; histogram
    matching carries exposure, gamma, contrast and colour cast. Both are estimated
    on the wholes and made on the crop alike. ``cache``: a dict kept across calls
    with the same ``ref`` (see :func:`warp_like`).
    """
    field = _cached(cache, ("illumination",), lambda: _illumination(ref.whole))
    sh, sw = src.whole.shape[:2]
    src_fit = _illumination_fit(src.whole)
    lit = _scaled(src.whole, cv2.resize(field, (sw, sh)) / _illumination(src.whole, src_fit))
    luts = _histogram_luts(lit, ref.whole)
    whole = _apply_luts(lit, luts)
    if src.single:
        return Views(whole, whole, whole.shape[:2], whole)
    ref_fit = _cached(cache, ("illumination fit",), lambda: _illumination_fit(ref.whole))
    ratio = _crop_illumination(src, ref_fit) / _crop_illumination(src, src_fit)
    return Views(whole, _apply_luts(_scaled(src.crop, ratio), luts), src.shape)


# --- optics and resolution ------------------------------------------------------

OPTICS_MATCHED = ("sharpness", "hf_ratio", "blockiness", "blur_anisotropy", "noise")


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
DEGRADATIONS = ("none", *LOW_PASS, *(f"jpeg {q}" for q in (5, 10, 20, 40)))


def degrade(src: np.ndarray, name: str, blur_direction: float = 0.0) -> np.ndarray:
    """``src`` under one named candidate degradation (blur, lower resolution, motion, compression)
    of :data:`DEGRADATIONS`, e.g. ``"blur 2.0"`` or ``"jpeg 10"``."""
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
    if kind == "jpeg" and v.image is not None:  # 8x8 blocks are a full-resolution artefact: made there
        return cv2.resize(degrade(v.image, name), (ww, wh), interpolation=cv2.INTER_AREA)
    return degrade(v.whole, name, blur_direction)


def _add_noise(img: np.ndarray, sigma: float) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, sigma, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def degrade_like(src: Views, ref_measures: dict, scale: dict[str, float],
                 known: dict[str, dict] | None = None) -> tuple[Views, str]:
    """The degradation of ``src`` (one of :data:`DEGRADATIONS`) whose optics measurements come closest
    to ``ref_measures``.

    ``scale`` gives each measurement's training spread (distances are in those
    units). Noise is then topped up to the reference's level. Returns the degraded
    views and the name of the chosen degradation. ``known``: a dict kept per ``src`` across
    calls, filled with the optics of its candidates that do not depend on the
    reference (all but motion blur), so that a training image that neighbours many
    flagged images is measured once.

    Blur, downscaling and motion blur only lower sharpness and high-frequency energy,
    so they are not tried when the reference is at least as sharp as ``src`` on both:
    nothing low-passed can explain a sharper image (and the search is cut to JPEG).
    Candidates are measured on ``src``'s crop, as ``ref_measures`` were on the
    reference's; the chosen one is then made on the crop and, scaled, on the whole.
    """
    known = {} if known is None else known
    direction = ref_measures.get("blur_direction", 0.0)
    seen: dict[str, dict] = {}  # this call's measurements

    def measured(name: str) -> dict:
        if name not in seen:
            seen[name] = known[name] if name in known else optics(degrade(src.crop, name, direction))
            if not name.startswith("motion"):  # motion blur depends on the reference's blur direction
                known[name] = seen[name]
        return seen[name]

    plain = measured("none")
    low_pass = not all(ref_measures.get(c, np.nan) >= plain[c] for c in ("sharpness", "hf_ratio"))
    best_d, best_name = np.inf, "none"
    for name in (n for n in DEGRADATIONS if low_pass or n not in LOW_PASS):
        m = measured(name)
        d = sum(((m[c] - ref_measures[c]) / scale[c]) ** 2 for c in OPTICS_MATCHED
                if c in scale and np.isfinite(ref_measures.get(c, np.nan)))
        if d < best_d:
            best_d, best_name = d, name
    crop = degrade(src.crop, best_name, direction)
    whole = crop if src.single else _degrade_whole(src, best_name, direction)
    have, want = measured(best_name)["noise"], ref_measures.get("noise", 0.0)
    if np.isfinite(want) and want > 1.2 * have:
        sigma = 255.0 * np.sqrt(want ** 2 - have ** 2)
        crop = _add_noise(crop, sigma)
        # averaging k full-resolution pixels into one divides the noise by sqrt(k)
        shrink = np.sqrt(whole.shape[0] * whole.shape[1] / (src.shape[0] * src.shape[1]))
        whole = crop if src.single else _add_noise(whole, sigma * shrink)
        best_name += " + noise"
    if best_name == "none":
        return src, best_name
    return Views(whole, crop, src.shape, crop if src.single else None), best_name


# --- geometry -------------------------------------------------------------------

def _orientation_hist(img: np.ndarray, bins: int = 180) -> np.ndarray:
    """Histogram of gradient orientations mod 180 degrees, weighted by squared magnitude."""
    g = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    ang = cv2.phase(gx, gy, angleInDegrees=True)  # [0, 360]: OpenCV's atan2, ~0.3 degrees, 20x numpy's speed
    idx = (ang * np.float32(bins / 180)).astype(np.int32).ravel()
    idx[idx >= bins] -= bins  # mod 180 degrees
    hist = np.bincount(np.minimum(idx, bins - 1), weights=(gx * gx + gy * gy).ravel(), minlength=bins)
    t = np.arange(-6, 7)
    kernel = np.exp(-0.5 * (t / 2.0) ** 2)  # circular smoothing: 0 and 179 degrees are neighbours
    hist = np.convolve(np.r_[hist[-6:], hist, hist[:6]], kernel / kernel.sum(), mode="valid")
    return hist / max(hist.sum(), 1e-12)


def rotation_between(src: np.ndarray, ref: np.ndarray, cache: dict | None = None) -> tuple[float, float]:
    """In-plane rotation (degrees, counter-clockwise, in [-90, 90)) taking ``src``'s texture to ``ref``'s.

    Circular cross-correlation of the two gradient-orientation histograms.
    Returns the angle and a confidence in [0, 1]: how much the best alignment
    beats the average one (0 for isotropic textures, where rotation is unseen).
    """
    a = _orientation_hist(src)
    b = _cached(cache, ("orientation", ref.shape), lambda: _orientation_hist(ref))
    corr = np.real(np.fft.ifft(np.conj(np.fft.fft(a)) * np.fft.fft(b)))
    shift = int(np.argmax(corr))
    conf = float((corr[shift] - corr.mean()) / max(corr[shift], 1e-12))
    deg = float((shift + 90) % 180 - 90)  # histogram bins are 1 degree
    return -deg, conf  # image y points down: a gradient turning by +t means a clockwise turn


def _orb(img: np.ndarray) -> tuple:
    """ORB keypoints and descriptors of an RGB image."""
    return cv2.ORB_create(nfeatures=800).detectAndCompute(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), None)


def homography_between(src: np.ndarray, ref: np.ndarray, min_inliers: int = 15,
                       cache: dict | None = None) -> np.ndarray | None:
    """Homography mapping ``src`` onto ``ref`` from ORB matches and RANSAC, or None.

    None when the images share too few consistent features (textures, other
    parts): then only the rotation estimate is available.
    """
    if min(src.shape[:2]) < 32 or min(ref.shape[:2]) < 32:  # below ORB's 31 px patch (and its pyramid)
        return None
    ka, da = _orb(src)
    kb, db = _cached(cache, ("orb", ref.shape), lambda: _orb(ref))
    if da is None or db is None or len(ka) < min_inliers or len(kb) < min_inliers:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(da, db)
    if len(matches) < min_inliers:
        return None
    pa = np.float32([ka[m.queryIdx].pt for m in matches])
    pb = np.float32([kb[m.trainIdx].pt for m in matches])
    # an answer needs >= 30% inliers (below); 1000 draws of 4 find such a set with p > 0.9997
    # (the default 2000 mostly burn time on textures, whose matches are nearly all outliers)
    h, mask = cv2.findHomography(pa, pb, cv2.RANSAC, 4.0, maxIters=1000)
    if h is None or mask.sum() < max(min_inliers, 0.3 * len(matches)):
        return None
    det = np.linalg.det(h[:2, :2])
    return h if 0.25 < det < 4.0 else None


@functools.lru_cache(maxsize=8)
def _spectrum_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann window (h, w) and the radial frequency of each rfft2 bin (h, w // 2 + 1)."""
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.outer(np.hanning(h), np.hanning(w)), np.hypot(fx, fy)


def _mean_freq(img: np.ndarray) -> float:
    """Power-weighted mean radial frequency (cycles per pixel) of the windowed grey image."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    window, radius = _spectrum_grid(*g.shape)
    p = np.abs(np.fft.rfft2((g - g.mean()) * window)) ** 2
    return float((radius * p).sum() / max(p.sum(), 1e-12))


def zoom_between(src: np.ndarray, ref: np.ndarray, zooms=(1.0, 1.15, 1.3, 1.45), cache: dict | None = None) -> float:
    """Magnification of ``ref`` relative to ``src`` from where their spectra's energy lies.

    A closer camera moves all of a texture's frequencies down by the zoom
    factor; the zoom whose rescaled ``src`` has the mean radial frequency of
    ``ref`` is returned (1.0 when ``ref`` is not coarser).
    """
    target = _cached(cache, ("frequency", ref.shape), lambda: _mean_freq(ref))
    return min(zooms, key=lambda z: abs(_mean_freq(src if z == 1.0 else _zoom(src, z)) - target))


def _zoom(img: np.ndarray, z: float, deg: float = 0.0) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, z)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=REFLECT)


def _warp(img: np.ndarray, m: np.ndarray, size: tuple[int, int], affine: bool) -> np.ndarray:
    """``img`` warped by the 3x3 ``m`` into a (w, h) = ``size`` output."""
    if affine:
        return cv2.warpAffine(img, m[:2], size, flags=cv2.INTER_LINEAR, borderMode=REFLECT)
    return cv2.warpPerspective(img, m, size, borderMode=REFLECT)


def _warp_views(v: Views, m: np.ndarray, affine: bool = False, big: np.ndarray | None = None) -> Views:
    """``v`` moved by ``m`` (3x3, in whole pixels): the crop by the same map in full-resolution
    pixels, evaluated over the crop's window only; the whole made on ``big`` (a larger copy
    of the image; by default up to twice the whole's size) and area-averaged, as the camera's
    full-resolution image would be (interpolating at the model's own scale would blur what
    the model sees more than the camera did)."""
    wh, ww = v.whole.shape[:2]
    if v.single:
        whole = _warp(v.whole, m, (ww, wh), affine)
        return Views(whole, whole, whole.shape[:2], whole)
    if v.image is None:
        raise ValueError("warping views at two scales needs their full-resolution image")
    full = np.linalg.inv(v.to_whole()) @ m @ v.to_whole()  # the same map in full-resolution pixels
    if big is None:
        big = _copy_at(v, (round(ww * min(2.0, v.shape[1] / ww)), round(wh * min(2.0, v.shape[0] / wh))))
    size = big.shape[1::-1]
    to_big = resize_map(v.shape, big.shape[:2])
    moved = _warp(big, to_big @ full @ np.linalg.inv(to_big), size, affine)
    whole = cv2.resize(moved, (ww, wh), interpolation=cv2.INTER_AREA)
    left, top = v.crop_offset()
    in_crop = np.array([[1.0, 0, -left], [0, 1, -top], [0, 0, 1]]) @ full
    return Views(whole, _warp(v.image, in_crop, v.crop.shape[1::-1], affine), v.shape)


def _copy_at(v: Views, size: tuple[int, int]) -> np.ndarray:
    """``v`` at (w, h) = ``size`` (from the full-resolution image if there is one)."""
    if v.whole.shape[1::-1] == tuple(size):
        return v.whole
    if v.image is not None and v.image.shape[1::-1] == tuple(size):
        return v.image
    return cv2.resize(v.image if v.image is not None else v.whole, size, interpolation=cv2.INTER_AREA)


@dataclasses.dataclass(frozen=True)
class Pose:
    """``ref``'s camera pose against ``src``'s, in pixels of ``src``'s pose copy (:func:`estimate_pose`):
    a homography where features match, else an in-plane rotation (degrees, with its confidence)
    and a zoom."""
    homography: np.ndarray | None
    deg: float
    conf: float
    zoom: float
    to_whole: np.ndarray  # pose-copy pixels -> whole pixels
    copy: np.ndarray  # the pose copy

    @property
    def rotation(self) -> float:
        """In-plane rotation in degrees (counter-clockwise), whichever way it was estimated."""
        if self.homography is None:
            return self.deg
        h = self.homography
        return -float(np.degrees(np.arctan2(h[1, 0] - h[0, 1], h[0, 0] + h[1, 1])))


def estimate_pose(src: Views, ref: Views, cache: dict | None = None) -> Pose:
    """The pose taking ``src`` to ``ref``, estimated on copies at most ``POSE_SIDE`` px (the
    model's input scale loses the features a homography needs), ``ref``'s resized to ``src``'s
    frame. ``cache``: see :func:`warp_like`."""
    h, w = src.shape
    s = min(1.0, POSE_SIDE / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = _copy_at(src, size)
    target = _cached(cache, ("resized", *size), lambda: _copy_at(ref, size))
    to_whole = src.to_whole() @ np.linalg.inv(resize_map(src.shape, small.shape[:2]))
    hom = homography_between(small, target, cache=cache)
    if hom is not None:
        return Pose(hom, 0.0, 1.0, 1.0, to_whole, small)
    deg, conf = rotation_between(small, target, cache)
    return Pose(None, deg, conf, zoom_between(small, target, cache=cache), to_whole, small)


def apply_pose(src: Views, pose: Pose, zoom: bool = True) -> tuple[Views, str]:
    """``src`` seen from ``pose`` (without its zoom if ``zoom`` is False), and a description;
    ``src`` itself where that changes nothing."""
    # the pose copy supersamples the warped whole where it is much larger along both axes
    big = pose.copy if all(a >= 1.5 * b for a, b in zip(pose.copy.shape[:2], src.whole.shape[:2])) else None

    def in_whole(m: np.ndarray) -> np.ndarray:
        return pose.to_whole @ m @ np.linalg.inv(pose.to_whole)

    if pose.homography is not None:
        return _warp_views(src, in_whole(pose.homography), big=big), f"homography, rotate {pose.rotation:+.0f}"
    z = pose.zoom if zoom else 1.0
    how = f"rotate {pose.deg:+.0f} (conf {pose.conf:.2f}) zoom {z:.2f}"
    if pose.deg == 0 and z == 1.0:
        return src, how
    sh, sw = pose.copy.shape[:2]
    m = np.vstack([cv2.getRotationMatrix2D(((sw - 1) / 2, (sh - 1) / 2), pose.deg, z), [0, 0, 1]])
    return _warp_views(src, in_whole(m), affine=True, big=big), how


def warp_like(src: Views, ref: Views, cache: dict | None = None) -> tuple[Views, str, float]:
    """``src`` seen from ``ref``'s camera pose: homography where features match, else rotation and zoom.

    Returns the warped views (``src`` itself when the pose is unchanged), a description and the
    in-plane rotation in degrees (:func:`estimate_pose`, :func:`apply_pose`). ``cache``: a dict
    kept across calls with the same ``ref`` and several ``src`` (a production image and its
    neighbours), so that ``ref``'s features, orientations and spectrum are computed once.
    """
    pose = estimate_pose(src, ref, cache)
    return (*apply_pose(src, pose), pose.rotation)


# --- pipeline faults --------------------------------------------------------------

def pipeline_faults(src: Views) -> dict[str, Views]:
    """Common preprocessing faults applied to ``src``: channel order, inversion, orientation.

    Channel swap only for colour images (it changes nothing in grey ones).
    """
    out = {"inverted": each(src, lambda a: 255 - a),
           "rotated 90": each(src, lambda a: np.ascontiguousarray(np.rot90(a)), shape=src.shape[::-1])}
    whole = src.whole
    if np.abs(whole[..., 0].astype(np.int16) - whole[..., 2]).mean() > 2.0:
        out["channels swapped"] = each(src, lambda a: np.ascontiguousarray(a[..., ::-1]))
    return out
