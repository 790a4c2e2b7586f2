"""Two-sample drift tests of condition measurements: production batch vs training bank.

For each measurement: the Kolmogorov-Smirnov statistic and p-value, the
Wasserstein distance in units of the training spread, the shift of the median
in the same units, and a Benjamini-Hochberg q-value across all measurements
tested (many properties are tested at once; q controls the share of false
discoveries among those called drifted).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def robust_scale(x: np.ndarray, floor: float = 1e-12) -> float:
    """Spread of ``x``: IQR / 1.349 (= sigma for a Gaussian), or where the IQR is 0 (more than half the
    values equal) the standard deviation; at least ``floor``; 1.0 for an empty ``x``."""
    if len(x) == 0:
        return 1.0
    q75, q25 = np.percentile(x, [75, 25])
    s = (q75 - q25) / 1.349
    return float(max(s if s > 1e-12 else np.std(x), floor))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values of p-values (N,), same order."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def drift_table(train: pd.DataFrame, prod: pd.DataFrame, columns: list[str] | None = None,
                alpha: float = 0.01) -> pd.DataFrame:
    """Test every measurement column for a change between two tables.

    Parameters
    ----------
    train, prod : DataFrame
        One row per image; measurement columns numeric (NaN rows are dropped per column).
    columns : list of str, optional
        Columns to test; default: numeric columns present in both.
    alpha : float
        q-value under which ``drifted`` is true.

    Returns
    -------
    DataFrame, one row per measurement, sorted by ``|effect|`` descending:
    ``measure, train_median, prod_median, effect`` (median shift / training
    spread), ``wasserstein`` (in training-spread units), ``ks``, ``p_value``,
    ``q_value``, ``drifted``.
    """
    if columns is None:
        columns = [c for c in train.columns if c in prod.columns
                   and pd.api.types.is_numeric_dtype(train[c]) and pd.api.types.is_numeric_dtype(prod[c])]
    rows = []
    for c in columns:
        a = train[c].dropna().to_numpy(float)
        b = prod[c].dropna().to_numpy(float)
        if len(a) < 2 or len(b) < 2:
            continue
        scale = robust_scale(a)
        if scale <= 1e-12:  # constant in training: use the spread of both samples together
            scale = robust_scale(np.concatenate([a, b]))
        ks = stats.ks_2samp(a, b)
        rows.append({"measure": c, "train_median": float(np.median(a)), "prod_median": float(np.median(b)),
                     "effect": float((np.median(b) - np.median(a)) / scale),
                     "wasserstein": float(stats.wasserstein_distance(a, b) / scale),
                     "ks": float(ks.statistic), "p_value": float(ks.pvalue)})
    table = pd.DataFrame(rows, columns=["measure", "train_median", "prod_median", "effect", "wasserstein",
                                        "ks", "p_value"])
    table["q_value"] = benjamini_hochberg(table["p_value"].to_numpy()) if len(table) else []
    table["drifted"] = table["q_value"] < alpha
    return table.reindex(table["effect"].abs().sort_values(ascending=False).index).reset_index(drop=True)
