"""Resume an interrupted training run where it stopped.

After every epoch :func:`~shiftbench.training.fit.fit` saves what the next epoch needs (the weights it
trains, optimizer, learning-rate schedule, loss scaler, the best epoch so far and the history) to one file
named by a digest of everything that decides the run: the images and labels, the starting weights
and the settings. Running the same command again finds that file and goes on from the next epoch;
any change to the data or the settings gives another name, so a stale state is never mixed in.
Each epoch's randomness (order, flips, augmentation, dropout) is seeded from ``(seed, epoch)``
(:func:`seed_epoch`), so a resumed run ends with the same weights as one that never stopped.

The file is written atomically and read with ``torch.load(weights_only=True)``: tensors and plain
values only, nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fsutil import write_with


class RunState:
    """The saved state of one training run (``fit``'s ``resume_dir``): :meth:`restore` at the start,
    :meth:`save` after each epoch, :meth:`remove` once the checkpoint is written.

    Only what training changes is saved (trainable weights, every buffer, optimizer, schedule, loss
    scaler, the best epoch's trainable weights): a frozen body is the starting weights, which the
    key pins. Saving is best effort: a full or read-only disk costs the ability to resume, with one
    warning, never the run.
    """

    def __init__(self, folder: str | Path, model: nn.Module, settings: dict, log=None):
        self.key = run_key(model, settings)
        self.path = Path(folder) / f".resume-{self.key}.pt"
        self.changing = {n for n, p in model.named_parameters() if p.requires_grad} | \
            {n for n, _ in model.named_buffers()}
        self.log, self.broken = log, False

    def subset(self, state: dict) -> dict:
        return {k: v for k, v in state.items() if k in self.changing}

    def restore(self) -> dict | None:
        """The state an interrupted run of this key saved, or None (said when a file was there but unreadable)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file costs the epochs it held, never the run
            self.say(f"cannot read the saved state {self.path} ({type(e).__name__}); starting from epoch 1")
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        if self.broken:
            return
        try:
            write_with(self.path, lambda tmp: torch.save({"key": self.key, **state}, tmp))
        except Exception as e:  # noqa: BLE001 (torch reports a full disk as RuntimeError)
            self.broken = True
            self.say(f"warning: cannot save the training state to {self.path} ({type(e).__name__}: {e}); "
                      f"training goes on, but an interruption now would start it again")

    def remove(self, others: bool = False) -> None:
        """Delete the state (``others``: also other runs' in the folder: the run's own --out)."""
        for p in (self.path.parent.glob(".resume-*.pt") if others else [self.path]):
            p.unlink(missing_ok=True)

    def say(self, line: str) -> None:
        if self.log:
            self.log(line)


def run_key(model: nn.Module, settings: dict) -> str:
    """Digest of ``settings`` (JSON-able) and of ``model``'s starting weights."""
    h = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=12)
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def seed_epoch(seed: int, epoch: int, augment=None) -> np.random.Generator:
    """Seed torch (dropout) and ``augment`` for ``epoch``; return the generator of its order and flips."""
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(s)
    if augment is not None and hasattr(augment, "set_random_seed"):
        augment.set_random_seed(s)
    return np.random.default_rng([seed, epoch])
