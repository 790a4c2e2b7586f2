"""shiftbench collect: k-center selection, budget split, plan numbers, matched augmentation, outputs, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import shiftbench
from shiftbench.cli.main import app
from shiftbench.collection import (allocate, augmentation_spec, build_augmentation, cluster_weights, collect,
                                k_center_greedy, load_augmentation)
from shiftbench.collection.transforms import compose
from shiftbench.collection.scan_io import span
from shiftbench.images import InputError
from shiftbench.properties import measure

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Training medians of the fake bank (every training row has these values, plus tiny jitter).
TRAIN = dict(brightness=0.5, brightness_p50=0.5, contrast=0.1, illum_gradient=0.02, illum_direction=90.0,
             sharpness=1.0, hf_ratio=0.01, blockiness=1.0, blur_anisotropy=0.05, blur_direction=0.0, noise=0.01,
             saturation=0.3, rb_balance=0.0, colour_cast=0.0, width=48.0, height=48.0)
ROTATIONS = [15.0, 18.0, 21.0, 24.0, 28.0]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _row(path: str, **kw) -> dict:
    return {"path": path, "status": "ok", "error": "", "ood_score": 1.0, "p_value": 0.5, "is_ood": False,
            "cause": "none", "confidence": np.nan, "cluster": -1, **TRAIN, "rotation_deg": np.nan,
            "how_angle": "", "how_resolution": "", "how_pipeline": "", **kw}


def make_scan(root: Path, rows: list[dict], cards: list[dict], seed: int = 0, bank: bool = True) -> Path:
    """A scan folder written by hand: prod/ images, images.csv, summary.json, embeddings.npy, WS/bank."""
    rng = np.random.default_rng(seed)
    prod, scan, ws = root / "prod", root / "scan", root / "ws"
    for d in (prod, scan, ws / "bank"):
        d.mkdir(parents=True, exist_ok=True)
    emb = np.zeros((len(rows), 16), np.float32)
    for i, r in enumerate(rows):
        (prod / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(prod / r["path"]), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        emb[i, 1 + (r["cluster"] % 15)] = 5.0  # one blob per cluster, spread within it
        emb[i] += rng.normal(0, 0.3, 16)
        r.setdefault("ood_score", 1.0)
    t = pd.DataFrame(rows)
    t["is_ood"] = np.where(t["is_ood"], "true", "false")
    t.to_csv(scan / "images.csv", index=False)
    np.save(scan / "embeddings.npy", emb)
    summary = {"prod_dir": str(prod), "workspace": str(ws), "bank": {"root": str(root / "train")},
               "clusters": cards, "counts": {"images": len(rows)},
               "drift": [{"measure": k, "train_median": v} for k, v in TRAIN.items()]}
    (scan / "summary.json").write_text(json.dumps(summary))
    if bank:
        n = 20
        bt = pd.DataFrame({"path": [f"t{i}.png" for i in range(n)], "status": "ok",
                           **{k: v + rng.normal(0, 1e-4, n) * (v != 0) for k, v in TRAIN.items()}})
        bt.to_parquet(ws / "bank" / "images.parquet")
    return scan


def _card(cid: int, cause: str, rows: list[dict], error_rate: float | None = None) -> dict:
    members = [r["path"] for r in rows if r["cluster"] == cid]
    card = {"cluster": cid, "size": len(members), "cause": cause, "causes": {cause: len(members)},
            "confidence": 0.9, "change": [], "medoids": members[:3]}
    if error_rate is not None:
        card["error_rate"] = error_rate
    return card


def standard_rows(rotations=ROTATIONS) -> list[dict]:
    """6 clean, 8 darker (cluster 0), 5 rotated (cluster 1), 4 blurred (cluster 2), 1 unreadable."""
    rows = [_row(f"clean/{i}.png") for i in range(6)]
    for i, b in enumerate(np.linspace(0.22, 0.28, 8)):
        rows.append(_row(f"dark/{i}.png", is_ood=True, cause="lighting", cluster=0, brightness=b,
                         brightness_p50=b, contrast=0.05 + 0.002 * i, ood_score=10.0 + i))
    for i, deg in enumerate(rotations):
        rows.append(_row(f"rot/{i}.png", is_ood=True, cause="angle", cluster=1, rotation_deg=deg,
                         how_angle=f"rotate {deg:+.0f} (conf 0.50) zoom 1.00", ood_score=8.0))
    for i, how in enumerate(["blur 1.2", "blur 2.0", "blur 1.6 + noise", "jpeg 10"]):
        rows.append(_row(f"blur/{i}.png", is_ood=True, cause="resolution", cluster=2, sharpness=0.3,
                         hf_ratio=0.003, how_resolution=how, blockiness=1.3, ood_score=6.0))
    rows.append(_row("broken.png", status="unreadable", ood_score=np.nan))
    return rows


@pytest.fixture
def fake_scan(tmp_path) -> Path:
    rows = standard_rows()
    cards = [_card(0, "lighting", rows), _card(1, "angle", rows), _card(2, "resolution", rows)]
    return make_scan(tmp_path, rows, cards)


# ------------------------------------------------------------------ selection and budget


def test_k_center_greedy_picks_one_per_blob_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.01, (10, 4)), rng.normal(0, 0.01, (7, 4)) + [5, 0, 0, 0]])
    picks, gaps = k_center_greedy(x, 2)
    assert {p < 10 for p in picks} == {True, False}  # one from each blob
    assert picks[0] < 10  # the medoid of the data lies in the larger blob
    assert np.isnan(gaps[0]) and gaps[1] > 4.0
    again = k_center_greedy(x, 2)
    assert again[0] == picks and again[1][1:] == gaps[1:]
    all_picks, _ = k_center_greedy(x, 50)
    assert sorted(all_picks) == list(range(17))  # capped at N, no repeats
    assert k_center_greedy(x, 3, start=12)[0][0] == 12


@pytest.mark.parametrize("weights,total,minimum,caps", [
    ([13, 8, 5], 12, 1, None), ([13, 8, 5], 12, 1, [2, 100, 100]), ([1, 1, 1], 2, 1, None),
    ([0, 0, 5], 9, 2, None), ([3, 1], 100, 0, [5, 4]), ([5, 3, 2, 1], 40, 10, None)])
def test_allocate_sums_to_the_budget_and_follows_weights(weights, total, minimum, caps):
    got = allocate(weights, total, minimum, caps)
    assert got.sum() == min(total, sum(caps) if caps else total)
    if caps:
        assert (got <= np.asarray(caps)).all()
    order = np.argsort(-np.asarray(weights), kind="stable")
    open_ = [i for i in order if not caps or got[i] < caps[i]]
    assert all(got[a] >= got[b] for a, b in zip(open_, open_[1:]))  # more harm, no fewer images
    if total >= minimum * len(weights):
        assert (got >= np.minimum(minimum, caps if caps else minimum)).all()


def test_cluster_weights_use_error_rate_times_size_when_every_card_has_one():
    w, rule = cluster_weights([10, 5], [0.1, 0.8])
    assert list(w) == [1.0, 4.0] and "error rate x size" in rule
    w, rule = cluster_weights([10, 5], [0.1, None])
    assert list(w) == [10, 5] and "size" in rule


def test_span_drops_one_wild_estimate_but_keeps_the_spread():
    assert span([15, 18, 21, 24, 28]) == (15, 28)
    assert span([22, 22, 21.5, 22, 23, 27.5, 30, 4]) == (21.5, 30)


# ------------------------------------------------------------------ outputs


def test_collect_writes_plan_selection_copies_and_augmentation(fake_scan):
    res = collect(fake_scan, budget=7)
    out = fake_scan / "collect"
    assert res.out_dir == out
    for name in ("plan.json", "plan.md", "selection.csv", "augment.yaml", "augment.md", "to_label"):
        assert (out / name).exists(), name
    sel = pd.read_csv(out / "selection.csv", keep_default_na=False)
    assert list(sel.columns[:6]) == ["rank", "path", "cluster", "cause", "ood_score", "reason"]
    assert sel["rank"].tolist() == list(range(1, 8)) and sel["path"].is_unique
    prod = Path(json.loads((fake_scan / "summary.json").read_text())["prod_dir"])
    for r in sel.itertuples():  # manifest paths resolve, copies are the same bytes
        assert (prod / r.path).is_file() and Path(r.source) == prod / r.path
        assert (out / r.copy).read_bytes() == (prod / r.path).read_bytes()
    template = pd.read_csv(out / "to_label" / "labels_template.csv", keep_default_na=False)
    assert list(template.columns) == ["path", "label"] and (template["label"] == "").all()
    assert sorted(template["path"]) == sorted(p.name for p in (out / "to_label").glob("*.png"))
    # budget split by size (8, 5, 4 flagged) with at least one each; medoid first in each cluster
    per = sel.groupby("cluster").size().to_dict()
    assert sum(per.values()) == 7 and per[0] >= per[1] >= per[2] >= 1
    assert [c["label_now"] for c in res.plan] == [per[0], per[1], per[2]]
    firsts = sel.groupby("cluster").head(1)
    assert firsts["reason"].str.contains("medoid").all()
    assert set(firsts["path"]) == {"dark/0.png", "rot/0.png", "blur/0.png"}  # the cards' medoids
    plan = json.loads((out / "plan.json").read_text())
    assert [c["cluster"] for c in plan["clusters"]] == [0, 1, 2]
    assert sum(c["collect"] for c in plan["clusters"]) == 7 and "harm = size" in plan["rule"]
    assert "Cluster 0: lighting" in (out / "plan.md").read_text()
    assert not [p for p in fake_scan.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_selection_spreads_over_the_cluster(tmp_path):
    rows = [_row(f"a/{i}.png", is_ood=True, cause="content", cluster=0) for i in range(12)]
    scan = make_scan(tmp_path, rows, [_card(0, "content", rows)])
    emb = np.zeros((12, 3), np.float32)
    emb[:, 0] = 1.0
    emb[8:, 1] = 1.0  # two modes inside the cluster: rows 0-7 and 8-11
    np.save(scan / "embeddings.npy", emb)
    sel = collect(scan, budget=2).selection
    assert sel["path"].tolist()[0] == "a/0.png" and sel["path"].tolist()[1].startswith("a/")
    assert int(sel["path"].tolist()[1][2:-4]) >= 8  # the second pick comes from the other mode


def test_each_mode_of_a_cluster_gets_an_image_to_label(tmp_path):
    """A small mode that looks like the big one in the embedding still gets its own pick."""
    rows = [_row(f"a/{i}.png", is_ood=True, cause="lighting", cluster=0, mode=int(i >= 10)) for i in range(12)]
    scan = make_scan(tmp_path, rows, [_card(0, "lighting", rows)])
    emb = np.zeros((12, 3), np.float32)
    emb[:10, 0] = np.linspace(0, 1, 10)  # the big mode spreads out; the small one sits at its start
    np.save(scan / "embeddings.npy", emb)
    sel = collect(scan, budget=2).selection
    assert sorted(sel["mode"]) == [0, 1] and (sel["cluster"] == 0).all()
    assert sel.loc[sel["mode"] == 1, "reason"].iloc[0].startswith("cluster 0 mode 1 (lighting, 2 images)")


def test_error_rates_steer_the_budget(tmp_path):
    rows = standard_rows()
    cards = [_card(0, "lighting", rows, 0.05), _card(1, "angle", rows, 0.9), _card(2, "resolution", rows, 0.5)]
    res = collect(make_scan(tmp_path, rows, cards), budget=9)
    by = {c["cluster"]: c for c in res.plan}
    assert by[1]["label_now"] > by[0]["label_now"]  # 0.9 x 5 > 0.05 x 8
    assert by[1]["harm"] == pytest.approx(4.5) and by[1]["error_rate"] == 0.9
    assert "error rate x size" in res.summary["rule"]


def test_model_confidence_steers_budget_and_picks(tmp_path):
    """A model-aware scan without labels: harm = (1 - confidence) x size, the least sure images first."""
    rows = standard_rows()
    conf = {0: 0.99, 1: 0.6, 2: 0.9}
    for i, r in enumerate(rows):
        r["model_confidence"] = conf.get(r["cluster"], 0.999) if r["status"] == "ok" else np.nan
    rows[8]["model_confidence"] = 0.4  # one doubtful image among the dark ones (dark/2.png)
    cards = [_card(0, "lighting", rows), _card(1, "angle", rows), _card(2, "resolution", rows)]
    res = collect(make_scan(tmp_path, rows, cards), budget=7)
    by = {c["cluster"]: c for c in res.plan}
    mean0 = np.mean([1 - r["model_confidence"] for r in rows if r["cluster"] == 0])
    assert by[0]["harm"] == pytest.approx(8 * mean0) and by[1]["harm"] == pytest.approx(5 * 0.4)
    assert by[1]["label_now"] > by[2]["label_now"]
    assert "estimated error rate x size" in res.summary["rule"]
    assert by[0]["to_label"][0] == "dark/2.png"  # the doubtful one, not the medoid
    sel = res.selection.set_index("path")
    assert "model confidence 0.40" in sel.loc["dark/2.png", "reason"]


def test_uncertainty_weighted_k_center_prefers_doubtful_images_among_new_looking_ones():
    x = np.array([[0.0, 0], [0, 0.1], [1, 0], [1, 0.1], [0, 1]])
    w = np.array([0.1, 0.9, 0.05, 0.8, 0.001])
    picks, _ = k_center_greedy(x, 3, weights=w)
    assert picks[0] == 1 and picks[1] == 3  # the far, sure row 4 waits: distance x weight is small
    assert sorted(k_center_greedy(x, 5, weights=w)[0]) == [0, 1, 2, 3, 4]


def test_content_clusters_get_a_triage_quota_while_condition_clusters_exist(tmp_path):
    rows = standard_rows()
    rows += [_row(f"new/{i}.png", is_ood=True, cause="content", cluster=3) for i in range(30)]
    cards = [_card(3, "content", rows), _card(0, "lighting", rows), _card(1, "angle", rows),
             _card(2, "resolution", rows)]
    res = collect(make_scan(tmp_path, rows, cards), budget=12)
    by = {c["cluster"]: c for c in res.plan}
    assert by[3]["label_now"] == 3 and sum(c["label_now"] for c in res.plan) == 12
    assert "at most 3 from a content cluster" in res.summary["rule"]
    only = [r for r in rows if r["cluster"] in (3, -1)]
    alone = collect(make_scan(tmp_path / "alone", only, [_card(3, "content", only)]), budget=12)
    assert alone.plan[0]["label_now"] == 12  # nothing else to spend the budget on


def test_scan_without_explanations_is_one_unattributed_group(tmp_path):
    rows = [_row(f"u/{i}.png", is_ood=True, cause="unknown") for i in range(5)] + [_row("ok.png")]
    res = collect(make_scan(tmp_path, rows, []), budget=3)
    (entry,) = res.plan
    assert entry["cluster"] == -1 and entry["cause"] == "unknown" and entry["label_now"] == 3
    assert entry["action"].startswith("Label 3 images (not attributed to a cause")
    assert res.summary["augmentation"]["transforms"] == []


def test_budget_above_flagged_takes_all_and_says_so(fake_scan):
    res = collect(fake_scan, budget=100, copy=False)
    assert len(res.selection) == 17 and any("all of them are selected" in n for n in res.summary["notes"])
    assert not (res.out_dir / "to_label").exists() and (res.out_dir / "labels_template.csv").is_file()


def test_budget_fraction_of_readable_images(fake_scan):
    res = collect(fake_scan, budget_fraction=0.2)
    assert res.summary["budget"] == 5 and len(res.selection) == 5  # ceil(0.2 x 23 readable)


@pytest.mark.parametrize("kwargs,message", [
    (dict(budget=0), "positive"), (dict(budget=-3), "positive"), (dict(), "give a budget"),
    (dict(budget=3, budget_fraction=0.1), "give a budget"), (dict(budget_fraction=1.5), "(0, 1]")])
def test_bad_budgets_are_input_errors(fake_scan, kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]")):
        collect(fake_scan, **kwargs)


def test_missing_scan_and_foreign_out_folder_are_refused(tmp_path, fake_scan):
    with pytest.raises(InputError, match="not a scan folder"):
        collect(tmp_path / "nowhere", budget=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images.csv"):
        collect(tmp_path / "empty", budget=3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("do not delete")
    with pytest.raises(InputError, match="not a collect output"):
        collect(fake_scan, budget=3, out=mine)
    assert (mine / "thesis.txt").is_file()


def test_rerun_replaces_the_output_folder(fake_scan):
    collect(fake_scan, budget=10)
    res = collect(fake_scan, budget=2)
    assert len(list((res.out_dir / "to_label").glob("*.png"))) == 2


def test_rerun_never_replaces_labels_or_files_the_user_added(fake_scan):
    """The README says to label in to_label/labels_template.csv: a re-run must not wipe that work."""
    res = collect(fake_scan, budget=3)
    template = res.out_dir / "to_label" / "labels_template.csv"
    filled = pd.read_csv(template, dtype=str, keep_default_na=False).assign(label="ok")
    filled.to_csv(template, index=False)
    with pytest.raises(InputError, match="has 3 labels filled in"):
        collect(fake_scan, budget=3)
    assert pd.read_csv(template)["label"].eq("ok").all()
    filled.assign(label="").to_csv(template, index=False)
    (res.out_dir / "to_label" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="files collect did not write .to_label/notes.txt"):
        collect(fake_scan, budget=3)
    assert (res.out_dir / "to_label" / "notes.txt").read_text() == "mine"


def test_without_bank_or_embeddings(tmp_path):
    rows = standard_rows()
    scan = make_scan(tmp_path, rows, [_card(0, "lighting", rows), _card(1, "angle", rows),
                                      _card(2, "resolution", rows)], bank=False)
    (scan / "embeddings.npy").unlink()
    a, b = collect(scan, budget=6, seed=3), collect(scan, budget=6, seed=3)
    assert a.selection["path"].tolist() == b.selection["path"].tolist()  # seeded
    assert "summary.json" in a.summary["training"]
    assert a.plan[0]["numbers"]["brightness_p50"]["training"] == 0.5
    assert any("no usable embeddings.npy" in n for n in a.summary["notes"])  # said, not silent
    (scan / "embeddings.npy").write_text("x")  # damaged: the same
    assert any("no usable embeddings.npy" in n for n in collect(scan, budget=6, seed=3).summary["notes"])


# ------------------------------------------------------------------ plan numbers


def test_plan_states_the_measured_change(fake_scan):
    res = collect(fake_scan, budget=30)
    light, angle, blur = res.plan
    med = float(np.median(np.linspace(0.22, 0.28, 8)))
    assert light["numbers"]["brightness_p50"]["production"] == pytest.approx(med)
    assert light["numbers"]["brightness_p50"]["training"] == pytest.approx(0.5, abs=1e-3)
    assert light["conditions"][0].startswith(f"median brightness {med:.2f} (training 0.50, 50% lower")
    assert light["action"].startswith(f"Add {light['collect']} images under the new lighting")
    assert "camera rotated +16..+26 degrees" in angle["conditions"][0]  # 10th-90th percentiles, as card and augment
    assert angle["numbers"]["rotation_deg"]["production"] == 21.0
    assert "sharpness 0.3 (training 1, 70% lower)" in blur["conditions"][0]
    assert any("JPEG blocking 1.30" in c for c in blur["conditions"])
    assert light["representatives"] == ["dark/0.png", "dark/1.png", "dark/2.png"]
    assert res.summary["clusters"][0]["collect"] >= res.summary["clusters"][2]["collect"]


def test_side_light_is_described_with_its_direction(tmp_path):
    rows = [_row(f"s/{i}.png", is_ood=True, cause="lighting", cluster=0, brightness=0.3, brightness_p50=0.3,
                 illum_gradient=0.3, illum_direction=d) for i, d in enumerate([350, 355, 0, 5, 10])]
    res = collect(make_scan(tmp_path, rows, [_card(0, "lighting", rows)]), budget=3)
    assert any(c.startswith("light falling off towards the left: brightness changes by 100%")
               for c in res.plan[0]["conditions"])


# ------------------------------------------------------------------ augmentation


def _flatten(compose) -> list:
    out = []
    for t in compose.transforms:
        out += [t, *_flatten(t)] if hasattr(t, "transforms") else [t]
    return out


def _of(compose, name: str) -> list:
    return [t for t in _flatten(compose) if type(t).__name__ == name]


def test_augmentation_round_trips_and_covers_the_shift(fake_scan):
    import albumentations as A
    collect(fake_scan, budget=3)
    path = fake_scan / "collect" / "augment.yaml"
    loaded = load_augmentation(path)
    built = build_augmentation(fake_scan, seed=0)
    assert A.to_dict(loaded) == A.to_dict(built)
    (affine,) = _of(loaded, "Affine")
    lo, hi = affine.rotate
    # the central 80% of the measured rotations (15..28): one sign seen, no negative rotations
    assert 15 <= lo <= 17 and 26 <= hi <= 28 and lo > 0
    (blur,) = _of(loaded, "GaussianBlur")
    assert 1.2 <= blur.sigma_limit[0] < blur.sigma_limit[1] <= 2.0
    assert _of(loaded, "ImageCompression")[0].quality_range[0] <= 10
    assert not _of(loaded, "GaussNoise")  # '+ noise' alone is not measured noise
    assert all(t.p == 0.5 for t in loaded.transforms)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for _ in range(5):
        out = loaded(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8
    md = (fake_scan / "collect" / "augment.md").read_text()
    assert "rotated +" in md and "sigma 1." in md


@pytest.mark.parametrize("as_modes", [False, True])
def test_both_rotation_signs_give_both_ranges(tmp_path, as_modes):
    rows = standard_rows(rotations=[15, 20, 28, -16, -22])
    for r in rows:
        r["mode"] = 0 if r["is_ood"] else -1
    if as_modes:  # the negative ones are a mode of the angle cluster (what scans write)
        rows[-6]["mode"] = rows[-7]["mode"] = 1
        cards = [_card(c, cause, rows) for c, cause in [(0, "lighting"), (1, "angle"), (2, "resolution")]]
    else:  # ... or a cluster of their own (scans before modes)
        rows[-6]["cluster"] = rows[-7]["cluster"] = 3
        cards = [_card(c, cause, rows) for c, cause in [(0, "lighting"), (1, "angle"), (3, "angle"), (2, "resolution")]]
    aug = build_augmentation(make_scan(tmp_path, rows, cards))
    ranges = sorted(tuple(t.rotate) for t in _of(aug, "Affine"))
    # each within its own images' rotations (the central part of them)
    (nlo, nhi), (plo, phi) = ranges
    assert -22 <= nlo < nhi <= -16 and 15 <= plo < phi <= 28 and (plo, phi) != (15, 28)


def test_a_stray_angle_image_of_another_cluster_gets_no_affine_of_its_own(tmp_path):
    """A blurred image also named angle (resolution+angle) sits in the resolution cluster: it widens no
    range and adds no third Affine "from 1 images"."""
    rows = standard_rows()
    rows[-2].update(cause="resolution+angle", rotation_deg=-5.0, how_angle="rotate -5 (conf 0.50) zoom 1.15")
    cards = [_card(c, cause, rows) for c, cause in [(0, "lighting"), (1, "angle"), (2, "resolution")]]
    (affine,) = _of(build_augmentation(make_scan(tmp_path, rows, cards)), "Affine")
    assert 15 <= affine.rotate[0] < affine.rotate[1] <= 28


def test_darker_and_brighter_images_get_their_own_exposure_ranges():
    """One cluster with darkened and brightened images: two exposure modes, each drawing
    brightness like its own images, not a box spanning both (which would rarely be as dark)."""
    import albumentations as A
    levels = [(0.15, 0.03), (0.2, 0.04), (0.25, 0.05), (0.75, 0.05), (0.8, 0.04), (0.85, 0.03), (0.9, 0.03)]
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="lighting", cluster=0, brightness=b, brightness_p50=b,
                              contrast=c) for i, (b, c) in enumerate(levels)])
    (entry,) = augmentation_spec(rows, TRAIN)
    rbcs = [k for k in entry["children"] if k["name"] == "RandomBrightnessContrast"]
    assert len(rbcs) == 2 and [k["p"] for k in rbcs] == pytest.approx([0.5 * 3 / 7, 0.5 * 4 / 7], abs=1e-3)
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(127.5, 25.5, (64, 64, 3)), 0, 255).astype(np.uint8)  # mean 0.5, contrast 0.1
    for k, (lo, hi) in zip(rbcs, [(0.1, 0.32), (0.6, 1.0)]):
        t = A.RandomBrightnessContrast(**{n: tuple(v) if isinstance(v, list) else v for n, v in k["params"].items()},
                                       p=1)
        t.set_random_seed(0)
        means = [t(image=img)["image"].mean() / 255 for _ in range(100)]
        assert lo < min(means) and max(means) < hi  # never the other side's brightness
    few_bright = rows.iloc[:5]  # 3 darker, 2 brighter: too few to be a mode
    (entry,) = augmentation_spec(few_bright, TRAIN)
    assert sum(k["name"] == "RandomBrightnessContrast" for k in entry["children"]) == 1


def test_a_cluster_of_two_modes_is_planned_mode_by_mode():
    """A lighting cluster whose images went darker at one station and brighter at another:
    each mode's conditions and numbers, and the images to collect split by size."""
    from shiftbench.collection import plan as planmod
    levels = [0.2] * 6 + [0.8] * 3
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="lighting", cluster=0, mode=int(b > 0.5),
                              brightness=b, brightness_p50=b) for i, b in enumerate(levels)])
    d = planmod.describe(rows, "lighting", TRAIN, 10, ["0", "1", "2"])
    assert [(m["mode"], m["size"], m["collect"]) for m in d["modes"]] == [(0, 6, 7), (1, 3, 3)]
    assert d["modes"][0]["numbers"]["brightness_p50"]["production"] == pytest.approx(0.2)
    assert d["modes"][1]["conditions"][0].startswith("median brightness 0.80 (training 0.50, 60% higher")
    assert d["conditions"][1].startswith("mode 1 (3 images; collect 3): median brightness 0.80")
    assert d["action"].startswith("Add 10 images under the new lighting: mode 0 (6 images; collect 7)")
    assert "modes" not in planmod.describe(rows.assign(mode=0), "lighting", TRAIN, 10, ["0"])
    assert [m["collect"] for m in planmod.describe(rows, "lighting", TRAIN, 2, ["0"])["modes"]] == [1, 1]
    assert [m["collect"] for m in planmod.describe(rows, "lighting", TRAIN, 1, ["0"])["modes"]] == [1, 0]


def test_clipped_dark_images_read_as_an_offset_not_a_lost_gain():
    """A training-like image darkened by an offset of -0.6 clips most pixels to black: its
    contrast collapses, which a mean-and-contrast match reads as a near-zero gain. Matched on
    the quantiles still inside (0, 1) it reads as the offset it is, and the augmentation
    reproduces the image."""
    import albumentations as A
    from shiftbench.properties import measure
    rng = np.random.default_rng(0)
    train_img = np.clip(rng.normal(0.49, 0.1, (96, 96)), 0, 1)
    t = {**TRAIN, **{k: v for k, v in measure(np.repeat((train_img[..., None] * 255).astype(np.uint8), 3, -1)).items()
                     if k in ("brightness", "contrast", "brightness_p05", "brightness_p50", "brightness_p95")}}
    rows = []
    offsets = [-0.5, -0.53, -0.55, -0.58, -0.6, -0.75]  # the last one is black through its 95th percentile
    for i, off in enumerate(offsets):
        img = np.clip(np.clip(rng.normal(0.49, 0.1, (96, 96)), 0, 1) + off, 0, 1)
        m = measure(np.repeat((img[..., None] * 255).astype(np.uint8), 3, -1))
        rows.append(_row(f"{i}", is_ood=True, cause="lighting", **{k: m[k] for k in (
            "brightness", "contrast", "brightness_p05", "brightness_p50", "brightness_p95")}))
    rows = pd.DataFrame(rows)
    assert (rows["brightness_p50"] < 0.02).all()  # the median itself is clipped
    from shiftbench.collection.light_augment import _gain_offset
    alpha, beta = _gain_offset(rows, t)
    np.testing.assert_allclose(alpha[:-1], 1.0)
    np.testing.assert_allclose(beta[:-1], offsets[:-1], atol=0.03)
    assert np.isnan(alpha[-1]) and np.isnan(beta[-1])  # nothing left to match: no estimate
    naive = rows["contrast"] / t["contrast"]
    assert (naive < 0.6).all()  # what the mean-and-contrast match would have said
    (entry,) = [e for e in augmentation_spec(rows, t) if e["name"] == "OneOf"]
    rbc = entry["children"][0]
    lo, hi = rbc["params"]["brightness_limit"]
    assert -0.63 < lo < hi < -0.49 and rbc["params"]["contrast_limit"] == pytest.approx([0, 0], abs=1e-6)


def test_lighting_ranges_reproduce_production_brightness():
    import albumentations as A
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="lighting", brightness=b, brightness_p50=b, contrast=c)
                         for i, (b, c) in enumerate([(0.2, 0.04), (0.25, 0.05), (0.3, 0.06)])])
    (entry,) = augmentation_spec(rows, TRAIN)
    rbc = A.RandomBrightnessContrast(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in entry["children"][0]["params"].items()}, p=1)
    rbc.set_random_seed(0)
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(127.5, 25.5, (64, 64, 3)), 0, 255).astype(np.uint8)  # mean 0.5, contrast 0.1
    means = [rbc(image=img)["image"].mean() / 255 for _ in range(200)]
    assert 0.18 < min(means) < 0.24 and 0.26 < max(means) < 0.32  # the central 80% of 0.2..0.3
    g = entry["children"][1]["params"]["gamma_limit"]
    gammas = np.percentile([100 * np.log(b) / np.log(0.5) for b in (0.2, 0.25, 0.3)], [10, 90])
    assert g == pytest.approx(sorted(gammas), abs=0.2)


def test_a_clipped_median_gives_no_gamma():
    """Overexposed images' median brightness sits at 1: the gamma that maps training's median there
    is ~0.01 (a white image); such images span the gain and offset only."""
    clipped = [_row(f"c{i}", is_ood=True, cause="lighting", brightness=0.9, brightness_p50=0.995, contrast=0.05)
               for i in range(3)]
    (entry,) = augmentation_spec(pd.DataFrame(clipped), TRAIN)
    assert [c["name"] for c in entry["children"]] == ["RandomBrightnessContrast"]
    bright = [_row(f"b{i}", is_ood=True, cause="lighting", brightness=b, brightness_p50=b, contrast=0.1)
              for i, b in enumerate([0.7, 0.75, 0.8])]
    (entry,) = augmentation_spec(pd.DataFrame(clipped + bright), TRAIN)
    (gamma,) = [c for c in entry["children"] if c["name"] == "RandomGamma"]
    assert gamma["params"]["gamma_limit"][0] > 100 * np.log(0.8) / np.log(0.5) - 1  # from the unclipped three


def test_side_light_augmentation_matches_direction_and_strength():
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="lighting", brightness=0.3, brightness_p50=0.3,
                              illum_gradient=0.3, illum_direction=d) for i, d in enumerate([350, 0, 10])])
    spec = augmentation_spec(rows, TRAIN)
    light = [e for e in spec if e["name"] in ("Illumination", "Sequential")]
    assert len(light) == 1
    from shiftbench.collection.transforms import compose
    seq = compose(light)
    for t in _flatten(seq):
        t.p = 1.0
    flat = np.full((96, 96, 3), 120, np.uint8)
    m = measure(seq(image=flat)["image"])
    assert m["illum_gradient"] / m["brightness"] == pytest.approx(1.0, rel=0.15)  # production: 0.3 / 0.3
    assert m["brightness"] == pytest.approx(120 / 255, rel=0.1)  # the field moves light, not the exposure
    assert min(m["illum_direction"], 360 - m["illum_direction"]) < 5  # brighter to the right, as measured


def test_vignettes_get_darker_corners_that_measure_as_production_did(tmp_path):
    """albumentations has no vignette: each strength is a darkening then centred Gaussian brightenings.
    On a flat image the corners must come out as much darker as production's, the centre unchanged."""
    vig = [0.3, 0.35, 0.4, 0.45, 0.5, 0.0, 0.02, 0.05]  # five vignettes among eight lighting images
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="lighting", vignetting=v) for i, v in enumerate(vig)])
    train = {**TRAIN, "vignetting": 0.02, "falloff_p95": 0.05}  # (the rows' brightness: 0.5)
    (entry,) = [e for e in augmentation_spec(rows, train) if "vignette" in e["why"]]
    from shiftbench.collection.transforms import _children_md, _instantiate
    levels = [1 - (1 - v) / 0.98 for v in (0.34, 0.4, 0.46)]  # the central 80% of the five, in thirds
    assert len(entry["children"]) == 3
    flat = np.full((90, 90, 3), 150, np.uint8)
    for child, want in zip(entry["children"], levels):
        out = _instantiate({**child, "p": 1.0})(image=flat)["image"]  # (each strength is drawn at p 1/3)
        m = measure(out)
        assert m["vignetting"] == pytest.approx(want, abs=0.03)
        assert flat.mean() * (1 - want) < m["brightness"] * 255 < flat.mean()  # darker on average...
        assert 142 <= out[45, 45, 0] <= 150  # ...but not in the centre (each uint8 step rounds down)
    assert re.search(r"\n  - then: \d x `Illumination\(mode=gaussian", "\n".join(_children_md(entry, "")))
    assert not [e for e in augmentation_spec(rows.iloc[5:], train) if "vignette" in e["why"]]  # none strong enough
    # darkened images: the same falloff reads larger against a dimmer centre, but is no darker in the corners
    dark = rows.assign(brightness=0.1)  # the five "vignettes": corners 0.03-0.05 darker, as in training
    assert not [e for e in augmentation_spec(dark, train) if "vignette" in e["why"]]
    # parts centred on a dark belt read as vignetted (1.2) by the scene itself: no vignette to imitate
    parts = rows.assign(vignetting=rows["vignetting"] + 1.2)
    assert not [e for e in augmentation_spec(parts, {**TRAIN, "vignetting": 1.2}) if "vignette" in e["why"]]


def test_measured_noise_gives_matching_gauss_noise():
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="resolution", noise=n)
                         for i, n in enumerate([0.03, 0.04, 0.05])])
    (noise,) = [e for e in augmentation_spec(rows, TRAIN) if e["name"] == "GaussNoise"]
    lo, hi = noise["params"]["std_range"]
    extra = np.sqrt(np.array([0.03, 0.04, 0.05]) ** 2 - 0.01 ** 2)  # noise adds in variance
    assert (lo, hi) == pytest.approx(tuple(np.percentile(extra, [10, 90])), abs=1e-3)


def test_every_degradation_kind_of_a_cause_is_augmented():
    """A resolution cause that mixes kinds gets each kind seen on enough of its images (a kind
    left out is one the fine-tuned model never sees); a kind matched once is noise."""
    how = ["blur 1.6"] * 14 + ["motion 9"] * 3 + ["jpeg 10"] * 2 + ["downscale 0.3"]
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="resolution", how_resolution=h) for i, h in enumerate(how)])
    spec = {e["name"]: e for e in augmentation_spec(rows, TRAIN)}
    assert set(spec) == {"GaussianBlur", "MotionBlur"}  # motion: 3 of 20; jpeg 2, downscale 1: too few
    assert spec["MotionBlur"]["params"]["blur_limit"] == [9, 9]


def test_a_camera_moved_away_is_augmented_by_zooming_out_and_planned_as_farther():
    from shiftbench.collection.plan import _angle as plan_angle
    how = ["moved away, zoom 0.80"] * 7 + ["rotate +2 (conf 0.20) zoom 1.00"] * 3
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="angle", how_angle=h, rotation_deg=0.0)
                         for i, h in enumerate(how)])
    (affine,) = [e for e in augmentation_spec(rows, TRAIN) if e["name"] == "Affine"]
    lo, hi = affine["params"]["scale"]
    assert lo == pytest.approx(0.8) and hi <= 1.0  # shrunk, as production shows it (never magnified)
    assert any("farther away: parts shown at 0.80" in line for line in plan_angle(rows, TRAIN))


def test_a_sheared_part_is_augmented_by_shearing_both_ways_and_planned_as_a_tilt():
    from shiftbench.collection.plan import _angle as plan_angle
    how = (["shear -0.25 along 0"] * 4 + ["shear 0.25 along 0"] * 3 + ["shear 0.25 along 90"]
           + ["homography, rotate +3"] * 2)
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="angle", how_angle=h, rotation_deg=0.0)
                         for i, h in enumerate(how)])
    (affine,) = [e for e in augmentation_spec(rows, TRAIN) if e["name"] == "Affine"]
    assert affine["params"]["shear"] == {"x": [-14.0, 14.0], "y": [0.0, 0.0]}  # y: one image of ten
    assert "sheared up to 14 degrees along x" in affine["why"]
    assert any("parts sheared up to 14 degrees along x" in line for line in plan_angle(rows, TRAIN))
    part = np.zeros((64, 64, 3), np.uint8)
    part[:, 28:36] = 255  # a vertical bar: a shear along x tilts it
    out = compose([{**affine, "p": 1.0}], seed=1, p=1.0)(image=part)["image"]
    centre = [np.mean(np.nonzero(out[row, :, 0] > 127)[0]) for row in (8, 56)]
    assert 2 <= abs(centre[1] - centre[0]) <= 48 * np.tan(np.radians(14)) + 1  # tilted, by at most 14 degrees


def test_a_stretched_texture_is_augmented_by_a_perspective_that_moves_corners_as_far():
    """Attribution's stretch by a along a line (1/a across) moves an image's corners by about (a - 1) / 2
    of its size along each axis: Perspective's corner offsets get that spread, where a quarter of the
    angle images show a stretch."""
    how = (["stretch 1.12 along 45, rotate +3 (conf 0.2) zoom 1.00"] * 3 + ["stretch 1.25 along 90, rotate -1"] * 3
           + ["rotate +10 (conf 0.5) zoom 1.00"] * 4)
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="angle", how_angle=h, rotation_deg=0.0)
                         for i, h in enumerate(how)])
    (persp,) = [e for e in augmentation_spec(rows, TRAIN) if e["name"] == "Perspective"]
    assert persp["params"]["scale"] == pytest.approx([0.06, 0.125])
    assert "6 of 10 images stretched 1.12..1.25" in persp["why"]
    from shiftbench.collection.plan import _angle as plan_angle
    assert any("6 of 10 images foreshortened (stretched 1.12..1.25" in line for line in plan_angle(rows, TRAIN))
    few = rows.assign(how_angle=how[:2] + ["rotate +10 (conf 0.5) zoom 1.00"] * 8)  # 2 of 10: one image's fit
    assert not [e for e in augmentation_spec(few, TRAIN) if e["name"] == "Perspective"]
    h = w = 101  # each pixel shows where it came from: red = x, green = y (in 1/100 of the size)
    coords = np.dstack([np.tile(np.arange(w), (h, 1)), np.tile(np.arange(h)[:, None], (1, w)), np.zeros((h, w))])
    offsets = []
    for seed in range(8):
        out = compose([{**persp, "p": 1.0}], seed=seed, p=1.0)(image=coords.astype(np.uint8))["image"]
        for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):  # a corner's source, from its own corner
            offsets += [abs(int(out[y, x, 0]) - x) / (w - 1), abs(int(out[y, x, 1]) - y) / (h - 1)]
    # corners drawn |N(0, s)| from their place, s in [0.06, 0.125] (measured: 0.12 on average here)
    assert 0.03 <= np.mean(offsets) <= 0.25 and max(offsets) > 0.08


def test_repeated_pixels_are_augmented_by_a_nearest_neighbour_resize():
    how = ["pixelate 0.35"] * 8 + ["pixelate 0.5"] * 2
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="resolution", how_resolution=h) for i, h in enumerate(how)])
    (down,) = [e for e in augmentation_spec(rows, TRAIN) if e["name"] == "Downscale"]
    assert down["params"]["interpolation_pair"] == {"downscale": 0, "upscale": 0}  # cv2.INTER_NEAREST
    assert down["params"]["scale_range"] == pytest.approx(list(np.percentile([0.35] * 8 + [0.5] * 2, [10, 90])))
    noise = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    out = compose([{**down, "p": 1.0}], seed=0, p=1.0)(image=noise)["image"]
    assert (out[:, 1:] == out[:, :-1]).all(-1).mean() > 0.4  # pixels repeated (noise itself: ~0)


def test_a_cause_seen_on_two_images_gets_no_transforms():
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="pipeline", how_pipeline="inverted") for i in range(2)]
                        + [_row(f"r{i}", is_ood=True, cause="resolution", noise=0.04) for i in range(3)])
    assert {e["cause"] for e in augmentation_spec(rows, TRAIN)} == {"resolution"}


def test_a_cause_on_too_few_images_is_said_so_not_called_unseen(tmp_path):
    rows = [_row(f"d/{i}.png", is_ood=True, cause="lighting", cluster=0, brightness_p50=0.1) for i in range(2)] + \
           [_row(f"ok/{i}.png") for i in range(3)]
    scan = make_scan(tmp_path, rows, [_card(0, "lighting", rows)])
    res = CliRunner().invoke(app, ["collect", str(scan), "--budget", "2"])
    assert res.exit_code == 0, res.output
    assert "augmentation: none (lighting on 2 flagged images, fewer than the 3 a range is drawn from)" in res.stderr
    md = (scan / "collect" / "augment.md").read_text()
    assert "**lighting**: no transform (seen on 2 flagged images, fewer than the 3 a range is drawn from)" in md
    assert "No transform: no lighting" not in md


def test_no_augmentation_for_causes_not_seen(tmp_path):
    rows = [_row(f"c/{i}.png", is_ood=True, cause="content", cluster=0) for i in range(4)] + \
           [_row(f"ok/{i}.png") for i in range(3)]
    scan = make_scan(tmp_path, rows, [_card(0, "content", rows)])
    res = collect(scan, budget=2)
    assert res.summary["augmentation"]["transforms"] == []
    assert load_augmentation(res.out_dir / "augment.yaml").transforms == []
    assert "content**: no transform" in (res.out_dir / "augment.md").read_text()
    assert res.plan[0]["action"].startswith("New parts/defects: label them")
    only_light = pd.DataFrame(standard_rows()[:14])
    names = {e["name"] for e in augmentation_spec(only_light, TRAIN)}
    assert names == {"OneOf"}  # brightness/gamma only: no Affine, no blur, no pipeline faults


def test_pipeline_faults_map_to_their_transforms():
    rows = pd.DataFrame([_row(f"{i}", is_ood=True, cause="pipeline", how_pipeline="channels swapped")
                         for i in range(4)] + [_row("x", is_ood=True, cause="pipeline", how_pipeline="inverted")])
    names = [e["name"] for e in augmentation_spec(rows, TRAIN)]
    assert names == ["ChannelShuffle", "InvertImg"]
    flips = pd.DataFrame([_row(f"{i}", is_ood=True, cause="pipeline", how_pipeline=h)
                          for i, h in enumerate(["mirrored"] * 3 + ["upside down"] * 2)])
    assert [e["name"] for e in augmentation_spec(flips, TRAIN)] == ["HorizontalFlip", "VerticalFlip"]
    compose(augmentation_spec(flips, TRAIN))(image=np.zeros((8, 8, 3), np.uint8))  # they instantiate


@pytest.mark.filterwarnings("ignore:Transform NoSuchTransform:UserWarning")
def test_load_augmentation_errors(tmp_path):
    with pytest.raises(InputError, match="no augmentation file"):
        load_augmentation(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    with pytest.raises(InputError, match="cannot load augmentation"):
        load_augmentation(tmp_path / "bad.yaml")


# ------------------------------------------------------------------ API surface and CLI


def test_package_exports(fake_scan):
    res = shiftbench.collect(fake_scan, budget=2, out=fake_scan / "o")
    assert isinstance(res, shiftbench.CollectResult) and len(res.selection) == 2
    assert shiftbench.build_augmentation is build_augmentation


def test_cli_prints_the_folder_and_the_plan(fake_scan, tmp_path):
    out = tmp_path / "c"
    res = invoke("collect", fake_scan, "--budget", 4, "--out", out)
    assert res.exit_code == 0, res.output
    assert res.stdout == f"{out}\n"
    assert "cluster 0 (lighting, 8 images)" in res.stderr
    assert "augmentation: lighting: RandomBrightnessContrast, RandomGamma; angle: Affine; resolution:" in res.stderr
    res = invoke("collect", fake_scan, "--budget-fraction", "0.1", "--out", out, "--json", "--no-copy", "-q")
    assert res.exit_code == 0 and res.stderr == ""
    plan = json.loads(res.stdout)
    assert plan["budget"] == 3 and len(plan["clusters"]) == 3 and not (out / "to_label").exists()


@pytest.mark.parametrize("args,message", [
    (["--budget", "0"], "positive"), ([], "give a budget"), (["--budget", "2", "--budget-fraction", "0.1"], "one of"),
    (["--budget-fraction", "2"], "(0, 1]"), ("missing", "not a scan folder")])
def test_cli_bad_input_exits_2(fake_scan, tmp_path, args, message):
    target = tmp_path / "nowhere" if args == "missing" else fake_scan
    res = invoke("collect", target, *(["--budget", "3"] if args == "missing" else args))
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and res.stderr.startswith("shiftbench: error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_help_imports_neither_albumentations_nor_pandas():
    code = ("import sys; from shiftbench.cli.main import app; "
            "bad = {'torch', 'albumentations', 'pandas'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ a real scan


def test_on_a_real_scan(tmp_path, synth):
    from conftest import save_torchscript
    ts = save_torchscript(tmp_path / "tiny.ts")
    result = shiftbench.scan(synth / "prod", workspace=tmp_path / "ws", reference=synth / "train",
                             backbone=str(ts), out=tmp_path / "scan", device="cpu", num_workers=0)
    flagged = int(result.table["is_ood"].sum())
    assert flagged > 0 and result.summary["clusters"]
    res = collect(result.out_dir, budget=4)
    assert len(res.selection) == min(4, flagged)
    assert {c["cluster"] for c in res.plan} == set(result.table.loc[result.table.is_ood, "cluster"])
    for r in res.selection.itertuples():
        assert (res.out_dir / r.copy).is_file() and Path(r.source).is_file()
    aug = load_augmentation(res.out_dir / "augment.yaml")
    img = cv2.imread(str(synth / "prod" / res.selection["path"].iloc[0]))[..., ::-1].copy()
    assert aug(image=img)["image"].shape == img.shape


def test_medoids_from_the_gram_matrix_equal_the_broadcast_distances_in_chunks():
    from shiftbench.collection.select import medoid
    from shiftbench.explain.clusters import mean_distances, medoids
    rng = np.random.default_rng(0)
    x = rng.normal(size=(301, 16))
    x[7] = 0.0  # a row at the centre is the medoid
    exact = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).mean(1)
    np.testing.assert_allclose(mean_distances(x, chunk=64), exact, rtol=1e-9, atol=1e-9)
    assert medoid(x) == 7 and medoids(x, 3)[0] == 7
    assert medoids(x, 3).tolist() == np.argsort(exact)[:3].tolist()


def test_copies_of_one_image_are_labelled_once(tmp_path):
    rows = [_row(f"l/{i}.png", is_ood=True, cause="lighting", cluster=0, brightness_p50=0.1, sha=f"h{i % 2}")
            for i in range(6)]  # six files, two images
    scan = make_scan(tmp_path, rows, [_card(0, "lighting", rows)])
    res = collect(scan, budget=4)
    chosen = res.selection["path"].tolist()
    shas = {r["path"]: r["sha"] for r in rows}
    assert len(chosen) == 2 and {shas[p] for p in chosen} == {"h0", "h1"}


@pytest.mark.parametrize("p", [0.0, 2.0, -1.0])
def test_a_bad_augmentation_probability_is_refused_first(fake_scan, tmp_path, p):
    with pytest.raises(InputError, match="probability p must be in"):
        shiftbench.collect(fake_scan, budget=3, out=tmp_path / "c", p=p)
    assert not (tmp_path / "c").exists()


def test_the_output_folder_is_absolute(fake_scan, tmp_path, monkeypatch):
    """A notebook changes directory between calls: the folder returned must still be right."""
    monkeypatch.chdir(tmp_path)
    res = shiftbench.collect(fake_scan, budget=3, out="rel_collect", copy=False)
    assert res.out_dir == tmp_path / "rel_collect" and res.out_dir.is_absolute()


def test_a_warm_light_is_named_in_the_plan():
    """A warm light on grey parts roughly doubles the colour cast (0.017 -> 0.031): under the old bar of
    training + 0.02 the plan did not say so."""
    from shiftbench.collection.plan import _lighting
    members = pd.DataFrame({"colour_cast": [0.030, 0.031, 0.033], "rb_balance": [0.008, 0.009, 0.012]})
    lines = _lighting(members, {"colour_cast": 0.017, "rb_balance": -0.012})
    assert lines == ["warm colour cast 0.031 (training 0.017)"]
    assert _lighting(members.assign(colour_cast=0.020), {"colour_cast": 0.017, "rb_balance": -0.012}) == []


def test_a_batch_within_false_alarms_is_said(fake_scan):
    summary_path = fake_scan / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert not any("ordinary variation" in n for n in collect(fake_scan, budget=5, copy=False).summary["notes"])
    summary["shift_test"] = {"expected_false_alarms": 15.0, "false_alarm_range_95": [7, 24], "excess_flagged": 2,
                             "p_value": 0.31}
    summary_path.write_text(json.dumps(summary))
    notes = collect(fake_scan, budget=5, copy=False).summary["notes"]
    assert any(n.startswith("in-distribution images would give 15 false alarms (95%: 7-24): no more flags than "
                            "false alarms explain (p = 0.31), so the flagged images may be ordinary variation")
               for n in notes), notes
