"""Output file names from a pattern and a track's tags, safe by construction.

A pattern is a ``str.format`` string over :data:`NAMING_FIELDS` (the tag
fields plus ``row``, the catalog row, and ``stem``, the input file's name
without extension)::

    {track_number:02d} - {artist} - {title}        ->  03 - The Band - Song.flac

* ``track_number`` and ``disc_number`` format as integers ("3/12" -> 3) and
  ``row`` is an integer, so numeric specs such as ``:02d`` work on them.
* A field the track does not have is left out together with the separator
  next to it (``03 - Song`` when there is no artist; ``The Band - Song``
  when there is no track number). A missing ``title`` falls back to the
  input's stem, and a name that comes out empty falls back to the stem, then
  to ``track <row>``.
* The result is *sanitised* (:func:`sanitize`) so it can never leave the
  output folder or be rejected by a common filesystem: no path separators, no
  leading dots (so never ``.`` or ``..``, never hidden), no control or
  bidirectional-override characters, none of ``<>:"|?*``, no trailing dot or
  space, no reserved Windows device names, at most :data:`MAX_NAME_BYTES`
  bytes of UTF-8 (room is left for the render's temporary name), Unicode
  letters kept (NFC).
* :func:`assign_paths` adds the format's extension and makes names unique
  within a job: the first track (in catalog order) keeps its name, later ones
  that would map to the same file (compared case-insensitively, as macOS and
  Windows do) get `` (2)``, `` (3)``, ... deterministically.

Patterns are checked up front by :func:`check_pattern`: unknown fields,
attribute/index access (``{title.__class__}``), conversions, nested specs,
specs that do not fit the field's type, and literal path separators are
refused with a message that says what is allowed.
"""
from __future__ import annotations

import os
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence

from .records import TAG_FIELDS, OutputSpec, TrackSpec

DEFAULT_PATTERN = OutputSpec().naming
NUMERIC_FIELDS = ("track_number", "disc_number", "row")
NAMING_FIELDS = TAG_FIELDS + ("row", "stem")
EXTENSIONS = {"flac": ".flac", "wav": ".wav", "aiff": ".aiff"}

# A file name is at most 255 bytes on ext4/APFS/NTFS(UTF-16 units). The render
# writes to ".<first 80 chars of stem>.<8 random>.partial<ext>" first, so the
# final name is kept well under the limit: stem <= MAX_STEM_BYTES, whole name
# (with " (NNN)" and extension) <= MAX_NAME_BYTES.
MAX_STEM_BYTES = 180
MAX_NAME_BYTES = 200

_WINDOWS_RESERVED = ({"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in "123456789¹²³"}
                     | {f"LPT{i}" for i in "123456789¹²³"})
# Characters Windows (and SMB shares) refuse in names; "/" and "\" are path separators.
_REPLACE = str.maketrans({c: "_" for c in '<>:"/\\|?*'})
# Bidirectional controls can make "evil\u202eCALF.exe" display as "evilexe.FLAC".
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_KEEP_FORMAT = {"\u200c", "\u200d"}  # zero-width (non-)joiners: part of emoji and scripts
_EMPTY = "\x00"  # marks a missing field while formatting (control chars never survive)
_SEP = r"[\s\-_.,;:|+~–—]"  # separators around a missing field that go with it
_EMPTY_BRACKETS = re.compile(r"[\(\[\{]\s*\x00\s*[\)\]\}]")
_EMPTY_RUN = re.compile(rf"{_SEP}*\x00(?:{_SEP}|\x00)*")


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` saying what is wrong with a naming ``pattern`` (and what is allowed)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"naming pattern must be non-empty text, got {pattern!r}; e.g. {DEFAULT_PATTERN!r}")
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as e:
        raise ValueError(f"naming pattern {pattern!r} is not a valid format string ({e}); "
                         "write fields as {{title}}, literal braces as {{{{ and }}}}") from None
    used = False
    for literal, name, spec, conv in parsed:
        if "/" in literal or "\\" in literal:
            raise ValueError(f"naming pattern {pattern!r} contains a path separator; masters are written "
                             "flat into the output folder, so use ' - ' or '_' between fields")
        if name is None:
            continue
        used = True
        if name not in NAMING_FIELDS:
            raise ValueError(f"naming pattern {pattern!r}: unknown field {{{name}}}; "
                             f"allowed: {', '.join(NAMING_FIELDS)}")
        if conv is not None:
            raise ValueError(f"naming pattern {pattern!r}: conversions like '!{conv}' are not allowed")
        if "{" in (spec or "") or "}" in (spec or ""):
            raise ValueError(f"naming pattern {pattern!r}: nested fields in a format spec are not allowed")
        sample = 1 if name in NUMERIC_FIELDS else "x"
        try:
            format(sample, spec or "")
        except (ValueError, TypeError) as e:
            kind = "a number" if name in NUMERIC_FIELDS else "text"
            raise ValueError(f"naming pattern {pattern!r}: format spec ':{spec}' does not fit {{{name}}}, "
                             f"which is {kind} ({e})") from None
    if not used:
        raise ValueError(f"naming pattern {pattern!r} uses no field, so every track would get the same "
                         f"name; use fields from: {', '.join(NAMING_FIELDS)}")


def _number(value: str) -> int | None:
    m = re.match(r"^\s*(\d+)\s*(?:/\s*\d+\s*)?$", value)
    return int(m.group(1)) if m else None


def _values(track: TrackSpec) -> dict[str, object]:
    stem = os.path.splitext(os.path.basename(track.source))[0]
    vals: dict[str, object] = {k: str(v) for k, v in track.tags.items() if k in TAG_FIELDS and v}
    for k in ("track_number", "disc_number"):
        if k in vals:
            n = _number(vals[k])  # type: ignore[arg-type]
            if n is not None:
                vals[k] = n
    vals["row"] = track.row
    vals["stem"] = stem
    vals.setdefault("title", stem)
    return vals


def _format_field(value: object, spec: str) -> str:
    try:
        return format(value, spec)
    except (ValueError, TypeError):  # e.g. ':02d' on a track number that is not a number
        return str(value)


def format_name(pattern: str, track: TrackSpec) -> str:
    """The pattern filled from ``track`` (missing fields left out), not yet sanitised."""
    vals = _values(track)
    out = []
    for literal, name, spec, _conv in string.Formatter().parse(pattern):
        out.append(literal)
        if name is None:
            continue
        v = vals.get(name)
        out.append(_EMPTY if v is None or v == "" else _format_field(v, spec or ""))
    s = "".join(out)
    if _EMPTY in s:
        s = _EMPTY_BRACKETS.sub(_EMPTY, s)
        s = _EMPTY_RUN.sub(lambda m: _join_gap(m, len(s)), s)
    return s


def _join_gap(m: re.Match, length: int) -> str:
    """What stays of the separators around missing fields: nothing at either
    end of the name, else the longest separator run (e.g. ' - ')."""
    if m.start() == 0 or m.end() == length:
        return ""
    runs = [r for r in m.group(0).split(_EMPTY) if r]
    return max(runs, key=len) if runs else ""


def _truncate_utf8(s: str, max_bytes: int) -> str:
    if len(s.encode("utf-8")) <= max_bytes:
        return s
    out, size = [], 0
    for ch in s:
        n = len(ch.encode("utf-8"))
        if size + n > max_bytes:
            break
        out.append(ch)
        size += n
    while out and unicodedata.combining(out[-1]):  # never leave a base letter without its accent
        out.pop()
    if out and out[-1] in _KEEP_FORMAT:
        out.pop()
    return "".join(out)


def sanitize(text: str, max_bytes: int = MAX_STEM_BYTES) -> str:
    """``text`` made safe as one file-name component (may return '' if nothing is left)."""
    text = unicodedata.normalize("NFC", str(text))
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zl", "Zp"):
            kept.append(" ")
        elif cat in ("Cc", "Cs") or ch in _BIDI or (cat == "Cf" and ch not in _KEEP_FORMAT):
            continue  # control, lone surrogate (cannot be encoded), invisible format characters
        else:
            kept.append(ch)
    s = "".join(kept).translate(_REPLACE)
    s = re.sub(r" {2,}", " ", s)
    s = s.lstrip(". ")  # never hidden, never '.' or '..'
    s = _truncate_utf8(s, max_bytes)
    s = s.rstrip(". ")  # Windows drops trailing dots and spaces
    if s.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        s = "_" + s
    return s


def track_stem(pattern: str, track: TrackSpec) -> str:
    """The sanitised file name (without extension) for ``track``; never empty."""
    for candidate in (format_name(pattern, track),
                      os.path.splitext(os.path.basename(track.source))[0],
                      f"track {track.row}"):
        s = sanitize(candidate)
        if s:
            return s
    raise AssertionError("unreachable: 'track <row>' always sanitises to itself")


def extension(fmt: str) -> str:
    try:
        return EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"output format must be one of {tuple(EXTENSIONS)}, got {fmt!r}") from None


def _key(name: str) -> str:
    """Names that macOS/Windows treat as the same file get the same key."""
    return unicodedata.normalize("NFC", name).casefold()


def _fit(stem: str, suffix: str, ext: str) -> str:
    room = MAX_NAME_BYTES - len((suffix + ext).encode("utf-8"))
    return _truncate_utf8(stem, room).rstrip(". ") + suffix + ext


def assign_paths(items: Sequence[tuple[TrackSpec, OutputSpec]], output_dir: str) -> list[str]:
    """Final absolute output paths for ``items`` (in order), unique within the list.

    Every path is ``<output_dir>/<one sanitised name>``: it can never point
    outside ``output_dir``. Duplicates get " (2)", " (3)", ... in order; a
    natural name always beats a generated one, so the result depends only on
    the list, never on what is already on disk.
    """
    out_dir = os.path.abspath(output_dir)
    names = [_fit(track_stem(spec.naming, track), "", extension(spec.format)) for track, spec in items]
    taken = {_key(n) for n in names}  # natural names are reserved first
    seen: set[str] = set()
    result = []
    for (track, spec), name in zip(items, names):
        if _key(name) in seen:
            stem, ext = name[: -len(extension(spec.format))], extension(spec.format)
            i = 2
            while True:
                cand = _fit(stem, f" ({i})", ext)
                if _key(cand) not in taken:
                    break
                i += 1
            name = cand
            taken.add(_key(name))
        seen.add(_key(name))
        path = os.path.join(out_dir, name)
        # Belt and braces: sanitize() already guarantees this.
        if os.path.dirname(path) != out_dir or os.path.basename(path) != name:
            raise AssertionError(f"output name {name!r} would leave {out_dir!r}")
        result.append(path)
    return result


def output_path(track: TrackSpec, spec: OutputSpec, output_dir: str) -> str:
    """The output path for one track on its own (no uniqueness across a job)."""
    return assign_paths([(track, spec)], output_dir)[0]


def fields_used(pattern: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


def preview(pattern: str, tags: Mapping[str, str], source: str = "input.wav", row: int = 1) -> str:
    """What ``pattern`` makes of ``tags`` (for docs and `farm presets`)."""
    return track_stem(pattern, TrackSpec(row=row, source=source, tags=dict(tags)))
