"""``shiftbench --config FILE``: options' defaults from a YAML file, and ``shiftbench config`` to print them.

A config file has one section per command, each option under its long name as typed on the
command line without the dashes (``budget-fraction: 0.05``; a flag pair under its positive name,
``early-layers: false``)::

    scan:
      fpr: 0.02
      fail-on-shift: 0.2
    finetune:
      max-regression: 0.5

Options typed on the command line win over the file. The folders a command works on (its
arguments) stay on the command line. Relative paths are read from the working directory, as on
the command line. An unknown command or option is an error, so that a typo cannot leave a
default silently in place. click's ``default_map`` does the rest: each command's context takes its
section, and ``--help`` shows the file's values as the defaults.
"""

from __future__ import annotations

import difflib
import os
import textwrap
from pathlib import Path
from typing import Any

import typer


def _keys(param: Any) -> list[str]:
    """The names an option goes by in a config file: its long (else short) names without dashes,
    first the one :func:`defaults_yaml` writes, then the parameter's Python name."""
    long = [o.lstrip("-") for o in param.opts if o.startswith("--")] or [o.lstrip("-") for o in param.opts]
    return list(dict.fromkeys(long + [param.name, param.name.replace("_", "-")]))


def _options(command: Any) -> list:
    """A command's options (typer's click parameters whose kind is "option"), but --help."""
    return [p for p in command.params if p.param_type_name == "option" and p.name != "help"]


def load_config(path: Path, group: Any) -> dict[str, dict]:
    """Read ``path`` into click's ``default_map`` for ``group``: command -> {parameter name: value}.

    Raises ``typer.BadParameter`` naming the file and the key that is wrong.
    """
    import yaml

    def bad(msg: str) -> typer.BadParameter:
        return typer.BadParameter(f"{path}: {msg}", param_hint="'--config'")

    class UniqueKeys(yaml.SafeLoader):  # a key given twice is a mistake, not "the last one wins"
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            for i, k in enumerate(keys):
                if k in keys[:i]:
                    mark = node.value[i][0].start_mark
                    raise yaml.constructor.ConstructorError(None, None, f"{k!r} given twice", mark)
            return super().construct_mapping(node, deep)

    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeys)
    except OSError as e:
        raise bad(e.strerror or str(e)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        kind = "" if isinstance(e, yaml.constructor.ConstructorError) else "not YAML, "  # (a key given twice)
        raise bad(f"{kind}{where}{getattr(e, 'problem', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise bad("expected one section per command (scan:, train: ...), got a " + type(data).__name__)
    out = {}
    for name, section in data.items():
        command = group.commands.get(str(name))
        if command is None or name == "config":
            raise bad(f"no command {name!r}" + _suggest(str(name), [c for c in group.commands if c != "config"]))
        if section is None:
            continue
        if not isinstance(section, dict):
            raise bad(f"{name}: expected 'option: value' lines, got a {type(section).__name__}")
        by_key = {key: p for p in _options(command) for key in _keys(p)}
        values = {}
        for key, value in section.items():
            param = by_key.get(str(key))
            if param is None:
                hint = " (arguments go on the command line)" if any(str(key).replace("-", "_") == p.name
                                                                    for p in command.params) else ""
                raise bad(f"{name}: no option {key!r}{hint}" + _suggest(str(key), [_keys(p)[0] for p in
                                                                                  _options(command)]))
            if param.name in values:
                raise bad(f"{name}: {key!r} given twice (as {_keys(param)[0]!r} and {param.name!r})")
            if value is not None:
                try:  # converted here too, so that an error names the file, not an option nobody typed
                    converted = param.process_value(typer.Context(command), value)
                except typer.BadParameter as e:
                    raise bad(f"{name}: {key}: {e.message}") from None
                if isinstance(converted, Path) and isinstance(value, str):
                    value = os.path.expanduser(value)  # as the shell does on the command line
            values[param.name] = value
        out[str(name)] = values
    return out


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def defaults_yaml(group: Any, default_map: dict | None = None, commands: list[str] | None = None) -> str:
    """Every option of ``commands`` (default: all but ``config``) as a YAML config, each after its help
    as a comment; values from ``default_map`` where it has them, else the option's own default."""
    import yaml
    names = list(dict.fromkeys(commands or [c for c in group.commands if c != "config"]))
    lines = ["# shiftbench options, one section per command, each after its help. Edit, delete what you",
             "# keep at its default, and run: shiftbench --config FILE COMMAND ... (the command line wins).", ""]
    for name in names:
        lines.append(f"{name}:")
        for p in _options(group.commands[name]):
            value = (default_map or {}).get(name, {}).get(p.name, p.default)
            value = str(value) if isinstance(value, Path) else value
            lines += textwrap.wrap(" ".join((p.help or "").split()), 96, initial_indent="  # ",
                                   subsequent_indent="  # ")
            lines.append("  " + yaml.safe_dump({_keys(p)[0]: value}, default_flow_style=True, width=1000).strip()[1:-1])
        lines.append("")
    return "\n".join(lines)
