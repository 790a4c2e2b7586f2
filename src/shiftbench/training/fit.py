"""The training loop: :func:`fit` a classifier on in-memory images, keep its best epoch.

Why it is fast on a CPU: with ``trainable`` ``head`` or ``last`` and no
albumentations pipeline, the frozen front of the network computes the same thing
every epoch, so it runs once per image (and once per flipped image) and its
output at the cut (the first trainable module) is cached. Each epoch then runs
only the trainable tail: a module hook swaps the cached activations in for what
the front computed on a tiny dummy image (or, when the cut is the classifier
itself, calls it directly). Either is checked against the full forward pass
before it is trusted. With an ``augment`` pipeline (or ``all``) the
whole network runs on every batch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..embedding.backbones import Preprocess, resolve_device
from .augmentation import describe_augmentation
from .data import Inputs, LabeledImages
from .model import plan_trainable, set_modes, set_trainable
from .resume import RunState, seed_epoch

DEFAULT_LR = {"head": 3e-3, "last": 1e-3, "all": 3e-4}
CACHE_LIMIT_BYTES = 4 << 30  # above this the cached activations would crowd memory: run end to end


@dataclass
class FitResult:
    """What :func:`fit` measured. Validation figures are those of the best epoch (None without
    validation images); ``history`` has one dict per epoch run."""

    history: list[dict]
    best_epoch: int
    val_accuracy: float | None
    val_loss: float | None
    per_class_accuracy: dict[str, float | None] | None
    cached: bool
    seconds: float
    trained_from: str | None = None  # the first trainable module (None: every layer)
    run_state: RunState | None = None  # saved after each epoch (fit's resume_dir): remove() it when done

    def metrics(self) -> dict:
        """The ``metrics`` block of ``model.json``."""
        return {"val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
                "per_class_accuracy": copy.deepcopy(self.per_class_accuracy), "epochs": len(self.history),
                "best_epoch": self.best_epoch, "cached_features": self.cached, "trained_from": self.trained_from,
                "seconds": round(self.seconds, 3), "history": copy.deepcopy(self.history)}


class _Stop(Exception):
    """Raised by the capture hook: nothing after the cut needs computing."""


class _Cut:
    """Capture the input of the cut module, or replace it by cached activations."""

    def __init__(self, model: nn.Module, cut: str):
        self.model, self.mode, self.value, self.dummy = model, None, None, None
        self.module = dict(model.named_modules())[cut]
        self.handle = self.module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        if self.mode == "capture":
            self.value = args[0].detach()
            raise _Stop
        if self.mode == "replay":
            return (self.value, *args[1:])
        return None

    def capture(self, x: torch.Tensor) -> torch.Tensor:
        self.mode = "capture"
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            self.mode = None
        return self.value

    def replay(self, acts: torch.Tensor) -> torch.Tensor:
        """The model's output for cut-module input ``acts``; ``self.dummy`` None: the cut's own."""
        if self.dummy is None:
            return self.module(acts)
        self.mode, self.value = "replay", acts
        try:
            return self.model(self.dummy)
        finally:
            self.mode, self.value = None, None

    def choose_dummy(self, x: torch.Tensor) -> bool:
        """Find the cheapest replay that gives the full pass's output for ``x``; False if none.

        In float32 (no autocast): this checks the mechanism, not the precision.
        """
        full = self.model(x).float()
        acts = self.capture(x)
        side = x.shape[-1]
        dummies = [torch.zeros(1, 3, s, s, device=x.device) for s in sorted({min(side, 32), side})]
        for self.dummy in [None, *dummies]:  # direct call, then a tiny dummy, then a full-size one
            try:
                part = self.replay(acts).float()
            except RuntimeError:  # the front cannot take that size, or the cut is not the last module
                continue
            if part.shape == full.shape and torch.allclose(part, full, rtol=1e-3,
                                                           atol=1e-3 * (1 + float(full.abs().max()))):
                return True
        return False


def _autocast(device: torch.device, amp: bool):
    """(context, GradScaler or None): bf16 where the GPU has it, fp16 with loss scaling otherwise."""
    if not amp or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def fit(model: nn.Module, train: LabeledImages, val: LabeledImages | None, *, preprocess: Preprocess,
        trainable: str = "last", augment=None, flip: bool = True, epochs: int = 15, lr: float | None = None,
        batch_size: int = 32, weight_decay: float = 1e-2, patience: int | None = 5,
        monitor: str = "accuracy", seed: int = 0, device: str = "auto", amp: bool = True,
        draws: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None,
        log: Callable[[str], None] | None = None, resume_dir: str | Path | None = None) -> FitResult:
    """Train ``model`` in place; on return it holds the best epoch's weights, in eval mode.

    Parameters
    ----------
    model
        A classifier whose last ``nn.Linear`` has ``len(train.classes)`` outputs
        (:func:`~shiftbench.training.model.build_classifier`).
    train, val
        Images already resized to ``preprocess.size``; ``val`` None or empty trains
        all ``epochs`` without early stopping.
    trainable
        ``head``, ``last`` or ``all`` (see :mod:`shiftbench.training.model`).
    augment
        Optional albumentations transform applied to each uint8 RGB training image
        (after the random flip) every time it is drawn; seeded per epoch (``seed``).
    flip
        Random horizontal flips of training images.
    lr
        AdamW learning rate, cosine-decayed per step; default by ``trainable``: :data:`DEFAULT_LR`.
    patience, monitor
        Stop after ``patience`` epochs without a better validation ``accuracy``
        (ties broken by lower loss) or ``loss``; None or 0: never stop early.
    seed
        With the epoch number, seeds each epoch's dropout, batch order, flips and ``augment``
        (so that a resumed run draws what an unbroken one would).
    device, amp
        ``auto`` uses CUDA when present; ``amp`` runs CUDA forward passes in
        bf16 (fp16 with loss scaling where bf16 is missing). Ignored on CPU.
    draws
        Shape ``(len(train),)``: how many times each image is drawn per epoch (each
        draw flipped and augmented anew); default once.
    progress, log
        ``progress(done, total)`` in images processed; ``log(line)`` once per epoch.
    resume_dir
        Save the run's state here after every epoch, and go on from a state saved by the same run
        (same images, starting weights and settings) that was interrupted (:mod:`.resume`); the
        caller calls ``FitResult.run_state.remove()`` once the checkpoint is written.
    """
    t0 = time.perf_counter()
    if monitor not in ("accuracy", "loss"):
        raise ValueError(f"monitor must be 'accuracy' or 'loss', got {monitor!r}")
    dev = resolve_device(device)
    val = val if val is not None and len(val) else None
    pool = np.arange(len(train)) if draws is None else np.repeat(np.arange(len(train)), draws)
    model.to(dev).to(memory_format=torch.channels_last)
    cut, names = plan_trainable(model, trainable, preprocess.size)
    set_trainable(model, trainable, names)
    run = None if resume_dir is None else RunState(resume_dir, model, dict(
        shiftbench=__version__, torch=torch.__version__, train=train.digest(),
        val=val.digest() if val is not None else None, pool=pool.tolist(), preprocess=preprocess.to_dict(),
        trainable=trainable, augment=describe_augmentation(augment), flip=flip, epochs=epochs,
        lr=lr or DEFAULT_LR[trainable], batch_size=batch_size, weight_decay=weight_decay, patience=patience,
        monitor=monitor, seed=seed, device=dev.type, amp=amp), log)
    if log:  # what `last` means differs between architectures: say it
        log(f"trainable={trainable}: {'every layer' if cut is None else f'from module {cut!r} on'} "
            f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} weights)")
    autocast, scaler = _autocast(dev, amp)
    inputs = Inputs(preprocess, dev)
    n_val = len(val) if val is not None else 0
    per_epoch = len(pool) + n_val
    caching = cut is not None and augment is None
    tick = _Ticker(progress, epochs * per_epoch + (len(train) * (1 + flip) + n_val if caching else 0))
    tail = _cached_tail(model, cut, inputs, train, val, flip, batch_size, autocast, tick) if caching else None
    if tail is None:  # no cache after all: count training only
        tick.total, tick.done = epochs * per_epoch, 0
    forward = tail or (lambda idx, flips: model(inputs.augmented(train.pixels[idx], flips, augment)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=lr or DEFAULT_LR[trainable], weight_decay=weight_decay)
    steps = epochs * math.ceil(len(pool) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    best = _Best(model, monitor)
    start = _resume(run, model, opt, sched, scaler, best) if run else 1
    if start > 1:
        tick((start - 1) * per_epoch)
    for epoch in range(start, epochs + 1):
        if patience and val is not None and best.since >= patience:
            break  # (checked first: a resumed run may have stopped here already)
        te = time.perf_counter()
        set_modes(model, trainable, names)
        rng = seed_epoch(seed, epoch, augment)  # per epoch: a resumed run draws what an unbroken one would
        order = rng.permutation(len(pool))  # positions in pool: each draw of an image flips on its own
        flips = rng.random(len(pool)) < 0.5 if flip else np.zeros(len(pool), bool)
        chunks = [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]
        batches = [(pool[c], flips[c]) for c in chunks]
        if trainable == "all":  # batch norm cannot train on one image; reshuffled next epoch anyway
            batches = [b for b in batches if len(b[0]) > 1] or batches
        row = {"epoch": epoch, **_train_epoch(forward, opt, sched, scaler, autocast, batches,
                                              torch.from_numpy(train.labels).to(dev), tick)}
        if val is not None:
            row.update(_evaluate(model, tail, inputs, val, batch_size, autocast))
            tick(len(val))
        row["seconds"] = round(time.perf_counter() - te, 3)
        improved = best.update(row)
        if run:  # before the epoch's line: an epoch reported is an epoch kept
            run.save({"epoch": epoch, "model": run.subset(model.state_dict()), "opt": opt.state_dict(),
                      "sched": sched.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                      "best": best.to_state(run.subset)})
        if log:
            log(_epoch_line(row, epochs, improved))
    best.restore()
    tick.finish()
    per_class = None if val is None else \
        dict(zip(val.classes, _evaluate(model, tail, inputs, val, batch_size, autocast)["per_class"]))
    final = best.history[best.epoch - 1]
    return FitResult(best.history, best.epoch, final.get("val_accuracy"), final.get("val_loss"), per_class,
                     tail is not None, time.perf_counter() - t0, cut, run)


def _resume(run: RunState, model: nn.Module, opt, sched, scaler, best: "_Best") -> int:
    """Load what an interrupted run of the same key saved into the model, optimizer, schedule, scaler
    and early-stopping bookkeeping; return the first epoch left to train (1: nothing saved)."""
    saved = run.restore()
    if saved is None:
        return 1
    model.load_state_dict(saved["model"], strict=False)  # the frozen rest is the starting weights
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    if scaler and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    best.from_state(saved["best"])
    run.say(f"resuming after epoch {saved['epoch']} (state saved in {run.path})")
    return int(saved["epoch"]) + 1


def _train_epoch(forward, opt, sched, scaler, autocast, batches: list[tuple[np.ndarray, np.ndarray]],
                 y: torch.Tensor, tick) -> dict:
    """One pass over ``batches`` (image indices, their flips): mean training loss and accuracy, learning
    rate at the end."""
    loss_sum = correct = seen = 0.0
    for idx, flips in batches:
        with autocast():
            out = forward(idx, flips)
            loss = F.cross_entropy(out.float(), y[idx])
        opt.zero_grad(set_to_none=True)
        if scaler:  # fp16: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        loss_sum += float(loss.detach()) * len(idx)
        correct += float((out.argmax(1) == y[idx]).sum())
        seen += len(idx)
        tick(len(idx))
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": opt.param_groups[0]["lr"]}


class _Best:
    """Early-stopping bookkeeping: the best epoch so far and a copy of its weights."""

    def __init__(self, model: nn.Module, monitor: str):
        self.model, self.monitor = model, monitor
        self.score, self.state, self.epoch, self.since, self.history = None, None, 0, 0, []

    def update(self, row: dict) -> bool:
        """Record an epoch; True when it is the best so far (never without validation)."""
        self.history.append({k: v for k, v in row.items() if k != "per_class"})
        if "val_loss" not in row:
            self.epoch = row["epoch"]  # nothing to choose by: the last epoch
            return False
        loss = row["val_loss"] if math.isfinite(row["val_loss"]) else math.inf  # a diverged epoch is the worst
        score = (-loss,) if self.monitor == "loss" else (row["val_accuracy"], -loss)
        if self.score is not None and score <= self.score:
            self.since += 1
            return False
        self.score, self.epoch, self.since = score, row["epoch"], 0
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return True

    def to_state(self, subset=dict) -> dict:
        """Plain values and tensors (what ``torch.load(weights_only=True)`` reads), the best weights
        through ``subset``."""
        history = json.loads(json.dumps(self.history, default=float))  # numpy scalars -> floats
        return {"score": [float(v) for v in self.score] if self.score is not None else None, "epoch": self.epoch,
                "since": self.since, "history": history, "state": subset(self.state or {})}

    def from_state(self, st: dict) -> None:
        self.score = tuple(st["score"]) if st["score"] is not None else None
        self.epoch, self.since, self.history = int(st["epoch"]), int(st["since"]), list(st["history"])
        self.state = dict(st["state"]) or None

    def restore(self) -> None:
        """Load the best epoch's weights; eval mode."""
        if self.state is not None:
            self.model.load_state_dict(self.state, strict=False)  # (restored from a run state: trained part only)
        self.model.eval()


class _Ticker:
    """Counts processed images for the ``progress(done, total)`` callback."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(min(self.done, self.total), self.total)

    def finish(self) -> None:
        if self.progress:
            self.progress(self.total, self.total)


def _epoch_line(row: dict, epochs: int, best: bool) -> str:
    line = (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.3f}")
    if "val_loss" in row:
        line += f"  |  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}" + ("  *" if best else "")
    return line + f"  ({row['seconds']:.1f} s)"


@torch.no_grad()
def _evaluate(model, tail, inputs: Inputs, val: LabeledImages, batch_size: int, autocast) -> dict:
    """Validation loss, accuracy and per-class accuracy (None for a class with no image)."""
    model.eval()
    losses, preds = [], []
    y = torch.from_numpy(val.labels).to(inputs.device)
    for lo in range(0, len(val), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(val)))
        with autocast():
            out = tail(idx, None, val=True) if tail else model(inputs(val.pixels[idx]))
        losses.append(F.cross_entropy(out.float(), y[idx], reduction="sum"))
        preds.append(out.argmax(1))
    pred = torch.cat(preds)
    per_class = [float((pred[y == c] == c).float().mean()) if bool((y == c).any()) else None
                 for c in range(len(val.classes))]
    return {"val_loss": float(sum(losses)) / len(val), "val_accuracy": float((pred == y).float().mean()),
            "per_class": per_class}


def _cached_tail(model, cut: str, inputs: Inputs, train: LabeledImages, val: LabeledImages | None,
                 flip: bool, batch_size: int, autocast, tick) -> Callable | None:
    """A function running only the trainable tail on cached activations, or None when
    caching does not fit in memory or does not reproduce the full forward pass."""
    hook = _Cut(model, cut)
    model.eval()
    with torch.no_grad():  # not inference_mode: the cached tensors feed autograd later
        probe = hook.capture(inputs(train.pixels[:1]))
        n_cached = len(train) * (1 + flip) + (len(val) if val is not None else 0)
        if probe.numel() * 4 * n_cached > CACHE_LIMIT_BYTES or not hook.choose_dummy(inputs(train.pixels[:4])):
            hook.handle.remove()
            return None

        def run(pixels):
            parts = []
            for lo in range(0, len(pixels), batch_size):
                with autocast():
                    parts.append(hook.capture(inputs(pixels[lo:lo + batch_size])).float())
                tick(len(parts[-1]))
            return torch.cat(parts)
        acts = [run(train.pixels)] + ([run(train.pixels[:, :, ::-1])] if flip else [])
        acts_val = run(val.pixels) if val is not None else None
        stacked = torch.stack(acts)
        del acts

    def tail(idx, flips, val: bool = False):
        if val:
            return hook.replay(acts_val[torch.as_tensor(idx, device=acts_val.device)])
        f = torch.as_tensor(flips.astype(np.int64) if flips is not None else np.zeros(len(idx), np.int64))
        return hook.replay(stacked[f.to(stacked.device), torch.as_tensor(idx, device=stacked.device)])
    return tail

