"""shiftbench report: the HTML page of a scan (clusters with thumbnails, drift, flagged images, plan)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_collect import _card, invoke, make_scan, standard_rows

import shiftbench
from shiftbench.images import InputError
from shiftbench.report import write_report


def _thumbs(html: str) -> list[str]:
    return re.findall(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', html)


def _section(html: str, title: str) -> str:
    start = html.index(f"<h2>{title}")
    end = html.find("<h2>", start + 4)
    return html[start:end if end > 0 else None]


@pytest.fixture
def scan_dir(tmp_path) -> Path:
    rows = standard_rows()
    cards = [_card(0, "lighting", rows), _card(1, "angle", rows), _card(2, "resolution", rows)]
    cards[0]["change"] = ["median brightness 50% below training (0.25 vs 0.5)"]
    train = tmp_path / "train"
    train.mkdir()
    cv2.imwrite(str(train / "t0.png"), np.full((40, 40, 3), 200, np.uint8))
    for r in rows:
        r["nearest_train"] = "t0.png"
    return make_scan(tmp_path, rows, cards)


def test_report_shows_each_cluster_beside_its_nearest_training_image(scan_dir):
    path = write_report(scan_dir)
    assert path == scan_dir / "report.html"
    html = path.read_text(encoding="utf-8")
    clusters = _section(html, "Failure clusters")
    for cid, cause, n in [(0, "lighting", 8), (1, "angle", 5), (2, "resolution", 4)]:
        assert f"Cluster {cid}: {cause}</span>, {n} images" in clusters
    assert "median brightness 50% below training" in clusters
    # 6 images shown for the 8 dark ones (the cap), all 5 rotated, all 4 blurred: each with its neighbour
    assert len(_thumbs(clusters)) == 2 * (6 + 5 + 4)
    assert clusters.count('title="nearest training image: t0.png"') == 6 + 5 + 4
    assert "rotate +15 (conf 0.50) zoom 1.00" in clusters  # the estimated change under each image
    table = _section(html, "Flagged images")
    assert table.count("<tr>") == 1 + 17  # header + every flagged image, none of the clean ones
    assert "clean/" not in table
    assert table.index("dark/7.png") < table.index("dark/0.png") < table.index("rot/0.png")  # most unusual first


def test_thumbnails_are_capped_but_rows_are_not(scan_dir):
    html = write_report(scan_dir, max_images=3).read_text(encoding="utf-8")
    table = _section(html, "Flagged images")
    assert len(_thumbs(table)) == 3
    assert table.count("<tr>") == 1 + 17


def test_unreadable_and_moved_images_do_not_stop_the_report(scan_dir):
    (Path(scan_dir).parent / "prod" / "rot" / "0.png").unlink()  # moved since the scan
    html = write_report(scan_dir).read_text(encoding="utf-8")
    assert "rot/0.png" in _section(html, "Flagged images")
    assert "broken.png" in _section(html, "Unreadable images")


def test_names_are_escaped(tmp_path):
    rows = standard_rows()
    rows[6]["path"] = "dark/<b>x</b>.png"
    html = write_report(make_scan(tmp_path, rows, [_card(0, "lighting", rows)])).read_text(encoding="utf-8")
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;.png" in html


def test_collect_plan_is_included_once_collect_ran(scan_dir):
    assert "What to collect" not in write_report(scan_dir).read_text(encoding="utf-8")
    shiftbench.collect(scan_dir, budget=6)
    html = write_report(scan_dir).read_text(encoding="utf-8")
    plan = _section(html, "What to collect")
    assert "6 images selected to label" in plan and plan.count("<tr>") == 1 + 3


def test_not_a_scan_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a scan folder"):
        write_report(tmp_path)
    r = invoke("report", tmp_path)
    assert r.exit_code == 2 and "not a scan folder" in r.output


def test_cli_prints_the_page(scan_dir, tmp_path):
    r = invoke("report", scan_dir, "--out", tmp_path / "page.html")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(tmp_path / "page.html")
    assert (tmp_path / "page.html").read_text(encoding="utf-8").startswith("<!doctype html>")

