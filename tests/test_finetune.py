"""shiftbench finetune: the gate's two outcomes, the outputs, lineage, determinism and bad input.

The toy shift: the parent is trained on sharp shapes; "production" shows the
same shapes pixelated (8 x 8 blocks), which the parent calls all one class.
Labelled pixelated images plus a matching Downscale augmentation fix that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from shiftbench.cli.main import app
from shiftbench.embedding import load_backbone
from shiftbench.training import card, finetune, predict, train

CLASSES = ["circle", "cross", "square"]
FAST = dict(device="cpu", num_workers=1)
PIXELS = 8  # the production camera's effective resolution, in pixels across


def make_shapes(root: Path, n: int, seed: int, pixelate: bool = False) -> Path:
    """root/<shape>/<shape>_NN.png, 48 px: a bright circle, cross or square on dark noise."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
            cx, cy = (int(v) for v in rng.integers(16, 32, 2))
            colour = tuple(int(v) for v in rng.integers(150, 256, 3))
            if name == "circle":
                cv2.circle(img, (cx, cy), 12, colour, -1)
            elif name == "square":
                cv2.rectangle(img, (cx - 12, cy - 12), (cx + 12, cy + 12), colour, -1)
            else:
                cv2.line(img, (cx - 12, cy - 12), (cx + 12, cy + 12), colour, 3)
                cv2.line(img, (cx - 12, cy + 12), (cx + 12, cy - 12), colour, 3)
            if pixelate:
                img = cv2.resize(cv2.resize(img, (PIXELS, PIXELS), interpolation=cv2.INTER_AREA), (48, 48),
                                 interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / name / f"{name}_{i:02d}.png"), img)
    return root


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def sha(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Parent checkpoint (lite0, last block, 64 px), pixelated production images, augment.yaml, a scan."""
    import albumentations as A
    root = tmp_path_factory.mktemp("ft")
    data, prod = make_shapes(root / "data", 12, seed=0), make_shapes(root / "prod", 8, seed=1, pixelate=True)
    parent = train(data, out=root / "parent", epochs=3, size=64, **FAST)
    scale = PIXELS / 64  # images are resized to 64 px before augmentation
    aug = A.Compose([A.Downscale(scale_range=(0.9 * scale, 1.1 * scale), p=0.5,
                                 interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST})])
    A.save(aug, str(root / "augment.yaml"), data_format="yaml")
    # a scan of the production folder: squares not flagged, the rest one cluster; one row's sha lost
    rows = [{"path": p.relative_to(prod).as_posix(), "status": "ok", "is_ood": "square" not in p.name,
             "cluster": -1 if "square" in p.name else 0, "cause": "" if "square" in p.name else "resolution",
             "sha": "" if p.name == "circle_00.png" else sha(p)} for p in sorted(prod.rglob("*.png"))]
    rows.append({"path": "elsewhere/x.png", "status": "ok", "is_ood": True, "cluster": 1, "cause": "blur",
                 "sha": "0" * 32})  # a failure cluster with no labelled image
    (root / "scan").mkdir()
    pd.DataFrame(rows).to_csv(root / "scan" / "images.csv", index=False)
    return {"root": root, "data": data, "prod": prod, "parent": parent, "augment": root / "augment.yaml",
            "scan": root / "scan"}


def run_cli(s: dict, out: Path, *extra):
    return invoke("finetune", s["parent"].checkpoint, "--train", s["data"], "--new", s["prod"], "--augment",
                  s["augment"], "--epochs", 3, "--device", "cpu", "--workers", 1, "--out", out, *extra)


@pytest.fixture(scope="module")
def promoted(setup):
    out = setup["root"] / "promoted"
    res = run_cli(setup, out, "--scan", setup["scan"])
    return res, out


@pytest.fixture(scope="module")
def refused(setup):
    out = setup["root"] / "refused"
    res = run_cli(setup, out, "--max-regression=-100", "--json")  # original accuracy would have to rise 100 pt
    return res, out


def load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


# ------------------------------------------------------------------ the gate


def test_promotes_when_the_shift_is_learnt(promoted):
    res, out = promoted
    assert res.exit_code == 0, res.output
    assert res.stdout == f"{out.resolve()}\n"
    m = load(out, "metrics.json")
    prod, orig = m["evaluation"]["production_holdout"], m["evaluation"]["original_val"]
    assert prod["before"]["accuracy"] <= 0.5 < prod["after"]["accuracy"]  # the parent fails on the shift
    assert orig["after"]["correct"] >= orig["before"]["correct"]
    assert m["gate"]["promoted"] and load(out, "model.json")["finetune"]["promoted"]
    assert "PROMOTED" in res.stderr and "held-out production" in res.stderr


def test_refused_by_the_gate(refused):
    res, out = refused
    assert res.exit_code == 1, res.output
    printed = json.loads(res.stdout)  # --json: metrics.json on stdout
    assert printed["out_dir"] == str(out.resolve()) and printed["gate"] == load(out, "metrics.json")["gate"]
    gate = printed["gate"]  # the checkpoint is written, for inspection, but not promoted
    assert not gate["promoted"] and not load(out, "model.json")["finetune"]["promoted"]
    assert gate["max_regression_points"] == -100 and not gate["original_within_tolerance"]
    assert "beyond" in gate["reason"] and "REFUSED" in res.stderr


def test_same_seed_same_model(promoted, refused):
    """The gate and --scan change the report, not the training: same seed, same bytes."""
    a, b = promoted[1], refused[1]
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ma, mb = load(a, "metrics.json"), load(b, "metrics.json")
    assert ma["data"]["new"]["holdout"] == mb["data"]["new"]["holdout"]
    assert ma["evaluation"] == mb["evaluation"]


# ------------------------------------------------------------------ outputs


def test_splits_and_lineage(promoted, setup):
    out, parent = promoted[1], setup["parent"]
    meta = load(out, "model.json")
    assert meta["format"] == "shiftbench-checkpoint" and meta["classes"] == CLASSES
    assert meta["trainable"] == "last" and meta["preprocess"] == parent.meta["preprocess"]
    lin = meta["lineage"]
    assert lin["parent"] == {"path": str(parent.checkpoint),
                             "digest": f"checkpoint-{parent.meta['weights_sha256']}"}
    assert meta["split"]["val"] == parent.meta["split"]["val"]  # the parent's validation images, untouched
    assert lin["val_files_sha"] == parent.meta["lineage"]["val_files_sha"]
    holdout = {f"{setup['prod'].resolve()}/{p}" for p in load(out, "metrics.json")["data"]["new"]["holdout"]}
    assert set(meta["split"]["holdout"]) == holdout and not holdout & set(meta["split"]["train"])
    assert not set(meta["split"]["val"]) & set(meta["split"]["train"])
    assert lin["n_holdout"] == len(holdout) == 6 and lin["n_new"] == 18  # 30% of 8 per class held out: 2
    assert lin["n_train"] == parent.meta["lineage"]["n_train"] + 18
    assert meta["training"]["lr"] == 5e-4 and meta["training"]["augment"]["transform"]["transforms"][0][
        "__class_fullname__"] == "Downscale"
    table = predict(out, setup["prod"], device="cpu", num_workers=0)  # loads as any checkpoint
    assert (table.prediction == table.path.str.split("/").str[0]).mean() > 0.5


def test_metrics_json(promoted):
    out = promoted[1]
    m = load(out, "metrics.json")
    assert m["device"] == "cpu" and m["amp"] is False and m["training"]["epochs"] == 3
    # 18 new images against 30 original ones already make more than new_share: drawn once each
    t = m["training"]
    assert t["new_share"] == 0.2 and t["new_draws_per_epoch"] == m["data"]["new"]["n_finetune"] == 18
    assert m["data"]["original"]["val_matches_checkpoint"] and m["data"]["original"]["n_val"] == 6
    assert m["weights_sha256"] == load(out, "model.json")["weights_sha256"]
    for split in m["evaluation"].values():
        for side in ("before", "after"):
            e = split[side]
            assert e["n"] == split["n"] and e["accuracy"] == pytest.approx(e["correct"] / e["n"])
            assert sum(c["n"] for c in e["per_class"].values()) == split["n"]
    g = m["gate"]
    assert g["production_after"] == m["evaluation"]["production_holdout"]["after"]["accuracy"]
    assert g["original_drop_points"] == pytest.approx(100 * (g["original_before"] - g["original_after"]))
    assert set(m["timings"]) >= {"load_s", "fit_s", "total_s"} and m["timings"]["total_s"] > 0
    # clusters: matched by content hash, and by file name where the hash is missing
    clusters = m["clusters"]
    assert set(clusters) <= {"-1", "0"} and sum(c["n"] for c in clusters.values()) == 6
    assert clusters["0"]["cause"] == "resolution" and clusters["-1"]["cause"] == "not flagged"
    assert clusters["-1"]["n"] == 2  # the held-out squares
    assert m["unmeasured_clusters"] == [{"cluster": "1", "cause": "blur", "n_scan": 1}]
    assert m["failures"] == [{"cluster": k, **v} for k, v in clusters.items() if v["after"] < m["failure_level"]]


def test_model_card_matches_the_metrics(promoted):
    out = promoted[1]
    m, card = load(out, "metrics.json"), (out / "model_card.md").read_text()
    for heading in ("## Intended use", "## Data lineage", "## Metrics", "## Known failure clusters", "## Gate"):
        assert heading in card
    for key, name in (("original_val", "original validation"), ("production_holdout", "held-out production")):
        e = m["evaluation"][key]
        b, a = e["before"]["accuracy"], e["after"]["accuracy"]
        assert f"| {name} | {e['n']} | {b:.3f} | {a:.3f} | {100 * (a - b):+.1f} |" in card
    for c, v in m["clusters"].items():
        assert f"| {c} | {v['cause']} | {v['n']} | {v['before']:.3f} | {v['after']:.3f} |" in card
    assert "- cluster 1 (blur): 1 images in the scan" in card
    d = m["data"]
    assert d["new"]["holdout_files_sha"] in card and d["original"]["val_files_sha"] in card
    assert m["parent"]["weights_sha256"] in card and m["weights_sha256"] in card
    assert "**Gate: PROMOTED.**" in card and m["gate"]["reason"] in card
    assert "18 draws of new images per epoch (new share 0.2)" in card


def test_new_images_drawn_to_their_share():
    from shiftbench.training.finetune import _draws
    d = _draws(900, 14, 0.2)
    assert (d[:900] == 1).all() and (d[900:] == 16).all()  # round(0.25 * 900 / 14)
    assert d[900:].sum() / d.sum() == pytest.approx(0.2, abs=0.005)
    assert (_draws(10, 100, 0.2) == 1).all() and (_draws(900, 14, 0.0) == 1).all()  # never less than once
    assert len(_draws(5, 0, 0.2)) == 5


def test_fit_draws_each_image_as_often_as_asked(monkeypatch):
    """``draws`` sets how often an image is seen per epoch: 0 leaves it out, 3 triples it."""
    import importlib
    fitmod = importlib.import_module("shiftbench.training.fit")
    from shiftbench.training.data import LabeledImages
    from shiftbench.training.model import build_classifier, load_source
    rng = np.random.default_rng(0)
    src = load_source("lite0", size=32, weights=None)
    n, draws = 6, np.array([0, 3, 1, 1, 1, 1])
    data = LabeledImages(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), np.array([0, 1] * 3), ["a", "b"],
                         [f"{i}.png" for i in range(n)], [str(i) for i in range(n)])
    epochs_seen, real_epoch = [], fitmod._train_epoch

    def spy(forward, opt, sched, scaler, autocast, batches, y, tick):
        epochs_seen.append(np.concatenate([idx for idx, _ in batches]))
        return real_epoch(forward, opt, sched, scaler, autocast, batches, y, tick)

    monkeypatch.setattr(fitmod, "_train_epoch", spy)
    totals = []
    fitmod.fit(build_classifier(src, data.classes, 0), data, None, preprocess=src.preprocess, trainable="head",
               epochs=2, batch_size=4, device="cpu", draws=draws, progress=lambda done, total: totals.append(total))
    assert len(epochs_seen) == 2
    for drawn in epochs_seen:
        np.testing.assert_array_equal(np.bincount(drawn, minlength=n), draws)
    assert not np.array_equal(epochs_seen[0], epochs_seen[1])  # reshuffled each epoch
    assert totals[-1] == 2 * 6 + 2 * 7  # features cached for each image and its flip, then two epochs of 7 draws


def test_gate_rule_edges():
    def block(before, after, n=10):
        return {"n": n, "before": {"accuracy": before / n, "correct": before},
                "after": {"accuracy": after / n, "correct": after}}
    assert card.gate(block(9, 9), block(5, 6), 1.0)["promoted"]
    assert not card.gate(block(9, 9), block(6, 6), 1.0)["promoted"]  # production must improve strictly
    assert card.gate(block(9, 8), block(5, 6), 10.0)["promoted"]  # a drop of exactly the tolerance passes
    refused = card.gate(block(9, 8), block(5, 6), 9.9)
    assert not refused["promoted"] and refused["original_drop_points"] == 10.0
    perfect = card.gate(block(9, 9), block(10, 10), 1.0)  # nothing to improve on: say what to do
    assert not perfect["promoted"] and "label more images" in perfect["reason"]
    assert "label more" not in card.gate(block(9, 9), block(5, 6), 1.0)["reason"]


def test_clusters_matched_by_content_then_unique_name():
    scan = pd.DataFrame({"path": ["a/x.png", "b/x.png", "c/y.png", "d/z.png"], "cluster": ["0", "1", "2", "-1"],
                         "cause": ["dark", "blur", "glare", ""], "sha": ["s0", "s1", "", "s3"]})
    found, causes = card.match_clusters(scan, ["to_label/001_x.png", "q/x.png", "y.png", "w.png"],
                                        ["s1", "other", "other", "s3"])
    assert found == ["1", card.UNMATCHED, "2", "-1"]  # x.png is ambiguous by name; y.png unique
    assert causes == {"1": "blur", "2": "glare", "-1": "not flagged", card.UNMATCHED: ""}


def test_a_cluster_of_two_modes_is_reported_mode_by_mode(tmp_path):
    pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png", "e.png"], "cluster": [0, 0, 1, 1, -1],
                  "mode": [0, 1, 0, 0, -1], "cause": ["lighting", "lighting", "angle", "angle", "none"],
                  "sha": ["s0", "s1", "s2", "s3", "s4"]}).to_csv(tmp_path / "images.csv", index=False)
    scan = card.read_scan(tmp_path)
    assert scan["cluster"].tolist() == ["0.0", "0.1", "1", "1", "-1"]
    found, causes = card.match_clusters(scan, ["x.png", "y.png", "z.png"], ["s1", "s2", "s0"])
    assert found == ["0.1", "1", "0.0"] and causes == {"0.0": "lighting", "0.1": "lighting", "1": "angle"}
    assert sorted(["1", "0.1", "-1", "0.0", "10"], key=card._cluster_order) == ["-1", "0.0", "0.1", "1", "10"]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["unknown_class", "missing_new", "bad_yaml", "not_a_pipeline", "not_a_checkpoint",
                                  "holdout", "new_share", "wrong_train", "csv_unknown_label", "out_is_parent", "lr"])
def test_bad_input_exits_2(case, setup, tmp_path):
    new, ckpt, train_dir, extra = setup["prod"], setup["parent"].checkpoint, setup["data"], []
    augment = setup["augment"]
    if case == "unknown_class":
        new = shutil.copytree(setup["prod"], tmp_path / "new")
        shutil.copytree(new / "circle", new / "triangle")
    elif case == "missing_new":
        new = tmp_path / "nowhere"
    elif case == "bad_yaml":
        augment = tmp_path / "bad.yaml"
        augment.write_text("transform: [unclosed\n")
    elif case == "not_a_pipeline":
        augment = tmp_path / "list.yaml"
        augment.write_text("- just\n- a list\n")
    elif case == "not_a_checkpoint":
        ckpt = setup["data"]
    elif case == "holdout":
        extra = ["--holdout", 1.0]
    elif case == "lr":
        extra = ["--lr", 0]
    elif case == "new_share":
        extra = ["--new-share", 1.0]  # nothing but new images: the original ones would never be seen
    elif case == "wrong_train":  # none of the parent's validation images is there (other names)
        train_dir = tmp_path / "renamed"
        for p in setup["data"].rglob("*.png"):
            (train_dir / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, train_dir / p.parent.name / f"x{p.name}")
    elif case == "csv_unknown_label":
        rows = [{"path": p.relative_to(new).as_posix(), "label": "circle"} for p in sorted(new.rglob("*.png"))]
        rows[0]["label"] = "hexagon"
        pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
        extra = ["--new-labels", tmp_path / "labels.csv"]
    out = setup["parent"].checkpoint if case == "out_is_parent" else tmp_path / "out"
    before = (out / "model.json").read_bytes() if case == "out_is_parent" else None
    res = invoke("finetune", ckpt, "--train", train_dir, "--new", new, "--augment", augment, "--out", out,
                 "--device", "cpu", "--epochs", 1, *extra)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("shiftbench: error:") and len(res.stderr.strip().splitlines()) == 1
    assert (out / "model.json").read_bytes() == before if before else not out.exists()
    if case in ("unknown_class", "csv_unknown_label"):
        assert "not among the checkpoint's" in res.stderr and "shiftbench train" in res.stderr


# ------------------------------------------------------------------ API, devices


def test_api_defaults_to_the_recorded_training_folder(setup, tmp_path, monkeypatch):
    """No train_dir: the checkpoint's data_root; default out under the workspace; one-class new data."""
    new = tmp_path / "new"
    shutil.copytree(setup["prod"] / "cross", new / "cross")  # one class is enough for new images
    monkeypatch.chdir(tmp_path)
    res = finetune(setup["parent"].checkpoint, new, epochs=1, trainable="head", **FAST)
    assert res.out_dir.parent == (tmp_path / ".shiftbench" / "finetune").resolve()
    assert res.metrics["data"]["original"]["root"] == str(setup["data"].resolve())
    assert res.metrics["data"]["new"]["per_class"]["cross"] == {"finetune": 6, "holdout": 2}
    assert res.metrics["training"]["lr"] == 1.5e-3 and res.metrics["training"]["augment_file"] is None
    assert res.promoted == res.metrics["gate"]["promoted"]
    assert sorted(os.listdir(res.out_dir)) == ["metrics.json", "model.json", "model.safetensors", "model_card.md"]


def test_the_same_command_resumes_an_interrupted_finetune(setup, tmp_path, monkeypatch):
    """Without --out too: the state waits under WORKSPACE/finetune and the rerun goes on from it."""
    monkeypatch.chdir(tmp_path)
    one = []

    def progress(done, total):
        if one:
            raise KeyboardInterrupt

    opts = dict(epochs=2, trainable="head", seed=5, **FAST)
    with pytest.raises(KeyboardInterrupt):
        finetune(setup["parent"].checkpoint, setup["prod"], progress=progress,
                 log=lambda line: one.append(1) if "epoch   1/" in line else None, **opts)
    parent = tmp_path / ".shiftbench" / "finetune"
    assert len(list(parent.glob(".resume-*.pt"))) == 1
    lines = []
    res = finetune(setup["parent"].checkpoint, setup["prod"], log=lines.append, **opts)
    assert any(line.startswith("resuming after epoch 1") for line in lines)
    assert not list(parent.glob(".resume-*.pt")) and len(res.metrics["training"]["history"]) == 2
    again = finetune(setup["parent"].checkpoint, setup["prod"], out=tmp_path / "again", **opts)
    assert (again.out_dir / "model.safetensors").read_bytes() == (res.out_dir / "model.safetensors").read_bytes()


def test_new_images_copied_into_the_training_folder_are_not_trained_on(setup, tmp_path):
    """The usual workflow (labelled images merged into the training data) must not leak the holdout."""
    train_dir = shutil.copytree(setup["data"], tmp_path / "train")
    for p in setup["prod"].rglob("*.png"):
        shutil.copy(p, train_dir / p.parent.name / f"new_{p.name}")
    logged = []
    res = finetune(setup["parent"].checkpoint, setup["prod"], train_dir=train_dir, out=tmp_path / "out", epochs=1,
                   trainable="head", log=logged.append, **FAST)
    meta = json.loads((res.out_dir / "model.json").read_text())
    trained = {sha(Path(p)) if os.path.isabs(p) else sha(train_dir / p) for p in meta["split"]["train"]}
    held = {sha(Path(p)) for p in meta["split"]["holdout"]}
    assert len(held) == 6 and not held & trained
    assert res.metrics["training"]["copies_of_held_out_not_trained"] == 6
    assert any("copies of held-out ones" in w for w in res.metrics["warnings"])
    assert any(line.startswith("warning:") and "copies" in line for line in logged)
    card_text = (res.out_dir / "model_card.md").read_text()
    assert "**Warning:** 6 original training images are copies of held-out ones" in card_text


def test_new_images_that_copy_the_original_validation_images_are_not_trained_on(setup, tmp_path):
    """Labelled production images that happen to be copies of the checkpoint's validation images would
    inflate the original accuracy that the gate guards."""
    new_dir = shutil.copytree(setup["prod"], tmp_path / "new")
    parent = json.loads((Path(setup["parent"].checkpoint) / "model.json").read_text())
    val = [setup["data"] / p for p in parent["split"]["val"]][:3]
    for p in val:
        shutil.copy(p, new_dir / p.parent.name / f"val_{p.name}")
    res = finetune(setup["parent"].checkpoint, new_dir, train_dir=setup["data"], out=tmp_path / "out", epochs=1,
                   trainable="head", **FAST)
    meta = json.loads((res.out_dir / "model.json").read_text())
    trained = {sha(Path(p)) if os.path.isabs(p) else sha(setup["data"] / p) for p in meta["split"]["train"]}
    held = {sha(Path(p)) for p in meta["split"]["holdout"]}
    copied_in_training_part = {sha(p) for p in val} - held  # (those drawn into the holdout are no leak)
    assert copied_in_training_part and not copied_in_training_part & trained
    assert res.metrics["training"]["copies_of_held_out_not_trained"] == len(copied_in_training_part)
    assert any("new images are copies of held-out ones" in w for w in res.metrics["warnings"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetunes_on_cuda_with_amp(setup, tmp_path):
    res = finetune(setup["parent"].checkpoint, setup["prod"], train_dir=setup["data"], augment=setup["augment"],
                   out=tmp_path / "gpu", epochs=3, device="cuda", amp=True)
    assert res.metrics["device"].startswith("cuda") and res.metrics["amp"] is True
    assert res.metrics["evaluation"]["production_holdout"]["after"]["accuracy"] > 0.5
    bb = load_backbone(str(res.out_dir), device="cpu")  # the checkpoint reads back on the CPU
    assert bb.classes == CLASSES
