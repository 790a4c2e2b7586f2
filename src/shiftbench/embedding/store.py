"""Embed a folder resumably: finished batches are saved as they come, reused after.

Two things make repeated runs cheap:

* *parts*: while embedding, every few hundred images go to ``parts/part-NNNNN.npz``
  (atomically). An interrupted run started again loads them and embeds only
  the rest.
* *previous results*: a file whose path, size and modification time match a row
  of an earlier result (the bank, when re-indexing a grown folder) is not read.

Both are only trusted when the backbone identity they were made with matches.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..fsutil import save_npy, save_npz, write_json, write_with
from .backbones import Backbone
from .extract import embed_files

TABLE_COLUMNS = ["path", "status", "error", "sha", "size", "mtime_ns", "width", "height"]


@dataclass
class Embeddings:
    """Per-image table and features of one folder.

    ``table`` has one row per file with :data:`TABLE_COLUMNS` (``status`` is
    ``ok`` or ``unreadable``) plus one column per measurement; ``features`` is
    (N, D) float32, aligned with ``table``, NaN rows where unreadable; ``logits``
    (N, C) float32 likewise when the backbone is a classifier with named classes
    (a shiftbench checkpoint) and every row has them, else None.
    """

    table: pd.DataFrame
    features: np.ndarray
    logits: np.ndarray | None = None
    reused: int = 0  # rows taken from earlier results instead of being embedded

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: rows with an embedding."""
        return (self.table["status"] == "ok").to_numpy()


def _stat(root: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    size = np.full(len(paths), -1, dtype=np.int64)
    mtime = np.full(len(paths), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(root / p)
            size[i], mtime[i] = st.st_size, st.st_mtime_ns
        except OSError:
            pass  # reported as unreadable by the worker
    return size, mtime


def _load_parts(parts_dir: Path, identity: dict) -> list[dict]:
    """Rows saved by an earlier, interrupted run with the same backbone."""
    ident_file = parts_dir / "identity.json"
    if ident_file.is_file() and json.loads(ident_file.read_text()) != identity:
        shutil.rmtree(parts_dir)  # made by another backbone: useless
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json(ident_file, identity)
    rows = []
    for f in sorted(parts_dir.glob("part-*.npz")):
        with np.load(f, allow_pickle=False) as z:
            cols = {k: z[k] for k in z.files}
        for j in range(len(cols["path"])):
            rows.append({k: v[j] for k, v in cols.items()})
    return rows


def _save_part(parts_dir: Path, rows: list[dict]) -> None:
    n = len(list(parts_dir.glob("part-*.npz")))
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    save_npz(parts_dir / f"part-{n:05d}.npz", **cols)


def embed_folder(root: str | os.PathLike, paths: list[str], backbone: Backbone, work_dir: str | os.PathLike,
                 *, previous: Embeddings | None = None, batch_size: int = 32, num_workers: int | None = None,
                 measure: Callable[..., dict] | None = None,
                 progress: Callable[[int, int], None] | None = None, flush_every: int = 256,
                 identity: dict | None = None, keep_parts: bool = False) -> Embeddings:
    """Embed the images ``root/paths`` and return them in ``paths`` order.

    Parameters
    ----------
    work_dir
        Folder for resumable parts (``work_dir/parts``); removed on success, unless ``keep_parts``:
        then every row is saved there and the caller removes it once its own result is saved
        (an interruption after the embedding then loses none of it).
    previous
        Earlier results made with the same backbone, reused per unchanged file.
    progress
        Called as ``progress(done, total)`` after each batch.
    identity
        What saved parts must have been made with to be reused (default: the
        backbone's identity and the measure function's name); include the
        version of ``measure``'s definitions here.
    """
    root, parts_dir = Path(root), Path(work_dir) / "parts"
    size, mtime = _stat(root, paths)
    known: dict[tuple, dict] = {}
    if previous is not None:
        extra = [c for c in previous.table.columns if c not in TABLE_COLUMNS]
        for j, rec in enumerate(previous.table.to_dict("records")):
            known[(rec["path"], int(rec["size"]), int(rec["mtime_ns"]))] = {
                **rec, "measures": {c: rec[c] for c in extra}, "features": previous.features[j],
                **({"logits": previous.logits[j]} if previous.logits is not None else {})}
    if identity is None:
        measure_id = None if measure is None else f"{measure.__module__}.{measure.__qualname__}"
        identity = {**backbone.identity, "measure": measure_id}
    for row in _load_parts(parts_dir, identity):
        row["measures"] = json.loads(str(row["measures"]))
        known[(str(row["path"]), int(row["size"]), int(row["mtime_ns"]))] = row
    keys = [(p, int(s), int(m)) for p, s, m in zip(paths, size, mtime)]
    todo = [i for i, k in enumerate(keys) if k not in known]

    done, pending, last_flush = len(paths) - len(todo), [], time.monotonic()
    if progress:
        progress(done, len(paths))
    try:
        for batch in embed_files(root, [paths[i] for i in todo], backbone, batch_size=batch_size,
                                 num_workers=num_workers, measure=measure):
            for j, b in enumerate(batch.index):
                i = todo[b]
                row = {"path": paths[i], "status": "unreadable" if batch.error[j] else "ok",
                       "error": batch.error[j], "sha": batch.sha[j], "size": size[i], "mtime_ns": mtime[i],
                       "width": batch.width[j], "height": batch.height[j], "features": batch.features[j],
                       "measures": json.dumps(batch.measures[j])}
                if backbone.classes is not None:  # a classifier: keep its logits (scan --model reuses them)
                    row["logits"] = batch.logits[j] if batch.logits is not None \
                        else np.full(len(backbone.classes), np.nan, np.float32)
                pending.append(row)
                known[keys[i]] = {**row, "measures": batch.measures[j]}
            done += len(batch.index)
            if progress:
                progress(done, len(paths))
            if len(pending) >= flush_every or (pending and time.monotonic() - last_flush > 60):
                _save_part(parts_dir, pending)
                pending, last_flush = [], time.monotonic()
    except BaseException:  # Ctrl-C or a crash: keep what was embedded since the last flush
        if pending:
            _save_part(parts_dir, pending)
        raise
    rows = [known[k] for k in keys]
    if not keep_parts:
        shutil.rmtree(parts_dir, ignore_errors=True)
    elif pending:
        _save_part(parts_dir, pending)
    emb = _assemble(rows, backbone.feature_dim)
    emb.reused = len(paths) - len(todo)
    return emb


def _assemble(rows: list[dict], dim: int) -> Embeddings:
    table = pd.DataFrame({c: [r[c] for r in rows] for c in TABLE_COLUMNS})
    for c in ("path", "status", "error", "sha"):
        table[c] = table[c].astype(str)
    for c in ("size", "mtime_ns", "width", "height"):
        table[c] = table[c].astype(np.int64)
    measures = [r.get("measures") or {} for r in rows]
    if any(measures):
        table = pd.concat([table, pd.DataFrame(measures, index=table.index)], axis=1)
    feats = np.stack([r["features"] for r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    logits = np.stack([r["logits"] for r in rows]).astype(np.float32) \
        if rows and all("logits" in r for r in rows) else None
    return Embeddings(table=table, features=feats, logits=logits)


def load_embeddings(cache: Path, identity: dict) -> Embeddings | None:
    """What :func:`save_embeddings` kept in ``cache``, or None where it is missing, damaged or made by
    another model (``identity``)."""
    try:
        if json.loads((cache / "identity.json").read_text()) != identity:
            return None
        logits = np.load(cache / "logits.npy") if (cache / "logits.npy").is_file() else None
        table, features = pd.read_parquet(cache / "images.parquet"), np.load(cache / "features.npy")
    except (OSError, ValueError):
        return None
    if len(features) != len(table) or (logits is not None and len(logits) != len(table)):
        return None  # files of two runs (identity.json is written last, so this should not happen)
    return Embeddings(table, features, logits)


def save_embeddings(cache: Path, identity: dict, emb: Embeddings) -> None:
    """Keep ``emb`` in ``cache`` for a later run; ``identity`` last: a run killed half-way leaves files
    that :func:`load_embeddings` does not use."""
    (cache / "identity.json").unlink(missing_ok=True)
    write_with(cache / "images.parquet", lambda p: emb.table.to_parquet(p, index=False))
    save_npy(cache / "features.npy", emb.features)
    if emb.logits is not None:
        save_npy(cache / "logits.npy", emb.logits)
    else:
        (cache / "logits.npy").unlink(missing_ok=True)
    write_json(cache / "identity.json", identity)
