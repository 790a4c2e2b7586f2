"""The columns a scan gets from the deployed model and from production labels (:func:`shiftbench.scan`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..embedding.backbones import checkpoint_header, checkpoint_meta
from ..images import labels_from_csv
from .api import classify, predict


def add_model_columns(table: pd.DataFrame, root: Path, paths: list[str], model, labels, bb, logits,
                       device: str, batch_size: int, num_workers: int | None) -> None:
    """``prediction``/``model_confidence`` from ``model``, ``label``/``correct`` from ``labels`` (in place).

    When the bank's backbone is the model itself (the usual case: the bank lives in
    the deployed model's feature space), the logits of the embedding pass are used
    instead of a second pass over the images.
    """
    if model is not None:
        if logits is not None and is_backbone(model, bb):
            pred, conf = classify(logits, bb.classes)
        else:
            got = predict(model, [root / p for p in paths], device=device, batch_size=batch_size,
                          num_workers=num_workers)
            pred, conf = got["prediction"].to_numpy(), got["confidence"].to_numpy()
        table["prediction"], table["model_confidence"] = pred, conf
    if labels is not None:
        known = labels_from_csv(labels, paths)
        table["label"] = known
        if model is not None:
            has = (table["label"] != "") & (table["prediction"] != "")
            table["correct"] = np.where(has, (table["prediction"] == table["label"]).astype(float), np.nan)


def is_backbone(model, bb) -> bool:
    """Whether checkpoint ``model`` is backbone ``bb`` (same weights, classes and preprocessing)."""
    ck = checkpoint_meta(model)
    if ck is None or bb.classes != list(ck[1]["classes"]):
        return False
    return checkpoint_header(*ck) == (bb.weights_id, bb.preprocess)
