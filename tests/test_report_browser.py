"""report.html opened in a real headless Chromium: it renders (non-blank screenshot), its table has one
row per run, and the sort script works (the #sort= link orders the rows)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require_binary
from PIL import Image
from test_analysis import SPECS, write_store

pytestmark = pytest.mark.system  # needs Chromium: `make test-system` (make system-deps installs it)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    browser = require_binary("chromium", "/usr/bin/chromium", install="make system-deps")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    r = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from analysis.analyse import analyse

    root = tmp_path_factory.mktemp("browser")
    sweeps = write_store(root / "store")
    res = analyse([sweeps["sweepA"], sweeps["sweepB"]], root / "out")
    return res["files"]["report.html"]


def test_report_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        px = np.asarray(im.convert("L"), dtype=float)
    assert px.std() > 20, f"screenshot looks blank (pixel std {px.std():.1f})"
    assert (px < 128).mean() > 0.01, "almost no dark pixels: nothing rendered"


def test_report_table_rows_equal_runs_and_sorts(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    rows = re.findall(r'<tr class="run (\w+)" id="([^"]+)">', dom)
    assert len(rows) == len(SPECS)
    assert sorted(s for s, _ in rows) == sorted(s[7] for s in SPECS)
    assert 'src="http' not in dom and "data:" not in dom  # no network; images are files beside it
    assert re.findall(r'<img alt="[^"]*" loading="lazy" src="tradeoff.png">', dom)

    def image_sims(dom: str) -> list[float]:
        tbody = dom[dom.index('<table class="sortable" id="runs">') :]
        tbody = tbody[: tbody.index("</table>")]
        vals = []
        for tr in re.findall(r'<tr class="run \w+".*?</tr>', tbody, flags=re.S):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, flags=re.S)
            vals.append(float(cells[4].split()[0]) if cells[4] else np.nan)
        return vals

    # the page's own JS sorts when opened as report.html#sort=<header>; empty cells go last
    for suffix, desc in (("", False), ("&desc", True)):
        sorted_dom = chromium(tmp_path, "--dump-dom", report.as_uri() + "#sort=image%20sim." + suffix).stdout
        vals = image_sims(sorted_dom)
        done = [v for v in vals if not np.isnan(v)]
        assert len(done) == sum(s[7] == "completed" for s in SPECS)
        assert done == sorted(done, reverse=desc)
        assert all(np.isnan(v) for v in vals[len(done) :])
    assert image_sims(dom) != image_sims(sorted_dom)  # the unsorted page really was in another order
