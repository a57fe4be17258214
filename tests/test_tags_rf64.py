"""farm.tags on RF64 WAV (EBU Tech 3306): the masters over 4 GiB the farm writes as .wav.

mutagen cannot open RF64, so farm.tags edits the ``id3 `` chunk itself. Every
file is checked three ways: read_tags/read_loudness, ffprobe (libavformat's
RF64 reader and ID3 parser), and this module's own chunk walker (written from
the spec, independent of farm.tags) with mutagen.id3.ID3 on the extracted
chunk. The audio must decode bit for bit as before and libsndfile must still
see an RF64 file with the same frames.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from mutagen.id3 import ID3

from farm import tags

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe not installed (apt-get install ffmpeg)")

# The render's tag set (tests/test_render.py EXPECTED_TAGS: what write_tags gets after
# the catalog row is normalised), copied so this file does not import the render.
TAGS = {
    "title": "Señal Ω", "artist": "The Testers", "album": "Render Suite", "album_artist": "The Testers",
    "date": "2024", "genre": "Electronic", "isrc": "USAB12400007", "track_number": "3/12",
    "disc_number": "1", "composer": "Ana Müller", "label": "Farm Records", "copyright": "℗ 2024 Farm Records",
}
LOUDNESS = {"integrated_lufs": -14.0, "true_peak_dbtp": -1.0, "loudness_range_lu": 6.5}
READ_LOUDNESS = {"REPLAYGAIN_TRACK_GAIN": "-4.00 dB", "REPLAYGAIN_TRACK_PEAK": "0.891251",
                 "FARM_INTEGRATED_LUFS": "-14.00", "FARM_TRUE_PEAK_DBTP": "-1.00",
                 "FARM_LOUDNESS_RANGE_LU": "6.50"}
# What ffprobe shows for ID3v2.4 in a WAV (as for plain WAV in tests/test_tags.py).
FFPROBE_ID3 = {
    "title": "Señal Ω", "artist": "The Testers", "album": "Render Suite", "album_artist": "The Testers",
    "date": "2024", "genre": "Electronic", "tsrc": "USAB12400007", "track": "3/12", "disc": "1",
    "composer": "Ana Müller", "publisher": "Farm Records", "copyright": "℗ 2024 Farm Records",
    "replaygain_track_gain": "-4.00 dB", "replaygain_track_peak": "0.891251",
    "farm_integrated_lufs": "-14.00", "farm_true_peak_dbtp": "-1.00", "farm_loudness_range_lu": "6.50",
}


# ---------------------------------------------------------------- an independent RF64 walker

def walk(path: str) -> dict:
    """RF64 layout per EBU Tech 3306, checked strictly: header, ds64, chunk list."""
    with open(path, "rb") as f:
        b = f.read(12)
        assert b[:4] == b"RF64" and b[8:12] == b"WAVE"
        assert struct.unpack("<I", b[4:8])[0] == 0xFFFFFFFF
        cid, size = struct.unpack("<4sI", f.read(8))
        assert cid == b"ds64" and size >= 28
        riff_size, data_size, sample_count, _ = struct.unpack("<QQQI", f.read(28))
        file_size = os.path.getsize(path)
        assert riff_size == file_size - 8
        pos, chunks = 12 + 8 + size + (size & 1), []
        while pos < file_size:
            f.seek(pos)
            cid, size = struct.unpack("<4sI", f.read(8))
            if size == 0xFFFFFFFF:
                assert cid == b"data"
                size = data_size
            body = None
            if cid != b"data":
                body = f.read(size)
            chunks.append((cid, pos, size, body))
            pos += 8 + size + (size & 1)
            if size & 1:  # the word-alignment pad byte is there and zero
                f.seek(pos - 1)
                assert f.read(1) == b"\0"
        assert pos == file_size  # the last chunk (and its pad) ends the file exactly
    return {"chunks": chunks, "data_size": data_size, "sample_count": sample_count}


def id3_chunks(path: str) -> list[tuple]:
    return [c for c in walk(path)["chunks"] if c[0] in (b"id3 ", b"ID3 ")]


def chunk_id3(path: str) -> ID3:
    found = id3_chunks(path)
    assert len(found) == 1, [c[:3] for c in found]
    return ID3(io.BytesIO(found[0][3]))


def ffprobe_format_tags(path: str) -> dict[str, str]:
    cmd = [FFPROBE, "-v", "error", "-show_format", "-print_format", "json", path]
    doc = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert doc["format"]["format_name"] == "wav"
    return {k.lower(): v for k, v in doc["format"].get("tags", {}).items()}


def make_rf64(folder, frames: int = 24000, channels: int = 2, name: str = "master.wav") -> str:
    t = np.arange(frames) / 48000.0
    x = 0.25 * np.stack([np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)], axis=1)
    path = str(folder / name)
    sf.write(path, x, 48000, format="RF64", subtype="PCM_24")
    assert sf.info(path).format == "RF64"
    return path


def insert_chunk_before_data(path: str, cid: bytes, body: bytes) -> None:
    """Put a chunk between fmt and data (small test files only) and fix ds64's riffSize."""
    raw = bytearray(pathlib.Path(path).read_bytes())
    pos = raw.index(b"data")
    chunk = struct.pack("<4sI", cid, len(body)) + body + (b"\0" if len(body) & 1 else b"")
    raw[pos:pos] = chunk
    raw[20:28] = struct.pack("<Q", len(raw) - 8)
    pathlib.Path(path).write_bytes(bytes(raw))


def append_chunk(path: str, cid: bytes, body: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(struct.pack("<4sI", cid, len(body)) + body + (b"\0" if len(body) & 1 else b""))
        size = f.tell()
        f.seek(20)
        f.write(struct.pack("<Q", size - 8))


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """An RF64 master tagged once (shared: tests only read it), with its audio and info from before."""
    path = make_rf64(tmp_path_factory.mktemp("rf64"))
    before, info = sf.read(path, dtype="int32")[0], sf.info(path)
    tags.write_tags(path, TAGS, loudness=LOUDNESS)
    return path, before, info


def test_plain_mutagen_refuses_rf64(tmp_path):
    # Why farm.tags has its own RF64 path: if mutagen learns RF64, this can go.
    from mutagen.wave import WAVE
    with pytest.raises(Exception, match="RF64"):
        WAVE(make_rf64(tmp_path))


def test_read_tags_round_trips_every_field(tagged):
    path, _, _ = tagged
    assert tags.read_tags(path) == TAGS
    assert tags.read_loudness(path) == READ_LOUDNESS


def test_the_tag_is_one_id3v24_chunk_after_the_data(tagged):
    path, _, _ = tagged
    layout = walk(path)
    ids = [c[0] for c in layout["chunks"]]
    assert ids == [b"fmt ", b"data", b"id3 "]
    id3 = chunk_id3(path)
    assert id3.version[:2] == (2, 4)
    assert str(id3["TIT2"]) == "Señal Ω" and str(id3["TSRC"]) == "USAB12400007"
    assert str(id3["TRCK"]) == "3/12" and str(id3["TPUB"]) == "Farm Records"
    assert str(id3["TXXX:REPLAYGAIN_TRACK_GAIN"]) == "-4.00 dB"


@needs_ffprobe
def test_ffprobe_reads_every_field(tagged):
    found = ffprobe_format_tags(tagged[0])
    assert {k: found.get(k) for k in FFPROBE_ID3} == FFPROBE_ID3


def test_audio_and_format_are_unchanged(tagged):
    path, before, info = tagged
    after = sf.info(path)
    assert after.format == "RF64" and after.subtype == "PCM_24"
    assert (after.frames, after.samplerate, after.channels) == (info.frames, info.samplerate, info.channels)
    np.testing.assert_array_equal(sf.read(path, dtype="int32")[0], before)
    layout = walk(path)
    assert layout["data_size"] == info.frames * info.channels * 3
    assert layout["sample_count"] == info.frames


@needs_ffprobe
def test_ffmpeg_decodes_the_same_audio(tagged):
    path, before, _ = tagged
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "s32le", "-"],
                         capture_output=True, check=True).stdout
    np.testing.assert_array_equal(np.frombuffer(pcm, "<i4").reshape(before.shape), before)


def test_rewriting_replaces_the_chunk(tmp_path):
    path = make_rf64(tmp_path)
    before = sf.read(path, dtype="int32")[0]
    tags.write_tags(path, TAGS, loudness=LOUDNESS)
    size = os.path.getsize(path)
    tags.write_tags(path, TAGS, loudness=LOUDNESS)
    assert os.path.getsize(path) == size and len(id3_chunks(path)) == 1
    # A longer tag, then a smaller one: still one chunk, exactly the new fields.
    tags.write_tags(path, {**TAGS, "title": "again, longer " * 40})
    assert len(id3_chunks(path)) == 1 and tags.read_tags(path)["title"] == "again, longer " * 40
    smaller = {"title": "Only a title", "track_number": "7", "label": ""}
    tags.write_tags(path, smaller)
    assert tags.read_tags(path) == {"title": "Only a title", "track_number": "7"}
    assert len(id3_chunks(path)) == 1 and os.path.getsize(path) < size
    # loudness=None left the loudness alone; a dict replaces it.
    assert tags.read_loudness(path) == READ_LOUDNESS
    tags.write_tags(path, smaller, loudness={"integrated_lufs": None, "true_peak_dbtp": -3.0})
    assert tags.read_loudness(path) == {"FARM_TRUE_PEAK_DBTP": "-3.00",
                                        "REPLAYGAIN_TRACK_PEAK": f"{10 ** (-3 / 20):.6f}"}
    np.testing.assert_array_equal(sf.read(path, dtype="int32")[0], before)
    if FFPROBE:
        found = ffprobe_format_tags(path)
        assert found.get("title") == "Only a title" and "album" not in found


def test_odd_sized_chunks_are_padded(tmp_path):
    # Mono 24-bit with an odd frame count: the data chunk is odd (3 * 1001 bytes) and
    # libsndfile's pad byte must stay; the id3 chunk is made odd-sized too.
    path = make_rf64(tmp_path, frames=1001, channels=1)
    before = sf.read(path, dtype="int32")[0]
    assert walk(path)["data_size"] % 2 == 1
    for title in ("x", "xy"):
        tags.write_tags(path, {"title": title})
        if len(id3_chunks(path)[0][3]) % 2 == 1:
            break
    else:
        pytest.fail("no odd-sized tag found")
    id3 = id3_chunks(path)[0]
    assert id3[1] % 2 == 0  # the chunk starts word-aligned, after the data's pad byte
    assert os.path.getsize(path) == id3[1] + 8 + id3[2] + 1  # ... and ends with its own pad byte
    assert tags.read_tags(path) == {"title": title}
    np.testing.assert_array_equal(sf.read(path, dtype="int32")[0], before)
    assert sf.info(path).frames == 1001
    # An odd tag followed by an even one, and back: the layout stays valid each time.
    for t in ("Señal Ω", title, TAGS["title"]):
        tags.write_tags(path, {**TAGS, "title": t}, loudness=LOUDNESS)
        assert tags.read_tags(path)["title"] == t and len(id3_chunks(path)) == 1
    if FFPROBE:
        assert ffprobe_format_tags(path).get("title") == TAGS["title"]


def test_foreign_chunks_after_the_data_are_kept(tmp_path):
    path = make_rf64(tmp_path, frames=999, channels=1)
    append_chunk(path, b"LIST", b"INFOISFT\x06\0\0\0farm!\0")
    append_chunk(path, b"junk", b"odd")
    tags.write_tags(path, TAGS)
    tags.write_tags(path, {"title": "t"})
    chunks = walk(path)["chunks"]
    assert [c[0] for c in chunks] == [b"fmt ", b"data", b"LIST", b"junk", b"id3 "]
    assert chunks[2][3] == b"INFOISFT\x06\0\0\0farm!\0" and chunks[3][3] == b"odd"
    assert tags.read_tags(path) == {"title": "t"}


def test_an_id3_chunk_before_the_data_is_reused_or_retired(tmp_path):
    path = make_rf64(tmp_path, frames=500)
    before = sf.read(path, dtype="int32")[0]
    # Room for a small tag: rewritten in place (ID3 padding fills the chunk) ...
    # (even-sized: libsndfile 1.2.2 skips no pad byte for odd chunks in front of an RF64 data chunk)
    insert_chunk_before_data(path, b"ID3 ", b"\0" * 600)
    assert tags.read_tags(path) == {}  # a chunk with no ID3 header reads as untagged
    tags.write_tags(path, {"title": "short", "artist": "The Testers"})
    chunks = walk(path)["chunks"]
    assert [c[0] for c in chunks] == [b"fmt ", b"ID3 ", b"data"] and chunks[1][2] == 600
    assert tags.read_tags(path) == {"title": "short", "artist": "The Testers"}
    # ... a tag that does not fit: the old chunk turns into JUNK and the tag goes after the data.
    long = {**TAGS, "copyright": "℗ 2024 Farm Records. " * 40 + "All rights reserved."}
    tags.write_tags(path, long)
    assert [c[0] for c in walk(path)["chunks"]] == [b"fmt ", b"JUNK", b"data", b"id3 "]
    assert tags.read_tags(path) == long
    np.testing.assert_array_equal(sf.read(path, dtype="int32")[0], before)
    if FFPROBE:
        assert ffprobe_format_tags(path).get("copyright") == long["copyright"]


def test_untagged_rf64_reads_empty(tmp_path):
    path = make_rf64(tmp_path)
    assert tags.read_tags(path) == {} and tags.read_loudness(path) == {}


def test_broken_rf64_names_the_file(tmp_path):
    path = make_rf64(tmp_path, frames=100)
    raw = bytearray(pathlib.Path(path).read_bytes())
    raw[12:16] = b"xxxx"  # no ds64
    pathlib.Path(path).write_bytes(bytes(raw))
    with pytest.raises(tags.TagError, match="master.wav: not a readable"):
        tags.write_tags(path, {"title": "x"})
    with pytest.raises(tags.TagError, match="master.wav: not a readable"):
        tags.read_tags(path)


def test_a_5_gb_master_is_tagged_without_reading_the_audio(tmp_path):
    """A real >4 GiB RF64 (sparse on disk): only the tail is written, the audio never read."""
    channels, frames = 2, 900_000_000
    data_size = frames * channels * 3  # 5.4 GB of 24-bit stereo
    path = str(tmp_path / "long.wav")
    fmt = struct.pack("<HHIIHH", 1, channels, 48000, 48000 * channels * 3, channels * 3, 24)
    header = (b"RF64" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
              + b"ds64" + struct.pack("<IQQQI", 28, 0, data_size, frames, 0)
              + b"fmt " + struct.pack("<I", len(fmt)) + fmt
              + b"data" + struct.pack("<I", 0xFFFFFFFF))
    head_frames = np.arange(1, 1 + 3 * channels * 10, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(header + head_frames)
        f.seek(len(header) + data_size - len(head_frames))
        f.write(head_frames[::-1])  # the last 10 frames
        f.seek(20)
        f.write(struct.pack("<Q", len(header) + data_size - 8))
    first = sf.read(path, frames=10, dtype="int32")[0]
    last = sf.read(path, start=frames - 10, dtype="int32")[0]
    assert sf.info(path).frames == frames

    tracemalloc.start()
    tags.write_tags(path, TAGS, loudness=LOUDNESS)
    got = tags.read_tags(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == TAGS
    assert peak < 4 * 1024 * 1024, f"{peak} bytes traced: the audio was read"

    chunks = walk(path)["chunks"]
    assert [c[0] for c in chunks] == [b"fmt ", b"data", b"id3 "]
    assert chunks[2][1] == len(header) - 8 + 8 + data_size  # right after the 5.4 GB of audio
    assert sf.info(path).frames == frames and sf.info(path).format == "RF64"
    np.testing.assert_array_equal(sf.read(path, frames=10, dtype="int32")[0], first)
    np.testing.assert_array_equal(sf.read(path, start=frames - 10, dtype="int32")[0], last)
    tags.write_tags(path, {"title": "t"})
    assert len(id3_chunks(path)) == 1 and tags.read_tags(path) == {"title": "t"}
    if FFPROBE:
        found = ffprobe_format_tags(path)
        assert found.get("title") == "t"
