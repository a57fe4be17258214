"""farm.audio: decode/encode round trips and clear, file-naming errors for bad input."""
import os

import numpy as np
import pytest
import soundfile as sf

from farm import audio
from signals import music


def _write(path, x, rate=48000, subtype="PCM_24", fmt=None):
    sf.write(path, x.T, rate, subtype=subtype, format=fmt)
    return str(path)


@pytest.mark.parametrize("ext,subtype,depth", [("wav", "PCM_16", 16), ("flac", "PCM_24", 24),
                                               ("aiff", "PCM_16", 16), ("wav", "FLOAT", 24),
                                               ("ogg", "VORBIS", 24), ("mp3", "MPEG_LAYER_III", 24)])
def test_decode_formats(tmp_path, ext, subtype, depth):
    x = music(1.0, seed=1) * 0.5
    p = _write(tmp_path / f"a.{ext}", x, subtype=subtype)
    d = audio.decode(p)
    assert d.audio.dtype == np.float32 and d.channels == 2 and d.sample_rate == 48000
    assert d.native_bit_depth == depth
    if ext in ("wav", "flac", "aiff"):
        assert d.frames == x.shape[1]
        np.testing.assert_allclose(d.audio, x, atol=2.0 ** -14)


@pytest.mark.parametrize("container,depth", [("flac", 16), ("flac", 24), ("wav", 24), ("aiff", 16)])
def test_encode_round_trip_is_exact_on_the_pcm_grid(tmp_path, container, depth):
    scale = 2.0 ** (depth - 1)
    x = (np.round(music(0.5, seed=4) * scale) / scale).astype(np.float32)
    p = str(tmp_path / f"out{audio.extension(container)}")
    audio.encode(p, x, 44100, container, depth)
    d = audio.decode(p)
    np.testing.assert_array_equal(d.audio, x)
    assert d.native_bit_depth == depth


def test_missing_directory_empty_corrupt_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(audio.AudioError, match="nope.wav: no such file"):
        audio.decode(str(tmp_path / "nope.wav"))
    with pytest.raises(audio.AudioError, match="not a regular file"):
        audio.decode(str(tmp_path))
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(audio.AudioError, match="junk.flac: cannot decode"):
        audio.decode(str(junk))
    empty = _write(tmp_path / "empty.wav", np.zeros((2, 0)))
    with pytest.raises(audio.AudioError, match="empty.wav: holds no audio"):
        audio.decode(empty)
    good = _write(tmp_path / "cut.flac", music(1.0))
    data = (tmp_path / "cut.flac").read_bytes()
    with open(tmp_path / "cut.flac", "wb") as f:
        f.write(data[:200])  # header survives, the frames do not
    with pytest.raises(audio.AudioError, match="cut.flac"):
        audio.decode(str(tmp_path / "cut.flac"))


def test_nan_samples_and_too_many_channels_are_refused(tmp_path):
    x = music(0.5, channels=2)
    x[0, 100] = np.nan
    p = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="nan.wav: contains NaN"):
        audio.decode(p)
    p = _write(tmp_path / "many.wav", np.zeros((10, 1000)) + 0.1)
    with pytest.raises(audio.AudioError, match="10 channels"):
        audio.decode(p)


def test_atomic_output_leaves_nothing_behind_on_failure(tmp_path):
    final = str(tmp_path / "m.flac")
    with pytest.raises(RuntimeError):
        with audio.atomic_output(final) as tmp:
            audio.encode(tmp, np.zeros((2, 100), np.float32), 48000, "flac", 16)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with audio.atomic_output(final) as tmp:
        assert os.path.basename(tmp).startswith(".m.") and ".partial" in tmp
        audio.encode(tmp, np.zeros((2, 100), np.float32), 48000, "flac", 16)
        audio.commit(tmp, final)
    assert os.listdir(tmp_path) == ["m.flac"]


def test_resample_keeps_duration_and_a_tone(tmp_path):
    rate_in, rate_out = 44100, 48000
    t = np.arange(rate_in) / rate_in
    x = np.tile(0.5 * np.sin(2 * np.pi * 1000 * t), (2, 1)).astype(np.float32)
    y = audio.resample(x, rate_in, rate_out)
    assert y.shape == (2, rate_out) and y.dtype == np.float32
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(rate_out) / rate_out)
    np.testing.assert_allclose(y[0, 1000:-1000], ref[1000:-1000], atol=1e-3)
    assert audio.resample(x, 48000, 48000) is x


def test_committed_files_get_the_umask_mode_not_the_tempfile_0600(tmp_path):
    final = str(tmp_path / "m.flac")
    with audio.atomic_output(final) as tmp:
        assert os.stat(tmp).st_mode & 0o777 == 0o600
        audio.encode(tmp, np.zeros((2, 4800), dtype=np.float32), 48000, "flac", 16)
        audio.commit(tmp, final)
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(final).st_mode & 0o777 == 0o666 & ~mask


def test_decoded_keeps_the_frames_as_read_and_transposes_on_first_use(tmp_path):
    """decode returns libsndfile's (samples, channels) frames; ``audio`` is the
    (channels, samples) C-contiguous copy the kernels take, made once."""
    x = music(1.0, 48000, 3).astype(np.float32)
    dec = audio.decode(_write(tmp_path / "a.wav", x, subtype="FLOAT"))
    assert dec.interleaved.shape == (48000, 3) and (dec.channels, dec.frames) == (3, 48000)
    a = dec.audio
    assert a.shape == (3, 48000) and a.flags.c_contiguous and a is dec.audio
    assert np.array_equal(a, x) and np.array_equal(a, dec.interleaved.T)
    assert dec.interleaved.base is a  # held once: the frames are now a view of it


def test_a_float_file_still_refuses_infinity_and_pcm_needs_no_check(tmp_path):
    x = music(1.0, 48000, 2).astype(np.float32)
    x[1, 7] = np.inf
    with pytest.raises(audio.AudioError, match="inf.wav: contains NaN or infinite"):
        audio.decode(_write(tmp_path / "inf.wav", x, subtype="FLOAT"))
    for subtype in ("PCM_16", "PCM_24", "PCM_32"):  # integers scale to finite floats
        assert np.isfinite(audio.decode(_write(tmp_path / f"{subtype}.wav", np.clip(x, -1, 0.99),
                                                subtype=subtype)).audio).all()
