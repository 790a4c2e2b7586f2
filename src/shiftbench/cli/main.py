"""The ``shiftbench`` command. Only typer is imported at start-up: ``--help`` is instant."""

from __future__ import annotations

import typer

from . import collect as collect_cmds
from . import demo as demo_cmds
from . import finetune as finetune_cmds
from . import report as report_cmds
from . import scan as scan_cmds
from . import train as train_cmds

app = typer.Typer(
    name="shiftbench",
    help="Find the production images your vision model was not trained for, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("index")(scan_cmds.index)
app.command("scan")(scan_cmds.scan)
app.command("train")(train_cmds.train)
app.command("predict")(train_cmds.predict)
app.command("report")(report_cmds.report)
app.command("collect")(collect_cmds.collect)
app.command("finetune")(finetune_cmds.finetune)
app.command("demo")(demo_cmds.demo)


def _version(value: bool) -> None:
    if value:
        from .. import __version__
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Exit status: 0 success, 1 shift gate tripped (--fail-on-shift), 2 bad usage or input."""
