"""shiftbench report: the HTML page of a scan (clusters with thumbnails, drift, flagged images, plan)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
from test_collect import _card, invoke, make_scan, standard_rows

import shiftbench
from shiftbench.images import InputError
from shiftbench.reports import html, write_report


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


def test_unreadable_moved_and_changed_images_do_not_stop_the_report(scan_dir):
    prod = Path(scan_dir).parent / "prod"
    (prod / "rot" / "0.png").unlink()  # moved since the scan
    page = write_report(scan_dir).read_text(encoding="utf-8")
    rows = _section(page, "Flagged images")
    assert re.search(r'<td></td>\s*<td>rot/0.png</td>', rows)  # listed, without a thumbnail
    assert "1 of 18 images could not be shown" in page  # 17 flagged and the one training image
    assert "broken.png" in _section(page, "Unreadable images")
    t = pd.read_csv(scan_dir / "images.csv")  # with the content hashes a scan records: a changed file is not shown
    t["sha"] = [hashlib.blake2b((prod / q).read_bytes(), digest_size=16).hexdigest()
                if (prod / q).is_file() else "" for q in t["path"]]
    t.loc[t["path"] == "dark/0.png", "sha"] = "0" * 32
    t.to_csv(scan_dir / "images.csv", index=False)
    page = write_report(scan_dir).read_text(encoding="utf-8")
    assert re.search(r'<td></td>\s*<td>dark/0.png</td>', page) and "2 of 18 images could not be shown" in page


def test_the_estimated_change_is_the_attributed_causes_only(tmp_path):
    """Every cause is tried, so every image has a how_<cause>: only the named causes' are shown."""
    rows = standard_rows()
    for r in rows:
        r["how_pipeline"], r["share_pipeline"] = "inverted", 0.0
    page = write_report(make_scan(tmp_path, rows, [_card(1, "angle", rows)])).read_text(encoding="utf-8")
    assert "inverted" not in page
    assert page.count("angle: rotate +") == 5 + 5  # the table and the card, once per rotated image


def test_python_api_twice_after_the_package_was_imported(scan_dir, tmp_path):
    import shiftbench.reports  # noqa: F401  (the CLI and the demo import it: the function must stay callable)
    for name in ("a", "b"):
        assert shiftbench.report(scan_dir, out=tmp_path / f"{name}.html") == tmp_path / f"{name}.html"
    assert write_report(scan_dir, out=tmp_path) == tmp_path / "report.html"  # a folder: report.html inside


def test_flagged_but_not_explained(tmp_path):
    rows = standard_rows()
    for r in rows:
        r.update(cause="none", cluster=-1)
    page = write_report(make_scan(tmp_path, rows, [])).read_text(encoding="utf-8")
    assert "<b>17 flagged</b>" in page and "not explained" in page and "No flagged images" not in page
    assert "<th>prediction</th>" not in page  # no model, no column


@pytest.mark.parametrize("case", ["no error column", "bank null", "card without cause", "error rate null",
                                  "duplicate rows", "text share", "change as text"])
def test_older_or_edited_scans_still_render(tmp_path, case):
    rows = standard_rows()
    cards = [_card(0, "lighting", rows), _card(1, "angle", rows, error_rate=0.5)]
    scan = make_scan(tmp_path, rows, cards)
    t = pd.read_csv(scan / "images.csv")
    summary = json.loads((scan / "summary.json").read_text())
    if case == "no error column":
        t = t.drop(columns="error")
    elif case == "bank null":
        summary["bank"] = None
    elif case == "card without cause":
        del summary["clusters"][0]["cause"]
    elif case == "error rate null":
        summary["clusters"][1]["error_rate"] = None
    elif case == "duplicate rows":
        t = pd.concat([t, t.iloc[[7]]])
    elif case == "text share":
        t["share_lighting"] = ["n/a" if i == 7 else 0.5 for i in range(len(t))]
    elif case == "change as text":
        summary["clusters"][0]["change"] = "darker"
    t.to_csv(scan / "images.csv", index=False)
    (scan / "summary.json").write_text(json.dumps(summary))
    page = write_report(scan).read_text(encoding="utf-8")
    assert "Cluster 1: angle" in page and ">nan<" not in page
    if case == "change as text":
        assert "<li>darker</li>" in page


def test_a_very_long_image_keeps_a_visible_thumbnail(tmp_path):
    rows = standard_rows()
    scan = make_scan(tmp_path, rows, [_card(0, "lighting", rows)])
    cv2.imwrite(str(tmp_path / "prod" / "dark" / "7.png"), np.full((16, 2000, 3), 90, np.uint8))
    page = write_report(scan).read_text(encoding="utf-8")
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)" alt="dark/7.png"', page).group(1)
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape[1] == html.THUMB and thumb.shape[0] == html.THUMB // html.MAX_ASPECT


def test_long_lists_are_cut_and_say_so(scan_dir, monkeypatch):
    monkeypatch.setattr(html, "MAX_ROWS", 5)
    page = write_report(scan_dir).read_text(encoding="utf-8")
    assert "(the 5 most unusual of 17; all in images.csv)" in page
    assert _section(page, "Flagged images").count("<tr>") == 1 + 5


def test_a_report_that_fails_leaves_the_scans_status_and_stdout(scan_dir, monkeypatch):
    summary = {"counts": {"images": 24, "ok": 23, "unreadable": 1, "flagged": 17}, "share_flagged": 17 / 23,
               "shift_test": {"expected_false_alarms": 1.2, "false_alarm_range_95": [0, 4], "excess_flagged": 16,
                              "p_value": 1e-9},
               "drift": [], "clusters": [], "unreadable": []}
    import shiftbench.api
    monkeypatch.setattr(shiftbench.api, "scan", lambda *a, **k: SimpleNamespace(summary=summary, out_dir=scan_dir))

    def broken(*a, **k):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(shiftbench.reports, "write_report", broken)  # what scan's CLI calls
    r = invoke("scan", scan_dir, "--fail-on-shift", 0.5)
    assert r.exit_code == 1 and r.stdout == f"{scan_dir}\n"
    assert "report.html not written (RuntimeError: disk on fire)" in r.stderr


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
    # another scan written into the same folder: the plan was for the earlier one
    summary = json.loads((scan_dir / "summary.json").read_text())
    (scan_dir / "summary.json").write_text(json.dumps({**summary, "created": "2099-01-01T00:00:00+00:00"}))
    assert "What to collect" not in write_report(scan_dir).read_text(encoding="utf-8")


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



def test_out_may_name_a_new_folder_or_a_file(scan_dir, tmp_path):
    assert write_report(scan_dir, out=f"{tmp_path}/new/x/") == tmp_path / "new" / "x" / "report.html"
    assert write_report(scan_dir, out=tmp_path / "pages") == tmp_path / "pages" / "report.html"
    assert write_report(scan_dir, out=tmp_path / "mine.html") == tmp_path / "mine.html"
    assert (tmp_path / "mine.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    (tmp_path / "plain").write_text("old")  # an existing file without a suffix is the file to replace
    assert write_report(scan_dir, out=tmp_path / "plain") == tmp_path / "plain"
