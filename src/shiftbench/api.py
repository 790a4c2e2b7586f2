"""Python API: ``index`` a training folder, ``scan`` a production folder.

The CLI is a thin wrapper over these two functions; scripts can call them
directly and get tables back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .bank import Bank, check_identity, load_bank, save_bank, stored_backbone
from .embedding import Embeddings, embed_folder, load_backbone, load_embeddings, save_embeddings
from .embedding.store import TABLE_COLUMNS
from .explain import CAUSES, explain_flagged, new_pixel_size, train_sizes
from .fsutil import check_writable, save_npy, write_json, write_with
from .images import InputError, find_images, labels_from_csv, labels_from_folders
from .properties import VERSION as MEASURES_VERSION
from .properties import ANGLES, measure
from .scoring import DEFAULT_K, FusedKNNScorer, fit_standardizer, with_conditions
from .search import INDEX_KINDS
from .scoring.drift import drift_table

DEFAULT_WORKSPACE = ".shiftbench"
Progress = Callable[[int, int], None]


@dataclass
class ScanResult:
    """What :func:`scan` produced: ``table`` is ``images.csv``, ``summary`` is ``summary.json``."""

    table: pd.DataFrame
    summary: dict
    out_dir: Path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def index(train_dir: str | Path, *, workspace: str | Path = DEFAULT_WORKSPACE, backbone: str | None = None,
          weights: str | None = None, num_classes: int | None = None, resize: str | None = None,
          layers: bool = True, device: str = "auto", labels: str | Path | None = None, k: int = DEFAULT_K,
          index_kind: str = "auto", batch_size: int = 32, num_workers: int | None = None,
          progress: Progress | None = None) -> Bank:
    """Embed a training folder into the reference bank of ``workspace``.

    ``backbone`` None keeps the existing bank's model (with its weights, classes and resize
    unless given), else lite0. Unchanged files of an existing bank made with the same backbone and folder are
    reused, and an interrupted run resumes where it stopped. Labels come from
    ``labels`` (CSV with ``path,label``) or from class sub-folders. ``layers``
    adds the backbone's early-layer views to the penultimate one (see
    :mod:`shiftbench.embedding.backbones`); ``k`` is the neighbour whose distance
    scores each view.

    Returns
    -------
    Bank
        ``bank.table`` has one row per file found (``status`` ok/unreadable).
    """
    t0 = time.perf_counter()
    root = Path(train_dir).resolve()
    paths = find_images(root)
    if not paths:
        raise InputError(f"no images found in {root}")
    lab = labels_from_csv(labels, paths) if labels else labels_from_folders(paths)  # fail early
    if index_kind not in INDEX_KINDS:  # ...and so does a mistyped option, before the embedding
        raise InputError(f"--index must be one of {', '.join(INDEX_KINDS)}, got {index_kind!r}")
    if not 1 <= k < len(paths):
        raise InputError(f"-k {k} needs more than {k} training images; {root} has {len(paths)}")
    check_writable(workspace, InputError)
    if backbone is None:  # "re-run to add new images" must not swap the model for the default
        old = stored_backbone(workspace) or {"name": "lite0"}
        backbone = old["name"]
        weights, num_classes = weights or old.get("weights"), num_classes or old.get("num_classes")
        resize = resize or old.get("resize")
    bb = load_backbone(backbone, weights, num_classes, device, resize, layers)
    identity = _identity(bb)
    previous = None
    try:
        old = load_bank(workspace)
        if old.meta["identity"] == identity and old.meta["root"] == str(root):
            previous = old.embeddings
    except InputError:
        pass
    work = Path(workspace) / "work" / "index"
    emb = embed_folder(root, paths, bb, work, previous=previous, batch_size=batch_size, num_workers=num_workers,
                       measure=measure, progress=progress, identity=identity, keep_parts=True)
    t_embed = time.perf_counter() - t0
    if emb.ok.sum() < 2:
        raise InputError(f"fewer than 2 readable images in {root}: cannot calibrate")
    if k >= emb.ok.sum():  # (left out in calibration, a training image has one image fewer to be near)
        raise InputError(f"-k {k} needs more than {k} readable training images; {root} has {int(emb.ok.sum())}")
    shas = emb.table["sha"].to_numpy()[emb.ok]
    if len(set(shas)) < 2:
        raise InputError(f"the {int(emb.ok.sum())} readable images in {root} are copies of one image: "
                         f"nothing to calibrate on")
    table = emb.table.copy()
    table.insert(3, "label", lab if lab is not None else [""] * len(paths))
    conditions = fit_standardizer(table)
    scorer = FusedKNNScorer([*bb.views, ("conditions", len(conditions["columns"]))], k=k, index=index_kind,
                            raw_views=("conditions",))
    scorer.fit(with_conditions(emb.features, table, conditions)[emb.ok], copies=shas)
    meta = {
        "root": str(root), "created": _now(), "shiftbench": __version__,
        "backbone": {"name": str(Path(backbone).resolve()) if os.path.exists(backbone) else backbone,
                     "weights": str(Path(weights).resolve()) if weights and weights != "none"
                     else weights, "num_classes": num_classes, "resize": resize, "layers": layers},
        "identity": identity, "k": k, "index": scorer.index_info_, "conditions": conditions,
        "scorer": {"views": scorer.views, "raw_views": list(scorer.raw_views)},
        "counts": {"images": len(paths), "ok": int(emb.ok.sum()), "unreadable": int((~emb.ok).sum()),
                   "reused": emb.reused, "exact_copies": int(len(shas) - len(set(shas))),
                   "with_copies": max(int(sc.index_info_["rows_with_copies"]) for sc in scorer.scorers_.values())},
        "timings_s": {"embed": round(t_embed, 3), "total": round(time.perf_counter() - t0, 3)},
        "runtime": bb.runs_on,
    }
    bank = Bank(meta=meta, table=table, features=emb.features, scorer=scorer)
    save_bank(workspace, bank)
    shutil.rmtree(work / "parts", ignore_errors=True)  # kept until now: an interrupted calibration resumes
    return bank


def _identity(bb) -> dict:
    """Backbone identity plus the version of the condition measurements."""
    return {**bb.identity, "measures": MEASURES_VERSION}


SCAN_WORK = ".shiftbench-work"  # a scan's resumable work inside --out, where the workspace is read-only


# index()'s own options, which scan passes on with reference= (its labels are scan's production labels)
INDEX_OPTIONS = ("backbone", "weights", "num_classes", "resize", "layers", "k", "index_kind")


def _scan_cache(workspace: Path, prod_root: Path, out: str | Path | None) -> Path:
    """Where a scan keeps its embeddings and attributions, to resume and to reuse: the workspace's ``work/``,
    or ``OUT/.shiftbench-work`` where the workspace is read-only (a bank shared by a team)."""
    key = hashlib.blake2b(str(prod_root).encode(), digest_size=8).hexdigest()
    cache = workspace / "work" / f"scan-{key}"
    try:
        check_writable(cache)
        return cache
    except OSError:
        if out is None:
            raise InputError(f"the workspace {workspace} is read-only: pass --out to write the scan elsewhere") \
                from None
        return Path(out) / SCAN_WORK / cache.name  # keyed by the folder too: one --out, two folders


def _default_out(workspace: Path) -> Path:
    base = workspace / "scans" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out


def scan(prod_dir: str | Path, *, workspace: str | Path = DEFAULT_WORKSPACE, reference: str | Path | None = None,
         out: str | Path | None = None, fpr: float = 0.05, explain: bool = True, model: str | Path | None = None,
         labels: str | Path | None = None, device: str = "auto",
         batch_size: int = 32, num_workers: int | None = None, progress: Progress | None = None,
         explain_progress: Progress | None = None, **index_options) -> ScanResult:
    """Score every image of ``prod_dir`` against the reference bank and write the results.

    Parameters
    ----------
    prod_dir
        Production images (searched recursively).
    reference
        Training folder: build or update the bank first (``index_options`` go to :func:`index`).
        Without it the existing bank of ``workspace`` is used.
    out
        Output folder; default ``WORKSPACE/scans/<timestamp>``.
    fpr
        Target false-alarm rate on in-distribution images; sets the flag threshold.
    explain
        Attribute each flagged image to a cause by intervention and cluster them
        (:mod:`shiftbench.explain`); needs the training images where the bank found them.
        Without it flagged rows keep ``cause`` ``unknown`` and ``cluster`` -1.
    model
        A checkpoint from :func:`shiftbench.train`: adds its ``prediction`` and
        ``model_confidence`` per image (softmax probability of the predicted class).
    labels
        CSV ``path,label`` for some production images: adds ``label`` and
        ``correct`` (with ``model``), and each cluster card gets its error rate;
        clusters are then numbered by harm (error rate x size).
    workspace, device, batch_size, num_workers
        The folder of the bank (and of the resumable work and default output); as for :func:`index`.
    progress, explain_progress
        ``progress(done, total)`` callbacks: the embedding (with ``reference``, the index's first,
        then the scan's), and the attribution of the flagged images.

    Returns
    -------
    ScanResult
        ``table`` (one row per image: path, status, error, ood_score, p_value,
        is_ood, nearest_train, knn_distance, cause, cluster, mode (within
        the cluster: separate modes of its measured change), width, height, sha,
        ``new_pixel_size`` (a size outside the training images' range), then
        the condition measurements of :mod:`shiftbench.properties`, then the attribution
        details: ``cause_own``, the cause from the image's own interventions, and
        ``cause_agreement``; ``cause`` is the cause of the majority of alike flagged
        images where they agree, see :func:`shiftbench.explain.agree_with_neighbours`, and
        then ``confidence`` is that agreement, while shares, ``how_*`` and ``residual_*``
        stay the image's own evidence), ``summary``
        (with ``drift``: one two-sample test per measurement, training vs production),
        and ``out_dir`` holding ``images.csv``, ``summary.json`` and ``embeddings.npy``
        ((N, D) float32 penultimate features in the rows' order, NaN rows for unreadable files).
    """
    t0 = time.perf_counter()
    workspace = Path(workspace)
    if not 0 < fpr < 1:
        raise InputError(f"--fpr must be between 0 and 1, got {fpr}")
    root = Path(prod_dir).resolve()
    paths = find_images(root)  # before indexing: a mistyped folder fails at once
    if not paths:
        raise InputError(f"no images found in {root}")
    _check_options(out, model, labels, paths)  # and so does a mistyped option, before minutes of embedding
    unknown = sorted(set(index_options) - set(INDEX_OPTIONS))
    if unknown:  # (a typo, not an option for the bank)
        raise TypeError(f"scan() got unexpected keyword arguments {unknown}; index options: {', '.join(INDEX_OPTIONS)}")
    if out is not None:
        check_writable(out, InputError)  # not after the embedding and the attributions
    if reference is not None:  # (index checks that the workspace can be written, before any embedding)
        bank = index(reference, workspace=workspace, device=device, batch_size=batch_size,
                     num_workers=num_workers, progress=progress, **index_options)
    else:
        if index_options:
            raise InputError(f"{sorted(index_options)} only apply with --reference (reference= in Python)")
        bank = load_bank(workspace)
    cache = _scan_cache(workspace, root, out)
    t_index = time.perf_counter() - t0
    _check_reachable(bank, fpr)
    bb = load_backbone(**bank.meta["backbone"], device=device)
    identity = _identity(bb)
    check_identity(bank.meta, identity)
    t1 = time.perf_counter()
    emb = embed_folder(root, paths, bb, cache, previous=load_embeddings(cache, identity),
                       batch_size=batch_size, num_workers=num_workers, measure=measure, progress=progress,
                       identity=identity)
    t_embed = time.perf_counter() - t1
    save_embeddings(cache, identity, emb)

    feats = with_conditions(emb.features, emb.table, bank.meta["conditions"])
    table, measures = _score_table(emb, feats, bank, fpr)
    is_ood, t, cal = table["is_ood"].to_numpy(), emb.table, bank.scorer.calibration_
    if model is not None or labels is not None:
        from .training.scan_columns import add_model_columns
        add_model_columns(table, root, paths, model, labels, bb, emb.logits, device, batch_size, num_workers)
    t2 = time.perf_counter()
    cards, kept = explain_flagged(table, feats, root, bank, bb, cache, explain_progress) if explain and is_ood.any() \
        else ([], 0)
    t_explain = time.perf_counter() - t2
    tested = ["width", "height", *(m for m in measures if m not in ANGLES)]
    drift = drift_table(bank.table[bank.table["status"] == "ok"], t[emb.ok], tested)
    out_dir = (Path(out) if out is not None else _default_out(workspace)).resolve()  # (still right after a chdir)
    n, n_ok, n_flag = len(table), int(emb.ok.sum()), int(is_ood.sum())
    summary = {
        "shiftbench": __version__, "created": _now(), "prod_dir": str(root), "out_dir": str(out_dir),
        "workspace": str(workspace.resolve()),
        "bank": {"root": bank.meta["root"], "images": bank.meta["counts"]["ok"], "k": bank.meta["k"],
                 "index": bank.meta["index"]},
        "backbone": bank.meta["identity"],
        "runtime": bb.runs_on,  # forward: onnx (ONNX Runtime) or torch
        "counts": {"images": n, "ok": n_ok, "unreadable": n - n_ok, "flagged": n_flag},
        "share_flagged": n_flag / n_ok if n_ok else 0.0,
        "shift_test": cal.false_alarm_test(n_ok, n_flag, fpr),  # more flags than false alarms explain?
        "threshold": cal.threshold(fpr), "fpr_target": fpr,
        "calibration": cal.summary(fpr),
        "drift": drift.to_dict("records"),
        "clusters": cards,
        "reused": {"embeddings": int(emb.reused), "attributions": kept},  # from an earlier or interrupted run
        "timings_s": {"index": round(t_index, 3), "embed": round(t_embed, 3), "explain": round(t_explain, 3),
                      "total": round(time.perf_counter() - t0, 3),
                      "images_per_s": round(n / t_embed, 2) if t_embed > 0 else None},
        "unreadable": [{"path": a, "error": b} for a, b in
                       zip(t["path"][~emb.ok][:100], t["error"][~emb.ok][:100])],
    }
    # Each file is atomic; summary.json goes first and comes back last, so that a rerun into the same
    # folder that is killed half-way leaves no summary beside another run's table (collect refuses it).
    (out_dir / "summary.json").unlink(missing_ok=True)
    write_table(out_dir / "images.csv", table)
    save_npy(out_dir / "embeddings.npy", emb.features[:, :bank.scorer.views[0][1]])  # for collect's diversity
    write_json(out_dir / "summary.json", summary)
    return ScanResult(table=table, summary=summary, out_dir=out_dir)


def _score_table(emb: Embeddings, feats: np.ndarray, bank: Bank, fpr: float) -> tuple[pd.DataFrame, list[str]]:
    """``images.csv`` before the model's columns and the attributions: scores, flags and measurements
    (the attribution columns empty), and the names of the measurement columns."""
    scores, nearest, distances = bank.scorer.score(feats)
    cal = bank.scorer.calibration_
    p = cal.p_values(scores)
    is_ood = np.nan_to_num(p, nan=1.0) <= fpr
    train_paths = bank.table["path"].to_numpy()[bank.rows]
    t = emb.table
    table = pd.DataFrame({
        "path": t["path"], "status": t["status"], "error": t["error"],
        "ood_score": scores, "p_value": p, "is_ood": is_ood,
        "nearest_train": np.where(nearest >= 0, train_paths[np.maximum(nearest, 0)], ""),
        "knn_distance": distances["penultimate"],
        "cause": np.where(is_ood, "unknown", "none"), "confidence": np.nan,
        **{f"share_{c}": np.nan for c in CAUSES}, "cluster": -1, "mode": -1,
        "width": t["width"], "height": t["height"], "sha": t["sha"],
        "new_pixel_size": new_pixel_size(t["height"], t["width"], *train_sizes(bank.table)) & (t["status"] == "ok"),
    })
    measures = [c for c in t.columns if c not in table.columns and c not in TABLE_COLUMNS
                and pd.api.types.is_numeric_dtype(t[c])]
    table = pd.concat([table, t[measures]], axis=1)
    # attribution details: the same columns whether or not anything was flagged or explained
    table = table.assign(rotation_deg=np.nan, residual_score=np.nan, residual_p=np.nan, undo_lighting=np.nan,
                         **{f"how_{c}": "" for c in CAUSES}, cause_own=table["cause"], cause_agreement=np.nan)
    return table, measures


def _check_options(out, model, labels, paths: list[str]) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out is not None and Path(out).is_dir() and any(p.name != SCAN_WORK for p in Path(out).iterdir()) \
            and not (Path(out) / "images.csv").is_file():  # a scan's files would replace the user's own
        raise InputError(f"--out {out} holds files and is not a scan's output folder: choose another --out")
    if labels is not None and not Path(labels).is_file():
        raise InputError(f"--labels {labels}: no such file")
    if labels is not None:
        labels_from_csv(labels, paths)  # an unreadable CSV, or one that names none of the images, fails here
    if model is not None and not Path(model).exists():
        raise InputError(f"--model {model}: no such checkpoint folder")


def _check_reachable(bank: Bank, fpr: float) -> None:
    """Refuse a scan that could flag nothing: with n calibration images the smallest p-value is 1/(n+1)."""
    n = len(bank.scorer.calibration_.scores)
    if not np.isfinite(bank.scorer.calibration_.threshold(fpr)):
        raise InputError(f"the bank holds {n} readable training images: with so few no image can be flagged at "
                         f"--fpr {fpr:g} (the smallest p-value is 1/{n + 1} = {1 / (n + 1):.3g}); index at least "
                         f"{int(np.ceil(1 / fpr)) - 1} images, or scan with --fpr {1 / (n + 1):.3g} or more")


def write_table(path: Path, table: pd.DataFrame) -> None:
    """CSV with booleans as ``true``/``false`` and floats to 6 significant digits, atomically."""
    t = table.copy()
    for c in t.columns:
        if t[c].dtype == bool:
            t[c] = np.where(t[c], "true", "false")
    write_with(path, lambda p: t.to_csv(p, index=False, float_format="%.6g"))
