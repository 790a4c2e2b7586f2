"""Tiny procedural inspection images: steel-like texture with one defect each.

    python datasets/synthetic.py OUT_DIR [--train 60] [--prod 40] [--size 128] [--seed 0]

writes ``OUT_DIR/train/<class>/*.png`` (classes: scratch, spot, crack) and
``OUT_DIR/prod/`` holding unshifted images (``clean_*``) and shifted copies of
other renders: darker lighting (``dark_*``) and a rotated, zoomed camera
(``rotated_*``). ``OUT_DIR/prod_truth.csv`` records which is which. Nothing is
downloaded; the same seed gives the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

CLASSES = ("scratch", "spot", "crack")


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rolled-steel look: horizontal streaks over fine grain, mean grey ~130."""
    grain = rng.normal(0, 1, (size, size)).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 1.0)
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (size, 1)).astype(np.float32), (0, 0), 2.0)
    img = 130 + 18 * grain + 25 * np.repeat(streaks, size, axis=1)
    return img


def render(rng: np.random.Generator, cls: str, size: int = 128) -> np.ndarray:
    """One grey (size, size) uint8 image of class ``cls``."""
    img = texture(rng, size)
    canvas = np.zeros((size, size), np.float32)
    if cls == "scratch":
        for _ in range(rng.integers(1, 3)):
            p = rng.integers(0, size, 2)
            ang = rng.uniform(0, np.pi)
            d = (np.array([np.cos(ang), np.sin(ang)]) * size).astype(int)
            cv2.line(canvas, tuple(map(int, p - d)), tuple(map(int, p + d)), 1.0, int(rng.integers(1, 3)))
        img -= 70 * cv2.GaussianBlur(canvas, (0, 0), 0.8)
    elif cls == "spot":
        for _ in range(rng.integers(2, 6)):
            c = tuple(int(v) for v in rng.integers(10, size - 10, 2))
            cv2.circle(canvas, c, int(rng.integers(3, 9)), 1.0, -1)
        img -= 60 * cv2.GaussianBlur(canvas, (0, 0), 1.5)
    else:
        p = rng.uniform(0.2, 0.8, 2) * size
        for _ in range(60):
            q = p + rng.normal(0, 3, 2)
            cv2.line(canvas, tuple(map(int, p)), tuple(map(int, q)), 1.0, 1)
            p = np.clip(q, 0, size - 1)
        img -= 80 * canvas
    return np.clip(img, 0, 255).astype(np.uint8)


def darken(img: np.ndarray, gain: float = 0.45) -> np.ndarray:
    """Dimmer lighting: scale intensities."""
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def rotate(img: np.ndarray, degrees: float = 25.0, zoom: float = 1.3) -> np.ndarray:
    """Camera rotated about the optical axis and moved closer."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, zoom)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def make_dataset(out: str | Path, n_train: int = 60, n_prod: int = 40, size: int = 128,
                 seed: int = 0) -> Path:
    """Write the train/prod folders described in the module docstring; return ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        cls = CLASSES[i % len(CLASSES)]
        (out / "train" / cls).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / "train" / cls / f"{cls}_{i:04d}.png"), render(rng, cls, size))
    (out / "prod").mkdir(parents=True, exist_ok=True)
    truth = []
    kinds = [("clean", lambda im: im, "none"), ("dark", darken, "lighting"), ("rotated", rotate, "angle")]
    for i in range(n_prod):
        name, shift, family = kinds[i % len(kinds)]
        cls = CLASSES[(i // len(kinds)) % len(CLASSES)]
        file = f"{name}_{i:04d}.png"
        cv2.imwrite(str(out / "prod" / file), shift(render(rng, cls, size)))
        truth.append({"file": file, "family": family, "variant": name, "params": "", "source_file": "",
                      "label": cls})
    pd.DataFrame(truth).to_csv(out / "prod_truth.csv", index=False)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--prod", type=int, default=40)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make_dataset(a.out, a.train, a.prod, a.size, a.seed))
