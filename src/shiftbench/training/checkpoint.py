"""The checkpoint folder: ``model.safetensors`` (the classifier's state dict) and ``model.json``.

Nothing in it needs unpickling. ``model.json`` is written last and records the
sha256 of ``model.safetensors``, so a reader (``load_backbone``) can tell a
complete checkpoint from one being rewritten. Each file is replaced atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..embedding.backbones import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, checkpoint_meta, file_digest
from ..fsutil import write_json, write_with
from ..images import InputError


def save_checkpoint(out: str | os.PathLike, model: nn.Module, meta: dict) -> Path:
    """Write ``model``'s state dict and ``meta`` (plus format, version, weights digest) to ``out``.

    Returns
    -------
    Path
        The checkpoint folder, resolved.
    """
    from safetensors.torch import save

    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state)  # bytes, written into the temporary file that keeps normal permissions
    write_with(out / "model.safetensors", lambda tmp: Path(tmp).write_bytes(data))
    head = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    write_json(out / "model.json", {**head, **meta, "weights_sha256": file_digest(out / "model.safetensors")})
    return out


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``model.json`` of the checkpoint at ``path`` (its folder or the file itself)."""
    found = checkpoint_meta(path)
    if found is None:
        raise InputError(f"not a shiftbench checkpoint: {path}")
    return found[1]
