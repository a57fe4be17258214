"""report.json / report.csv / the terminal summary / the exit code."""
from __future__ import annotations

import csv
import json
import os

import pytest

from farm.records import STATUS_FAILED, STATUS_OK, TrackResult
from farm.report import (CSV_COLUMNS, EXIT_FAILED, EXIT_OK, exit_code, summary_table, write_reports)
from farm.report import _width


def ok(row, source, out_lufs=-14.02, **kw):
    return TrackResult(
        row=row, source=source, status=STATUS_OK, output=source.replace(".wav", ".flac"), preset="streaming",
        input={"integrated_lufs": -20.51, "true_peak_dbtp": -3.2, "loudness_range_lu": 7.4},
        result={"integrated_lufs": out_lufs, "true_peak_dbtp": -1.04, "loudness_range_lu": 6.9,
                "pyloudnorm_lufs": -14.0, "sample_rate": 48000, "bit_depth": 24, "channels": 2,
                "duration_s": 90.0, "format": "flac"},
        gain_db=6.5, max_gain_reduction_db=2.31, checks={"loudness": True, "true_peak": True},
        timings={"decode": 0.1, "chain": 1.2, "encode": 0.3, "validate": 0.4, "total": 2.0},
        worker="tcp://127.0.0.1:1234", backend="cpu", **kw)


def bad(row, source, reason):
    return TrackResult(row=row, source=source, status=STATUS_FAILED, reason=f"{source}: {reason}",
                       preset="streaming", checks={"true_peak": False})


def catalog():
    return [ok(2, "/in/b.wav"), bad(3, "/in/c.wav", "cannot decode: not an audio file"), ok(1, "/in/a.wav")]


def test_reports_written_atomically_with_job_totals_and_tracks(tmp_path):
    (tmp_path / "report.json").write_text("old")  # replaced, not appended to
    cluster = type("Info", (), {"to_dict": lambda self: {"n_workers": 2, "address": "tcp://127.0.0.1:1"}})()
    job = {"preset": "streaming", "catalog": "/in/catalog.csv", "started": 1_700_000_000.0,
           "finished": 1_700_000_010.0, "backend": "cpu", "cluster": cluster, "weird": float("nan")}
    paths = write_reports(catalog(), str(tmp_path), job, titles={1: "Alpha", 2: "Beta"})
    assert sorted(os.listdir(tmp_path)) == ["report.csv", "report.html", "report.json"]  # no temporaries left
    assert paths.html == str(tmp_path / "report.html") and paths.pngs == ()  # no plot data: no PNGs
    doc = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert doc["job"]["preset"] == "streaming" and doc["job"]["cluster"]["n_workers"] == 2
    assert doc["job"]["started"] == "2023-11-14T22:13:20+00:00" and doc["job"]["weird"] is None
    assert doc["totals"] == {"tracks": 3, "passed": 2, "failed": 1, "audio_seconds": 180.0,
                             "render_seconds": 4.0, "wall_seconds": 10.0, "realtime_factor": 18.0}
    tracks = doc["tracks"]
    assert [t["row"] for t in tracks] == [1, 2, 3]  # catalog order, whatever order they came in
    assert tracks[0]["title"] == "Alpha" and tracks[0]["verdict"] == "pass"
    assert tracks[0]["result"]["integrated_lufs"] == -14.02 and tracks[0]["max_gain_reduction_db"] == 2.31
    assert tracks[2]["verdict"] == "FAIL" and tracks[2]["reason"].startswith("/in/c.wav: cannot decode")
    assert tracks[0]["timings"]["total"] == 2.0
    assert TrackResult.from_dict({k: v for k, v in tracks[0].items() if k not in ("verdict", "title")}) \
        == sorted(catalog(), key=lambda r: r.row)[0]  # the record itself, round-trippable


def test_csv_is_flat_one_row_per_track(tmp_path):
    paths = write_reports(catalog(), str(tmp_path), {}, titles={1: "=HYPERLINK(\"http://x\")"})
    with open(paths.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["row"] for r in rows] == ["1", "2", "3"]
    a, _, c = rows
    assert a["title"] == "'=HYPERLINK(\"http://x\")"  # a spreadsheet shows it, never runs it
    assert float(a["in_lufs"]) == -20.51 and float(a["out_lufs"]) == -14.02
    assert float(a["out_true_peak_dbtp"]) == -1.04 and float(a["out_lra_lu"]) == 6.9
    assert float(a["max_gain_reduction_db"]) == 2.31 and a["verdict"] == "pass"
    assert a["sample_rate"] == "48000" and float(a["total_s"]) == 2.0
    assert c["verdict"] == "FAIL" and c["failed_checks"] == "true_peak" and c["out_lufs"] == ""


def test_summary_table_aligned_truncated_and_totalled():
    results = catalog() + [bad(4, "/in/d.wav", "x" * 300), ok(5, "/in/e.wav", out_lufs=-9.5)]
    text = summary_table(results, titles={1: "東京 Nights", 2: "Beta"}, width=100)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["row", "track", "in", "LUFS"]
    assert all(_width(line) <= 100 for line in lines)
    body = lines[2:-1]
    assert [line.split()[0] for line in body] == ["1", "2", "3", "4", "5"]
    # The "out LUFS" column ends where its header ends (display cells: CJK counts double).
    end = _width(lines[0][:lines[0].index("out LUFS") + len("out LUFS")])
    for line, want in zip(body, ["-14.0", "-14.0", "-", "-", "-9.5"]):
        assert _first_cells(line, end).endswith(" " + want), (line, want)
    assert "東京 Nights" in body[0] and "c.wav" in body[2]
    assert "cannot decode: not an audio file" in body[2] and "/in/c.wav:" not in body[2]
    assert body[3].endswith("...")
    assert lines[-1] == "5 tracks: 3 passed, 2 failed (4:30 of audio mastered)"


def _first_cells(line: str, cells: int) -> str:
    """The prefix of ``line`` that takes ``cells`` terminal cells."""
    out = ""
    for ch in line:
        if _width(out + ch) > cells:
            break
        out += ch
    return out


def test_exit_code_is_zero_only_when_every_track_passed():
    assert exit_code([ok(1, "/a.wav"), ok(2, "/b.wav")]) == EXIT_OK == 0
    assert exit_code(catalog()) == EXIT_FAILED != 0
    assert exit_code([]) == EXIT_OK


def test_exit_codes_match_the_cli():
    cli = pytest.importorskip("farm.cli")
    assert EXIT_OK == cli.ExitStatus.SUCCESS and EXIT_FAILED == cli.ExitStatus.INPUT_ERROR
