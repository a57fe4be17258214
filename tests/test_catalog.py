"""Catalogs: spreadsheet quirks accepted, metadata validated up front, every problem reported at once."""
from __future__ import annotations

import json
import os

import pytest

from farm import catalog
from farm.catalog import load_catalog
from farm.errors import ConfigError


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages show paths relative to the working folder
    for name in ("a.wav", "b.flac", "c.aiff"):
        (tmp_path / name).write_bytes(b"not really audio; the catalog never decodes")
    return tmp_path


def write_csv(folder, text, name="catalog.csv", bom=False, encoding="utf-8"):
    p = folder / name
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return p


def errors(path, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_catalog(path, **kw)
    return e.value.problems


def test_excel_style_csv_with_bom_aliases_and_whitespace(folder):
    p = write_csv(folder, (
        " File , TITLE ,Artist,Album Artist,Year,ISRC,Track,Disc,Publisher,Genre,Target LUFS,Preset\r\n"
        "a.wav, Song A ,The Band,The Band,2024,us-ab1-24-00001,03/12,1,Label Co, Pop ,,\r\n"
        "b.flac,Song B,The Band,,2024-03-15,USAB12400002,4,1/2,,,\u221216,ebu-r128\r\n"
    ), bom=True)
    a, b = load_catalog(p)
    assert (a.row, b.row) == (1, 2)
    assert a.source == str(folder / "a.wav")
    assert a.tags == {"title": "Song A", "artist": "The Band", "album_artist": "The Band", "date": "2024",
                      "isrc": "USAB12400001", "track_number": "3/12", "disc_number": "1", "label": "Label Co",
                      "genre": "Pop"}
    assert a.preset is None and a.target_lufs is None
    assert b.tags["date"] == "2024-03-15" and b.tags["disc_number"] == "1/2" and "album_artist" not in b.tags
    assert b.preset == "ebu-r128" and b.target_lufs == -16.0


def test_semicolon_and_tab_separated(folder):
    p = write_csv(folder, "file;title\na.wav;Semi\n")
    assert load_catalog(p)[0].tags == {"title": "Semi"}
    p = write_csv(folder, "file\ttitle\na.wav\tTabbed\n")
    assert load_catalog(p)[0].tags == {"title": "Tabbed"}
    p = write_csv(folder, "sep=;\r\nfile;title\r\na.wav;Hinted, with a comma\r\nb.flac;x;y\r\n")
    assert "catalog.csv row 2 (line 4): 3 cells" in errors(p)[0]


@pytest.mark.parametrize("doc", [
    [{"file": "a.wav", "title": "A", "track_number": 3, "year": 2024, "target_lufs": -16}],
    {"tracks": [{"Path": "a.wav", "Title": "A", "Track": "3", "date": "2024", "lufs": "-16", "genre": None}]},
])
def test_json_catalogs(folder, doc):
    p = folder / "catalog.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    (t,) = load_catalog(p)
    assert t.tags == {"title": "A", "track_number": "3", "date": "2024"} and t.target_lufs == -16.0


def test_json_problems_are_reported_once_per_key(folder):
    p = folder / "catalog.json"
    p.write_text(json.dumps([{"file": "a.wav", "bpm": 120}, {"file": "b.flac", "bpm": 90, "title": ["x"]},
                             "c.aiff", {"file": "c.aiff", "bpm": 1}]), encoding="utf-8")
    ps = errors(p)
    assert "catalog.json row 2, field 'title': must be text or a number, got [\"x\"]" in ps
    assert any(e.startswith("catalog.json row 3: must be an object") for e in ps)
    assert sum("unknown column 'bpm' (rows 1-2, 4)" in e for e in ps) == 1
    p.write_text(json.dumps({"songs": []}), encoding="utf-8")
    assert "a list of track objects" in errors(p)[0]


@pytest.mark.parametrize("raw, normal", [
    ("US-AB1-24-00001", "USAB12400001"), ("usab12400001", "USAB12400001"), (" GB-xyz-99-12345 ", "GBXYZ9912345"),
    ("US-AB12400001", "USAB12400001"),
])
def test_isrc_normalised(raw, normal):
    assert catalog.normalize_isrc(raw) == normal


@pytest.mark.parametrize("raw", ["US-AB1-2X-00001", "U1-AB1-24-00001", "US-AB1-24-0001", "USAB124000011",
                                 "US AB1 24 00001", "US-A_1-24-00001", ""])
def test_isrc_refused(raw):
    with pytest.raises(ValueError, match=r"is not an ISRC \(CC-XXX-YY-NNNNN"):
        catalog.normalize_isrc(raw)


def test_the_isrc_message_reads_as_the_fix(folder):
    p = write_csv(folder, "file,isrc\na.wav,USAB12400001\nb.flac,USAB12400002\nc.aiff,US-AB1-2X-00001\n")
    assert errors(p) == ["catalog.csv row 3 (line 4), field 'isrc': 'US-AB1-2X-00001' is not an ISRC "
                         "(CC-XXX-YY-NNNNN: 2 letters, 3 letters/digits, 2 digits, 5 digits, dashes optional)"]


@pytest.mark.parametrize("raw, ok", [
    ("2024", "2024"), ("2024-02-29", "2024-02-29"), ("2023-02-29", None), ("24", None), ("15/03/2024", None),
    ("2024-3-5", None), ("0000", None), ("2024-03", None),
])
def test_dates(raw, ok):
    if ok:
        assert catalog.normalize_date(raw) == ok
    else:
        with pytest.raises(ValueError, match="YYYY"):
            catalog.normalize_date(raw)


@pytest.mark.parametrize("raw, ok", [
    ("3", "3"), ("03", "3"), ("3/12", "3/12"), (" 3 / 12 ", "3/12"), ("3.0", "3"), ("0", None), ("-1", None),
    ("x", None), ("3/2", None), ("1e3", None), ("", None),
])
def test_track_numbers(raw, ok):
    if ok:
        assert catalog.normalize_number(raw, "track") == ok
    else:
        with pytest.raises(ValueError, match="track"):
            catalog.normalize_number(raw, "track")


@pytest.mark.parametrize("raw, ok", [
    ("-14", -14.0), ("-16.5", -16.5), ("\u221223", -23.0), ("-14 LUFS", -14.0), ("-24 lkfs", -24.0),
    ("-14,5", None), ("loud", None), ("5", None), ("-80", None),
])
def test_target_lufs(raw, ok):
    if ok is not None:
        assert catalog.parse_target(raw) == ok
    else:
        with pytest.raises(ValueError, match="LUFS"):
            catalog.parse_target(raw)


def test_every_problem_is_collected(folder):
    p = write_csv(folder, (
        "file,title,year,isrc,track,preset,target_lufs\n"
        "a.wav,A,2024,US-AB1-2X-00001,3,,\n"
        "b.flac,B,15/03/2024,USAB12400002,x,strem,-14\n"
        "\n"  # blank rows are skipped, but counted: row numbers match the spreadsheet
        "a.wav,C,2024,,0,,+5\n"
        ",D,,,3/2,,\n"
        "c.aiff,E\x07,,,,,\n"
    ))
    ps = errors(p)
    assert len(ps) == 10, ps
    joined = "\n".join(ps)
    assert "row 1 (line 2), field 'isrc'" in joined
    assert "row 2 (line 3), field 'year' (date): '15/03/2024' is not a year or date" in joined
    assert "row 2 (line 3), field 'track' (track_number): 'x' is not a track number" in joined
    assert "row 2 (line 3), field 'preset': unknown preset 'strem' (did you mean 'streaming'?)" in joined
    assert "row 4 (line 5), field 'track' (track_number): '0': a track number starts at 1" in joined
    assert "row 4 (line 5), field 'target_lufs': 5 LUFS is out of range" in joined
    assert f"row 4 (line 5), field 'file': {folder / 'a.wav'} is already row 1" in joined
    assert "row 5 (line 6), field 'file': empty" in joined
    assert "row 5 (line 6), field 'track' (track_number): '3/2'" in joined
    assert "row 6 (line 7), field 'title': 'E\\x07' holds a control character" in joined


def test_unknown_columns_are_errors_with_a_way_out(folder):
    p = write_csv(folder, "file,ISCR,bpm,_notes,# comment\na.wav,USAB12400001,120,keep,this\n")
    ps = errors(p)
    assert len(ps) == 2
    assert ps[0].startswith("catalog.csv: unknown column 'ISCR' (did you mean 'isrc'?); allowed: file, title,")
    assert "start a name with '_'" in ps[0]
    p = write_csv(folder, "file,title,_notes,# comment,\na.wav,A,keep,this,\n")
    assert load_catalog(p)[0].tags == {"title": "A"}  # '_'/'#' columns and an empty unnamed column ignored


def test_unnamed_column_with_values(folder):
    p = write_csv(folder, "file,title,\na.wav,A,oops\n")
    assert "value 'oops' in column 3, which has no header" in errors(p)[0]


def test_structure_problems(folder):
    assert "no file column" in errors(write_csv(folder, "title\nA\n"))[0]
    assert "both mean 'date'" in errors(write_csv(folder, "file,year,date\na.wav,2024,2024\n"))[0]
    assert "3 cells but the header names 2 columns" in errors(write_csv(folder, "file,title\na.wav,A,B\n"))[0]
    assert "no tracks" in errors(write_csv(folder, "file,title\n"))[0]
    assert "empty catalog" in errors(write_csv(folder, ""))[0]
    assert "catalog not found" in errors(folder / "nope.csv")[0]


def test_not_utf8_says_how_to_save(folder):
    p = write_csv(folder, "file,title\na.wav,Caf\u00e9\n", encoding="cp1252")
    assert "CSV UTF-8" in errors(p)[0]


def test_relative_paths_resolve_against_the_catalog_folder(folder, tmp_path_factory, monkeypatch):
    sub = folder / "sub"
    sub.mkdir()
    (sub / "d.wav").write_bytes(b"x")
    p = write_csv(folder, f"file\nsub/d.wav\n../{folder.name}/b.flac\n{folder / 'c.aiff'}\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    tracks = load_catalog(p)
    assert [t.source for t in tracks] == [str(sub / "d.wav"), str(folder / "b.flac"), str(folder / "c.aiff")]


def test_same_file_twice_by_another_spelling(folder):
    p = write_csv(folder, "file\na.wav\n./a.wav\n")
    assert errors(p) == [f"catalog.csv row 2 (line 3), field 'file': {folder / 'a.wav'} is already row 1; "
                         "each input file may appear once"]


def test_missing_audio_fails_alone_but_is_known(folder):
    os.mkdir(folder / "a_folder")
    p = write_csv(folder, "file,title\na.wav,A\nmissing.wav,M\na_folder,F\n")
    tracks = load_catalog(p)  # loads: the render fails those tracks alone
    assert [t.row for t in tracks] == [1, 2, 3]
    assert catalog.check_sources(tracks) == {2: f"{folder / 'missing.wav'}: no such file",
                                             3: f"{folder / 'a_folder'}: not a regular file"}
    ps = errors(p, require_files=True)  # strict mode makes them config errors
    assert len(ps) == 2 and "row 2 (line 3), field 'file':" in ps[0] and "no such file" in ps[0]


def test_per_track_preset_path_resolves_against_the_catalog(folder):
    (folder / "loud.toml").write_text("[loudness]\ntarget_lufs = -9\n", encoding="utf-8")
    p = write_csv(folder, "file,preset\na.wav,loud.toml\nb.flac,nope.toml\n")
    ps = errors(p)
    assert len(ps) == 1 and "row 2 (line 3), field 'preset': preset file" in ps[0] and "nope.toml" in ps[0]


def test_broken_per_track_preset_is_reported_on_the_row(folder):
    (folder / "bad.toml").write_text("[loudness]\ntarget_lufs = 9\n", encoding="utf-8")
    p = write_csv(folder, "file,preset\na.wav,bad.toml\n")
    (e,) = errors(p)
    assert e.startswith("catalog.csv row 1 (line 2), field 'preset':") and "target_lufs must be between" in e


def test_unicode_kept_and_nfc(folder):
    p = write_csv(folder, "file,artist,title\na.wav,Bjo\u0308rk,\u6771\u4eac\n")
    assert load_catalog(p)[0].tags == {"artist": "Bj\u00f6rk", "title": "\u6771\u4eac"}
