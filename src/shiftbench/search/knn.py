"""Nearest-neighbour search over embeddings: the only module that imports faiss.

Plain functions, arrays in and out (in the style of ``faiss.contrib``). Vectors
are expected L2-normalised; distances returned are Euclidean (not squared), so
for unit vectors they lie in [0, 2].
"""

from __future__ import annotations

import os

import faiss
import numpy as np

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_FLAT_MAX = 200_000  # exact search stays fast enough below this many vectors


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; (N, D) float32 in, (N, D) float32 out."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def build_index(x: np.ndarray, kind: str = "auto", *, nlist: int | None = None,
                hnsw_m: int = 32, seed: int = 0) -> faiss.Index:
    """Build a faiss index over ``x`` (N, D) float32.

    ``kind``: ``flat`` (exact), ``ivf`` (inverted lists, nlist ~ 4 sqrt(N)),
    ``hnsw`` (graph), or ``auto`` (flat up to 200k vectors, IVF above).
    Approximate indexes start with a default search breadth; call
    :func:`tune_recall` to set it from measured recall.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= AUTO_FLAT_MAX else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        nlist = nlist or int(min(max(4 * np.sqrt(n), 1), 65536, max(n // 39, 1)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, min(n, 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = min(16, nlist)
    index.add(x)
    return index


def search(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of each row of ``q`` (M, D).

    Returns
    -------
    dist : (M, k) float32, Euclidean distances, ascending (inf where fewer than k exist)
    ids : (M, k) int64, row numbers in the indexed array (-1 where missing)
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    d2, ids = index.search(q, k)
    d2 = np.where(ids < 0, np.inf, np.maximum(d2, 0))
    return np.sqrt(d2).astype(np.float32), ids


def set_breadth(index: faiss.Index, breadth: int) -> None:
    """Set the search breadth of an approximate index (IVF nprobe, HNSW efSearch)."""
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = int(breadth)
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(breadth)


def recall_at_k(index: faiss.Index, exact: faiss.Index, q: np.ndarray, k: int = 10,
                own_ids: np.ndarray | None = None) -> float:
    """Share of the exact k nearest neighbours that ``index`` also returns.

    ``own_ids`` (M,): when the queries are indexed vectors themselves, their own
    ids, which are left out of both lists (finding oneself is no test of recall).
    """
    extra = 0 if own_ids is None else 1
    _, truth = search(exact, q, k + extra)
    return _recall(truth, search(index, q, k + extra)[1], k, own_ids)


def _recall(truth: np.ndarray, got: np.ndarray, k: int, own_ids: np.ndarray | None) -> float:
    hits = total = 0
    for j, (a, b) in enumerate(zip(truth, got)):
        if own_ids is not None:
            a, b = a[a != own_ids[j]][:k], b[b != own_ids[j]][:k]
        a, b = a[a >= 0], b[b >= 0]
        hits += len(np.intersect1d(a, b))
        total += len(a)
    return hits / max(1, total)


def tune_recall(index: faiss.Index, x: np.ndarray, *, target: float = 0.95, k: int = 10,
                n_queries: int = 500, seed: int = 0) -> dict:
    """Raise the search breadth of an approximate index until recall@k >= target.

    Recall is measured against exact search over the same vectors ``x`` (N, D),
    with ``n_queries`` of them as queries, each one's own hit left out. Returns ``{"kind", "breadth",
    "recall_at_k", "k"}``; a flat index reports recall 1.0.
    """
    if not isinstance(index, (faiss.IndexIVF, faiss.IndexHNSW)):
        return {"kind": "flat", "breadth": None, "recall_at_k": 1.0, "k": k}
    rng = np.random.default_rng(seed)
    own = rng.choice(len(x), min(n_queries, len(x)), replace=False)
    q = x[own]
    # Ground truth once, by brute force over the caller's array (no copy into an index).
    _, truth = faiss.knn(np.ascontiguousarray(q, dtype=np.float32),
                         np.ascontiguousarray(x, dtype=np.float32), k + 1)
    is_ivf = isinstance(index, faiss.IndexIVF)
    limit = index.nlist if is_ivf else 4096
    breadth, rec = (index.nprobe if is_ivf else index.hnsw.efSearch), 0.0
    while True:
        set_breadth(index, breadth)
        rec = _recall(truth, search(index, q, k + 1)[1], k, own)
        if rec >= target or breadth >= limit:
            break
        breadth = min(limit, breadth * 2)
    return {"kind": "ivf" if is_ivf else "hnsw", "breadth": breadth, "recall_at_k": rec, "k": k}


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write an index (not atomic by itself: wrap with :mod:`shiftbench.fsutil`)."""
    faiss.write_index(index, str(path))


def load_index(path: str | os.PathLike) -> faiss.Index:
    return faiss.read_index(str(path))
