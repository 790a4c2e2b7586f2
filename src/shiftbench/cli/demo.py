"""``shiftbench demo``: the whole loop on a generated factory, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import info, user_errors


def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes (replaced).")] = Path(
        "shiftbench-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the factory, the split and the training.")] = 0,
    n_train: Annotated[int, typer.Option(min=4, help="Lab images per class.")] = 80,
    n_prod: Annotated[int, typer.Option(min=4, help="Production images per station.")] = 60,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the baseline model.")] = 10,
    budget_fraction: Annotated[float, typer.Option(help="Share of production images to label.")] = 0.1,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet/--no-quiet", "-q", help="Only print the output folder.")] = False,
) -> None:
    """Generate a factory whose stations drifted, find and explain the drift, fix the model.

    Prints every step as the command that repeats it on real data, and ends with
    accuracy per station before and after fine-tuning. Needs no download.
    """
    with user_errors():
        from ..demo import run_demo
        result = run_demo(out, seed=seed, n_train=n_train, n_prod=n_prod, epochs=epochs,
                          budget_fraction=budget_fraction, device=device, log=lambda m: info(m, quiet))
    typer.echo(str(result["out"]))
