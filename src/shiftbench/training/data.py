"""Labelled training images in memory, a stratified split, content digests for lineage, and the
batches the model sees (:class:`Inputs`: normalised, flipped and augmented on the way).

Images are decoded once, resized to the model input (``Preprocess.size``) and
kept as uint8: a few hundred images at 224 px are ~100 MB, and decoding once
instead of every epoch is what makes CPU training take a minute, not ten.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..embedding.backbones import Preprocess
from ..embedding.extract import resize_for_model
from ..images import DEFAULT_MAX_PIXELS, ImageError, InputError, decode_image
from ..images import find_images, labels_from_csv, labels_from_folders


@dataclass
class LabeledImages:
    """Images resized for the model, with labels and where they came from.

    ``pixels`` is (N, S, S, 3) uint8 RGB; ``labels`` (N,) int64 indexes
    ``classes``; ``paths`` are relative to ``root``; ``sha`` the blake2b-128
    of each file's bytes (as in the bank), used for lineage.
    """

    pixels: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]
    sha: list[str]
    root: str = ""
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"} of unusable files

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> LabeledImages:
        """The images at positions ``idx`` (same classes, no skipped list)."""
        idx = np.asarray(idx, dtype=np.int64)
        return LabeledImages(self.pixels[idx], self.labels[idx], self.classes,
                             [self.paths[i] for i in idx], [self.sha[i] for i in idx], self.root)

    def concat(self, other: LabeledImages) -> LabeledImages:
        """These images followed by ``other``'s (e.g. extra data for fine-tuning).

        ``other``'s labels are mapped onto this set's class list by name; classes it
        adds are appended. Paths of ``other`` keep their own root unless it is the same.
        """
        classes = list(self.classes) + [c for c in other.classes if c not in self.classes]
        remap = np.array([classes.index(c) for c in other.classes], dtype=np.int64)
        paths = other.paths if other.root == self.root else \
            [os.path.join(other.root, p).replace(os.sep, "/") for p in other.paths]
        return LabeledImages(np.concatenate([self.pixels, other.pixels]),
                             np.concatenate([self.labels, remap[other.labels]]), classes,
                             self.paths + paths, self.sha + other.sha, self.root,
                             self.skipped + other.skipped)

    def digest(self) -> str:
        """blake2b of the sorted ``path, content sha, label`` lines: changes with any file."""
        lines = sorted(f"{p}\t{s}\t{self.classes[y]}\n" for p, s, y in zip(self.paths, self.sha, self.labels))
        return hashlib.blake2b("".join(lines).encode(), digest_size=16).hexdigest()


def _load_one(path: Path, pre: Preprocess, max_pixels: int) -> tuple[np.ndarray | None, str, str]:
    """(resized pixels or None, content sha, error)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, "", f"cannot read file: {e.strerror}"
    sha = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        return resize_for_model(decode_image(data, max_pixels), pre), sha, ""
    except ImageError as e:
        return None, sha, str(e)
    except Exception as e:  # a decoder bug must cost one image, not the run
        return None, sha, f"decoder failure: {type(e).__name__}: {e}"


def load_labeled(root: str | os.PathLike, pre: Preprocess, *, labels: str | os.PathLike | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, num_workers: int | None = None,
                 progress=None, min_classes: int = 2) -> LabeledImages:
    """Find, label, decode and resize the images under ``root``.

    Labels come from ``labels`` (CSV with ``path,label``) or from class
    sub-folders (``root/<class>/...``). Unreadable and unlabelled files are
    listed in ``skipped`` with the reason and left out. ``min_classes``: 2 to
    train a classifier; 1 for new images added to one (a batch may show one kind).

    Raises
    ------
    InputError
        No images, no labels, or fewer than ``min_classes`` classes with readable images.
    """
    root = Path(root).resolve()
    paths = find_images(root)
    if not paths:
        raise InputError(f"no images found in {root}")
    names = labels_from_csv(labels, paths) if labels else labels_from_folders(paths)
    if names is None:
        loose = [p for p in paths if "/" not in p]
        raise InputError(f"{root}: put the images in one sub-folder per class, or give --labels CSV "
                         f"({len(loose)} image{'s' if len(loose) > 1 else ''} directly in the folder, e.g. {loose[0]})")
    workers = max(1, num_workers) if num_workers is not None else min(8, os.cpu_count() or 2)  # 0: one thread
    pixels, sha, keep, skipped = [], [], [], []
    # Threads, not processes: OpenCV decodes and resizes with the GIL released.
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda p: _load_one(root / p, pre, max_pixels), paths)
        for i, (img, digest, error) in enumerate(jobs):
            if progress:
                progress(i + 1, len(paths))
            if not names[i]:
                skipped.append({"path": paths[i], "error": "no label"})
            elif img is None:
                skipped.append({"path": paths[i], "error": error})
            else:
                pixels.append(img)
                sha.append(digest)
                keep.append(i)
    classes = sorted({names[i] for i in keep})
    if len(classes) < min_classes:
        raise InputError(f"{root}: need readable labelled images of at least {min_classes} "
                         f"class{'es' if min_classes > 1 else ''}, found {classes or 'none'}")
    y = np.array([classes.index(names[i]) for i in keep], dtype=np.int64)
    return LabeledImages(np.stack(pixels), y, classes, [paths[i] for i in keep], sha, str(root), skipped)


def stratified_split(data: LabeledImages, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, validation positions), ``val_fraction`` of each class held out.

    Each image's side is decided by a seeded hash of its path, not by a shuffle:
    the same seed gives the same split, and adding images to a folder leaves the
    existing ones mostly where they were. Copies (the same bytes under two names)
    go to the side of the first of them, so that no image is both trained on and
    held out. A class keeps at least one training image, and has at least one
    validation image when it has two or more different ones.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = [], []
    for c in range(len(data.classes)):
        members = np.flatnonzero(data.labels == c)
        order = sorted(members, key=lambda i: hashlib.blake2b(
            f"{seed}\0{data.paths[i]}".encode(), digest_size=8).digest())
        n_val = 0 if val_fraction == 0 else min(len(order) - 1, max(1, round(val_fraction * len(order))))
        held: dict[str, bool] = {}
        for rank, i in enumerate(order):
            held.setdefault(data.sha[i], rank < n_val)
        side = [held[data.sha[i]] for i in order]
        if all(side):  # every copy of one image: nothing would be left to train on
            side = [False] * len(order)
        val += [i for i, v in zip(order, side) if v]
        train += [i for i, v in zip(order, side) if not v]
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


class Inputs:
    """uint8 (N, S, S, 3) images -> normalised (N, 3, S, S) on the device, as extract.py does."""

    def __init__(self, pre: Preprocess, device: torch.device):
        self.device, self.size = device, pre.size
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def augmented(self, pixels: np.ndarray, flips: np.ndarray, augment) -> torch.Tensor:
        """Flip where ``flips``, then apply the albumentations pipeline to each image."""
        out = pixels.copy()
        out[flips] = out[flips][:, :, ::-1]
        if augment is not None:
            imgs = [augment(image=img)["image"] for img in out]
            out = np.stack([img if img.shape[:2] == (self.size, self.size) else  # a cropping pipeline
                            cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
                            for img in imgs])
        return self(out)
