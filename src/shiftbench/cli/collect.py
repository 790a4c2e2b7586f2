"""``shiftbench collect``: collection plan, images to label first, and a shift-matched augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import info, user_errors


def collect(
    scan_dir: Annotated[Path, typer.Argument(help="A folder written by 'shiftbench scan'.")],
    budget: Annotated[Optional[int], typer.Option(help="Images to label (and to collect, split by cluster).")] = None,
    budget_fraction: Annotated[Optional[float], typer.Option(
        help="Instead of --budget: this share of the readable production images (0-1).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: SCAN_DIR/collect).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the augmentation pipeline (and sampling without embeddings).")] = 0,
    copy: Annotated[bool, typer.Option("--copy/--no-copy", help="Copy the selected images to OUT/to_label.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="No plan on stderr.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json", help="Print the plan as JSON instead of the folder.")] = False,
) -> None:
    """Plan what to collect per failure cluster, pick the images to label first, match an augmentation.

    Writes plan.json, plan.md, selection.csv, to_label/ (copies and labels_template.csv),
    augment.yaml and augment.md, and prints the output folder on stdout.
    """
    with user_errors():
        from ..collection import collect as run_collect  # loads pandas; albumentations only when writing
        result = run_collect(scan_dir, budget, out=out, seed=seed, copy=copy, budget_fraction=budget_fraction)
    s = result.summary
    info(f"{s['flagged']} flagged images in {len(s['clusters'])} clusters; budget {s['budget']} "
         f"({s['budget_source']}); {s['selected']} selected to label", quiet)
    for note in s["notes"]:
        info(f"note: {note}", quiet)
    for c in s["clusters"]:
        info(f"cluster {c['cluster']} ({c['cause']}, {c['size']} images): collect {c['collect']}, "
             f"label {c['label_now']} now", quiet)
        for line in c["conditions"]:
            info(f"    {line}", quiet)
        info(f"    e.g. {', '.join(c['representatives'][:3])}", quiet)
    by_cause: dict[str, list[str]] = {}
    for t in s["augmentation"]["transforms"]:
        by_cause.setdefault(t["cause"], []).extend(n for n in _leaves(t) if n not in by_cause.get(t["cause"], []))
    aug = s["augmentation"]
    few = [f"{c} on {n}" for c, n in aug.get("images_per_cause", {}).items()
           if c != "content" and c not in by_cause and n < aug.get("images_needed", 0)]
    none = (f"none ({', '.join(few)} flagged images, fewer than the {aug['images_needed']} a range is drawn from)"
            if few else "none (no condition shift seen)")
    shown = "; ".join(f"{c}: {', '.join(n)}" for c, n in by_cause.items()) or none
    info(f"augmentation: {shown} (augment.yaml; augment.md says where each range came from)", quiet)
    from ..fsutil import json_text
    typer.echo(json_text(s, indent=None) if json_out else str(result.out_dir))


def _leaves(entry: dict) -> list[str]:
    """Transform names inside an augmentation entry (OneOf/Sequential unwrapped)."""
    kids = entry.get("children")
    if not kids:
        return [entry["name"]]
    return list(dict.fromkeys(n for k in kids for n in _leaves(k)))
