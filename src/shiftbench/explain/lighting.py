"""Lighting interventions: give an image another image's lighting (:func:`relight_like`), or only
its smooth light field (:func:`refield_like`) or its exposure (:func:`match_exposure`). Pure
functions of :class:`~.views.Views`, OpenCV and numpy; see :mod:`.interventions` for what an
intervention is and why it works at two scales.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..properties.measures import light_surface
from .views import Views, cached, each


def _illumination_fit(img: np.ndarray) -> np.ndarray:
    """Coefficients (3,) of a plane fitted to the 32x32 luma (+1) of ``img``.

    A plane, not a curved surface: on a part in the middle of the frame a quadratic's
    curvature fits the part itself (a bright centre), and moving that to another image
    paints a dark vignette around it and burns out its centre (rendered parts on a belt:
    gamma-brightened images relit back explained 0% of their distance, 90% with a plane).
    """
    low = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, 32), np.linspace(-0.5, 0.5, 32))
    basis = np.stack([np.ones_like(u), u, v], -1).reshape(-1, 3)
    coef, *_ = np.linalg.lstsq(basis, low.reshape(-1).astype(np.float64) + 1.0, rcond=None)
    return coef


def _surface(coef: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The plane at columns ``u`` (1, W) and rows ``v`` (H, 1), in image widths from the centre."""
    return np.maximum(coef[0] + coef[1] * u + coef[2] * v, 1.0)  # broadcast to (H, W)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-0.5, 0.5, w)[None, :], np.linspace(-0.5, 0.5, h)[:, None]


def _illumination(img: np.ndarray, coef: np.ndarray | None = None) -> np.ndarray:
    """Smooth illumination field (H, W) float32 with mean 1: a plane fitted to 32x32 luma
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


RADIAL_MIN = 0.3  # |d| of exp(d r^2) below which two images' radial falloffs count as alike (0.14 at the corners)


def _log_luma(img: np.ndarray) -> np.ndarray:
    low = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    return np.log(low + 4.0)


def _falloff_between(img: np.ndarray, ref_log: np.ndarray) -> float:
    """``d`` such that the reference's light falls off from the centre like ``img``'s times exp(d r^2)
    (r^2 = 0.5 at the corners): the radial term of log(ref / img) on their 32x32 lumas, beside a plane
    (``ref_log``: :func:`_log_luma` of the reference)."""
    return float(light_surface(ref_log - _log_luma(img))[3])


def _radial(d: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.exp(d * (u * u + v * v)).astype(np.float32)


def relight_like(src: Views, ref: Views, cache: dict | None = None) -> Views:
    """``src`` under the lighting of ``ref``: its illumination field and (where they differ) its
    radial falloff, a vignette, then its histogram per channel.

    The field (a plane fitted to the luma) carries uneven light; histogram matching carries
    exposure, gamma, contrast and colour cast. The falloff is compared only once the tones
    match, as the radial term of the two images' log ratio: a part in the middle of the frame
    is a bright centre of its own, whose falloff a change of tone moves (a plane field alone:
    a quadratic one fitted to each image paints a vignette around a brightened part).
    All are estimated on the wholes and made on the crop alike. ``cache``: a dict kept across
    calls with the same ``ref`` (see :func:`.pose.warp_like`).
    """
    ref_fit = cached(cache, ("illumination fit",), lambda: _illumination_fit(ref.whole))
    field = cached(cache, ("illumination",), lambda: _illumination(ref.whole, ref_fit))
    sh, sw = src.whole.shape[:2]
    src_fit = _illumination_fit(src.whole)
    lit = _scaled(src.whole, cv2.resize(field, (sw, sh)) / _illumination(src.whole, src_fit))
    luts = _histogram_luts(lit, ref.whole)
    whole = _apply_luts(lit, luts)
    d = _falloff_between(whole, cached(cache, ("log luma",), lambda: _log_luma(ref.whole)))
    vignette = abs(d) > RADIAL_MIN
    if vignette:  # the falloff goes with the field, and the histogram is matched after both
        lit = _scaled(lit, _radial(d, *_grid(sh, sw)))
        luts = _histogram_luts(lit, ref.whole)
        whole = _apply_luts(lit, luts)
    if src.single:
        return Views(whole, whole, whole.shape[:2], whole)
    ratio = _crop_illumination(src, ref_fit) / _crop_illumination(src, src_fit)
    if vignette:  # over the crop's part of the frame
        (h, w), (left, top), (ch, cw) = src.shape, src.crop_offset(), src.crop.shape[:2]
        u, v = _grid(h, w)
        ratio = ratio * _radial(d, u[:, left:left + cw], v[top:top + ch])
    return Views(whole, _apply_luts(_scaled(src.crop, ratio), luts), src.shape)


def _log_field(fit: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """exp of a :func:`light_surface` fit (bx, by, c, d) of log luma, without its constant, at ``u``, ``v``."""
    return np.exp(fit[0] * u + fit[1] * v + fit[3] * (u * u + v * v))


def refield_like(src: Views, ref: Views) -> Views:
    """``src`` with the smooth light field of ``ref`` in place of its own, its tones otherwise kept.

    The field is the plane and radial falloff (a vignette) fitted to each whole's log luma; no
    histogram is matched, since a texture's histogram is its content's as much as its light's
    (a vignetted steel image relit to a neighbour's histogram came out further from training than
    it went in). Undoes uneven light; :func:`relight_like` imitates it.
    """
    fit = light_surface(_log_luma(ref.whole)) - light_surface(_log_luma(src.whole))
    field = _log_field(fit, *_grid(*src.whole.shape[:2]))
    mean = field.mean()  # the light is moved, not added: the whole keeps its mean
    whole = _scaled(src.whole, (field / mean).astype(np.float32))
    if src.single:
        return Views(whole, whole, whole.shape[:2], whole)
    u, v = _grid(*src.shape)
    (left, top), (ch, cw) = src.crop_offset(), src.crop.shape[:2]
    ratio = (_log_field(fit, u[:, left:left + cw], v[top:top + ch]) / mean).astype(np.float32)
    return Views(whole, _scaled(src.crop, ratio), src.shape)


def match_exposure(src: Views, ref: Views) -> Views:
    """``src`` with ``ref``'s mean and spread of grey levels: one gain and offset for all channels
    and both scales, estimated on the wholes (an exposure change, nothing local)."""
    g, r = cv2.cvtColor(src.whole, cv2.COLOR_RGB2GRAY), cv2.cvtColor(ref.whole, cv2.COLOR_RGB2GRAY)
    (m, s), (rm, rs) = (tuple(float(a[0, 0]) for a in cv2.meanStdDev(x)) for x in (g, r))
    gain = rs / max(s, 1e-3)
    return each(src, lambda a: np.clip(a * gain + (rm - gain * m), 0, 255).astype(np.uint8))
