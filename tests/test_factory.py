"""The synthetic factory generator (shiftbench.datasets.factory, CLI datasets/factory.py): determinism, layout, truth, and that
each condition moves what it claims to move. Tiny sizes: the whole file runs in a few seconds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from shiftbench.datasets import factory

FACTORY_PY = Path(__file__).resolve().parents[1] / "datasets" / "factory.py"

SIZE = 64
QUIET = factory.Conditions()  # ideal camera, no noise: two renders differ only where we changed something


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def grey(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)


def sharpness(img: np.ndarray) -> float:
    return float(cv2.Laplacian(grey(img), cv2.CV_32F).var())


def measured_turn(straight: np.ndarray, turned: np.ndarray) -> float:
    """The in-plane rotation (degrees, OpenCV's sign: counter-clockwise on screen) that best maps
    ``straight`` onto ``turned``, by search over whole degrees on the central disc."""
    a, b = grey(straight), grey(turned)
    n = a.shape[0]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    disc = np.hypot(xx, yy) < 0.45 * n
    errors = {d: np.abs(cv2.warpAffine(a, cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), d, 1.0), (n, n))
                        - b)[disc].mean() for d in range(-45, 46)}
    return float(min(errors, key=errors.get))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return factory.make_factory(tmp_path_factory.mktemp("factory"), seed=3, n_train=2, n_per_station=8, size=48)


# ------------------------------------------------------------------ render

def test_render_is_rgb_uint8_and_deterministic():
    cond = factory.nominal(rng(1))
    a = factory.render("scratch", cond, rng(7), size=SIZE)
    b = factory.render("scratch", cond, rng(7), size=SIZE)
    c = factory.render("scratch", cond, rng(8), size=SIZE)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError):
        factory.render("rust", cond, rng(), size=SIZE)


@pytest.mark.parametrize("cls", ["scratch", "dent", "crack"])
def test_defect_classes_change_the_same_part(cls):
    ok_scene, ok_mask = factory.scene("ok", rng(5), SIZE)
    scene, mask = factory.scene(cls, rng(5), SIZE)
    assert not ok_mask.any() and mask.sum() >= 10
    # same rng state -> same part; the only difference is the defect, and it is visible
    ok, bad = factory.capture(ok_scene, QUIET, rng(), SIZE), factory.capture(scene, QUIET, rng(), SIZE)
    diff = np.abs(ok.astype(np.int16) - bad.astype(np.int16)).max(axis=2)
    assert (diff > 25).sum() >= 8
    far = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    assert np.array_equal(ok_scene[far], scene[far])


def test_classes_are_not_told_apart_by_brightness():
    means = {c: np.mean([grey(factory.render(c, factory.nominal(r), r, SIZE)).mean()
                         for r in map(rng, range(12))]) for c in factory.CLASSES}
    assert max(means.values()) - min(means.values()) < 4  # lab gain jitter alone moves it ~8%


# ------------------------------------------------------------------ conditions

def test_lighting_conditions_move_brightness_colour_and_gradient():
    scene, _ = factory.scene("ok", rng(2), SIZE)
    shot = lambda **kw: factory.capture(scene, dataclasses.replace(QUIET, **kw), rng(), SIZE).astype(np.float32)
    base = shot()
    assert shot(gain=0.5).mean() < 0.6 * base.mean()
    assert shot(gamma=1.5).mean() < base.mean() < shot(gamma=0.7).mean()
    warm, cool = shot(color_temp=0.5), shot(color_temp=-0.5)
    ratio = lambda im: im[..., 0].mean() / im[..., 2].mean()
    assert ratio(warm) > 1.1 * ratio(base) > 1.2 * ratio(cool)
    side = shot(gradient=0.6, gradient_deg=0)  # brighter to the right
    h = SIZE // 2
    assert side[:, h:].mean() / side[:, :h].mean() > 1.5 * base[:, h:].mean() / base[:, :h].mean()


@pytest.mark.parametrize("deg", [-25.0, 12.0, 30.0])
def test_rotation_turns_the_image_by_the_recorded_angle(deg):
    for seed in range(3):
        scene, _ = factory.scene("ok", rng(seed), SIZE)
        straight = factory.capture(scene, QUIET, rng(), SIZE)
        turned = factory.capture(scene, dataclasses.replace(QUIET, rotation_deg=deg), rng(), SIZE)
        assert abs(measured_turn(straight, turned) - deg) <= 1


def test_zoom_tilt_and_shift_move_the_part():
    scene, _ = factory.scene("ok", rng(4), SIZE)
    metal = lambda **kw: grey(factory.capture(scene, dataclasses.replace(QUIET, **kw), rng(), SIZE)) > 100
    assert metal(scale=1.3).sum() > 1.4 * metal().sum()
    right = metal(shift_x=0.15)  # camera moves right: the part moves left in the image
    cols = np.arange(SIZE)
    assert (right.sum(0) * cols).sum() / right.sum() < (metal().sum(0) * cols).sum() / metal().sum() - 5
    lopsided = lambda im: im[:, :SIZE // 2].sum() / im[:, SIZE // 2:].sum()
    assert lopsided(metal(tilt=0.2, tilt_deg=0)) > 1.1 * lopsided(metal())  # right side farther: smaller


def test_sensor_conditions_remove_detail_and_add_noise():
    scene, _ = factory.scene("crack", rng(6), SIZE)
    shot = lambda **kw: factory.capture(scene, dataclasses.replace(QUIET, **kw), rng(), SIZE)
    base = sharpness(shot())
    assert sharpness(shot(resolution=0.4)) < 0.5 * base
    assert sharpness(shot(blur=1.5)) < 0.5 * base
    noise = shot(noise=8).astype(np.float32) - shot()  # sigma in grey levels, at sensor resolution
    assert 6.5 < noise.std() < 9.5
    assert not np.array_equal(shot(jpeg=20), shot())


# ------------------------------------------------------------------ dataset

def test_layout_counts_and_truth(made):
    for cls in factory.CLASSES:
        assert len(list((made / "train" / cls).glob("*.png"))) == 2
    stations = sorted(p.name for p in (made / "prod").iterdir())
    assert stations == sorted(factory.STATIONS)
    truth = pd.read_csv(made / "prod_truth.csv", keep_default_na=False)
    assert list(truth.columns) == ["file", "family", "variant", "params", "source_file", "label"]
    assert len(truth) == 8 * len(stations) and truth.file.is_unique
    assert set(truth.family) == {"none", "lighting", "angle", "resolution"}
    assert set(truth.label) == set(factory.CLASSES)
    for row in truth.itertuples():
        img = cv2.imread(str(made / "prod" / row.file))
        assert img.shape == (48, 48, 3)
        name = Path(row.file).name
        assert not any(w in name for w in ("none", "light", "angle", "res", row.label, row.variant))
        cond = factory.Conditions(**json.loads(row.params))  # params are the full conditions
        assert cond.resolution == 1.0 or row.family == "resolution"
    cond = pd.read_csv(made / "conditions.csv", keep_default_na=False)
    assert len(cond) == 2 * len(factory.CLASSES) + len(truth)
    assert {f.name for f in dataclasses.fields(factory.Conditions)} <= set(cond.columns)
    assert all((made / f).is_file() for f in cond.file)


def test_stations_drift_in_the_right_direction(made):
    truth = pd.read_csv(made / "prod_truth.csv", keep_default_na=False)
    imgs = {fam: [cv2.cvtColor(cv2.imread(str(made / "prod" / f)), cv2.COLOR_BGR2RGB) for f in g.file]
            for fam, g in truth.groupby("family")}
    params = {fam: pd.DataFrame([json.loads(p) for p in g.params]) for fam, g in truth.groupby("family")}
    bright = {fam: np.mean([grey(i).mean() for i in v]) for fam, v in imgs.items()}
    sharp = {fam: np.median([sharpness(i) for i in v]) for fam, v in imgs.items()}
    assert bright["lighting"] < 0.75 * bright["none"]
    assert sharp["resolution"] < 0.5 * sharp["none"]
    assert params["angle"].rotation_deg.abs().min() >= 15 and params["angle"].tilt.min() > 0.05
    assert params["none"].rotation_deg.abs().max() <= 3


def test_same_seed_same_files(made, tmp_path):
    again = factory.make_factory(tmp_path / "again", seed=3, n_train=2, n_per_station=8, size=48)
    other = factory.make_factory(tmp_path / "other", seed=4, n_train=2, n_per_station=8, size=48)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(made) == digest(again)
    assert digest(made) != digest(other)


def test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["factory.py", str(tmp_path / "cli"), "--n-train", "1", "--n-prod", "1",
                                      "--size", "32", "--seed", "1"])
    runpy.run_path(str(FACTORY_PY), run_name="__main__")
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert len(list((tmp_path / "cli").rglob("*.png"))) == len(factory.CLASSES) + len(factory.STATIONS)
