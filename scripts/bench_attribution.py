"""Attribution benchmark on real steel images: causes and clusters of flagged images.

    python scripts/bench_attribution.py [--bench /tmp/steel_bench] [--data ../shared/data] [--seed 0]

Builds the benchmark of ``scripts/steel_bench.py`` (unless it exists: NEU
training half; production = held-out NEU images unshifted and shifted by
lighting, angle and resolution variants with random strengths, plus X-SDD as
new content), runs ``shiftbench.scan`` with the default settings (detection,
attribution by intervention, clustering) and scores it with
``../shared/eval/score.py``: false-alarm rate, AUROC and true-positive rate per
family, attribution accuracy among flagged images, adjusted Rand index of the
clusters against families.

Baseline for naming causes: cleanvision's issue flags on the same images
(dark/light -> lighting, blurry -> resolution, odd size/aspect -> resolution,
grayscale -> pipeline, low information -> content, no issue -> content), scored
with the same flags, so only the causes differ. Needs ``pip install .[bench]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steel_bench  # noqa: E402

import shiftbench  # noqa: E402
from shiftbench.api import write_table  # noqa: E402

CLEANVISION_CAUSE = {"dark": "lighting", "light": "lighting", "blurry": "resolution", "odd_size": "resolution",
                     "odd_aspect_ratio": "resolution", "grayscale": "pipeline", "low_information": "content"}


def cleanvision_causes(prod: Path, files: list[str]) -> pd.Series:
    """Cause named by cleanvision's first issue flag per file ('content' when it flags none)."""
    from cleanvision import Imagelab

    lab = Imagelab(filepaths=[str(prod / f) for f in files])
    lab.find_issues({k: {} for k in CLEANVISION_CAUSE}, verbose=False)
    issues = lab.issues
    cause = pd.Series("content", index=files)
    for name, mapped in CLEANVISION_CAUSE.items():
        col = f"is_{name}_issue"
        if col in issues:
            hit = issues[col].to_numpy()
            cause[(cause == "content").to_numpy() & hit] = mapped
    return cause


def score(score_py: Path, bench: Path, scan_dir: Path) -> dict:
    subprocess.run([sys.executable, str(score_py), "--bench", str(bench), "--scan", str(scan_dir)], check=True)
    return json.loads((scan_dir / "metrics.json").read_text())


def main() -> None:
    ap = steel_bench.bench_parser(__doc__)
    ap.add_argument("--no-baseline", action="store_true", help="skip the cleanvision baseline")
    a = ap.parse_args()
    steel_bench.ensure_built(a)
    ws, out = a.bench / "ws", a.bench / "scan"
    shiftbench.index(a.bench / "train", workspace=ws)
    t0 = time.perf_counter()
    res = shiftbench.scan(a.bench / "prod", workspace=ws, out=out)
    t = res.summary["timings_s"]
    n_flag = res.summary["counts"]["flagged"]
    print(f"scan {time.perf_counter() - t0:.1f}s: embed+measure {t['embed']:.1f}s for {len(res.table)} images, "
          f"attribution+clustering {t['explain']:.1f}s for {n_flag} flagged "
          f"({t['explain'] / max(n_flag, 1):.2f}s each), {len(res.summary['clusters'])} clusters")
    for card in res.summary["clusters"]:
        print(f"  cluster {card['cluster']}: {card['size']} images, {card['cause']} {card['causes']}; "
              + "; ".join(card["change"]))
    score_py = steel_bench.score_script(a.data)
    figures = {"shiftbench": score(score_py, a.bench, out), "timings_s": t, "clusters": res.summary["clusters"]}

    if not a.no_baseline:
        print("\nBaseline: cleanvision's issue flags name the cause (same detection flags)")
        table = res.table.copy()
        flagged = table["is_ood"].to_numpy()
        cv = cleanvision_causes(a.bench / "prod", table["path"][flagged].tolist())
        table.loc[flagged, "cause"] = cv.to_numpy()
        table.loc[flagged, "cluster"] = pd.factorize(cv)[0]
        table.loc[flagged, "mode"] = 0  # one mode per cleanvision cluster
        base = a.bench / "scan_cleanvision"
        write_table(base / "images.csv", table)
        figures["cleanvision"] = score(score_py, a.bench, base)
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
