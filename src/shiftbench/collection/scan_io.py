"""Read what a scan wrote, and the training measurements it was compared with.

``collect`` works from a finished scan folder alone (``images.csv``,
``summary.json``, ``embeddings.npy``) plus the training measurements of the
bank the scan used. The bank's table is read straight from its parquet file:
loading the full bank would load the faiss indexes and the backbone, which
nothing here needs. When the bank has gone (another workspace, deleted), the
training medians recorded in the scan's drift tests stand in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import InputError

# Outliers dropped by :func:`span` (spreads beyond the quartiles): one wild estimate must not stretch a range.
OUTLIER_K = 3.0


@dataclass
class ScanOutputs:
    """A scan folder read back: ``table`` = images.csv, ``summary`` = summary.json.

    ``embeddings`` (N, D) float32 aligned with ``table`` rows, or None when the
    file is missing or does not match the table.
    """

    scan_dir: Path
    table: pd.DataFrame
    summary: dict
    embeddings: np.ndarray | None

    @property
    def prod_dir(self) -> Path:
        return Path(self.summary.get("prod_dir", self.scan_dir))

    @property
    def flagged(self) -> pd.DataFrame:
        """Readable flagged rows (index = row position in ``table``)."""
        t = self.table
        return t[t["is_ood"].to_numpy() & (t["status"].astype(str) == "ok").to_numpy()]


def _as_bool(col: pd.Series) -> pd.Series:
    if col.dtype == bool:
        return col
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def load_scan(scan_dir: str | Path, embeddings: bool = True) -> ScanOutputs:
    """Read a scan folder (``embeddings=False``: not its embeddings); :class:`InputError` when it is not one."""
    d = Path(scan_dir)
    if not d.is_dir():
        raise InputError(f"not a scan folder: {d} does not exist")
    for name in ("images.csv", "summary.json"):
        if not (d / name).is_file():
            raise InputError(f"not a scan folder: {d} has no {name} (run 'shiftbench scan' first)")
    try:
        table = pd.read_csv(d / "images.csv", keep_default_na=False, na_values=[""], low_memory=False)
        summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the scan in {d}: {e}") from e
    missing = {"path", "status", "is_ood", "ood_score", "cause", "cluster"} - set(table.columns)
    if missing:
        raise InputError(f"{d / 'images.csv'} lacks columns {sorted(missing)}")
    table["is_ood"] = _as_bool(table["is_ood"])
    table["path"] = table["path"].astype(str)
    table["cause"] = table["cause"].fillna("none").astype(str)
    table["cluster"] = pd.to_numeric(table["cluster"], errors="coerce").fillna(-1).astype(np.int64)
    if "mode" in table:  # scans before modes have none: one mode per cluster
        table["mode"] = pd.to_numeric(table["mode"], errors="coerce").fillna(-1).astype(np.int64)
    for c in table.columns:  # how_* columns are text; empty cells must not become NaN floats
        if c.startswith("how_"):
            table[c] = table[c].astype("string").fillna("").astype(str)
    emb = None
    if embeddings and (d / "embeddings.npy").is_file():
        try:
            e = np.load(d / "embeddings.npy", allow_pickle=False)
            emb = e.astype(np.float32) if e.ndim == 2 and len(e) == len(table) else None
        except (OSError, ValueError):
            emb = None
    return ScanOutputs(d, table, summary, emb)


def _bank_table(workspace: Path) -> pd.DataFrame | None:
    """The training images' measurements from ``WORKSPACE/bank`` (or the swap's ``bank.old``)."""
    for name in ("bank", "bank.old"):  # same fallback as shiftbench.bank.load_bank
        p = workspace / name / "images.parquet"
        if p.is_file():
            try:
                t = pd.read_parquet(p)
            except (OSError, ValueError):
                continue
            return t[t["status"] == "ok"] if "status" in t else t
    return None


def training_reference(summary: dict) -> tuple[dict[str, float], pd.DataFrame | None, str]:
    """Training median of every measurement, the training table when found, and where they came from."""
    ws = summary.get("workspace")
    table = _bank_table(Path(ws)) if ws else None
    if table is not None and len(table):
        return reference_from_table(table), table, f"training bank {Path(ws) / 'bank'} ({len(table)} images)"
    medians = {d["measure"]: float(d["train_median"]) for d in summary.get("drift", [])
               if d.get("train_median") is not None}
    if not medians:
        raise InputError(f"no training measurements: no bank in {ws!r} and the scan's summary.json "
                         f"records no drift tests")
    return medians, None, "training medians recorded in summary.json (bank not found)"


FALLOFF_P95 = "falloff_p95"  # the key of reference_from_table's one figure that is not a median


def reference_from_table(table: pd.DataFrame) -> dict[str, float]:
    """The training median of every numeric column, and ``FALLOFF_P95``: the 95th percentile of how
    much darker the corners are than the centre in intensity units (``vignetting * brightness``), which
    an exposure change leaves alone (a darkening offset raises the relative ``vignetting``)."""
    num = table.select_dtypes("number")
    out = {c: float(np.nanmedian(num[c])) for c in num.columns if num[c].notna().any()}
    if {"vignetting", "brightness"} <= set(num.columns):
        falloff = (num["vignetting"] * num["brightness"]).dropna()
        if len(falloff):
            out[FALLOFF_P95] = float(np.percentile(falloff, 95))
    return out


def has_cause(causes: pd.Series, cause: str) -> np.ndarray:
    """Rows whose '+'-joined ``cause`` names ``cause`` (primary or secondary)."""
    return causes.astype(str).str.split("+").apply(lambda parts: cause in parts).to_numpy(bool)


def span(values, lo_q: float = 0.0, hi_q: float = 100.0) -> tuple[float, float] | None:
    """Range of ``values`` without outliers; None when nothing is finite.

    Outliers lie beyond Tukey's far fences, ``OUTLIER_K`` spreads outside the
    quartiles, the spread being the interquartile range or, when many values
    coincide, (p90 - p10) / 2.5. Used for every augmentation range so that it
    covers what production shows without one wrong estimate stretching it.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    q1, q3, p10, p90 = np.percentile(v, [25, 75, 10, 90])
    spread = max(q3 - q1, (p90 - p10) / 2.5)
    if spread > 0:
        v = v[(v >= q1 - OUTLIER_K * spread) & (v <= q3 + OUTLIER_K * spread)]
    return float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q))


_HOW_TOKEN = re.compile(r"(blur|downscale|pixelate|jpeg|motion|zoom)\s+([0-9.]+)")


def how_values(how: pd.Series, kind: str) -> np.ndarray:
    """Numbers following ``kind`` in attribution strings ('blur 1.6', 'jpeg 10', 'zoom 1.30'), NaN if absent."""
    out = np.full(len(how), np.nan)
    for i, text in enumerate(how.astype(str)):
        for k, v in _HOW_TOKEN.findall(text):
            if k == kind:
                out[i] = float(v)
    return out


def changed_zoom(rows: pd.DataFrame) -> np.ndarray:
    """The finite zooms of ``rows``' ``how_angle`` (attribution's 'zoom z') where their median moved
    more than 5% from 1: a camera closer (> 1) or moved away (< 1); empty otherwise."""
    zoom = how_values(rows["how_angle"], "zoom") if "how_angle" in rows else np.array([])
    zoom = zoom[np.isfinite(zoom)]
    return zoom if len(zoom) and abs(np.median(zoom) - 1) > 0.05 else np.array([])


_TILT = re.compile(r"^(stretch|shear)\s+(-?[0-9.]+)\s+along\s+([0-9]+)")


def _tilts(rows: pd.DataFrame, kind: str, min_share: float) -> list[tuple[float, str]]:
    """(factor, direction) of ``rows``' ``how_angle`` of ``kind`` (attribution's "stretch A along D" or
    "shear t along D"), where at least ``min_share`` of the rows show one (one image's best fit is not
    a line's camera); empty where fewer do."""
    how = rows["how_angle"].astype(str) if "how_angle" in rows else pd.Series([], dtype=str)
    found = [(float(m.group(2)), m.group(3)) for m in map(_TILT.match, how) if m and m.group(1) == kind]
    return found if found and len(found) >= min_share * len(rows) else []


def sheared(rows: pd.DataFrame, min_share: float = 0.25) -> dict[str, float]:
    """Axis ('x' for attribution's 'shear t along 0', 'y' for 'along 90') -> the largest shear
    in degrees (atan |t|) of ``rows``' ``how_angle``, for axes that at least ``min_share`` of the
    rows show; empty where none do."""
    found = _tilts(rows, "shear", 0.0)
    out = {}
    for axis, phi in (("x", "0"), ("y", "90")):
        t = [abs(v) for v, d in found if d == phi]
        if t and len(t) >= min_share * len(rows):
            out[axis] = float(np.degrees(np.arctan(max(t))))
    return out


def stretched(rows: pd.DataFrame, min_share: float = 0.25) -> np.ndarray:
    """(K,) stretch factors (> 1) of ``rows``' ``how_angle`` ("stretch A along D": a camera tilted
    against a texture), where at least ``min_share`` of the rows show one; empty where fewer do."""
    return np.array([a for a, _ in _tilts(rows, "stretch", min_share)], dtype=float)


def circular_mean(deg, period: float = 360.0) -> tuple[float, float]:
    """Mean direction (degrees in [0, period)) and resultant length in [0, 1] (1 = all equal)."""
    a = np.asarray(deg, dtype=float)
    a = a[np.isfinite(a)] * 2 * np.pi / period
    if not len(a):
        return float("nan"), 0.0
    c, s = np.cos(a).mean(), np.sin(a).mean()
    return float(np.degrees(np.arctan2(s, c)) * period / 360.0 % period), float(np.hypot(c, s))
