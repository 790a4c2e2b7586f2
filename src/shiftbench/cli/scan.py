"""``shiftbench index`` and ``shiftbench scan``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_SHIFT, fail, info, progress_bar, progress_bars, user_errors

Workspace = Annotated[Path, typer.Option("--workspace", "-w", help="Folder holding the bank and scans.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")]
Quiet = Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="No progress bar or summary on stderr.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
Workers = Annotated[Optional[int], typer.Option(min=0, help="Decoding worker processes (default: cores/2).")]
Backbone = Annotated[Optional[str], typer.Option(
    help="lite0, a torchvision model name, a TorchScript file, or a checkpoint folder from `shiftbench train` "
         "(default: on a re-run the bank's own, else lite0).")]
Weights = Annotated[Optional[str], typer.Option(
    help="State dict (.pt/.pth/.safetensors) for the backbone; 'none' for random init.")]
NumClasses = Annotated[Optional[int], typer.Option(
    help="Classifier size of --weights (read from the file by default).")]
Resize = Annotated[Optional[str], typer.Option(help="squash | pad | crop (default: squash).")]
Labels = Annotated[Optional[Path], typer.Option(help="CSV with path,label for the training images.")]
K = Annotated[int, typer.Option(
    "-k", min=1, help="Score each view by the distance to the k-th nearest training image.")]
DEFAULT_K = 1  # = shiftbench.scoring.DEFAULT_K (not imported: keeps --help instant; a test checks)
Layers = Annotated[bool, typer.Option("--early-layers/--no-early-layers",
                                      help="Also score early-layer features (see lighting, blur, angle).")]
IndexKind = Annotated[str, typer.Option("--index", help="auto | flat | ivf | hnsw.")]


def index(
    train_dir: Annotated[Path, typer.Argument(help="Training images (class sub-folders give labels).")],
    workspace: Workspace = Path(".shiftbench"),
    backbone: Backbone = None,
    weights: Weights = None,
    num_classes: NumClasses = None,
    resize: Resize = None,
    labels: Labels = None,
    k: K = DEFAULT_K,
    layers: Layers = True,
    index_kind: IndexKind = "auto",
    device: Device = "auto",
    batch_size: BatchSize = 32,
    workers: Workers = None,
    quiet: Quiet = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json",
        help="Print the bank's summary (counts, backbone, index, unreadable files) instead of its folder.")
    ] = False,
) -> None:
    """Embed the training images into a reference bank (re-run to add new images)."""
    with user_errors():
        from ..api import index as run_index
        with progress_bar("embedding training images", quiet) as progress:
            bank = run_index(train_dir, workspace=workspace, backbone=backbone, weights=weights,
                             num_classes=num_classes, resize=resize, layers=layers, device=device,
                             labels=labels, k=k,
                             index_kind=index_kind, batch_size=batch_size, num_workers=workers,
                             progress=progress)
    c = bank.meta["counts"]
    info(f"indexed {c['ok']} images ({c['unreadable']} unreadable, {c['reused']} reused) with "
         f"{bank.meta['identity']['backbone']} ({len(bank.scorer.views)} feature views); calibrated on "
         f"{len(bank.scorer.calibration_.scores)} leave-one-out scores", quiet)
    if c.get("exact_copies") or c.get("with_copies", 0) > 0.05 * c["ok"]:  # (a few close pairs are normal)
        info(f"{c['with_copies']} training images have a copy or near-copy (frames of one burst? {c['exact_copies']} "
             f"are byte-identical duplicates): calibration skips copies, as a new image has none", quiet)
    folder = str((workspace / "bank").resolve())
    if json_out:
        from ..fsutil import json_text
        t = bank.table[bank.table["status"] != "ok"]
        summary = {"bank": folder, **{k: v for k, v in bank.meta.items() if k != "conditions"},
                   "unreadable": [{"path": a, "error": b} for a, b in zip(t["path"][:100], t["error"][:100])]}
        typer.echo(json_text(summary, indent=None))
    else:
        typer.echo(folder)


def scan(
    prod_dir: Annotated[Path, typer.Argument(help="Production images to check.")],
    workspace: Workspace = Path(".shiftbench"),
    reference: Annotated[Optional[Path], typer.Option(
        help="Training folder: build or update the bank in the same run.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: WORKSPACE/scans/<timestamp>).")] = None,
    fpr: Annotated[float, typer.Option(help="Target false-alarm rate on in-distribution images.")] = 0.05,
    explain: Annotated[bool, typer.Option(
        "--explain/--no-explain", help="Attribute flagged images to causes and cluster them.")] = True,
    fail_on_shift: Annotated[Optional[str], typer.Option(
        metavar="SHARE|auto|off",
        help="Exit 1 when the share of flagged images exceeds SHARE (0-1), or with 'auto' when the batch has "
             "more flags than false alarms explain (summary.json's shift_test, p < 0.01).")] = None,
    report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Also write OUT/report.html (see 'shiftbench report').")] = True,
    backbone: Annotated[Optional[str], typer.Option(
        help="With --reference: lite0, a torchvision model name, a TorchScript file, or a checkpoint folder "
             "from `shiftbench train`.")] = None,
    weights: Weights = None,
    num_classes: NumClasses = None,
    resize: Resize = None,
    train_labels: Annotated[Optional[Path], typer.Option(
        help="With --reference: CSV with path,label for the training images.")] = None,
    model: Annotated[Optional[Path], typer.Option(
        help="Checkpoint from `shiftbench train`: add its prediction and confidence per image.")] = None,
    labels: Annotated[Optional[Path], typer.Option(
        help="CSV with path,label for some production images: per-cluster error rate (with --model).")] = None,
    k: Annotated[Optional[int], typer.Option("-k", min=1, help="With --reference: see 'index -k'.")] = None,
    layers: Annotated[Optional[bool], typer.Option("--early-layers/--no-early-layers",
                                                   help="With --reference: see 'index'.")] = None,
    index_kind: Annotated[Optional[str], typer.Option("--index", help="With --reference: see 'index'.")] = None,
    device: Device = "auto",
    batch_size: BatchSize = 32,
    workers: Workers = None,
    quiet: Quiet = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json",
        help="Print summary.json (counts, threshold, drift, clusters) instead of the folder.")] = False,
) -> None:
    """Flag the production images that are unlike the training set.

    Writes images.csv (one row per image), summary.json and report.html, and prints
    the output folder on stdout. Bank options (--backbone ... --index) apply with --reference.
    """
    gate = _gate(fail_on_shift)
    # Bank options: only with --reference; otherwise the bank's own settings rule.
    index_options = {name: value for name, value in dict(
        backbone=backbone, weights=weights, num_classes=num_classes, resize=resize, layers=layers,
        labels=train_labels, k=k, index_kind=index_kind).items() if value is not None}
    if index_options and reference is None:
        flags = ", ".join("--" + n.replace("_", "-").replace("index-kind", "index").replace("labels", "train-labels")
                          for n in index_options)
        raise fail(f"{flags}: bank options apply only with --reference; without it the bank's own "
                   f"backbone and settings are used")
    with user_errors():
        from ..api import scan as run_scan
        from ..scoring.knn import SHIFT_P, p_text, shift_verdict
        with progress_bars(quiet, "embedding", "explaining flagged images") as (progress, explaining):
            result = run_scan(prod_dir, workspace=workspace, reference=reference, out=out, fpr=fpr,
                              explain=explain, model=model, labels=labels, device=device,
                              batch_size=batch_size, num_workers=workers,
                              progress=progress, explain_progress=explaining, **index_options)
    s = result.summary
    c = s["counts"]
    if c["ok"] == 0:  # nothing to judge: not a pass (a broken camera feed looks like this)
        _echo(result, json_out)
        if report:  # its table of unreadable files and their reasons
            _write_report(result.out_dir, quiet)
        errors = sorted({u["error"].split(":")[0] for u in s["unreadable"]})[:3]
        raise fail(f"none of the {c['images']} files in {prod_dir} could be read ({'; '.join(errors)}); "
                   f"each has a row with its reason in {result.out_dir / 'images.csv'}")
    info(f"{c['images']} images: {c['flagged']} flagged out-of-distribution "
         f"({100 * s['share_flagged']:.1f}% of {c['ok']} readable; target false-alarm rate "
         f"{100 * fpr:g}%), {c['unreadable']} unreadable", quiet)
    info(f"  {shift_verdict(s['shift_test'])}", quiet)
    reused = s.get("reused") or {}
    if reused.get("embeddings") or reused.get("attributions"):  # a rerun, or a resumed interrupted scan
        info(f"reused from an earlier run of this folder (unchanged files, same bank): {reused['embeddings']} "
             f"embeddings, {reused['attributions']} attributions", quiet)
    drifted = [d for d in s["drift"] if d["drifted"]]
    if drifted:
        info("conditions that changed (median vs training; effect in training spreads, i.e. robust standard "
             "deviations; KS test, Benjamini-Hochberg q < 0.01):", quiet)
        for d in drifted[:6]:
            info(f"  {d['measure']:<22} {d['train_median']:>9.4g} -> {d['prod_median']:<9.4g} "
                 f"({d['effect']:+.1f} spreads, q={d['q_value']:.1e})", quiet)
        if len(drifted) > 6:
            info(f"  and {len(drifted) - 6} more ({', '.join(d['measure'] for d in drifted[6:])}): "
                 f"summary.json 'drift'", quiet)
    for card in s["clusters"]:
        err = (f", error rate {100 * card['error_rate']:.0f}% of {card['labelled']} labelled"
               if "error_rate" in card else "")
        alike = (f", {card['taken_from_alike']} of them by agreement with alike images"
                 if card.get("taken_from_alike") else "")
        info(f"cluster {card['cluster']}: {card['size']} images, cause {card['cause']} "
             f"(confidence {card['confidence']:.2f}{alike}){err}", quiet)
        for line in card["change"]:
            info(f"    {line}", quiet)
        info(f"    e.g. {', '.join(card['medoids'])}", quiet)
    _echo(result, json_out)
    if report:
        _write_report(result.out_dir, quiet)
    if gate == "auto" and s["shift_test"]["p_value"] < SHIFT_P:
        info(f"shift gate: more flags than false alarms explain ({p_text(s['shift_test']['p_value'])})", quiet)
        raise typer.Exit(EXIT_SHIFT)
    if isinstance(gate, float) and s["share_flagged"] > gate:
        info(f"shift gate: {100 * s['share_flagged']:.1f}% flagged > {100 * gate:.1f}%", quiet)
        raise typer.Exit(EXIT_SHIFT)


def _gate(value: str | None) -> float | str | None:
    """--fail-on-shift: None (also "off", to override a config file), "auto", or a share in [0, 1]."""
    if value is None or value.strip().lower() in ("off", "none"):
        return None
    if value.strip().lower() == "auto":
        return "auto"
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not 0 <= share <= 1:
        raise fail(f"--fail-on-shift must be a share between 0 and 1, auto or off; got {value!r}")
    return share


def _echo(result, json_out: bool) -> None:
    """stdout: the output folder, or with --json the summary (strict JSON on one line; it names the folder)."""
    from ..fsutil import json_text
    typer.echo(json_text(result.summary, indent=None) if json_out else str(result.out_dir))


def _write_report(scan_dir, quiet: bool) -> None:
    """report.html beside the scan's outputs; a failure is a warning: the scan itself is written."""
    try:
        from ..reports import write_report
        info(f"report: {write_report(scan_dir)}", quiet)
    except Exception as e:  # noqa: BLE001 (the page is a by-product; status and stdout stay the scan's)
        info(f"warning: report.html not written ({type(e).__name__}: {e}); "
             f"'shiftbench report {scan_dir}' tries again", quiet)
