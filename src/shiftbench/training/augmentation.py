"""The augmentation a run trains with: read from a file (as ``collect`` writes it), checked, described."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..images import InputError


def load_augment(augment, size: int = 224) -> tuple[object | None, str | None]:
    """(pipeline, its file or None): an albumentations transform as given, or read from YAML/JSON.

    The pipeline is tried once on a dummy image of the model's input ``size``, so that bad
    parameters fail here and not after the images are loaded (a crop fits an image that size).
    """
    if augment is None:
        return None, None
    path = None
    if isinstance(augment, (str, os.PathLike)):
        path = Path(augment)
        if not path.is_file():
            raise InputError(f"--augment: no such file: {augment}")
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        fmt = "json" if path.suffix.lower() == ".json" else "yaml"
        try:
            augment = A.load(str(path), data_format=fmt)
        except Exception as e:  # yaml, key and type errors alike: the file is not a pipeline
            raise InputError(f"--augment {path}: not an albumentations {fmt} pipeline "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        augment(image=np.zeros((size, size, 3), np.uint8))
    except Exception as e:
        raise InputError(f"--augment {path or repr(augment)} fails on an image: {type(e).__name__}: {e}") from None
    return augment, str(path.resolve()) if path else None


def describe_augmentation(augment) -> dict | str | None:
    """The augmentation pipeline, as albumentations serialises it (else its repr)."""
    if augment is None:
        return None
    try:
        import albumentations as A
        return A.to_dict(augment)
    except Exception:  # not albumentations, or not serialisable: a readable trace is enough
        return repr(augment)
