"""``shiftbench --config FILE``: options' defaults from YAML; ``shiftbench config``; the files in configs/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from shiftbench.cli.config import load_config
from shiftbench.cli.main import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUP = typer.main.get_command(app)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_keys_are_the_options_long_names(tmp_path):
    got = load_config(write(tmp_path, "scan:\n  fpr: 0.02\n  early-layers: false\n  json: true\n  index: flat\n"
                                      "  fail_on_shift: 0.3\n  k: 3\ncollect:\n  budget-fraction: 0.05\n"
                                      "train:\n"), GROUP)
    assert got == {"scan": {"fpr": 0.02, "layers": False, "json_out": True, "index_kind": "flat",
                            "fail_on_shift": 0.3, "k": 3},
                   "collect": {"budget_fraction": 0.05}}
    assert load_config(write(tmp_path, "# nothing set\n"), GROUP) == {}


@pytest.mark.parametrize("text, expected", [
    ("scan:\n  fpt: 0.02\n", "scan: no option 'fpt'; did you mean 'fpr'?"),
    ("scna:\n  fpr: 0.02\n", "no command 'scna'; did you mean 'scan'?"),
    ("config:\n  x: 1\n", "no command 'config'"),
    ("scan:\n  prod-dir: prod/\n", "no option 'prod-dir' (arguments go on the command line)"),
    ("scan:\n  json: true\n  json_out: false\n", "'json_out' given twice"),
    ("scan: 0.02\n", "scan: expected 'option: value' lines"),
    ("- scan\n", "expected one section per command"),
    ("scan: [1\n", "not YAML, line 2, column 1:"),
    ("scan:\n  fpr: 0.1\nscan:\n  k: 2\n", "line 3, column 1: 'scan' given twice"),
    ("scan:\n  fpr: 0.1\n  fpr: 0.2\n", "line 3, column 3: 'fpr' given twice"),
    ("scan:\n  fpr: often\n", "scan: fpr: Input should be a valid number"),
    ("scan:\n  batch-size: 0\n", "scan: batch-size: Input should be greater than or equal to 1"),
    ("scan:\n  explain: maybe\n", "scan: explain: Input should be a valid boolean"),
])
def test_a_wrong_file_is_a_usage_error(tmp_path, text, expected):
    res = invoke("--config", write(tmp_path, text), "config")
    assert res.exit_code == 2
    assert expected in " ".join(res.output.replace("│", " ").split()), res.output


def test_a_missing_file_is_a_usage_error(tmp_path):
    res = invoke("--config", tmp_path / "nope.yaml", "config")
    assert res.exit_code == 2 and "nope.yaml" in res.output


def test_config_sets_a_commands_defaults_and_the_command_line_wins(workspace, synth, tmp_path):
    cfg = write(tmp_path, f"scan:\n  workspace: {workspace}\n  fpr: 0.2\n  explain: false\n  report: false\n"
                          "  json: true\n  device: cpu\n  workers: 0\n  quiet: true\n")
    res = invoke("--config", cfg, "scan", synth / "prod", "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["fpr_target"] == 0.2 and summary["workspace"] == str(workspace.resolve())
    assert not (tmp_path / "a" / "report.html").exists() and res.stderr == ""
    res = invoke("--config", cfg, "scan", synth / "prod", "--out", tmp_path / "b", "--fpr", "0.1", "--report")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fpr_target"] == 0.1 and (tmp_path / "b" / "report.html").is_file()


def test_paths_in_the_file_expand_home_as_the_shell_does(tmp_path):
    got = load_config(write(tmp_path, "scan:\n  out: ~/scans\n  device: ~cpu\n  fail-on-shift: 0.1\n"), GROUP)
    assert got["scan"] == {"out": str(Path.home() / "scans"), "device": "~cpu", "fail_on_shift": 0.1}


def test_flags_set_in_the_file_can_be_turned_off_on_the_command_line(workspace, synth, tmp_path):
    cfg = write(tmp_path, f"scan:\n  workspace: {workspace}\n  json: true\n  quiet: true\n  explain: false\n"
                          "  report: false\n  device: cpu\n  workers: 0\n  fail-on-shift: auto\n")
    res = invoke("--config", cfg, "scan", synth / "prod", "--out", tmp_path / "a", "--no-json", "--no-quiet",
                 "--fail-on-shift", "off")
    assert res.exit_code == 0, res.output
    assert res.stdout == f"{tmp_path / 'a'}\n" and "flagged" in res.stderr


def test_config_prints_every_option_with_the_files_values(tmp_path):
    res = invoke("config")
    assert res.exit_code == 0
    every = yaml.safe_load(res.stdout)
    assert set(every) == set(GROUP.commands) - {"config"}
    assert every["scan"]["fpr"] == 0.05 and every["scan"]["early-layers"] is None and every["index"]["k"] == 1
    assert "  # Target false-alarm rate on in-distribution images.\n  fpr: 0.05\n" in res.stdout  # help, then value
    assert load_config(write(tmp_path, res.stdout), GROUP)  # what it prints is a valid config
    res = invoke("--config", write(tmp_path, "scan:\n  fpr: 0.01\n"), "config", "scan", "collect")
    assert res.exit_code == 0
    assert yaml.safe_load(res.stdout)["scan"]["fpr"] == 0.01 and set(yaml.safe_load(res.stdout)) == {"scan",
                                                                                                    "collect"}
    res = invoke("config", "scna")
    assert res.exit_code == 2 and "no command 'scna'" in res.output


def test_the_configs_folder():
    """Every file loads against the real commands, and defaults.yaml is what `shiftbench config`
    prints today (regenerate it with `shiftbench config > configs/defaults.yaml`)."""
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {"defaults.yaml", "retrain.yaml"}
    for f in files:
        load_config(f, GROUP)
    assert (CONFIGS / "defaults.yaml").read_text(encoding="utf-8") == invoke("config").stdout
    assert load_config(CONFIGS / "retrain.yaml", GROUP)["scan"]["fail_on_shift"] == "auto"
