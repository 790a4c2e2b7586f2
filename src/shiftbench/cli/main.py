"""The ``shiftbench`` command. Only typer is imported at start-up: ``--help`` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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


@app.command("config")
def config(ctx: typer.Context, commands: Annotated[Optional[list[str]], typer.Argument(
        help="Commands to show (default: all).", show_default=False)] = None) -> None:
    """Print the commands' options as a YAML config file, each with its help (with --config, that file's values).

    Start a config from it: shiftbench config scan collect > run.yaml, edit, then
    shiftbench --config run.yaml scan prod/.
    """
    from .common import fail
    from .config import defaults_yaml
    group = ctx.parent.command
    unknown = [c for c in commands or [] if c not in group.commands or c == "config"]
    if unknown:
        raise fail(f"no command {unknown[0]!r}; choose from {', '.join(c for c in group.commands if c != 'config')}")
    typer.echo(defaults_yaml(group, ctx.parent.default_map, commands), nl=False)


def _version(value: bool) -> None:
    if value:
        from .. import __version__
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(ctx: typer.Context,
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
         config_file: Annotated[Optional[Path], typer.Option(
             "--config", dir_okay=False,
             help="YAML file of option defaults, one section per command ('shiftbench config' prints one).")
         ] = None) -> None:
    """Exit status: 0 success, 1 shift gate tripped (--fail-on-shift), 2 bad usage or input."""
    if config_file is not None:
        from .config import load_config
        ctx.default_map = load_config(config_file, ctx.command)
