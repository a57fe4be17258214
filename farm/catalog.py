"""Catalogs: the spreadsheet of tracks a label hands over, validated up front.

:func:`load_catalog` reads a CSV (UTF-8, with or without the BOM Excel
writes; comma, semicolon or tab separated) or a JSON file (a list of
objects, or ``{"tracks": [...]}``) into validated
:class:`~farm.records.TrackSpec` rows.

An Excel ``sep=;`` first line is honoured. Columns (headers are case-insensitive; spaces, dashes and surrounding
whitespace do not matter; aliases in brackets):

=================  ============================================================
``file``           the input audio [path, filename, file_name, file_path,
                   filepath, source]; required. Relative paths resolve
                   against the catalog file's folder; ``~`` expands.
``title`` ...      metadata, one column per :data:`~farm.records.TAG_FIELDS`:
                   title, artist, album, album_artist [album artist,
                   albumartist], date [year, release_date], genre, isrc,
                   track_number [track, tracknumber, track_no], disc_number
                   [disc, discnumber, disc_no, disk], composer, label
                   [publisher, record_label], copyright
``preset``         per-track preset (a name, or a .toml path relative to the
                   catalog's folder)
``target_lufs``    per-track loudness target [target, target_loudness,
                   loudness, lufs]
``reference``      per-track reference master for matching (a path relative
                   to the catalog's folder) [reference_file, ref]; turns the
                   preset's ``[match]`` on for that track
=================  ============================================================

Values are normalised: ISRC to its 12-character upper-case form without
dashes (``usab12000001``); date to ``YYYY`` or ``YYYY-MM-DD`` (checked
against the calendar); track and disc numbers to ``"3"`` or ``"3/12"``
(leading zeros dropped); text to Unicode NFC with surrounding whitespace
removed. Empty cells mean "no such tag".

Policies (decided here, see the report of issue 3):

* **Metadata problems are config errors.** A bad ISRC, date, track number,
  target or unknown preset, a missing ``file`` cell, a duplicate file, an
  unknown column: every such problem in the whole catalog is collected into
  one :class:`~farm.errors.ConfigError` raised before anything renders.
* **Audio problems fail alone.** A file that does not exist or cannot be
  read is *not* a config error: the row loads, and the render reports that
  one track as failed with a reason naming the file while the rest of the
  catalog renders (DESIGN: bad input fails alone). :func:`check_sources`
  tells a caller about such rows up front (for a warning, or for a strict
  mode: ``load_catalog(path, require_files=True)`` makes them config errors).
* **Unknown columns are errors** (with a did-you-mean), because a typo
  such as ``ISCR`` would otherwise silently drop metadata from every master.
  Spreadsheets do carry working columns, so a column whose header starts
  with ``_`` or ``#`` (``_notes``, ``# comment``) is ignored on purpose, and
  so is a column with neither header nor values.
* **The same file twice is an error** (compared after resolving the path):
  two masters from one input in one job is almost always a copy-paste slip.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import presets as _presets
from .errors import ConfigError, Problems, did_you_mean, display_path
from .records import TAG_FIELDS, TrackSpec

SOURCE = "file"
OVERRIDE_FIELDS = ("preset", "target_lufs", "reference")
COLUMNS = (SOURCE,) + TAG_FIELDS + OVERRIDE_FIELDS
ALIASES: dict[str, str] = {
    **{c: c for c in COLUMNS},
    "path": SOURCE, "filename": SOURCE, "file_name": SOURCE, "file_path": SOURCE, "filepath": SOURCE,
    "source": SOURCE,
    "year": "date", "release_date": "date",
    "label": "label", "publisher": "label", "record_label": "label",
    "track": "track_number", "tracknumber": "track_number", "track_no": "track_number",
    "disc": "disc_number", "discnumber": "disc_number", "disc_no": "disc_number", "disk": "disc_number",
    "disk_number": "disc_number",
    "albumartist": "album_artist",
    "target": "target_lufs", "target_loudness": "target_lufs", "loudness": "target_lufs", "lufs": "target_lufs",
    "reference_file": "reference", "ref": "reference",
}
ISRC_RE = re.compile(r"^([A-Z]{2})-?([A-Z0-9]{3})-?(\d{2})-?(\d{5})$")
ISRC_HELP = "CC-XXX-YY-NNNNN: 2 letters, 3 letters/digits, 2 digits, 5 digits, dashes optional"
_NUMBER_RE = re.compile(r"^(\d+)(?:\.0+)?(?:\s*/\s*(\d+)(?:\.0+)?)?$")
_LUFS_RE = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*(?:lufs|lkfs)?$", re.IGNORECASE)
TARGET_RANGE = (-70.0, 0.0)  # as kernels.params.LoudnessParams


def normalize_header(header: str) -> str:
    """'  Album Artist ' -> 'album_artist', 'Track-Number' -> 'track_number'."""
    h = unicodedata.normalize("NFKC", header).strip().lower()
    return re.sub(r"[\s\-]+", "_", h)


# ---------------------------------------------------------------- value checks

def normalize_isrc(value: str) -> str:
    """ISRC to 12 characters, upper case, no dashes; ValueError saying the format."""
    s = value.strip().upper()
    m = ISRC_RE.match(s)
    if not m:
        raise ValueError(f"{value!r} is not an ISRC ({ISRC_HELP})")
    return "".join(m.groups())


def normalize_date(value: str) -> str:
    s = value.strip()
    if re.fullmatch(r"\d{4}", s) and s != "0000":
        return s
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        try:
            dt.date.fromisoformat(s)
            return s
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date (YYYY-MM-DD)") from None
    raise ValueError(f"{value!r} is not a year or date; write YYYY (2024) or YYYY-MM-DD (2024-03-15)")


def normalize_number(value: str, what: str) -> str:
    """'03' -> '3', '3/12' -> '3/12'; positive integers only (total >= number)."""
    m = _NUMBER_RE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a {what} number; write a positive integer (3) or "
                         f"number/total (3/12)")
    n, total = int(m.group(1)), m.group(2)
    if n < 1:
        raise ValueError(f"{value!r}: a {what} number starts at 1")
    if total is None:
        return str(n)
    t = int(total)
    if t < n:
        raise ValueError(f"{value!r}: {what} {n} of {t} is past the total")
    return f"{n}/{t}"


def parse_target(value: str) -> float:
    s = value.strip().replace("\u2212", "-")  # spreadsheets like the real minus sign
    m = _LUFS_RE.match(s)
    if not m:
        raise ValueError(f"{value!r} is not a loudness; write a number of LUFS such as -14 or -16.5 "
                         "(decimal point, not comma)")
    v = float(m.group(1))
    if not TARGET_RANGE[0] <= v <= TARGET_RANGE[1]:
        raise ValueError(f"{v:g} LUFS is out of range; allowed {TARGET_RANGE[0]:g} to {TARGET_RANGE[1]:g} LUFS")
    return v


def clean_text(value: str) -> str:
    s = unicodedata.normalize("NFC", value.strip())
    for ch in s:
        cat = unicodedata.category(ch)
        if cat == "Cs":
            raise ValueError(f"{value!r} holds an invalid character (a lone surrogate); re-save the file as UTF-8")
        if cat == "Cc":
            raise ValueError(f"{value!r} holds a control character {ch!r}; tags must be plain text on one line")
    return s


_FIELD_CHECKS: dict[str, Callable[[str], str]] = {
    "isrc": normalize_isrc,
    "date": normalize_date,
    "track_number": lambda v: normalize_number(v, "track"),
    "disc_number": lambda v: normalize_number(v, "disc"),
}


# ---------------------------------------------------------------- reading

class _Row:
    """One raw row: values by normalised column, and where it is for messages."""

    def __init__(self, number: int, where: str, values: dict[str, Any], names: Mapping[str, str]):
        self.number, self.where, self.values, self.names = number, where, values, names

    def field(self, col: str) -> str:
        """How a message names a column: as the user wrote it, with ours if different."""
        raw = self.names.get(col, col)
        return f"field {raw!r}" if normalize_header(raw) == col else f"field {raw!r} ({col})"


def _read_text(path: str, display: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{display}: cannot read the catalog ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{display}: not UTF-8 text (byte {e.start}); in Excel use 'Save As' > "
                          "'CSV UTF-8 (Comma delimited)'") from None


def _columns(headers: Iterable[Any], display: str, problems: Problems,
             unknown: dict[str, list[int]] | None = None, row: int = 0) -> list[str | None]:
    """Normalised column per position (None: ignored). Unknown headers are
    reported now, or gathered in ``unknown`` (name -> rows) to report once."""
    out: list[str | None] = []
    seen: dict[str, str] = {}
    for h in headers:
        raw = "" if h is None else str(h)
        key = normalize_header(raw)
        if key == "" or key.startswith(("_", "#")):
            out.append(None)
            continue
        col = ALIASES.get(key)
        if col is None:
            if unknown is None:
                problems.add(_unknown_column(display, raw.strip(), key))
            else:
                unknown.setdefault(raw.strip(), []).append(row)
            out.append(None)
            continue
        if col in seen:
            problems.add(f"{display}: columns {seen[col]!r} and {raw.strip()!r} both mean {col!r}; keep one")
        seen[col] = raw.strip()
        out.append(col)
    return out


def _unknown_column(display: str, raw: str, key: str, rows: list[int] | None = None) -> str:
    where = "" if rows is None else f" (row{'s' if len(rows) > 1 else ''} {_ranges(rows)})"
    return (f"{display}: unknown column {raw!r}{where}{did_you_mean(key, sorted(ALIASES))}; allowed: "
            f"{', '.join(COLUMNS)} (common aliases such as year, track, disc, publisher, path work too); "
            "start a name with '_' for a column the farm should ignore")


def _ranges(rows: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start, prev = [], rows[0], rows[0]
    for r in rows[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ", ".join(out)


def _sniff_delimiter(text: str) -> str:
    first = text.split("\n", 1)[0]
    if "," in first:
        return ","
    return max((";", "\t"), key=first.count) if (";" in first or "\t" in first) else ","


def _read_csv(text: str, display: str, problems: Problems) -> list[_Row]:
    m = re.match(r"sep=(.)\r?\n", text)  # Excel's separator hint line
    if m:
        delimiter, text, skipped = m.group(1), text[m.end():], 1
    else:
        delimiter, skipped = _sniff_delimiter(text), 0
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[_Row] = []
    try:
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{display}: empty catalog; the first line must name the columns (file, title, ...)")
        cols = _columns(header, display, problems)
        if SOURCE not in cols:
            problems.add(f"{display}: no file column; the catalog needs one named 'file' (or path, filename, "
                         "source) holding each track's audio file")
        unnamed = [i for i, c in enumerate(cols) if c is None and not normalize_header(str(header[i]))]
        names = {c: h.strip() for c, h in zip(cols, header) if c is not None}
        number = 0
        for cells in reader:
            number += 1  # rows are counted as a spreadsheet shows them, blank ones included
            line = reader.line_num + skipped
            if not any(c.strip() for c in cells):
                continue
            where = f"{display} row {number} (line {line})"
            if len(cells) > len(cols) and any(c.strip() for c in cells[len(cols):]):
                problems.add(f"{where}: {len(cells)} cells but the header names {len(cols)} columns; "
                             "quote values that contain the separator")
            values = {c: v for c, v in zip(cols, cells) if c is not None}
            for i in unnamed:  # an unnamed column is ignored only while it stays empty
                if i < len(cells) and cells[i].strip():
                    problems.add(f"{where}: value {cells[i].strip()!r} in column {i + 1}, which has no header; "
                                 "name the column or clear it")
            rows.append(_Row(number, where, values, names))
    except csv.Error as e:
        raise ConfigError(f"{display} line {reader.line_num + skipped}: not valid CSV ({e})") from None
    return rows


def _read_json(text: str, display: str, problems: Problems) -> list[_Row]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{display}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(doc, Mapping):
        extra = sorted(set(doc) - {"tracks"})
        if extra or "tracks" not in doc:
            raise ConfigError(f"{display}: a JSON catalog is a list of track objects or {{\"tracks\": [...]}}; "
                              f"found keys {sorted(doc)}")
        doc = doc["tracks"]
    if not isinstance(doc, list):
        raise ConfigError(f"{display}: a JSON catalog is a list of track objects or {{\"tracks\": [...]}}")
    rows = []
    unknown: dict[str, list[int]] = {}
    for i, item in enumerate(doc, start=1):
        where = f"{display} row {i}"
        if not isinstance(item, Mapping):
            problems.add(f"{where}: must be an object like {{\"file\": \"a.wav\", \"title\": ...}}, "
                         f"got {type(item).__name__}")
            continue
        cols = _columns(item.keys(), where, problems, unknown=unknown, row=i)
        values: dict[str, Any] = {}
        for col, (key, v) in zip(cols, item.items()):
            if col is None:
                continue
            if v is None:
                v = ""
            elif isinstance(v, bool) or isinstance(v, (list, dict)):
                problems.add(f"{where}, field {key!r}: must be text or a number, got {json.dumps(v)}")
                continue
            elif isinstance(v, float) and v.is_integer() and col != "target_lufs":
                v = str(int(v))
            else:
                v = str(v)
            values[col] = v
        rows.append(_Row(i, where, values, {c: str(k) for c, k in zip(cols, item) if c is not None}))
    for raw, at in unknown.items():
        problems.add(_unknown_column(display, raw, normalize_header(raw), at))
    return rows


# ---------------------------------------------------------------- validation

def _validate_row(row: _Row, base_dir: str, problems: Problems,
                  check_preset: Callable[[str], str | None]) -> TrackSpec | None:
    before = len(problems)
    vals = row.values
    tags: dict[str, str] = {}
    src = str(vals.get(SOURCE, "") or "").strip()
    if not src:
        problems.add(f"{row.where}, {row.field(SOURCE)}: empty; every row needs the path of its audio file")
    for name in TAG_FIELDS:
        raw = vals.get(name)
        if raw is None or not str(raw).strip():
            continue
        try:
            v = clean_text(str(raw))
            check = _FIELD_CHECKS.get(name)
            tags[name] = check(v) if check else v
        except ValueError as e:
            problems.add(f"{row.where}, {row.field(name)}: {e}")
    preset = str(vals.get("preset", "") or "").strip() or None
    if preset is not None:
        err = check_preset(preset)
        if err:
            problems.add(f"{row.where}, {row.field('preset')}: {err}")
    target = None
    raw_t = str(vals.get("target_lufs", "") or "").strip()
    if raw_t:
        try:
            target = parse_target(raw_t)
        except ValueError as e:
            problems.add(f"{row.where}, {row.field('target_lufs')}: {e}")
    ref = str(vals.get("reference", "") or "").strip() or None
    if len(problems) != before:
        return None
    return TrackSpec(row=row.number, source=_source_path(src, base_dir), tags=tags, preset=preset,
                     target_lufs=target, reference=None if ref is None else _source_path(ref, base_dir))


def _source_path(cell: str, base_dir: str) -> str:
    path = os.path.expanduser(cell)
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def _preset_checker(base_dir: str) -> Callable[[str], str | None]:
    cache: dict[str, str | None] = {}

    def check(name: str) -> str | None:
        if name not in cache:
            try:
                _presets.load_preset(name, base_dir=base_dir, origin="preset")
                cache[name] = None
            except ConfigError as e:
                cache[name] = "; ".join(p.removeprefix("preset: ") for p in e.problems)
        return cache[name]

    return check


def source_problem(track: TrackSpec) -> str | None:
    """Why ``track``'s audio file cannot be rendered (missing, not a file, unreadable), or None."""
    p = track.source
    if not os.path.exists(p):
        return f"{p}: no such file"
    if not os.path.isfile(p):
        return f"{p}: not a regular file"
    if not os.access(p, os.R_OK):
        return f"{p}: not readable (permission denied)"
    return None


def check_sources(tracks: Iterable[TrackSpec]) -> dict[int, str]:
    """Row -> reason for every track whose audio file is missing or unreadable.

    These rows still render (and fail alone, with that reason); a caller can
    warn about them before the run starts.
    """
    out = {}
    for t in tracks:
        reason = source_problem(t)
        if reason:
            out[t.row] = reason
    return out


@dataclass(frozen=True)
class RejectedRow:
    """A catalog row with metadata problems, set aside so the rest can render.

    ``source``: the row's audio path as resolved ("" if the cell is empty);
    ``problems``: one self-contained line each, naming file, row and field.
    """

    row: int
    source: str
    problems: tuple[str, ...]


def load_catalog(path: str | os.PathLike, *, require_files: bool = False,
                 rejected: list[RejectedRow] | None = None) -> list[TrackSpec]:
    """Read and validate a CSV or JSON catalog; every problem comes in one ConfigError.

    ``.json`` files are JSON, anything else is CSV. Rows keep their catalog
    order. With ``require_files=True`` a missing or unreadable audio file is a
    config error too (by default it fails that track alone at render time; see
    :func:`check_sources`).

    ``rejected``: a list to collect rows with problems of their own (a bad
    ISRC, date, number, target or preset, an empty or duplicate ``file``)
    as :class:`RejectedRow` instead of raising for them, so a render can fail
    those rows alone and master the rest. Problems of the file itself (not
    found, unreadable, unknown columns, malformed lines, no rows) still raise.
    """
    path = os.fspath(path)
    display = display_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{display}: catalog not found" if not os.path.exists(path)
                          else f"{display}: the catalog is not a file")
    base_dir = os.path.dirname(os.path.abspath(path))
    text = _read_text(path, display)
    problems = Problems()
    is_json = path.lower().endswith(".json")
    rows = _read_json(text, display, problems) if is_json else _read_csv(text, display, problems)
    if not rows and not problems:
        problems.add(f"{display}: no tracks (only a header, or an empty list)")
    check = _preset_checker(base_dir)
    tracks: list[TrackSpec] = []
    first_row: dict[str, _Row] = {}
    for row in rows:
        row_problems = Problems()
        t = _validate_row(row, base_dir, row_problems, check)
        cell = str(row.values.get(SOURCE, "") or "").strip()
        src = _source_path(cell, base_dir) if cell else ""
        if cell:
            key = os.path.normcase(os.path.realpath(src))
            if key in first_row:
                row_problems.add(f"{row.where}, {row.field(SOURCE)}: {src} is already row "
                                 f"{first_row[key].number}; each input file may appear once")
            else:
                first_row[key] = row
        if t is not None and require_files:
            reason = source_problem(t)
            if reason:
                row_problems.add(f"{row.where}, {row.field(SOURCE)}: {reason}")
        if row_problems:
            if rejected is None:
                problems.extend(row_problems.items)
            else:
                rejected.append(RejectedRow(row.number, src, tuple(row_problems.items)))
            continue
        tracks.append(t)
    problems.raise_if_any()
    return tracks
