"""The augmentation spec of :mod:`.augment` as albumentations objects, YAML and Markdown.

albumentations is imported inside the functions: importing it costs about a
second and checks for updates unless ``NO_ALBUMENTATIONS_UPDATE`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..images import InputError
from .augment import augmentation_spec


def _instantiate(entry: dict):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    cls = getattr(A, entry["name"])
    if "children" in entry:
        return cls([_instantiate(c) for c in entry["children"]], p=entry["p"])
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry["params"].items()}, p=entry["p"])


def compose(spec: list[dict], seed: int | None = None, p: float = 0.5):
    """The albumentations ``Compose`` of ``spec`` (empty when no shift was seen).

    One cause per image, as on the line (a station has one problem): a ``OneOf``
    over the causes, each a ``Sequential`` of its transforms, applied with
    probability ``p``; the other images stay as they were, so the model keeps
    seeing the training conditions.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    causes: dict[str, list] = {}
    for e in spec:
        causes.setdefault(e["cause"], []).append(_instantiate(e))
    if not causes:
        return A.Compose([], seed=seed)
    return A.Compose([A.OneOf([A.Sequential(t, p=1.0) for t in causes.values()], p=p)], seed=seed)


def build_augmentation(source, train: dict[str, float] | pd.DataFrame | None = None, *, p: float = 0.5,
                       seed: int | None = None):
    """Augmentation matched to a scan's shift, as an ``albumentations.Compose``.

    Parameters
    ----------
    source : a scan folder, or a table of scan rows (``cause``, measurements, ``how_*``).
    train : training medians per measurement, or the training table; default for a
        scan folder: its bank (see :func:`.scan_io.training_reference`). Needed with a table.
    p : probability that an image is augmented (by one cause's transforms; within a
        cause each transform also applies with probability ``p``).
    seed : seeds the Compose (reproducible augmentations).
    """
    from .scan_io import load_scan, reference_from_table, training_reference
    if isinstance(source, (str, os.PathLike)):
        scan = load_scan(source)
        table = scan.table
        if train is None:
            train = training_reference(scan.summary)[0]
    else:
        table = source
    if train is None:
        raise InputError("build_augmentation needs the training medians (train=...) with a table")
    if isinstance(train, pd.DataFrame):
        train = reference_from_table(train)
    return compose(augmentation_spec(table, train, p), seed, p)


def load_augmentation(path: str | os.PathLike):
    """The ``albumentations.Compose`` saved in ``augment.yaml`` (e.g. for fine-tuning)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    if not Path(path).is_file():
        raise InputError(f"no augmentation file at {path}")
    try:
        return A.load(str(path), data_format="yaml")
    except Exception as e:  # malformed YAML or unknown transform: one clear message
        raise InputError(f"cannot load augmentation {path}: {e}") from e


def save_augmentation(transform, path: str | os.PathLike) -> None:
    """``A.save`` as YAML (callers write to a temporary path and rename)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    A.save(transform, str(path), data_format="yaml")


def _call(e: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in e["params"].items())
    return f"{e['name']}({args}{', ' if args else ''}p={e['p']})"


def _children_md(entry: dict, indent: str) -> list[str]:
    """A OneOf's children as "one of", a Sequential's as "then"; equal neighbours as "n x"."""
    kids, word, out, i = entry.get("children", []), "one of" if entry["name"] == "OneOf" else "then", [], 0
    while i < len(kids):
        j = i
        while j + 1 < len(kids) and kids[j + 1] == kids[i]:
            j += 1
        out.append(f"{indent}- {word}: {f'{j - i + 1} x ' if j > i else ''}`{_call(kids[i])}`")
        out += _children_md(kids[i], indent + "  ")
        i = j + 1
    return out


def render_markdown(spec: list[dict], causes_seen: list[str], source: str, counts: dict[str, int] | None = None,
                    needed: int = 0) -> str:
    """augment.md: every transform, its parameters and where they came from; ``counts``: flagged
    images per cause, ``needed``: how many a cause needs for transforms."""
    lines = ["# Shift-matched augmentation", "",
             "`augment.yaml` is an albumentations 2 pipeline (`shiftbench.load_augmentation(path)` or "
             "`albumentations.load(path, data_format='yaml')`). Its ranges span the central 80% "
             "(10th-90th percentiles) of what the flagged production images show, measured against "
             "the training medians from " + source + ". "
             "Each image gets, with probability p (0.5 by default), the transforms of one cause picked at random "
             "(as on the line, one problem per station); the others stay as they were, so the model "
             "keeps seeing the training conditions. Within a cause each transform applies with its p.", ""]
    for e in spec:
        lines.append(f"- **{e['cause']}**: `{_call(e)}`")
        lines += _children_md(e, "  ")
        lines.append(f"  - from: {e['why']}")
    covered = {e["cause"] for e in spec}
    for c in causes_seen:
        if c not in covered:
            n = (counts or {}).get(c, needed)
            why = ("new parts/defects need labels, not augmentation" if c == "content"
                   else f"seen on {n} flagged images, fewer than the {needed} a range is drawn from" if n < needed
                   else "no measured change large enough to turn into a range")
            lines.append(f"- **{c}**: no transform ({why})")
    if not spec and not set(causes_seen) - {"content"}:
        lines.append("No transform: no lighting, angle, resolution or pipeline shift among the flagged images.")
    lines.append("")
    return "\n".join(lines)
