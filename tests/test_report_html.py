"""report.html in a real browser: headless Chromium (Debian's ``chromium``).

A small catalog (two good tracks, one whose master fails its loudness target
and still has plots, one missing file with none) goes through the real
worker render (:func:`farm.render.render_track`, which writes the plot data)
and the client's :func:`farm.report.write_reports`. Then Chromium opens the
file from disk: screenshots of the table and of a track's page must not be
blank, and the DOM after the scripts ran must show the table with one row
per track, every track's plots decoded (``<img>`` complete with a width, as
the page's own check records on ``<html>``), no script or resource errors
and nothing on the console. A copy of the page with a broken image proves
the check can fail.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from farm import synth
from farm.records import STATUS_FAILED, STATUS_OK
from farm.render import render_track
from farm.report import write_reports
from test_render import tasks_for, write_audio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's headless browser: apt-get install chromium (.ci/run installs it)")
BROWSER_TIMEOUT_S = 120
RATE = 48000


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"  # its own profile: runs in parallel never share a lock
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to the console (and uncaught errors): Chromium logs them as CONSOLE."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


def html_attrs(dom: str) -> dict[str, str]:
    m = re.search(r"<html\b([^>]*)>", dom)
    assert m, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))


def dump_dom(tmp_path, url: str) -> tuple[str, subprocess.CompletedProcess]:
    # --virtual-time-budget lets the load event (and the page's self-check) run before the dump
    p = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", url)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p


def screenshot(tmp_path, url: str, name: str) -> np.ndarray:
    path = tmp_path / name
    p = chromium(tmp_path, f"--screenshot={path}", "--window-size=1400,2000", "--virtual-time-budget=10000", url)
    assert p.returncode == 0 and path.is_file(), p.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.shape[:2] == (2000, 1400)
    assert not console_lines(p.stderr), console_lines(p.stderr)
    return img


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalog")
    write_audio(folder / "a.wav", synth.music(6.0, RATE, 2, seed=1, peak_dbfs=-8.0), RATE, "PCM_24")
    write_audio(folder / "b.flac", synth.music(5.0, 44100, 2, seed=2, peak_dbfs=-1.0), 44100, "PCM_16")
    write_audio(folder / "hot.wav", synth.music(4.0, RATE, 2, seed=5, peak_dbfs=-1.0), RATE, "PCM_24")
    rows = [{"file": "a.wav", "title": "Alpha"}, {"file": "b.flac", "title": "Beta <&> \"quoted\""},
            {"file": "hot.wav", "title": "Too Hot", "target_lufs": "-5"},
            {"file": "missing.wav", "title": "Gone"}]
    tasks = tasks_for(folder, rows, overrides={"loudness": {"max_gain_reduction_db": 1.0}})
    results = [render_track(t) for t in tasks]
    assert [r.status for r in results] == [STATUS_OK, STATUS_OK, STATUS_FAILED, STATUS_FAILED], \
        [r.reason for r in results]
    out = os.path.dirname(tasks[0].out_path)
    titles = {i + 1: r["title"] for i, r in enumerate(rows)}
    paths = write_reports(results, out, {"preset": "streaming", "catalog": str(folder / "catalog.csv")},
                          titles=titles)
    return results, paths, tmp_path_factory.mktemp("browser")


def test_report_files_and_pngs(report):
    results, paths, _ = report
    with_data = [r for r in results if r.plot_data]
    assert [r.row for r in with_data] == [1, 2, 3]  # the failed master too; the missing file has none
    assert len(paths.pngs) == 3 and all(p.endswith(".png") and os.path.getsize(p) > 10_000 for p in paths.pngs)
    assert all(os.path.dirname(p).endswith(os.path.join("report", "png")) for p in paths.pngs)
    with open(paths.html, encoding="utf-8") as f:
        page = f.read()
    assert 'src="file:' not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count('src="data:image/png;base64,') == 3


def test_table_and_every_tracks_plots_load_in_chromium(report):
    results, paths, browser = report
    dom, p = dump_dom(browser, "file://" + paths.html)
    attrs = html_attrs(dom)
    assert attrs.get("data-checked") == "1", attrs  # the page's load-time check ran
    assert attrs["data-errors"] == "", attrs["data-errors"]
    assert attrs["data-table-rows"] == str(len(results))
    assert attrs["data-images"] == "3" and attrs["data-broken-images"] == "0", attrs
    assert not console_lines(p.stderr), console_lines(p.stderr)
    assert dom.count('<tr class="pass"') == 2 and dom.count('<tr class="fail"') == 2
    for r in results:  # every row links to its track's page, which exists
        assert f'href="#track-{r.row}"' in dom and f'id="track-{r.row}"' in dom
    assert "Beta &lt;&amp;&gt;" in dom and "no plot data" in dom


def test_screenshots_are_not_blank(report):
    _, paths, browser = report
    table = screenshot(browser, "file://" + paths.html, "report-table.png")
    track = screenshot(browser, "file://" + paths.html + "#track-3", "report-track-3.png")
    for img in (table, track):
        grey = img[..., :3].mean(axis=-1)
        assert grey.std() > 0.05, grey.std()  # not one flat colour
    # the track page shows its plots: far more ink than the table page alone
    assert (track[..., :3].mean(axis=-1) < 0.9).mean() > 1.5 * (table[..., :3].mean(axis=-1) < 0.9).mean()
    red = (table[..., 0] > 0.9) & (table[..., 1] < 0.9) & (table[..., 2] < 0.9)
    green = (table[..., 1] > 0.9) & (table[..., 0] < 0.9)
    assert red.sum() > 500 and green.sum() > 500  # the verdict colours are painted


def test_the_check_catches_a_broken_image_and_a_script_error(report):
    _, paths, browser = report
    with open(paths.html, encoding="utf-8") as f:
        page = f.read()
    page = page.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1)
    page = page.replace("</body>", "<script>undefinedFunction();</script></body>")
    bad = browser / "broken.html"
    bad.write_text(page, encoding="utf-8")
    dom, p = dump_dom(browser, "file://" + str(bad))
    attrs = html_attrs(dom)
    assert attrs["data-broken-images"] == "1"
    assert "undefinedFunction" in attrs["data-errors"]
    assert any("undefinedFunction" in line for line in console_lines(p.stderr))


def test_several_deliverables_of_one_row_get_their_own_pages(report, tmp_path):
    """A job with several presets: one row, one deliverable per preset subfolder."""
    import dataclasses

    results, _, _ = report
    good = results[0]
    out = tmp_path / "out"
    both = []
    for preset in ("streaming", "ebu-r128"):
        folder = out / preset
        (folder / "report" / "data").mkdir(parents=True)
        src = os.path.join(os.path.dirname(good.output), *good.plot_data.split("/"))
        shutil.copy(src, folder / "report" / "data" / os.path.basename(src))
        both.append(dataclasses.replace(good, preset=preset, output=str(folder / os.path.basename(good.output))))
    both.append(dataclasses.replace(results[2], row=2))  # failed, no master: found under out/<preset>/ ...
    shutil.copy(os.path.join(os.path.dirname(good.output), *results[2].plot_data.split("/")),
                out / "streaming" / "report" / "data")
    paths = write_reports(both, str(out), {})
    assert len(paths.pngs) == 3
    assert {os.path.relpath(p, out).split(os.sep)[0] for p in paths.pngs} == {"streaming", "ebu-r128"}
    with open(paths.html, encoding="utf-8") as f:
        page = f.read()
    for anchor in ("track-1-streaming", "track-1-ebu-r128", "track-2"):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
