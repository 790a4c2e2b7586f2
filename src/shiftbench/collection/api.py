"""``collect``: from a scan to a collection plan, a labelling list and a matched augmentation.

Output folder (default ``SCAN_DIR/collect``), written complete into a
temporary sibling and then swapped in, so a reader or a crash never sees half
of it:

    plan.json / plan.md      per cluster: conditions to reproduce, images to collect and why
    selection.csv            rank, path, cluster, cause, ood_score, reason, copy, source, mode
    to_label/                copies of the selected images + labels_template.csv (path,label)
    augment.yaml / .md       albumentations pipeline matched to the shift, and where its ranges came from
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..fsutil import remove_stale, write_json, write_text
from ..images import InputError
from ..scoring.knn import SHIFT_P, shift_verdict
from . import augment, plan as planmod, transforms
from .scan_io import ScanOutputs, has_cause, load_scan, training_reference
from .select import allocate, cluster_weights, k_center_greedy, label_order, medoid, normalise


@dataclass
class CollectResult:
    """What :func:`collect` produced: ``plan`` (one dict per cluster), ``selection`` (selection.csv)."""

    plan: list[dict]
    selection: pd.DataFrame
    out_dir: Path
    summary: dict | None = None  # the whole of plan.json


def resolve_budget(budget: int | None, budget_fraction: float | None, n_readable: int) -> tuple[int, str]:
    """The labelling budget and how it was given; :class:`InputError` when it is unusable."""
    if (budget is None) == (budget_fraction is None):
        raise InputError("give a budget: --budget N or --budget-fraction F (one of them)")
    if budget is not None:
        if isinstance(budget, bool) or not float(budget).is_integer() or budget <= 0:
            raise InputError(f"--budget must be a positive whole number of images, got {budget}")
        return int(budget), f"--budget {int(budget)}"
    if not 0 < budget_fraction <= 1:
        raise InputError(f"--budget-fraction must be in (0, 1], got {budget_fraction}")
    n = max(1, math.ceil(budget_fraction * n_readable))
    return n, f"--budget-fraction {budget_fraction:g} of {n_readable} readable production images, rounded up"


def _groups(scan: ScanOutputs) -> list[dict]:
    """One dict per cluster of flagged rows (cards from summary.json; flagged rows outside clusters grouped)."""
    flagged = scan.flagged
    cards = {int(c["cluster"]): c for c in scan.summary.get("clusters", [])}
    out = []
    for cid in sorted(flagged["cluster"].unique(), key=lambda c: (c < 0, c)):
        members = flagged[flagged["cluster"] == cid]
        card = cards.get(int(cid), {})
        primary = card.get("cause") or members["cause"].str.split("+").str[0].mode().iloc[0]
        if cid < 0 and primary not in planmod.PLAN_MEASURES and primary != "content":
            primary = "unknown"
        conf = members["model_confidence"].to_numpy(float) if "model_confidence" in members else None
        explained = members["residual_p"].to_numpy(float) if "residual_p" in members else np.ones(len(members))
        out.append({"cluster": int(cid), "rows": members.index.to_numpy(), "cause": str(primary),
                    "card": card, "error_rate": card.get("error_rate"),
                    "uncertainty": None if conf is None or not np.isfinite(conf).any() else 1.0 - conf,
                    "explained": np.nan_to_num(explained, nan=1.0)})
    return out


def _pick(scan: ScanOutputs, group: dict, k: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """(table row, reason) for ``k`` images of one cluster: k-center greedy on the embeddings.

    Starts from the medoid; in a model-aware scan, from the image with the largest
    uncertainty x ``residual_p``, and each candidate's distance is weighed by it. The
    model's doubt alone would pick out-of-class images first (new content that the
    attribution filed under a condition: they cannot be labelled with the model's
    classes); ``residual_p`` (how in-distribution the image looks once its
    best-explaining condition change is applied) keeps the labels on images that the
    condition change makes hard, which labels plus matched augmentation can fix.
    """
    rows, cid, cause = group["rows"], group["cluster"], group["cause"]
    paths = scan.table["path"].to_numpy()[rows]
    emb = scan.embeddings[rows] if scan.embeddings is not None else None
    usable = np.isfinite(emb).all(1) if emb is not None else np.zeros(len(rows), bool)
    where = f"cluster {cid}" + (f" mode {group['mode']}" if "mode" in group else "")
    where += f" ({cause}, {len(rows)} images)"
    medoids = [p for p in group["card"].get("medoids", []) if p in set(paths)]
    if usable.sum() >= 1:
        idx = np.flatnonzero(usable)
        x = normalise(emb[idx])
        u = None if group["uncertainty"] is None else np.nan_to_num(group["uncertainty"][idx], nan=0.0)
        if u is None:
            start = int(np.flatnonzero(paths[idx] == medoids[0])[0]) \
                if medoids and medoids[0] in paths[idx] else medoid(x)
            picks, gaps = k_center_greedy(x, k, start)
        else:
            picks, gaps = k_center_greedy(x, k, weights=u * group["explained"][idx])
        out = []
        explained = group["explained"][idx]
        for n, (j, g) in enumerate(zip(picks, gaps)):
            doubt = "" if u is None else f"model confidence {1 - u[j]:.2f}, residual p {explained[j]:.3f}, "
            if np.isfinite(g):
                weighed = "" if u is None else ", weighed by doubt x residual p"
                how = f"farthest from the {n} already chosen (embedding distance {g:.3f}{weighed})"
            else:  # the first pick
                how = ("medoid, its most typical image" if u is None
                       else "the largest model doubt x residual p (how in-distribution its cause's change makes it)")
            out.append((int(rows[idx[j]]), f"{where}: {doubt}{how}"))
        rest = np.flatnonzero(~usable)  # no embedding: after the covered ones
        out += [(int(rows[j]), f"{where}: no embedding, in file order") for j in rest[:k - len(out)]]
        return out
    # No embeddings.npy (older scan): the card's medoids, then a seeded random sample.
    order = [int(np.flatnonzero(paths == m)[0]) for m in medoids]
    order += [int(j) for j in rng.permutation(len(rows)) if int(j) not in order]
    return [(int(rows[j]), f"{where}: {'medoid' if j in order[:len(medoids)] else 'random (no embeddings.npy)'}")
            for j in order[:k]]


def _pick_by_mode(scan: ScanOutputs, group: dict, k: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """:func:`_pick` in each mode of a cluster (at least one image each, budget allowing, the rest
    by size), interleaved as clusters are; a cluster of one mode as :func:`_pick`."""
    group = _distinct(scan, group)
    modes = scan.table["mode"].to_numpy()[group["rows"]] if "mode" in scan.table else np.zeros(len(group["rows"]))
    names = np.unique(modes)
    if len(names) < 2 or k < 2:
        return _pick(scan, group, k, rng)
    parts = [np.flatnonzero(modes == m) for m in names]
    ks = [int(n) for n in allocate([len(p) for p in parts], k, minimum=1, caps=[len(p) for p in parts])]
    picks = [_pick(scan, {**group, "mode": int(m), "rows": group["rows"][p], "explained": group["explained"][p],
                          "uncertainty": None if group["uncertainty"] is None else group["uncertainty"][p]}, n, rng)
             for m, p, n in zip(names, parts, ks)]
    return [picks[c][j] for c, j in label_order(picks, ks)]


def _distinct(scan: ScanOutputs, group: dict) -> dict:
    """``group`` with one row per image content (copies of a file are labelled once)."""
    if "sha" not in scan.table:
        return group
    sha = scan.table["sha"].astype(str).to_numpy()[group["rows"]]
    keep, seen = np.ones(len(sha), dtype=bool), set()
    for i, h in enumerate(sha):
        keep[i] = not (h and h in seen)
        seen.add(h)
    if keep.all():
        return group
    return {**group, "rows": group["rows"][keep], "explained": group["explained"][keep],
            "uncertainty": None if group["uncertainty"] is None else group["uncertainty"][keep]}


CONTENT_TRIAGE = 3  # images to label now from a content cluster, when condition clusters exist


def _label_caps(groups: list[dict], sizes: list[int]) -> list[int]:
    """How many images each cluster may get of the labelling budget: its size, and for new
    content only ``CONTENT_TRIAGE`` while clusters with a condition cause exist.

    Labels help most where the model meets known parts under new conditions: they
    train it together with the matched augmentation. New content first needs a
    decision (new classes? another product?); a few labelled examples settle that.
    """
    conditions = any(g["cause"] not in ("content", "unknown") for g in groups)
    return [min(n, CONTENT_TRIAGE) if conditions and g["cause"] == "content" else n
            for g, n in zip(groups, sizes)]


def _unique_name(rank: int, path: str) -> str:
    flat = path.replace("\\", "/").strip("/").replace("/", "__")
    return f"{rank:04d}_{flat}"


WRITTEN = {"plan.json", "plan.md", "selection.csv", "augment.yaml", "augment.md", "to_label", "labels_template.csv"}


def _check_nothing_to_lose(out: Path) -> None:
    """Refuse to replace an earlier collect output that holds the user's work: labels filled in
    ``to_label/labels_template.csv``, or files that collect did not write."""
    if not (out / "plan.json").is_file():
        return
    extra = sorted(p.name for p in out.iterdir() if p.name not in WRITTEN)
    for template in (out / "to_label" / "labels_template.csv", out / "labels_template.csv"):
        if not template.is_file():
            continue
        try:
            labels = pd.read_csv(template, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            labels = pd.DataFrame(columns=["path", "label"])
        filled = int(labels.get("label", pd.Series(dtype=str)).str.strip().ne("").sum())
        if filled:
            raise InputError(f"{template} has {filled} labels filled in: collect would replace them. Move "
                             f"{out} away (or give another --out) first")
        if template.parent.name == "to_label":
            copies = set(labels.get("path", pd.Series(dtype=str))) | {"labels_template.csv"}
            extra += sorted(f"to_label/{p.name}" for p in template.parent.iterdir() if p.name not in copies)
    if extra:
        raise InputError(f"{out} holds files collect did not write ({', '.join(extra[:3])}"
                         f"{', ...' if len(extra) > 3 else ''}): move them away (or give another --out) first")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the complete ``tmp`` folder (old one renamed aside, then removed)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def collect(scan_dir: str | Path, budget: int | None = None, out: str | Path | None = None, seed: int = 0,
            copy: bool = True, *, budget_fraction: float | None = None, p: float = 0.5) -> CollectResult:
    """Plan data collection, pick the images to label first and build a matched augmentation.

    Parameters
    ----------
    scan_dir : a folder written by :func:`shiftbench.scan`.
    budget : number of images to label (also the number of new images the plan splits
        across clusters). Alternatively ``budget_fraction`` of the readable production images.
    out : output folder; default ``SCAN_DIR/collect`` (replaced as a whole).
    seed : seeds the augmentation pipeline and, without embeddings, the sampling.
    copy : copy the selected images into ``out/to_label``.
    p : probability of each augmentation transform.

    Returns
    -------
    CollectResult
        ``plan``: one dict per cluster (cluster, cause, size, share_of_flagged, harm,
        collect, label_now, conditions, numbers, action, representatives, to_label, and
        ``modes`` where the cluster has several: see :func:`.plan.describe`);
        ``selection``: the rows of selection.csv; ``out_dir``.
    """
    if not 0 < p <= 1:  # (albumentations would refuse it only at the end, in its own words)
        raise InputError(f"the augmentation's probability p must be in (0, 1], got {p}")
    scan = load_scan(scan_dir)
    n_readable = int((scan.table["status"].astype(str) == "ok").sum())
    budget, budget_source = resolve_budget(budget, budget_fraction, n_readable)
    out_dir = (Path(out) if out is not None else scan.scan_dir / "collect").resolve()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                        and not (out_dir / "plan.json").is_file())):
        raise InputError(f"{out_dir} exists and is not a collect output: choose another --out")
    _check_nothing_to_lose(out_dir)
    train, _, train_source = training_reference(scan.summary)
    flagged = scan.flagged
    groups = _groups(scan)
    notes = []
    if not groups:
        notes.append("no image was flagged: nothing to collect or label")
    elif (test := scan.summary.get("shift_test")) and test["p_value"] >= SHIFT_P:
        notes.append(f"{shift_verdict(test)}, so the flagged images may be ordinary variation: label a few to "
                     f"find out before collecting more")
    if groups and scan.embeddings is None:  # picks fall back to the cards' medoids and a seeded random sample
        notes.append(f"no usable embeddings.npy in {scan.scan_dir} (missing, damaged or of another length): "
                     f"images picked without diversity, from the clusters' medoids and at random")
    sizes = [len(g["rows"]) for g in groups]
    harm, rule = cluster_weights(sizes, [g["error_rate"] for g in groups],
                                 [None if g["uncertainty"] is None else float(np.nanmean(g["uncertainty"]))
                                  for g in groups])
    n_label = min(budget, len(flagged))
    if budget > len(flagged) and groups:
        notes.append(f"budget {budget} is more than the {len(flagged)} flagged images: all of them are selected")
    condition = [g["cause"] not in ("content", "unknown") for g in groups]  # win ties: augmentation needs them
    label_alloc = allocate(harm, n_label, minimum=1, caps=_label_caps(groups, sizes), prefer=condition)
    # The floor takes at most half of the budget: the rest must follow harm.
    floor = min(planmod.MIN_COLLECT, budget // max(2 * len(groups), 1))
    collect_alloc = allocate(harm, budget, minimum=floor, prefer=condition)
    rng = np.random.default_rng(seed)
    picks = [_pick_by_mode(scan, g, int(k), rng) for g, k in zip(groups, label_alloc)]
    ranked = [picks[c][j] + (groups[c],) for c, j in label_order(picks, [int(k) for k in label_alloc])]

    rows = []
    for rank, (i, reason, g) in enumerate(ranked, 1):
        path = scan.table.at[i, "path"]
        rows.append({"rank": rank, "path": path, "cluster": g["cluster"], "cause": scan.table.at[i, "cause"],
                     "mode": int(scan.table.at[i, "mode"]) if "mode" in scan.table else -1,
                     "ood_score": float(scan.table.at[i, "ood_score"]), "reason": reason,
                     "copy": f"to_label/{_unique_name(rank, path)}" if copy else "",
                     "source": str(scan.prod_dir / path)})
    selection = pd.DataFrame(rows, columns=["rank", "path", "cluster", "cause", "ood_score", "reason", "copy",
                                            "source", "mode"])
    clusters = []
    total = max(sum(sizes), 1)
    for g, h, n_col, n_lab in zip(groups, harm, collect_alloc, label_alloc):
        members = scan.table.loc[g["rows"]]
        reps = g["card"].get("medoids") or members["path"].head(3).tolist()
        d = planmod.describe(members, g["cause"], train, int(n_col), reps)
        entry = {"cluster": g["cluster"], "cause": g["cause"], "size": len(members),
                 "share_of_flagged": len(members) / total, "harm": float(h), "collect": int(n_col),
                 "label_now": int(n_lab), **d, "representatives": reps,
                 "to_label": selection.loc[selection["cluster"] == g["cluster"], "path"].tolist()}
        if g["error_rate"] is not None:
            entry["error_rate"] = float(g["error_rate"])
        clusters.append(entry)
    triage = (f"; at most {CONTENT_TRIAGE} from a content cluster while condition clusters exist"
              if any(g["cause"] == "content" for g in groups) else "")
    rule_text = (f"{budget} images split across {len(groups)} clusters by {rule}: each cluster gets "
                 f"{floor} first (min({planmod.MIN_COLLECT}, budget / (2 x clusters)), so that at least half "
                 f"of the budget follows harm), "
                 f"the rest in proportion to harm, rounded by largest remainder. The images to label now "
                 f"follow the same rule (at least 1 per cluster when the budget allows, at most the cluster's size"
                 f"{triage}).")
    causes_seen = sorted({c for cs in flagged["cause"].str.split("+") for c in cs if c not in ("none", "unknown")})
    per_cause = {c: int(has_cause(flagged["cause"], c).sum()) for c in causes_seen}
    spec = augment.augmentation_spec(flagged, train, p)
    summary = {"scan_dir": str(scan.scan_dir.resolve()), "scan_created": scan.summary.get("created"),
               "prod_dir": str(scan.prod_dir), "out_dir": str(out_dir),
               "readable": n_readable, "flagged": int(len(flagged)), "budget": budget,
               "budget_source": budget_source, "selected": int(len(selection)), "rule": rule_text,
               "training": train_source, "notes": notes, "clusters": clusters,
               "augmentation": {"file": "augment.yaml", "causes_seen": causes_seen, "images_per_cause": per_cause,
                                "images_needed": augment.images_needed(len(flagged)), "transforms": spec}}
    _write(out_dir, summary, selection, spec, seed, causes_seen, train_source, scan, copy, p)
    return CollectResult(plan=clusters, selection=selection, out_dir=out_dir, summary=summary)


def _write(out_dir: Path, summary: dict, selection: pd.DataFrame, spec: list[dict], seed: int,
           causes_seen: list[str], train_source: str, scan: ScanOutputs, copy: bool, p: float) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        if copy:
            (tmp / "to_label").mkdir()
            missing = []
            for r in selection.itertuples():
                try:
                    shutil.copy2(r.source, tmp / r.copy)
                except OSError:  # moved or deleted since the scan: keep the row, say so
                    missing.append(r.path)
            if missing:
                summary["notes"].append(f"{len(missing)} selected files could not be copied (moved since the "
                                        f"scan?): {', '.join(missing[:5])}")
                selection.loc[selection["path"].isin(missing), "copy"] = ""
            template = pd.DataFrame({"path": selection.loc[selection["copy"] != "", "copy"]
                                     .str.removeprefix("to_label/"), "label": ""})
            template.to_csv(tmp / "to_label" / "labels_template.csv", index=False)
        else:
            pd.DataFrame({"path": selection["path"], "label": ""}).to_csv(tmp / "labels_template.csv", index=False)
        selection.to_csv(tmp / "selection.csv", index=False, float_format="%.6g")
        transforms.save_augmentation(transforms.compose(spec, seed, p), tmp / "augment.yaml")
        aug = summary["augmentation"]
        write_text(tmp / "augment.md", transforms.render_markdown(spec, causes_seen, train_source,
                                                                  aug["images_per_cause"], aug["images_needed"]))
        write_json(tmp / "plan.json", summary)
        write_text(tmp / "plan.md", planmod.render_markdown(summary))
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    remove_stale(out_dir.parent, f".{out_dir.name}-")
