"""An image at the two scales attribution works at (see :mod:`.interventions`), and helpers
the interventions share."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..properties.measures import centre_crop, crop_origin, overview_size

REFLECT = cv2.BORDER_REFLECT_101  # the border every warp and filter of attribution uses


@dataclass(frozen=True)
class Views:
    """An image as attribution works on it.

    ``whole``: the whole image at the working scale (the model's input scale; the
    image itself when it is not larger); ``crop``: its full-resolution centre crop
    (:func:`~shiftbench.properties.measures.centre_crop`); ``shape``: the
    full-resolution (h, w); ``image``: the full-resolution image itself (None for a
    counterfactual, which is only ever made at the two scales). For an image no
    larger than either, ``whole is crop``: one array, changed once.
    """

    whole: np.ndarray
    crop: np.ndarray
    shape: tuple[int, int]
    image: np.ndarray | None = None

    @property
    def single(self) -> bool:
        return self.whole is self.crop

    def to_whole(self) -> np.ndarray:
        """3x3 map from full-resolution pixels to ``whole``'s."""
        return resize_map(self.shape, self.whole.shape[:2])

    def overview(self) -> np.ndarray:
        """The whole at the size :func:`~shiftbench.properties.measures.overview` gives the
        full-resolution image (a squashed whole gets its proportions back)."""
        oh, ow = overview_size(*self.shape)
        if self.whole.shape[:2] == (oh, ow):
            return self.whole
        shrink = oh * ow < self.whole.shape[0] * self.whole.shape[1]
        return cv2.resize(self.whole, (ow, oh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def crop_offset(self) -> tuple[int, int]:
        """(left, top) of ``crop`` in full-resolution pixels (as :func:`centre_crop` places it)."""
        top, left = crop_origin(*self.shape)
        return left, top


def views(img: np.ndarray, size: tuple[int, int] | None = None) -> Views:
    """``img`` (H, W, 3) uint8 with its whole resized (area) to ``size`` = (h, w) where that
    is smaller on both sides (``None``: kept at full resolution)."""
    h, w = img.shape[:2]
    whole = img
    if size is not None and size[0] <= h and size[1] <= w and tuple(size) != (h, w):
        whole = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    crop = centre_crop(img)
    return Views(whole, img if whole is img and crop.shape == img.shape else crop, (h, w), img)


def each(v: Views, fn, shape: tuple[int, int] | None = None) -> Views:
    """A change ``fn`` made alike on both scales (once where they are one array); ``shape``:
    the full-resolution shape it gives (unchanged by default)."""
    if v.single:
        out = fn(v.whole)
        return Views(out, out, out.shape[:2], out)
    return Views(fn(v.whole), fn(v.crop), v.shape if shape is None else shape)


def resize_map(shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """3x3 map from the pixels of an (h, w) = ``shape`` image to those of its resize to
    ``size`` (h', w') (cv2.resize's pixel-centre mapping)."""
    sx, sy = size[1] / shape[1], size[0] / shape[0]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def cached(cache: dict | None, key: tuple, fn):
    """``fn()``, kept in ``cache`` under ``key``: a production image's own quantities are
    computed once for all of its neighbours (no memo without a cache)."""
    if cache is None:
        return fn()
    if key not in cache:
        cache[key] = fn()
    return cache[key]
