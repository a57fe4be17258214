"""farm.audio's streamed I/O: BlockReader (decode's checks, block by block, re-openable)
and BlockWriter (RF64 for a WAV past 4 GiB, AIFF refused, encode's error translation)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from farm import audio
from signals import music


def _write(path, x, rate=48000, subtype="PCM_24", fmt=None):
    sf.write(str(path), np.ascontiguousarray(x.T), rate, subtype=subtype, format=fmt)
    return str(path)


def _on_grid(x, depth=24):
    scale = 2.0 ** (depth - 1)
    return (np.round(x * scale) / scale).astype(np.float32)


def _cut(path, keep):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep])


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("ext,fmt,subtype", [("wav", None, "PCM_24"), ("flac", None, "PCM_16"),
                                             ("aiff", None, "PCM_16"), ("wav", "RF64", "PCM_24"),
                                             ("w64", "W64", "FLOAT"), ("ogg", None, "VORBIS")])
def test_blocks_concatenate_to_what_decode_reads(tmp_path, ext, fmt, subtype):
    x = music(1.3, seed=2) * 0.5
    p = _write(tmp_path / f"a.{ext}", x, subtype=subtype, fmt=fmt)
    whole = audio.decode(p)
    r = audio.open_blocks(p, 10000)
    assert (r.sample_rate, r.rate, r.channels, r.format, r.subtype) == \
        (48000, 48000, 2, whole.format, whole.subtype)
    assert r.frames == whole.frames and r.frames_exact and r.native_bit_depth == whole.native_bit_depth
    assert r.duration_s == pytest.approx(whole.duration_s)
    blocks = list(r)
    assert all(b.dtype == np.float32 and b.shape[0] == 2 and b.flags.c_contiguous for b in blocks)
    assert [b.shape[1] for b in blocks[:-1]] == [10000] * (len(blocks) - 1) and 0 < blocks[-1].shape[1] <= 10000
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole.audio)
    assert r.frames_read == whole.frames
    # A second pass opens the file again and reads the same.
    np.testing.assert_array_equal(np.concatenate(list(r.blocks()), axis=1), whole.audio)


def test_rf64_and_w64_inputs_decode_with_the_right_format(tmp_path):
    x = _on_grid(music(0.6, seed=3) * 0.5)
    for fmt, ext in (("RF64", "wav"), ("W64", "w64")):
        p = _write(tmp_path / f"in-{fmt}.{ext}", x, fmt=fmt)
        d = audio.decode(p)
        assert d.format == fmt and d.native_bit_depth == 24 and audio.declared_frames(p, fmt) == x.shape[1]
        np.testing.assert_array_equal(d.audio, x)


def test_reader_names_the_file_for_missing_empty_folder_and_undecodable(tmp_path):
    with pytest.raises(audio.AudioError, match="nope.wav: no such file"):
        audio.open_blocks(str(tmp_path / "nope.wav"), 4096)
    with pytest.raises(audio.AudioError, match="not a regular file"):
        audio.open_blocks(str(tmp_path), 4096)
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(audio.AudioError, match="zero.wav: cannot decode: empty file"):
        audio.open_blocks(str(tmp_path / "zero.wav"), 4096)
    (tmp_path / "junk.flac").write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(audio.AudioError, match="junk.flac: cannot decode"):
        audio.open_blocks(str(tmp_path / "junk.flac"), 4096)
    empty = _write(tmp_path / "empty.wav", np.zeros((2, 0)))
    with pytest.raises(audio.AudioError, match="empty.wav: holds no audio"):
        audio.open_blocks(empty, 4096)
    with pytest.raises(ValueError, match="block"):
        audio.open_blocks(_write(tmp_path / "ok.wav", music(0.5)), 0)


def test_reader_refuses_too_many_channels(tmp_path):
    p = _write(tmp_path / "ten.wav", np.zeros((10, 4800)), subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="ten.wav: 10 channels"):
        audio.open_blocks(p, 4096)


def test_nan_is_found_in_its_block_and_the_message_names_the_file(tmp_path):
    x = music(1.0, seed=5) * 0.5
    x[1, 30000] = np.nan
    p = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
    r = audio.open_blocks(p, 8192)
    it = iter(r)
    for _ in range(3):  # frames 0..24575 are clean and come out
        assert np.isfinite(next(it)).all()
    with pytest.raises(audio.AudioError, match=r"nan.wav: contains NaN or infinite samples \(first at frame 30000"):
        next(it)
    assert r.frames_read is None  # no complete pass


@pytest.mark.parametrize("fmt,ext,subtype", [(None, "wav", "PCM_24"), (None, "aiff", "PCM_16"),
                                             ("RF64", "wav", "PCM_24"), ("W64", "w64", "PCM_24")])
def test_a_cut_file_whose_header_declares_more_is_refused_on_opening(tmp_path, fmt, ext, subtype):
    p = _write(tmp_path / f"cut.{ext}", music(1.0, seed=6), subtype=subtype, fmt=fmt)
    _cut(p, os.path.getsize(p) // 2)
    with pytest.raises(audio.AudioError, match=r"cut\.\w+: truncated: its header declares 48000 frames"):
        audio.open_blocks(p, 4096)
    with pytest.raises(audio.AudioError, match="truncated"):  # decode says the same
        audio.decode(p)


def test_a_shortfall_found_at_the_end_of_a_pass_is_an_error_naming_the_file(tmp_path, monkeypatch):
    # A file that shrinks between opening and the end of the pass (a copy still
    # arriving, a network share): the pass finds fewer frames than declared.
    p = _write(tmp_path / "shrinks.wav", music(1.0, seed=7))
    r = audio.open_blocks(p, 4096)
    _cut(p, os.path.getsize(p) // 2)
    with pytest.raises(audio.AudioError, match=r"shrinks.wav: truncated: its header declares 48000 frames but "
                                               r"only 2399\d could be read"):
        for _ in r:
            pass


def test_a_cut_mp3_is_refused_at_the_end_of_the_pass_by_the_slack_rule(tmp_path):
    p = _write(tmp_path / "mix.mp3", music(6.0, seed=8) * 0.5, subtype="MPEG_LAYER_III")
    whole = audio.open_blocks(p, 48000)
    assert not whole.frames_exact
    n = sum(b.shape[1] for b in whole)
    assert whole.frames_read == n and abs(n - whole.frames) <= max(4608, whole.frames // 100)
    _cut(p, os.path.getsize(p) // 2)
    try:
        cut = audio.open_blocks(p, 48000)
    except audio.AudioError as e:  # some libsndfile builds see it at once
        assert "mix.mp3" in str(e)
        return
    with pytest.raises(audio.AudioError, match="mix.mp3: truncated"):
        for _ in cut:
            pass


def test_damaged_flac_data_is_an_error_naming_the_file(tmp_path):
    p = _write(tmp_path / "cut.flac", music(2.0, seed=9))
    _cut(p, os.path.getsize(p) // 3)
    with pytest.raises(audio.AudioError, match="cut.flac"):
        for _ in audio.open_blocks(p, 4096):
            pass


def test_the_reader_never_opens_its_input_for_writing(tmp_path):
    p = _write(tmp_path / "ro.wav", music(0.5, seed=10))
    os.chmod(p, 0o444)
    try:
        r = audio.open_blocks(p, 4096)
        assert sum(b.shape[1] for b in r) == 24000
    finally:
        os.chmod(p, 0o644)


# ---------------------------------------------------------------- writing

@pytest.mark.parametrize("container,depth", [("flac", 16), ("flac", 24), ("wav", 24), ("aiff", 16), ("wav", 16)])
def test_writer_blocks_read_back_exactly_in_the_containers_own_format(tmp_path, container, depth):
    x = _on_grid(music(1.1, seed=11) * 0.5, depth)
    p = str(tmp_path / f"m{audio.extension(container)}")
    with audio.open_writer(p, 44100, 2, container, depth, x.shape[1]) as w:
        for b in np.array_split(x, 7, axis=1):
            w.write(b)
    assert w.frames_written == x.shape[1] and w.format == audio.CONTAINERS[container][0]
    info = sf.info(p)
    assert info.format == audio.CONTAINERS[container][0] and info.subtype == audio.subtype_for(container, depth)
    np.testing.assert_array_equal(audio.decode(p).audio, x)


def test_a_wav_past_the_riff_limit_is_written_as_rf64_and_reads_back_exactly(tmp_path, monkeypatch):
    x = _on_grid(music(1.0, seed=12) * 0.5)
    size = x.size * 3 + audio.HEADER_ALLOWANCE_BYTES
    monkeypatch.setattr(audio, "WAV_LIMIT_BYTES", size)  # as if 48000 frames were past 4 GiB
    assert audio.stream_format("wav", 24, 2, x.shape[1] - 1) == "WAV"
    assert audio.stream_format("wav", 24, 2, x.shape[1]) == "RF64"
    p = str(tmp_path / "long.wav")  # RF64 keeps the .wav name
    with audio.open_writer(p, 48000, 2, "wav", 24, x.shape[1]) as w:
        for b in np.array_split(x, 5, axis=1):
            w.write(b)
    assert w.format == "RF64"
    info = sf.info(p)
    assert (info.format, info.subtype, info.frames, info.channels) == ("RF64", "PCM_24", x.shape[1], 2)
    with open(p, "rb") as f:
        assert f.read(4) == b"RF64"
    d = audio.decode(p)
    assert d.format == "RF64"
    np.testing.assert_array_equal(d.audio, x)
    np.testing.assert_array_equal(np.concatenate(list(audio.open_blocks(p, 7000)), axis=1), x)


def test_writing_past_the_limit_into_a_plain_wav_is_refused_not_wrapped(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "WAV_LIMIT_BYTES", 10000 * 2 * 3 + audio.HEADER_ALLOWANCE_BYTES)
    p = str(tmp_path / "under.wav")
    with pytest.raises(audio.AudioError, match="under.wav: .*4 GiB.*opened for 5000 frames"):
        with audio.open_writer(p, 48000, 2, "wav", 24, 5000) as w:  # announced short: plain WAV
            w.write(np.zeros((2, 8000), np.float32))
            w.write(np.zeros((2, 8000), np.float32))
    assert w.frames_written == 8000


def test_an_aiff_past_4_gib_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "AIFF_LIMIT_BYTES", 1000 + audio.HEADER_ALLOWANCE_BYTES)
    p = tmp_path / "long.aiff"
    with pytest.raises(audio.AudioError, match="AIFF files stop at 4 GiB; deliver this programme as flac"):
        audio.open_writer(str(p), 48000, 2, "aiff", 24, 48000)
    assert not p.exists()
    # at the real limit: two hours of 96 kHz stereo 24-bit (4.15 GB) just fit; 2.5 hours do not
    monkeypatch.undo()
    assert audio.stream_format("aiff", 24, 2, 2 * 3600 * 96000) == "AIFF"
    assert audio.stream_format("wav", 24, 2, 2 * 3600 * 96000) == "WAV"
    with pytest.raises(audio.AudioError, match="aiff cannot hold"):
        audio.stream_format("aiff", 24, 2, 9000 * 96000)
    assert audio.stream_format("wav", 24, 2, 9000 * 96000) == "RF64"
    assert audio.stream_format("flac", 24, 2, 9000 * 96000) == "FLAC"


def test_writer_errors_name_the_file(tmp_path):
    with pytest.raises(audio.AudioError, match="no-such-folder/m.flac: cannot write flac 24-bit"):
        audio.open_writer(str(tmp_path / "no-such-folder" / "m.flac"), 48000, 2, "flac", 24, 100)
    with pytest.raises(audio.AudioError, match="flac cannot hold 32-bit"):
        audio.open_writer(str(tmp_path / "m.flac"), 48000, 2, "flac", 32, 100)
    with audio.open_writer(str(tmp_path / "m.flac"), 48000, 2, "flac", 24, 100) as w:
        with pytest.raises(ValueError, match=r"shaped \(2, k\)"):
            w.write(np.zeros((1, 10), np.float32))


def test_a_full_disk_is_reported_with_its_errno(tmp_path, monkeypatch):
    # encode()'s translation: libsndfile says only "System error."; the errno says which.
    w = audio.open_writer(str(tmp_path / "full.wav"), 48000, 2, "wav", 16, 1000)

    class Full(sf.LibsndfileError):
        def __init__(self):
            RuntimeError.__init__(self, "System error.")
            self.code = 2

        def __str__(self):
            return "System error."

    class FakeFile:
        closed = False

        def write(self, data):
            raise Full()

        def close(self):
            self.closed = True

    w._f.close()
    w._f = FakeFile()
    monkeypatch.setattr(sf._ffi, "errno", 28)
    with pytest.raises(audio.AudioError, match=r"full.wav: cannot write wav 16-bit \(System error: \[Errno 28\] "
                                               r"No space left on device\)"):
        w.write(np.zeros((2, 10), np.float32))
