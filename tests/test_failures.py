"""How the commands fail: unreadable batches, banks too small or damaged, half-written caches, bugs.

Each case is one a user meets (a dead camera feed, a killed run, a typo) and must end in a clear
message and the documented exit status (2 for input, 3 for a bug), never a traceback with status 1.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import shiftbench
from conftest import noise, unreadable_corpus, write_files
from shiftbench.bank import load_bank
from shiftbench.embedding import Embeddings, load_embeddings, save_embeddings
from shiftbench.cli.main import app
from shiftbench.collection import allocate
from shiftbench.collection.plan import describe
from shiftbench.fsutil import json_text, write_json
from shiftbench.images import InputError, labels_from_csv


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(res, code: int, expected: str) -> None:
    assert res.exit_code == code, res.output
    assert expected in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("shiftbench: error: ")


def test_a_batch_of_only_unreadable_files_is_written_and_exits_2(workspace, tmp_path):
    prod = tmp_path / "prod"
    write_files(prod, unreadable_corpus())
    out = tmp_path / "out"
    res = invoke("scan", prod, "-w", workspace, "--out", out, "--device", "cpu", "--workers", "0",
                 "--fail-on-shift", "0.1")
    _one_line_error(res, 2, f"none of the {len(unreadable_corpus())} files")
    assert res.stdout == f"{out}\n"  # the rows with their reasons are there to read
    table = pd.read_csv(out / "images.csv", dtype=str, keep_default_na=False)
    assert len(table) == len(unreadable_corpus()) and (table["status"] == "unreadable").all()
    assert (table["error"] != "").all() and (table["is_ood"] == "false").all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 0 and summary["counts"]["unreadable"] == len(table)


def test_a_bank_too_small_for_the_false_alarm_rate_is_refused(tmp_path, tiny_ts):
    train, prod = tmp_path / "train", tmp_path / "prod"
    for i in range(8):
        train.mkdir(exist_ok=True)
        cv2.imwrite(str(train / f"{i}.png"), noise(32, 32, seed=i))
    prod.mkdir()
    cv2.imwrite(str(prod / "p.png"), noise(32, 32, seed=99))
    ws = tmp_path / "ws"
    shiftbench.index(train, workspace=ws, backbone=str(tiny_ts), device="cpu", num_workers=0)
    # 8 images: the smallest p-value is 1/9, so nothing could ever be flagged at 0.05
    with pytest.raises(InputError, match=r"8 readable training images.*1/9.*at least 19 images"):
        shiftbench.scan(prod, workspace=ws, fpr=0.05, device="cpu", num_workers=0)
    res = shiftbench.scan(prod, workspace=ws, fpr=0.12, out=tmp_path / "out", device="cpu", num_workers=0)
    assert math.isfinite(res.summary["threshold"])


def test_a_damaged_bank_is_named_and_rebuilt_by_index(workspace, synth):
    (workspace / "bank" / "bank.json").write_text("{ not json")
    with pytest.raises(InputError, match="is damaged.*re-run 'shiftbench index"):
        load_bank(workspace)
    res = invoke("scan", synth / "prod", "-w", workspace, "--device", "cpu", "--workers", "0")
    _one_line_error(res, 2, "is damaged")
    shiftbench.index(synth / "train", workspace=workspace, device="cpu", num_workers=0)
    assert load_bank(workspace).meta["counts"]["ok"] > 0


def test_bank_files_of_different_lengths_are_damage(workspace):
    features = np.load(workspace / "bank" / "features.npy")
    np.save(workspace / "bank" / "features.npy", features[:-1])
    with pytest.raises(InputError, match="is damaged"):
        load_bank(workspace)


def test_a_half_written_scan_cache_is_not_used(tmp_path):
    cache = tmp_path / "work" / "scan-x"
    table = pd.DataFrame({"path": ["a.png", "b.png"], "status": ["ok", "ok"]})
    emb = Embeddings(table, np.zeros((2, 4), np.float32))
    save_embeddings(cache, {"id": 1}, emb)
    assert load_embeddings(cache, {"id": 1}) is not None
    np.save(cache / "features.npy", np.zeros((3, 4), np.float32))  # a killed run's newer features
    assert load_embeddings(cache, {"id": 1}) is None
    (cache / "identity.json").write_text("{}")
    save_embeddings(cache, {"id": 2}, emb)
    assert load_embeddings(cache, {"id": 2}).features.shape == (2, 4)


@pytest.mark.parametrize("content, expected", [
    (b"path,label\na.png,x\nb.png\n", "line 3: needs a path and a label"),
    ("path,label\nä.png,x\n".encode("latin-1"), "not a UTF-8 CSV"),
])
def test_bad_labels_csv_is_an_input_error(tmp_path, content, expected):
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(InputError, match=expected):
        labels_from_csv(tmp_path / "labels.csv", ["a.png", "b.png"])


def test_a_bug_exits_3_with_its_traceback_and_system_errors_exit_2(monkeypatch, workspace, synth):
    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr("shiftbench.api.scan", bug)
    res = invoke("scan", synth / "prod", "-w", workspace)
    assert res.exit_code == 3 and "Traceback" in res.stderr and "ZeroDivisionError" in res.stderr
    assert "internal error" in res.stderr.strip().splitlines()[-1]

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("shiftbench.api.scan", full)
    _one_line_error(invoke("scan", synth / "prod", "-w", workspace), 2, "No space left on device")


def test_mistyped_scan_options_fail_before_embedding(workspace, synth, tmp_path, spy_embed):
    (tmp_path / "file").write_text("")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "summary.json").write_text("{}")  # the user's own: a scan would replace it
    for args, expected in ((["--out", tmp_path / "file"], "exists and is not a folder"),
                           (["--out", tmp_path / "mine"], "holds files and is not a scan's output folder"),
                           (["--labels", tmp_path / "nope.csv"], "no such file"),
                           (["--model", tmp_path / "nope"], "no such checkpoint folder")):
        res = invoke("scan", synth / "prod", "-w", workspace, "--device", "cpu", *args)
        _one_line_error(res, 2, expected)
    assert spy_embed == []  # nothing was embedded


def test_predict_with_a_missing_checkpoint_says_so_and_exits_2(tmp_path):  # (an empty folder: test_train)
    (tmp_path / "empty").mkdir()
    _one_line_error(invoke("predict", tmp_path / "nope", tmp_path / "empty"), 2, "no such file or folder")


def test_strict_json_writes_null_for_nan_and_infinity(tmp_path):
    obj = {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([np.nan, 2.0])}
    write_json(tmp_path / "x.json", obj)
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": [None, 2.0]}
    assert json_text({"t": -math.inf}, indent=None) == '{"t": null}'


def test_ties_go_to_condition_clusters_and_no_action_says_add_0():
    assert allocate([10, 10], 1, minimum=1).tolist() == [1, 0]
    assert allocate([10, 10], 1, minimum=1, prefer=[False, True]).tolist() == [0, 1]
    members = pd.DataFrame({"path": ["a.png", "b.png"], "cause": ["lighting"] * 2,
                            "brightness_p50": [0.2, 0.3], "contrast": [0.1, 0.1]})
    d = describe(members, "lighting", {"brightness_p50": 0.5, "contrast": 0.1}, 0, ["a.png"])
    assert "Add 0" not in d["action"] and "none fit in this budget" in d["action"]
    assert describe(members, "lighting", {}, 3, ["a.png"])["action"].startswith("Add 3 images under the new lighting")


def test_a_lighting_cluster_without_brightness_is_still_described():
    members = pd.DataFrame({"path": ["a.png"], "cause": ["lighting"], "brightness_p50": [np.nan],
                            "contrast": [0.1]})
    d = describe(members, "lighting", {"brightness_p50": 0.5, "contrast": 0.1}, 2, ["a.png"])
    assert "median brightness" not in d["action"] and "contrast 0.100" in d["action"]


def test_a_rerun_killed_while_writing_leaves_no_summary_beside_a_new_table(workspace, synth, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shiftbench.scan(synth / "prod", workspace=workspace, out=out, explain=False, device="cpu", num_workers=0)
    assert (out / "summary.json").is_file()

    real = shiftbench.api.save_npy

    def killed(target, array):  # killed after the new images.csv, before summary.json
        if Path(target).name == "embeddings.npy":
            raise KeyboardInterrupt
        real(target, array)
    monkeypatch.setattr("shiftbench.api.save_npy", killed)
    with pytest.raises(KeyboardInterrupt):
        shiftbench.scan(synth / "prod", workspace=workspace, out=out, explain=False, device="cpu", num_workers=0)
    assert (out / "images.csv").is_file() and not (out / "summary.json").exists()
    with pytest.raises(InputError, match="has no summary.json"):
        shiftbench.collect(out, budget=2)


def test_an_interrupted_explanation_resumes_and_a_rescan_reuses_it(workspace, synth, tmp_path, monkeypatch):
    import shiftbench.explain.attribution as at
    calls = []
    real = at.attribute_one

    def counted(x, *a, **k):
        calls.append(1)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(x, *a, **k)
    monkeypatch.setattr(at, "attribute_one", counted)
    monkeypatch.setattr(at, "BLOCK", 2)
    stop_after = 3  # killed in the second block: the first one's two rows are kept
    with pytest.raises(KeyboardInterrupt):
        shiftbench.scan(synth / "prod", workspace=workspace, out=tmp_path / "a", device="cpu", num_workers=0)
    stop_after, calls[:] = None, []
    first = shiftbench.scan(synth / "prod", workspace=workspace, out=tmp_path / "b", device="cpu", num_workers=0)
    n_flagged = int(first.table["is_ood"].sum())
    assert n_flagged > 2 and len(calls) == n_flagged - 2
    calls[:] = []
    again = shiftbench.scan(synth / "prod", workspace=workspace, out=tmp_path / "c", device="cpu", num_workers=0)
    assert calls == []  # every row reused
    pd.testing.assert_frame_equal(again.table, first.table)
    shiftbench.index(synth / "train", workspace=workspace, device="cpu", num_workers=0)  # the same folder again
    shiftbench.scan(synth / "prod", workspace=workspace, out=tmp_path / "e", device="cpu", num_workers=0)
    assert calls == []  # an unchanged bank, rewritten: still the same rows
    fresh = tmp_path / "fresh_ws"
    shutil.copytree(workspace, fresh)
    shutil.rmtree(fresh / "work")
    recomputed = shiftbench.scan(synth / "prod", workspace=fresh, out=tmp_path / "d", device="cpu", num_workers=0)
    pd.testing.assert_frame_equal(recomputed.table, first.table, check_exact=False, rtol=1e-5, atol=1e-7)


def test_labels_that_match_no_image_are_refused_before_embedding(workspace, synth, tmp_path, spy_embed):
    (tmp_path / "labels.csv").write_text("path,label\nelsewhere/a.png,spot\n")
    res = invoke("scan", synth / "prod", "-w", workspace, "--labels", tmp_path / "labels.csv", "--device", "cpu")
    _one_line_error(res, 2, "none of its 1 paths names one of the")
    assert spy_embed == []
    absolute = tmp_path / "absolute.csv"  # training labels given with absolute paths: the same hint
    absolute.write_text("path,label\n" + "".join(f"{p},x\n" for p in sorted((synth / "train").rglob("*.png"))))
    res = invoke("train", synth / "train", "--labels", absolute, "--out", tmp_path / "ck", "--device", "cpu")
    _one_line_error(res, 2, "paths are relative to the image folder")


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_a_read_only_workspace_is_scanned_into_out(workspace, synth, tmp_path, monkeypatch):
    """A bank shared read-only by a team: the scan's resumable work goes into --out, the workspace is untouched.
    (Tests run as root, who ignores permissions: the check is also told that the workspace is read-only.)"""
    import shiftbench.api as api
    real = api.check_writable

    def read_only(folder, error=PermissionError):
        if Path(folder).resolve().is_relative_to(workspace.resolve()):
            raise error(f"cannot write to {folder}: Read-only file system")
        real(folder, error)
    monkeypatch.setattr(api, "check_writable", read_only)
    shutil.rmtree(workspace / "work", ignore_errors=True)
    before = _tree(workspace)
    _one_line_error(invoke("scan", synth / "prod", "-w", workspace, "--device", "cpu"), 2,
                    "is read-only: pass --out to write the scan elsewhere")
    _one_line_error(invoke("scan", synth / "prod", "-w", workspace, "--reference", synth / "train", "--out",
                           tmp_path / "o", "--device", "cpu"), 2, "Read-only file system")
    out = tmp_path / "scan"
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", out, "--device", "cpu", "--workers", 0)
    assert res.exit_code in (0, 1), res.output
    assert _tree(workspace) == before
    (work,) = (out / api.SCAN_WORK).glob("scan-*")  # keyed by the production folder, as in a workspace
    assert (out / "images.csv").is_file() and (work / "identity.json").is_file()
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", out, "--device", "cpu", "--workers", 0)
    assert res.exit_code in (0, 1) and "reused" in res.stderr  # a rerun into the same --out resumes from it
    interrupted = tmp_path / "interrupted"  # only the work folder: a killed run's --out is still the scan's
    shutil.copytree(work, interrupted / api.SCAN_WORK / work.name)
    res = invoke("scan", synth / "prod", "-w", workspace, "--out", interrupted, "--device", "cpu", "--workers", 0)
    assert res.exit_code in (0, 1) and (interrupted / "images.csv").is_file()
    other = tmp_path / "other_prod"  # another folder with the same names, sizes and times, into the same --out:
    shutil.copytree(synth / "prod", other)  # its own work, not the first folder's
    res = invoke("scan", other, "-w", workspace, "--out", out, "--device", "cpu", "--workers", 0)
    assert res.exit_code in (0, 1) and "reused" not in res.stderr
    assert len(list((out / api.SCAN_WORK).glob("scan-*"))) == 2


def test_a_mistyped_python_option_is_a_type_error_before_embedding(workspace, synth, tmp_path, spy_embed):
    import inspect

    from shiftbench.api import INDEX_OPTIONS, index
    own = {"train_dir", "workspace", "device", "batch_size", "num_workers", "progress", "labels"}
    assert set(INDEX_OPTIONS) == set(inspect.signature(index).parameters) - own
    with pytest.raises(TypeError, match="modle"):
        shiftbench.scan(synth / "prod", workspace=workspace, out=tmp_path / "o", modle="ckpt")
    with pytest.raises(InputError, match="only apply with --reference"):
        shiftbench.scan(synth / "prod", workspace=workspace, out=tmp_path / "o", k=3)
    assert spy_embed == []
