"""What every command shares: error handling, progress bar, output conventions."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

EXIT_OK, EXIT_SHIFT, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"shiftbench: error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors (and the system's: a full disk, a denied folder) into one
    line on stderr and exit status 2; anything else is a bug: its traceback, and status 3, so that
    status 1 always means a finding (a shift, a refused model), never a crash."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from ..embedding.backbones import BackboneError
    from ..images import ImageError, InputError
    try:
        yield
    except typer.Exit:
        raise
    except (InputError, BackboneError, ImageError, OSError) as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume", 130) from None
    except Exception as e:
        traceback.print_exc()
        raise fail(f"internal error ({type(e).__name__}): a bug, please report it with the traceback above",
                   EXIT_BUG) from None


@contextmanager
def progress_bar(description: str, quiet: bool):
    """Yield a ``progress(done, total)`` callback drawing a rich bar on stderr."""
    with progress_bars(quiet, description) as (update,):
        yield update


@contextmanager
def progress_bars(quiet: bool, *descriptions: str):
    """One ``progress(done, total)`` callback per phase, each its own bar (None when not a TTY)."""
    if quiet or not sys.stderr.isatty():
        yield (None,) * len(descriptions)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        def callback(description: str):
            task = None

            def update(done: int, total: int) -> None:
                nonlocal task
                if task is None:  # a phase's bar appears when the phase starts
                    task = bar.add_task(description, total=total)
                bar.update(task, completed=done, total=total)
            return update
        yield tuple(callback(d) for d in descriptions)


def info(message: str, quiet: bool) -> None:
    """Human-readable text: stderr, so that stdout carries only the result path."""
    if not quiet:
        typer.echo(message, err=True)
