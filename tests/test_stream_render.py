"""A long programme rendered streamed equals the same programme rendered whole.

The streamed render (farm.stream_render) is forced on CI-sized programmes by
patching the budget decision, with one-quantum blocks so a 30 s programme
spans a dozen blocks; a loud transient sits on a block edge. The master it
publishes must be the whole-file master sample for sample (dither included:
every stage works on the whole-signal function's chunk grid), with the same
measurements and verdict.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from farm import audio, budget, synth
from farm.records import STATUS_OK
from farm.render import render_track
from farm.stream_render import Spill, master_streamed
from kernels import stream
from kernels.chain import master
from kernels.params import ChainParams
from test_render import one_task, write_audio

BLOCK = stream.BLOCK_QUANTUM


def programme(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Music with a quiet section (the gate has work) and a transient across a block edge."""
    x = synth.music(seconds, rate, seed=seed, peak_dbfs=-3.0)
    n = x.shape[-1]
    x[:, n // 3: n // 2] *= 0.1
    edge = 2 * BLOCK
    x[:, edge - 2:edge + 2] = [[0.99, -0.99, 0.99, -0.99]] * x.shape[0]
    return x


def render_whole_and_streamed(tmp_path, monkeypatch, x, rate, name, preset, subtype="PCM_24", **flags):
    write_audio(tmp_path / name, x, rate, subtype)
    task = one_task(tmp_path, name, preset, **flags)
    whole = render_track(task)
    assert whole.status == STATUS_OK, whole.reason
    assert "streamed_block_frames" not in whole.timings
    kept = str(tmp_path / ("whole-" + os.path.basename(whole.output)))
    os.replace(whole.output, kept)
    monkeypatch.setattr(budget, "should_stream", lambda *a: True)
    monkeypatch.setattr(budget, "block_frames", lambda *a: BLOCK)
    streamed = render_track(task)
    assert streamed.status == STATUS_OK, streamed.reason
    assert streamed.timings["streamed_block_frames"] == BLOCK
    return task, whole, kept, streamed


def assert_same_master(whole, kept, streamed):
    a, ra = sf.read(kept, dtype="float64", always_2d=True)
    b, rb = sf.read(streamed.output, dtype="float64", always_2d=True)
    assert ra == rb and a.shape == b.shape
    assert np.array_equal(a, b), f"max diff {np.abs(a - b).max()}"
    for k in ("gain_db", "max_gain_reduction_db"):
        assert getattr(whole, k) == getattr(streamed, k), k
    for k in ("integrated_lufs", "true_peak_dbtp", "loudness_range_lu", "sample_peak_dbfs"):
        assert whole.result[k] == streamed.result[k], k
        assert whole.input[k] == streamed.input[k], k
    assert {k: v for k, v in whole.checks.items() if k != "loudness_cross_check"} == streamed.checks
    assert whole.checks.get("loudness_cross_check", True)


def test_streamed_master_equals_whole_file_master(tmp_path, monkeypatch):
    """EQ, plate reverb, loudness loop, limiter with its check, TPDF dither, FLAC."""
    rate = 48000
    x = programme(30.0, rate)
    task, whole, kept, streamed = render_whole_and_streamed(tmp_path, monkeypatch, x, rate, "long.wav", "master")
    assert_same_master(whole, kept, streamed)
    assert abs(streamed.result["integrated_lufs"] - (-14.0)) <= 0.15
    assert streamed.result["true_peak_dbtp"] <= -1.0
    # only the master (and the report's plot data) is left: the spills and the partial file are gone
    assert sorted(os.listdir(os.path.dirname(streamed.output))) == sorted([os.path.basename(streamed.output),
                                                                           "report"])


def test_streamed_with_rate_conversion_and_ring_out(tmp_path, monkeypatch):
    """96 kHz in, 48 kHz 24-bit WAV out (the EBU preset), a reverb that rings out past the end."""
    x = programme(16.0, 96000, seed=2)
    task, whole, kept, streamed = render_whole_and_streamed(
        tmp_path, monkeypatch, x, 96000, "hi.flac", "ebu-r128",
        overrides={"reverb": {"bypass": False, "ir": "hall", "tail": "keep", "wet_db": -26.0}})
    assert_same_master(whole, kept, streamed)
    assert sf.info(streamed.output).samplerate == 48000
    assert streamed.result["duration_s"] > 16.0 + 1.0  # the hall rings on


def test_streamed_wav_past_the_riff_limit_is_rf64(tmp_path, monkeypatch):
    """A WAV master that would pass 4 GiB is written as RF64 (the limit patched down to test it)."""
    monkeypatch.setattr(audio, "WAV_LIMIT_BYTES", 1 << 20)
    rate = 48000
    x = programme(12.0, rate, seed=3)
    write_audio(tmp_path / "big.wav", x, rate, "PCM_24")
    task = one_task(tmp_path, "big.wav", "ebu-r128")
    monkeypatch.setattr(budget, "should_stream", lambda *a: True)
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    info = sf.info(r.output)
    assert r.output.endswith(".wav") and info.format == "RF64" and info.frames == x.shape[-1]


def test_progress_rises_to_one_and_spills_are_bounded(tmp_path):
    """master_streamed reports a rising fraction; its spills hold the shared stages' output."""
    rate = 48000
    x = programme(8.0, rate, seed=4).astype(np.float32)
    src = write_audio(tmp_path / "p.wav", x, rate, "FLOAT")
    reader = audio.BlockReader(src, BLOCK // 2)
    seen = []
    written = []

    class Sink:
        def __enter__(self):
            written.clear()
            return self

        def __exit__(self, *exc):
            return False

        def write(self, b):
            written.append(b)

    chain = ChainParams()
    res, before, frames = master_streamed(reader, rate, chain, None, Sink, block=BLOCK // 2,
                                          spill_beside=str(tmp_path / "p-master.wav"), progress=seen.append)
    assert frames == x.shape[-1] and sum(b.shape[-1] for b in written) == frames
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] <= 1.0 and len(seen) > 4
    assert res.reached and abs(res.integrated_lufs - chain.loudness.target_lufs) <= 0.1
    assert res.true_peak_dbtp <= chain.limiter.ceiling_dbtp
    assert sorted(os.listdir(tmp_path)) == ["p.wav"]  # spills removed
    whole = master(x, rate, chain)
    assert np.array_equal(np.concatenate(written, axis=-1), whole.audio)
    assert res.gain_reduction_db.shape == (-(-frames // 4800),)
    assert np.array_equal(res.gain_reduction_db, whole.gain_reduction_db) and res.gain_reduction_db.max() > 0


def test_spill_reads_back_what_was_written(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    s = Spill(str(tmp_path / "s.raw"), 3)
    for b in stream.split(x, 333):
        s.write(b)
    for size in (1, 250, 5000):
        assert np.array_equal(np.concatenate(list(s.blocks(size)), axis=-1), x)
    s.close()


@pytest.mark.parametrize("bad", ["truncated", "nan"])
def test_bad_long_input_fails_alone_with_a_reason(tmp_path, monkeypatch, bad):
    rate = 48000
    x = programme(6.0, rate, seed=5)
    if bad == "nan":
        x = x.astype(np.float32)
        x[0, 3 * rate] = np.nan
        write_audio(tmp_path / "t.wav", x, rate, "FLOAT")
    else:
        write_audio(tmp_path / "t.wav", x, rate, "PCM_24")
    task = one_task(tmp_path, "t.wav", "master")
    if bad == "truncated":
        with open(tmp_path / "t.wav", "r+b") as f:
            f.truncate(os.path.getsize(tmp_path / "t.wav") // 2)
    monkeypatch.setattr(budget, "should_stream", lambda *a: True)
    r = render_track(task)
    assert r.status != STATUS_OK and str(tmp_path / "t.wav") in r.reason
    assert ("truncated" if bad == "truncated" else "NaN") in r.reason
    out = os.path.dirname(task.out_path)
    assert not os.path.exists(out) or os.listdir(out) == []
