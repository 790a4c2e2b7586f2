"""Condition measurements: small pure functions of one decoded image.

Each registered function takes an RGB uint8 image (H, W, 3) and returns a dict
of named floats; :func:`measure` runs them all and returns one flat dict, which
becomes columns of the image tables (``images.csv``, the bank). Values are
defined so that a known change of conditions moves them in a known way (the
tests apply such changes and check the numbers), and they do not depend on the
image size unless they measure it.

Two views of a large image are measured, each for what it shows: optics (blur,
noise, compression: properties of single pixels) on the centre ``CROP_SIDE``
pixels at full resolution, and everything else (lighting, orientation, colour:
properties of the whole field) on an overview whose shorter side is at most
``OVERVIEW_SIDE`` (area-averaged). An image no larger than both is measured as it is.

Lighting (intensities in [0, 1]):
    ``brightness`` mean; ``brightness_p05/p50/p95`` percentiles; ``contrast`` standard
    deviation; ``shadows_clipped`` / ``highlights_clipped`` share of pixels at
    <= 2 / >= 253; ``illum_gradient`` the change in brightness across the image of
    a plane fitted to the heavily blurred image (0 = even); ``illum_direction``
    its direction in degrees; ``vignetting`` how much darker the corners are than the
    centre, relative to it, on a radial term fitted with that plane (0.4: corners 40%
    darker; negative: brighter); ``colour_cast`` distance of the mean chromaticity
    from grey (0 for grey images).
Optics and resolution:
    ``aspect`` width / height (the pixel size itself is in the tables'
    ``width``/``height`` columns); ``sharpness`` variance of the Laplacian of
    the contrast-normalised image; ``hf_ratio`` share of spectral energy above half
    the Nyquist frequency (effective resolution); ``blur_anisotropy`` in [0, 1]
    (1 = all blur in one direction, motion) and ``blur_direction`` in degrees;
    ``blockiness`` JPEG 8x8 grid strength (1 = none); ``noise`` sigma estimate
    (Immerkaer 1996) of the luma channel, in [0, 1] units; ``repeats`` share of
    side-by-side pixels of equal grey level (pixels shown several times by a
    nearest-neighbour resize; also flat, smoothed or clipped areas).
Geometry:
    ``orientation`` dominant gradient direction in degrees [0, 180) and
    ``orientation_coherence`` in [0, 1] (how much one direction dominates).
Pipeline:
    ``rb_balance`` mean red minus mean blue, ``saturation`` mean HSV saturation,
    ``dynamic_range`` p99.5 - p0.5 intensity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import cv2
import numpy as np

VERSION = 6  # bump when a definition changes: banks measured otherwise are re-measured
CROP_SIDE = 256  # optics are measured on the centre pixels at most this large, unresampled
OVERVIEW_SIDE = 224  # the rest on a copy whose shorter side is at most this (what a model sees)
MEASURES: dict[str, Callable[[np.ndarray], dict[str, float]]] = {}
ON_CROP: set[str] = set()  # the registered functions measured on the centre crop, not the overview
# Directions in degrees wrap around (359 is next to 1): no median or KS test on them.
ANGLES = frozenset({"illum_direction", "blur_direction", "orientation"})


def register(fn: Callable[[np.ndarray], dict[str, float]] | None = None, *, on_crop: bool = False):
    """Add ``fn`` to the measurements :func:`measure` runs (``@register`` or
    ``@register(on_crop=True)`` for a pixel-scale property, measured at full resolution)."""
    def add(f: Callable) -> Callable:
        MEASURES[f.__name__] = f
        (ON_CROP.add if on_crop else ON_CROP.discard)(f.__name__)
        return f
    return add(fn) if fn is not None else add


def _grey(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def _histogram(img: np.ndarray) -> np.ndarray:
    """256-bin histogram of the grey levels."""
    return cv2.calcHist([cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)], [0], None, [256], [0, 256]).ravel()


def _percentiles(hist: np.ndarray, qs: list[float]) -> np.ndarray:
    """Percentiles (in [0, 1]) of the grey levels from their histogram (no sort)."""
    cdf = np.cumsum(hist)
    return np.searchsorted(cdf, np.asarray(qs) / 100.0 * cdf[-1]) / 255.0


# Least-squares plane and radial term over the 32x32 grid of cell centres (image width and height = 1;
# on this symmetric grid the radial term leaves the plane's slopes as a plane alone fits them).
_CENTRES = (np.arange(32) + 0.5) / 32 - 0.5
_U, _V = np.tile(_CENTRES, 32), np.repeat(_CENTRES, 32)
_SURFACE_PINV = np.linalg.pinv(np.c_[_U, _V, np.ones(32 * 32), _U ** 2 + _V ** 2])
SURFACE_R2 = (_U ** 2 + _V ** 2).reshape(32, 32)  # r^2 of light_surface's cells (0.5 at the corners)


def packed_weights(mask: np.ndarray, w: int) -> np.ndarray:
    """(h, w) float32 weights that sum an (h, w) image's rfft2 power over ``mask`` from OpenCV's
    packed real DFT (CCS layout): ``sum(weights * cv2.dft(x) ** 2)`` equals
    ``sum(mask * |rfft2(x)| ** 2)``, for ``mask`` (h, w // 2 + 1) over rfft2's bins (0/1 or weights).

    Each packed value is the real or imaginary part of one bin; the first column (and the last,
    for even ``w``) hold only half of their conjugate-symmetric bins, which the rfft2
    half-spectrum holds twice.
    """
    h = mask.shape[0]
    wt = np.zeros((h, w), np.float32)
    k = np.arange(1, (w - 1) // 2 + 1)  # interior columns: (Re, Im) of bin (r, k) at 2k-1, 2k
    wt[:, 2 * k - 1] = wt[:, 2 * k] = mask[:, k]
    u = np.arange(1, (h - 1) // 2 + 1)
    for col, v in [(0, 0)] + ([(w - 1, w // 2)] if w % 2 == 0 else []):
        wt[0, col] = mask[0, v]
        wt[2 * u - 1, col] = wt[2 * u, col] = 2 * mask[u, v]
        if h % 2 == 0:
            wt[h - 1, col] = mask[h // 2, v]
    return wt


@functools.lru_cache(maxsize=16)
def _window_and_weights(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hann window (h, w), and :func:`packed_weights` that sum an image's spectral power over all
    bins, and over the bins above half the Nyquist frequency."""
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    high = np.maximum(np.fft.rfftfreq(w)[None, :], np.abs(np.fft.fftfreq(h))[:, None]) > 0.25
    return win, packed_weights(np.ones(high.shape), w), packed_weights(high.astype(np.float32), w)


def _angle_deg(gx2: float, gy2: float, gxy: float) -> tuple[float, float]:
    """Dominant direction (deg, [0, 180)) and coherence of a structure tensor."""
    angle = 0.5 * np.degrees(np.arctan2(2 * gxy, gx2 - gy2)) % 180.0
    coherence = np.sqrt((gx2 - gy2) ** 2 + 4 * gxy ** 2) / max(gx2 + gy2, 1e-12)
    return float(angle), float(coherence)


def light_surface(low: np.ndarray) -> np.ndarray:
    """Least-squares surface ``bx u + by v + c + d r^2`` (4,) over a (32, 32) array, with u, v the
    columns' and rows' centres in image widths from the middle (r^2 = u^2 + v^2, 0.5 at the corners)."""
    return _SURFACE_PINV @ np.asarray(low, np.float64).ravel()


@register
def lighting(img: np.ndarray) -> dict[str, float]:
    g = _grey(img)
    hist = _histogram(img)
    p = _percentiles(hist, [5, 50, 95])
    low = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA)
    bx, by, centre, radial = light_surface(low)
    rgb = np.array(cv2.mean(img)[:3])
    total = float(rgb.sum())
    chroma = rgb / total - 1 / 3 if total > 1e-6 else np.zeros(3)
    grad = float(np.hypot(bx, by))
    direction = float(np.degrees(np.arctan2(by, bx)) % 360) if grad > 1e-6 else 0.0
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(g))
    return {"brightness": mean, "brightness_p05": float(p[0]), "brightness_p50": float(p[1]),
            "brightness_p95": float(p[2]), "contrast": std,
            "shadows_clipped": float(hist[:3].sum() / g.size), "highlights_clipped": float(hist[253:].sum() / g.size),
            "illum_gradient": grad, "illum_direction": direction,
            "vignetting": float(-0.5 * radial / centre) if centre > 1e-3 else 0.0,  # corners: r^2 = 0.5
            "colour_cast": float(np.linalg.norm(chroma))}


OPTICS_FIELDS = ("aspect", "sharpness", "hf_ratio", "blur_anisotropy", "blur_direction", "blockiness", "noise",
                 "repeats")


@register(on_crop=True)
def optics(img: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in optics_parts(img):
        out.update(part)
    return {k: out[k] for k in OPTICS_FIELDS}


def optics_parts(img: np.ndarray) -> Iterator[dict[str, float]]:
    """:func:`optics` of an RGB image a few fields at a time, the cheapest first, so that a search
    over candidates can stop measuring one as soon as it cannot win (merged, the parts are
    :func:`optics`): pixel statistics, then sharpness, high-frequency energy, blur direction."""
    g = _grey(img)
    h, w = g.shape
    yield {"aspect": w / h, "repeats": _repeats(g), "noise": noise_sigma(g), "blockiness": _blockiness(g)}
    n = g / max(float(cv2.meanStdDev(g)[1][0, 0]), 1e-3)  # contrast-normalised: sharpness is not brightness
    yield {"sharpness": float(cv2.Laplacian(n, cv2.CV_32F).var())}
    win, every, high = _window_and_weights(h, w)  # the window removes the wrap-around edges
    packed = cv2.dft((n - np.float32(n.mean(dtype=np.float64))) * win)  # 6x faster than complex output
    packed *= packed
    yield {"hf_ratio": float((packed * high).sum(dtype=np.float64) / max((packed * every).sum(dtype=np.float64),
                                                                         1e-12))}
    yield _blur(n)


def _blur(n: np.ndarray) -> dict[str, float]:
    """Blur anisotropy and direction of a contrast-normalised grey image.

    Blur removes fine gradients along its direction; the scene's own orientation is present at
    all scales: the fine-scale structure tensor is whitened by the coarse-scale one. The blur runs
    along the gradient direction that lost most fine energy against its coarse energy (the
    generalised eigenvector of the two tensors with the smallest eigenvalue): the fine tensor's
    weakest direction alone follows the scene's own edges (motion across stripes read as the
    stripes' direction, and on NEU steel 10% of the images were 48 or more degrees off, 7 now)."""
    t_fine, t_coarse = _tensor(n), _tensor(cv2.GaussianBlur(n, (0, 0), 2.0))
    t_coarse = t_coarse + 1e-3 * max(float(np.trace(t_coarse)), 1e-12) * np.eye(2)
    ev, evec = np.linalg.eigh(t_coarse)
    s = evec @ np.diag(ev ** -0.5) @ evec.T
    m = s @ t_fine @ s if np.trace(t_fine) > 0 else np.zeros((2, 2))
    _, coh = _angle_deg(float(m[0, 0]), float(m[1, 1]), float(m[0, 1]))
    lost = s @ np.linalg.eigh(m)[1][:, 0]  # whitened space's weakest direction, mapped back
    return {"blur_anisotropy": coh, "blur_direction": float(np.degrees(np.arctan2(lost[1], lost[0])) % 180)}


def _tensor(n: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(n, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(n, cv2.CV_32F, 0, 1)
    gxy = float((gx * gy).mean())
    return np.array([[float((gx * gx).mean()), gxy], [gxy, float((gy * gy).mean())]])


def _repeats(g: np.ndarray) -> float:
    """Share of horizontally and vertically adjacent pixels with equal values."""
    pairs = g[:, 1:].size + g[1:].size
    return float(((g[:, 1:] == g[:, :-1]).sum() + (g[1:] == g[:-1]).sum()) / pairs) if pairs else 0.0


def _blockiness(g: np.ndarray) -> float:
    """Mean jump across 8-pixel column/row boundaries over the mean jump elsewhere."""
    h, w = g.shape
    ratios = []
    for d in (cv2.reduce(cv2.absdiff(g[:, 1:], g[:, :-1]), 0, cv2.REDUCE_AVG).ravel() if w > 1 else [],  # columns
              cv2.reduce(cv2.absdiff(g[1:], g[:-1]), 1, cv2.REDUCE_AVG).ravel() if h > 1 else []):  # rows
        d = np.asarray(d, np.float32)
        on = d[7::8]
        n_off = len(d) - len(on)
        off = (d.sum(dtype=np.float64) - on.sum(dtype=np.float64)) / max(n_off, 1)
        if len(on) and n_off and off > 1e-6:
            ratios.append(on.mean(dtype=np.float64) / off)
    return float(np.mean(ratios)) if ratios else 1.0


def noise_sigma(g: np.ndarray) -> float:
    """Noise sigma of a float32 (H, W) image, in its units: Immerkaer's fast estimate (a
    Laplacian-difference kernel blind to edges' first order)."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = cv2.filter2D(g, cv2.CV_32F, k)[1:-1, 1:-1]
    h, w = r.shape
    return float(np.sqrt(np.pi / 2) * np.abs(r).sum() / (6 * max(h * w, 1)))


@register
def geometry(img: np.ndarray) -> dict[str, float]:
    g = cv2.GaussianBlur(_grey(img), (0, 0), 1.0)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
    ang, coh = _angle_deg(float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean()))
    return {"orientation": ang, "orientation_coherence": coh}


@register
def pipeline(img: np.ndarray) -> dict[str, float]:
    r, _, b, _ = cv2.mean(img)
    saturation = cv2.mean(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))[1]
    lo, hi = _percentiles(_histogram(img), [0.5, 99.5])
    return {"rb_balance": (r - b) / 255.0, "saturation": saturation / 255.0, "dynamic_range": float(hi - lo)}


def centre_crop(img: np.ndarray, side: int = CROP_SIDE) -> np.ndarray:
    """The centre ``side`` x ``side`` pixels of ``img`` (a view; all of it along a shorter side).

    The offset is a multiple of 8, so that the crop keeps the image's JPEG block grid
    (``blockiness`` looks for jumps every 8 pixels from the crop's corner)."""
    top, left = crop_origin(*img.shape[:2], side)
    return img[top:top + side, left:left + side]


def crop_origin(h: int, w: int, side: int = CROP_SIDE) -> tuple[int, int]:
    """(top, left) of :func:`centre_crop` in an (h, w) image."""
    return max(0, (h - side) // 2) // 8 * 8, max(0, (w - side) // 2) // 8 * 8


def overview_size(h: int, w: int, side: int = OVERVIEW_SIDE) -> tuple[int, int]:
    """(h, w) of :func:`overview` for an (h, w) image."""
    s = min(1.0, side / min(h, w))
    return (max(1, round(h * s)), max(1, round(w * s))) if s < 1 else (h, w)


def overview(img: np.ndarray, side: int = OVERVIEW_SIDE) -> np.ndarray:
    """``img`` area-averaged to a shorter side of ``side`` pixels (``img`` itself when not larger)."""
    oh, ow = overview_size(*img.shape[:2], side)
    return img if (oh, ow) == img.shape[:2] else cv2.resize(img, (ow, oh), interpolation=cv2.INTER_AREA)


def measure(img: np.ndarray, resized: np.ndarray | None = None) -> dict[str, float]:
    """All registered measurements of an RGB uint8 image, one flat dict.

    Optics are measured on :func:`centre_crop` (the pixels themselves: resampling
    would change sharpness and noise), the rest on :func:`overview`; ``aspect``
    is always that of the full image. ``resized``: optionally, ``img`` already
    area-resized for a model; it serves as the overview where it is one (same
    size), which saves resizing twice.
    """
    h, w = img.shape[:2]
    same = resized is not None and resized.shape[:2] == overview_size(h, w)
    return measure_views(resized if same else overview(img), centre_crop(img), w / h)


def measure_views(small: np.ndarray, crop: np.ndarray, aspect: float) -> dict[str, float]:
    """:func:`measure` from an image's two views: ``small`` its overview, ``crop`` its
    full-resolution centre crop (for images made at two scales, as attribution does)."""
    out: dict[str, float] = {}
    for name, fn in MEASURES.items():
        out.update(fn(crop if name in ON_CROP else small))
    out["aspect"] = aspect
    return out
