"""Decode image bytes into RGB uint8 arrays, or say clearly why not.

Every odd input has one deliberate conversion, so that two images that look the
same to a person reach the model as the same array:

* grey (1 channel) is repeated into 3 channels;
* an alpha channel is dropped (colour kept as stored, not composited);
* 16-bit images are scaled by the full container range (``v / 257``). A 12-bit
  camera writing into 16-bit files therefore comes out dark: that is a real
  pipeline difference the scan should see, not something to normalise away;
* float images are taken as [0, 1] when their maximum is at most 1, else [0, 255];
* palette images are expanded by OpenCV;
* EXIF orientation is applied, so the array is the image as a viewer shows it.

Anything else (empty, truncated, not an image, too many pixels) raises
:class:`ImageError` with a one-line reason for the ``error`` column.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger inputs are refused, not decoded

# OpenCV's own logging (not libjpeg's, see _decode_jpeg) would repeat on stderr what the
# ``error`` column already says; keep the terminal clean.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
# Pillow warns about images above its own limit (89 MP); ``max_pixels`` (100 MP by default) is the limit here,
# so Pillow's is raised to it once. Not ``warnings.catch_warnings`` around each decode: it is not thread-safe
# and decoding runs in threads (its filters leaked into the caller's process); nor an ignore filter, which a
# caller's own "error" filter overrides (every 89-100 MP image then read as corrupt).
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, DEFAULT_MAX_PIXELS)


class ImageError(Exception):
    """An input file that cannot be used as an image; ``str(e)`` is the reason."""


def sniff_format(data: bytes) -> str | None:
    """Return ``'jpeg' | 'png' | 'bmp' | 'tiff' | 'webp'`` from the magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the first scan of the main image.

    Walks the header segments by their lengths (so an EXIF thumbnail's own
    markers are skipped), then looks for EOI after the start of scan. Data after
    EOI (phone "motion photos" append video) is allowed.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return True  # malformed header: not a truncation, let the decoder judge
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 1 if marker == 0xFF else 2  # fill byte or a marker without length
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return data.find(b"\xff\xd9", i + 2 + length) != -1
        i += 2 + length
    return False


def _check_complete(data: bytes, fmt: str) -> None:
    """Raise if the file visibly ends early (decoders often fill the rest with grey)."""
    if fmt == "jpeg" and not _jpeg_complete(data):
        raise ImageError("truncated JPEG (no end-of-image marker)")
    if fmt == "png" and b"IEND" not in data:
        raise ImageError("truncated PNG (no IEND chunk)")
    if fmt == "webp" and len(data) < int.from_bytes(data[4:8], "little") + 8:
        raise ImageError("truncated WebP")
    if fmt == "bmp" and len(data) < int.from_bytes(data[2:6], "little"):
        raise ImageError("truncated BMP")


def _header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from the header, without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # malformed EXIF must not cost the image
                orientation = 1
            return w, h, orientation
    except Image.DecompressionBombError:
        raise ImageError(f"too large: over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels") from None
    except Exception:
        return None  # Pillow cannot parse it; let OpenCV try


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Convert an OpenCV ``IMREAD_UNCHANGED`` array (BGR order) to RGB uint8 (H, W, 3)."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = ((img.astype(np.float32) + 128.0) / 257.0).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.nan_to_num(img.astype(np.float32))
        scale = 255.0 if img.max(initial=0.0) <= 1.0 else 1.0
        img = np.clip(img * scale + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageError(f"unsupported channel count {img.shape[2]}")


def apply_exif_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip ``img`` (H, W, C) as EXIF orientation 1-8 prescribes."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.transpose(1, 0, 2)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(img.transpose(1, 0, 2), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, thumbnail: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array.

    Parameters
    ----------
    data : bytes
        The file's content.
    max_pixels : int
        Refuse images with more pixels than this (width * height).
    thumbnail : int, optional
        For a small picture only: a JPEG is decoded at the largest of libjpeg's reductions (1/2,
        1/4, 1/8) that keeps its longer side at least twice this (a 12 MP JPEG: 24 instead of 171 ms).

    Returns
    -------
    np.ndarray
        (H, W, 3) uint8, RGB, contiguous.

    Raises
    ------
    ImageError
        With a one-line reason when the bytes are not a usable image.
    """
    if not data:
        raise ImageError("empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("not an image (unknown file signature)")
    _check_complete(data, fmt)
    header = _header(data)
    orientation = 1
    if header is not None:
        w, h, orientation = header
        if w * h > max_pixels:
            raise ImageError(f"too large: {w}x{h} pixels (limit {max_pixels})")
        if w == 0 or h == 0:
            raise ImageError("zero-sized image")
    if fmt == "jpeg":
        reduce = 1
        if thumbnail and header is not None:  # (EXIF is applied below, as for a full decode)
            reduce = next((r for r in (8, 4, 2) if max(header[:2]) / r >= 2 * thumbnail), 1)
        img = _decode_jpeg(data, reduce)
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        img = None if img is None or img.size == 0 else to_rgb8(img)
    if img is None:
        raise ImageError(f"cannot decode {fmt.upper()} data (corrupt or unsupported)")
    if header is None and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"too large: {img.shape[1]}x{img.shape[0]} pixels (limit {max_pixels})")
    return np.ascontiguousarray(apply_exif_orientation(img, orientation))


def _decode_jpeg(data: bytes, reduce: int) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) of a JPEG, at 1/``reduce`` of its size by libjpeg's DCT scaling; None if corrupt.

    Through Pillow rather than OpenCV: both decode with libjpeg-turbo to the same pixels (checked bit
    for bit on the NEU and X-SDD images, whole and reduced), but OpenCV lets libjpeg print its warnings
    ("Corrupt JPEG data: 2 extraneous bytes before marker 0xd9") straight onto stderr from C, where
    no Python code can catch them, while Pillow keeps them quiet.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if reduce > 1:
                im.draft("RGB", (im.width // reduce, im.height // reduce))
            img = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        return None
    return img if img.size else None


def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one image file; see :func:`decode_image`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror}") from None
    return decode_image(data, max_pixels)
