"""The reference bank: training embeddings, their index and calibration, on disk.

Layout of ``WORKSPACE/bank/``::

    bank.json         backbone spec and identity, training root, k, index info, counts
    images.parquet    one row per training file (path, status, error, sha, size,
                      mtime_ns, width, height, label, measurements...)
    features.npy      (N, D) float32 raw features, NaN rows where unreadable
    index-VIEW.faiss  one faiss index per feature view, over the readable rows
    loo.npy           (n_ok, n_views) leave-one-out score of each readable row per view

A new bank is written complete into a temporary folder and then swapped in, so
a crash leaves either the old bank or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .embedding import Embeddings
from .fsutil import remove_stale
from .images import InputError
from .scoring import FusedKNNScorer, KNNScorer
from .search import load_index, save_index

BANK_VERSION = 3


@dataclass
class Bank:
    """A loaded reference bank.

    ``table`` has one row per training file; ``features`` (N, D) aligned with it;
    ``scorer`` is fitted on the readable rows of the features with the
    conditions view appended (``meta["conditions"]`` standardises it), whose table positions are ``rows``
    (scorer id ``i`` is table row ``rows[i]``).
    """

    meta: dict
    table: pd.DataFrame
    features: np.ndarray
    scorer: FusedKNNScorer
    rows: np.ndarray | None = None

    def __post_init__(self):
        if self.rows is None:
            self.rows = np.flatnonzero((self.table["status"] == "ok").to_numpy())

    @property
    def embeddings(self) -> Embeddings:
        """The bank as an :class:`Embeddings` (without labels), for incremental re-indexing."""
        return Embeddings(self.table.drop(columns=["label"], errors="ignore"), self.features)


def bank_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "bank"


def save_bank(workspace: str | os.PathLike, bank: Bank) -> Path:
    """Write ``bank`` to ``workspace/bank`` atomically (whole-folder swap)."""
    final = bank_dir(workspace)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bank-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        bank.table.to_parquet(tmp / "images.parquet", index=False)
        np.save(tmp / "features.npy", bank.features)
        for name, sc in bank.scorer.scorers_.items():
            save_index(sc.index_, tmp / f"index-{name}.faiss")
        np.save(tmp / "loo.npy", np.stack([sc.loo_ for sc in bank.scorer.scorers_.values()], axis=1))
        (tmp / "bank.json").write_text(json.dumps({**bank.meta, "version": BANK_VERSION}, indent=2))
        old = final.with_name("bank.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    remove_stale(final.parent, ".bank-")
    return final


def load_bank(workspace: str | os.PathLike) -> Bank:
    """Load ``workspace/bank`` (or the previous bank if a swap was interrupted)."""
    d = bank_dir(workspace)
    if not (d / "bank.json").is_file() and (d.with_name("bank.old") / "bank.json").is_file():
        d = d.with_name("bank.old")
    if not (d / "bank.json").is_file():
        raise InputError(f"no reference bank in {Path(workspace)}: run 'shiftbench index TRAIN_DIR' "
                         f"first, or pass --reference TRAIN_DIR to scan")
    try:
        return _read_bank(d)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # RuntimeError: faiss's reader
        raise InputError(f"{d} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         f"re-run 'shiftbench index TRAIN_DIR' to rebuild it") from None


def stored_backbone(workspace: str | os.PathLike) -> dict | None:
    """The ``backbone`` settings (name, weights, num_classes, resize, layers) of the workspace's bank,
    read from its bank.json alone; None where there is no readable bank."""
    for d in (bank_dir(workspace), bank_dir(workspace).with_name("bank.old")):
        try:
            return dict(json.loads((d / "bank.json").read_text())["backbone"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _read_bank(d: Path) -> Bank:
    meta = json.loads((d / "bank.json").read_text())
    if meta.get("version") != BANK_VERSION:
        raise InputError(f"{d} was written by another shiftbench version; re-run 'shiftbench index'")
    views, raw = meta["scorer"]["views"], tuple(meta["scorer"]["raw_views"])
    loo = np.load(d / "loo.npy")
    scorers = {name: KNNScorer.restore(load_index(d / f"index-{name}.faiss"), meta["index"][name],
                                       loo[:, j], meta["k"], normalize=name not in raw)
               for j, (name, _) in enumerate(views)}
    scorer = FusedKNNScorer(views, k=meta["k"], raw_views=raw).restore(scorers)
    table = pd.read_parquet(d / "images.parquet")
    features = np.load(d / "features.npy")
    if len(features) != len(table) or len(loo) != int((table["status"] == "ok").sum()):
        raise ValueError(f"{len(table)} table rows, {len(features)} feature rows, {len(loo)} calibration rows")
    return Bank(meta=meta, table=table, features=features, scorer=scorer)


def check_identity(bank_meta: dict, identity: dict) -> None:
    """Refuse to compare features made by different backbones or preprocessing."""
    theirs = bank_meta["identity"]
    if theirs != identity:
        diff = [k for k in identity if identity.get(k) != theirs.get(k)]
        if diff == ["measures"]:
            raise InputError(
                f"the bank's condition measurements are version {theirs.get('measures')}, this shiftbench's "
                f"{identity['measures']} (a definition changed): index the training images again "
                f"(shiftbench index {bank_meta.get('root', 'TRAIN_DIR')}), or scan with --reference, which does")
        raise InputError(
            f"the bank was built with backbone {theirs['backbone']!r} "
            f"(weights {str(theirs['weights'])[:12]}, preprocess {theirs['preprocess']}) but these "
            f"images would be embedded with {identity['backbone']!r} (differs in: {', '.join(diff)}). "
            f"Distances across feature spaces are meaningless: re-index with the same backbone, "
            f"or scan without --backbone/--weights to use the bank's own.")
