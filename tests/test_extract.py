"""Batch embedding: resizing, DataLoader workers, unreadable files, measurements."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import noise, odd_valid_corpus, run_isolated, save_torchscript, unreadable_corpus, write_files

from shiftbench.embedding import Preprocess, embed_files, load_backbone, resize_for_model
from shiftbench.embedding.extract import default_workers
from shiftbench.images import find_images, read_image


def mean_grey(img: np.ndarray) -> dict:
    """Module-level so that it pickles for spawned workers too."""
    return {"mean": float(img.mean()), "h": int(img.shape[0])}


def test_resize_squash():
    img = np.zeros((30, 90, 3), np.uint8)
    img[:, 45:] = 255  # right half white
    out = resize_for_model(img, Preprocess(size=32, resize="squash"))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[:, :15] == 0).all() and (out[:, 17:] == 255).all()  # aspect not kept: halves stay halves
    same = noise(32, 32)
    np.testing.assert_array_equal(resize_for_model(same, Preprocess(size=32)), same)


def test_resize_pad_centres_on_mean_colour():
    img = np.full((20, 40, 3), 255, np.uint8)
    pre = Preprocess(size=32, resize="pad", mean=(0.5, 0.25, 0.0))
    out = resize_for_model(img, pre)
    assert out.shape == (32, 32, 3)
    # 20x40 -> 16x32, centred: rows 8..23 are image, the rest mean colour
    assert (out[8:24] == 255).all()
    assert (out[:8] == [128, 64, 0]).all() and (out[24:] == [128, 64, 0]).all()


def test_resize_crop_keeps_centre():
    img = np.zeros((32, 96, 3), np.uint8)
    img[:, 32:64] = 200  # the centre third
    out = resize_for_model(img, Preprocess(size=32, resize="crop"))
    assert out.shape == (32, 32, 3)
    assert (out[:, 2:30] == 200).all()  # only the centre survives the crop


def test_default_workers():
    assert 1 <= default_workers() <= 8


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, synth):
    """12 synthetic prod images plus broken and odd files."""
    root = tmp_path_factory.mktemp("mixed")
    for p in sorted((synth / "prod").glob("*.png")):
        (root / p.name).write_bytes(p.read_bytes())
    write_files(root, unreadable_corpus())
    write_files(root, odd_valid_corpus())
    return root


def test_embed_files_rows_in_order_with_errors(lite0, mixed_folder):
    paths = find_images(mixed_folder)
    batches = list(embed_files(mixed_folder, paths, lite0, batch_size=5, num_workers=0))
    assert [len(b.index) for b in batches] == [5, 5, 5, 5, 1]
    index = np.concatenate([b.index for b in batches])
    assert index.tolist() == list(range(len(paths)))
    errors = dict(zip(paths, sum((b.error for b in batches), [])))
    feats = np.concatenate([b.features for b in batches])
    # a batch in which no image reached the model has no logits at all
    assert batches[-1].logits is None and paths[-1] == "truncated.png"
    logits = np.concatenate([b.logits for b in batches[:-1]] + [np.full((1, 1000), np.nan)])
    bad = set(unreadable_corpus())
    for i, p in enumerate(paths):
        if p in bad:
            assert errors[p] != "" and np.isnan(feats[i]).all() and np.isnan(logits[i]).all()
        else:
            assert errors[p] == "" and np.isfinite(feats[i]).all() and np.isfinite(logits[i]).all()
    widths = np.concatenate([b.width for b in batches])
    assert widths[paths.index("grey16.png")] == 50 and widths[paths.index("empty.jpg")] == 0
    shas = sum((b.sha for b in batches), [])
    assert shas[paths.index("empty.jpg")] != ""  # hashed even though not decodable
    assert len(set(shas)) == len(shas)


WORKER_SCRIPT = """
    import sys, numpy as np
    from shiftbench.embedding import load_backbone, embed_files
    from shiftbench.images import find_images
    from test_extract import mean_grey
    root, out, ts = sys.argv[1], sys.argv[2], sys.argv[3]
    bb = load_backbone(ts, device="cpu")
    paths = find_images(root)
    batches = list(embed_files(root, paths, bb, batch_size=4, num_workers=2, measure=mean_grey))
    np.savez(out, index=np.concatenate([b.index for b in batches]),
             features=np.concatenate([b.features for b in batches]),
             measures=np.array([repr(m) for b in batches for m in b.measures]),
             errors=np.array([e for b in batches for e in b.error]))
    print("ok")
"""


def test_workers_give_the_same_result(mixed_folder, tmp_path):
    """The DataLoader worker path (forked workers, measure run there) matches in-process decoding.

    Runs in a fresh process: this test process has used OpenCV's thread pool, and forking
    workers from such a process hangs (see test_workers_after_opencv_threads_do_not_hang).
    """
    out = tmp_path / "workers.npz"
    ts = save_torchscript(tmp_path / "tiny.ts")
    script = WORKER_SCRIPT.replace("sys.argv[1], sys.argv[2], sys.argv[3]",
                                   f"{str(mixed_folder)!r}, {str(out)!r}, {str(ts)!r}")
    res = run_isolated(script, timeout=150)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    paths = find_images(mixed_folder)
    tiny = load_backbone(str(ts), device="cpu")
    batches = list(embed_files(mixed_folder, paths, tiny, batch_size=4, num_workers=0, measure=mean_grey))
    with np.load(out) as z:
        assert z["index"].tolist() == list(range(len(paths)))
        np.testing.assert_allclose(z["features"], np.concatenate([b.features for b in batches]),
                                   rtol=1e-5, atol=1e-5, equal_nan=True)
        assert z["errors"].tolist() == [e for b in batches for e in b.error]
        measures = [eval(m) for m in z["measures"]]
    k = paths.index("clean_0000.png")
    assert measures[k] == mean_grey(read_image(mixed_folder / "clean_0000.png"))
    assert measures[paths.index("empty.jpg")] == {}
    assert measures == [m for b in batches for m in b.measures]


HANG_SCRIPT = """
    import signal, sys, time, cv2, numpy as np
    from conftest import save_torchscript
    from shiftbench.embedding import load_backbone, embed_files
    root, ts = sys.argv[1], sys.argv[2]
    bb = load_backbone(ts, device="cpu")
    # the parent uses OpenCV's thread pool (any cv2.resize of a large image does), and
    # its threads are idle when the DataLoader forks
    big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), np.uint8)
    for _ in range(3):
        cv2.GaussianBlur(big, (15, 15), 0)
    time.sleep(1.0)
    def on_alarm(*_):
        raise TimeoutError("DataLoader workers hung")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(8)
    try:
        n = sum(len(b.index) for b in embed_files(root, ["a.png", "b.png", "c.png", "d.png", "e.png"],
                                                    bb, batch_size=2, num_workers=1))
    except TimeoutError as e:
        print("HANG", e)
        sys.exit(3)
    print("ok", n)
"""


def test_workers_after_opencv_threads_do_not_hang(tmp_path):
    for name in "abcde":
        cv2.imwrite(str(tmp_path / f"{name}.png"), noise(64, 64))
    ts = save_torchscript(tmp_path / "tiny.ts")
    script = HANG_SCRIPT.replace("sys.argv[1], sys.argv[2]", f"{str(tmp_path)!r}, {str(ts)!r}")
    res = run_isolated(script, timeout=120)
    assert res.returncode == 0 and "ok 5" in res.stdout, (res.stdout + res.stderr)[-2000:]


def test_measure_failure_costs_columns_not_the_image(lite0, mixed_folder):
    def boom(img, resized=None):
        raise RuntimeError("no")
    (batch,) = list(embed_files(mixed_folder, ["clean_0000.png"], lite0, num_workers=0, measure=boom))
    assert batch.error == [""] and np.isfinite(batch.features).all()
    assert batch.measures == [{"measure_error": "RuntimeError: no"}]


def test_missing_file_is_a_row(lite0, tmp_path):
    (batch,) = list(embed_files(tmp_path, ["gone.png"], lite0, num_workers=0))
    assert batch.error[0].startswith("cannot read file") and batch.sha == [""]
    assert np.isnan(batch.features).all() and batch.logits is None  # no image reached the model

