"""Camera pose: how a production image's camera sees the scene against a training image's.

Where the two images share features, ORB matches and a RANSAC homography give the
pose; on textures, the rotation comes from their gradient-orientation histograms and
the zoom from where their spectra's energy lies (:func:`estimate_pose`), and a tilted
or sheared camera's foreshortening from the stretch or shear that best matches those
histograms (:func:`tilted_pose`). The pose is estimated on copies at most
``POSE_SIDE`` px and applied to both of an image's scales (:class:`~.views.Views`) by
:func:`apply_pose`.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from ..properties.measures import packed_weights
from .views import REFLECT, Views, cached, resize_map

POSE_SIDE = 512  # the camera pose is estimated on copies at most this large (ORB, spectra)
# Area-keeping maps tried for a tilted or sheared camera, as (kind, factor, direction in degrees).
# On textures, stretches: the factor along the direction, its inverse across it (a 14 degree shear is
# a 1.13 stretch along a diagonal, and a rotation, which is estimated after it)...
STRETCHES = tuple(("stretch", a, phi) for a in (1.12, 1.25) for phi in (0, 45, 90, 135))
# ...on scenes with features, shears: points move along the direction by the factor times their
# offset across it (tan 14 degrees = 0.25), with no rotation (see tilted_pose)
SHEARS = tuple(("shear", t, phi) for t in (-0.25, 0.25) for phi in (0, 90))


def _orientation_hist(img: np.ndarray, bins: int = 180) -> np.ndarray:
    """Histogram of gradient orientations mod 180 degrees, weighted by squared magnitude."""
    g = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    ang = cv2.phase(gx, gy, angleInDegrees=True)  # [0, 360]: OpenCV's atan2, 20x numpy's speed
    idx = (ang * np.float32(bins / 180)).astype(np.int32).ravel() % bins  # mod 180 degrees
    hist = np.bincount(idx, weights=(gx * gx + gy * gy).ravel(), minlength=bins)
    t = np.arange(-6, 7)
    kernel = np.exp(-0.5 * (t / 2.0) ** 2)  # circular smoothing: 0 and 179 degrees are neighbours
    hist = np.convolve(np.r_[hist[-6:], hist, hist[:6]], kernel / kernel.sum(), mode="valid")
    return hist / max(hist.sum(), 1e-12)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def orientation_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of orientation histograms ``a`` and ``b`` at their best relative rotation."""
    corr = np.real(np.fft.ifft(np.conj(np.fft.fft(a)) * np.fft.fft(b)))
    return float(corr.max() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def rotation_between(src: np.ndarray, ref: np.ndarray, cache: dict | None = None) -> tuple[float, float]:
    """In-plane rotation (degrees, counter-clockwise, in [-90, 90)) taking ``src``'s texture to ``ref``'s.

    Circular cross-correlation of the two gradient-orientation histograms.
    Returns the angle and a confidence in [0, 1]: how much the best alignment
    beats the average one (0 for isotropic textures, where rotation is unseen).
    """
    a = _orientation_hist(src)
    b = cached(cache, ("orientation", ref.shape), lambda: _orientation_hist(ref))
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
    kb, db = cached(cache, ("orb", ref.shape), lambda: _orb(ref))
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
def _spectrum_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hann window (h, w), and packed-DFT weights summing the power, and the power times each
    bin's radial frequency (:func:`~shiftbench.properties.measures.packed_weights`)."""
    radius = np.hypot(np.fft.rfftfreq(w)[None, :], np.abs(np.fft.fftfreq(h))[:, None])
    return (np.outer(np.hanning(h), np.hanning(w)).astype(np.float32), packed_weights(np.ones(radius.shape), w),
            packed_weights(radius, w))


def _mean_freq(img: np.ndarray) -> float:
    """Power-weighted mean radial frequency (cycles per pixel) of the windowed grey image."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    window, every, radius = _spectrum_grid(*g.shape)
    p = cv2.dft((g - np.float32(g.mean(dtype=np.float64))) * window)  # packed: 6x numpy's complex rfft2
    p *= p
    return float((p * radius).sum(dtype=np.float64) / max((p * every).sum(dtype=np.float64), 1e-12))


def zoom_between(src: np.ndarray, ref: np.ndarray, zooms=(1.0, 1.15, 1.3, 1.45), cache: dict | None = None) -> float:
    """Magnification of ``ref`` relative to ``src`` from where their spectra's energy lies.

    A closer camera moves all of a texture's frequencies down by the zoom
    factor; the zoom whose rescaled ``src`` has the mean radial frequency of
    ``ref`` is returned (1.0 when ``ref`` is not coarser).
    """
    target = cached(cache, ("frequency", ref.shape), lambda: _mean_freq(ref))
    return min(zooms, key=lambda z: abs(_mean_freq(src if z == 1.0 else _zoom(src, z)) - target))


def _zoom(img: np.ndarray, z: float, deg: float = 0.0) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, z)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=REFLECT)


def _tilt(kind: str, a: float, phi: float, w: int, h: int) -> np.ndarray:
    """3x3 map of a (w, h) image about its centre: a ``"stretch"`` by ``a`` along ``phi`` degrees
    and by 1/a across it, or a ``"shear"`` moving points along ``phi`` by ``a`` times their offset
    across it (``phi`` from the image's x axis towards its y axis)."""
    t = np.deg2rad(phi)
    u, v = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    d = a * np.outer(u, u) + np.outer(v, v) / a if kind == "stretch" else np.eye(2) + a * np.outer(u, v)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = d, c - d @ c
    return m


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


@dataclasses.dataclass(frozen=True, eq=False)
class Pose:
    """``ref``'s camera pose against ``src``'s, in pixels of ``src``'s pose copy (:func:`estimate_pose`):
    a homography where features match, else an in-plane rotation (``deg``, with its confidence
    ``conf``) and a ``zoom``, after a ``tilt`` where :func:`tilted_pose` found one; beside a
    homography ``deg``, ``conf``, ``zoom`` are 0, 1, 1 and ``tilt`` is None (:attr:`rotation`
    reads the rotation either way)."""
    homography: np.ndarray | None
    deg: float
    conf: float
    zoom: float
    to_whole: np.ndarray  # pose-copy pixels -> whole pixels
    copy: np.ndarray  # the pose copy
    # (kind, factor, direction in degrees from the image's x axis towards its y axis, i.e. clockwise
    # on screen; 45 = towards the bottom right) of :func:`_tilt`, made before the rotation
    tilt: tuple[str, float, float] | None = None

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
    target = cached(cache, ("resized", *size), lambda: _copy_at(ref, size))
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
    if pose.tilt is not None:
        kind, a, phi = pose.tilt
        how = f"{kind} {a:.2f} along {phi:.0f}" + (f", {how}" if kind == "stretch" else "")  # a shear: alone
    elif pose.deg == 0 and z == 1.0:
        return src, how
    sh, sw = pose.copy.shape[:2]
    m = np.vstack([cv2.getRotationMatrix2D(((sw - 1) / 2, (sh - 1) / 2), pose.deg, z), [0, 0, 1]])
    if pose.tilt is not None:
        m = m @ _tilt(*pose.tilt, sw, sh)
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


def tilted_pose(src: Views, ref: Views, pose: Pose, cache: dict | None = None) -> tuple[Pose, float] | None:
    """``pose`` (from :func:`estimate_pose`) with a tilt: a camera tilted against the surface
    foreshortens it along one direction, which a rotation cannot give.

    On a texture (no homography), of :data:`STRETCHES` the one after which ``src``'s gradient
    orientations best match ``ref``'s (at their best relative rotation) is kept if it matches
    better than none; rotation and zoom are then estimated as for a plain texture. Where a
    homography was found, the two images may be different instances of a part (the homography
    then fits their shared features, not the camera), whose histograms differ by more than a
    rotation: of :data:`SHEARS` the one that matches ``ref``'s histogram as it is (no rotation,
    no zoom) best is kept. Returns that pose and the histograms' cosine similarity after the
    tilt; None where the copy is under 32 px or no tilt matches better. A motion blur also
    changes a texture's orientations, so :mod:`.attribution` counts this counterfactual only
    where it makes the image look in distribution or alone explains most of its distance.
    """
    small, (h, w) = pose.copy, pose.copy.shape[:2]
    if min(h, w) < 32:  # (as homography_between: too small to read)
        return None
    target = cached(cache, ("resized", w, h), lambda: _copy_at(ref, (w, h)))
    want = cached(cache, ("orientation", target.shape), lambda: _orientation_hist(target))
    features = pose.homography is not None
    match = _cosine if features else orientation_similarity
    best, pick = match(_orientation_hist(small), want), None
    for tilt in SHEARS if features else STRETCHES:
        tilted = cv2.warpAffine(small, _tilt(*tilt, w, h)[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=REFLECT)
        similarity = match(_orientation_hist(tilted), want)
        if similarity > best:
            best, pick = similarity, (tilt, tilted)
    if pick is None:
        return None
    tilt, tilted = pick
    if features:
        return dataclasses.replace(pose, homography=None, deg=0.0, conf=1.0, zoom=1.0, tilt=tilt), best
    deg, conf = rotation_between(tilted, target, cache)
    return dataclasses.replace(pose, deg=deg, conf=conf, zoom=zoom_between(tilted, target, cache=cache),
                               tilt=tilt), best
