"""What fine-tuning reports: accuracy blocks, per-cluster accuracy, the promotion gate, the model card.

Everything here works on plain numbers (predictions, labels, dicts), so the
report can be checked against ``metrics.json`` without a model. Accuracies are
fractions in [0, 1]; changes and the gate's tolerance are percentage points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..images import InputError

UNMATCHED = "unmatched"  # cluster key of labelled images not found in the scan's images.csv


def accuracy(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """``{"accuracy", "correct", "n", "per_class": {class: {"accuracy", "n"}}}``; accuracy None when n is 0."""
    right = np.asarray(pred) == np.asarray(labels)
    per_class = {}
    for k, name in enumerate(classes):
        mine = right[np.asarray(labels) == k]
        per_class[name] = {"accuracy": float(mine.mean()) if len(mine) else None, "n": int(len(mine))}
    return {"accuracy": float(right.mean()) if len(right) else None, "correct": int(right.sum()),
            "n": int(len(right)), "per_class": per_class}


def read_scan(scan_dir: str | os.PathLike) -> pd.DataFrame:
    """``images.csv`` of a ``shiftbench scan`` folder: path, cluster (str), cause, sha (may be empty).

    A cluster of several modes (``mode``: darker and brighter images, say) is reported mode by
    mode, as ``"<cluster>.<mode>"``: one mode can be fixed while the other is not."""
    path = Path(scan_dir) / "images.csv"
    if not path.is_file():
        raise InputError(f"--scan {scan_dir}: no images.csv (give a folder written by 'shiftbench scan')")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    missing = {"path", "cluster"} - set(table.columns)
    if missing:
        raise InputError(f"{path} lacks columns {sorted(missing)}")
    for col in ("cause", "sha"):
        if col not in table:
            table[col] = ""
    if "mode" in table:
        flagged = ~table["cluster"].isin(["-1", ""])
        several = table[flagged].groupby("cluster")["mode"].nunique()
        split = flagged & table["cluster"].isin(several.index[several > 1])
        table.loc[split, "cluster"] = table.loc[split, "cluster"] + "." + table.loc[split, "mode"]
    return table[["path", "cluster", "cause", "sha"]]


def match_clusters(scan: pd.DataFrame, paths: list[str], sha: list[str]) -> tuple[list[str], dict[str, str]]:
    """(cluster of each labelled image, cause of each cluster).

    An image is matched by content (the scan's ``sha`` is the same blake2b of the
    file's bytes as the labelled images'), which survives ``collect`` renaming
    its copies; failing that by file name, when exactly one scanned image has it.
    """
    by_sha = dict(zip(scan["sha"], scan["cluster"]))
    by_sha.pop("", None)
    names = scan["path"].str.rsplit("/", n=1).str[-1]
    unique = names[~names.duplicated(keep=False)]
    by_name = dict(zip(unique, scan.loc[unique.index, "cluster"]))
    found = [by_sha.get(s) or by_name.get(p.rsplit("/", 1)[-1], UNMATCHED) for p, s in zip(paths, sha)]
    flagged = scan[scan["cause"] != ""]
    causes = dict(zip(flagged["cluster"], flagged["cause"]))
    return found, {c: causes.get(c, "not flagged" if c == "-1" else "") for c in sorted(set(found))}


def by_cluster(clusters: list[str], causes: dict[str, str], labels: np.ndarray, before: np.ndarray,
               after: np.ndarray) -> dict[str, dict]:
    """``{cluster: {"cause", "n", "before", "after"}}`` accuracies of the images of each cluster."""
    clusters = np.asarray(clusters, dtype=object)
    out = {}
    for c in sorted(set(clusters), key=_cluster_order):
        mine = clusters == c
        out[c] = {"cause": causes.get(c, ""), "n": int(mine.sum()),
                  "before": float((before[mine] == labels[mine]).mean()),
                  "after": float((after[mine] == labels[mine]).mean())}
    return out


def unmeasured(scan: pd.DataFrame, measured: dict[str, dict]) -> list[dict]:
    """Failure clusters of the scan (cluster >= 0) with no held-out labelled image: nothing says
    whether the new model handles them."""
    flagged = scan[~scan["cluster"].isin(["-1", ""]) & ~scan["cluster"].isin(list(measured))]
    return [{"cluster": c, "cause": g["cause"].iloc[0], "n_scan": int(len(g))}
            for c, g in sorted(flagged.groupby("cluster"), key=lambda kv: _cluster_order(kv[0]))]


def _cluster_order(c: str) -> tuple:
    """Numeric clusters (and their modes, ``"2.1"``) in numeric order (-1, the unflagged images,
    first), then the rest."""
    head, _, tail = c.partition(".")
    numeric = head.lstrip("-").isdigit() and (not tail or tail.isdigit())
    return (not numeric, int(head) if numeric else 0, int(tail) if numeric and tail else -1, c)


def gate(original: dict, production: dict, max_regression: float) -> dict:
    """Promote only if production accuracy improves strictly and original accuracy drops at most
    ``max_regression`` percentage points. ``original``/``production``: ``{"before", "after"}`` blocks."""
    pb, pa = production["before"]["accuracy"], production["after"]["accuracy"]
    ob, oa = original["before"]["accuracy"], original["after"]["accuracy"]
    # from the counts, so that an unchanged model is exactly 0 points, not 1e-15
    drop = 100 * (original["before"]["correct"] - original["after"]["correct"]) / original["n"]
    improved, within = pa > pb, drop <= max_regression + 1e-9
    why = [f"production accuracy {pb:.3f} -> {pa:.3f} ({'improved' if improved else 'did not improve'})",
           f"original validation accuracy {ob:.3f} -> {oa:.3f}, "
           + (f"a drop of {drop:.1f} points" if drop > 0 else f"no drop ({-drop:+.1f} points)")
           + f" ({'within' if within else 'beyond'} the {max_regression:g} allowed)"]
    if pb >= 1.0:  # nothing left to improve on: the rule cannot pass, say why and what to do
        why.append("the held-out production images were all correct before fine-tuning: label more "
                   "images (or raise --holdout) so that an improvement can be measured")
    return {"promoted": bool(improved and within),
            "rule": f"production accuracy after > before, and original validation accuracy drops by at most "
                    f"{max_regression:g} percentage point{'' if max_regression == 1 else 's'}",
            "production_before": pb, "production_after": pa, "original_before": ob, "original_after": oa,
            "original_drop_points": round(drop, 6), "max_regression_points": max_regression,
            "production_improved": bool(improved), "original_within_tolerance": bool(within),
            "reason": "; ".join(why)}


def failures(metrics: dict, level: float) -> list[dict]:
    """Clusters (with ``--scan``), else classes of the held-out production images, whose accuracy
    after fine-tuning is below ``level``: where the new model is still known to fail."""
    clusters = metrics.get("clusters")
    if clusters:
        return [{"cluster": c, **v} for c, v in clusters.items() if v["after"] < level]
    prod = metrics["evaluation"]["production_holdout"]
    return [{"class": k, "cause": "", "n": v["n"], "before": prod["before"]["per_class"][k]["accuracy"],
             "after": v["accuracy"]} for k, v in prod["after"]["per_class"].items()
            if v["n"] and v["accuracy"] < level]


def transform_names(pipeline) -> str | None:
    """Names of the transforms of ``pipeline``, for people ("Downscale, GaussNoise")."""
    if pipeline is None:
        return None
    names, todo = [], list(getattr(pipeline, "transforms", [pipeline]))
    while todo:
        t = todo.pop(0)
        kids = getattr(t, "transforms", None)
        todo[:0] = list(kids) if kids else []
        names += [] if kids else [type(t).__name__]
    return ", ".join(dict.fromkeys(names))


def data_lineage(data, meta: dict) -> dict:
    """``metrics.json``'s data lineage of a fine-tuning's image sets (``finetune._Data``): roots, counts,
    content digests, per-class counts of the new images."""
    recorded = (meta.get("lineage") or {}).get("val_files_sha")
    per_class = {c: {"finetune": int((data.new_train.labels == k).sum()),
                     "holdout": int((data.prod.labels == k).sum())} for k, c in enumerate(data.new_train.classes)}
    return {"original": {"root": str(data.train_root), "labels": _str(data.train_labels),
                         "n_train": len(data.orig_train), "n_val": len(data.orig_val),
                         "train_files_sha": data.orig_train.digest(), "val_files_sha": data.orig_val.digest(),
                         "val_matches_checkpoint": data.orig_val.digest() == recorded,
                         "val_missing": len(set(meta["split"]["val"]) - set(data.orig_val.paths))},
            "new": {"root": str(data.new_root), "labels": _str(data.new_labels),
                    "n_finetune": len(data.new_train), "n_holdout": len(data.prod),
                    "finetune_files_sha": data.new_train.digest(), "holdout_files_sha": data.prod.digest(),
                    "holdout": data.prod.paths, "per_class": per_class},
            "skipped": data.skipped}


def _str(path) -> str | None:
    return None if path is None else str(path)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _change(before: float | None, after: float | None) -> str:
    return "n/a" if before is None or after is None else f"{100 * (after - before):+.1f}"


SPLITS = {"original_val": "original validation", "production_holdout": "held-out production"}


def summary_lines(metrics: dict) -> list[str]:
    """A before/after table for the terminal."""
    lines = [f"{'':<28}{'n':>5}{'before':>9}{'after':>9}{'change':>9}"]
    for key, name in SPLITS.items():
        e = metrics["evaluation"][key]
        lines.append(f"{name:<28}{e['n']:>5}{_pct(e['before']['accuracy']):>9}{_pct(e['after']['accuracy']):>9}"
                     f"{_change(e['before']['accuracy'], e['after']['accuracy']):>9}")
    for c, v in (metrics.get("clusters") or {}).items():
        label = f"  cluster {c}" + (f" ({v['cause']})" if v["cause"] else "")
        lines.append(f"{label[:28]:<28}{v['n']:>5}{_pct(v['before']):>9}{_pct(v['after']):>9}"
                     f"{_change(v['before'], v['after']):>9}")
    g = metrics["gate"]
    lines.append(f"gate: {'PROMOTED' if g['promoted'] else 'REFUSED'}: {g['reason']}")
    return lines


def model_card(metrics: dict, meta: dict) -> str:
    """``model_card.md``: intended use, data lineage, metrics before/after, failure clusters, gate."""
    g, t = metrics["gate"], metrics["training"]
    lines = [f"# Model card: {meta['arch']} fine-tuned from {Path(metrics['parent']['path']).name}", "",
             f"**Gate: {'PROMOTED' if g['promoted'] else 'REFUSED'}.** {g['reason']}.", "",
             *_intended_use(metrics, meta), *_lineage(metrics, meta), *_metrics(metrics), *_failures(metrics),
             "## Gate", "", f"Rule: {g['rule']}.", "",
             f"Decision: **{'promoted' if g['promoted'] else 'refused'}**: {g['reason']}.", "",
             "## Training", "",
             f"{t['epochs']} epochs, lr {t['lr']:g}, batch {t['batch_size']}, trainable `{t['trainable']}`, "
             f"flips {'on' if t['flip'] else 'off'}, {t.get('new_draws_per_epoch', '?')} draws of new images per "
             f"epoch (new share {t.get('new_share', 0):g}), on {metrics['device']}"
             f"{' with mixed precision' if metrics['amp'] else ''}; {metrics['timings']['total_s']:.0f} s in all. "
             "No epoch was chosen on a held-out set: the model after the last epoch is kept.", ""]
    return "\n".join(lines)


def _intended_use(metrics: dict, meta: dict) -> list[str]:
    new, augmented = metrics["data"]["new"], metrics["training"]["augment_summary"]
    return ["## Intended use", "",
            f"Classifies images into {', '.join(f'`{c}`' for c in meta['classes'])} "
            f"(input {meta['preprocess']['size']} px, resize `{meta['preprocess']['resize']}`). It is the parent "
            f"checkpoint fine-tuned on its own training images plus {new['n_finetune']} newly labelled "
            f"production images from `{new['root']}`{' with the shift-matched augmentation' if augmented else ''}, "
            "so that it also covers the production conditions those images show. It knows no other class, and "
            "conditions unlike both the training and the new images are not covered: index with it (`shiftbench "
            "index TRAIN --backbone` this folder) and scan each production batch to see how much of it is unlike "
            "them.", ""]


def _lineage(metrics: dict, meta: dict) -> list[str]:
    o, n, t, parent = metrics["data"]["original"], metrics["data"]["new"], metrics["training"], metrics["parent"]
    lines = ["## Data lineage", "", "| set | images | files digest | root |", "|---|---:|---|---|",
             f"| original training | {o['n_train']} | `{o['train_files_sha']}` | `{o['root']}` |",
             f"| original validation (the checkpoint's split; never trained on) | {o['n_val']} | "
             f"`{o['val_files_sha']}` | `{o['root']}` |",
             f"| new, fine-tuning part | {n['n_finetune']} | `{n['finetune_files_sha']}` | `{n['root']}` |",
             f"| new, held out (production test) | {n['n_holdout']} | `{n['holdout_files_sha']}` | `{n['root']}` |",
             "", f"Parent checkpoint `{parent['path']}`, weights sha256 `{parent['weights_sha256']}`. "
             f"New weights sha256 `{meta.get('weights_sha256', '')}`. Seed {t['seed']}. "
             f"Augmentation: {t['augment_file'] or 'none'} ({t['augment_summary'] or 'no transforms'}). "
             "Files digests: blake2b of the sorted path, content hash and label of each file.", ""]
    lines += [f"**Warning:** {w}." for w in metrics.get("warnings", [])]  # (finetune's, also in metrics.json)
    return lines + ([""] if metrics.get("warnings") else [])


def _metrics(metrics: dict) -> list[str]:
    lines = ["## Metrics", "", "Accuracy of the parent (before) and the fine-tuned model (after); change in "
             "percentage points. A parent from `train` chose its best epoch on the original validation images, so its "
             "figure there is slightly optimistic: the gate errs towards refusing.", "",
             "| split | n | before | after | change |", "|---|---:|---:|---:|---:|"]
    for key, name in SPLITS.items():
        e = metrics["evaluation"][key]
        lines.append(f"| {name} | {e['n']} | {_pct(e['before']['accuracy'])} | {_pct(e['after']['accuracy'])} | "
                     f"{_change(e['before']['accuracy'], e['after']['accuracy'])} |")
    for key, name in SPLITS.items():
        e = metrics["evaluation"][key]
        lines += ["", f"Per class, {name}:", "", "| class | n | before | after |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {v['n']} | {_pct(e['before']['per_class'][c]['accuracy'])} | {_pct(v['accuracy'])} |"
                  for c, v in e["after"]["per_class"].items()]
    if metrics.get("clusters"):
        lines += ["", f"Per scan cluster (held-out production images; scan `{metrics['scan']}`):", "",
                  "| cluster | cause | n | before | after | change |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {c} | {v['cause']} | {v['n']} | {_pct(v['before'])} | {_pct(v['after'])} | "
                  f"{_change(v['before'], v['after'])} |" for c, v in metrics["clusters"].items()]
    return lines + [""]


def _failures(metrics: dict) -> list[str]:
    level, bad = metrics["failure_level"], metrics["failures"]
    lines = ["## Known failure clusters", ""]
    if bad:
        lines.append(f"Accuracy after fine-tuning below {level:.2f} (small n: treat as indications):")
        lines += [f"- {'cluster ' + f['cluster'] if 'cluster' in f else 'class ' + f['class']}"
                  f"{' (' + f['cause'] + ')' if f['cause'] else ''}: {_pct(f['after'])} of {f['n']} "
                  f"(before {_pct(f['before'])})" for f in bad]
    else:
        lines.append(f"None below {level:.2f} on the held-out production images"
                     + ("" if metrics.get("clusters") else " (per class; give --scan for per-cluster figures)")
                     + ".")
    if metrics.get("unmeasured_clusters"):
        lines += ["", "Not measured (no held-out labelled image; label some to know):"]
        lines += [f"- cluster {u['cluster']}{' (' + u['cause'] + ')' if u['cause'] else ''}: "
                  f"{u['n_scan']} images in the scan" for u in metrics["unmeasured_clusters"]]
    return lines + [""]
