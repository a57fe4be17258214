"""farm.tags: metadata and loudness round-trip through mutagen and independent readers.

Every format is written with farm.tags and read back twice: by read_tags and by
ffprobe (libavformat's own ID3/Vorbis parsers); FLAC also by metaflac.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from farm import tags
from farm.records import TAG_FIELDS

FFPROBE = shutil.which("ffprobe")
METAFLAC = shutil.which("metaflac")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe not installed (apt-get install ffmpeg)")
needs_metaflac = pytest.mark.skipif(METAFLAC is None, reason="metaflac not installed (apt-get install flac)")

# extension -> soundfile (format, subtype): 0.5 s, 48 kHz stereo
FORMATS = {
    "flac": ("FLAC", "PCM_16"),
    "wav": ("WAV", "PCM_16"),
    "aiff": ("AIFF", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}
VORBIS = ("flac", "ogg", "opus")
ID3 = ("wav", "aiff", "mp3")

TAGS = {
    "title": "Hoppípolla — 坂本龍一 mix",
    "artist": "Sigur Rós",
    "album": "Takk…",
    "album_artist": "Sigur Rós & 坂本龍一",
    "date": "2005-09-12",
    "genre": "Post-rock",
    "isrc": "GBAYE0500001",
    "track_number": "3/12",
    "disc_number": "1/2",
    "composer": "Jón Þór Birgisson",
    "label": "EMI",
    "copyright": "℗ 2005 EMI Records",
}
LOUDNESS = {"integrated_lufs": -14.0, "true_peak_dbtp": -1.0, "loudness_range_lu": 6.5}

# What ffprobe must show (lower-cased key -> value), per container family.
FFPROBE_VORBIS = {
    "title": TAGS["title"], "artist": TAGS["artist"], "album": TAGS["album"],
    "album_artist": TAGS["album_artist"], "date": TAGS["date"], "genre": TAGS["genre"],
    "isrc": TAGS["isrc"], "track": "3", "tracktotal": "12", "disc": "1", "disctotal": "2",
    "composer": TAGS["composer"], "label": TAGS["label"], "organization": TAGS["label"],
    "copyright": TAGS["copyright"],
}
FFPROBE_ID3 = {
    "title": TAGS["title"], "artist": TAGS["artist"], "album": TAGS["album"],
    "album_artist": TAGS["album_artist"], "date": TAGS["date"], "genre": TAGS["genre"],
    "tsrc": TAGS["isrc"], "track": "3/12", "disc": "1/2", "composer": TAGS["composer"],
    "publisher": TAGS["label"], "copyright": TAGS["copyright"],
}
REPLAYGAIN = {"replaygain_track_gain": "-4.00 dB", "replaygain_track_peak": "0.891251"}
FARM_LOUDNESS = {"farm_integrated_lufs": "-14.00", "farm_true_peak_dbtp": "-1.00",
                 "farm_loudness_range_lu": "6.50"}


def _make(folder, ext: str) -> str:
    fmt, subtype = FORMATS[ext]
    t = np.arange(24000) / 48000.0
    x = 0.25 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1)
    path = str(folder / f"tone.{ext}")
    sf.write(path, x.astype(np.float32), 48000, format=fmt, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """One file per format, tagged once with TAGS and LOUDNESS (shared: tests only read it)."""
    folder = tmp_path_factory.mktemp("tagged")
    out = {}
    for ext in FORMATS:
        path = _make(folder, ext)
        tags.write_tags(path, TAGS, loudness=LOUDNESS)
        out[ext] = path
    return out


@pytest.fixture(params=list(FORMATS))
def fresh(request, tmp_path):
    """An untagged file of each format, private to the test."""
    return _make(tmp_path, request.param)


def ffprobe_tags(path: str) -> dict[str, str]:
    """Container and stream tags as ffprobe reports them (Ogg puts Vorbis comments on the stream)."""
    cmd = [FFPROBE, "-v", "error", "-show_entries", "format_tags:stream_tags", "-of", "json", path]
    doc = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    found: dict[str, str] = {}
    for stream in doc.get("streams", []):
        found.update({k.lower(): v for k, v in stream.get("tags", {}).items()})
    found.update({k.lower(): v for k, v in doc.get("format", {}).get("tags", {}).items()})
    return found


def ffmpeg_replaygain_db(path: str) -> float | None:
    """The track gain libavformat parsed into ReplayGain side data (None if it found none)."""
    cmd = [FFPROBE, "-hide_banner", path]
    err = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    m = re.search(r"replaygain: track gain - (-?[\d.]+)", err)
    return float(m.group(1)) if m else None


@pytest.mark.parametrize("ext", list(FORMATS))
def test_read_tags_round_trips_every_field(tagged, ext):
    assert tags.read_tags(tagged[ext]) == TAGS


@needs_ffprobe
@pytest.mark.parametrize("ext", list(FORMATS))
def test_ffprobe_reads_every_field(tagged, ext):
    found = ffprobe_tags(tagged[ext])
    expected = FFPROBE_VORBIS if ext in VORBIS else FFPROBE_ID3
    assert {k: found.get(k) for k in expected} == expected


@needs_ffprobe
@pytest.mark.parametrize("ext", list(FORMATS))
def test_ffprobe_reads_loudness(tagged, ext):
    found = ffprobe_tags(tagged[ext])
    assert {k: found.get(k) for k in FARM_LOUDNESS} == FARM_LOUDNESS
    if ext == "opus":
        # RFC 7845: Opus carries R128_TRACK_GAIN (Q7.8 dB re -23 LUFS) and never REPLAYGAIN_*.
        assert found.get("r128_track_gain") == str(round((-23.0 - -14.0) * 256))
        assert not any(k.startswith("replaygain") for k in found)
    else:
        assert {k: found.get(k) for k in REPLAYGAIN} == REPLAYGAIN
        assert "r128_track_gain" not in found


@needs_ffprobe
@pytest.mark.parametrize("ext", ["flac", "ogg", "aiff", "mp3"])
def test_ffmpeg_parses_replaygain(tagged, ext):
    # ReplayGain 2.0: gain = -18 LUFS - (-14 LUFS). (ffmpeg 5.1's WAV demuxer keeps the
    # tags but exports no ReplayGain side data, so WAV is checked by tag only.)
    assert ffmpeg_replaygain_db(tagged[ext]) == pytest.approx(-4.0)


@needs_metaflac
def test_metaflac_reads_vorbis_comments(tagged):
    out = subprocess.run([METAFLAC, "--export-tags-to=-", tagged["flac"]], capture_output=True,
                         check=True).stdout.decode("utf-8")
    lines = set(out.splitlines())
    expected = {
        "TITLE=" + TAGS["title"], "ARTIST=Sigur Rós", "ALBUM=Takk…", "ALBUMARTIST=" + TAGS["album_artist"],
        "DATE=2005-09-12", "GENRE=Post-rock", "ISRC=GBAYE0500001", "TRACKNUMBER=3", "TRACKTOTAL=12",
        "DISCNUMBER=1", "DISCTOTAL=2", "COMPOSER=Jón Þór Birgisson", "LABEL=EMI", "ORGANIZATION=EMI",
        "COPYRIGHT=℗ 2005 EMI Records", "REPLAYGAIN_TRACK_GAIN=-4.00 dB",
        "REPLAYGAIN_TRACK_PEAK=0.891251", "FARM_INTEGRATED_LUFS=-14.00",
    }
    assert expected <= lines
    assert not any(line.startswith("R128_") for line in lines)


def test_tagging_leaves_the_audio_alone(fresh):
    before, rate = sf.read(fresh, dtype="float32")
    tags.write_tags(fresh, TAGS, loudness=LOUDNESS)
    tags.write_tags(fresh, {"title": "again, longer " * 40}, loudness=LOUDNESS)  # grow the tag block
    after, rate2 = sf.read(fresh, dtype="float32")
    assert rate2 == rate
    np.testing.assert_array_equal(after, before)


def test_rewrite_holds_exactly_the_new_tags(fresh):
    tags.write_tags(fresh, TAGS, loudness=LOUDNESS)
    smaller = {"title": "Only a title", "track_number": "7", "label": ""}
    tags.write_tags(fresh, smaller)
    assert tags.read_tags(fresh) == {"title": "Only a title", "track_number": "7"}
    # loudness=None leaves the loudness tags alone ...
    assert tags.read_loudness(fresh)["FARM_INTEGRATED_LUFS"] == "-14.00"
    # ... and a loudness dict replaces them; unmeasured values are left out.
    tags.write_tags(fresh, smaller, loudness={"integrated_lufs": None, "true_peak_dbtp": -3.0})
    assert tags.read_loudness(fresh) == (
        {"FARM_TRUE_PEAK_DBTP": "-3.00"} if fresh.endswith(".opus")
        else {"FARM_TRUE_PEAK_DBTP": "-3.00", "REPLAYGAIN_TRACK_PEAK": f"{10 ** (-3 / 20):.6f}"})


@needs_ffprobe
def test_rewrite_removes_stale_totals_and_keeps_foreign_tags(tmp_path):
    path = _make(tmp_path, "ogg")  # libsndfile writes ENCODER=libsndfile
    tags.write_tags(path, TAGS)
    tags.write_tags(path, {"title": "t", "track_number": "4"})
    found = ffprobe_tags(path)
    assert found.get("track") == "4" and "tracktotal" not in found and "disctotal" not in found
    assert found.get("encoder") == "libsndfile"


@pytest.mark.parametrize("ext", ["wav", "mp3"])
def test_free_form_date_survives_id3(tmp_path, ext):
    # TDRC holds only ISO-8601 timestamps; other text is kept verbatim in TXXX:DATE.
    path = _make(tmp_path, ext)
    tags.write_tags(path, {"date": "Spring 2005", "title": "x"})
    assert tags.read_tags(path) == {"date": "Spring 2005", "title": "x"}
    if FFPROBE:
        assert ffprobe_tags(path).get("date") == "Spring 2005"


@pytest.mark.parametrize("ext", ["flac", "aiff"])
def test_loud_master_gets_negative_gain_and_peak_over_one(tmp_path, ext):
    path = _make(tmp_path, ext)
    tags.write_tags(path, {}, loudness={"integrated_lufs": -7.25, "true_peak_dbtp": 0.5})
    loud = tags.read_loudness(path)
    assert loud["REPLAYGAIN_TRACK_GAIN"] == "-10.75 dB"
    assert loud["REPLAYGAIN_TRACK_PEAK"] == f"{10 ** (0.5 / 20):.6f}"


def test_unsupported_extension_names_file_and_formats(tmp_path):
    path = tmp_path / "master.m4a"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError) as e:
        tags.write_tags(str(path), {"title": "x"})
    msg = str(e.value)
    assert str(path) in msg and "FLAC" in msg and "AIFF" in msg and "MP3" in msg
    with pytest.raises(ValueError, match="master.m4a"):
        tags.read_tags(str(path))


def test_bad_input_errors_name_the_file(tmp_path):
    good = _make(tmp_path, "flac")
    with pytest.raises(tags.TagError, match=r"unknown tag field.*'lyrics'.*title"):
        tags.write_tags(good, {"lyrics": "la"})
    with pytest.raises(tags.TagError, match="must be text"):
        tags.write_tags(good, {"track_number": 3})
    with pytest.raises(tags.TagError, match="unknown loudness key"):
        tags.write_tags(good, {}, loudness={"lufs": -14})
    missing = str(tmp_path / "missing.wav")
    with pytest.raises(tags.TagError, match="missing.wav: no such file"):
        tags.read_tags(missing)
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(tags.TagError, match="junk.flac: not a readable FLAC"):
        tags.write_tags(str(junk), {"title": "x"})


def test_untagged_files_read_empty(fresh):
    assert tags.read_tags(fresh) == {}
    assert set(tags.read_tags(fresh)) <= set(TAG_FIELDS)
