"""The end-to-end demo (slow: trains twice; run with ``python -m pytest -m slow``)."""

from __future__ import annotations

import pytest

from shiftbench.demo import run_demo


@pytest.mark.slow
def test_demo_finds_the_three_drifts(tmp_path):
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", n_train=30, n_prod=20, epochs=4, device="cpu", log=lines.append)
    table = result["stations"].set_index("station")
    assert list(table.index) == ["station1", "station2", "station3", "station4"]
    drifted = table[table["drift"] != "none"]
    assert (drifted["cause found"] == drifted["drift"]).all(), table
    text = "\n".join(lines)
    for cmd in ["$ shiftbench train", "$ shiftbench scan", "$ shiftbench collect", "$ shiftbench finetune"]:
        assert cmd in text
    assert (tmp_path / "demo" / "model-finetuned" / "model_card.md").is_file()
