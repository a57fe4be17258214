"""farm.plots: the report's plot series, computed on the worker.

The series are checked against independent references (scipy's Welch, the
meter's true peak and short-term loudness), block-fed accumulators against
one whole push, long programmes against the size bound, and both renders
(whole-file and streamed) for the same plot data on disk.
"""
from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import scipy.signal

from farm import budget, plots, synth
from farm.records import STATUS_FAILED, STATUS_OK
from farm.render import render_track
from kernels import loudness as meter
from test_render import one_task, tasks_for, write_audio

RATE = 48000


def _music(seconds=8.0, rate=RATE, channels=2, seed=3, peak_dbfs=-1.0) -> np.ndarray:
    return synth.music(seconds, rate, channels, seed=seed, peak_dbfs=peak_dbfs).astype(np.float32)


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
def test_welch_equals_scipy_averaged_over_channels(rate):
    x = _music(3.0, rate)
    w = plots.Welch(rate, 2)
    for i in range(0, x.shape[-1], 10007):  # blocks that straddle segment edges
        w.push(x[:, i:i + 10007])
    f, psd = w.result()
    n = plots.welch_segment(rate)
    f_ref, p_ref = scipy.signal.welch(x.astype(np.float64), rate, "hann", n, n // 2, detrend=False)
    assert np.array_equal(f, f_ref)
    np.testing.assert_allclose(psd, p_ref.mean(axis=0), rtol=1e-9, atol=0)


def test_spectrum_smoothing_finds_a_tone():
    t = np.arange(2 * RATE) / RATE
    x = (0.5 * np.sin(2 * np.pi * 1000.0 * t))[None].astype(np.float32)
    side = plots.side_from_array(x, RATE)
    assert len(side.spectrum_hz) == plots.SPECTRUM_POINTS
    assert 900 < side.spectrum_hz[np.argmax(side.spectrum_db)] < 1100
    assert side.spectrum_db.max() - np.median(side.spectrum_db) > 60


def test_true_peak_markers_find_the_peak_where_it_is():
    x = 0.1 * _music(6.0, peak_dbfs=-20.0)
    at = int(4.237 * RATE)
    x[:, at] = 0.9  # one hot sample: its interpolated peak is the programme's true peak
    marks = plots.side_from_array(x, RATE).true_peaks
    assert len(marks) == plots.TOP_PEAKS
    t, db = marks[0]
    assert abs(t - at / RATE) < 1e-3
    assert abs(db - meter.true_peak_dbtp(x)) < 1e-3  # the meter's BS.1770-4 4x true peak
    assert [m[1] for m in marks] == sorted((m[1] for m in marks), reverse=True)


def test_block_fed_side_equals_the_whole_signal_side():
    x = _music(9.0)
    whole = plots.side_from_array(x, RATE)
    lm = meter.LoudnessMeter(RATE, 2)
    s = plots.SideStream(RATE, 2, short_term_from=lm)
    for i in range(0, x.shape[-1], 12345):
        lm.push(x[:, i:i + 12345])
        s.push(x[:, i:i + 12345])
    streamed = s.finish()
    np.testing.assert_allclose(streamed.spectrum_db, whole.spectrum_db, atol=1e-9)
    np.testing.assert_array_equal(streamed.short_term_lufs, whole.short_term_lufs)
    assert streamed.true_peaks == whole.true_peaks
    assert streamed.duration_s == whole.duration_s == 9.0


def test_the_series_are_taken_where_the_signal_is(xp):
    """A device signal's side (Welch FFTs and hop peaks on the device, blocks that
    straddle segments and hops) equals the host's: the GPU worker's plots cost its host nothing."""
    x = 0.5 * _music(7.3)
    want = plots.side_from_array(x, RATE)
    lm = meter.LoudnessMeter(RATE, 2)
    s = plots.SideStream(RATE, 2, short_term_from=lm)
    dev = xp.asarray(x)
    for i in range(0, x.shape[-1], 40_001):
        lm.push(dev[:, i:i + 40_001])
        s.push(dev[:, i:i + 40_001])
    for got in (plots.side_from_array(dev, RATE), s.finish()):
        assert got.duration_s == want.duration_s
        np.testing.assert_allclose(got.spectrum_db, want.spectrum_db, atol=1e-6)
        np.testing.assert_allclose(got.short_term_lufs, want.short_term_lufs, atol=1e-6)
        assert [m[0] for m in got.true_peaks] == [m[0] for m in want.true_peaks]
        np.testing.assert_allclose([m[1] for m in got.true_peaks], [m[1] for m in want.true_peaks], atol=1e-9)


@pytest.mark.gpu
def test_a_gpu_render_measures_and_plots_on_the_device_like_the_cpu(tmp_path):
    """render_track on a GPU worker: the input and the re-decoded master are measured,
    and their plot series taken, on the device; the record and the plot data agree
    with the CPU render's (the chains differ by float32 rounding only)."""
    write_audio(tmp_path / "a.wav", _music(9.0, peak_dbfs=-9.0), RATE, "PCM_24")
    cpu, gpu = (render_track(tasks_for(tmp_path, [{"file": "a.wav", "title": "a"}], "master", out=name,
                                       backend=name)[0]) for name in ("cpu", "gpu"))
    assert cpu.status == gpu.status == STATUS_OK, (cpu.reason, gpu.reason)
    assert gpu.backend == "gpu" and cpu.backend == "cpu"
    assert gpu.input == cpu.input  # the same decoded input, measured on both (0.01 rounding)
    for k in ("integrated_lufs", "true_peak_dbtp", "loudness_range_lu", "pyloudnorm_lufs"):
        assert abs(gpu.result[k] - cpu.result[k]) <= 0.02, k
    a, b = _plot_doc(cpu), _plot_doc(gpu)
    np.testing.assert_allclose(a["input"]["spectrum_db"], b["input"]["spectrum_db"], atol=1e-6)
    np.testing.assert_allclose(a["master_audio"]["spectrum_db"], b["master_audio"]["spectrum_db"], atol=0.05)
    assert a["input"]["true_peaks"] == b["input"]["true_peaks"]


def test_envelope_keeps_extremes_and_bounds_the_points():
    rng = np.random.default_rng(1)
    v = rng.normal(size=72_000)  # two hours at 10 Hz
    v[12_345], v[54_321] = 9.0, -9.0
    v[100:200] = -np.inf  # digital silence in a loudness series
    idx, e = plots.envelope(v)
    assert len(idx) <= plots.MAX_POINTS and np.all(np.diff(idx) > 0)
    assert 12_345 in idx and 54_321 in idx
    assert np.nanmax(e) == 9.0 and np.nanmin(e) == -9.0
    short = np.arange(10.0)
    assert np.array_equal(plots.envelope(short)[1], short)


def test_a_two_hour_programme_stays_small():
    hours = 2.0
    n = int(hours * 3600 / plots.HOP_S)
    rng = np.random.default_rng(2)
    side = plots.Side(RATE, hours * 3600, rng.normal(-14, 3, n), np.geomspace(20, 20000, 200), rng.normal(-60, 5, 200),
                      [(1.0, -1.0)])
    task = types.SimpleNamespace(track=types.SimpleNamespace(source="/in/mix.wav", target_lufs=None),
                                 delivery=types.SimpleNamespace(target_lufs=-14.0, max_true_peak_dbtp=-1.0),
                                 out_path="/out/mix.flac")
    res = types.SimpleNamespace(gain_reduction_db=rng.uniform(0, 3, n).astype(np.float32))
    doc = plots.plot_document(task, res, side, side)
    text = json.dumps(doc, allow_nan=False)
    assert len(text) < 200_000, len(text)
    assert len(doc["gain_reduction"]["t"]) <= plots.MAX_POINTS
    assert len(doc["input"]["short_term"]["v"]) <= plots.MAX_POINTS


def _plot_doc(r) -> dict:
    path = os.path.join(os.path.dirname(r.output or ""), *r.plot_data.split("/"))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_render_writes_plot_data_beside_the_master_and_only_its_path_travels(tmp_path):
    write_audio(tmp_path / "a.wav", _music(6.0, peak_dbfs=-10.0), RATE, "PCM_24")
    task = one_task(tmp_path, "a.wav")
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    assert r.plot_data == f"report/data/{os.path.basename(task.out_path)}.json"
    out = os.path.dirname(task.out_path)
    assert os.listdir(os.path.join(out, "report", "data")) == [os.path.basename(task.out_path) + ".json"]
    doc = _plot_doc(r)
    assert doc["target_lufs"] == -14.0 and doc["ceiling_dbtp"] == task.delivery.max_true_peak_dbtp
    st = doc["master_audio"]["short_term"]
    assert st["t"][0] == 3.0 and all(abs(v + 14.0) < 3.0 for v in st["v"])  # around the target
    assert doc["master_audio"]["true_peaks"][0][1] <= task.delivery.max_true_peak_dbtp
    assert abs(doc["master_audio"]["true_peaks"][0][1] - r.result["true_peak_dbtp"]) < 0.02
    assert abs(doc["input"]["true_peaks"][0][1] - r.input["true_peak_dbtp"]) < 0.02
    assert len(doc["gain_reduction"]["v"]) == 60 and max(doc["gain_reduction"]["v"]) >= 0.0
    assert len(doc["input"]["spectrum_db"]) == plots.SPECTRUM_POINTS
    assert len(json.dumps(r.to_dict())) < 2000  # the record stays small: a path, not the series


def test_a_failed_master_still_gets_its_plots(tmp_path):
    write_audio(tmp_path / "dyn.wav", synth.music(4.0, RATE, 2, seed=5, peak_dbfs=-1.0), RATE, "PCM_24")
    task = one_task(tmp_path, "dyn.wav", target_lufs=-5.0, overrides={"loudness": {"max_gain_reduction_db": 1.0}})
    r = render_track(task)
    assert r.status == STATUS_FAILED and not os.path.exists(task.out_path)
    with open(os.path.join(os.path.dirname(task.out_path), *r.plot_data.split("/")), encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["input"] and doc["master_audio"] and max(doc["gain_reduction"]["v"]) > 1.0


def test_streamed_render_writes_the_same_plot_data(tmp_path, monkeypatch):
    write_audio(tmp_path / "long.wav", _music(12.0, peak_dbfs=-8.0), RATE, "PCM_24")
    task = one_task(tmp_path, "long.wav", "master")
    whole = render_track(task)
    assert whole.status == STATUS_OK, whole.reason
    a = _plot_doc(whole)
    monkeypatch.setattr(budget, "should_stream", lambda *a: True)
    monkeypatch.setattr(budget, "block_frames", lambda *a: 3 * 4096 + 17)
    streamed = render_track(task)
    assert streamed.status == STATUS_OK and "streamed_block_frames" in streamed.timings, streamed.reason
    b = _plot_doc(streamed)
    assert a.keys() == b.keys()
    for side in ("input", "master_audio"):
        assert a[side]["short_term"] == b[side]["short_term"]
        np.testing.assert_allclose(a[side]["spectrum_db"], b[side]["spectrum_db"], atol=0.011)
        np.testing.assert_allclose(a[side]["true_peaks"], b[side]["true_peaks"], atol=0.011)
    assert a["gain_reduction"] == b["gain_reduction"]
    out = os.path.dirname(task.out_path)
    assert sorted(os.listdir(os.path.join(out, "report", "data"))) == [os.path.basename(task.out_path) + ".json"]


def test_plot_data_failure_never_fails_the_master(tmp_path, monkeypatch, caplog):
    write_audio(tmp_path / "a.wav", _music(4.0, peak_dbfs=-10.0), RATE, "PCM_24")
    task = one_task(tmp_path, "a.wav")

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(plots, "plot_document", broken)
    r = render_track(task)
    assert r.status == STATUS_OK and r.plot_data is None and os.path.isfile(task.out_path)
    assert "no plot data" in caplog.text and "boom" in caplog.text
