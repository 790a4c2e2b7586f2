"""Synthetic factory line: machined parts on a conveyor, rendered under recorded conditions.

    python datasets/factory.py OUT_DIR [--seed 0] [--n-train 80] [--n-prod 60] [--size 128]
    python -m shiftbench.datasets.factory OUT_DIR ...

(The generator lives in the package so that ``shiftbench demo`` finds it when
installed; ``datasets/factory.py`` is its command-line entry in the repository.)

writes

* ``OUT_DIR/train/<class>/*.png``: the lab set, ``--n-train`` images per class under
  nominal conditions (small jitter, so the set is not degenerate);
* ``OUT_DIR/prod/<station>/*.png``: ``--n-prod`` images per station, opaque file names;
  ``station1`` is fine, ``station2`` has drifted lighting (darker, light from one side,
  warm cast), ``station3`` a turned and tilted camera, ``station4`` a lower-resolution,
  softer sensor;
* ``OUT_DIR/prod_truth.csv``: ``file,family,variant,params,source_file,label`` (``file``
  relative to ``prod/``, ``params`` the image's conditions as JSON, ``source_file`` empty);
* ``OUT_DIR/conditions.csv``: every image's full conditions, train and prod.

Classes are the state of the part: ``ok``, ``scratch``, ``dent``, ``crack``. The part
(round flange or rectangular plate, brushed metal, holes, bevelled edges) is drawn in a
world frame, then a camera (pose), the light and the sensor turn it into an RGB image,
each controlled by a :class:`Conditions` field. Pure numpy + OpenCV; the same seed gives
the same files. Nothing is downloaded.
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

CLASSES = ("ok", "scratch", "dent", "crack")
LIGHT = np.array([-0.6, -0.8], np.float32)  # key light from the upper left of the world (x, y)


@dataclass
class Conditions:
    """Everything between the part and the pixels. Defaults are the ideal lab.

    Attributes
    ----------
    gain, gamma : float
        Exposure (multiplies radiance) and tone curve (``out = in ** gamma``; >1 darkens mid-tones).
    gradient, gradient_deg : float
        Illumination falloff across the frame: radiance is scaled by ``1 + gradient * t``, t in
        [-1, 1] along the direction ``gradient_deg`` (0 = brighter to the right, 90 = brighter down).
    color_temp : float
        -1 cool (blue) .. +1 warm (orange) cast; 0 neutral.
    rotation_deg, tilt, tilt_deg, scale, shift_x, shift_y : float
        Camera pose: in-plane rotation (degrees, the image turns counter-clockwise), perspective
        tilt (keystone: the far side shrinks by ``1 - tilt``; 0.15 is about a 25 degree tilt with a
        normal lens) towards ``tilt_deg`` (0 = right side farther), zoom (>1 closer) and translation
        (fraction of the image side; the part moves the other way). Keep tilt <= 0.25 and scale
        >= 0.8: beyond, the tiled belt can show a neighbouring part.
    resolution, blur, noise : float
        Sensor: sampling factor (0.4 = the scene is sampled at 40% of the output size, then
        upscaled), optical blur sigma (output pixels), read noise sigma (grey levels, at sensor
        resolution).
    jpeg : int
        JPEG quality of the camera's encoder; 0 = lossless.
    """

    gain: float = 1.0
    gamma: float = 1.0
    gradient: float = 0.0
    gradient_deg: float = 0.0
    color_temp: float = 0.0
    rotation_deg: float = 0.0
    tilt: float = 0.0
    tilt_deg: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    resolution: float = 1.0
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int = 0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 4)  # rounded so the CSV/JSON round-trips exactly


def nominal(rng: np.random.Generator) -> Conditions:
    """Lab conditions with the small day-to-day jitter of a real lab set-up."""
    return Conditions(gain=_u(rng, 0.92, 1.08), gamma=_u(rng, 0.95, 1.05), gradient=_u(rng, 0, 0.08),
                      gradient_deg=_u(rng, 0, 360), color_temp=_u(rng, -0.05, 0.05),
                      rotation_deg=_u(rng, -3, 3), tilt=_u(rng, 0, 0.03), tilt_deg=_u(rng, 0, 360),
                      scale=_u(rng, 0.97, 1.03), shift_x=_u(rng, -0.03, 0.03), shift_y=_u(rng, -0.03, 0.03),
                      resolution=1.0, blur=_u(rng, 0, 0.3), noise=_u(rng, 1.5, 3.0))


def _lighting(rng):  # a lamp failed on one side: darker, lopsided, warmer (older bulbs)
    return dataclasses.replace(nominal(rng), gain=_u(rng, 0.35, 0.5), gamma=_u(rng, 1.15, 1.35),
                               gradient=_u(rng, 0.5, 0.75), gradient_deg=_u(rng, -20, 20),
                               color_temp=_u(rng, 0.2, 0.4))


def _angle(rng):  # the camera bracket was knocked: turned, tilted, a bit closer
    return dataclasses.replace(nominal(rng), rotation_deg=_u(rng, 15, 30) * float(rng.choice([-1, 1])),
                               tilt=_u(rng, 0.08, 0.15), tilt_deg=_u(rng, 0, 360), scale=_u(rng, 1.0, 1.15))


def _resolution(rng):  # a cheaper camera: fewer pixels, softer lens
    return dataclasses.replace(nominal(rng), resolution=_u(rng, 0.3, 0.5), blur=_u(rng, 0.8, 1.2))


# station -> (family, variant, conditions sampler); names are neutral so folders do not leak truth
STATIONS: dict[str, tuple[str, str, Callable[[np.random.Generator], Conditions]]] = {
    "station1": ("none", "none", nominal),
    "station2": ("lighting", "dim_side_light", _lighting),
    "station3": ("angle", "rotated_tilted", _angle),
    "station4": ("resolution", "low_res_blur", _resolution),
}


@functools.lru_cache(maxsize=4)
def _belt(n: int) -> np.ndarray:
    """The belt's rubber grain: one belt for every image (each sees it moved by a random offset)."""
    return 0.16 + 0.02 * np.random.default_rng(2024).standard_normal((n, n), dtype=np.float32)


def _streaks(rng, n: int, length: float, deg: float) -> np.ndarray:
    """Unit-variance brushed texture: noise smeared along one direction (the tool path), ``length`` px.

    Drawn at 1/4 resolution along the streaks and stretched: a long blur at full size costs 4x more.
    """
    g = cv2.GaussianBlur(rng.standard_normal((n, n // 4), dtype=np.float32), (0, 0), length / 4, sigmaY=0.6)
    g = cv2.resize(g, (n, n), interpolation=cv2.INTER_LINEAR)
    g = cv2.warpAffine(g, cv2.getRotationMatrix2D((n / 2, n / 2), deg, 1.0), (n, n),
                       borderMode=cv2.BORDER_REFLECT)
    return g / (g.std() + 1e-6)


def _grad(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of ``img`` smoothed by ``sigma``."""
    b = cv2.GaussianBlur(img, (0, 0), sigma)
    return cv2.Sobel(b, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(b, cv2.CV_32F, 0, 1, ksize=3)


def _pt(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _defect(cls: str, rng, m: np.ndarray, r: float, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``cls`` on the part (coverage ``m``): (additive radiance change, height change), masked by ``m``."""
    w = m.shape[0]
    add, height = np.zeros((w, w), np.float32), np.zeros((w, w), np.float32)
    if cls == "ok":
        return add, height
    solid = (m > 0.5).astype(np.uint8)
    core = cv2.erode(solid, np.ones((5, 5), np.uint8))
    inside = np.argwhere(core if core.any() else solid)[:, ::-1]  # (x, y) well on the metal
    if cls == "scratch":  # long shallow groove: dark core, bright lip where it catches the light
        for _ in range(int(rng.integers(1, 3))):
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * r * rng.uniform(0.4, 0.8)
            p0 = inside[rng.integers(len(inside))].astype(np.float64)
            bend = np.array([-d[1], d[0]]) * rng.uniform(-0.15, 0.15)
            pts = np.array([p0 - d, p0 + bend, p0 + d]).round().astype(np.int32)
            cv2.polylines(add, [pts], False, -0.35, 2 * t, cv2.LINE_AA)
            cv2.polylines(add, [pts + np.int32([2, 2]) * t], False, 0.3, t, cv2.LINE_AA)
    elif cls == "dent":  # round depression: relief shading gives a dark and a bright crescent
        for _ in range(int(rng.integers(1, 3))):
            p, rad = inside[rng.integers(len(inside))], r * rng.uniform(0.12, 0.2)
            cv2.circle(height, _pt(p), int(rad), -1.0, -1, cv2.LINE_AA)
            cv2.circle(add, _pt(p), int(rad * 0.6), -0.08, -1, cv2.LINE_AA)
        height = cv2.GaussianBlur(height, (0, 0), r * 0.06) * 3.0
    elif cls == "crack":  # jagged dark line from an edge or a hole (where stress concentrates), branching
        edge = np.argwhere(solid - cv2.erode(solid, np.ones((3, 3), np.uint8)))[:, ::-1]
        gx, gy = _grad(m, 2.0 * t)  # points into the metal
        for b in range(int(rng.integers(1, 3))):  # trunk, maybe a branch from its middle
            for _ in range(8):  # a start whose walk stays on the metal long enough to be seen
                if b == 0:
                    p = edge[rng.integers(len(edge))].astype(np.float64)
                    h = np.arctan2(gy[int(p[1]), int(p[0])], gx[int(p[1]), int(p[0])])
                else:
                    p, h = trunk[len(trunk) // 2], trunk_h + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
                pts = [p]
                for _ in range(int(rng.integers(14, 24)) // (b + 1)):
                    h += rng.normal(0, 0.4)
                    p = p + r * 0.05 * np.array([np.cos(h), np.sin(h)])
                    if not (0 <= p[0] < w and 0 <= p[1] < w) or m[int(p[1]), int(p[0])] < 0.5:
                        break  # ran across to another edge: the crack stops there
                    pts.append(p)
                if len(pts) >= 10 // (b + 1):
                    break
            if b == 0:
                trunk, trunk_h = pts, h
            cv2.polylines(add, [np.array(pts).round().astype(np.int32)], False, -0.55, (2 - b) * t, cv2.LINE_AA)
    return add * m, height * m


def scene(cls: str, rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The world as the camera would see it under ideal light: a part of class ``cls`` on a belt.

    Returns
    -------
    radiance : ndarray, float32, (n, n, 3), n = 1.75 * size
        Linear RGB, 0 to about 1 (highlights may exceed 1: the sensor clips, not the world).
        Larger than the image, so a turned or tilted camera stays on the belt (which tiles, see
        :class:`Conditions`); the part sits at the centre, at the image's scale.
    defect : ndarray, bool, (n, n)
        Pixels the defect changed (empty for ``ok``).

    The part is drawn from ``rng`` before the defect, so the same ``rng`` state gives the same
    part for every class.
    """
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")
    n, k = int(round(size * 1.75)), size / 128
    t, w = max(1, int(round(k))), 2 * int(0.56 * size + 2)  # line width; side of the crop holding the part
    # conveyor: dark rubber with transverse cleats: long straight edges for the camera pose to turn.
    # Soft profiles (groove, then a lit lip) so a tilted camera does not alias them into moire
    period = n / max(1, round(n / (16 * k)))  # divides n: the belt tiles, the camera sees it wrap
    d = (np.arange(n, dtype=np.float32) + rng.uniform(0, period)) % period
    d = np.minimum(d, period - d)
    profile = -0.07 * np.exp(-(d / (1.3 * k)) ** 2) + 0.04 * np.exp(-((d - 3 * k) / (1.0 * k)) ** 2)
    belt = np.roll(_belt(n), tuple(int(v) for v in rng.integers(0, n, 2)), (0, 1))
    belt += profile[:, None]
    # the part, drawn in a (w, w) crop around it: the metal work is the costly part of a render
    c = np.array([w / 2, w / 2]) + rng.uniform(-4, 4, 2) * k
    r = size * rng.uniform(0.3, 0.35)
    deg = rng.uniform(-8, 8)  # guides keep parts roughly square to the belt
    solid, holes = np.zeros((w, w), np.uint8), []
    if rng.random() < 0.5:  # turned flange: outer disc, bore, bolt circle
        cv2.circle(solid, _pt(c * 16), int(r * 16), 255, -1, cv2.LINE_AA, 4)
        holes.append((c, r * rng.uniform(0.25, 0.32)))
        nb, off = int(rng.integers(4, 7)), np.deg2rad(deg)
        holes += [(c + 0.68 * r * np.array([np.cos(off + 2 * np.pi * j / nb), np.sin(off + 2 * np.pi * j / nb)]),
                   r * 0.09) for j in range(nb)]
    else:  # milled plate with corner holes and a centre bore
        hw, hh = r * 1.1, r * rng.uniform(0.65, 0.8)
        box = cv2.boxPoints(((c[0], c[1]), (2 * hw, 2 * hh), deg))
        cv2.fillConvexPoly(solid, np.int32(box * 16), 255, cv2.LINE_AA, 4)
        rot = cv2.getRotationMatrix2D((0, 0), -deg, 1.0)[:, :2]
        holes += [(c + rot @ np.array([sx * hw * 0.75, sy * hh * 0.65]), r * 0.1)
                  for sx in (-1, 1) for sy in (-1, 1)]
        holes.append((c, r * rng.uniform(0.15, 0.22)))
    for hc, hr in holes:
        cv2.circle(solid, _pt(hc * 16), int(hr * 16), 0, -1, cv2.LINE_AA, 4)
    m = solid.astype(np.float32) / 255  # anti-aliased coverage
    metal = 0.55 + 0.04 * _streaks(rng, w, 8 * k, deg + rng.uniform(-10, 10)) \
        + 0.015 * rng.standard_normal((w, w), dtype=np.float32)
    ax = np.arange(w, dtype=np.float32)  # broad specular highlight (separable): the part is not flat-lit
    hx, hy = c + rng.uniform(-r, r, 2) / 2
    metal += 0.12 * np.outer(np.exp(-(ax - hy) ** 2 / (0.72 * r * r)), np.exp(-(ax - hx) ** 2 / (0.72 * r * r)))
    add, height = _defect(cls, rng, m, r, t)
    gx, gy = _grad(m + height, 1.5 * k)  # relief shading: bevelled edges and dents lit from LIGHT
    metal += add - 0.35 * (gx * LIGHT[0] + gy * LIGHT[1])
    shadow = cv2.GaussianBlur(np.roll(m, (int(3 * k), int(3 * k)), (0, 1)), (0, 0), 2.5 * k)
    o = (n - w) // 2
    view = belt[o:o + w, o:o + w]
    view[:] = m * metal + (1 - m) * view * (1 - 0.5 * shadow)
    defect = np.zeros((n, n), bool)
    defect[o:o + w, o:o + w] = (np.abs(add) > 0.02) | (np.abs(height) > 0.02)
    # colour: faintly blue steel on a green-grey belt, so a colour cast has something to act on
    rgb = cv2.transform(belt, np.float32([[0.9], [1.05], [0.95]]))
    rgb[o:o + w, o:o + w] += cv2.transform(belt[o:o + w, o:o + w] * m, np.float32([[0.08], [-0.05], [0.08]]))
    return rgb, defect


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to [-1, 1], (x, y)."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) - size / 2) / (size / 2)
    return xx, yy


def capture(radiance: np.ndarray, cond: Conditions, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Photograph a :func:`scene` under ``cond``: camera pose, light, sensor. Returns RGB uint8."""
    n, half = radiance.shape[0], size / 2
    # image -> world homography: normalise, undo the tilt (keystone), rotate and zoom, into the world
    a, s, td = -np.deg2rad(cond.rotation_deg), cond.scale, np.deg2rad(cond.tilt_deg)
    to_norm = np.array([[1 / half, 0, -1], [0, 1 / half, -1], [0, 0, 1]])
    untilt = np.array([[1, 0, 0], [0, 1, 0], [-cond.tilt * np.cos(td), -cond.tilt * np.sin(td), 1]])
    rot = np.array([[np.cos(a) / s, np.sin(a) / s, 0], [-np.sin(a) / s, np.cos(a) / s, 0], [0, 0, 1]])
    cx, cy = n / 2 + cond.shift_x * size, n / 2 + cond.shift_y * size
    to_world = np.array([[half, 0, cx], [0, half, cy], [0, 0, 1]])
    img = cv2.warpPerspective(radiance, to_world @ rot @ untilt @ to_norm, (size, size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_WRAP)
    # light, in the image frame (the lamp is mounted with the camera)
    xx, yy = _grid(size)
    g = np.deg2rad(cond.gradient_deg)
    field = 255 * cond.gain * np.maximum(1 + cond.gradient * (np.cos(g) * xx + np.sin(g) * yy), 0.05)
    cast = np.float32([1 + 0.25 * cond.color_temp, 1.0, 1 - 0.25 * cond.color_temp])
    img *= field[..., None] * cast
    # sensor: lens blur, sampling at its own resolution (read noise lives there), then the camera's
    # pipeline: tone curve, upscale to the delivered size, optional JPEG
    if cond.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), cond.blur)
    m = max(8, int(round(size * cond.resolution)))
    if m != size:
        img = cv2.resize(img, (m, m), interpolation=cv2.INTER_AREA)
    if cond.noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cond.noise)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if cond.gamma != 1:
        img = cv2.LUT(img, (255 * (np.arange(256) / 255) ** cond.gamma + 0.5).astype(np.uint8))
    if m != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    if cond.jpeg:
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(cond.jpeg)])
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img


def render(cls: str, cond: Conditions, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One RGB uint8 ``(size, size, 3)`` image of a part of class ``cls`` under ``cond``."""
    return capture(scene(cls, rng, size)[0], cond, rng, size)


def _rng(seed: int, *key) -> np.random.Generator:
    """Independent stream per image, so any image can be re-rendered alone from (seed, split, i)."""
    return np.random.default_rng([seed, *(int(hashlib.blake2b(str(x).encode(), digest_size=4).hexdigest(), 16)
                                          for x in key)])


def make_factory(out_dir: str | Path, seed: int = 0, n_train: int = 80, n_per_station: int = 60,
                 size: int = 128) -> Path:
    """Write the lab and production sets described in the module docstring.

    Parameters
    ----------
    out_dir : str or Path
        Destination; its ``train/``, ``prod/`` and CSVs are replaced, nothing else is touched.
    seed : int
        Same seed, same files.
    n_train : int
        Lab images per class.
    n_per_station : int
        Production images per station (classes balanced, in turn).
    size : int
        Image side in pixels.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    for d in ("train", "prod"):
        shutil.rmtree(out / d, ignore_errors=True)
    rows, truth = [], []

    def put(rel: str, cls: str, cond: Conditions, rng, **extra) -> None:
        img = render(cls, cond, rng, size)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        rows.append({"file": rel, **extra, "label": cls, **dataclasses.asdict(cond)})

    for cls in CLASSES:
        for i in range(n_train):
            rng = _rng(seed, "train", cls, i)
            put(f"train/{cls}/{cls}_{i:04d}.png", cls, nominal(rng), rng, split="train", station="",
                family="none")
    for station, (family, variant, sample) in STATIONS.items():
        for i in range(n_per_station):
            rng, cls = _rng(seed, station, i), CLASSES[i % len(CLASSES)]
            cond = sample(rng)
            name = hashlib.blake2b(f"{seed}-{station}-{i}".encode(), digest_size=6).hexdigest() + ".png"
            put(f"prod/{station}/{name}", cls, cond, rng, split="prod", station=station, family=family)
            truth.append({"file": f"{station}/{name}", "family": family, "variant": variant,
                          "params": json.dumps(dataclasses.asdict(cond)), "source_file": "", "label": cls})
    pd.DataFrame(truth, columns=["file", "family", "variant", "params", "source_file", "label"]).to_csv(
        out / "prod_truth.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "conditions.csv", index=False)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=80, help="lab images per class")
    ap.add_argument("--n-prod", type=int, default=60, help="production images per station")
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args(argv)
    print(make_factory(a.out, a.seed, a.n_train, a.n_prod, a.size))


if __name__ == "__main__":
    main()
