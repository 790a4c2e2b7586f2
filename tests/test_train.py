"""shiftbench train: learning, checkpoint format and round trip, lineage, determinism, CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import unreadable_corpus, write_files
from typer.testing import CliRunner

import shiftbench
from shiftbench.cli.main import app
from shiftbench.embedding import load_backbone, resize_for_model
from shiftbench.images import InputError, read_image
from shiftbench.training import (build_classifier, load_labeled, load_source, plan_trainable, predict,
                                 stratified_split, train)

CLASSES = ["circle", "cross", "square"]
FAST = dict(size=64, device="cpu", num_workers=1)  # 64 px keeps every training under a few seconds


def make_toy(root: Path, n: int = 12, size: int = 48, seed: int = 0) -> Path:
    """root/<shape>/NN.png: a filled circle, a cross or a square on dark noise, at a random spot."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
            r, colour = size // 4, tuple(int(v) for v in rng.integers(150, 256, 3))
            if name == "circle":
                cv2.circle(img, (cx, cy), r, colour, -1)
            elif name == "square":
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
            else:
                cv2.line(img, (cx - r, cy - r), (cx + r, cy + r), colour, 3)
                cv2.line(img, (cx - r, cy + r), (cx + r, cy - r), colour, 3)
            cv2.imwrite(str(root / name / f"{i:02d}.png"), img)
    return root


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def model_input(root: Path, paths: list[str], bb) -> torch.Tensor:
    """The normalised batch that embedding (extract.py) would feed ``bb``."""
    pixels = np.stack([resize_for_model(read_image(root / p), bb.preprocess) for p in paths])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    mean = torch.tensor(bb.preprocess.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(bb.preprocess.std).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """lite0 (ImageNet), last block + classifier, 3 epochs at 64 px."""
    return train(toy, out=tmp_path_factory.mktemp("ckpt") / "ckpt", epochs=3, **FAST)


# ------------------------------------------------------------------ learning and the checkpoint


def test_learns_a_separable_toy_set(trained, toy):
    assert trained.classes == CLASSES
    assert trained.metrics["val_accuracy"] >= 5 / 6  # 6 validation images, chance is 1/3
    table = predict(trained.checkpoint, toy, device="cpu", num_workers=0)
    truth = table.path.str.split("/").str[0]
    assert (table.prediction == truth).mean() >= 0.9  # mostly training images: should be learnt
    assert table.confidence.between(1 / 3, 1).all() and (table.error == "").all()


def test_checkpoint_format(trained, toy):
    ckpt = trained.checkpoint
    assert sorted(os.listdir(ckpt)) == ["model.json", "model.safetensors"]
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["format"] == "shiftbench-checkpoint" and meta["version"] == 1
    assert meta["arch"] == "lite0" and meta["trainable"] == "last" and meta["classes"] == CLASSES
    assert meta["preprocess"] == {"size": 64, "resize": "squash", "mean": [127 / 255] * 3,
                                  "std": [128 / 255] * 3}
    lin = meta["lineage"]
    assert lin["data_root"] == str(toy.resolve()) and lin["parent"] is None and lin["seed"] == 0
    assert (lin["n_train"], lin["n_val"]) == (30, 6)  # 20% of each class held out: 2 of 12
    split = meta["split"]
    assert len(split["train"]) == 30 and len(split["val"]) == 6 and not set(split["train"]) & set(split["val"])
    assert sorted(p.split("/")[0] for p in split["val"]) == sorted(CLASSES * 2)
    m = meta["metrics"]
    assert set(m) >= {"val_accuracy", "val_loss", "per_class_accuracy", "epochs", "best_epoch", "history"}
    assert set(m["per_class_accuracy"]) == set(CLASSES) and len(m["history"]) == m["epochs"] <= 3
    assert m["val_accuracy"] == m["history"][m["best_epoch"] - 1]["val_accuracy"]
    from safetensors.torch import load_file  # tensors only: nothing to unpickle
    state = load_file(str(ckpt / "model.safetensors"))
    assert state["_fc.weight"].shape == (3, 1280)
    assert meta["weights_sha256"] == shiftbench.embedding.backbones.file_digest(ckpt / "model.safetensors")
    for name in ("model.json", "model.safetensors"):  # ordinary files, not mkstemp's 0600
        assert stat.S_IMODE(os.stat(ckpt / name).st_mode) & 0o044 == 0o044


def test_checkpoint_loads_as_a_backbone_with_the_same_logits(trained, toy):
    bb = load_backbone(str(trained.checkpoint), device="cpu")
    assert bb.classes == CLASSES and bb.preprocess.size == 64
    assert bb.name == "checkpoint:lite0" and trained.meta["weights_sha256"] in bb.weights_id
    assert bb.views[0] == ("penultimate", 1280)
    x = model_input(toy, ["circle/00.png", "cross/05.png", "square/11.png"], bb)
    feats, logits = bb.embed(x)
    with torch.inference_mode():
        expected = trained.model.cpu().eval()(x)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bb.model._fc(feats[:, :1280]), logits, rtol=1e-4, atol=1e-4)
    same = load_backbone(str(trained.checkpoint / "model.json"), device="cpu", layers=False)
    assert same.weights_id == bb.weights_id


def test_checkpoint_indexes_like_any_backbone(trained, toy, tmp_path):
    bank = shiftbench.index(toy, workspace=tmp_path / "ws", backbone=str(trained.checkpoint / "model.json"),
                            device="cpu", num_workers=0)
    assert bank.meta["identity"]["preprocess"]["size"] == 64
    assert bank.meta["identity"]["weights"] == f"checkpoint-{trained.meta['weights_sha256']}"


def test_damaged_checkpoint_refused(trained, tmp_path):
    bad = shutil.copytree(trained.checkpoint, tmp_path / "bad")
    with open(bad / "model.safetensors", "r+b") as f:  # same size, other bytes
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(shiftbench.embedding.BackboneError, match="does not match"):
        load_backbone(str(bad), device="cpu")


# ------------------------------------------------------------------ lineage, determinism, inputs


def test_lineage_follows_the_data_and_unreadable_files_are_skipped(toy, tmp_path):
    data = shutil.copytree(toy, tmp_path / "data")
    write_files(data / "circle", unreadable_corpus())
    opts = dict(epochs=1, trainable="head", **FAST)
    first = train(data, out=tmp_path / "a", **opts)
    skipped = {s["path"]: s["error"] for s in first.meta["skipped"]}
    assert set(skipped) == {f"circle/{n}" for n in unreadable_corpus()}
    assert "empty" in skipped["circle/empty.jpg"] and "truncated" in skipped["circle/truncated.png"]
    assert first.meta["lineage"]["n_train"] + first.meta["lineage"]["n_val"] == 36
    val_file = first.meta["split"]["val"][0]
    img = cv2.imread(str(data / val_file))
    cv2.imwrite(str(data / val_file), 255 - img)  # same path, new content
    second = train(data, out=tmp_path / "b", **opts)
    a, b = first.meta["lineage"], second.meta["lineage"]
    assert a["train_files_sha"] == b["train_files_sha"] and a["val_files_sha"] != b["val_files_sha"]


def test_same_seed_same_split_and_weights(toy, tmp_path):
    runs = [train(toy, out=tmp_path / name, seed=7, epochs=1, **FAST) for name in "ab"]
    assert runs[0].meta["split"] == runs[1].meta["split"]
    data = load_labeled(toy, load_source("lite0", size=64).preprocess)
    val = {seed: [data.paths[i] for i in stratified_split(data, 0.2, seed)[1]] for seed in (7, 8)}
    assert val[7] == runs[0].meta["split"]["val"] and val[8] != val[7]
    sa, sb = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_an_interrupted_training_resumes_to_the_same_weights(toy, tmp_path):
    """Stopped in its third epoch, the same call goes on after epoch 2 and ends where an unbroken run does."""
    opts = dict(epochs=4, trainable="all", seed=3, **FAST)
    whole = train(toy, out=tmp_path / "whole", **opts)

    def interrupted(out, **kw):  # Ctrl-C in the third epoch, once the second's line is out
        two = []

        def progress(done, total):
            if two:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(toy, out=out, progress=progress, log=lambda line: two.append(1) if "epoch   2/" in line else None,
                  **{**opts, **kw})

    interrupted(tmp_path / "broken")
    states = list((tmp_path / "broken").glob(".resume-*.pt"))
    assert len(states) == 1 and not (tmp_path / "broken" / "model.json").exists()
    lines = []
    resumed = train(toy, out=tmp_path / "broken", log=lines.append, **opts)
    assert any(line.startswith("resuming after epoch 2") for line in lines)
    assert [h["epoch"] for h in resumed.fit.history] == [1, 2, 3, 4]
    assert [h["val_loss"] for h in resumed.fit.history] == [h["val_loss"] for h in whole.fit.history]
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not list((tmp_path / "broken").glob(".resume-*.pt"))  # removed once the checkpoint is written
    # another setting is another run: the state of this one is not used
    interrupted(tmp_path / "c")
    lines = []
    train(toy, out=tmp_path / "c", log=lines.append, **{**opts, "seed": 4})
    assert not any(line.startswith("resuming") for line in lines)
    assert not list((tmp_path / "c").glob(".resume-*.pt"))  # the changed run's stale state went too
    # a damaged state is said and costs its epochs, not the run
    interrupted(tmp_path / "d")
    next((tmp_path / "d").glob(".resume-*.pt")).write_bytes(b"not a torch file")
    lines = []
    again = train(toy, out=tmp_path / "d", log=lines.append, **opts)
    assert any(line.startswith("cannot read the saved state") for line in lines)
    assert all(torch.equal(sa[k], again.model.state_dict()[k]) for k in sa)


def test_a_state_that_cannot_be_saved_does_not_stop_training(toy, tmp_path, monkeypatch):
    from shiftbench.training import resume

    def full_disk(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(resume.torch, "save", full_disk)
    lines = []
    res = train(toy, out=tmp_path / "out", epochs=2, log=lines.append, **FAST)
    assert (res.checkpoint / "model.json").is_file() and len(res.fit.history) == 2
    assert sum(line.startswith("warning: cannot save the training state") for line in lines) == 1


def test_labels_csv_and_parent_checkpoint(trained, toy, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for p in sorted(toy.rglob("*.png")):
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
        rows.append({"path": f"{p.parent.name}_{p.name}", "label": p.parent.name})
    rows[0]["label"] = ""  # unlabelled: skipped, not a class
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    res = train(flat, labels=tmp_path / "labels.csv", backbone=str(trained.checkpoint), out=tmp_path / "child",
                epochs=1, trainable="head", **FAST)
    assert res.classes == CLASSES and res.meta["skipped"] == [{"path": rows[0]["path"], "error": "no label"}]
    assert res.meta["lineage"]["parent"] == {"path": str(trained.checkpoint),
                                             "digest": f"checkpoint-{trained.meta['weights_sha256']}"}
    assert res.meta["preprocess"]["size"] == 64  # the parent's input size carries over
    assert res.metrics["val_accuracy"] >= 5 / 6  # started from a trained head


def test_trainable_layers_follow_the_forward_pass():
    lite0 = build_classifier(load_source("lite0", "none"), CLASSES)
    assert plan_trainable(lite0, "head", 64) == ("_fc", {"_fc"})
    cut, names = plan_trainable(lite0, "last", 64)
    assert cut == "_blocks.15" and {"_blocks.15", "_conv_head", "_bn1", "_dropout", "_fc"} <= names
    assert "_blocks.14" not in names
    import torchvision
    resnet = torchvision.models.resnet18(num_classes=3)
    cut, names = plan_trainable(resnet, "last", 64)
    assert cut == "layer4.1" and "fc" in names and "layer4.0" not in names


def test_augment_pipeline_runs_end_to_end(toy, tmp_path):
    import albumentations as A
    calls = []

    def spy(img, **_):
        calls.append(img.shape)
        return img
    aug = A.Compose([A.RandomBrightnessContrast(p=1), A.Lambda(name="spy", image=spy)])
    res = train(toy, out=tmp_path / "aug", epochs=1, trainable="head", augment=aug, **FAST)
    # (tried once first on a dummy image of the input size: a bad pipeline fails before the loading)
    assert not res.fit.cached and len(calls) > 1 and set(calls) == {(64, 64, 3)}
    assert res.meta["training"]["augment"]["transform"]["__class_fullname__"].endswith("Compose")


def test_an_augmentation_file_trains_and_the_callers_random_state_is_kept(toy, tmp_path):
    """``augment`` may be the YAML file ``collect`` writes, as for finetune; and training seeds torch for
    itself without changing the caller's random numbers."""
    import albumentations as A
    path = tmp_path / "augment.yaml"
    A.save(A.Compose([A.RandomBrightnessContrast(p=1)]), str(path), data_format="yaml")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    res = train(toy, out=tmp_path / "aug", epochs=1, trainable="head", augment=path, **FAST)
    assert torch.equal(torch.rand(3), expected)
    assert res.meta["training"]["augment"]["transform"]["transforms"][0]["__class_fullname__"].endswith(
        "RandomBrightnessContrast")
    with pytest.raises(InputError, match="no such file"):
        train(toy, out=tmp_path / "x", epochs=1, augment=tmp_path / "nope.yaml", **FAST)
    crop = A.Compose([A.RandomCrop(48, 48)])  # larger than any fixed dummy image, smaller than the input size
    assert train(toy, out=tmp_path / "crop", epochs=1, trainable="head", augment=crop, **FAST).checkpoint.is_dir()


# ------------------------------------------------------------------ CLI


def test_cli_prints_the_checkpoint_or_json(toy, tmp_path):
    res = invoke("train", toy, "--out", tmp_path / "c", "--size", 64, "--epochs", 1, "--trainable", "head",
                 "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert res.stdout == f"{(tmp_path / 'c').resolve()}\n"
    assert "validation accuracy" in res.stderr
    res = invoke("train", toy, "--out", tmp_path / "j", "--size", 64, "--epochs", 1, "--trainable", "head",
                 "--device", "cpu", "--json", "--quiet")
    assert res.exit_code == 0 and res.stderr == ""
    out = json.loads(res.stdout)
    assert out["checkpoint"] == str((tmp_path / "j").resolve()) and out["classes"] == CLASSES
    assert 0 <= out["metrics"]["val_accuracy"] <= 1
    res = invoke("train", toy, "--out", tmp_path / "n", "--size", 64, "--epochs", 1, "--trainable", "head",
                 "--device", "cpu", "--val-fraction", 0)
    assert res.exit_code == 0 and "warning: no validation images: `finetune` will refuse" in res.stderr
    one = shutil.copytree(toy, tmp_path / "one")  # a class with a single image has nothing to validate on
    for p in sorted((one / "cross").iterdir())[1:]:
        p.unlink()
    lines = []
    train(one, out=tmp_path / "o", epochs=1, trainable="head", log=lines.append, **FAST)
    assert any(line.startswith("warning: no validation image for class cross") for line in lines)


@pytest.mark.parametrize("case", ["empty", "flat", "one_class", "bad_trainable", "val_fraction", "missing", "lr"])
def test_cli_bad_input_exits_2(case, toy, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    args = []
    if case == "flat":
        shutil.copy(toy / "circle/00.png", data / "a.png")
    elif case == "one_class":
        shutil.copytree(toy / "circle", data / "circle")
    elif case in ("bad_trainable", "val_fraction", "lr"):
        data = toy
        args = {"bad_trainable": ["--trainable", "everything"], "val_fraction": ["--val-fraction", "1.5"],
                "lr": ["--lr", "-1"]}[case]
    elif case == "missing":
        data = tmp_path / "nowhere"
    res = invoke("train", data, "--out", tmp_path / "c", "--device", "cpu", *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("shiftbench: error:") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
    if case == "flat":  # the stray file is named: one of them is enough to lose every label
        assert "directly in the folder, e.g. a.png" in res.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only /proc (Linux)")
def test_an_out_folder_that_cannot_be_written_fails_before_training(toy):
    """Not after every epoch has run (a read-only --out: root ignores permissions, /proc does not)."""
    res = invoke("train", toy, "--out", "/proc/shiftbench-test/model", "--device", "cpu")
    assert res.exit_code == 2 and "cannot write to /proc/shiftbench-test/model" in res.stderr
    assert "epoch" not in res.stderr


def test_predict_on_a_missing_folder_is_an_error_not_a_row(trained, tmp_path):
    with pytest.raises(InputError, match="no such folder or image"):
        predict(trained.checkpoint, tmp_path / "nothere", device="cpu")


def test_cli_predict_writes_the_api_table(trained, toy, tmp_path):
    """'shiftbench predict' prints (or writes) what training.predict returns; unreadable files stay rows."""
    folder = tmp_path / "imgs"
    shutil.copytree(toy / "circle", folder / "circle")
    (folder / "broken.png").write_bytes(b"not an image")
    expected = predict(trained.checkpoint, folder, device="cpu")
    res = invoke("predict", trained.checkpoint, folder, "--device", "cpu", "--workers", 0)
    assert res.exit_code == 0, res.output
    got = pd.read_csv(io.StringIO(res.stdout), keep_default_na=False)
    assert got["path"].tolist() == expected["path"].tolist()
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    assert got.set_index("path").loc["broken.png", "error"] != ""
    out = tmp_path / "pred.csv"
    res = invoke("predict", trained.checkpoint, folder, "--out", out, "--device", "cpu", "--workers", 0)
    assert res.exit_code == 0 and res.stdout.strip() == str(out)
    assert pd.read_csv(out, keep_default_na=False)["prediction"].tolist() == expected["prediction"].tolist()
    (tmp_path / "empty").mkdir()
    for bad, says in (([toy, folder], "not a shiftbench checkpoint"), ([trained.checkpoint, tmp_path / "nowhere"],
                      "no such file or folder"), ([trained.checkpoint, tmp_path / "empty"], "no images found")):
        res = invoke("predict", *bad, "--device", "cpu")
        assert res.exit_code == 2 and res.stderr.startswith("shiftbench: error:") and says in res.stderr, res.output


def test_help_does_not_import_torch():
    code = "import sys; from shiftbench.cli.main import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(toy, tmp_path):
    res = train(toy, out=tmp_path / "gpu", epochs=2, size=64, device="cuda")
    assert res.meta["training"]["device"].startswith("cuda") and res.metrics["val_accuracy"] >= 2 / 3
    bb = load_backbone(str(res.checkpoint), device="cpu")
    x = model_input(toy, ["circle/00.png", "square/03.png"], bb)
    with torch.inference_mode():
        torch.testing.assert_close(bb.embed(x)[1], res.model.float().cpu()(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ model-aware scans


def test_scan_with_the_model_and_production_labels(trained, toy, tmp_path, monkeypatch):
    """--model adds predictions; --labels adds correctness, per-cluster error rates and harm order.

    The bank's backbone is the model: its predictions come from the logits of the
    embedding pass, with no second pass over the images (training.predict unused).
    """
    prod = tmp_path / "prod"
    prod.mkdir()
    rows = []
    for cls in CLASSES:
        for i, p in enumerate(sorted((toy / cls).glob("*.png"))[:4]):
            img = cv2.imread(str(p))
            cv2.imwrite(str(prod / f"{cls}_{i}.png"), img)
            cv2.imwrite(str(prod / f"{cls}_{i}_inv.png"), 255 - img)  # a pipeline fault the model never saw
            rows += [(f"{cls}_{i}.png", cls), (f"{cls}_{i}_inv.png", cls)]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows[:-2], columns=["path", "label"]).to_csv(labels, index=False)  # two left unlabelled
    def second_pass(*args, **kwargs):
        raise AssertionError("scan --model ran a second forward pass")

    monkeypatch.setattr(shiftbench.training, "predict", second_pass)
    res = shiftbench.scan(prod, reference=toy, backbone=str(trained.checkpoint), model=trained.checkpoint,
                          labels=labels, workspace=tmp_path / "ws", out=tmp_path / "out", device="cpu",
                          num_workers=0)
    again = shiftbench.scan(prod, model=trained.checkpoint, workspace=tmp_path / "ws", out=tmp_path / "out2",
                            device="cpu", num_workers=0, explain=False)  # embeddings and logits from the cache
    assert (again.table["prediction"] == res.table["prediction"]).all()
    monkeypatch.undo()
    from shiftbench.training.scan_columns import is_backbone
    assert is_backbone(trained.checkpoint, load_backbone(str(trained.checkpoint), device="cpu", layers=False))
    assert not is_backbone(trained.checkpoint, load_backbone("lite0", device="cpu", layers=False))
    t = res.table.set_index("path")
    expected = predict(trained.checkpoint, prod, device="cpu").set_index("path")
    assert (t["prediction"] == expected.loc[t.index, "prediction"]).all()
    np.testing.assert_allclose(t["model_confidence"], expected.loc[t.index, "confidence"], rtol=1e-5)
    assert (t["label"] != "").sum() == len(rows) - 2
    known = t["label"] != ""
    assert (t.loc[known, "correct"] == (t.loc[known, "prediction"] == t.loc[known, "label"])).all()
    assert t.loc[~known, "correct"].isna().all()
    cards = res.summary["clusters"]
    assert cards, "inverted copies must be flagged and clustered"
    inv = t[t.index.str.endswith("_inv.png") & t["is_ood"]]
    # relighting explains part of an inversion too: pipeline must be named, mostly first
    assert len(inv) >= 6 and inv["cause"].str.contains("pipeline").mean() >= 0.8, inv["cause"]
    assert (inv["cause"].str.split("+").str[0] == "pipeline").mean() >= 0.6, inv["cause"]
    assert set(inv["how_pipeline"]) >= {"inverted"}
    for c in cards:
        members = t[(t["cluster"] == c["cluster"]) & known]
        if len(members):
            assert c["error_rate"] == pytest.approx(1 - members["correct"].mean())
    harms = [c["harm"] for c in cards]
    assert harms == sorted(harms, reverse=True) and [c["cluster"] for c in cards] == list(range(len(cards)))


def test_copies_of_one_image_stay_on_one_side_of_the_split():
    from shiftbench.training import LabeledImages, stratified_split
    n = 40
    shas = [f"s{i}" for i in range(n - 10)] + ["dup"] * 10  # ten copies of one image under other names
    data = LabeledImages(np.zeros((n, 2, 2, 3), np.uint8), np.zeros(n, np.int64), ["a"],
                         [f"{i}.png" for i in range(n)], shas, "/x")
    for seed in range(5):
        tr, va = stratified_split(data, 0.3, seed)
        sides = {"dup" in data.sha[i] for i in va}, {"dup" in data.sha[i] for i in tr}
        assert not (True in sides[0] and True in sides[1])  # never both
        assert len(tr) + len(va) == n and len(tr) and len(va)
    same = LabeledImages(np.zeros((3, 2, 2, 3), np.uint8), np.zeros(3, np.int64), ["a"], ["a", "b", "c"], ["x"] * 3,
                         "/x")
    tr, va = stratified_split(same, 0.3, 0)
    assert len(tr) == 3 and len(va) == 0  # one image three times: nothing to validate on


def test_a_diverged_epoch_is_never_the_best():
    from shiftbench.training.fit import _Best
    model = torch.nn.Linear(2, 2)
    best = _Best(model, "loss")
    assert best.update({"epoch": 1, "val_loss": float("nan"), "val_accuracy": 0.2})
    assert best.update({"epoch": 2, "val_loss": 1.5, "val_accuracy": 0.5})  # finite beats NaN
    assert not best.update({"epoch": 3, "val_loss": float("nan"), "val_accuracy": 0.9})
    assert best.epoch == 2
    acc = _Best(model, "accuracy")
    acc.update({"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.7})
    assert not acc.update({"epoch": 2, "val_loss": float("nan"), "val_accuracy": 0.7})  # a tie: NaN loss loses
    assert acc.epoch == 1
