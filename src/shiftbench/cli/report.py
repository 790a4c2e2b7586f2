"""``shiftbench report``: one HTML page of a finished scan, for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import user_errors


def report(
    scan_dir: Annotated[Path, typer.Argument(help="A folder written by 'shiftbench scan'.")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file (default: SCAN_DIR/report.html).")] = None,
    max_images: Annotated[int, typer.Option(
        help="Thumbnails in the table of flagged images, the most unusual first (the clusters' own "
             "images are always shown).")] = 200,
) -> None:
    """Write a self-contained HTML page: drift, failure clusters beside their nearest training images,
    every flagged image with its cause, and collect's plan when it ran. Prints the file's path."""
    with user_errors():
        from ..reports import write_report
        path = write_report(scan_dir, out=out, max_images=max_images)
    typer.echo(str(path))
