"""Failure clusters: group flagged images by cause, then into modes by how the conditions changed.

Images are grouped by their attributed primary cause (the evidence that matters
most to the engineer, and what to fix): one cluster per cause, so the number of
clusters comes from the data. Within a cluster, ``mode`` separates images whose
own measurements show clearly separate modes (darker *and* brighter images; two
rotation angles): k-means for k = 2..4 on the cause's measurements,
standardised by the training set, kept only when the silhouette reaches
``MIN_SILHOUETTE`` and no part is tiny. Each cluster gets a card: size, cause,
the measured change in words and numbers (per mode where there are several),
and its medoid images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.vq import kmeans2

# Measurements that describe each cause's change (and split its group).
CAUSE_MEASURES = {
    "lighting": ("brightness_p50", "contrast", "illum_gradient", "vignetting"),
    "resolution": ("sharpness", "hf_ratio", "blockiness", "blur_anisotropy"),
    "angle": ("rotation_deg",),
    "pipeline": ("rb_balance", "brightness_p50", "orientation"),
    "content": (),
}
MIN_SILHOUETTE = 0.7
MIN_PART = 0.15  # of the group


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    ks = np.unique(labels)
    a = np.array([d[i, labels == labels[i]].sum() / max((labels == labels[i]).sum() - 1, 1) for i in range(len(x))])
    b = np.array([min(d[i, labels == k].mean() for k in ks if k != labels[i]) for i in range(len(x))])
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))


def _split(x: np.ndarray) -> np.ndarray:
    """Labels for one cause group: one cluster unless k-means finds well-separated modes."""
    n = len(x)
    best, best_sil = np.zeros(n, dtype=int), MIN_SILHOUETTE
    if x.shape[1] == 0 or n < 6:
        return best
    for k in range(2, min(4, n // 3) + 1):
        _, labels = kmeans2(x, k, minit="++", seed=0)
        if np.bincount(labels, minlength=k).min() < max(2, MIN_PART * n):
            continue
        sil = _silhouette(x, labels)
        if sil > best_sil:
            best, best_sil = labels, sil
    return best


def cluster_flagged(table: pd.DataFrame, center: dict[str, float],
                    scale: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Cluster and mode per row of ``table`` (flagged rows with ``cause`` and measurements).

    ``center``/``scale``: training median and spread of each measurement (the
    bank's standardiser), so distances are in training-spread units. Returns (N,)
    int64 cluster ids, one per primary cause, ordered by size (largest first), and
    (N,) int64 modes within each cluster, also by size (0 for a cluster of one mode).
    """
    primary = table["cause"].astype(str).str.split("+").str[0].to_numpy()
    cluster, mode = np.full(len(table), -1, dtype=np.int64), np.zeros(len(table), dtype=np.int64)
    groups = [np.where(primary == cause)[0] for cause in pd.unique(primary)]
    for new_id, rows in enumerate(sorted(groups, key=len, reverse=True)):
        cluster[rows] = new_id
        cause = primary[rows[0]]
        cols = [c for c in CAUSE_MEASURES.get(cause, ()) if c in table.columns]
        x = np.column_stack([(table[c].to_numpy(float)[rows] - center.get(c, 0.0)) / scale.get(c, 1.0)
                             for c in cols]) if cols else np.zeros((len(rows), 0))
        x = np.nan_to_num(x)
        if cause == "angle" and cols:
            x = x / 10.0  # rotation in degrees: modes closer than ~10 degrees are one camera move
        sub = _split(x)
        by_size = np.argsort(-np.bincount(sub), kind="stable")
        mode[rows] = np.argsort(by_size)[sub]
    return cluster, mode


def _pct(new: float, old: float) -> str:
    if not np.isfinite(new) or not np.isfinite(old) or abs(old) < 1e-9:
        return f"{new:.3g} (training {old:.3g})"
    change = 100 * (new - old) / abs(old)
    return f"{abs(change):.0f}% {'above' if change > 0 else 'below'} training ({new:.3g} vs {old:.3g})"


# Lighting is named only where relighting the image like its neighbours also removes this share of its
# distance (:mod:`.attribution`): imitated but not undone, lighting does not explain it.
MIN_UNDO = 0.3
# a falloff from the centre reads as the lens's only where the training scenes are evenly lit, their own
# vignetting within this (a part in the middle of the frame is a bright centre, which any change of tone moves)
FLAT_SCENE_VIGNETTE = 0.15


def explained_share(members: pd.DataFrame) -> pd.Series:
    """Per row, the largest share of its distance that a cause it may be named for explains
    (at a new pixel size, lighting and angle may not; lighting that relighting does not undo
    may not either: :mod:`.attribution`)."""
    shares = members.filter(like="share_").copy()
    if "new_pixel_size" in members:
        ruled_out = members["new_pixel_size"].eq(True).to_numpy()
        shares.loc[ruled_out, [c for c in ("share_lighting", "share_angle") if c in shares]] = np.nan
    if "undo_lighting" in members and "share_lighting" in shares:
        shares.loc[(pd.to_numeric(members["undo_lighting"], errors="coerce") < MIN_UNDO).to_numpy(),
                   "share_lighting"] = np.nan
    return shares.max(axis=1)


def relative_gradient(rows: pd.DataFrame) -> np.ndarray | None:
    """Illumination gradient over mean brightness per row: uneven light as a share of the exposure.

    The absolute gradient shrinks with the exposure (a dim side light has a small
    one); the ratio is what a lighting change keeps.
    """
    if not {"illum_gradient", "brightness"} <= set(rows.columns):
        return None
    return rows["illum_gradient"].to_numpy(float) / np.maximum(rows["brightness"].to_numpy(float), 1e-3)


def uneven_light(rows: pd.DataFrame, center: dict[str, float]) -> tuple[np.ndarray, float] | None:
    """(each row's relative gradient, training's) where the rows' light is uneven, else None: their
    median relative gradient above twice training's (from its medians ``center``) plus 0.1. One test
    for the cluster cards, the collection plan and the augmentation."""
    rel = relative_gradient(rows)
    rel_t = center.get("illum_gradient", 0.0) / max(center.get("brightness", 0.5), 1e-3)
    if rel is None or not np.nanmedian(rel) > 2 * rel_t + 0.1:
        return None
    return rel, rel_t


NOISIER = 1.5  # a cluster's median noise this many times training's is worth a line on its card
# attribution's names of the degradations it simulates (``how_resolution``), in words
DEGRADATION_WORDS = {"blur": "blur", "downscale": "downscale and upscale", "motion": "motion blur",
                     "pixelate": "nearest-neighbour resize", "jpeg": "JPEG compression",
                     "resized": "resize to the image's pixel size", "noise": "added noise"}


def closest_changes(members: pd.DataFrame, cause: str, top: int = 3) -> dict[str, int]:
    """How many members each kind of counterfactual of ``cause`` explained best (the first word of
    ``how_<cause>``: ``blur`` for "blur 1.6 + noise", ``noise`` for "none + noise"), the ``top`` most
    common first; {} without them."""
    col = f"how_{cause}"
    if col not in members:
        return {}
    how = members[col].astype(str).str.strip()
    how = how[~how.isin(["", "nan", "None", "none"])]  # "none": no counterfactual of the kind was made
    kinds = how.str.replace(r"^none \+ ", "", regex=True).str.split(" ").str[0]  # "none + noise": noise alone
    return {str(k): int(n) for k, n in kinds.value_counts().head(top).items()}


def describe_change(members: pd.DataFrame, cause: str, center: dict[str, float]) -> list[str]:
    """The measured change of a cluster in plain words and numbers (medians over its members)."""
    med = members.median(numeric_only=True)
    out = []
    if cause == "lighting":
        out.append("median brightness " + _pct(med["brightness_p50"], center["brightness_p50"]))
        out.append("contrast " + _pct(med["contrast"], center["contrast"]))
        if uneven := uneven_light(members, center):
            rel, rel_t = uneven
            out.append(f"uneven light: brightness changes by {100 * np.nanmedian(rel):.0f}% of its mean across the "
                       f"image (training {100 * rel_t:.0f}%)")
        v_t = center.get("vignetting", 0.0)
        if abs(v_t) < FLAT_SCENE_VIGNETTE and abs(med.get("vignetting", 0.0) - v_t) > 0.1:
            out.append(f"vignetting: corners {-100 * med['vignetting']:+.0f}% against the centre "
                       f"(training {-100 * center['vignetting']:+.0f}%)")
    elif cause == "angle":
        rot = members["rotation_deg"].to_numpy(float)
        rot = rot[np.isfinite(rot)]
        if len(rot) and min((rot > 0).mean(), (rot < 0).mean()) >= 0.25:  # turned both ways
            lo, hi = np.percentile(np.abs(rot), [10, 90])
            out.append(f"rotated {lo:.0f} to {hi:.0f} degrees both ways against the nearest training images "
                       f"({100 * (rot > 0).mean():.0f}% counter-clockwise; median {np.median(np.abs(rot)):.0f})")
        elif len(rot):
            lo, hi = np.percentile(rot, [10, 90])
            out.append(f"rotated {lo:+.0f} to {hi:+.0f} degrees against the nearest training images "
                       f"(median {np.median(rot):+.0f})")
        # images best explained by a stretched or sheared pose (pose.tilted_pose) or a zoomed-out neighbour
        how = members["how_angle"].astype(str) if "how_angle" in members else pd.Series([], dtype=str)
        for prefix, seen in ((("stretch", "shear"), "foreshortened, as by a camera tilted against the surface"),
                             ("moved away", "the scene smaller, as from a camera moved away")):
            k = int(how.str.startswith(prefix).sum())
            if k and k >= 0.25 * len(members):
                out.append(f"{seen}, in {k} of {len(members)} images")
    elif cause == "resolution":
        out.append("sharpness " + _pct(med["sharpness"], center["sharpness"]))
        out.append("high-frequency energy " + _pct(med["hf_ratio"], center["hf_ratio"]))
        kinds = closest_changes(members, "resolution")
        # a nearest-neighbour upscale's blocks also jump at 8-pixel boundaries: blocking is JPEG's
        # only where no pixelation matched the images better
        if med["blockiness"] > center["blockiness"] + 0.15 and kinds.get("pixelate", 0) <= kinds.get("jpeg", 0):
            out.append(f"JPEG blocking {med['blockiness']:.2f} (training {center['blockiness']:.2f})")
        if med["blur_anisotropy"] > center["blur_anisotropy"] + 0.15:
            out.append(f"directional (motion) blur, anisotropy {med['blur_anisotropy']:.2f}")
        if "noise" in med and (nt := center.get("noise", np.nan)) > 0 and med["noise"] > NOISIER * nt:
            out.append(f"noise {med['noise'] / nt:.1f}x training's (sigma {med['noise']:.3g} vs {nt:.3g})")
        if kinds:
            out.append("closest degradation of the nearest training images: "
                       + ", ".join(f"{DEGRADATION_WORDS.get(k, k)} ({n} of {len(members)})" for k, n in kinds.items()))
    elif cause == "pipeline" and "how_pipeline" in members:
        out.append("matches a preprocessing fault: " + members["how_pipeline"].mode().iloc[0])
    else:
        out.append("no change of lighting, angle, optics or pipeline explains these images "
                   f"(best explained share {explained_share(members).median():.2f}): "
                   "new parts, defects or another line")
    new_size = members["new_pixel_size"].eq(True) if "new_pixel_size" in members else None
    if {"width", "height"} <= set(members) and new_size is not None and new_size.mean() >= 0.5:
        size = _sizes(members[new_size])  # (the members at a training size are not what this says)
        if "width" in center and "height" in center:
            size += f", training {center['width']:.0f}x{center['height']:.0f}"
        out.append(f"taken at a pixel size no training image has ({size}): another camera or pipeline")
    return out


def _sizes(members: pd.DataFrame) -> str:
    """The members' pixel sizes in words: the one size, the few sizes, or the most common of many
    (never a median of widths beside a median of heights, which no image may have)."""
    sizes = members[["width", "height"]].dropna().astype(int).apply(tuple, axis=1).value_counts()
    names = [f"{w}x{h}" for w, h in sizes.index]
    if len(sizes) == 1:
        return names[0]
    if len(sizes) <= 3:
        return ", ".join(f"{n} ({k})" for n, k in zip(names, sizes))
    return f"{len(sizes)} sizes, most often {names[0]} ({sizes.iloc[0]} of {len(members)})"


def mean_distances(x: np.ndarray, chunk: int = 512) -> np.ndarray:
    """(N,) mean Euclidean distance of each row of (N, D) ``x`` to all rows (itself included).

    From the Gram matrix, ``chunk`` rows at a time: memory ``chunk x N``, not the
    ``N x N x D`` of a broadcast difference (10 GB for 1000 images of 1280-d features).
    """
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(1)
    out = np.empty(len(x))
    for lo in range(0, len(x), chunk):
        d2 = sq[lo:lo + chunk, None] + sq[None] - 2.0 * x[lo:lo + chunk] @ x.T
        out[lo:lo + chunk] = np.sqrt(np.maximum(d2, 0.0)).mean(1)
    return out


def medoids(features: np.ndarray, n: int = 3) -> np.ndarray:
    """Rows of the ``n`` most central (N, D) feature vectors (smallest mean distance to the others)."""
    return np.argsort(mean_distances(features), kind="stable")[:n]


def cluster_cards(table: pd.DataFrame, features: np.ndarray, center: dict[str, float]) -> list[dict]:
    """One card per cluster of ``table`` (rows with ``cluster`` >= 0), largest first.

    ``features`` (N, D) aligned with ``table`` choose the medoids. A ``mode`` column
    with several modes in a cluster describes the change per mode (``modes``: size and
    change of each). A ``correct`` column (model-aware scans) adds the cluster's error
    rate; a ``cause_own`` column adds ``taken_from_alike``, the members whose own
    interventions named another cause.
    """
    cards = []
    for cid in sorted(c for c in table["cluster"].unique() if c >= 0):
        mask = (table["cluster"] == cid).to_numpy()
        members = table[mask]
        causes = members["cause"].astype(str).str.split("+").str[0].value_counts()
        cause = str(causes.index[0])
        card = {"cluster": int(cid), "size": int(mask.sum()), "cause": cause,
                "causes": {str(k): int(v) for k, v in members["cause"].astype(str).value_counts().items()},
                "confidence": float(members["confidence"].median())}
        if "mode" in members and members["mode"].nunique() > 1:  # the change of each mode, not their mix
            card["modes"] = [{"mode": int(m), "size": len(part), "change": describe_change(part, cause, center)}
                             for m, part in members.groupby("mode", sort=True)]
            card["change"] = [f"mode {m['mode']} ({m['size']} images): " + "; ".join(m["change"])
                              for m in card["modes"]]
        else:
            card["change"] = describe_change(members, cause, center)
        card["medoids"] = members["path"].to_numpy()[medoids(features[mask])].tolist()
        if "cause_own" in members:  # how many members took their cause from alike images
            card["taken_from_alike"] = int((members["cause_own"] != members["cause"]).sum())
        if "correct" in members and members["correct"].notna().any():
            known = members["correct"].dropna().astype(float)
            card["error_rate"], card["labelled"] = float(1.0 - known.mean()), int(len(known))
        cards.append(card)
    return cards
