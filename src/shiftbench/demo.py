"""``shiftbench demo``: the whole loop on a synthetic factory, offline, in a few minutes on a CPU.

Generate a factory (lab images, four production stations of which three drifted:
lighting, angle, resolution), train the baseline classifier, index and scan
production with it, print the failure clusters and their causes, plan the
collection, label the selected images (simulated: the generator's ground truth
plays the labeller), fine-tune with the shift-matched augmentation behind the
promotion gate, and print accuracy per station before and after.

Each step is an ordinary command; the demo prints it (``$ shiftbench ...``)
before running the same thing through the Python API, so a user can repeat it
on real data.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .api import scan
from .collection import collect
from .datasets.factory import make_factory
from .reports import write_report
from .training import finetune, predict, train


def _label_selection(selection: pd.DataFrame, truth: pd.DataFrame, prod: Path, out: Path) -> int:
    """The simulated labeller: copy each selected image into ``out/<true class>/``."""
    if out.exists():
        shutil.rmtree(out)
    labels = truth.set_index("file")["label"]
    for path in selection["path"]:
        dst = out / labels[path] / path.replace("/", "__")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prod / path, dst)
    return len(selection)


def _station_table(truth: pd.DataFrame, scan_table: pd.DataFrame, before: pd.DataFrame, after: pd.DataFrame,
                   labelled: set[str]) -> pd.DataFrame:
    """Per station: drift (truth), cause found by the scan, accuracy before/after on images not labelled."""
    t = truth.assign(station=truth["file"].str.split("/").str[0]).set_index("file")
    s = scan_table.set_index("path")
    t["flagged"] = s.loc[t.index, "is_ood"].astype(bool)
    t["cause"] = s.loc[t.index, "cause"].str.split("+").str[0]
    t["before"] = before.set_index("path").loc[t.index, "prediction"].to_numpy() == t["label"]
    t["after"] = after.set_index("path").loc[t.index, "prediction"].to_numpy() == t["label"]
    t = t[~t.index.isin(labelled)]
    rows = []
    for station, g in t.groupby("station"):
        found = g.loc[g["flagged"], "cause"].value_counts()
        rows.append({"station": station, "drift": g["family"].iloc[0], "images": len(g),
                     "flagged": f"{100 * g['flagged'].mean():.0f}%",
                     "cause found": found.index[0] if len(found) else "-",
                     "acc before": f"{100 * g['before'].mean():.1f}%", "acc after": f"{100 * g['after'].mean():.1f}%"})
    return pd.DataFrame(rows)


def run_demo(out: str | Path = "shiftbench-demo", *, seed: int = 0, n_train: int = 80, n_prod: int = 60,
             size: int = 128, epochs: int = 10, budget_fraction: float = 0.1, device: str = "auto",
             log: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out`` (replaced); returns the per-station table and the gate's decision.

    ``log`` receives the commands and results as lines of text.
    """
    out = Path(out).resolve()
    t0 = time.perf_counter()
    data, model, ws = out / "factory", out / "model", out / "ws"

    def step(cmd: str) -> None:
        log(f"\n$ {cmd}")

    step(f"python -m shiftbench.datasets.factory {data} --seed {seed} --n-train {n_train} --n-prod {n_prod}")
    make_factory(data, seed=seed, n_train=n_train, n_per_station=n_prod, size=size)
    truth = pd.read_csv(data / "prod_truth.csv")
    log(f"{n_train * 4} lab images (4 classes), {len(truth)} production images from 4 stations")

    step(f"shiftbench train {data / 'train'} --size {size} --epochs {epochs} --out {model}")
    tr = train(data / "train", out=model, size=size, epochs=epochs, seed=seed, device=device)
    log(f"baseline model: validation accuracy {100 * tr.metrics['val_accuracy']:.1f}%")

    scan_dir = out / "scan"
    step(f"shiftbench scan {data / 'prod'} --reference {data / 'train'} --backbone {model} "
         f"--model {model} --workspace {ws} --out {scan_dir}")
    res = scan(data / "prod", reference=data / "train", backbone=str(model), model=model, workspace=ws,
               out=scan_dir, device=device)
    c = res.summary["counts"]
    log(f"{c['flagged']} of {c['images']} production images flagged out-of-distribution")
    for card in res.summary["clusters"]:
        log(f"cluster {card['cluster']}: {card['size']} images, cause {card['cause']}: " + "; ".join(card["change"]))

    step(f"shiftbench collect {scan_dir} --budget-fraction {budget_fraction}")
    col = collect(scan_dir, budget_fraction=budget_fraction, seed=seed)
    for entry in col.plan:
        log(f"plan, cluster {entry['cluster']}: {entry['action']}")
    step(f"shiftbench report {scan_dir}")
    log(f"report: {write_report(scan_dir)} (a page for a browser: each cluster beside its nearest training images, "
        "and the plan)")
    labelled_dir = out / "labelled"
    n = _label_selection(col.selection, truth, data / "prod", labelled_dir)
    log(f"(simulated labeller: the {n} selected images labelled from prod_truth.csv into {labelled_dir})")

    new_model = out / "model-finetuned"
    aug = col.out_dir / "augment.yaml"
    step(f"shiftbench finetune {model} --new {labelled_dir} --augment {aug} --scan {scan_dir} --out {new_model}")
    ft = finetune(model, labelled_dir, augment=aug, scan=scan_dir, out=new_model, seed=seed, device=device)
    gate = ft.metrics["gate"]
    log(f"promotion gate: {'PROMOTED' if ft.promoted else 'REFUSED'} ({gate.get('reason', '')})")

    log("\naccuracy per station on the production images that were not labelled "
        "(shiftbench.training.predict with the old and the new model):")
    before, after = predict(model, data / "prod", device=device), predict(new_model, data / "prod", device=device)
    table = _station_table(truth, res.table, before, after, set(col.selection["path"]))
    log("\n" + table.to_string(index=False))
    log(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is in {out}")
    return {"stations": table, "promoted": ft.promoted, "out": out}
