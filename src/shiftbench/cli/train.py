"""``shiftbench train``: a classifier checkpoint from a labelled folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import info, progress_bar, user_errors


def train(
    data_dir: Annotated[Path, typer.Argument(help="Training images, one sub-folder per class (or --labels).")],
    out: Annotated[Optional[Path], typer.Option(
        help="Checkpoint folder (default: .shiftbench/checkpoints/<folder>-<UTC time>).")] = None,
    backbone: Annotated[str, typer.Option(
        help="lite0 (ImageNet, offline), a torchvision model name, or a checkpoint to continue from.",
    )] = "lite0",
    weights: Annotated[Optional[str], typer.Option(
        help="State dict for a torchvision --backbone; 'none' for random init.")] = None,
    labels: Annotated[Optional[Path], typer.Option(
        help="CSV with path,label (instead of class sub-folders).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs to train.")] = 15,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate (default: 3e-3 head, 1e-3 last, "
                                                     "3e-4 all).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 32,
    size: Annotated[Optional[int], typer.Option(
        help="Input size (default: the backbone's, 224); 128 trains ~3x faster. "
             "Recorded in the checkpoint.")] = None,
    resize: Annotated[Optional[str], typer.Option(help="squash | pad | crop (default: squash).")] = None,
    trainable: Annotated[str, typer.Option(
        help="head (linear probe), last (last block + classifier) or all.")] = "last",
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation.")] = 0.2,
    patience: Annotated[int, typer.Option(min=0, help="Stop after this many epochs without improvement "
                                                      "(0: never).")] = 5,
    monitor: Annotated[str, typer.Option(help="accuracy | loss: what early stopping watches.")] = "accuracy",
    seed: Annotated[int, typer.Option(help="Seeds the split, the new layers, batch order and flips.")] = 0,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16/fp16 mixed precision on CUDA.")] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image decoding threads (0 or 1: one).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet/--no-quiet", "-q", help="No progress or epoch lines on stderr.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json", help="Print the metrics as JSON instead of the path.")] = False,
) -> None:
    """Train an image classifier and print the checkpoint folder it wrote.

    The checkpoint works as a backbone: 'shiftbench index --backbone CKPT'.
    """
    with user_errors():
        from ..training import train as run_train
        with progress_bar("training", quiet) as progress:
            result = run_train(data_dir, out=out, backbone=backbone, weights=weights, labels=labels,
                               epochs=epochs, lr=lr, batch_size=batch_size, size=size, resize=resize,
                               trainable=trainable, val_fraction=val_fraction, patience=patience,
                               monitor=monitor, seed=seed, device=device, amp=amp, flip=flip,
                               num_workers=workers, progress=progress, log=lambda line: info(line, quiet))
    meta, m = result.meta, result.metrics
    if meta["skipped"]:
        shown = "; ".join(f"{s['path']} ({s['error']})" for s in meta["skipped"][:5])
        more = " ..." if len(meta["skipped"]) > 5 else ""
        info(f"skipped {len(meta['skipped'])} files: {shown}{more}", quiet)
    if m["val_accuracy"] is not None:
        info(f"validation accuracy {m['val_accuracy']:.3f}, loss {m['val_loss']:.4f} (best epoch "
             f"{m['best_epoch']} of {m['epochs']}, {m['seconds']:.0f} s)", quiet)
    if json_out:
        from ..fsutil import json_text
        typer.echo(json_text({"checkpoint": str(result.checkpoint),
                              **{k: meta[k] for k in ("arch", "classes", "trainable", "preprocess",
                                                      "metrics", "lineage", "skipped")}}, indent=None))
    else:
        typer.echo(str(result.checkpoint))


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint folder written by 'shiftbench train'.")],
    images: Annotated[Path, typer.Argument(help="An image folder (searched recursively) or one image.")],
    out: Annotated[Optional[Path], typer.Option(
        help="Write the CSV here (atomically) instead of standard output.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Image decoding workers.")] = None,
) -> None:
    """Classify images with a checkpoint: CSV path,prediction,confidence,error.

    Unreadable images get an empty prediction and the reason in 'error'; the exit
    status is still 0 (2 for a bad checkpoint or folder).
    """
    with user_errors():
        from ..fsutil import write_text
        from ..training import predict as run_predict
        if not images.exists():
            raise FileNotFoundError(f"no such file or folder: {images}")
        table = run_predict(checkpoint, images, device=device, batch_size=batch_size, num_workers=workers)
        if not len(table):
            raise FileNotFoundError(f"no images found in {images}")
        text = table.to_csv(index=False, float_format="%.6g")
        if out is not None:
            write_text(out, text)
            typer.echo(str(out))
        else:
            typer.echo(text, nl=False)
