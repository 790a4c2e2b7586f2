"""Fine-tuning benchmark on real steel images: targeted (``collect``) vs random labelling.

    python scripts/bench_finetune.py --bench /tmp/ftb0 --seed 0 [--budget-fraction 0.05] [--size 128]
                                     [--epochs 16] [--strength 1.0] [--new-share F] [--no-augment] [--json OUT]
    python scripts/bench_finetune.py --aggregate /tmp/ftb0/bench.json /tmp/ftb1/bench.json ...

One seed, end to end (each step's output is kept in ``--bench`` and reused by a
rerun; ``--rebuild`` starts again from nothing):

1. Build the benchmark of ``scripts/steel_bench.py`` into ``--bench`` (smaller than
   its default so that the scan is affordable on a CPU: 150 NEU images per class
   to train on; production = ``--n-clean`` clean held-out NEU images per class (family
   ``none``), ``--n-shift`` shifted ones per family (lighting, angle, resolution)
   and ``--n-content`` X-SDD images (``content``)). ``--strength`` scales every
   shift (1.5: the *hard* variant, whose baseline loss is large enough for the
   recovered share to be more than a handful of images). ``--test-share`` of the
   non-content production images (stratified by family and class, seeded) move to
   ``test/`` before anything else runs: the batch that is scanned, collected from and
   drawn from is ``prod/`` alone, and every model is scored on ``test/``, so that
   targeted and random selection are compared on the same images whatever they pick
   (``--test-share 0``: the older protocol, test = production images labelled in neither run).
2. Train the baseline classifier on ``train/`` (``shiftbench.train``, defaults
   except size and seed).
3. Scan the whole production folder with the model as backbone and predictor
   (detection, attribution, clustering; the slow step).
4. ``shiftbench.collect`` with ``--budget-fraction`` of the readable production
   images (content included: it is part of the batch) -> the targeted selection.
   The simulated labeller copies each selected image into
   ``labelled_targeted/<class>/`` with its class from ``truth.csv``.
5. Random baseline: as many images as the targeted run labelled, drawn uniformly
   (seeded) from the non-content production images -> ``labelled_random/<class>/``.
6. ``shiftbench.finetune`` from the baseline twice (targeted, random): same seed,
   epochs and ``augment.yaml`` (the one collect wrote), finetune's own holdout
   (default 0.3 of the new images) and gate kept.
7. Evaluate the baseline and both fine-tuned models with
   ``shiftbench.training.predict`` on one common test set: ``test/`` (or, with
   ``--test-share 0``, every non-content production image labelled in *neither* run).

How content (X-SDD) images are handled: they are another plant's defects, whose
labels are not among the model's six NEU classes, so they can neither be
labelled for fine-tuning (finetune refuses unknown classes) nor scored. The scan
and ``collect`` still see the whole batch, content included (that is what a user
would run, and the budget is a share of the whole batch), but the simulated
labeller *drops* any selected content image (it answers "not one of our
classes"): the budget it used is lost, which is counted against the targeted
selection and reported (``content_selected``). The random baseline draws the
same number of images as the targeted run actually labelled, from non-content
images only, and content images are excluded from every accuracy figure.

Figures (per seed, and the mean over seeds with ``--aggregate``):

* ``baseline_val_acc``: the baseline's validation accuracy (its own split of ``train/``);
* accuracy on the test set of clean production (family ``none``) and of shifted
  production (lighting + angle + resolution pooled, and per family), before
  (baseline) and after (targeted, random);
* ``recovered`` = (acc_shift_after - acc_shift_before) / (acc_clean_before - acc_shift_before):
  the share of the lost accuracy won back, where the loss is measured against the
  baseline's accuracy on *clean production* images (not against its validation
  accuracy), on the same test set; per family likewise;
* the change of the original validation accuracy (finetune's ``metrics.json``:
  the checkpoint's validation split, before/after), finetune's held-out
  production accuracy and the gate decision;
* timings per step.

The issue's target: recovered >= 0.8 with a budget of at most 5% of the batch and
the original validation accuracy down by at most 1 point, and targeted better
than random.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steel_bench  # noqa: E402

import shiftbench  # noqa: E402
from shiftbench.training import finetune, predict  # noqa: E402

FAMILIES = ("lighting", "angle", "resolution")
RUNS = ("targeted", "random")


def _label(files: list[str], labels: pd.Series, prod: Path, out: Path) -> None:
    """The simulated labeller: copy each file into ``out/<true class>/``."""
    if out.exists():
        shutil.rmtree(out)
    for f in files:
        dst = out / labels[f] / f.replace("/", "__")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prod / f, dst)


def _split(bench: Path, share: float, seed: int) -> None:
    """Move ``share`` of the non-content production images (per family and class) to ``bench/test/``;
    truth.csv gets a ``split`` column (``prod`` or ``test``)."""
    truth = pd.read_csv(bench / "truth.csv")
    rng = np.random.default_rng(seed + 7919)  # not the build's stream
    truth["split"] = "prod"
    for _, g in truth[truth["family"] != "content"].groupby(["family", "label"]):
        n = int(round(share * len(g)))
        truth.loc[rng.choice(g.index.to_numpy(), n, replace=False), "split"] = "test"
    (bench / "test").mkdir(exist_ok=True)
    for f in truth.loc[truth["split"] == "test", "file"]:
        (bench / "prod" / f).rename(bench / "test" / f)
    truth.to_csv(bench / "truth.csv", index=False)


def _accuracy(pred: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Accuracy on the clean, shifted (pooled) and per-family parts of ``test`` (columns file, family, label)."""
    p = pred.set_index("path")["prediction"]
    ok = (p.reindex(test["file"]).to_numpy() == test["label"].to_numpy())
    fam = test["family"].to_numpy()
    out = {"clean": float(ok[fam == "none"].mean()), "shifted": float(ok[np.isin(fam, FAMILIES)].mean())}
    out.update({f: float(ok[fam == f].mean()) for f in FAMILIES})
    return out


def _recovered(after: float, before: float, clean_before: float) -> float | None:
    lost = clean_before - before
    return (after - before) / lost if lost > 0 else None


def run(a: argparse.Namespace) -> dict:
    bench = a.bench.resolve()
    timings: dict[str, float] = {}
    cache = bench / "timings.json"  # steps reused from an earlier run keep their measured time
    old = json.loads(cache.read_text()) if cache.is_file() and not a.rebuild else {}

    def timed(name: str, done: bool, fn):
        if done:  # output already there: reuse it (its time as measured then, when known)
            timings[name] = old.get(name, float("nan"))
            print(f"[{name}] reused from an earlier run ({timings[name]:.0f} s then)", file=sys.stderr, flush=True)
            return None
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        r = fn()
        timings[name] = round(time.perf_counter() - t, 1)
        print(f"[{name}] {timings[name]:.0f} s", file=sys.stderr, flush=True)
        cache.write_text(json.dumps({**old, **timings}))
        return r

    def fresh(*paths: Path) -> bool:
        return not a.rebuild and all(p.exists() for p in paths)

    if a.rebuild or not (bench / "truth.csv").is_file():
        old = {}
    timed("build", fresh(bench / "truth.csv"),
          lambda: _split(steel_bench.build(a.data, bench, a.seed, n_train=150, n_clean=a.n_clean,
                                           n_shift=a.n_shift, n_content=a.n_content, strength=a.strength),
                         a.test_share, a.seed))
    truth = pd.read_csv(bench / "truth.csv")
    if "split" not in truth:  # built before the split existed: all of it is the batch
        truth["split"] = "prod"
    labels = truth.set_index("file")["label"]
    prod, model = bench / "prod", bench / "model"

    timed("train", fresh(model / "model.json"),
          lambda: shiftbench.train(bench / "train", out=model, size=a.size, seed=a.seed))
    meta = json.loads((model / "model.json").read_text())
    scan_dir = bench / "scan"
    timed("scan", fresh(scan_dir / "summary.json", scan_dir / "images.csv"),
          lambda: shiftbench.scan(prod, reference=bench / "train", backbone=str(model), model=model,
                                  workspace=bench / "ws", out=scan_dir))
    summary = json.loads((scan_dir / "summary.json").read_text())

    # collect is cheap and deterministic: always rerun, so the selection follows --budget-fraction
    col = timed("collect", False, lambda: shiftbench.collect(scan_dir, budget_fraction=a.budget_fraction,
                                                             seed=a.seed))
    selected = col.selection["path"].tolist()
    content = set(truth.loc[truth["family"] == "content", "file"])
    targeted = [f for f in selected if f not in content]
    rng = np.random.default_rng(a.seed)
    pool = truth.loc[(truth["family"] != "content") & (truth["split"] == "prod"), "file"].to_numpy()
    random_files = sorted(rng.choice(pool, len(targeted), replace=False).tolist())
    chosen = {"targeted": targeted, "random": random_files}
    for r in RUNS:
        _label(chosen[r], labels, prod, bench / f"labelled_{r}")
    augment = None if a.no_augment else col.out_dir / "augment.yaml"

    ft = {}
    for r in RUNS:
        out = bench / f"model_{r}"
        if out.exists():
            shutil.rmtree(out)
        res = timed(f"finetune_{r}", False,
                    lambda r=r, out=out: finetune(model, bench / f"labelled_{r}", augment=augment, scan=scan_dir,
                                                  out=out, seed=a.seed, epochs=a.epochs,
                                                  **({} if a.new_share is None else {"new_share": a.new_share})))
        ft[r] = res.metrics

    # one test set for all models: test/, else non-content production images labelled in neither run
    held_out = (truth["split"] == "test").any()
    used = set(targeted) | set(random_files)
    test = truth[truth["split"] == "test"] if held_out else \
        truth[(truth["family"] != "content") & ~truth["file"].isin(used)]
    preds = {}
    for name, ckpt in (("before", model), *((r, bench / f"model_{r}") for r in RUNS)):
        preds[name] = timed(f"predict_{name}", False,
                            lambda ckpt=ckpt: predict(ckpt, bench / "test" if held_out else prod))
    acc = {k: _accuracy(v, test) for k, v in preds.items()}

    fam = truth.set_index("file")["family"]
    flagged = summary["counts"]["flagged"]
    result = {
        "seed": a.seed, "bench": str(bench), "size": a.size, "epochs": a.epochs, "strength": a.strength,
        "augment": not a.no_augment, "new_share": a.new_share,
        "budget_fraction": a.budget_fraction,
        "test_share": a.test_share,
        "production": {"images": int((truth["split"] == "prod").sum()),
                       **{f: int(n) for f, n in truth.loc[truth["split"] == "prod", "family"].value_counts().items()}},
        "baseline_val_acc": meta["metrics"]["val_accuracy"],
        "scan": {"flagged": flagged, "clusters": [{"cluster": c["cluster"], "size": c["size"], "cause": c["cause"]}
                                                  for c in summary.get("clusters", [])]},
        "budget": int(col.summary["budget"]), "selected": len(selected),
        "content_selected": len(selected) - len(targeted), "labelled": len(targeted),
        "labelled_by_family": {r: {k: int(v) for k, v in fam[chosen[r]].value_counts().items()} for r in RUNS},
        "test": {"images": int(len(test)), **{f: int(n) for f, n in test["family"].value_counts().items()}},
        "acc_before": acc["before"],
        "runs": {},
        "timings_s": timings,
    }
    for r in RUNS:
        m = ft[r]
        ev = m["evaluation"]
        result["runs"][r] = {
            "acc_after": acc[r],
            "recovered": _recovered(acc[r]["shifted"], acc["before"]["shifted"], acc["before"]["clean"]),
            "recovered_by_family": {f: _recovered(acc[r][f], acc["before"][f], acc["before"]["clean"])
                                    for f in FAMILIES},
            "orig_val_before": ev["original_val"]["before"]["accuracy"],
            "orig_val_after": ev["original_val"]["after"]["accuracy"],
            "orig_val_change_points": -m["gate"]["original_drop_points"],
            "holdout_n": ev["production_holdout"]["n"],
            "holdout_before": ev["production_holdout"]["before"]["accuracy"],
            "holdout_after": ev["production_holdout"]["after"]["accuracy"],
            "new_train_n": m["data"]["new"]["n_finetune"],
            "promoted": m["gate"]["promoted"], "gate_reason": m["gate"]["reason"],
        }
    return result


def _f(x, pct=True, signed=False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    if pct:
        return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def table(r: dict) -> str:
    """One seed's (or the mean's) figures as text."""
    b = r["acc_before"]
    def n(x) -> str:
        return f"{x:g}" if isinstance(x, int) or float(x).is_integer() else f"{x:.1f}"

    def fams(d: dict) -> str:
        return ", ".join(f"{k} {n(v)}" for k, v in d.items() if v)

    lines = [f"seed {r['seed']}: baseline val acc {_f(r['baseline_val_acc'])}%, "
             f"budget {n(r['budget'])} ({r['budget_fraction']:g} of {n(r['production']['images'])} images), "
             f"selected {n(r['selected'])}, content dropped {n(r['content_selected'])}, labelled {n(r['labelled'])} "
             f"(targeted: {fams(r['labelled_by_family']['targeted'])}; random: "
             f"{fams(r['labelled_by_family']['random'])}), test images {n(r['test']['images'])}",
             f"{'':10s} {'clean':>6s} {'shifted':>7s} " + " ".join(f"{f:>10s}" for f in FAMILIES)
             + f" {'recovered':>9s} {'orig val d':>10s} {'holdout b->a':>13s} gate"]
    lines.append(f"{'before':10s} {_f(b['clean']):>6s} {_f(b['shifted']):>7s} "
                 + " ".join(f"{_f(b[f]):>10s}" for f in FAMILIES))
    for name in RUNS:
        x = r["runs"][name]
        acc = x["acc_after"]
        prom = x["promoted"]
        gate = prom if isinstance(prom, str) else ("PROMOTED" if prom else "REFUSED")
        lines.append(f"{name:10s} {_f(acc['clean']):>6s} {_f(acc['shifted']):>7s} "
                     + " ".join(f"{_f(acc[f]):>5s}({_f(x['recovered_by_family'][f], False):>4s})" for f in FAMILIES)
                     + f" {_f(x['recovered'], False):>9s} {x['orig_val_change_points']:>+10.1f} "
                     f"{_f(x['holdout_before']):>6s}->{_f(x['holdout_after']):<6s} {gate}")
    lines.append("(accuracy % on the common test set; per family: accuracy(recovered share), '-' where the baseline "
                 "lost nothing against clean; orig val d: points of the checkpoint's validation accuracy; "
                 "holdout: finetune's own held-out new images)")
    lines.append("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()))
    return "\n".join(lines)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def aggregate(results: list[dict]) -> dict:
    """Mean over seeds of every figure of :func:`run` (gate: 'k/n promoted')."""
    def avg(get):
        return _mean([get(r) for r in results])

    out = {"seed": "mean of " + ",".join(str(r["seed"]) for r in results),
           "budget_fraction": results[0]["budget_fraction"],
           "seeds": [r["seed"] for r in results],
           "production": {"images": avg(lambda r: r["production"]["images"])},
           "baseline_val_acc": avg(lambda r: r["baseline_val_acc"]),
           "budget": avg(lambda r: r["budget"]), "selected": avg(lambda r: r["selected"]),
           "content_selected": avg(lambda r: r["content_selected"]), "labelled": avg(lambda r: r["labelled"]),
           "labelled_by_family": {k: {f: avg(lambda r: r["labelled_by_family"][k].get(f, 0))
                                      for f in ("none", *FAMILIES)} for k in RUNS},
           "test": {"images": avg(lambda r: r["test"]["images"])},
           "acc_before": {k: avg(lambda r: r["acc_before"][k]) for k in results[0]["acc_before"]},
           "runs": {}, "timings_s": {k: avg(lambda r: r["timings_s"].get(k)) for k in results[0]["timings_s"]}}
    for name in RUNS:
        rs = [r["runs"][name] for r in results]
        m = {k: _mean([x[k] for x in rs]) for k in ("recovered", "orig_val_change_points", "holdout_before",
                                                    "holdout_after", "orig_val_before", "orig_val_after")}
        m["acc_after"] = {k: _mean([x["acc_after"][k] for x in rs]) for k in rs[0]["acc_after"]}
        m["recovered_by_family"] = {f: _mean([x["recovered_by_family"][f] for x in rs]) for f in FAMILIES}
        # recovered computed from the mean accuracies (less noisy than the mean of ratios)
        m["recovered_of_means"] = _recovered(m["acc_after"]["shifted"], out["acc_before"]["shifted"],
                                             out["acc_before"]["clean"])
        m["promoted"] = f"{sum(bool(x['promoted']) for x in rs)}/{len(rs)} promoted"
        out["runs"][name] = m
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, help="benchmark folder (built here unless it holds truth.csv)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--budget-fraction", type=float, default=0.05)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=16, help="fine-tuning epochs (finetune's default: 16)")
    ap.add_argument("--strength", type=float, default=1.0,
                    help="scale of every shift from the identity (steel_bench._variants); 1: the default benchmark")
    ap.add_argument("--no-augment", action="store_true",
                    help="fine-tune without collect's augment.yaml: what the labelled images alone are worth")
    ap.add_argument("--new-share", type=float, help="finetune's new_share (default: finetune's own)")
    ap.add_argument("--n-clean", type=int, default=50, help="clean production images per class")
    ap.add_argument("--n-shift", type=int, default=200, help="shifted production images per family")
    ap.add_argument("--test-share", type=float, default=0.5,
                    help="share of the non-content production images held out as the common test set")
    ap.add_argument("--n-content", type=int, default=50, help="X-SDD production images")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the benchmark and redo every step")
    ap.add_argument("--json", type=Path, help="write the figures here (default BENCH/bench.json)")
    ap.add_argument("--aggregate", type=Path, nargs="+", metavar="JSON",
                    help="print the mean over the per-seed JSON files given, and nothing else is run")
    a = ap.parse_args()
    if a.aggregate:
        results = [json.loads(p.read_text()) for p in a.aggregate]
        for r in results:
            print(table(r) + "\n")
        agg = aggregate(results)
        print(table(agg))
        for name in RUNS:
            print(f"{name}: recovered from the mean accuracies {_f(agg['runs'][name]['recovered_of_means'], False)}")
        if a.json:
            a.json.write_text(json.dumps(agg, indent=2))
        return
    if a.bench is None:
        ap.error("--bench is required (unless --aggregate)")
    if not (a.data / "neu_det").is_dir():
        raise SystemExit(f"no steel data at {a.data} (see ../shared/data/README.md)")
    result = run(a)
    out = a.json or a.bench / "bench.json"
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"figures written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
