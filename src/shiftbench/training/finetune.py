"""``finetune`` a checkpoint on its training data plus newly labelled production images, behind a gate.

The job, top to bottom (:func:`finetune`):

1. Read the checkpoint: classes, preprocessing, trainable mode and the
   validation split it recorded (``split.val``, relative to ``lineage.data_root``).
2. Load the original images. Those of the recorded validation split are set
   aside and never trained on: they measure what the fine-tuning costs.
3. Load the new labelled images (class sub-folders or a ``path,label`` CSV; only
   classes the checkpoint knows) and split each class into a fine-tuning part and
   a held-out production part (``holdout``): the production test.
4. Score the old model on both held-out sets.
5. Train (:func:`~shiftbench.training.fit.fit`) on the original training images
   plus the fine-tuning part. The augmentation is applied to every training
   image drawn, original and new alike: the original images far outnumber the
   new ones, and seeing *them* under the production conditions is what teaches
   the model those conditions without forgetting the classes; the new images
   show the real thing, so each is drawn several times per epoch (``new_share``
   of the draws: a few dozen would otherwise be lost among thousands). No epoch
   is chosen by a held-out set (they decide the gate, and choosing by them would
   flatter the new model): the last epoch is kept.
6. Score the new model on the same sets, apply the gate, write the checkpoint
   (same format as ``train``'s, parent recorded), ``metrics.json`` and ``model_card.md``.

Fine-tuning keeps the checkpoint's classifier, so a new class is refused: train
a new model from the checkpoint (``shiftbench train DATA --backbone CKPT``) for that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..embedding.backbones import Preprocess, checkpoint_meta, resolve_device
from ..fsutil import check_writable, write_json, write_text
from ..images import DEFAULT_MAX_PIXELS, InputError
from . import card
from .augmentation import describe_augmentation, load_augment
from .checkpoint import read_checkpoint, save_checkpoint
from .data import Inputs, LabeledImages, load_labeled, stratified_split
from .fit import DEFAULT_LR, _autocast, fit
from .model import TRAINABLE, build_classifier, check_lr, load_source, own_rng

DEFAULT_WORKSPACE = Path(".shiftbench")


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote: ``out_dir`` (a checkpoint folder, with ``metrics.json`` and
    ``model_card.md``), its metrics and ``model.json``, and the fine-tuned model."""

    out_dir: Path
    metrics: dict
    meta: dict
    model: nn.Module

    @property
    def promoted(self) -> bool:
        return self.metrics["gate"]["promoted"]

    @property
    def checkpoint(self) -> Path:
        return self.out_dir


@own_rng
def finetune(checkpoint: str | os.PathLike, new_dir: str | os.PathLike, *,
             train_dir: str | os.PathLike | None = None, augment=None,
             new_labels: str | os.PathLike | None = None, train_labels: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, workspace: str | os.PathLike = DEFAULT_WORKSPACE,
             holdout: float = 0.3, new_share: float = 0.2, epochs: int = 16, lr: float | None = None,
             batch_size: int = 32, trainable: str | None = None, max_regression: float = 1.0,
             scan: str | os.PathLike | None = None,
             failure_level: float = 0.8, seed: int = 0, device: str = "auto", amp: bool = True,
             flip: bool = True, num_workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
             progress: Callable[[int, int], None] | None = None,
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune ``checkpoint`` on its training data plus the labelled images of ``new_dir``.

    Parameters
    ----------
    checkpoint
        A folder written by ``shiftbench train`` (or by this function).
    new_dir
        Newly labelled production images: one sub-folder per class, or anywhere with ``new_labels``.
    train_dir, train_labels
        The original training images; default the checkpoint's ``lineage.data_root``
        (and its labels CSV). Must hold the checkpoint's validation images.
    augment
        An albumentations transform, or the YAML (or JSON) file of one (as written
        by ``shiftbench collect``), applied to all training images, original and new.
    out, workspace
        Output folder; default ``WORKSPACE/finetune/<local time>``.
    holdout
        Share of each class of new images held out as the production test (0 < holdout < 1).
    new_share
        Share of each epoch's draws that are new images (0 <= new_share < 1): new images
        are drawn several times per epoch, each draw augmented anew, so that a few dozen of
        them are not drowned by thousands of original ones. They are never drawn less than
        once (0 keeps the plain union).
    epochs, lr, batch_size, flip, seed, device, amp
        As for :func:`~shiftbench.training.fit.fit`; ``lr`` defaults to half the training
        default of ``trainable`` (which defaults to the checkpoint's own mode). 16 epochs by
        default: with 8, the steel benchmark recovered less of the lost accuracy (each
        epoch draws new augmentations of every image; docs/benchmarks.md).
    max_regression
        Largest drop of original validation accuracy, in percentage points, the gate accepts.
    scan
        A ``shiftbench scan`` folder: the held-out images are matched to its clusters
        (by content hash, else file name) for per-cluster accuracy.
    failure_level
        Clusters (or classes) whose accuracy after is below this are listed as known failures.

    Returns
    -------
    FinetuneResult
        ``promoted`` says whether the gate passed; the checkpoint is written either way.
    """
    t0 = time.perf_counter()
    _check(holdout, new_share, epochs, batch_size, failure_level, max_regression)
    check_lr(lr)
    found = checkpoint_meta(checkpoint)
    if found is None:
        raise InputError(f"not a shiftbench checkpoint: {checkpoint}")
    parent_dir, meta = found[0].resolve(), found[1]
    trainable = trainable or meta.get("trainable", "last")
    if trainable not in TRAINABLE:
        raise InputError(f"trainable must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
    lr = lr or DEFAULT_LR[trainable] / 2  # gentler than training: the weights are already good
    train_root, train_labels = _original_source(meta, train_dir, train_labels)
    new_root = Path(new_dir).resolve()
    if not new_root.is_dir():
        raise InputError(f"--new: not a folder: {new_dir}")
    out_dir = Path(out).resolve() if out is not None else _default_out(Path(workspace))
    if out_dir == parent_dir:
        raise InputError(f"--out {out_dir} is the checkpoint itself: give another folder (the parent stays as it is)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    check_writable(out_dir, InputError)  # before training, not after
    pipeline, augment_file = load_augment(augment, int((meta.get("preprocess") or {}).get("size", 224)))
    # (a bad file fails before minutes of loading)
    scan_table = card.read_scan(scan) if scan is not None else None
    dev = resolve_device(device)

    # ---- data: original train / original val (recorded) / new fine-tuning part / new held-out part
    source = load_source(str(parent_dir))
    classes, pre = list(meta["classes"]), source.preprocess
    original = load_labeled(train_root, pre, labels=train_labels, max_pixels=max_pixels,
                            num_workers=num_workers, progress=progress)
    data, warnings = _gather(original, new_root, new_labels, meta, classes, train_root, train_labels, pre, holdout,
                             seed, max_pixels, num_workers, log)
    t_load = time.perf_counter()

    # ---- score the parent, fine-tune, score again (same images, same device and precision)
    model = build_classifier(source, classes, seed)  # the parent's weights and head, unchanged
    before = {k: _logits(model, d, pre, dev, batch_size, amp) for k, d in data.held_out.items()}
    t_before = time.perf_counter()
    draws = _draws(len(data.orig_train), len(data.new_train), new_share)
    result = fit(model, data.orig_train.concat(data.new_train), None, preprocess=pre, trainable=trainable,
                 augment=pipeline, flip=flip, epochs=epochs, lr=lr, batch_size=batch_size, patience=None,
                 seed=seed, device=str(dev), amp=amp, draws=draws, progress=progress, log=log,
                 resume_dir=out_dir if out is not None else out_dir.parent)  # rerun: resumes
    t_fit = time.perf_counter()
    after = {k: _logits(model, d, pre, dev, batch_size, amp) for k, d in data.held_out.items()}
    t_after = time.perf_counter()

    # ---- gate, checkpoint, metrics.json, model_card.md
    evaluation = {k: {"n": len(d), "before": card.accuracy(before[k].argmax(1), d.labels, classes),
                      "after": card.accuracy(after[k].argmax(1), d.labels, classes)}
                  for k, d in data.held_out.items()}
    decision = card.gate(evaluation["original_val"], evaluation["production_holdout"], max_regression)
    created = datetime.now(timezone.utc)
    training = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "trainable": trainable, "flip": flip,
                "new_share": new_share, "new_draws_per_epoch": int(draws[len(data.orig_train):].sum()),
                "copies_of_held_out_not_trained": data.copies_dropped,
                "seed": seed, "augment_file": augment_file, "augment_summary": card.transform_names(pipeline),
                "augment": describe_augmentation(pipeline), "device": str(dev), "amp": amp}
    save_checkpoint(out_dir, model, _checkpoint_meta(meta, source, pre, data, training, result, evaluation,
                                                     after["original_val"], decision, created))
    model_meta = read_checkpoint(out_dir)
    clusters = _clusters(scan_table, data.prod, before, after)
    metrics = {
        "shiftbench": __version__, "created": created.isoformat(timespec="seconds"), "out_dir": str(out_dir),
        "parent": {"path": source.parent["path"], "weights_sha256": meta["weights_sha256"]},
        "weights_sha256": model_meta["weights_sha256"], "device": str(dev),
        "amp": bool(amp and dev.type == "cuda"),  # what ran, not what was asked
        "data": card.data_lineage(data, meta),
        "training": {**training, "history": result.history, "cached_features": result.cached},
        "evaluation": evaluation, "scan": str(Path(scan).resolve()) if scan is not None else None,
        "clusters": clusters, "gate": decision, "warnings": warnings,
        "unmeasured_clusters": card.unmeasured(scan_table, clusters) if scan_table is not None else None,
        "failure_level": failure_level,
        "timings": {"load_s": round(t_load - t0, 3), "evaluate_before_s": round(t_before - t_load, 3),
                    "fit_s": round(t_fit - t_before, 3), "evaluate_after_s": round(t_after - t_fit, 3),
                    "total_s": round(time.perf_counter() - t0, 3)},
    }
    metrics["failures"] = card.failures(metrics, failure_level)
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "model_card.md", card.model_card(metrics, model_meta))
    result.run_state.remove(others=out is not None)  # the run is kept: its state is not needed any more
    return FinetuneResult(out_dir, metrics, model_meta, model)


@dataclass
class _Data:
    """The four image sets of a fine-tuning and where they came from."""

    train_root: Path
    train_labels: Path | None
    new_root: Path
    new_labels: Path | None
    orig_train: LabeledImages
    orig_val: LabeledImages  # the parent's validation split: never trained on
    new_train: LabeledImages
    prod: LabeledImages  # held-out new images: the production test
    skipped: list[dict]
    copies_dropped: int  # training images left out as copies of held-out ones

    @property
    def held_out(self) -> dict[str, LabeledImages]:
        return {"original_val": self.orig_val, "production_holdout": self.prod}


def _gather(original: LabeledImages, new_root: Path, new_labels, meta: dict, classes: list[str], train_root: Path,
            train_labels: Path | None, pre: Preprocess, holdout: float, seed: int, max_pixels: int,
            num_workers: int | None, log: Callable[[str], None] | None) -> tuple[_Data, list[str]]:
    """The four image sets (steps 2-3 of the module docstring), and the warnings about them (also logged)."""
    orig_train, orig_val = _recorded_split(_onto(original, classes, f"--train {train_root}"), meta, train_root)
    new = _onto(_load_new(new_root, pre, new_labels, max_pixels, num_workers), classes, f"--new {new_root}")
    ft, ho = stratified_split(new, holdout, seed)
    warnings: list[str] = []  # logged, and kept in metrics.json

    def warn(message: str) -> None:
        warnings.append(message)
        if log:
            log(f"warning: {message}")
    held_out = set(orig_val.sha) | {new.sha[i] for i in ho}  # copies of these are never trained on
    orig_train, dropped_orig = _without(orig_train, held_out)
    if dropped_orig:
        warn(f"{dropped_orig} original training images are copies of held-out ones (validation or production "
             f"holdout, e.g. the new images copied into --train): not trained on, so that the gate stays honest")
    new_train, dropped_new = _without(new.subset(ft), held_out)
    if dropped_new:
        warn(f"{dropped_new} new images are copies of held-out ones (the checkpoint's validation images, or "
             f"production images held out for the gate): not trained on, so that the gate stays honest")
    data = _Data(train_root, train_labels, new_root, Path(new_labels).resolve() if new_labels else None,
                 orig_train, orig_val, new_train, new.subset(ho), original.skipped + new.skipped,
                 dropped_orig + dropped_new)
    if not len(data.prod):
        raise InputError(f"--new {new_root}: too few images to hold any out; label at least 2 of a class")
    earlier = (meta.get("lineage") or {}).get("new_root")  # the parent was fine-tuned itself
    if earlier and not any(Path(earlier).resolve().is_relative_to(r) for r in (new_root, train_root)):
        warn(f"the checkpoint was fine-tuned on {meta['lineage'].get('n_new', '?')} images of {earlier}, "
             f"which this run neither trains nor gates on: put them into --new or --train to keep them")
    if orig_val.digest() != (meta.get("lineage") or {}).get("val_files_sha"):
        missing = len(set(meta["split"]["val"]) - set(orig_val.paths))
        warn(f"the validation images under {train_root} differ from those the checkpoint recorded ({missing} "
             f"missing or changed); before and after are compared on the same images anyway")
    if log:
        log(f"{len(orig_train)} original + {len(data.new_train)} new training images; held out: "
            f"{len(orig_val)} original validation, {len(data.prod)} production")
    return data, warnings


def _without(data: LabeledImages, shas: set[str]) -> tuple[LabeledImages, int]:
    """``data`` less the images whose bytes are in ``shas``, and how many that was."""
    keep = np.array([s not in shas for s in data.sha], dtype=bool)
    return (data, 0) if keep.all() else (data.subset(np.flatnonzero(keep)), int((~keep).sum()))


def _draws(n_orig: int, n_new: int, new_share: float) -> np.ndarray:
    """Draws per epoch of each image (original ones first): new ones repeated so that they make
    about ``new_share`` of an epoch, and at least once."""
    reps = max(1, round(new_share / (1 - new_share) * n_orig / n_new)) if n_new else 1
    return np.concatenate([np.ones(n_orig, np.int64), np.full(n_new, reps, np.int64)])


def _check(holdout: float, new_share: float, epochs: int, batch_size: int, failure_level: float,
           max_regression: float) -> None:
    if not np.isfinite(max_regression):  # (negative: the original accuracy must rise by that much)
        raise InputError(f"max regression must be a finite number of points, got {max_regression}")
    if not 0 < holdout < 1:
        raise InputError(f"holdout must be in (0, 1): some new images train, some test; got {holdout}")
    if not 0 <= new_share < 1:
        raise InputError(f"new share must be in [0, 1), got {new_share}")
    if epochs < 1 or batch_size < 1:
        raise InputError("epochs and batch size must be at least 1")
    if not 0 <= failure_level <= 1:
        raise InputError(f"failure level must be in [0, 1], got {failure_level}")


def _original_source(meta: dict, train_dir, train_labels) -> tuple[Path, Path | None]:
    """The original training folder and labels CSV: as given, else as the checkpoint recorded."""
    lineage = meta.get("lineage") or {}
    recorded = lineage.get("data_root")
    root = Path(train_dir if train_dir is not None else recorded or "").resolve()
    if train_dir is None and not recorded:
        raise InputError("the checkpoint records no training folder: give --train")
    if not root.is_dir():
        raise InputError(f"--train: not a folder: {root}")
    if train_labels is None and lineage.get("labels") and recorded and root == Path(recorded).resolve():
        train_labels = lineage["labels"]
    return root, Path(train_labels).resolve() if train_labels else None


def _load_new(root: Path, pre: Preprocess, labels, max_pixels: int, num_workers: int | None) -> LabeledImages:
    """The newly labelled images (one class is enough); errors name the --new option."""
    try:
        return load_labeled(root, pre, labels=labels, max_pixels=max_pixels, num_workers=num_workers,
                            min_classes=1)
    except InputError as e:
        raise InputError(f"--new: {e}") from None


def _onto(data: LabeledImages, classes: list[str], where: str) -> LabeledImages:
    """``data`` with its labels renumbered as the checkpoint's ``classes``; refuses unknown classes."""
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise InputError(f"{where}: classes {unknown} are not among the checkpoint's {classes}; fine-tuning "
                         f"keeps the classifier, so train a new one for them: shiftbench train DATA --backbone CKPT")
    remap = np.array([classes.index(c) for c in data.classes], dtype=np.int64)
    return LabeledImages(data.pixels, remap[data.labels], list(classes), data.paths, data.sha, data.root,
                         data.skipped)


def _recorded_split(data: LabeledImages, meta: dict, root: Path) -> tuple[LabeledImages, LabeledImages]:
    """(training part, the checkpoint's validation images): every image not in ``split.val`` trains."""
    val_paths = set((meta.get("split") or {}).get("val") or [])
    if not val_paths:
        raise InputError("the checkpoint records no validation split (trained with --val-fraction 0?): "
                         "the gate has nothing to measure forgetting on")
    is_val = np.array([p in val_paths for p in data.paths])
    if not is_val.any():
        raise InputError(f"none of the checkpoint's {len(val_paths)} validation images is under {root}: "
                         "give --train the folder it was trained on")
    return data.subset(np.flatnonzero(~is_val)), data.subset(np.flatnonzero(is_val))


@torch.no_grad()
def _logits(model: nn.Module, data: LabeledImages, pre: Preprocess, dev: torch.device, batch_size: int,
            amp: bool) -> np.ndarray:
    """(N, classes) float32 logits, with the same input path and precision as training."""
    model.to(dev).to(memory_format=torch.channels_last).eval()  # as fit runs it: same numbers before/after
    inputs, (autocast, _) = Inputs(pre, dev), _autocast(dev, amp)
    parts = []
    for lo in range(0, len(data), batch_size):
        with autocast():
            parts.append(model(inputs(data.pixels[lo:lo + batch_size])).float().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0, len(data.classes)), np.float32)


def _clusters(scan_table, prod: LabeledImages, before: dict, after: dict) -> dict | None:
    if scan_table is None:
        return None
    found, causes = card.match_clusters(scan_table, prod.paths, prod.sha)
    return card.by_cluster(found, causes, prod.labels, before["production_holdout"].argmax(1),
                           after["production_holdout"].argmax(1))


def _default_out(workspace: Path) -> Path:
    base = workspace / "finetune" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():  # two runs in one second: never mix their files
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out.resolve()


def _checkpoint_meta(meta: dict, source, pre: Preprocess, data: _Data, training: dict, result, evaluation: dict,
                     val_logits: np.ndarray, decision: dict, created: datetime) -> dict:
    """``model.json`` in ``train``'s format; lineage adds the new images, ``finetune`` the gate."""
    train_set, val = data.orig_train.concat(data.new_train), data.orig_val
    after = evaluation["original_val"]["after"]
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val.labels))
    return {
        "arch": meta["arch"], "classes": list(meta["classes"]), "preprocess": pre.to_dict(),
        "trainable": training["trainable"],
        "lineage": {"data_root": str(data.train_root), "train_files_sha": train_set.digest(),
                    "val_files_sha": val.digest(), "n_train": len(train_set), "n_val": len(val),
                    "seed": training["seed"], "parent": source.parent, "labels": card._str(data.train_labels),
                    "new_root": str(data.new_root), "new_labels": card._str(data.new_labels),
                    "new_files_sha": data.new_train.digest(), "holdout_files_sha": data.prod.digest(),
                    "n_new": len(data.new_train), "n_holdout": len(data.prod)},
        "metrics": {**result.metrics(), "val_accuracy": after["accuracy"], "val_loss": float(loss),
                    "per_class_accuracy": {c: v["accuracy"] for c, v in after["per_class"].items()},
                    "production_accuracy": evaluation["production_holdout"]["after"]["accuracy"]},
        "training": {"backbone": source.parent["path"], "weights": None, "patience": None, "monitor": None,
                     "finetune": True, **{k: v for k, v in training.items() if k not in ("trainable", "seed")}},
        "created": created.isoformat(timespec="seconds"), "shiftbench": __version__, "skipped": data.skipped,
        "split": {"train": train_set.paths, "val": val.paths,
                  "holdout": [f"{data.prod.root}/{p}" for p in data.prod.paths]},
        "finetune": {"promoted": decision["promoted"], "gate": decision, "metrics": "metrics.json"},
    }
