"""The collection plan: per failure cluster, what to reproduce on the line, in words and numbers.

Each cluster's conditions are its members' measurements (medians and 10th-90th
percentile ranges without outliers, the ranges the augmentation and the cluster
cards use) set against the training set's medians, phrased as instructions for
whoever shoots the new images ("median brightness 0.23
(training 0.51)", "camera rotated +16..+28 degrees"). Only the measurements
of the cluster's own causes are described: attribution fills ``how_*`` for
every flagged image, but only the attributed cause's estimate means anything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..explain.clusters import explained_share, uneven_light
from .entries import central_span
from .scan_io import changed_zoom, circular_mean, has_cause, sheared, stretched
from .select import allocate

# Measurements reported per cause in plan.json's "numbers".
PLAN_MEASURES = {
    "lighting": ("brightness_p50", "brightness", "contrast", "illum_gradient", "colour_cast"),
    "angle": ("rotation_deg",),
    "resolution": ("sharpness", "hf_ratio", "blockiness", "blur_anisotropy", "noise", "width", "height"),
    "pipeline": ("rb_balance", "saturation", "brightness_p50", "dynamic_range"),
}
SECONDARY_SHARE = 0.5  # a '+'-joined cause is described when at least this share of the cluster has it
MIN_COLLECT = 10  # floor per cluster of the images to collect (shrinks when the budget is small)
_SIDES = ("right", "bottom right", "bottom", "bottom left", "left", "top left", "top", "top right")


def _side(deg: float) -> str:
    """Image side a direction points to (0 = right, 90 = down: image rows grow downwards)."""
    return _SIDES[int(((deg % 360) + 22.5) // 45) % 8]


def _pct(new: float, old: float) -> str:
    if not np.isfinite(old) or abs(old) < 1e-9:
        return ""
    change = 100 * (new - old) / abs(old)
    return f", {abs(change):.0f}% {'higher' if change > 0 else 'lower'}"


def _med(members: pd.DataFrame, col: str) -> float:
    return float(np.nanmedian(members[col].to_numpy(float))) if col in members and members[col].notna().any() \
        else float("nan")


def numbers(members: pd.DataFrame, causes: list[str], train: dict[str, float]) -> dict[str, dict]:
    """measure -> {production median, production range (10th-90th percentile, outliers dropped: see
    ``central_span``), training median}."""
    out = {}
    for cause in causes:
        for col in PLAN_MEASURES.get(cause, ()):
            v = members[col].to_numpy(float) if col in members else np.array([])
            v = v[np.isfinite(v)]
            if not len(v):
                continue
            t = 0.0 if col == "rotation_deg" else train.get(col, float("nan"))
            out[col] = {"production": float(np.median(v)), "production_range": list(central_span(v)),
                        "training": float(t)}
    return out


def _lighting(m: pd.DataFrame, t: dict[str, float]) -> list[str]:
    out = []  # a measurement missing from every member (failed, or an older scan) gives no line
    b, bt = _med(m, "brightness_p50"), t.get("brightness_p50", float("nan"))
    if np.isfinite(b):
        lo, hi = central_span(m["brightness_p50"])
        rng = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}..{hi:.2f}"
        out.append(f"median brightness {b:.2f} (training {bt:.2f}{_pct(b, bt)}; images {rng})")
    c, ct = _med(m, "contrast"), t.get("contrast", float("nan"))
    if np.isfinite(c):
        out.append(f"contrast {c:.3f} (training {ct:.3f}{_pct(c, ct)})")
    if uneven := uneven_light(m, t):
        rel, rel_t = uneven
        direction, _ = circular_mean(m["illum_direction"]) if "illum_direction" in m else (float("nan"), 0)
        where = f" towards the {_side(direction + 180)}" if np.isfinite(direction) else ""
        out.append(f"light falling off{where}: brightness changes by {100 * np.nanmedian(rel):.0f}% of its mean "
                   f"across the image (training {100 * rel_t:.0f}%; gradient {_med(m, 'illum_gradient'):.3f})")
    cc, cct = _med(m, "colour_cast"), t.get("colour_cast", 0.0)
    if cc > max(cct + 0.01, 1.5 * cct):  # (a warm light on grey parts: 0.017 -> 0.031)
        warm = _med(m, "rb_balance") > t.get("rb_balance", 0.0)
        out.append(f"{'warm' if warm else 'cool'} colour cast {cc:.3f} (training {cct:.3f})")
    return out


def _angle(m: pd.DataFrame, t: dict[str, float]) -> list[str]:
    out = []
    rot = m["rotation_deg"].to_numpy(float) if "rotation_deg" in m else np.array([])
    rot = rot[np.isfinite(rot)]
    if len(rot):
        lo, hi = central_span(rot)
        both = " (both ways)" if lo < 0 < hi else ""
        out.append(f"camera rotated {lo:+.0f}..{hi:+.0f} degrees{both} against the training pose "
                   f"(median {np.median(rot):+.0f})")
    zoom = changed_zoom(m)
    if len(zoom):
        lo, hi = central_span(zoom)
        scale = f"{lo:.2f}x" if hi - lo < 0.01 else f"{lo:.2f}..{hi:.2f}x"
        out.append(f"camera closer: parts magnified {scale}" if np.median(zoom) > 1 else
                   f"camera farther away: parts shown at {scale} their training size")
    for axis, deg in sheared(m).items():
        out.append(f"camera tilted: parts sheared up to {deg:.0f} degrees along {axis}")
    stretch = stretched(m)
    if len(stretch):
        out.append(f"camera tilted against the surface: {len(stretch)} of {len(m)} images foreshortened "
                   f"(stretched {stretch.min():.2f}..{stretch.max():.2f} along one direction)")
    return out or ["camera pose changed (no rotation estimate)"]


def _resolution(m: pd.DataFrame, t: dict[str, float]) -> list[str]:
    out = []
    for col, name in (("sharpness", "sharpness"), ("hf_ratio", "high-frequency energy (effective resolution)")):
        v, vt = _med(m, col), t.get(col, float("nan"))
        if np.isfinite(v) and not (np.isfinite(vt) and abs(v - vt) <= 0.15 * abs(vt)):  # unchanged: no news
            out.append(f"{name} {v:.3g} (training {vt:.3g}{_pct(v, vt)})")
    if not out and np.isfinite(v := _med(m, "sharpness")):  # still one number for the optics
        out.append(f"sharpness {v:.3g} (training {t.get('sharpness', float('nan')):.3g})")
    bl, blt = _med(m, "blockiness"), t.get("blockiness", 1.0)
    if bl > blt + 0.15:
        out.append(f"JPEG blocking {bl:.2f} (training {blt:.2f}): stronger compression")
    an, ant = _med(m, "blur_anisotropy"), t.get("blur_anisotropy", 0.0)
    if an > ant + 0.15:
        d, _ = circular_mean(m["blur_direction"], 180.0) if "blur_direction" in m else (float("nan"), 0)
        out.append(f"motion blur along {d:.0f} degrees (anisotropy {an:.2f}, training {ant:.2f})")
    nz, nzt = _med(m, "noise"), t.get("noise", float("nan"))
    if np.isfinite(nzt) and nz > 1.2 * nzt + 1e-4:
        out.append(f"sensor noise sigma {nz:.4f} (training {nzt:.4f})")
    w, h = _med(m, "width"), _med(m, "height")
    if np.isfinite(w) and "width" in t and abs(w - t["width"]) > 0.05 * t["width"]:
        out.append(f"image size {w:.0f}x{h:.0f} (training {t['width']:.0f}x{t.get('height', np.nan):.0f})")
    if "how_resolution" in m:
        kinds = m["how_resolution"].astype(str).str.replace(" + noise", "", regex=False)
        top = kinds[kinds != "none"].value_counts().head(3)
        if len(top):
            out.append("closest simulated change: " + ", ".join(f"{k} ({v} of {len(m)})" for k, v in top.items()))
    return out


def _pipeline(m: pd.DataFrame, t: dict[str, float]) -> list[str]:
    out = []
    if "how_pipeline" in m:
        for fault, n in m["how_pipeline"].astype(str).value_counts().head(2).items():
            out.append(f"matches the preprocessing fault '{fault}' ({n} of {len(m)} images)")
    s, st = _med(m, "saturation"), t.get("saturation", float("nan"))
    if np.isfinite(s) and s < 0.02 < st:
        out.append(f"no colour (saturation {s:.3f}, training {st:.3f})")
    return out or ["preprocessing differs from training"]


_DESCRIBE = {"lighting": _lighting, "angle": _angle, "resolution": _resolution, "pipeline": _pipeline}


_PHRASES = {"lighting": "under the new lighting", "angle": "with the new camera pose",
            "resolution": "through the production sensor/optics", "pipeline": "through the production preprocessing"}


def _action(causes: list[str], n: int, conditions: list[str], examples: list[str]) -> str:
    what = "; ".join(conditions)
    eg = ", ".join(examples[:3])
    primary = causes[0]
    add, note = (f"add {n} images", "") if n else ("add images", " (none fit in this budget: raise --budget)")
    if primary == "pipeline":
        return (f"Check the production preprocessing first (decoding, channel order, orientation, resizing): {what}. "
                f"Then {add} captured through it{note}.")
    if primary in _PHRASES:
        return f"{add.capitalize()} {' and '.join(_PHRASES[c] for c in causes if c in _PHRASES)}{note}: {what}."
    if primary == "content":
        return (f"New parts/defects: label them. {add.capitalize()} of what these show, with their classes{note} "
                f"(examples: {eg}).")
    return (f"Label {n or 'some'} images (not attributed to a cause; scan with --explain to get one; "
            f"examples: {eg}).")


def cluster_causes(members: pd.DataFrame, primary: str) -> list[str]:
    """The primary cause, then secondary ones named by at least ``SECONDARY_SHARE`` of the members."""
    out = [primary]
    for c in _DESCRIBE:
        if c != primary and has_cause(members["cause"], c).mean() >= SECONDARY_SHARE:
            out.append(c)
    return out


def _conditions(members: pd.DataFrame, primary: str, causes: list[str], train: dict[str, float]) -> list[str]:
    out = []
    for c in causes:
        rows = members[has_cause(members["cause"], c)] if c != primary else members
        out += _DESCRIBE[c](rows, train) if c in _DESCRIBE and len(rows) else []
    return out


def describe(members: pd.DataFrame, primary: str, train: dict[str, float], n: int,
             examples: list[str]) -> dict:
    """Conditions (strings), numbers and the instruction for one cluster of ``n`` images to collect.

    A cluster of several modes (a ``mode`` column: darker and brighter images, say) is
    described mode by mode (``modes``), and its ``n`` images are split between them by size
    (at least one each, budget allowing). Its ``numbers`` still pool all its images: read
    ``modes`` for each mode's own.
    """
    causes = cluster_causes(members, primary)
    parts = [g for _, g in members.groupby("mode", sort=True)] if "mode" in members else [members]
    if len(parts) > 1 and primary in _DESCRIBE:
        counts = allocate([len(g) for g in parts], n, minimum=1)
        modes = [{"mode": int(g["mode"].iloc[0]), "size": len(g), "collect": int(k),
                  "conditions": _conditions(g, primary, causes, train), "numbers": numbers(g, causes, train)}
                 for g, k in zip(parts, counts)]
        conditions = [f"mode {m['mode']} ({m['size']} images; collect {m['collect']}): " + "; ".join(m["conditions"])
                      for m in modes]
        return {"causes": causes, "conditions": conditions, "numbers": numbers(members, causes, train),
                "modes": modes, "action": _action(causes, n, conditions, examples)}
    conditions = _conditions(members, primary, causes, train)
    if primary == "content":
        shares = explained_share(members)
        conditions.append("no change of lighting, angle, optics or pipeline explains these images "
                          f"(best explained share {shares.median():.2f})" if len(shares) and shares.notna().any()
                          else "no change of lighting, angle, optics or pipeline explains these images")
    return {"causes": causes, "conditions": conditions, "numbers": numbers(members, causes, train),
            "action": _action(causes, n, conditions if primary != "content" else [], examples)}


def render_markdown(plan: dict) -> str:
    """plan.md: the plan for people."""
    lines = [f"# Collection plan for {plan['scan_dir']}", "",
             f"{plan['flagged']} flagged of {plan['readable']} readable production images, "
             f"{len(plan['clusters'])} clusters. Budget: {plan['budget']} images ({plan['budget_source']}).", "",
             f"**How many per cluster.** {plan['rule']}", ""]
    for note in plan["notes"]:
        lines.append(f"> {note}")
    if plan["notes"]:
        lines.append("")
    for c in plan["clusters"]:
        err = f", error rate {c['error_rate']:.2f}" if c.get("error_rate") is not None else ""
        lines += [f"## Cluster {c['cluster']}: {c['cause']} ({c['size']} images, "
                  f"{100 * c['share_of_flagged']:.0f}% of flagged{err})", "",
                  c["action"], "", f"- collect: **{c['collect']}** new images; label now: "
                  f"**{c['label_now']}** of the flagged ones (see selection.csv)"]
        lines += [f"- {s}" for s in c["conditions"]]
        lines.append("- representative images: " + ", ".join(f"`{p}`" for p in c["representatives"]))
        lines.append("")
    lines += ["## Files", "", "- `selection.csv`: the images to label first, in order (rank 1 first);",
              "- `to_label/`: copies of them and `labels_template.csv` (fill in the label column);",
              "- `augment.yaml` / `augment.md`: augmentation matched to the shift (see augment.md);",
              "- `plan.json`: this plan, machine-readable.", ""]
    return "\n".join(lines)
