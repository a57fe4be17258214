"""Output names: built from tags, never able to leave the output folder, unique per job."""
from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm import naming
from farm.records import TAG_FIELDS, OutputSpec, TrackSpec


def track(row=1, source="/in/My Song.wav", **tags) -> TrackSpec:
    return TrackSpec(row=row, source=source, tags=tags)


FULL = dict(track_number="3/12", artist="The Band", title="Song")


@pytest.mark.parametrize("tags, expected", [
    (FULL, "03 - The Band - Song"),
    (dict(track_number="3", title="Song"), "03 - Song"),  # no artist: its separator goes too
    (dict(artist="The Band", title="Song"), "The Band - Song"),  # no track number
    (dict(track_number="7", artist="The Band"), "07 - The Band - My Song"),  # title falls back to the stem
    ({}, "My Song"),
    (dict(track_number="12", artist="A", title="B"), "12 - A - B"),
])
def test_default_pattern(tags, expected):
    assert naming.track_stem(naming.DEFAULT_PATTERN, track(**tags)) == expected


@pytest.mark.parametrize("pattern, tags, expected", [
    ("{disc_number}-{track_number:03d} {title}", dict(disc_number="1/2", track_number="4", title="X"), "1-004 X"),
    ("{row:04d}_{stem}", {}, "0001_My Song"),
    ("{artist} ({date}) {title}", dict(artist="A", title="T"), "A T"),  # empty brackets go with the field
    ("{artist} ({date}) {title}", dict(artist="A", date="2024", title="T"), "A (2024) T"),
    ("{title:.3}", dict(title="Abcdef"), "Abc"),
    ("{album} - {title}", dict(title="T"), "T"),
])
def test_patterns(pattern, tags, expected):
    naming.check_pattern(pattern)
    assert naming.track_stem(pattern, track(**tags)) == expected


def test_numeric_spec_on_text_falls_back_to_the_text():
    # A TrackSpec built elsewhere may carry a non-numeric number; the name still forms.
    assert naming.track_stem(naming.DEFAULT_PATTERN, track(track_number="A1", artist="x", title="y")) == "A1 - x - y"


@pytest.mark.parametrize("text, expected", [
    ("../../etc/passwd", "_.._etc_passwd"),
    ("/abs/path", "_abs_path"),
    ("..", ""),
    (".hidden", "hidden"),
    ("a\x00b\nc\td", "ab c d"),
    ('AC/DC: "Live" <1991>?*|', "AC_DC_ _Live_ _1991____"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("COM1 ", "_COM1"),
    ("Console", "Console"),
    ("trailing dots...", "trailing dots"),
    ("evil\u202eCALF.exe", "evilCALF.exe"),
    ("Bjo\u0308rk", "Björk"),  # NFC
    ("東京 – 夜", "東京 – 夜"),
])
def test_sanitize(text, expected):
    assert naming.sanitize(text) == expected


def test_sanitize_limits_bytes_without_splitting_characters():
    s = naming.sanitize("é" * 500)
    assert len(s.encode()) <= naming.MAX_STEM_BYTES and set(s) == {"é"}
    s = naming.sanitize("e\u0301" * 200)  # decomposed: NFC makes it 'é'
    assert unicodedata.is_normalized("NFC", s)


@pytest.mark.parametrize("pattern, message", [
    ("{titel}", "unknown field {titel}"),
    ("{title.__class__}", "unknown field"),
    ("{title[0]}", "unknown field"),
    ("{title!r}", "conversions"),
    ("{title:{artist}}", "nested"),
    ("{album}/{title}", "path separator"),
    ("{album}\\{title}", "path separator"),
    ("fixed name", "uses no field"),
    ("{title:02d}", "does not fit {title}, which is text"),
    ("{title", "not a valid format string"),
    ("", "non-empty"),
    ("{}", "unknown field"),
])
def test_check_pattern_refuses(pattern, message):
    with pytest.raises(ValueError) as e:
        naming.check_pattern(pattern)
    assert message in str(e.value)


def test_unknown_field_lists_allowed():
    with pytest.raises(ValueError) as e:
        naming.check_pattern("{bpm}")
    assert all(f in str(e.value) for f in TAG_FIELDS + ("row", "stem"))


def test_assign_paths_unique_and_deterministic(tmp_path):
    spec = OutputSpec(format="flac")
    items = [
        (track(1, "/in/a.wav", title="Song"), OutputSpec(format="flac", naming="{title}")),
        (track(2, "/in/b.wav", title="song"), OutputSpec(format="flac", naming="{title}")),  # same file on macOS
        (track(3, "/in/c.wav", title="Song (2)"), OutputSpec(format="flac", naming="{title}")),  # natural name wins
        (track(4, "/in/d.wav", title="Song"), OutputSpec(format="wav", naming="{title}")),  # other extension
        (track(5, "/in/e.wav", title="Song"), OutputSpec(format="flac", naming="{title}")),
        (track(6, "/in/f.wav", title="Other"), spec),
    ]
    paths = naming.assign_paths(items, str(tmp_path))
    names = [os.path.basename(p) for p in paths]
    assert names == ["Song.flac", "song (3).flac", "Song (2).flac", "Song.wav", "Song (4).flac", "Other.flac"]
    assert naming.assign_paths(items, str(tmp_path)) == paths
    assert all(os.path.dirname(p) == str(tmp_path) for p in paths)


def test_extensions():
    assert [naming.extension(f) for f in ("flac", "wav", "aiff")] == [".flac", ".wav", ".aiff"]
    with pytest.raises(ValueError, match="flac"):
        naming.extension("mp3")


# Every character class, lone surrogates included, plus the strings that have broken other tools.
NASTY = st.sampled_from(["..", ".", "/", "\\", "../..", "CON", "aux", "LPT1", "\x00", " ", "~", "-rf",
                         "\u202e", "\ufeff", "a" * 300, "é" * 200, "𝄞" * 100, "\r\n", ":", "*", "?"])
TEXT = st.one_of(NASTY, st.text(alphabet=st.characters(exclude_categories=()), max_size=80),
                 st.lists(NASTY, max_size=6).map("".join))
PATTERNS = st.sampled_from([naming.DEFAULT_PATTERN, "{title}", "{artist} - {album} - {title}",
                            "{disc_number}-{track_number:02d} {title} [{isrc}]", "{stem}", "{row:03d} {title}",
                            ".{title}", "..{title}..", " {album} "])


@settings(max_examples=300, deadline=None)
@given(tags=st.dictionaries(st.sampled_from(TAG_FIELDS), TEXT, max_size=6),
       stem=TEXT, pattern=PATTERNS, fmt=st.sampled_from(sorted(naming.EXTENSIONS)))
def test_names_never_escape_the_output_folder(tmp_path_factory, tags, stem, pattern, fmt):
    out = str(tmp_path_factory.getbasetemp() / "out")
    os.makedirs(out, exist_ok=True)
    safe_stem = stem.replace("/", "_").replace("\x00", "") or "x"
    t = TrackSpec(row=1, source=f"/in/{safe_stem}.wav", tags=tags)
    path = naming.output_path(t, OutputSpec(format=fmt, naming=pattern), out)
    name = os.path.basename(path)
    assert os.path.dirname(path) == out
    assert os.path.commonpath([os.path.realpath(path), os.path.realpath(out)]) == os.path.realpath(out)
    assert name.endswith(naming.EXTENSIONS[fmt]) and len(name) > len(naming.EXTENSIONS[fmt])
    assert not name.startswith(".") and "/" not in name and "\\" not in name
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in name)
    assert len(name.encode("utf-8")) <= naming.MAX_NAME_BYTES
    assert name.split(".")[0].rstrip(" ").upper() not in naming._WINDOWS_RESERVED
    # And the filesystem agrees: the file lands in the folder under exactly that name.
    with open(path, "wb"):
        pass
    try:
        assert name in os.listdir(out)
    finally:
        os.unlink(path)


@settings(max_examples=50, deadline=None)
@given(titles=st.lists(TEXT, min_size=1, max_size=8))
def test_names_unique_within_a_job(titles):
    items = [(TrackSpec(row=i, source=f"/in/{i}.wav", tags={"title": t}), OutputSpec(naming="{title}"))
             for i, t in enumerate(titles, start=1)]
    paths = naming.assign_paths(items, "/out")
    keys = [unicodedata.normalize("NFC", p).casefold() for p in paths]
    assert len(set(keys)) == len(keys)
    assert all(os.path.dirname(p) == "/out" for p in paths)
