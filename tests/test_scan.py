"""index/scan through the Python API and the CLI: outputs, exit codes, reuse, resume, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import N_PROD, N_TRAIN, noise, odd_valid_corpus, save_torchscript, unreadable_corpus, write_files
from typer.testing import CliRunner

import shiftbench
from shiftbench.bank import check_identity, load_bank
from shiftbench.cli.main import app
from shiftbench.embedding import embed_folder, load_backbone
from shiftbench.images import InputError, find_images

# documented in api.scan's docstring
COLUMNS = ["path", "status", "error", "ood_score", "p_value", "is_ood", "nearest_train", "knn_distance",
           "cause", "confidence", "share_lighting", "share_angle", "share_resolution", "share_pipeline", "cluster",
           "mode", "width", "height", "sha", "new_pixel_size"]


def read_csv(path: Path) -> pd.DataFrame:
    """images.csv as the raw strings a user's tool would see."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, bank_workspace, synth):
    """One API scan of synth/prod against the lite0 bank: (ScanResult, workspace)."""
    ws = copy_tree(bank_workspace, tmp_path_factory.mktemp("scanned") / "ws")
    result = shiftbench.scan(synth / "prod", workspace=ws, out=ws.parent / "out", device="cpu", num_workers=0)
    return result, ws


# ------------------------------------------------------------------ outputs


def test_bank_contents(bank_workspace, synth):
    bank = load_bank(bank_workspace)
    assert bank.meta["root"] == str((synth / "train").resolve())
    counts = bank.meta["counts"]
    assert counts == {"images": N_TRAIN, "ok": N_TRAIN, "unreadable": 0, "reused": 0, "exact_copies": 0,
                      "with_copies": counts["with_copies"]}
    assert counts["with_copies"] <= N_TRAIN // 4  # a few pairs alike in some view; no copies
    assert bank.meta["runtime"] == {"device": "cpu", "forward": "onnx"}
    assert bank.table["path"].tolist() == find_images(synth / "train")
    assert bank.table["label"].tolist() == [p.split("/")[0] for p in find_images(synth / "train")]
    assert bank.features.shape == (N_TRAIN, 1280 + 24 + 40 + 112)
    assert len(bank.scorer.calibration_.scores) == N_TRAIN
    assert list(bank.scorer.scorers_) == ["penultimate", "stride4", "stride8", "stride16", "conditions"]
    assert bank.scorer.raw_views == ("conditions",)
    assert not bank.scorer.scorers_["conditions"].normalize and bank.scorer.scorers_["penultimate"].normalize


def test_images_csv_columns_and_semantics(scanned, synth):
    result, ws = scanned
    csv = read_csv(result.out_dir / "images.csv")
    assert list(csv.columns) == list(result.table.columns)
    assert list(csv.columns)[:len(COLUMNS)] == COLUMNS
    from shiftbench.properties import MEASURES
    assert {"brightness", "sharpness", "orientation", "rb_balance"} <= set(csv.columns[len(COLUMNS):])
    assert len(MEASURES) == 4
    assert csv["path"].tolist() == sorted(p.name for p in (synth / "prod").glob("*.png"))
    assert (csv["status"] == "ok").all() and (csv["error"] == "").all()
    assert set(csv["is_ood"]) <= {"true", "false"}
    flagged = csv["is_ood"] == "true"
    assert (csv["cause"][~flagged] == "none").all() and (csv["cluster"][~flagged] == "-1").all()
    assert (csv["confidence"][~flagged] == "").all()
    causes = csv["cause"][flagged].str.split("+").explode()
    assert set(causes) <= {"lighting", "angle", "resolution", "pipeline", "content"}
    assert (csv["cluster"][flagged].astype(int) >= 0).all()
    assert (csv["width"] == "96").all() and (csv["height"] == "96").all()
    for path, sha in zip(csv["path"], csv["sha"]):
        assert sha == hashlib.blake2b((synth / "prod" / path).read_bytes(), digest_size=16).hexdigest()

    bank = load_bank(ws)
    train_ok = set(bank.table["path"][bank.table["status"] == "ok"])
    assert set(csv["nearest_train"]) <= train_ok
    score = csv["ood_score"].astype(float).to_numpy()
    p = csv["p_value"].astype(float).to_numpy()
    # conformal p-values against the bank's calibration: multiples of 1 / (n + 1)
    n = len(bank.scorer.calibration_.scores)
    np.testing.assert_allclose(p * (n + 1), np.round(p * (n + 1)), atol=1e-4)
    np.testing.assert_allclose(p, bank.scorer.calibration_.p_values(result.table["ood_score"]), rtol=1e-5)
    assert ((p > 0) & (p <= 1)).all()
    assert (flagged.to_numpy() == (p <= 0.05)).all()
    assert (flagged.to_numpy() == (score > result.summary["threshold"])).all()
    dist = csv["knn_distance"].astype(float).to_numpy()
    assert ((dist > 0) & (dist <= 2)).all()  # unit vectors


def test_shifted_images_score_higher(scanned):
    t = scanned[0].table
    kind = t["path"].str.split("_").str[0]
    clean, rotated, dark = (t[kind == k] for k in ("clean", "rotated", "dark"))
    assert rotated["ood_score"].mean() > clean["ood_score"].mean()
    assert dark["ood_score"].mean() > clean["ood_score"].mean()
    assert rotated["is_ood"].mean() >= 0.75
    assert clean["is_ood"].sum() <= 1  # a false alarm now and then is the 5% design


def test_flagged_images_are_attributed_to_their_shift(scanned):
    """The synthetic production set has darkened and rotated copies: attribution must name them."""
    t = scanned[0].table
    kind = t["path"].str.split("_").str[0]
    first = t["cause"].str.split("+").str[0]
    for k, cause in [("dark", "lighting"), ("rotated", "angle")]:
        flagged = t[(kind == k) & t["is_ood"]]
        # a tiny bank (24 images): most, not all, are explained
        assert len(flagged) >= 3 and (first[flagged.index] == cause).mean() >= 0.7, flagged["cause"].tolist()
        others = flagged.filter(like="share_").drop(columns=f"share_{cause}")
        assert flagged[f"share_{cause}"].mean() > 2 * others.mean().max()
    shares = t.filter(like="share_")[t["is_ood"]]
    assert ((shares >= 0) & (shares <= 1)).all().all()
    # the residual is the score under the best change: never above the score, so its p-value is not lower
    f = t[t["is_ood"]]
    assert (f["residual_score"] <= f["ood_score"] + 1e-9).all() and (f["residual_p"] >= f["p_value"]).all()
    assert (f["residual_p"] > f["p_value"]).any()  # (24 training images: p-values come in steps of 0.04)
    assert t.loc[~t["is_ood"], "residual_p"].isna().all()
    # a cause taken from alike images is theirs: a majority agrees, and that is its confidence
    taken = f[f["cause"] != f["cause_own"]]
    assert (taken["cause_agreement"] > 0.5).all() and (taken["confidence"] == taken["cause_agreement"]).all()
    assert (f["cause_agreement"].between(0, 1)).all() and (t.loc[~t["is_ood"], "cause_own"] == "none").all()


def test_clusters_and_cards(scanned):
    result, _ = scanned
    t, cards = result.table, result.summary["clusters"]
    flagged = t[t["is_ood"]]
    assert sum(c["size"] for c in cards) == len(flagged)
    assert sorted(c["cluster"] for c in cards) == sorted(flagged["cluster"].unique())
    by_cause = {c["cause"]: c for c in cards}
    assert {"lighting", "angle"} <= set(by_cause)
    assert "below training" in by_cause["lighting"]["change"][0]  # darkened copies
    assert "rotated" in by_cause["angle"]["change"][0]
    for c in cards:
        members = set(flagged["path"][flagged["cluster"] == c["cluster"]])
        assert set(c["medoids"]) <= members and len(c["medoids"]) == min(3, c["size"])


def test_summary_adds_up(scanned, synth):
    result, _ = scanned
    s = json.loads((result.out_dir / "summary.json").read_text())
    t = result.table
    assert s["counts"] == {"images": N_PROD, "ok": N_PROD, "unreadable": 0, "flagged": int(t["is_ood"].sum())}
    assert s["reused"] == {"embeddings": 0, "attributions": 0}  # a first scan of the folder
    assert s["share_flagged"] == pytest.approx(t["is_ood"].sum() / N_PROD)
    assert s["prod_dir"] == str((synth / "prod").resolve()) and s["out_dir"] == str(result.out_dir)
    assert s["bank"]["images"] == N_TRAIN and s["unreadable"] == []
    assert s["threshold"] == s["calibration"]["threshold"] and s["fpr_target"] == 0.05
    assert s["runtime"] == {"device": "cpu", "forward": "onnx"}  # lite0 on the CPU: ONNX Runtime
    assert s["backbone"]["backbone"] == "lite0"
    assert s == json.loads(json.dumps(result.summary))  # the file is what the API returned


def test_outputs_are_atomic(scanned):
    result, ws = scanned
    leftovers = [p for p in ws.parent.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".bank-")]
    assert leftovers == []
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["embeddings.npy", "images.csv", "summary.json"]
    emb = np.load(result.out_dir / "embeddings.npy")
    assert emb.shape[0] == len(result.table) and emb.dtype == np.float32


def test_a_failed_write_names_its_file_and_leaves_the_old_one(tmp_path):
    """A full disk: numpy's own message names no file ("problem writing element 39936 to file")."""
    from shiftbench.fsutil import save_npy, write_with
    target = tmp_path / "embeddings.npy"
    save_npy(target, np.zeros(3, np.float32))

    def full(path):
        raise OSError("problem writing element 39936 to file")
    with pytest.raises(OSError, match=f"cannot write {target}: problem writing element"):
        write_with(target, full)
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        write_with(target, lambda path: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert np.load(target).shape == (3,) and [p.name for p in tmp_path.iterdir()] == ["embeddings.npy"]


def test_outputs_have_normal_permissions(scanned):
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((scanned[0].out_dir / "images.csv").stat().st_mode)
    assert mode == 0o666 & ~umask


def test_scan_of_a_mixed_folder_gives_every_file_a_row(tmp_path, workspace, synth):
    prod = copy_tree(synth / "prod", tmp_path / "prod")
    write_files(prod, unreadable_corpus())
    write_files(prod / "odd", odd_valid_corpus())
    shutil.copy(prod / "clean_0000.png", prod / "odd" / "défaut 1.png")
    result = shiftbench.scan(prod, workspace=workspace, out=tmp_path / "out", device="cpu", num_workers=0)
    csv = read_csv(result.out_dir / "images.csv")
    assert csv["path"].tolist() == find_images(prod)
    assert "odd/défaut 1.png" in set(csv["path"])
    rows = csv.set_index("path")
    for name in unreadable_corpus():
        assert rows.loc[name, "status"] == "unreadable" and rows.loc[name, "error"] != ""
        assert rows.loc[name, "p_value"] == "" and rows.loc[name, "is_ood"] == "false"
        assert rows.loc[name, "cause"] == "none" and rows.loc[name, "nearest_train"] == ""
        assert rows.loc[name, "new_pixel_size"] == "false"  # no size was read: not a new one
    assert rows.loc["empty.jpg", "error"] == "empty file"
    assert rows.loc["text.jpg", "error"].startswith("not an image")
    for name in odd_valid_corpus():
        assert rows.loc[f"odd/{name}", "status"] == "ok" and rows.loc[f"odd/{name}", "p_value"] != ""
    assert (rows.loc["odd/grey16.png", "width"], rows.loc["odd/grey16.png", "height"]) == ("50", "40")
    assert rows.loc["odd/grey16.png", "new_pixel_size"] == "true"  # the training images are 96 x 96
    assert rows.loc["clean_0000.png", "new_pixel_size"] == "false"
    # same bytes, same score
    assert rows.loc["odd/défaut 1.png", "ood_score"] == rows.loc["clean_0000.png", "ood_score"]
    s = result.summary
    n_bad = len(unreadable_corpus())
    assert s["counts"]["images"] == len(csv) == N_PROD + n_bad + len(odd_valid_corpus()) + 1
    assert s["counts"]["unreadable"] == n_bad and s["counts"]["ok"] == len(csv) - n_bad
    assert s["counts"]["flagged"] == (csv["is_ood"] == "true").sum()
    assert s["share_flagged"] == pytest.approx(s["counts"]["flagged"] / s["counts"]["ok"])
    assert {u["path"] for u in s["unreadable"]} == set(unreadable_corpus())


def test_rescan_reuses_cached_embeddings(scanned, synth, spy_embed, tmp_path):
    result, ws = scanned
    again = shiftbench.scan(synth / "prod", workspace=ws, out=tmp_path / "again", device="cpu", num_workers=0)
    assert spy_embed == [[]]  # nothing embedded again
    pd.testing.assert_frame_equal(again.table, result.table)


# ------------------------------------------------------------------ CLI


def test_cli_scan_stdout_is_the_output_folder(workspace, synth, tmp_path):
    out = tmp_path / "out"
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", out, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert res.stdout == f"{out}\n"
    assert "12 images:" in res.stderr and "flagged" in res.stderr
    written = json.loads((out / "summary.json").read_text())
    test, n_cal = written["shift_test"], written["calibration"]["n"]
    assert f"would give {test['expected_false_alarms']:.1f} false alarms" in res.stderr
    assert 0 <= test["p_value"] <= 1 and test["expected_false_alarms"] < 12
    # 12 images, each a false alarm with mean rate m / (n + 1), m = floor(0.05 (n + 1))
    assert test["expected_false_alarms"] == pytest.approx(12 * int(0.05 * (n_cal + 1)) / (n_cal + 1))
    assert "cluster 0:" in res.stderr  # the cluster cards
    assert (out / "images.csv").is_file()
    assert f"report: {out / 'report.html'}" in res.stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    n = int(read_csv(out / "images.csv")["is_ood"].str.lower().eq("true").sum())
    assert f"<b>{n} flagged</b>" in page and n > 0
    assert f"would give {test['expected_false_alarms']:.1f} false alarms" in page  # the batch's verdict
    assert 'title="nearest training image: ' in page  # its neighbours found under the bank's root
    # the shift gate: something is flagged, so any flagged share > 0 trips it
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", tmp_path / "gate", "--device", "cpu",
                 "--workers", "0", "--fail-on-shift", "0.0", "--no-explain", "--no-report")
    assert res.exit_code == 1
    assert res.stdout == f"{tmp_path / 'gate'}\n" and "shift gate" in res.stderr
    assert "reused from an earlier run of this folder (unchanged files, same bank): 12 embeddings" in res.stderr
    assert not (tmp_path / "gate" / "report.html").exists()  # --no-report
    assert "cluster 0:" not in res.stderr
    unexplained = read_csv(tmp_path / "gate" / "images.csv")
    assert set(unexplained["cause"]) <= {"none", "unknown"}
    # the same columns as an explained scan, empty
    assert list(unexplained.columns) == list(read_csv(out / "images.csv").columns)
    assert (unexplained["how_angle"] == "").all() and (unexplained["rotation_deg"] == "").all()
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", tmp_path / "gate2", "--device", "cpu",
                 "--workers", "0", "--fail-on-shift", "1.0", "--quiet", "--no-explain", "--json")
    assert res.exit_code == 0 and res.stderr == ""
    summary = json.loads(res.stdout)  # --json: summary.json on stdout, on one line
    assert summary == json.loads((tmp_path / "gate2" / "summary.json").read_text()) and res.stdout.count("\n") == 1
    # auto: the batch's flags against the false alarms its calibration allows
    test = summary["shift_test"]
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", tmp_path / "gate3", "--device", "cpu",
                 "--workers", "0", "--fail-on-shift", "auto", "--no-explain", "--no-report")
    assert test["p_value"] < 0.01 and res.exit_code == 1, (test, res.output)
    assert "shift gate: more flags than false alarms explain" in res.stderr
    clean = tmp_path / "clean"
    clean.mkdir()
    for f in (synth / "prod").glob("clean_*"):
        shutil.copy(f, clean / f.name)
    res = invoke("scan", clean, "-w", workspace, "--out", tmp_path / "gate4", "--device", "cpu",
                 "--workers", "0", "--fail-on-shift", "AUTO", "--no-explain", "--no-report")
    assert res.exit_code == 0 and "no more flags than false alarms explain" in res.stderr, res.output


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "no bank", "bad gate", "bad fpr",
                                  "prod is a file"])
def test_cli_usage_errors_exit_2(case, workspace, tmp_path):
    ws, target, extra = workspace, tmp_path / "prod", []
    if case == "missing folder":
        expected = "not a folder"
    elif case == "empty folder":
        target.mkdir()
        (target / "notes.txt").write_text("no images here")
        expected = "no images found"
    elif case == "no bank":
        ws, expected = tmp_path / "empty_ws", "no reference bank"
        target.mkdir()
        (target / "a.png").write_bytes(b"")
    elif case == "bad gate":
        extra = ["--fail-on-shift", "1.5"]
        expected = "--fail-on-shift must be a share between 0 and 1, auto or off; got '1.5'"
    elif case == "bad fpr":
        extra, expected = ["--fpr", "0"], "--fpr must be between 0 and 1"
    else:
        target.write_bytes(b"")
        expected = "not a folder"
    res = invoke("scan", target, "-w", ws, "--device", "cpu", "--workers", "0", *extra)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert expected in res.stderr and res.stderr.startswith("shiftbench: error: ")
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_cli_interrupt_exits_130(monkeypatch, workspace, synth):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("shiftbench.api.scan", interrupted)
    res = invoke("scan", synth / "prod", "-w", workspace)
    assert res.exit_code == 130 and "run the same command again to resume" in res.stderr


def test_cli_index_prints_the_bank(tmp_path, synth, tiny_ts):
    ws = tmp_path / "ws"
    res = invoke("index", synth / "train", "-w", ws, "--backbone", tiny_ts, "--device", "cpu",
                 "--workers", "0", "-k", "3")
    assert res.exit_code == 0, res.output
    assert res.stdout == f"{(ws / 'bank').resolve()}\n"
    assert f"indexed {N_TRAIN} images (0 unreadable, 0 reused)" in res.stderr
    meta = load_bank(ws).meta
    assert meta["k"] == 3 and meta["identity"]["backbone"] == "tiny.ts"
    train = tmp_path / "train"  # --json: the bank's summary on one line, the unreadable files named
    shutil.copytree(synth / "train", train)
    (train / "broken.png").write_bytes(b"not an image")
    res = invoke("index", train, "-w", ws, "--device", "cpu", "--workers", "0", "--json", "-q")
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed["bank"] == str((ws / "bank").resolve()) and printed["k"] == 1
    assert printed["counts"] == {**load_bank(ws).meta["counts"], "ok": N_TRAIN, "unreadable": 1}
    assert [u["path"] for u in printed["unreadable"]] == ["broken.png"] and "conditions" not in printed


def test_cli_version_and_default_k():
    from shiftbench.cli import scan as cli_scan
    from shiftbench.scoring import DEFAULT_K
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == shiftbench.__version__
    assert cli_scan.DEFAULT_K == DEFAULT_K  # duplicated to keep --help fast


def test_cli_scan_backbone_without_reference_is_not_ignored(workspace, synth, tmp_path, tiny_ts):
    res = invoke("scan", synth / "prod", "-w", workspace, "--backbone", tiny_ts, "--out", tmp_path / "o",
                 "--device", "cpu", "--workers", "0")
    assert res.exit_code == 2


# ------------------------------------------------------------------ reuse and resume


def test_reindex_reuses_unchanged_files_and_embeds_new_ones(tmp_path, synth, tiny_ts, spy_embed):
    train = copy_tree(synth / "train", tmp_path / "train")
    ws = tmp_path / "ws"
    opts = dict(workspace=ws, backbone=str(tiny_ts), device="cpu", num_workers=0)
    first = shiftbench.index(train, **opts)
    assert len(spy_embed[0]) == N_TRAIN and first.meta["counts"]["reused"] == 0

    second = shiftbench.index(train, **opts)
    assert spy_embed[1] == []
    assert second.meta["counts"]["reused"] == N_TRAIN
    np.testing.assert_array_equal(second.features, first.features)

    noise_png = tmp_path / "new.png"
    cv2.imwrite(str(noise_png), noise(96, 96, seed=42))
    shutil.copy(noise_png, train / "spot" / "zz_new.png")
    done = []
    third = shiftbench.index(train, **opts, progress=lambda d, t: done.append((d, t)))
    assert spy_embed[2] == ["spot/zz_new.png"]
    assert done[0] == (N_TRAIN, N_TRAIN + 1) and done[-1] == (N_TRAIN + 1, N_TRAIN + 1)
    assert third.meta["counts"] == {"images": N_TRAIN + 1, "ok": N_TRAIN + 1, "unreadable": 0,
                                    "reused": N_TRAIN, "exact_copies": 0,
                                    "with_copies": third.meta["counts"]["with_copies"]}
    row = third.table["path"].tolist().index("spot/zz_new.png")
    assert third.table["label"][row] == "spot"
    old_rows = [third.table["path"].tolist().index(p) for p in first.table["path"]]
    np.testing.assert_array_equal(third.features[old_rows], first.features)


def test_reused_count_is_what_was_not_embedded(tmp_path, synth, tiny_ts, spy_embed):
    train = copy_tree(synth / "train", tmp_path / "train")
    opts = dict(workspace=tmp_path / "ws", backbone=str(tiny_ts), device="cpu", num_workers=0)
    shiftbench.index(train, **opts)
    shutil.copy(train / "spot" / "spot_0001.png", train / "spot" / "copy.png")
    bank = shiftbench.index(train, **opts)
    assert spy_embed[1] == ["spot/copy.png"]
    assert bank.meta["counts"]["reused"] == N_TRAIN


def test_reindex_with_another_backbone_embeds_everything(tmp_path, synth, tiny_ts, spy_embed):
    ws = tmp_path / "ws"
    shiftbench.index(synth / "train", workspace=ws, backbone=str(tiny_ts), device="cpu", num_workers=0)
    other = save_torchscript(tmp_path / "other.ts", seed=1)
    bank = shiftbench.index(synth / "train", workspace=ws, backbone=str(other), device="cpu", num_workers=0)
    assert [len(c) for c in spy_embed] == [N_TRAIN, N_TRAIN]
    assert bank.meta["counts"]["reused"] == 0 and bank.meta["identity"]["backbone"] == "other.ts"


def test_reindex_without_a_backbone_keeps_the_banks(tmp_path, synth, tiny_ts, spy_embed):
    """'Re-run to add new images' must not silently swap a custom model for the default lite0."""
    ws = tmp_path / "ws"
    shiftbench.index(synth / "train", workspace=ws, backbone=str(tiny_ts), device="cpu", num_workers=0)
    bank = shiftbench.index(synth / "train", workspace=ws, device="cpu", num_workers=0)
    assert bank.meta["backbone"]["name"] == str(tiny_ts.resolve()) and bank.meta["counts"]["reused"] == N_TRAIN
    assert spy_embed[1] == []  # nothing embedded again


def test_a_mistyped_index_kind_or_too_large_k_fails_before_embedding(tmp_path, synth, tiny_ts, spy_embed):
    with pytest.raises(InputError, match="--index must be one of"):
        shiftbench.index(synth / "train", workspace=tmp_path / "ws", backbone=str(tiny_ts), index_kind="bogus")
    with pytest.raises(InputError, match=f"-k {N_TRAIN} needs more than {N_TRAIN} training images"):
        shiftbench.index(synth / "train", workspace=tmp_path / "ws", backbone=str(tiny_ts), k=N_TRAIN)
    assert spy_embed == []


def _interrupt_after(limit: int):
    def progress(done, total):
        if done >= limit:
            raise KeyboardInterrupt
    return progress


def test_interrupted_embedding_resumes(tmp_path, synth, lite0, spy_embed):
    prod = synth / "prod"
    paths = find_images(prod)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):  # after batch 3: two flushed (every 4), the third on the way out
        embed_folder(prod, paths, lite0, work, batch_size=2, num_workers=0, flush_every=4,
                     progress=_interrupt_after(6))
    parts = sorted((work / "parts").glob("part-*.npz"))
    assert [p.name for p in parts] == ["part-00000.npz", "part-00001.npz"]
    with np.load(parts[0]) as z0, np.load(parts[1]) as z1:
        assert z0["path"].tolist() == paths[:4] and z1["path"].tolist() == paths[4:6]

    done = []
    emb = embed_folder(prod, paths, lite0, work, batch_size=4, num_workers=0, flush_every=4,
                       progress=lambda d, t: done.append(d))
    assert spy_embed[1] == paths[6:]  # only what was not saved
    assert done[0] == 6 and done[-1] == len(paths)
    assert not (work / "parts").exists()  # cleaned up on success
    assert emb.table["path"].tolist() == paths and emb.ok.all()
    fresh = embed_folder(prod, paths, lite0, tmp_path / "fresh", batch_size=4, num_workers=0)
    np.testing.assert_allclose(emb.features, fresh.features, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(emb.table, fresh.table)


def test_an_index_interrupted_after_embedding_reuses_every_embedding(tmp_path, synth, tiny_ts, spy_embed,
                                                                     monkeypatch):
    """Ctrl-C during calibration or while the bank is written: the embedding work is kept."""
    import shiftbench.api as api
    saved = api.save_bank

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "save_bank", interrupted)
    opts = dict(workspace=tmp_path / "ws", backbone=str(tiny_ts), device="cpu", num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        shiftbench.index(synth / "train", **opts)
    monkeypatch.setattr(api, "save_bank", saved)
    bank = shiftbench.index(synth / "train", **opts)
    assert spy_embed[1] == [] and bank.meta["counts"]["reused"] == N_TRAIN
    assert not (tmp_path / "ws" / "work" / "index" / "parts").exists()  # removed once the bank is saved


def test_a_temporary_bank_folder_left_by_a_killed_run_is_removed_later(tmp_path, synth, tiny_ts):
    ws = tmp_path / "ws"
    stale, fresh, mine = ws / ".bank-k1ll3d_x", ws / ".bank-wr1t1ng_", ws / ".bank-notes"
    for d in (stale, fresh, mine):
        d.mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(mine, (old, old))
    shiftbench.index(synth / "train", workspace=ws, backbone=str(tiny_ts), device="cpu", num_workers=0)
    assert not stale.exists() and fresh.exists() and mine.exists()  # (another run's, and not a temp name)


def test_parts_of_another_backbone_are_discarded(tmp_path, synth, lite0, tiny_ts, spy_embed):
    prod = synth / "prod"
    paths = find_images(prod)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        embed_folder(prod, paths, lite0, work, batch_size=4, num_workers=0, flush_every=4,
                     progress=_interrupt_after(8))
    tiny = load_backbone(str(tiny_ts), device="cpu")
    emb = embed_folder(prod, paths, tiny, work, batch_size=4, num_workers=0)
    assert spy_embed[1] == paths
    assert emb.features.shape == (len(paths), tiny.feature_dim)


def test_changed_file_is_embedded_again(tmp_path, synth, tiny_ts, spy_embed):
    prod = copy_tree(synth / "prod", tmp_path / "prod")
    tiny = load_backbone(str(tiny_ts), device="cpu")
    paths = find_images(prod)
    first = embed_folder(prod, paths, tiny, tmp_path / "w")
    cv2.imwrite(str(prod / paths[0]), noise(96, 96, seed=7))
    second = embed_folder(prod, paths, tiny, tmp_path / "w", previous=first, num_workers=0)
    assert spy_embed[1] == [paths[0]]
    assert second.table["sha"][0] != first.table["sha"][0]
    assert not np.allclose(second.features[0], first.features[0])
    np.testing.assert_array_equal(second.features[1:], first.features[1:])


# ------------------------------------------------------------------ refusals


def test_check_identity_message():
    ident = {"backbone": "lite0", "weights": "a" * 64, "views": [["penultimate", 1280]],
             "preprocess": {"size": 224, "resize": "squash"}}
    check_identity({"identity": ident}, dict(ident))  # same: fine
    other = {**ident, "backbone": "resnet18", "weights": "b" * 64}
    with pytest.raises(InputError) as e:
        check_identity({"identity": ident}, other)
    msg = str(e.value)
    assert "'lite0'" in msg and "'resnet18'" in msg and "differs in: backbone, weights" in msg
    assert "re-index with the same backbone" in msg
    with pytest.raises(InputError, match="differs in: preprocess"):
        check_identity({"identity": ident}, {**ident, "preprocess": {"size": 224, "resize": "pad"}})
    # a bank measured by an older definition of the conditions: index again, the same backbone is fine
    with pytest.raises(InputError, match=r"measurements are version 5, this shiftbench's 6 .*shiftbench index /lab"):
        check_identity({"identity": {**ident, "measures": 5}, "root": "/lab"}, {**ident, "measures": 6})


def test_scan_refused_when_the_banks_weights_file_changed(tmp_path, synth):
    ts = save_torchscript(tmp_path / "model.ts", seed=0)
    ws = tmp_path / "ws"
    shiftbench.index(synth / "train", workspace=ws, backbone=str(ts), device="cpu", num_workers=0)
    save_torchscript(ts, seed=3)  # the file is replaced after indexing
    with pytest.raises(InputError, match="differs in: weights"):
        shiftbench.scan(synth / "prod", workspace=ws, out=tmp_path / "out", device="cpu", num_workers=0)
    assert not (tmp_path / "out").exists()
    res = invoke("scan", synth / "prod", "-w", ws, "--device", "cpu", "--workers", "0")
    assert res.exit_code == 2 and "differs in: weights" in res.stderr and "Traceback" not in res.output


def test_relative_torchscript_backbone_scans_from_another_folder(tmp_path, synth, monkeypatch):
    (tmp_path / "proj").mkdir()
    save_torchscript(tmp_path / "proj" / "model.ts")
    monkeypatch.chdir(tmp_path / "proj")
    shiftbench.index(synth / "train", workspace=tmp_path / "ws", backbone="model.ts", device="cpu",
                     num_workers=0)
    monkeypatch.chdir(tmp_path)
    result = shiftbench.scan(synth / "prod", workspace=tmp_path / "ws", out=tmp_path / "out", device="cpu",
                             num_workers=0)
    assert result.summary["counts"]["ok"] == N_PROD


def test_index_options_need_reference(workspace, synth):
    with pytest.raises(InputError, match="only apply with --reference"):
        shiftbench.scan(synth / "prod", workspace=workspace, k=3)


def test_index_needs_two_readable_images(tmp_path, tiny_ts):
    train = tmp_path / "train"
    write_files(train, {"a.png": b"", "b.jpg": b"junk"})
    cv2.imwrite(str(train / "c.png"), noise(32, 32))
    with pytest.raises(InputError, match="fewer than 2 readable images"):
        shiftbench.index(train, workspace=tmp_path / "ws", backbone=str(tiny_ts), device="cpu", num_workers=0)


def test_interrupted_bank_swap_falls_back_to_the_old_bank(workspace):
    bank = workspace / "bank"
    bank.rename(workspace / "bank.old")  # crash between the two renames of save_bank
    assert load_bank(workspace).meta["counts"]["images"] == N_TRAIN


def test_bank_of_another_version_refused(workspace):
    meta_file = workspace / "bank" / "bank.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(InputError, match="another shiftbench version"):
        load_bank(workspace)


# ------------------------------------------------------------------ options


def test_single_embedding_view_fused_with_conditions(tmp_path, synth, tiny_ts):
    """Without early layers: penultimate + conditions views, the score is the sum of their -log p."""
    from shiftbench.scoring.fused import _neglog_p
    result = shiftbench.scan(synth / "prod", workspace=tmp_path / "ws", reference=synth / "train",
                             backbone=str(tiny_ts), layers=False, k=2, out=tmp_path / "out", device="cpu",
                             num_workers=0)
    bank = load_bank(tmp_path / "ws")
    assert bank.meta["identity"]["views"] == [["penultimate", 128]] and bank.meta["k"] == 2
    assert [v for v, _ in bank.scorer.views] == ["penultimate", "conditions"]
    pen = bank.scorer.scorers_["penultimate"]
    cond = bank.scorer.scorers_["conditions"]
    from shiftbench.scoring import standardize
    d_cond, _ = cond.score(standardize(result.table, bank.meta["conditions"]))
    expected = (_neglog_p(pen.calibration_.scores, result.table["knn_distance"].to_numpy())
                + _neglog_p(cond.calibration_.scores, d_cond))
    np.testing.assert_allclose(result.table["ood_score"], expected, rtol=1e-5)


def test_labels_from_csv_go_into_the_bank(tmp_path, synth, tiny_ts):
    paths = find_images(synth / "train")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},L{i % 2}\n" for i, p in enumerate(paths[:-1])))
    bank = shiftbench.index(synth / "train", workspace=tmp_path / "ws", backbone=str(tiny_ts), labels=labels,
                            device="cpu", num_workers=0)
    assert bank.table["label"].tolist() == [f"L{i % 2}" for i in range(len(paths) - 1)] + [""]
    assert load_bank(tmp_path / "ws").table["label"].tolist() == bank.table["label"].tolist()


def test_cli_default_k_matches_library_default():
    from shiftbench.cli.scan import DEFAULT_K as CLI_K
    from shiftbench.scoring import DEFAULT_K
    assert CLI_K == DEFAULT_K


def test_a_scan_whose_training_images_moved_still_finishes(synth, tmp_path):
    """Attribution needs the training images; without them flagged rows say why, and the scan completes."""
    train = shutil.copytree(synth / "train", tmp_path / "train")
    shiftbench.index(train, workspace=tmp_path / "ws", device="cpu", num_workers=0)
    train.rename(tmp_path / "moved")
    res = shiftbench.scan(synth / "prod", workspace=tmp_path / "ws", out=tmp_path / "out", device="cpu",
                          num_workers=0)
    flagged = res.table[res.table["is_ood"]]
    assert len(flagged) > 0 and (flagged["cause"] == "unknown").all() and (flagged["cause_own"] == "unknown").all()
    assert flagged["how_lighting"].str.startswith("cannot read").all() and flagged["cause_agreement"].isna().all()
    assert (tmp_path / "out" / "images.csv").is_file()


def test_images_at_a_new_pixel_size_reach_attribution_and_agreement(tmp_path, workspace, synth, monkeypatch):
    """The scan tells attribution which flagged images are at a new pixel size, and lets them
    agree only among themselves; none of them is named lighting or angle."""
    import shiftbench.explain.flagged as api  # where the scan's explain step calls them
    prod = copy_tree(synth / "prod", tmp_path / "prod")
    for p in sorted(prod.glob("*.png"))[:4]:  # another camera's size
        img = cv2.imread(str(p))
        cv2.imwrite(str(prod / f"small_{p.name}"), cv2.resize(img, (72, 72), interpolation=cv2.INTER_AREA))
    seen = {}
    attribute, agree = api.attribute, api.agree_with_neighbours

    def spy_attribute(rows, *args, new_size=None, **kw):
        seen["attribute"] = (rows["path"].tolist(), np.asarray(new_size).tolist())
        return attribute(rows, *args, new_size=new_size, **kw)

    def spy_agree(causes, conditions, shares, groups=None, **kw):
        seen["groups"] = np.asarray(groups).tolist()
        return agree(causes, conditions, shares, groups=groups, **kw)
    monkeypatch.setattr(api, "attribute", spy_attribute)
    monkeypatch.setattr(api, "agree_with_neighbours", spy_agree)
    result = shiftbench.scan(prod, workspace=workspace, out=tmp_path / "out", fpr=0.9, device="cpu", num_workers=0)
    t = result.table.set_index("path")
    paths, new_size = seen["attribute"]
    assert new_size == [p.startswith("small_") for p in paths] and any(new_size)
    assert seen["groups"] == new_size  # every flagged image here was readable
    small = t.loc[[p for p in paths if p.startswith("small_")]]
    assert small["new_pixel_size"].all() and not t.loc[[p for p in paths if not p.startswith("small_")],
                                                        "new_pixel_size"].any()
    assert not small["cause"].str.contains("lighting|angle").any()


def test_a_bank_with_every_image_twice_calibrates_as_one_without_copies(tmp_path, synth, tiny_ts):
    """Copies (a re-saved file, a burst's frames) must not make every new image look unlike training."""
    twice = copy_tree(synth / "train", tmp_path / "twice")
    for p in sorted(twice.rglob("*.png")):
        shutil.copy(p, p.with_name(f"copy_{p.name}"))
    once = shiftbench.index(synth / "train", workspace=tmp_path / "once", backbone=str(tiny_ts), device="cpu",
                            num_workers=0)
    both = shiftbench.index(twice, workspace=tmp_path / "both", backbone=str(tiny_ts), device="cpu", num_workers=0)
    assert both.meta["counts"]["exact_copies"] == N_TRAIN
    for name, sc in once.scorer.scorers_.items():  # each image's score: the distance to another image
        np.testing.assert_allclose(both.scorer.scorers_[name].calibration_.scores, np.repeat(sc.calibration_.scores, 2),
                                   rtol=1e-5)
    res = invoke("index", twice, "-w", tmp_path / "cli", "--backbone", tiny_ts, "--device", "cpu", "--workers", "0")
    assert f"{2 * N_TRAIN} training images have a copy" in res.stderr and f"{N_TRAIN} are byte-identical" in res.stderr
