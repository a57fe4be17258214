"""Reference matching (kernels.match and its wiring): the track's long-term
spectrum moves toward the reference's with gains limited per band, its loudness
lands on the reference's, the streamed analysis and filter equal the whole-file
ones bit for bit, and a missing reference fails the track alone, naming both files."""
from __future__ import annotations

import os

import numpy as np
import pytest

from farm import budget, presets, synth
from farm.errors import ConfigError
from farm.records import STATUS_OK
from farm.render import render_track
from kernels import eq, match, stream
from kernels.params import EQBand, EQParams, MatchParams
from test_render import folder_listing, one_task, read_master, tasks_for, write_audio
from test_stream_render import assert_same_master, programme

RATE = 48000
MP = MatchParams(reference="ref.wav", bypass=False)


def bright(seconds=12.0, seed=8):
    """A bright reference: +6 dB above 3 kHz, -3 dB under 150 Hz."""
    x = synth.music(seconds, RATE, seed=seed, peak_dbfs=-1.0)
    return eq.apply_eq(x, RATE, EQParams((EQBand("high_shelf", 3000.0, 6.0), EQBand("low_shelf", 150.0, -3.0))))


def dull(seconds=12.0, seed=7, peak_dbfs=-1.0):
    """A dull track: -6 dB above 2 kHz."""
    x = synth.music(seconds, RATE, seed=seed, peak_dbfs=peak_dbfs)
    return eq.apply_eq(x, RATE, EQParams((EQBand("high_shelf", 2000.0, -6.0),)))


def distance_db(a, b) -> float:
    """RMS difference (dB) of two third-octave band-energy profiles, 30 Hz - 16 kHz, levels removed."""
    la, lb = match.band_levels_db(*a), match.band_levels_db(*b)
    d = (la - la.mean()) - (lb - lb.mean())
    return float(np.sqrt(np.mean(d * d)))


def test_matching_moves_the_spectrum_toward_the_reference():
    ref = match.profile(bright(), RATE)
    x = dull().astype(np.float32)
    spec = match.long_term_spectrum(x, RATE)
    y = match.apply_match(x, match.design_match(ref, spec, MP, RATE))
    before = distance_db((ref.freqs_hz, ref.psd), spec)
    after = distance_db((ref.freqs_hz, ref.psd), match.long_term_spectrum(y, RATE))
    print(f"band-energy distance to the reference: {before:.2f} dB -> {after:.2f} dB")
    assert before > 3.0 and after < 0.5 * before
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("limit", [2.0, 6.0])
def test_gains_are_limited_and_flat_outside_the_range(limit):
    ref = match.profile(bright(), RATE)
    track = match.long_term_spectrum(dull(peak_dbfs=-20.0), RATE)  # 19 dB quieter: the level is not the EQ's job
    p = MatchParams(reference="r.wav", max_gain_db=limit, min_freq_hz=40.0, max_freq_hz=12000.0, bypass=False)
    g = match.correction_db(ref.freqs_hz, ref.psd, track[1], p)
    assert g.max() <= limit + 1e-9 and g.min() >= -limit - 1e-9 and g.max() - g.min() > limit  # it does work
    f = ref.freqs_hz
    lo, hi = g[f <= 40.0], g[f >= 12000.0]
    assert np.all(lo == lo[0]) and np.all(hi == hi[0]) and lo[0] != hi[0]
    # the designed FIR follows the limited curve (within the EQ design's accuracy) above 40 Hz
    taps = match.design_match(ref, track, p, RATE)
    fr, got = eq.fir_response_db(taps, RATE)
    want = np.interp(fr, f, g)
    keep = fr >= 40.0
    assert np.max(np.abs(got[keep] - want[keep])) < 0.5 and np.max(got) <= limit + 0.2


def test_identical_spectra_give_a_flat_filter():
    x = dull()
    ref = match.profile(x, RATE)
    taps = match.design_match(ref, match.long_term_spectrum(x, RATE), MP, RATE)
    _, got = eq.fir_response_db(taps, RATE)
    assert np.max(np.abs(got)) < 0.01


def test_streamed_spectrum_equals_whole_for_any_blocks():
    x = dull(3.0).astype(np.float32)
    whole = match.long_term_spectrum(x, RATE)[1]
    for cuts in ([1, 5000, 77777, 3], 4096, [0, 144000]):
        m = match.SpectrumMeter(RATE, 2)
        for b in stream.split(x, cuts):
            m.push(b)
        assert np.array_equal(m.result()[1], whole)
    short = x[:, :1000]  # shorter than a segment: one zero-padded segment
    assert np.all(np.isfinite(match.long_term_spectrum(short, RATE)[1]))


def test_params_and_preset_tables_validate(tmp_path):
    with pytest.raises(ValueError, match="match max_gain_db must be between 0 and 24"):
        MatchParams(reference="r.wav", max_gain_db=30.0)
    with pytest.raises(ValueError, match="match reference must be a path"):
        MatchParams(bypass=False)
    path = tmp_path / "m.toml"
    path.write_text('[loudness]\ntarget_lufs = -14\n[match]\nmax_gain_db = 40\nsmoothing_octaves = "third"\n')
    with pytest.raises(ConfigError) as e:
        presets.load_preset(str(path))
    text = str(e.value)
    assert "m.toml [match] smoothing_octaves: must be a number" in text
    path.write_text('[loudness]\ntarget_lufs = -14\n[match]\nmax_gain_db = 40\n')
    with pytest.raises(ConfigError) as e:
        presets.load_preset(str(path))
    assert "m.toml [match] reference: required" in str(e.value)
    path.write_text('[loudness]\ntarget_lufs = -14\n[match]\nreference = "refs/r.wav"\nmax_gain_db = 40\n')
    with pytest.raises(ConfigError) as e:
        presets.load_preset(str(path))
    assert "m.toml [match]: match max_gain_db must be between 0 and 24 dB, got 40" in str(e.value)
    path.write_text('[loudness]\ntarget_lufs = -14\n[match]\nreference = "refs/r.wav"\nmax_gain_db = 4\n')
    p = presets.load_preset(str(path)).chain.match  # relative to the preset; opened only by the render
    assert not p.bypass and p.reference == str(tmp_path / "refs" / "r.wav") and p.max_gain_db == 4.0


def _ref_override(path):
    return {"match": {"reference": str(path), "bypass": False}}


def test_render_lands_on_the_reference_loudness_and_spectrum(tmp_path):
    ref = bright(10.0)
    ref = ref * (10 ** (-4.0 / 20) / np.abs(ref).max())
    write_audio(tmp_path / "ref.wav", ref, RATE, "FLOAT")
    from kernels.loudness import integrated_loudness

    ref_lufs = integrated_loudness(ref.astype(np.float32), RATE)
    write_audio(tmp_path / "t.wav", dull(10.0), RATE, "PCM_24")
    task = one_task(tmp_path, "t.wav", "streaming", overrides=_ref_override(tmp_path / "ref.wav"))
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    assert abs(r.result["integrated_lufs"] - ref_lufs) <= 0.2 and abs(ref_lufs - (-14.0)) > 2.0
    y, _ = read_master(r.output)
    prof = match.profile(ref, RATE)
    before = distance_db((prof.freqs_hz, prof.psd), match.long_term_spectrum(dull(10.0), RATE))
    after = distance_db((prof.freqs_hz, prof.psd), match.long_term_spectrum(y, RATE))
    assert after < 0.5 * before
    # [match] loudness = false keeps the preset's target
    ov = _ref_override(tmp_path / "ref.wav")
    ov["match"]["loudness"] = False
    task = one_task(tmp_path, "t.wav", "streaming", out="kept", overrides=ov)
    r = render_track(task)
    assert r.status == STATUS_OK, r.reason
    assert abs(r.result["integrated_lufs"] - (-14.0)) <= 0.2


def test_catalog_reference_column_turns_matching_on_per_track(tmp_path):
    write_audio(tmp_path / "ref.wav", 0.3 * bright(6.0), RATE, "FLOAT")  # ~10 dB under -14 LUFS
    write_audio(tmp_path / "a.wav", dull(6.0), RATE, "PCM_24")
    write_audio(tmp_path / "b.wav", dull(6.0, seed=3), RATE, "PCM_24")
    ta, tb = tasks_for(tmp_path, [{"file": "a.wav", "title": "a", "reference": "ref.wav"},
                                  {"file": "b.wav", "title": "b"}], "streaming")
    assert ta.track.reference == str(tmp_path / "ref.wav") and tb.track.reference is None
    ra, rb = render_track(ta), render_track(tb)
    assert ra.status == STATUS_OK and rb.status == STATUS_OK, (ra.reason, rb.reason)
    assert abs(rb.result["integrated_lufs"] - (-14.0)) <= 0.2  # b: the preset's target
    assert ra.result["integrated_lufs"] < -20.0  # a: the reference's loudness


def test_missing_reference_fails_the_track_alone_naming_both(tmp_path):
    write_audio(tmp_path / "t.wav", dull(4.0), RATE, "PCM_24")
    missing = tmp_path / "nowhere" / "ref.wav"
    task = one_task(tmp_path, "t.wav", "streaming", overrides=_ref_override(missing))
    r = render_track(task)
    assert r.status != STATUS_OK
    assert str(tmp_path / "t.wav") in r.reason and str(missing) in r.reason and "reference" in r.reason
    assert "internal error" not in r.reason
    # a silent reference too
    write_audio(tmp_path / "silent.wav", np.zeros((2, RATE)), RATE, "PCM_16")
    r = render_track(one_task(tmp_path, "t.wav", "streaming", out="o2",
                              overrides=_ref_override(tmp_path / "silent.wav")))
    assert r.status != STATUS_OK and "silent.wav" in r.reason and "t.wav" in r.reason and "silent" in r.reason


def test_streamed_master_equals_whole_with_a_reference(tmp_path, monkeypatch):
    from test_stream_render import render_whole_and_streamed

    write_audio(tmp_path / "ref.flac", bright(8.0), RATE, "PCM_24")
    x = programme(20.0, RATE, seed=6)
    task, whole, kept, streamed = render_whole_and_streamed(
        tmp_path, monkeypatch, x, RATE, "long.wav", "master", overrides=_ref_override(tmp_path / "ref.flac"))
    assert_same_master(whole, kept, streamed)
    assert "chain_analysis_pass" in streamed.timings
    assert folder_listing(os.path.dirname(streamed.output)) == [os.path.basename(streamed.output)]  # no spills
