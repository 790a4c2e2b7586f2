"""A scan's explain step on its table: the flagged rows attributed to causes (resumably), alike ones
agreeing, then clustered and described by cards.

Works on the reference bank (:class:`shiftbench.bank.Bank`: its ``meta``, ``table``, ``rows`` and
``scorer``) without importing it: the bank sits above this layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..embedding.store import TABLE_COLUMNS
from ..scoring.drift import robust_scale
from . import memo
from .agreement import agree_with_neighbours
from .attribution import CAUSES, attribute
from .clusters import cluster_cards, cluster_flagged
from .ranges import light_field_range


def _train_stats(train: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """Median and robust spread of every numeric measurement of the readable training images."""
    ok = train[train["status"] == "ok"]
    cols = [c for c in ok.columns if c not in TABLE_COLUMNS and pd.api.types.is_numeric_dtype(ok[c])]
    return ({c: float(np.nanmedian(ok[c])) for c in cols},
            {c: robust_scale(ok[c].dropna().to_numpy(float)) for c in cols})


def train_sizes(train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(heights, widths) of the readable training images."""
    ok = train[train["status"] == "ok"]
    return ok["height"].to_numpy(float), ok["width"].to_numpy(float)


def explain_flagged(table: pd.DataFrame, feats: np.ndarray, root: Path, bank, bb, cache: Path,
                    progress) -> tuple[list[dict], int]:
    """Fill cause, confidence, shares, cluster and mode of the flagged rows in place; return the cluster cards
    and how many attributions were kept from an earlier run.

    Each image's attribution is kept in ``cache`` as it is made (:mod:`shiftbench.explain.memo`):
    an interrupted scan resumes, and a rescan with the same bank reuses it.
    """
    flagged = np.where(table["is_ood"].to_numpy())[0]
    rows = table.iloc[flagged]
    new_size = rows["new_pixel_size"].to_numpy()
    log, base = cache / "explain.jsonl", memo.bank_key(bank.meta, bank.table["sha"].tolist())
    keys = [f"{sha}:{base}" for sha in rows["sha"]]
    kept = memo.read_rows(log, set(keys))
    todo = [i for i, k in enumerate(keys) if k not in kept]
    made = attribute(rows.iloc[todo], feats[flagged[todo]], root, bank.meta["root"],
                     bank.table["path"].to_numpy()[bank.rows], bank.scorer, bb, bank.meta["conditions"],
                     new_size=new_size[todo], light_range=light_field_range(bank.table), progress=progress,
                     on_block=lambda pos, got: memo.append_rows(log, [keys[todo[i]] for i in pos], got))
    kept.update(zip([keys[i] for i in todo], made.to_dict("records")))
    got = pd.DataFrame([kept[k] for k in keys], index=rows.index)
    memo.keep_only(log, dict(zip(keys, got.to_dict("records"))))
    known = (got["cause"] != "unknown").to_numpy()
    # (rows whose images could not be read have no shares: all of them, when the training set moved)
    shares = got.reindex(columns=[f"share_{c}" for c in CAUSES]).loc[known].to_numpy(float)
    got["cause_own"] = got["cause"]
    got["cause_agreement"] = np.nan
    conditions = feats[flagged][known, -len(bank.meta["conditions"]["columns"]):]  # the appended view
    got.loc[known, "cause"], got.loc[known, "cause_agreement"] = agree_with_neighbours(
        got.loc[known, "cause"].to_numpy(), conditions, shares, groups=new_size[known])
    taken = (got["cause"] != got["cause_own"]).to_numpy()  # the own call's confidence does not apply
    got.loc[taken, "confidence"] = got.loc[taken, "cause_agreement"]
    for col in got.columns:
        if col not in table.columns:
            table[col] = np.nan if pd.api.types.is_numeric_dtype(got[col]) else ""
        table.loc[table.index[flagged], col] = got[col].to_numpy()
    center, scale = _train_stats(bank.table)
    center["height"], center["width"] = map(float, map(np.median, train_sizes(bank.table)))  # for the cards' words
    scale["rotation_deg"] = 1.0
    cluster, mode = cluster_flagged(table.iloc[flagged], center, scale)
    table.loc[table.index[flagged], "cluster"] = cluster
    table.loc[table.index[flagged], "mode"] = mode
    table[["cluster", "mode"]] = table[["cluster", "mode"]].astype(np.int64)
    d = bank.scorer.views[0][1]
    cards = cluster_cards(table.iloc[flagged], feats[flagged, :d], center)
    if any("error_rate" in c for c in cards):  # with labels: most harmful cluster first
        cards.sort(key=lambda c: -c.get("error_rate", 0.0) * c["size"])
        new_id = {c["cluster"]: i for i, c in enumerate(cards)}
        table["cluster"] = table["cluster"].map(lambda c: new_id.get(c, -1)).astype(np.int64)
        for i, c in enumerate(cards):
            c["cluster"], c["harm"] = i, c.get("error_rate", 0.0) * c["size"]
    return cards, len(keys) - len(todo)
