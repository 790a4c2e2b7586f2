"""Decoding odd and broken image files, and finding images and their labels."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from conftest import jpeg_bytes, noise, odd_valid_corpus, pil_bytes, png_bytes, unreadable_corpus
from PIL import Image, ImageOps

from shiftbench.images import (ImageError, InputError, decode_image, find_images, labels_from_csv,
                               labels_from_folders, read_image)
from shiftbench.images.decode import sniff_format

# ------------------------------------------------------------------ broken files


@pytest.mark.parametrize("name, reason", [
    ("empty.jpg", "empty file"),
    ("truncated.jpg", "truncated JPEG"),
    ("truncated.png", "truncated PNG"),
    ("text.jpg", "not an image"),
])
def test_unreadable_inputs_raise_with_reason(name, reason):
    data = unreadable_corpus()[name]
    with pytest.raises(ImageError, match=reason) as e:
        decode_image(data)
    assert "\n" not in str(e.value)  # one line, for the error column


@pytest.mark.parametrize("ext, reason", [(".bmp", "truncated BMP"), (".webp", "truncated WebP")])
def test_truncated_bmp_and_webp(ext, reason):
    ok, buf = cv2.imencode(ext, noise(32, 48))
    assert ok
    data = buf.tobytes()
    assert decode_image(data).shape == (32, 48, 3)
    with pytest.raises(ImageError, match=reason):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_pixels_are_opencvs_whole_and_reduced(grey):
    """JPEGs go through Pillow (for its quiet libjpeg); the pixels must stay those OpenCV decodes."""
    arr = cv2.GaussianBlur(noise(320, 480), (0, 0), 2)
    data = jpeg_bytes(cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY) if grey else arr, quality=90)
    whole = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_image(data), whole)
    quarter = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
    np.testing.assert_array_equal(decode_image(data, thumbnail=60), cv2.cvtColor(quarter, cv2.COLOR_BGR2RGB))


def test_corrupt_jpeg_data_is_decoded_or_refused_without_writing_to_stderr(capfd):
    """libjpeg warns "Corrupt JPEG data: 216 extraneous bytes before marker 0xda" from C; through OpenCV
    it reached file descriptor 2, in the middle of the progress bar. The ``error`` column is the report."""
    jpg = jpeg_bytes(noise(64, 96))
    junk = bytes(np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8))
    with pytest.raises(ImageError, match="cannot decode JPEG"):
        decode_image(jpg[:20] + junk + jpg[220:])  # the quantisation tables overwritten
    assert decode_image(jpg[:300] + junk + jpg[500:]).shape == (64, 96, 3)  # part of the scan
    assert capfd.readouterr().err == ""


def test_jpeg_with_trailing_data_is_not_truncated():
    jpg = jpeg_bytes(noise(64, 96))
    data = jpg + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40  # 10 kB appended video-like data
    assert b"\xff\xd9" not in data[-4096:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None  # decoders accept it
    np.testing.assert_array_equal(decode_image(data), decode_image(jpg))


def test_read_image_missing_file(tmp_path):
    with pytest.raises(ImageError, match="cannot read file"):
        read_image(tmp_path / "nope.png")


def test_too_large_is_refused_before_decoding():
    data = png_bytes(noise(64, 80))
    assert decode_image(data, max_pixels=64 * 80).shape == (64, 80, 3)  # limit is inclusive
    with pytest.raises(ImageError, match=r"too large: 80x64 pixels \(limit 5119\)"):
        decode_image(data, max_pixels=64 * 80 - 1)


def test_sniff_format():
    assert sniff_format(png_bytes(noise(8, 8))) == "png"
    assert sniff_format(jpeg_bytes(noise(8, 8))) == "jpeg"
    assert sniff_format(b"II*\x00rest") == "tiff"
    assert sniff_format(b"MM\x00*rest") == "tiff"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"BM......") == "bmp"
    assert sniff_format(b"GIF89a") is None
    assert sniff_format(b"") is None


# ------------------------------------------------------------------ odd but valid files


def test_colour_png_is_rgb_not_bgr():
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 255  # red, in OpenCV's BGR order
    bgr[5:, :, 0] = 200  # bottom half: add blue
    out = decode_image(png_bytes(bgr))
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3) and out.flags.c_contiguous
    assert (out[:5] == [255, 0, 0]).all()
    assert (out[5:] == [255, 0, 200]).all()


def test_png_named_jpg_is_sniffed_by_content(tmp_path):
    arr = noise(40, 50, seed=1)
    p = tmp_path / "png_named.jpg"
    p.write_bytes(odd_valid_corpus()["png_named.jpg"])
    out = read_image(p)
    np.testing.assert_array_equal(out, arr[..., ::-1])  # lossless, so exact


def test_16bit_png_scaled_by_full_range():
    arr = np.array([[0, 257, 32896, 65535, 65280, 128]], np.uint16)
    out = decode_image(png_bytes(arr))
    assert out.shape == (1, 6, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255, 254, 0]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_colour_png_keeps_channel_order():
    bgr = np.zeros((4, 4, 3), np.uint16)
    bgr[..., 0] = 65535  # blue
    bgr[..., 2] = 32896  # half red
    out = decode_image(png_bytes(bgr))
    assert (out == [128, 0, 255]).all()


def test_grey_png_becomes_three_identical_channels():
    grey = noise(40, 50, seed=2)[..., 0].copy()
    out = decode_image(odd_valid_corpus()["grey.png"])
    assert out.shape == (40, 50, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_png_drops_alpha_keeps_colour():
    out = decode_image(odd_valid_corpus()["rgba.png"])
    assert out.shape == (40, 50, 3)
    # pure red everywhere, including fully transparent pixels (not composited)
    assert (out == [255, 0, 0]).all()


def test_palette_png_expanded():
    data = odd_valid_corpus()["palette.png"]
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    np.testing.assert_array_equal(out, ref)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 8


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # max <= 1: taken as [0, 1]
    ([0.0, 100.4, 300.0, -5.0], [0, 100, 255, 0]),  # else [0, 255], clipped
])
def test_float_tiff(values, expected):
    ok, buf = cv2.imencode(".tiff", np.array([values], np.float32))
    assert ok
    out = decode_image(buf.tobytes())
    assert out.shape == (1, len(values), 3)
    assert out[0, :, 0].tolist() == expected
    assert (out[..., 0] == out[..., 2]).all()


# ------------------------------------------------------------------ EXIF orientation


def _asymmetric(h: int = 32, w: int = 48) -> np.ndarray:
    """RGB image whose every flip/rotation is different: distinct coloured corner blocks."""
    img = np.full((h, w, 3), 128, np.uint8)
    img[:8, :8] = [255, 0, 0]
    img[:8, -8:] = [0, 255, 0]
    img[-8:, :8] = [0, 0, 255]
    img[-8:, -16:] = [255, 255, 0]
    return img


def _with_orientation(arr: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    return pil_bytes(Image.fromarray(arr), fmt, exif=exif, **kw)


def test_exif_orientation_6_rotates_jpeg():
    arr = _asymmetric()
    out = decode_image(_with_orientation(arr, 6, "JPEG"))
    assert out.shape == (48, 32, 3)  # portrait now
    # orientation 6: the stored image is shown rotated 90 degrees clockwise, so the
    # stored top-left (red) lands top-right and bottom-left (blue) lands top-left
    assert np.abs(out[2, -3].astype(int) - [255, 0, 0]).max() < 30
    assert np.abs(out[2, 2].astype(int) - [0, 0, 255]).max() < 30


@pytest.mark.parametrize("fmt, tol", [("PNG", 0), ("JPEG", 40)])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation, fmt, tol):
    data = _with_orientation(_asymmetric(), orientation, fmt)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB")))
    out = decode_image(data)
    assert out.shape == ref.shape
    assert out.shape[:2] == ((48, 32) if orientation >= 5 else (32, 48))
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= tol
    assert out.flags.c_contiguous


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_thumbnail_decodes_a_large_jpeg_reduced_and_turned_the_same(orientation):
    """thumbnail=64 decodes a 512x320 JPEG at 1/4 (longer side 128 >= 2 x 64): the full decode shrunk,
    EXIF orientation applied once; small JPEGs and other formats decode whole."""
    big = cv2.resize(_asymmetric(), (512, 320), interpolation=cv2.INTER_NEAREST)
    data = _with_orientation(big, orientation, "JPEG")
    full, small = decode_image(data), decode_image(data, thumbnail=64)
    assert small.shape[:2] == (full.shape[0] // 4, full.shape[1] // 4)
    shrunk = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - small.astype(int)).mean() < 4
    assert decode_image(data, thumbnail=200).shape == full.shape  # 512 / 2 < 2 x 200: no reduction
    png = _with_orientation(big, orientation, "PNG")
    assert decode_image(png, thumbnail=64).shape == decode_image(png).shape


def test_decoding_in_threads_leaves_the_warning_filters_alone():
    """Each decode used to enter ``warnings.catch_warnings``, which is not thread-safe: decoding in a
    thread pool left a filter behind in the caller's process."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor
    data = [jpeg_bytes(noise(64 + i, 48)) for i in range(16)] + [png_bytes(noise(40, 30 + i)) for i in range(16)]
    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(decode_image, data * 8))
    assert warnings.filters == before and all(im.ndim == 3 for im in images)


def test_malformed_orientation_ignored():
    exif = Image.Exif()
    exif[0x0112] = 99  # not 1..8: shown as stored
    data = pil_bytes(Image.fromarray(_asymmetric()), "PNG", exif=exif)
    np.testing.assert_array_equal(decode_image(data), _asymmetric())


# ------------------------------------------------------------------ discovery


def _touch(root, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_find_images_recursive_sorted_relative(tmp_path):
    for rel in ["b.Png", "A.JPG", "sub/défaut 1.png", "sub/deeper/c.jpeg", "z.TIFF", "w.webp", "m.bmp",
                ".hidden/x.png", "sub/.dot.png", ".top.jpg", "notes.txt", "noext", "sub/image.gif",
                "node/.cache/y.jpg"]:
        _touch(tmp_path, rel)
    found = find_images(tmp_path)
    assert found == sorted(["A.JPG", "b.Png", "m.bmp", "sub/deeper/c.jpeg", "sub/défaut 1.png", "w.webp",
                            "z.TIFF"])
    assert all("\\" not in p and not p.startswith("/") for p in found)


def test_find_images_follows_links_and_ends_cycles(tmp_path):
    """A class folder linked in from elsewhere is found; a folder reached twice is listed once; a
    link back to the root does not loop."""
    root = tmp_path / "root"
    _touch(root, "a.png")
    _touch(tmp_path, "outside/b.png")
    _touch(tmp_path, "outdir/c.png")
    try:
        os.symlink(tmp_path / "outside" / "b.png", root / "link.png")
        os.symlink(tmp_path / "outdir", root / "linkdir", target_is_directory=True)
        os.symlink(tmp_path / "outdir", root / "zz_again", target_is_directory=True)
        os.symlink(root, root / "loop", target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    assert find_images(root) == ["a.png", "link.png", "linkdir/c.png"]


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_gap(tmp_path, monkeypatch):
    """A class folder without read permission was left out silently: index and train lost a class."""
    for d in ("crack", "dent"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.png").write_bytes(b"x")
    real = os.scandir

    def scandir(path="."):  # (permissions cannot be tested as root, which ignores them)
        if os.path.basename(os.fspath(path)) == "crack":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match="cannot list the folder .*crack: Permission denied"):
        find_images(tmp_path)


def test_find_images_not_a_folder(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        find_images(tmp_path / "missing")
    _touch(tmp_path, "f.png")
    with pytest.raises(InputError, match="not a folder"):
        find_images(tmp_path / "f.png")


def test_labels_from_folders():
    assert labels_from_folders(["cat/a.png", "dog/x/b.png"]) == ["cat", "dog"]
    assert labels_from_folders(["cat/a.png", "b.png"]) is None  # not every image in a class folder
    assert labels_from_folders([]) is None


def test_labels_from_csv(tmp_path):
    csv_path = tmp_path / "labels.csv"
    # BOM (Excel), backslash separators, padding spaces
    csv_path.write_bytes("\ufeffpath,label\r\nsub\\a.png, cat \r\nb.png,dog\r\nunknown.png,x\r\n"
                         .encode("utf-8"))
    assert labels_from_csv(csv_path, ["sub/a.png", "b.png", "c.png"]) == ["cat", "dog", ""]


def test_labels_from_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,cat\n")
    with pytest.raises(InputError, match="needs columns path,label"):
        labels_from_csv(bad, ["a.png"])
    with pytest.raises(InputError, match="cannot read labels CSV"):
        labels_from_csv(tmp_path / "missing.csv", ["a.png"])
