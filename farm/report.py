"""What a run hands back: ``report.json``, ``report.csv``, ``report.html`` and a terminal summary.

``report.json`` holds the job (preset, catalog, start and finish, backend,
cluster), the totals, and per track the whole :class:`~farm.records.TrackResult`
plus its verdict. ``report.csv`` is one flat row per track with the columns a
mastering engineer sorts by (:data:`CSV_COLUMNS`), UTF-8, safe to open in a
spreadsheet (text cells that would start a formula are quoted with ``'``).
``report.html`` (:mod:`farm.report_html`) is the same catalog as a sortable
table in colour with each track's before/after plots, self-contained (it
opens from disk), drawn from the plot data the workers wrote
(:mod:`farm.plots`); the plots are also written as PNGs under
``report/png/``. All are written to a temporary name and renamed, so a
reader never sees a half-written report.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import io
import json
import math
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .audio import publish_mode
from .records import TrackResult

REPORT_JSON, REPORT_CSV = "report.json", "report.csv"
REPORT_VERSION = 1
# Exit codes, the same numbers as farm.cli.ExitStatus SUCCESS / INPUT_ERROR ("at
# least one input could not be processed; the rest were"); 1 stays "unexpected error".
EXIT_OK, EXIT_FAILED = 0, 3
VERDICT_PASS, VERDICT_FAIL = "pass", "FAIL"

# (column, where it comes from) for report.csv; measurements are the render's keys.
_MEASURES = (("lufs", "integrated_lufs"), ("true_peak_dbtp", "true_peak_dbtp"), ("lra_lu", "loudness_range_lu"))
_TIMINGS = ("decode", "chain", "encode", "validate", "total")
CSV_COLUMNS = (
    "row", "title", "source", "output", "verdict", "reason", "preset",
    *(f"in_{c}" for c, _ in _MEASURES), *(f"out_{c}" for c, _ in _MEASURES), "out_pyloudnorm_lufs",
    "gain_db", "max_gain_reduction_db", "failed_checks",
    "sample_rate", "bit_depth", "channels", "duration_s", "format",
    "backend", "worker", *(f"{t}_s" for t in _TIMINGS),
)


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    json: str
    csv: str
    html: str | None = None  # None when write_reports(..., html=False)
    pngs: tuple[str, ...] = ()  # the per-track plot PNGs (report/png/)


def verdict(result: TrackResult) -> str:
    return VERDICT_PASS if result.ok else VERDICT_FAIL


def exit_code(results: Iterable[TrackResult]) -> int:
    """0 only if every track passed (an empty catalog passes), else :data:`EXIT_FAILED`."""
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def totals(results: Sequence[TrackResult]) -> dict[str, Any]:
    passed = sum(1 for r in results if r.ok)
    audio_s = sum(_num(r.result.get("duration_s")) or 0.0 for r in results if r.ok)
    render_s = sum(_num(r.timings.get("total")) or 0.0 for r in results)
    return {"tracks": len(results), "passed": passed, "failed": len(results) - passed,
            "audio_seconds": round(audio_s, 3), "render_seconds": round(render_s, 3)}


def report_document(results: Sequence[TrackResult], job_info: Mapping[str, Any] | None = None, *,
                    titles: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The report.json document (plain JSON types only)."""
    job = {k: _jsonable(v) for k, v in (job_info or {}).items()}
    for key in ("started", "finished"):
        if key in (job_info or {}):
            job[key] = _iso(job_info[key])
    t0, t1 = _epoch((job_info or {}).get("started")), _epoch((job_info or {}).get("finished"))
    tot = totals(results)
    if t0 is not None and t1 is not None:
        tot["wall_seconds"] = round(t1 - t0, 3)
        if t1 > t0 and tot["audio_seconds"]:
            tot["realtime_factor"] = round(tot["audio_seconds"] / (t1 - t0), 2)
    tracks = [{"verdict": verdict(r), "title": _title(r, titles), **_jsonable(r.to_dict())} for r in results]
    return {"version": REPORT_VERSION, "job": job, "totals": tot, "tracks": tracks}


def csv_rows(results: Iterable[TrackResult], *, titles: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "row": r.row, "title": _title(r, titles), "source": r.source, "output": r.output or "",
            "verdict": verdict(r), "reason": r.reason, "preset": r.preset,
            "out_pyloudnorm_lufs": _num(r.result.get("pyloudnorm_lufs")),
            "gain_db": _num(r.gain_db), "max_gain_reduction_db": _num(r.max_gain_reduction_db),
            "failed_checks": " ".join(sorted(k for k, ok in r.checks.items() if not ok)),
            "backend": r.backend, "worker": r.worker,
        }
        for col, key in _MEASURES:
            row[f"in_{col}"] = _num(r.input.get(key))
            row[f"out_{col}"] = _num(r.result.get(key))
        for key in ("sample_rate", "bit_depth", "channels", "duration_s", "format"):
            row[key] = r.result.get(key, "")
        for t in _TIMINGS:
            row[f"{t}_s"] = _num(r.timings.get(t))
        rows.append({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return rows


def write_reports(results: Sequence[TrackResult], out_dir: str, job_info: Mapping[str, Any] | None = None, *,
                  titles: Mapping[int, str] | None = None, html: bool = True) -> ReportPaths:
    """Write ``report.json``, ``report.csv`` and (``html``) ``report.html`` with
    its PNGs into ``out_dir`` (atomically); return their paths.

    ``job_info``: preset, catalog, started/finished (unix seconds, datetimes or
    ISO strings), backend, cluster (a dict or anything with ``to_dict()``), ...
    ``titles``: catalog row -> title, for the ``title`` column.
    """
    results = sorted(results, key=lambda r: r.row)
    os.makedirs(out_dir, exist_ok=True)
    doc = report_document(results, job_info, titles=titles)
    json_path = os.path.join(out_dir, REPORT_JSON)
    atomic_write(json_path, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\r\n")  # RFC 4180 line ends
    writer.writeheader()
    for row in csv_rows(results, titles=titles):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    csv_path = os.path.join(out_dir, REPORT_CSV)
    atomic_write(csv_path, buf.getvalue())
    if not html:
        return ReportPaths(json=json_path, csv=csv_path)
    from .report_html import write_html

    html_path, pngs = write_html(results, out_dir, doc, titles=titles)
    return ReportPaths(json=json_path, csv=csv_path, html=html_path, pngs=tuple(pngs))


def summary_table(results: Sequence[TrackResult], *, titles: Mapping[int, str] | None = None,
                  width: int | None = None) -> str:
    """An aligned table for the terminal, one line per track, and a totals line.

    ``width`` (default: the terminal's) bounds each line; the reason column
    takes what is left and is truncated with ``...``.
    """
    results = sorted(results, key=lambda r: r.row)
    width = width or shutil.get_terminal_size((120, 24)).columns
    head = ("row", "track", "in LUFS", "out LUFS", "TP dBTP", "LRA", "GR dB", "verdict", "reason")
    body = []
    for r in results:
        reason = r.reason
        if reason.startswith(r.source + ": "):  # the file is already in the track column
            reason = reason[len(r.source) + 2:]
        body.append((str(r.row), _title(r, titles) or os.path.basename(r.source),
                     _fmt(r.input.get("integrated_lufs")), _fmt(r.result.get("integrated_lufs")),
                     _fmt(r.result.get("true_peak_dbtp")), _fmt(r.result.get("loudness_range_lu")),
                     _fmt(r.max_gain_reduction_db), verdict(r), reason))
    widths = [max([_width(h)] + [_width(b[i]) for b in body]) for i, h in enumerate(head)]
    widths[1] = min(widths[1], 32)
    fixed = sum(widths[:-1]) + 2 * (len(head) - 1)
    widths[-1] = max(20, min(widths[-1], width - fixed))
    right = {0, 2, 3, 4, 5, 6}  # numbers align right

    def line(cells) -> str:
        out = [_fit(c, w, right=i in right) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    lines = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    tot = totals(results)
    summary = f"{tot['tracks']} tracks: {tot['passed']} passed, {tot['failed']} failed"
    if tot["audio_seconds"]:
        summary += f" ({_clock(tot['audio_seconds'])} of audio mastered)"
    return "\n".join(lines + [summary])


# ---------------------------------------------------------------- helpers

def _title(r: TrackResult, titles: Mapping[int, str] | None) -> str:
    return str((titles or {}).get(r.row, "") or "")


def _num(v) -> float | int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return v if math.isfinite(v) else None
    return None


def _fmt(v) -> str:
    n = _num(v)
    return "-" if n is None else f"{n:.1f}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(s: str) -> int:
    """Terminal cells taken by ``s`` (wide CJK characters take two)."""
    return sum(_char_width(c) for c in s)


def _fit(s: str, w: int, *, right: bool = False) -> str:
    s = " ".join(s.split())  # newlines or tabs in a reason would break the table
    if _width(s) > w:
        out, used = [], 0
        for ch in s:
            cw = _char_width(ch)
            if used + cw > w - 3:
                break
            out.append(ch)
            used += cw
        s = "".join(out) + "." * min(3, w - used)
    pad = " " * (w - _width(s))
    return pad + s if right else s + pad


def _cell(v):
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV injection)."""
    if isinstance(v, str) and v and v[0] in "=+-@\t\r":
        return "'" + v
    return v


def _jsonable(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if hasattr(v, "to_dict") and callable(v.to_dict):
        return _jsonable(v.to_dict())
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "item"):  # NumPy scalars
        return _jsonable(v.item())
    return str(v)


def _epoch(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dt.datetime):
        return v.timestamp()
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(v).timestamp()
    return None


def _iso(v):
    t = _epoch(v)
    if t is None:
        return _jsonable(v)
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` under a temporary name, then rename:
    a reader sees the old file or the whole new one, never a part."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
