"""Batch images through a backbone with a DataLoader whose workers decode in parallel.

Workers read each file once: the bytes are hashed (content identity for the
bank), decoded, optionally measured at full resolution (``measure``), and resized
to the model's input. They ship uint8 pixels; normalisation happens in the main
process on the model's device, which keeps inter-process traffic 4x smaller.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..images.decode import DEFAULT_MAX_PIXELS, ImageError, decode_image
from .backbones import Backbone, Preprocess


def model_scale(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """(height, width) that :func:`resize_for_model` resizes an (h, w) image to, before
    it crops or pads to (S, S)."""
    s = pre.size
    if pre.resize == "squash":
        return s, s
    scale = s / (max(h, w) if pre.resize == "pad" else min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_for_model(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8 following ``pre.resize``.

    Downscaling uses area interpolation (anti-aliased), upscaling bilinear.
    """
    s = pre.size
    h, w = img.shape[:2]
    nh, nw = model_scale(h, w, pre)
    interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
    out = cv2.resize(img, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else img
    if pre.resize == "pad":
        fill = [round(255 * m) for m in pre.mean]
        top, left = (s - nh) // 2, (s - nw) // 2
        out = cv2.copyMakeBorder(out, top, s - nh - top, left, s - nw - left,
                                 cv2.BORDER_CONSTANT, value=fill)
    elif pre.resize == "crop":
        top, left = (nh - s) // 2, (nw - s) // 2
        out = out[top:top + s, left:left + s]
    return np.ascontiguousarray(out)


@dataclass
class EmbeddedBatch:
    """What one batch of files produced. Arrays are aligned with ``index``.

    ``features`` is (n, D) float32, a row of NaN for an unreadable file; ``logits``
    is (n, C) or None; ``measures`` a list of dicts (empty dicts when none).
    """

    index: np.ndarray
    sha: list[str]
    error: list[str]
    width: np.ndarray
    height: np.ndarray
    features: np.ndarray
    logits: np.ndarray | None
    measures: list[dict]


class _Files(Dataset):
    def __init__(self, root: Path, paths: list[str], pre: Preprocess, max_pixels: int,
                 measure: Callable[..., dict] | None):
        self.root, self.paths, self.pre = root, paths, pre
        self.max_pixels, self.measure = max_pixels, measure
        params = inspect.signature(measure).parameters if measure is not None else {}
        self.pass_resized = "resized" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        item = {"index": i, "sha": "", "error": "", "width": 0, "height": 0,
                "pixels": None, "measures": {}}
        try:
            data = (self.root / self.paths[i]).read_bytes()
        except OSError as e:
            item["error"] = f"cannot read file: {e.strerror}"
            return item
        item["sha"] = hashlib.blake2b(data, digest_size=16).hexdigest()
        try:
            img = decode_image(data, self.max_pixels)
        except ImageError as e:
            item["error"] = str(e)
            return item
        except Exception as e:  # a decoder bug must cost one image, not the run
            item["error"] = f"decoder failure: {type(e).__name__}: {e}"
            return item
        item["height"], item["width"] = img.shape[:2]
        pixels = resize_for_model(img, self.pre)
        if self.measure is not None:
            try:
                item["measures"] = self.measure(img, resized=pixels) if self.pass_resized else self.measure(img)
            except Exception as e:  # a failed measurement leaves NaN columns, not a crash
                item["measures"] = {"measure_error": f"{type(e).__name__}: {e}"}
        item["pixels"] = torch.from_numpy(pixels)
        return item


def _collate(items: list[dict]) -> dict:
    ok = [it["pixels"] for it in items if it["pixels"] is not None]
    return {
        "index": np.array([it["index"] for it in items], dtype=np.int64),
        "ok": np.array([it["pixels"] is not None for it in items]),
        "pixels": torch.stack(ok) if ok else None,
        **{k: [it[k] for it in items] for k in ("sha", "error", "width", "height", "measures")},
    }


def default_workers() -> int:
    """Decoding workers: one per two cores, at least one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def embed_files(root: str | os.PathLike, paths: list[str], backbone: Backbone, *,
                batch_size: int = 32, num_workers: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                measure: Callable[..., dict] | None = None) -> Iterator[EmbeddedBatch]:
    """Embed ``root/p`` for each ``p`` in ``paths``, yielding one result per batch.

    Parameters
    ----------
    root, paths
        Image folder and file paths relative to it.
    backbone
        From :func:`~shiftbench.embedding.load_backbone`.
    batch_size, num_workers
        DataLoader settings; ``num_workers=None`` picks :func:`default_workers`,
        0 decodes in the main process.
    measure
        Optional function of the full-resolution RGB image, run in the workers as
        ``measure(img, resized=pixels)`` where it takes ``resized`` (``pixels``: the
        (S, S, 3) model input, for a measurement that can reuse it), else ``measure(img)``;
        its dict is returned per image in ``EmbeddedBatch.measures``.

    Yields
    ------
    EmbeddedBatch
        In the order of ``paths``.
    """
    workers = default_workers() if num_workers is None else num_workers
    workers = min(workers, max(0, (len(paths) - 1) // batch_size))  # no idle workers
    loader = DataLoader(
        _Files(Path(root), list(paths), backbone.preprocess, max_pixels, measure),
        batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=backbone.device.type == "cuda", prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    # One OpenCV thread in the workers: the model owns the cores. It must be set in the
    # parent before the fork: calling setNumThreads in a child forked from a process
    # whose OpenCV thread pool is running deadlocks (opencv/opencv#5150).
    cv2_threads = cv2.getNumThreads()
    if workers:
        cv2.setNumThreads(1)
    try:
        yield from _run(loader, backbone)
    finally:
        cv2.setNumThreads(cv2_threads)


def _run(loader: DataLoader, backbone: Backbone) -> Iterator[EmbeddedBatch]:
    dev = backbone.device
    mean = torch.tensor(backbone.preprocess.mean, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.preprocess.std, device=dev).view(1, 3, 1, 1) * 255
    for batch in loader:
        n = len(batch["index"])
        feats = np.full((n, backbone.feature_dim), np.nan, dtype=np.float32)
        logits = None
        if batch["pixels"] is not None:
            x = batch["pixels"].to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            f, lg = backbone.embed(x)
            feats[batch["ok"]] = f.cpu().numpy()
            if lg is not None:
                logits = np.full((n, lg.shape[1]), np.nan, dtype=np.float32)
                logits[batch["ok"]] = lg.cpu().numpy()
        yield EmbeddedBatch(index=batch["index"], sha=batch["sha"], error=batch["error"],
                            width=np.array(batch["width"]), height=np.array(batch["height"]),
                            features=feats, logits=logits, measures=batch["measures"])


def embed_arrays(images: list[np.ndarray], backbone: Backbone, *, batch_size: int = 32) -> np.ndarray:
    """Embed in-memory RGB uint8 images (each (H, W, 3)) in the calling process: (N, D) float32.

    For images made on the fly (attribution's transformed copies), where a
    DataLoader's workers would cost more than they save.
    """
    dev = backbone.device
    mean = torch.tensor(backbone.preprocess.mean, device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.preprocess.std, device=dev).view(1, 3, 1, 1) * 255
    feats = np.empty((len(images), backbone.feature_dim), dtype=np.float32)
    for lo in range(0, len(images), batch_size):
        chunk = [resize_for_model(img, backbone.preprocess) for img in images[lo:lo + batch_size]]
        x = torch.from_numpy(np.stack(chunk)).to(dev).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        feats[lo:lo + len(chunk)] = backbone.embed(x)[0].cpu().numpy()
    return feats
