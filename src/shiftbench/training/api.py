"""``train`` a classifier on a labelled folder and write a checkpoint; ``predict`` with one.

A checkpoint is a backbone like any other: ``shiftbench index --backbone CKPT``
embeds with it, with the preprocessing it was trained with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from .. import __version__
from ..embedding import embed_files, load_backbone
from ..fsutil import check_writable
from ..images import DEFAULT_MAX_PIXELS, InputError, find_images
from .augmentation import describe_augmentation, load_augment
from .checkpoint import read_checkpoint, save_checkpoint
from .data import load_labeled, stratified_split
from .fit import DEFAULT_LR, FitResult, fit
from .model import TRAINABLE, build_classifier, check_lr, load_source, own_rng

DEFAULT_CHECKPOINTS = Path(".shiftbench") / "checkpoints"


@dataclass
class TrainResult:
    """What :func:`train` produced: the checkpoint folder, its ``model.json`` and the model."""

    checkpoint: Path
    meta: dict
    model: nn.Module
    fit: FitResult

    @property
    def metrics(self) -> dict:
        return self.meta["metrics"]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


def _check(epochs: int, batch_size: int, val_fraction: float, trainable: str, patience: int | None,
           monitor: str, lr: float | None = None) -> None:
    if epochs < 1 or batch_size < 1:
        raise InputError("epochs and batch size must be at least 1")
    check_lr(lr)
    if not 0 <= val_fraction < 1:
        raise InputError(f"val fraction must be in [0, 1), got {val_fraction}")
    if trainable not in TRAINABLE:
        raise InputError(f"trainable must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
    if patience is not None and patience < 0:
        raise InputError("patience must be 0 (no early stopping) or more")
    if monitor not in ("accuracy", "loss"):
        raise InputError(f"monitor must be accuracy or loss, got {monitor!r}")


@own_rng
def train(data_dir: str | os.PathLike, *, out: str | os.PathLike | None = None, backbone: str = "lite0",
          weights: str | None = None, labels: str | os.PathLike | None = None, epochs: int = 15,
          lr: float | None = None, batch_size: int = 32, size: int | None = None, resize: str | None = None,
          trainable: str = "last", val_fraction: float = 0.2, patience: int | None = 5,
          monitor: str = "accuracy", seed: int = 0, device: str = "auto", amp: bool = True,
          augment=None, flip: bool = True, num_workers: int | None = None,
          max_pixels: int = DEFAULT_MAX_PIXELS, progress: Callable[[int, int], None] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train an image classifier on ``data_dir`` and write a checkpoint folder.

    Parameters
    ----------
    data_dir
        Images in one sub-folder per class, or anywhere with ``labels``.
    out
        Checkpoint folder; default ``.shiftbench/checkpoints/<folder name>-<UTC time>``.
    backbone, weights
        Starting point: ``lite0`` (ImageNet, offline), a torchvision model name
        (``weights`` as for :func:`~shiftbench.embedding.load_backbone`; ``"none"``
        for random initialisation) or a shiftbench checkpoint (recorded as parent;
        its classifier is kept when the classes are the same).
    labels
        CSV with ``path,label`` (paths relative to ``data_dir``); unlabelled images are skipped.
    size, resize
        Input size and resize policy; default the backbone's. Recorded in the
        checkpoint, so embedding with it later preprocesses the same way.
    trainable
        ``head``, ``last`` (default) or ``all``: see :mod:`shiftbench.training.model`.
    val_fraction, seed
        Share of each class held out for validation (split by a seeded hash of the path).
    augment
        An albumentations transform, or the YAML (or JSON) file of one (as ``collect`` writes).
    epochs, lr, batch_size, patience, monitor, device, amp, flip
        See :func:`~shiftbench.training.fit.fit`.
    progress, log
        ``progress(done, total)`` while reading images and training; ``log(line)`` per epoch.

    Returns
    -------
    TrainResult
        Unreadable and unlabelled files are listed in ``meta["skipped"]``.
    """
    _check(epochs, batch_size, val_fraction, trainable, patience, monitor, lr)
    out_given = out is not None
    if out_given and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    check_writable(out if out_given else DEFAULT_CHECKPOINTS, InputError)  # before training, not after
    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise InputError(f"not a folder: {data_dir}")
    source = load_source(backbone, weights, size=size, resize=resize)
    augment, _ = load_augment(augment, source.preprocess.size)  # a file or a transform; a bad one fails now
    data = load_labeled(root, source.preprocess, labels=labels, max_pixels=max_pixels,
                        num_workers=num_workers, progress=progress)
    tr, va = stratified_split(data, val_fraction, seed)
    train_set, val_set = data.subset(tr), data.subset(va)
    if log:
        log(f"{len(train_set)} training and {len(val_set)} validation images in {len(data.classes)} classes"
            f"{f'; {len(data.skipped)} skipped' if data.skipped else ''}")
        unmeasured = [c for i, c in enumerate(data.classes) if not (val_set.labels == i).any()]
        if not len(val_set):
            log("warning: no validation images: `finetune` will refuse this checkpoint (its gate compares the "
                "accuracy on them before and after)")
        elif unmeasured:
            log(f"warning: no validation image for class {', '.join(unmeasured)} (one image each, or copies of "
                f"one): its accuracy is not measured")
    model = build_classifier(source, data.classes, seed)
    result = fit(model, train_set, val_set, preprocess=source.preprocess, trainable=trainable, augment=augment,
                 flip=flip, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience, monitor=monitor,
                 seed=seed, device=device, amp=amp, progress=progress, log=log,
                 resume_dir=out or DEFAULT_CHECKPOINTS)  # the same command again resumes an interrupted run
    created = datetime.now(timezone.utc)
    meta = {
        "arch": source.arch, "classes": data.classes, "preprocess": source.preprocess.to_dict(),
        "trainable": trainable,
        "lineage": {"data_root": str(root), "train_files_sha": train_set.digest(),
                    "val_files_sha": val_set.digest(), "n_train": len(train_set), "n_val": len(val_set),
                    "seed": seed, "parent": source.parent,
                    "labels": str(Path(labels).resolve()) if labels else None},
        "metrics": result.metrics(),
        "training": {"backbone": str(backbone), "weights": weights, "epochs": epochs,
                     "lr": lr or DEFAULT_LR[trainable], "batch_size": batch_size, "patience": patience,
                     "monitor": monitor, "flip": flip, "augment": describe_augmentation(augment),
                     "device": str(next(model.parameters()).device),
                     "amp": bool(amp and next(model.parameters()).device.type == "cuda")},  # what ran
        "created": created.isoformat(timespec="seconds"), "shiftbench": __version__,
        "skipped": data.skipped,
        "split": {"train": train_set.paths, "val": val_set.paths},
    }
    out = out or DEFAULT_CHECKPOINTS / f"{root.name}-{created:%Y%m%d-%H%M%S}"
    path = save_checkpoint(out, model, meta).resolve()
    result.run_state.remove(others=out_given)  # (in its own --out folder: stale states of changed runs too)
    return TrainResult(path, read_checkpoint(path), model, result)


def predict(checkpoint: str | os.PathLike, images: str | os.PathLike | Iterable[str | os.PathLike], *,
            device: str = "auto", batch_size: int = 32, num_workers: int | None = None) -> pd.DataFrame:
    """Classify images with a checkpoint written by :func:`train`.

    Parameters
    ----------
    checkpoint
        The checkpoint folder (or its ``model.json``).
    images
        A folder (searched recursively) or image paths.

    Returns
    -------
    pandas.DataFrame
        ``path`` (relative to the folder, or as given), ``prediction`` (class
        name, empty when unreadable), ``confidence`` (softmax probability, NaN
        when unreadable), ``error``.
    """
    bb = load_backbone(str(checkpoint), device=device, layers=False)
    if bb.classes is None:
        raise InputError(f"not a shiftbench checkpoint: {checkpoint}")
    if isinstance(images, (str, os.PathLike)) and not Path(images).exists():  # a typo, not an unreadable image
        raise InputError(f"no such folder or image: {images}")
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        root, paths = Path(images), find_images(images)
        shown = paths
    else:
        shown = [str(images)] if isinstance(images, (str, os.PathLike)) else [str(p) for p in images]
        absolute = [os.path.abspath(p) for p in shown]
        root = Path(os.path.commonpath([os.path.dirname(a) for a in absolute])) if absolute else Path(".")
        paths = [os.path.relpath(a, root) for a in absolute]
    logits = np.full((len(paths), len(bb.classes)), np.nan, np.float32)
    errors = [""] * len(paths)
    for batch in embed_files(root, paths, bb, batch_size=batch_size, num_workers=num_workers):
        for j, i in enumerate(batch.index):
            errors[i] = batch.error[j]
            if batch.logits is not None:
                logits[i] = batch.logits[j]
    pred, conf = classify(logits, bb.classes)
    return pd.DataFrame({"path": shown, "prediction": pred, "confidence": conf, "error": errors})


def classify(logits: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) logits -> (N,) predicted class names ('' for NaN rows) and softmax confidences (NaN)."""
    ok = np.isfinite(logits).all(axis=1)
    z = np.where(ok[:, None], logits, 0.0).astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    pred = np.where(ok, np.asarray(classes, dtype=object)[p.argmax(axis=1)], "")
    conf = np.where(ok, p.max(axis=1), np.nan)
    return pred.astype(str), conf
