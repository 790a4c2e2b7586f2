"""Detection benchmark on real steel images: false alarms and AUROC per shift family.

    python scripts/bench_detection.py [--bench /tmp/steel_bench] [--data ../shared/data] [--seed 0]

Builds the benchmark of ``scripts/steel_bench.py`` (unless it exists), runs
``shiftbench.index`` on its training half and ``shiftbench.scan`` on its
production folder with the default settings, scores the scan with
``../shared/eval/score.py``, and then re-scores the same features with the
nearest-neighbour baselines of the literature (penultimate layer, k = 1 and
k = 50) and the fused score at other k, to show how the default was chosen. Needs scikit-learn (``pip install .[bench]``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steel_bench  # noqa: E402

import shiftbench  # noqa: E402
from shiftbench.bank import load_bank  # noqa: E402
from shiftbench.scoring import DEFAULT_K, FusedKNNScorer, KNNScorer, with_conditions  # noqa: E402

FAMILIES = ["lighting", "angle", "resolution", "content"]


def family_auroc(scores: np.ndarray, family: np.ndarray) -> dict:
    neg = scores[family == "none"]
    out = {}
    for f in FAMILIES:
        pos = scores[family == f]
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        out[f] = float(roc_auc_score(y, np.r_[pos, neg]))
    return out


def _row(name: str, s: np.ndarray, cal, family: np.ndarray) -> dict:
    au = family_auroc(s, family)
    fpr = float(np.mean(cal.p_values(s[family == "none"]) <= 0.05))
    return {"scorer": name, "fpr@0.05": fpr, **au, "min_auroc": min(au.values())}


def main() -> None:
    ap = steel_bench.bench_parser(__doc__)
    a = ap.parse_args()
    steel_bench.ensure_built(a)
    ws, out = a.bench / "ws", a.bench / "scan"
    t0 = time.perf_counter()
    shiftbench.index(a.bench / "train", workspace=ws)
    t1 = time.perf_counter()
    res = shiftbench.scan(a.bench / "prod", workspace=ws, out=out)
    t2 = time.perf_counter()
    print(f"index {t1 - t0:.1f}s, scan {t2 - t1:.1f}s ({len(res.table)} images)")
    score_py = steel_bench.score_script(a.data)
    subprocess.run([sys.executable, str(score_py), "--bench", str(a.bench), "--scan", str(out)], check=True)

    # Re-score the same features with other k, from the bank and the scan's cache.
    bank = load_bank(ws)
    cache = next((ws / "work").glob("scan-*"))
    prod = pd.read_parquet(cache / "images.parquet")
    feats = np.load(cache / "features.npy")
    truth = pd.read_csv(a.bench / "truth.csv").set_index("file")
    family = truth.loc[prod["path"], "family"].to_numpy()
    train = bank.features[bank.rows]
    train_all = with_conditions(bank.features, bank.table, bank.meta["conditions"])[bank.rows]
    prod_all = with_conditions(feats, prod, bank.meta["conditions"])
    d_pen = dict(bank.scorer.views)["penultimate"]  # the penultimate view comes first
    rows = []
    for k in [1, 5, 50]:  # the literature's baselines: penultimate layer alone, k = 1 and k = 50
        sc = KNNScorer(k=k).fit(train[:, :d_pen])
        s, _ = sc.score(feats[:, :d_pen])
        rows.append(_row(f"penultimate kNN k={k}", s, sc.calibration_, family))
    embed_views = [v for v in bank.scorer.views if v[0] != "conditions"]
    sc = FusedKNNScorer(embed_views, k=DEFAULT_K).fit(train)  # ablation: no conditions view
    rows.append(_row(f"embedding views only k={DEFAULT_K}", sc.score(feats)[0], sc.calibration_, family))
    for k in [1, 3, 5]:  # shiftbench: all views, Fisher fusion
        sc = FusedKNNScorer(bank.scorer.views, k=k, raw_views=bank.scorer.raw_views).fit(train_all)
        s, _, _ = sc.score(prod_all)
        rows.append(_row(f"fused views k={k}" + (" (default)" if k == DEFAULT_K else ""), s,
                         sc.calibration_, family))
    table = pd.DataFrame(rows)
    print("\nAUROC per family and false-alarm rate at --fpr 0.05, on the same lite0 features")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if a.json:
        a.json.write_text(json.dumps({"sweep": rows, "scan_summary": res.summary}, indent=2, default=str))


if __name__ == "__main__":
    main()
