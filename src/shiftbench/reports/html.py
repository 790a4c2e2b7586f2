"""One self-contained HTML page per scan: what drifted, each failure cluster with its images beside
their nearest training images, and every flagged image with its cause.

It reads what the scan wrote (``images.csv``, ``summary.json``, and ``collect/`` when ``shiftbench
collect`` ran) and the image files for thumbnails, so it can be made, or made again after
``collect``, without the bank or a model. Thumbnails are small JPEGs inlined as ``data:`` URIs: the
page can be mailed or attached to a ticket as one file. An image that is gone, or whose bytes differ
from those scanned (``sha``), gets no thumbnail, and the page says how many.
"""

from __future__ import annotations

import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import jinja2
import numpy as np
import pandas as pd

from ..collection.scan_io import load_scan
from ..fsutil import write_text
from ..images import ImageError, InputError, decode_image
from ..scoring.knn import shift_verdict

CAUSES = ("lighting", "angle", "resolution", "pipeline")
THUMB = 128  # longest side of a thumbnail, pixels
MAX_ASPECT = 8  # a longer side is cropped around its centre: a 2000x16 image stays visible
PER_CLUSTER = 6  # images shown per cluster (its medoids first, then its most unusual)
MAX_ROWS = 2000  # flagged (and unreadable) images listed (all are in images.csv)
NO_CHANGE = ("", "none", "relit", "nan")  # how_<cause> values that describe no measured change


def write_report(scan_dir: str | Path, out: str | Path | None = None, max_images: int = 200) -> Path:
    """Write ``report.html`` for a scan folder and return its path.

    Parameters
    ----------
    scan_dir : a folder written by :func:`shiftbench.scan`.
    out : the HTML file (a name with a suffix), or a folder to write ``report.html`` into (an existing
        folder, a path ending in ``/`` or a name without suffix; default: ``scan_dir``); written atomically.
    max_images : thumbnails in the table of flagged images (the most unusual first); the
        clusters' own images are always shown.

    Raises
    ------
    InputError : ``scan_dir`` is not a scan folder, or ``max_images`` is negative.
    """
    if max_images < 0:
        raise InputError(f"max_images must be at least 0, got {max_images}")
    scan = load_scan(scan_dir, embeddings=False)
    summary, table = scan.summary, _clean(scan.table)
    prod_root = scan.prod_dir
    bank_root = (summary.get("bank") or {}).get("root")
    train_root = Path(bank_root) if bank_root else None  # unknown: no training thumbnails
    flagged = table[table["is_ood"] & (table["status"] == "ok")].sort_values("ood_score", ascending=False)
    by_path = flagged.set_index("path")
    clusters = [_cluster(card, flagged, by_path) for card in summary.get("clusters") or []]
    in_table = flagged["path"].head(min(max_images, MAX_ROWS)).tolist()
    thumbs = _thumbnails(_wanted(clusters, in_table, table, prod_root, train_root))
    for c in clusters:
        for r in c["rows"]:
            r["thumb"] = thumbs.get((str(prod_root), r["path"]), "")
            r["near_thumb"] = thumbs.get((str(train_root), r["nearest_train"]), "") if train_root else ""
    rows = [_row(r, thumbs.get((str(prod_root), r["path"]), "") if i < max_images else "")
            for i, (_, r) in enumerate(flagged.head(MAX_ROWS).iterrows())]
    unreadable = table[table["status"] != "ok"][["path", "error"]]
    page = _template().render(
        head=_head(summary, table, len(flagged)), clusters=clusters, drift=_drift(summary.get("drift") or []),
        rows=rows, n_flagged=len(flagged), causes=CAUSES, has_model="prediction" in scan.table,
        flagged_note=f" (the {MAX_ROWS} most unusual of {len(flagged)}; all in images.csv)"
        if len(flagged) > MAX_ROWS else "",
        unreadable=unreadable.head(MAX_ROWS).to_dict("records"),
        unreadable_note=f" (the first {MAX_ROWS} of {len(unreadable)}; all in images.csv)"
        if len(unreadable) > MAX_ROWS else "",
        missing=sum(not uri for uri in thumbs.values()), n_wanted=len(thumbs), prod_root=prod_root,
        train_root=train_root, collect=_collect(scan.scan_dir / "collect", scan.summary.get("created")))
    target = Path(out) if out is not None else scan.scan_dir
    is_folder = target.is_dir() or not target.exists() and (str(out).endswith(("/", "\\")) or not target.suffix)
    target = target / "report.html" if is_folder else target
    write_text(target, page)
    return target


def _wanted(clusters: list[dict], in_table: list[str], table: pd.DataFrame, prod_root: Path,
            train_root: Path | None) -> list[tuple[Path, str, str]]:
    """(root, path, content hash or "") of every image the page shows: the cards' images and their
    training neighbours, and the table's first rows."""
    shas = dict(zip(table["path"], table["sha"])) if "sha" in table else {}
    on_cards = [r["path"] for c in clusters for r in c["rows"]]
    wanted = [(prod_root, p, shas.get(p, "")) for p in dict.fromkeys(on_cards + in_table)]
    if train_root is not None:
        wanted += [(train_root, r["nearest_train"], "") for c in clusters for r in c["rows"] if r["nearest_train"]]
    return list(dict.fromkeys(wanted))


def _clean(table: pd.DataFrame) -> pd.DataFrame:
    """The columns the page reads, whatever an older or edited images.csv holds: one row per path,
    numbers as numbers (unreadable cells NaN), text without NaN."""
    t = table.drop_duplicates("path").copy()
    for c in ("error", "nearest_train", "prediction", *(f"how_{c}" for c in CAUSES)):
        t[c] = t[c].astype("string").fillna("").astype(str) if c in t else ""
    for c in ("ood_score", "p_value", "confidence", "model_confidence", *(f"share_{c}" for c in CAUSES)):
        t[c] = pd.to_numeric(t[c], errors="coerce") if c in t else np.nan
    t["status"] = t["status"].astype(str)
    return t


def _head(s: dict, t: pd.DataFrame, n_flagged: int) -> dict:
    """The page's opening lines, from whatever the summary records (older scans record less)."""
    ok = int((t["status"] == "ok").sum())
    bank, bb = s.get("bank") or {}, s.get("backbone") or {}
    return {"title": str(s.get("prod_dir", "")), "images": len(t), "ok": ok, "flagged": n_flagged,
            "share": f" ({100 * n_flagged / ok:.1f}%)" if ok else "", "unreadable": len(t) - ok,
            "fpr": f"{100 * s['fpr_target']:.1f}%" if s.get("fpr_target") is not None else "",
            "threshold": _num(s.get("threshold")), "backbone": bb.get("backbone", "?"),
            "bank": f"{bank.get('root', '?')} ({bank.get('images', '?')} images)",
            "created": s.get("created", "?"), "version": s.get("shiftbench", "?"),
            "verdict": shift_verdict(s["shift_test"]) if s.get("shift_test") else ""}


def _cluster(card: dict, flagged: pd.DataFrame, by_path: pd.DataFrame) -> dict:
    """A cluster card, normalised, with the rows to show: its medoids, then its members by score."""
    members = flagged.loc[flagged["cluster"] == card.get("cluster"), "path"].tolist()
    paths = [p for p in dict.fromkeys([*(card.get("medoids") or []), *members]) if p in by_path.index]
    change = card.get("change") or []
    error_rate = card.get("error_rate")
    return {"cluster": card.get("cluster", "?"), "size": card.get("size", len(members)),
            "cause": str(card.get("cause") or "unknown"), "confidence": card.get("confidence"),
            "taken_from_alike": card.get("taken_from_alike") or 0,
            "change": [change] if isinstance(change, str) else list(change),
            "error_rate": error_rate if isinstance(error_rate, (int, float)) else None,
            "labelled": card.get("labelled"),
            "rows": [_row(pd.Series({**by_path.loc[p].to_dict(), "path": p}), "") for p in paths[:PER_CLUSTER]]}


def _row(r: pd.Series, thumb: str) -> dict:
    """One flagged image for the page: its shares (blank where missing), the change it was attributed to."""
    shares = {c: float(r.get(f"share_{c}", np.nan)) for c in CAUSES}
    bars = {c: round(60 * v) if np.isfinite(v) else 0 for c, v in shares.items()}  # px
    return {**r.to_dict(), "shares": shares, "bars": bars, "thumb": thumb, "changes": _changes(r)}


def _changes(r: pd.Series) -> list[str]:
    """The estimated change of each cause the image is attributed to (``how_<cause>``): every cause is
    tried, so the others' are what explained least, not what happened."""
    named = [c for c in str(r.get("cause", "")).split("+") if c in CAUSES]
    return [f"{c}: {r[f'how_{c}']}" for c in named if str(r.get(f"how_{c}", "")).strip() not in NO_CHANGE]


def _drift(drift: list[dict]) -> list[dict]:
    """Drifted measurements first, largest effect first."""
    return sorted(drift, key=lambda d: (not d.get("drifted"), -abs(d.get("effect") or 0.0)))


def _collect(folder: Path, created: str | None) -> dict | None:
    """``collect``'s plan.json when it ran on this scan (``created``: the scan's time): a scan written into
    a folder used before would otherwise show the earlier scan's plan."""
    try:
        plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if plan.get("scan_created", created) == created else None


def _thumbnails(wanted: list[tuple[Path, str, str]]) -> dict[tuple[str, str], str]:
    """(root, relative path) -> JPEG data URI, for (root, path, sha) items; an image that is gone,
    unreadable or not the one scanned (its bytes' blake2b is not ``sha``) gets none."""
    def one(item: tuple[Path, str, str]) -> str:
        root, rel, sha = item
        try:
            data = (root / rel).read_bytes()
            if sha and hashlib.blake2b(data, digest_size=16).hexdigest() != sha:
                return ""
            img = decode_image(data, thumbnail=THUMB)
        except (ImageError, InputError, OSError, ValueError):
            return ""
        return _jpeg_uri(_fit(img))

    with ThreadPoolExecutor(max_workers=4) as pool:  # decoding releases the GIL
        return {(str(root), p): uri for (root, p, _), uri in zip(wanted, pool.map(one, wanted))}


def _fit(img: np.ndarray) -> np.ndarray:
    """At most THUMB px on its longer side, which is first cut to MAX_ASPECT times the shorter."""
    h, w = img.shape[:2]
    if w > MAX_ASPECT * h:
        x0 = (w - MAX_ASPECT * h) // 2
        img, w = img[:, x0:x0 + MAX_ASPECT * h], MAX_ASPECT * h
    elif h > MAX_ASPECT * w:
        y0 = (h - MAX_ASPECT * w) // 2
        img, h = img[y0:y0 + MAX_ASPECT * w], MAX_ASPECT * w
    f = THUMB / max(h, w)
    if f < 1:
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return img


def _jpeg_uri(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("shiftbench.reports", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return env.get_template("report.html.j2")


def _num(v, digits: int = 3) -> str:
    """A number for the page: significant digits, blank for missing."""
    if v is None or isinstance(v, jinja2.Undefined):
        return ""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "" if not np.isfinite(x) else f"{x:.{digits}g}"
