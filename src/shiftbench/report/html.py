"""One self-contained HTML page per scan: what drifted, each failure cluster with its images beside
their nearest training images, and every flagged image with its cause.

It reads only what the scan wrote (``images.csv``, ``summary.json``, and ``collect/`` when
``shiftbench collect`` ran) plus the image files for thumbnails, so it can be made, or made
again after ``collect``, without the bank or a model. Thumbnails are small JPEGs inlined as
``data:`` URIs: the page can be mailed or attached to a ticket as one file.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import jinja2
import numpy as np
import pandas as pd

from ..collection.scan_io import load_scan
from ..fsutil import write_text
from ..images import ImageError, InputError, read_image

CAUSES = ("lighting", "angle", "resolution", "pipeline")
THUMB = 128  # longest side of a thumbnail, pixels
PER_CLUSTER = 6  # images shown per cluster (its medoids first, then its most unusual)
MAX_ROWS = 2000  # flagged images listed in the table (all are in images.csv)


def write_report(scan_dir: str | Path, out: str | Path | None = None, max_images: int = 200) -> Path:
    """Write ``report.html`` for a scan folder and return its path.

    Parameters
    ----------
    scan_dir : a folder written by :func:`shiftbench.scan`.
    out : the HTML file (default ``SCAN_DIR/report.html``); written atomically.
    max_images : thumbnails in the table of flagged images (the most unusual first); the
        clusters' own images are always shown.

    Raises
    ------
    InputError : ``scan_dir`` is not a scan folder.
    """
    if max_images < 0:
        raise InputError(f"--max-images must be at least 0, got {max_images}")
    scan = load_scan(scan_dir)
    s, t = scan.summary, scan.table
    prod_root, train_root = scan.prod_dir, Path(s.get("bank", {}).get("root", ""))
    flagged = scan.flagged.sort_values("ood_score", ascending=False)
    clusters = [_cluster(card, flagged) for card in s.get("clusters", [])]
    shown = {p for c in clusters for p in c["paths"]} | set(flagged["path"].head(max_images))
    nearest = dict(zip(t["path"], t["nearest_train"].fillna("").astype(str))) if "nearest_train" in t else {}
    wanted = [(prod_root, p) for p in shown] + [(train_root, nearest[p]) for p in shown if nearest.get(p)]
    thumbs = _thumbnails(wanted)
    page = _template().render(
        head=_head(s, t, len(flagged)), clusters=clusters, drift=_drift(s.get("drift", [])),
        rows=[_row(r, thumbs.get((str(prod_root), r["path"]), "") if i < max_images else "")
              for i, (_, r) in enumerate(flagged.head(MAX_ROWS).iterrows())],
        n_flagged=len(flagged), max_rows=MAX_ROWS, causes=CAUSES,
        thumb=lambda root, p: thumbs.get((str(root), p), ""), nearest=nearest, prod_root=prod_root,
        train_root=train_root, unreadable=t[t["status"].astype(str) != "ok"][["path", "error"]].to_dict("records"),
        collect=_collect(scan.scan_dir / "collect"), has_model="prediction" in t)
    target = Path(out) if out is not None else scan.scan_dir / "report.html"
    write_text(target, page)
    return target


def _head(s: dict, t: pd.DataFrame, n_flagged: int) -> dict:
    """The page's opening lines, from whatever the summary records (older scans record less)."""
    ok = int((t["status"].astype(str) == "ok").sum())
    bank, bb = s.get("bank") or {}, s.get("backbone") or {}
    return {"title": str(s.get("prod_dir", "")), "images": len(t), "ok": ok, "flagged": n_flagged,
            "share": f"{100 * n_flagged / ok:.1f}%" if ok else "", "unreadable": len(t) - ok,
            "fpr": f"{100 * s['fpr_target']:.1f}%" if s.get("fpr_target") is not None else "",
            "threshold": _num(s.get("threshold")), "bank": f"{bank.get('root', '?')} ({bank.get('images', '?')} images)",
            "backbone": bb.get("backbone", "?"), "created": s.get("created", "?"), "version": s.get("shiftbench", "?")}


def _cluster(card: dict, flagged: pd.DataFrame) -> dict:
    """A cluster card with the images to show: its medoids, then its members by score."""
    members = flagged[flagged["cluster"] == card["cluster"]]["path"].tolist()
    paths = list(dict.fromkeys([*card.get("medoids", []), *members]))[:PER_CLUSTER]
    rows = flagged.set_index("path").reindex(paths)
    return {**card, "paths": paths, "rows": [dict(path=p, **r) for p, r in zip(paths, rows.to_dict("records"))]}


def _row(r: pd.Series, thumb: str) -> dict:
    shares = {c: float(r.get(f"share_{c}", np.nan)) for c in CAUSES}
    return {**r.to_dict(), "shares": {c: (v if np.isfinite(v) else 0.0) for c, v in shares.items()}, "thumb": thumb}


def _drift(drift: list[dict]) -> list[dict]:
    """Drifted measurements first, largest effect first."""
    return sorted(drift, key=lambda d: (not d.get("drifted"), -abs(d.get("effect") or 0.0)))


def _collect(folder: Path) -> dict | None:
    """``collect``'s plan.json when it ran on this scan."""
    try:
        return json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _thumbnails(wanted: list[tuple[Path, str]]) -> dict[tuple[str, str], str]:
    """(root, relative path) -> JPEG data URI; unreadable files get none."""
    def one(item: tuple[Path, str]) -> str:
        try:
            img = read_image(item[0] / item[1])
        except (ImageError, InputError, OSError, ValueError):
            return ""
        h, w = img.shape[:2]
        f = THUMB / max(h, w)
        if f < 1:
            img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""

    items = list(dict.fromkeys(wanted))
    with ThreadPoolExecutor(max_workers=4) as pool:  # decoding releases the GIL
        return {(str(root), p): uri for (root, p), uri in zip(items, pool.map(one, items))}


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("shiftbench.report", "templates"),
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
