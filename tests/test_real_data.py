"""Slow checks on the real steel images of ../shared/data (skipped where absent).

Run with ``python -m pytest -m slow``. They build a small version of the
benchmark of ``scripts/steel_bench.py`` and check the figures issue 2 is judged by.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "neu_det").is_dir(), reason="../shared/data is absent")]


@pytest.fixture(scope="module")
def bench_scan(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import steel_bench

    import shiftbench
    out = tmp_path_factory.mktemp("steel")
    steel_bench.build(DATA, out / "bench", seed=1, n_train=100, n_clean=40, n_shift=80, n_content=80)
    res = shiftbench.scan(out / "bench" / "prod", reference=out / "bench" / "train", workspace=out / "ws")
    truth = pd.read_csv(out / "bench" / "truth.csv").set_index("file")
    table = res.table.assign(family=truth.loc[res.table["path"], "family"].to_numpy())
    return table


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_false_alarm_rate_near_target(bench_scan):
    clean = bench_scan[bench_scan.family == "none"]
    assert 0.0 <= clean["is_ood"].mean() <= 0.10  # target 5%, 240 clean images


def test_every_family_detected_better_than_penultimate_baseline(bench_scan):
    clean = bench_scan[bench_scan.family == "none"]
    for family in ["lighting", "angle", "resolution", "content"]:
        shifted = bench_scan[bench_scan.family == family]
        fused = _auroc(shifted["ood_score"].to_numpy(), clean["ood_score"].to_numpy())
        base = _auroc(shifted["knn_distance"].to_numpy(), clean["knn_distance"].to_numpy())
        assert fused >= base - 0.01, family
        assert fused > 0.8, family


def test_the_benchmark_can_take_x_sdd_as_the_lab_line(tmp_path):
    """``--line xsdd``: half of each X-SDD class trains, the rest feeds production, NEU is the other line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import steel_bench

    out = steel_bench.build(DATA, tmp_path / "b", seed=0, n_train=0, n_clean=5, n_shift=12, n_content=10,
                            line="xsdd")
    lab = {d.name: len(list(d.iterdir())) for d in (DATA / "x_sdd" / "images").iterdir() if d.is_dir()}
    trained = {d.name: len(list(d.iterdir())) for d in (out / "train").iterdir()}
    assert trained == {cls: n // 2 for cls, n in lab.items()}
    truth = pd.read_csv(out / "truth.csv")
    assert truth.groupby("family").size().to_dict() == {"angle": 12, "content": 10, "lighting": 12, "none": 35,
                                                         "resolution": 12}
    assert truth.loc[truth.family == "content", "source_file"].str.startswith("neu_det/").all()
    shown = truth.loc[truth.family != "content", "source_file"]
    assert shown.str.startswith("x_sdd/").all()
    train_files = {p.name for d in (out / "train").iterdir() for p in d.iterdir()}
    assert not train_files & {Path(f).name for f in shown}  # production never shows a training image


def test_motion_blur_direction_on_real_steel():
    """Motion blur at a random angle over NEU steel (scratches, rolled-in scale: textures with edges of
    their own) reads its direction: 90% of the images within 10 degrees (measured 7.4 at 9 px; the
    fine tensor's weakest direction alone, before version 6, was 48 or more off on 10% of them)."""
    import cv2

    from shiftbench.properties.measures import optics
    rng = np.random.default_rng(0)
    files = sorted((DATA / "neu_det" / "images").rglob("*.jpg"))
    errors = []
    for f in rng.choice(files, 90, replace=False):
        img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        deg = rng.uniform(0, 180)
        k = np.zeros((9, 9), np.float32)
        k[4] = 1
        k = cv2.warpAffine(k, cv2.getRotationMatrix2D((4, 4), -deg, 1), (9, 9))  # along deg, y down
        d = optics(cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT_101))["blur_direction"]
        errors.append(abs((d - deg + 90) % 180 - 90))
    assert np.percentile(errors, 90) < 10, np.percentile(errors, [50, 90])
