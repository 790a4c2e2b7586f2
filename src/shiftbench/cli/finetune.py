"""``shiftbench finetune``: fine-tune a checkpoint on newly labelled production images, behind a gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_OK, info, progress_bar, user_errors

EXIT_REFUSED = 1


def finetune(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder written by 'shiftbench train'.")],
    new: Annotated[Path, typer.Option(
        "--new", help="Newly labelled production images, one sub-folder per class (or --new-labels).")],
    train: Annotated[Optional[Path], typer.Option(
        "--train", help="The original training images (default: the folder the checkpoint recorded).")] = None,
    augment: Annotated[Optional[Path], typer.Option(
        help="albumentations YAML (e.g. collect's augment.yaml), applied to all training images, "
             "original and new.")] = None,
    new_labels: Annotated[Optional[Path], typer.Option(
        help="CSV with path,label for --new (e.g. collect's labels_template.csv, filled in).")] = None,
    train_labels: Annotated[Optional[Path], typer.Option(
        help="CSV with path,label for --train (default: the one the checkpoint recorded, if any).")] = None,
    holdout: Annotated[float, typer.Option(
        help="Share of each class of new images held out as the production test.")] = 0.3,
    new_share: Annotated[float, typer.Option(
        help="Share of each epoch's draws taken from the new images (repeated, augmented anew).")] = 0.2,
    max_regression: Annotated[float, typer.Option(
        help="Largest drop of original validation accuracy the gate accepts, in percentage points.")] = 1.0,
    scan: Annotated[Optional[Path], typer.Option(
        help="A 'shiftbench scan' folder: report accuracy per failure cluster.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: WORKSPACE/finetune/<time>).")] = None,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Folder for the default output.")] = Path(
        ".shiftbench"),
    epochs: Annotated[int, typer.Option(min=1, help="Epochs (the last one is kept).")] = 16,
    lr: Annotated[Optional[float], typer.Option(
        help="AdamW learning rate (default: half of train's for --trainable).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 32,
    trainable: Annotated[Optional[str], typer.Option(
        help="head, last or all (default: the checkpoint's own).")] = None,
    failure_level: Annotated[float, typer.Option(
        help="Clusters with accuracy after below this are listed as known failures.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Seeds the holdout split, batch order, flips and augmentation.")] = 0,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16/fp16 mixed precision on CUDA.")] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image decoding threads (0 or 1: one).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet/--no-quiet", "-q", help="No progress, epochs or table on stderr.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json", help="Print metrics.json instead of the folder.")] = False,
) -> None:
    """Fine-tune CKPT on its training images plus newly labelled production images; gate the result.

    The checkpoint's validation split and a held-out part of the new images are
    never trained on; both are scored before and after. Promoted only if
    production accuracy improves and original accuracy drops by at most
    --max-regression points. Writes a checkpoint, metrics.json and model_card.md
    and prints the folder. Exit status: 0 promoted, 1 refused by the gate, 2 bad input.
    """
    with user_errors():
        from ..training.card import summary_lines
        from ..training.finetune import finetune as run_finetune
        with progress_bar("fine-tuning", quiet) as progress:
            result = run_finetune(checkpoint, new, train_dir=train, augment=augment, new_labels=new_labels,
                                  train_labels=train_labels, out=out, workspace=workspace, holdout=holdout,
                                  new_share=new_share, epochs=epochs, lr=lr, batch_size=batch_size,
                                  trainable=trainable, max_regression=max_regression, scan=scan,
                                  failure_level=failure_level, seed=seed, device=device, amp=amp, flip=flip,
                                  num_workers=workers,
                                  progress=progress, log=lambda line: info(line, quiet))
    skipped = result.metrics["data"]["skipped"]
    if skipped:
        info(f"skipped {len(skipped)} files: " + "; ".join(f"{s['path']} ({s['error']})" for s in skipped[:5])
             + (" ..." if len(skipped) > 5 else ""), quiet)
    for line in summary_lines(result.metrics):
        info(line, quiet)
    from ..fsutil import json_text
    typer.echo(json_text(result.metrics, indent=None) if json_out else str(result.out_dir))
    raise typer.Exit(EXIT_OK if result.promoted else EXIT_REFUSED)
