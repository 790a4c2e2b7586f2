"""Resume an interrupted training run where it stopped.

After every epoch :func:`~shiftbench.training.fit.fit` saves what the next epoch needs (weights,
optimizer, learning-rate schedule, loss scaler, the best epoch so far and the history) to one file
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


def run_key(model: nn.Module, settings: dict) -> str:
    """Digest of ``settings`` (JSON-able) and of ``model``'s starting weights."""
    h = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=12)
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_path(folder: str | Path, key: str) -> Path:
    return Path(folder) / f".resume-{key}.pt"


def save_state(path: Path, state: dict) -> None:
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path, key: str) -> dict | None:
    """The saved state of the run ``key``; None when there is none (or it cannot be read: start again)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged or foreign file costs the epochs it held, never the run
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def seed_epoch(seed: int, epoch: int, augment=None) -> np.random.Generator:
    """Seed torch (dropout) and ``augment`` for ``epoch``; return the generator of its order and flips."""
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    torch.manual_seed(s)
    if augment is not None and hasattr(augment, "set_random_seed"):
        augment.set_random_seed(s)
    return np.random.default_rng([seed, epoch])
