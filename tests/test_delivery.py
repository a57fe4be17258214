"""Delivery extras (issue 6 items 5 and 7): lossy copies checked as shipped, BWF bext loudness.

Everything is checked on the files on disk with readers that are not the
render's own where one exists: soundfile decodes the copies, the loudness
and 4x true peak are measured again here (kernels.loudness on the decoded
samples, cross-checked by pyloudnorm), ffprobe reads the tags, the Opus
header is parsed from the Ogg page, and the ``bext`` chunk is parsed from
the RIFF/RF64 bytes by this file's own reader written from EBU Tech 3285 v2.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from farm import audio, budget, delivery, synth, tags
from farm.errors import ConfigError
from farm.presets import load_preset
from farm.records import STATUS_FAILED, STATUS_OK
from farm.render import render_track
from kernels import loudness as meter
from kernels import stream
from test_render import folder_listing, one_task, write_audio

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe not installed (apt-get install ffmpeg)")
HAVE_MP3 = audio.copy_encoder_missing("mp3") is None
TAGS = {"title": "Señal Ω", "artist": "The Testers", "album": "Copies", "isrc": "USAB12400007",
        "track_number": "3/12"}


def preset_file(folder, name: str, body: str) -> str:
    path = os.path.join(str(folder), f"{name}.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)
    return path


def decoded(path: str) -> tuple[np.ndarray, int]:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), rate


def ffprobe_tags(path: str) -> dict[str, str]:
    cmd = [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-print_format", "json", path]
    doc = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8"))
    found: dict[str, str] = {}
    for s in doc.get("streams", []):
        found.update({k.lower(): v for k, v in s.get("tags", {}).items()})
    found.update({k.lower(): v for k, v in doc.get("format", {}).get("tags", {}).items()})
    return found


def opus_output_gain(path: str) -> int:
    """OpusHead's output gain (RFC 7845 5.1), parsed from the first Ogg page."""
    with open(path, "rb") as f:
        page = f.read(4096)
    assert page[:4] == b"OggS"
    nseg = page[26]
    head = page[27 + nseg:]
    assert head[:8] == b"OpusHead"
    return struct.unpack("<h", head[16:18])[0]


def assert_no_partials(folder: str) -> None:
    assert not [n for n in folder_listing(folder) if ".partial" in n]


# ---------------------------------------------------------------- copies with tags and loudness tags

@pytest.fixture(scope="module")
def with_copies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("copies")
    fmts = ["ogg", "opus"] + (["mp3"] if HAVE_MP3 else [])
    p = preset_file(folder, "copies", f"""
[loudness]
target_lufs = -14.0
[limiter]
ceiling_dbtp = -1.0
[output]
format = "flac"
copies = {json.dumps(fmts)}
copy_quality = 0.6
""")
    x = synth.music(8.0, 44100, 2, seed=5, peak_dbfs=-6.0)
    write_audio(folder / "song.wav", x, 44100, "PCM_24")
    task = one_task(folder, "song.wav", p, tags=TAGS)
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    return task, r, fmts


def test_every_copy_is_written_beside_the_master_with_its_stem(with_copies):
    task, r, fmts = with_copies
    stem = os.path.splitext(r.output)[0]
    assert [c["format"] for c in r.copies] == fmts
    for c in r.copies:
        assert c["status"] == "ok" and c["reason"] == ""
        assert c["path"] == stem + {"ogg": ".ogg", "opus": ".opus", "mp3": ".mp3"}[c["format"]]
        assert os.path.isfile(c["path"]) and c["bytes"] == os.path.getsize(c["path"])
        assert r.checks[f"copy_{c['format']}"] is True
    folder = os.path.dirname(r.output)
    assert_no_partials(folder)
    files = {n for n in folder_listing(folder) if os.path.isfile(os.path.join(folder, n))}
    assert files == {os.path.basename(r.output)} | {os.path.basename(c["path"]) for c in r.copies}


def test_copies_decode_at_the_codecs_rate_with_the_masters_length(with_copies):
    task, r, _ = with_copies
    master = sf.info(r.output)
    for c in r.copies:
        info = sf.info(c["path"])
        want_rate = 48000 if c["format"] == "opus" else 44100  # Opus decodes at 48 kHz only
        assert info.samplerate == c["sample_rate"] == want_rate
        assert info.channels == master.channels
        assert info.subtype == {"ogg": "VORBIS", "opus": "OPUS", "mp3": "MPEG_LAYER_III"}[c["format"]]
        assert abs(info.frames - round(master.frames * want_rate / 44100)) <= 1


def test_copies_are_under_the_ceiling_and_report_what_they_measure(with_copies):
    task, r, _ = with_copies
    for c in r.copies:
        x, rate = decoded(c["path"])
        tp = meter.true_peak_dbtp(x, 4)
        assert tp <= task.delivery.max_true_peak_dbtp
        assert c["true_peak_dbtp"] == pytest.approx(tp, abs=0.006)
        lufs = meter.integrated_loudness(x, rate)
        assert c["integrated_lufs"] == pytest.approx(lufs, abs=0.006)
        # an independent meter agrees on the shipped file
        assert pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(x.T.astype(np.float64)) \
            == pytest.approx(lufs, abs=0.2)
        assert abs(lufs - (-14.0)) <= 0.3  # a lossy copy moves loudness by hundredths of an LU
        assert c["attempts"] == 1 and c["ceiling_dbtp"] is None  # nothing over: not re-limited


def test_copies_carry_the_tags_read_back_by_mutagen_and_ffprobe(with_copies):
    task, r, _ = with_copies
    for c in r.copies:
        assert tags.read_tags(c["path"]) == {**TAGS, "isrc": "USAB12400007"}
    if FFPROBE is None:
        pytest.skip("ffprobe not installed")
    for c in r.copies:
        found = ffprobe_tags(c["path"])
        assert found["title"] == "Señal Ω" and found["artist"] == "The Testers" and found["album"] == "Copies"


def test_vorbis_and_mp3_copies_carry_replaygain_of_their_measured_loudness(with_copies):
    task, r, _ = with_copies
    for c in r.copies:
        if c["format"] == "opus":
            continue
        x, rate = decoded(c["path"])
        lufs, tp = meter.integrated_loudness(x, rate), meter.true_peak_dbtp(x, 4)
        loud = tags.read_loudness(c["path"])
        assert R128_NAME not in loud
        assert float(loud["REPLAYGAIN_TRACK_GAIN"].removesuffix(" dB")) == pytest.approx(-18.0 - lufs, abs=0.006)
        assert float(loud["REPLAYGAIN_TRACK_PEAK"]) == pytest.approx(10 ** (tp / 20), rel=1e-3)
        if FFPROBE is not None:
            found = ffprobe_tags(c["path"])
            assert found["replaygain_track_gain"] == loud["REPLAYGAIN_TRACK_GAIN"]


R128_NAME = "R128_TRACK_GAIN"


def test_opus_copy_carries_r128_track_gain_in_q7_8_and_no_replaygain(with_copies):
    task, r, _ = with_copies
    (c,) = [c for c in r.copies if c["format"] == "opus"]
    x, rate = decoded(c["path"])
    lufs = meter.integrated_loudness(x, rate)
    loud = tags.read_loudness(c["path"])
    assert not {"REPLAYGAIN_TRACK_GAIN", "REPLAYGAIN_TRACK_PEAK"} & set(loud)  # RFC 7845: never in Opus
    q78 = int(loud[R128_NAME])
    # RFC 7845 5.2.1: relative to -23 LUFS, in 1/256 dB, on top of the header's output gain (0 here)
    assert opus_output_gain(c["path"]) == 0
    assert q78 == pytest.approx((-23.0 - lufs) * 256, abs=2)
    assert q78 / 256 == pytest.approx(-23.0 - (-14.0), abs=0.3)
    if FFPROBE is not None:
        assert ffprobe_tags(c["path"])["r128_track_gain"] == loud[R128_NAME]


def test_the_report_records_carry_the_copies(with_copies):
    task, r, _ = with_copies
    d = json.loads(json.dumps(r.to_dict()))
    assert [c["format"] for c in d["copies"]] == [c["format"] for c in r.copies]
    for c in d["copies"]:
        assert {"format", "path", "status", "true_peak_dbtp", "attempts", "ceiling_dbtp", "integrated_lufs"} <= set(c)
    assert type(r).from_dict(d).copies == r.copies


# ---------------------------------------------------------------- the codec pushes a copy over the ceiling

HOT = """
[loudness]
target_lufs = -7.0
max_gain_reduction_db = 20.0
[limiter]
ceiling_dbtp = -1.0
[output]
format = "flac"
copies = {copies}
copy_quality = 0.1
"""


def test_low_bitrate_vorbis_of_a_dense_master_overshoots_and_is_relimited(tmp_path):
    """A loud, heavily limited master at -1 dBTP, encoded to low-bitrate Vorbis,
    decodes over the ceiling; the copy is re-limited until it does not."""
    p = preset_file(tmp_path, "hot", HOT.format(copies='["ogg"]'))
    write_audio(tmp_path / "dense.wav", synth.music(8.0, 44100, 2, seed=3), 44100, "PCM_24")
    r = render_track(one_task(tmp_path, "dense.wav", p, tags=TAGS))
    assert r.status == STATUS_OK, r.reason
    assert r.result["true_peak_dbtp"] <= -1.0 and r.max_gain_reduction_db > 10  # a dense master at the ceiling
    (c,) = r.copies
    assert c["status"] == "ok" and c["attempts"] >= 2, c
    assert c["true_peaks_dbtp"][0] > -1.0  # the plain encode went over
    assert c["true_peaks_dbtp"][-1] <= -1.0 and c["ceiling_dbtp"] < -1.0
    x, _ = decoded(c["path"])
    assert meter.true_peak_dbtp(x, 4) <= -1.0  # the file on disk, measured here
    assert float(tags.read_loudness(c["path"])["FARM_TRUE_PEAK_DBTP"]) == pytest.approx(c["true_peak_dbtp"], abs=0.01)


def _overshooting_encoder(monkeypatch, db: float, seen: list | None = None):
    """Every copy encode comes out ``db`` louder than what it was given (a codec that overshoots)."""
    write = audio.CopyWriter.write
    gain = np.float32(10 ** (db / 20))

    def louder(self, block):
        if seen is not None:
            seen.append(np.asarray(block).shape[-1])
        return write(self, np.asarray(block, dtype=np.float32) * gain)

    monkeypatch.setattr(audio.CopyWriter, "write", louder)


def test_a_forced_overshoot_is_fixed_by_lowering_the_copys_ceiling(tmp_path, monkeypatch):
    _overshooting_encoder(monkeypatch, 0.6)
    p = preset_file(tmp_path, "forced", HOT.format(copies='["opus"]').replace("copy_quality = 0.1", ""))
    write_audio(tmp_path / "dense.wav", synth.music(6.0, 48000, 2, seed=4), 48000, "PCM_24")
    r = render_track(one_task(tmp_path, "dense.wav", p, tags=TAGS))
    assert r.status == STATUS_OK, r.reason
    (c,) = r.copies
    assert c["true_peaks_dbtp"][0] > -1.0 + 0.4  # +0.6 dB over a master at the ceiling
    assert c["attempts"] >= 2 and c["true_peak_dbtp"] <= -1.0
    # lowered by at least the forced overshoot (plus what the codec adds on this dense master, a few
    # tenths of a dB), never by more than the allowed drop
    assert -1.0 - delivery.MAX_CEILING_DROP_DB <= c["ceiling_dbtp"] <= -1.0 - 0.6 - delivery.MARGIN_DB
    x, _ = decoded(c["path"])
    assert meter.true_peak_dbtp(x, 4) <= -1.0
    # the master itself was not touched by the copy's limiter
    assert sf.info(r.output).frames == x.shape[-1] and r.result["true_peak_dbtp"] <= -1.0


def test_a_copy_that_cannot_be_fixed_fails_alone_and_the_master_is_delivered(tmp_path, monkeypatch):
    _overshooting_encoder(monkeypatch, 5.0)  # would need the ceiling 5 dB lower: more than allowed
    p = preset_file(tmp_path, "hopeless", HOT.format(copies='["ogg", "opus"]').replace("copy_quality = 0.1", ""))
    write_audio(tmp_path / "dense.wav", synth.music(6.0, 48000, 2, seed=4), 48000, "PCM_24")
    task = one_task(tmp_path, "dense.wav", p, tags=TAGS)
    r = render_track(task)
    assert r.status == STATUS_FAILED
    assert r.output == task.out_path and os.path.isfile(r.output)  # the master was delivered
    assert task.track.source in r.reason and "ogg copy" in r.reason and "opus copy" in r.reason
    assert "dBTP" in r.reason and "was delivered" in r.reason
    assert r.checks["copy_ogg"] is False and r.checks["copy_opus"] is False and r.checks["true_peak"] is True
    for c in r.copies:
        assert c["status"] == STATUS_FAILED and c["path"] is None and c["true_peaks_dbtp"][0] > 3.0
    folder = os.path.dirname(task.out_path)
    assert not [n for n in folder_listing(folder) if n.endswith((".ogg", ".opus"))]
    assert_no_partials(folder)


# ---------------------------------------------------------------- configuration

def test_mp3_without_an_encoder_is_a_config_error_naming_the_preset_and_field(tmp_path, monkeypatch):
    formats = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(sf, "available_formats", lambda: formats)
    p = preset_file(tmp_path, "mp3copy", '[loudness]\ntarget_lufs = -14.0\n[output]\ncopies = ["ogg", "mp3"]\n')
    with pytest.raises(ConfigError) as e:
        load_preset(p)
    msg = str(e.value)
    assert "mp3copy.toml" in msg and "[output] copies" in msg and "'mp3'" in msg
    assert "MPEG" in msg and "ogg" in msg  # what is missing, and what this libsndfile can write instead
    assert "'ogg'" not in msg.split("'mp3'")[0]  # ogg itself is fine
    # and through a job: refused before anything renders
    write_audio(tmp_path / "a.wav", synth.music(1.0, 48000, 2), 48000, "PCM_24")
    with pytest.raises(ConfigError, match=r"\[output\] copies: 'mp3' cannot be written"):
        one_task(tmp_path, "a.wav", p)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("body, words", [
    ('copies = ["aac"]', ["'aac' is not a delivery copy format", "ogg, opus, mp3"]),
    ('copies = ["ogg", "ogg"]', ["each format once"]),
    ('copies = "ogg"', ["copies: must be an array of text"]),
    ('copy_quality = 0.0', ["copy_quality: must be between 0.1"]),
    ('bwf = "yes"', ["bwf: must be true or false"]),
])
def test_bad_copy_settings_are_config_errors(tmp_path, body, words):
    p = preset_file(tmp_path, "bad", f"[loudness]\ntarget_lufs = -14.0\n[output]\n{body}\n")
    with pytest.raises(ConfigError) as e:
        load_preset(p)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_copy_rates():
    assert audio.copy_rate("opus", 44100) == audio.copy_rate("opus", 96000) == 48000
    assert audio.copy_rate("mp3", 44100) == 44100 and audio.copy_rate("mp3", 88200) == 44100
    assert audio.copy_rate("mp3", 96000) == 48000 and audio.copy_rate("ogg", 96000) == 96000


# ---------------------------------------------------------------- BWF bext

def parse_bext(path: str) -> tuple[dict, list[bytes]]:
    """Our own reader, from EBU Tech 3285 v2 and Tech 3306 (RF64): the chunk
    ids in order and the bext fields. Sizes/offsets are read from the bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:4] in (b"RIFF", b"RF64") and raw[8:12] == b"WAVE"
    pos, ids, bext, data_size = 12, [], None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if cid == b"ds64":
            data_size = struct.unpack("<Q", raw[pos + 16:pos + 24])[0]
        if cid == b"data" and size == 0xFFFFFFFF:
            size = data_size
        ids.append(cid)
        if cid == b"bext":
            bext = raw[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)
    assert bext is not None, ids
    out = {
        "description": bext[0:256].rstrip(b"\0").decode("ascii"),
        "originator": bext[256:288].rstrip(b"\0").decode("ascii"),
        "originator_reference": bext[288:320].rstrip(b"\0").decode("ascii"),
        "origination_date": bext[320:330].decode("ascii"),
        "origination_time": bext[330:338].decode("ascii"),
        "time_reference": struct.unpack("<Q", bext[338:346])[0],
        "version": struct.unpack("<H", bext[346:348])[0],
        "umid": bext[348:412],
        "loudness": struct.unpack("<5h", bext[412:422]),  # Value, Range, MaxTruePeak, MaxMomentary, MaxShortTerm
        "reserved": bext[422:602],
        "coding_history": bext[602:].rstrip(b"\0").decode("ascii"),
    }
    return out, ids


def assert_bext_matches_the_file(path: str) -> None:
    b, ids = parse_bext(path)
    assert ids.index(b"bext") < ids.index(b"data")  # where BWF readers look first
    assert b["version"] == 2 and b["umid"] == bytes(64) and b["reserved"] == bytes(180)
    assert b["time_reference"] == 0 and b["originator"] == "mastering-farm"
    assert b["description"] == "The Testers - Senal"
    assert len(b["origination_date"]) == 10 and b["origination_date"][4] == "-"
    assert len(b["origination_time"]) == 8 and b["origination_time"][2] == ":"
    info = sf.info(path)
    assert b["coding_history"] == f"A=PCM,F={info.samplerate},W=24,M=stereo,T=mastering-farm\r\n"
    x, rate = decoded(path)
    st = meter.measure(x, rate)
    want = [st.integrated_lufs, st.loudness_range_lu, st.true_peak_dbtp, st.max_momentary_lufs,
            st.max_short_term_lufs]
    got = [v / 100 for v in b["loudness"]]
    assert got == pytest.approx(want, abs=0.0051)
    assert got[0] == pytest.approx(-23.0, abs=0.2) and got[2] <= -1.0
    assert pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(x.T.astype(np.float64)) \
        == pytest.approx(got[0], abs=0.2)


def test_bwf_master_carries_bext_loudness_read_back_independently(tmp_path):
    write_audio(tmp_path / "prog.wav", synth.music(6.0, 44100, 2, seed=6), 44100, "PCM_24")
    task = one_task(tmp_path, "prog.wav", "ebu-r128", tags=TAGS, overrides={"output": {"bwf": True}})
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    assert r.checks["bwf"] is True
    assert_bext_matches_the_file(r.output)
    assert tags.read_tags(r.output) == TAGS  # the ID3 chunk is still there for mutagen
    if FFPROBE is not None:  # libavformat parses bext (not its loudness fields): the text fields
        found = ffprobe_tags(r.output)
        assert found["comment"] == "The Testers - Senal" and found["encoded_by"] == "mastering-farm"
        assert found["coding_history"].startswith("A=PCM,F=48000,W=24")


def test_without_bwf_there_is_no_bext_chunk(tmp_path):
    write_audio(tmp_path / "prog.wav", synth.music(2.0, 48000, 2, seed=6), 48000, "PCM_24")
    r = render_track(one_task(tmp_path, "prog.wav", "ebu-r128", tags=TAGS))
    assert r.status == STATUS_OK, r.reason
    assert tags.read_bext(r.output) is None and "bwf" not in r.checks


def test_bext_rewrite_in_place_and_plain_wav_sizes(tmp_path):
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 4801))).astype(np.float32)
    path = str(tmp_path / "t.wav")
    sf.write(path, x.T, 48000, subtype="PCM_16")
    tags.write_tags(path, TAGS)
    tags.write_bext(path, {"integrated_lufs": -23.456, "true_peak_dbtp": None}, description="d", coding_history="A=PCM")
    tags.write_bext(path, {"integrated_lufs": -20.0}, description="e", coding_history="A=PCM")  # same size: in place
    b, ids = parse_bext(path)
    assert ids.count(b"bext") == 1 and b"JUNK" not in ids
    assert b["loudness"][0] == -2000 and b["loudness"][2] == 0x7FFF  # not measured: 0x7FFF
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        assert struct.unpack("<I", f.read(8)[4:])[0] == size - 8  # RIFF size covers the new chunk
    y, _ = sf.read(path, dtype="float32", always_2d=True)
    assert y.shape == (4801, 2) and np.abs(y.T - x).max() < 2 ** -15
    assert tags.read_tags(path) == TAGS


# ---------------------------------------------------------------- the streamed (long-programme) path

def test_streamed_render_makes_copies_block_by_block_and_bext_in_rf64(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "WAV_LIMIT_BYTES", 1 << 20)  # the master goes RF64, as past 4 GiB
    monkeypatch.setattr(budget, "should_stream", lambda *a: True)
    monkeypatch.setattr(budget, "block_frames", lambda *a: stream.BLOCK_QUANTUM)
    seen: list[int] = []
    _overshooting_encoder(monkeypatch, 0.0, seen)  # records block sizes, changes nothing
    write_audio(tmp_path / "long.wav", synth.music(12.0, 44100, 2, seed=8), 44100, "PCM_24")
    task = one_task(tmp_path, "long.wav", "ebu-r128", tags=TAGS,
                    overrides={"output": {"bwf": True, "copies": ["ogg", "opus"]}})
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    assert "streamed_block_frames" in r.timings and sf.info(r.output).format == "RF64"
    assert_bext_matches_the_file(r.output)
    frames = sf.info(r.output).frames
    for c in r.copies:
        assert c["status"] == "ok", c
        x, rate = decoded(c["path"])
        assert rate == 48000 and abs(x.shape[-1] - frames) <= 1
        assert meter.true_peak_dbtp(x, 4) <= -1.0
        assert meter.integrated_loudness(x, rate) == pytest.approx(-23.0, abs=0.3)
    # bounded memory: the copies were fed in blocks, never the programme whole
    assert seen and max(seen) <= 2 * delivery.COPY_BLOCK and max(seen) < frames
    assert_no_partials(os.path.dirname(r.output))
