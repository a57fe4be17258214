"""Dynamics (kernels.dynamics): the linear-phase crossover sums back to its input
and separates bands, the gain computer follows the Giannoulis/Massberg/Reiss
static curve and time constants and equals a plain float64 sequential loop,
RMS reads a sine 3 dB under its peak, the oversampled saturator adds no alias
above -90 dBFS, bypass is bit-transparent and the streamers equal the
whole-signal functions for any block sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import backend, dynamics, stream
from kernels.dynamics import (CompressorStream, MultibandStream, SaturationStream, compress, compress_multiband,
                              crossover_bank, crossover_split, saturate)
from kernels.params import (SATURATION_MAX_DRIVE_DB, CompressorBand, CompressorParams, MultibandParams,
                            SaturationParams)
from signals import db_to_amp, music, sine, square

RATE = 48000
XO3 = (120.0, 1000.0, 6000.0)


def _h(v) -> np.ndarray:
    return backend.to_host(v).astype(np.float64)


def _noise(seconds, rate=RATE, channels=2, seed=0, level=0.25):
    return level * np.random.default_rng(seed).standard_normal((channels, int(seconds * rate)))


def _design_db(level_db: float, t: float, r: float, w: float) -> float:
    """Giannoulis et al. 2012's soft-knee gain computer as written there (branches): reduction = x - y_G."""
    if 2.0 * (level_db - t) < -w:
        y = level_db
    elif 2.0 * abs(level_db - t) <= w:
        y = level_db + (1.0 / r - 1.0) * (level_db - t + w / 2.0) ** 2 / (2.0 * w)
    else:
        y = t + (level_db - t) / r
    return level_db - y


def _reference(bands: np.ndarray, rate, comp: tuple[CompressorBand, ...], detection, rms_ms) -> np.ndarray:
    """Plain float64 loop over samples: level (channel-linked), static curve,
    smooth decoupled peak detector. ``bands`` (C, B, n); returns reduction dB (B, n)."""
    c, nb, n = bands.shape
    a_rms = math.exp(-1000.0 / (rms_ms * rate))
    coef = [(math.exp(-1000.0 / (b.attack_ms * rate)), math.exp(-1000.0 / (b.release_ms * rate))) for b in comp]
    ms = np.zeros((c, nb))
    y1, y = [0.0] * nb, [0.0] * nb
    out = np.empty((nb, n))
    for i in range(n):
        for k, band in enumerate(comp):
            if detection == "rms":
                for ch in range(c):
                    ms[ch, k] = a_rms * ms[ch, k] + (1.0 - a_rms) * bands[ch, k, i] ** 2
                level = 10.0 * math.log10(max(ms[:, k].max(), 1e-60))
            else:
                level = 20.0 * math.log10(max(np.abs(bands[:, k, i]).max(), 1e-30))
            g = _design_db(level, band.threshold_db, band.ratio, band.knee_db)
            a_att, a_rel = coef[k]
            y1[k] = max(g, a_rel * y1[k] + (1.0 - a_rel) * g)
            y[k] = a_att * y[k] + (1.0 - a_att) * y1[k]
            out[k, i] = y[k]
    return out


# --------------------------------------------------------------------------- crossover


def test_bank_rows_telescope_to_a_unit_impulse():
    for xo, rate in ((XO3, 48000.0), ((200.0, 2000.0), 44100.0), ((80.0, 500.0, 12000.0), 96000.0)):
        bank = crossover_bank(xo, rate)
        m = bank.shape[-1]
        assert bank.shape[0] == len(xo) + 1 and m % 2 == 1
        delta = np.zeros(m)
        delta[m // 2] = 1.0
        assert np.max(np.abs(bank.sum(axis=0) - delta)) < 1e-15
        np.testing.assert_array_equal(bank, bank[:, ::-1])  # linear phase


@pytest.mark.parametrize("xo,rate", [(XO3, 48000), ((200.0, 2000.0), 44100)])
def test_crossover_sums_to_identity(xp, xo, rate):
    x = np.concatenate([music(1.0, rate, 2, seed=3), _noise(1.0, rate, 2, seed=1)], axis=1)
    for dtype, tol in ((np.float32, 2e-6), (np.float64, 1e-12)):
        bands = crossover_split(xp.asarray(x, dtype=dtype), rate, xo)
        assert bands.shape == (2, len(xo) + 1, x.shape[1]) and bands.dtype == dtype
        err = np.max(np.abs(_h(bands.sum(axis=1)) - x.astype(dtype)))
        assert err < tol, f"{dtype.__name__}: bands sum to the input within {err:.2e}"


@pytest.mark.parametrize("freq,band", [(50.0, 0), (400.0, 1), (2500.0, 2), (10000.0, 3)])
def test_crossover_separates_bands(xp, freq, band):
    x = sine(freq, 0.5, RATE, level_dbfs=-6.0, channels=1)
    bands = _h(crossover_split(xp.asarray(x, dtype=xp.float32), RATE, XO3))[0]
    mid = slice(6000, -6000)  # away from the crossover's edge ringing
    rms = np.sqrt(np.mean(bands[:, mid] ** 2, axis=-1))
    level = 20 * np.log10(rms / np.sqrt(np.mean(x[0, mid] ** 2)))
    assert abs(level[band]) < 0.01, f"{freq} Hz lands in band {band} at {level[band]:.3f} dB"
    others = np.delete(level, band)
    assert np.all(others < -40.0), f"{freq} Hz leaks into the other bands at {others} dB"


def test_crossover_rejects_frequencies_near_nyquist():
    with pytest.raises(ValueError, match="below 0.45 x the sample rate"):
        crossover_bank((1000.0, 19000.0), 32000.0)


# --------------------------------------------------------------------------- gain computer

STATIC = CompressorParams(threshold_db=-20.0, ratio=4.0, knee_db=10.0, attack_ms=1.0, release_ms=1000.0,
                          bypass=False)
LEVELS = (-40.0, -26.0, -22.0, -20.0, -17.0, -10.0, 0.0)  # below, inside (-25..-15) and above the knee


@pytest.mark.parametrize("detection", ["peak", "rms"])
def test_static_curve_matches_design(xp, detection):
    params = CompressorParams(**{**STATIC.__dict__, "detection": detection, "rms_ms": 50.0})
    for level in LEVELS:
        x = xp.asarray(sine(1000.0, 1.0, RATE, level_dbfs=level), dtype=xp.float32)
        gr = _h(compress(x, RATE, params).gain_reduction_db)
        steady = float(np.mean(gr[-RATE // 10:]))
        detected = level if detection == "peak" else level - 10 * math.log10(2.0)  # a sine's RMS
        want = _design_db(detected, -20.0, 4.0, 10.0)
        assert abs(steady - want) < 0.1, f"{detection} {level} dBFS: {steady:.3f} dB, designed {want:.3f} dB"


def test_multiband_static_curve_per_band(xp):
    comp = (CompressorBand(threshold_db=-10.0, ratio=2.0, release_ms=20.0),
            CompressorBand(threshold_db=-30.0, ratio=3.0, release_ms=20.0),
            CompressorBand(threshold_db=-24.0, ratio=6.0, knee_db=4.0, attack_ms=1.0, release_ms=1000.0,
                           makeup_db=3.0),
            CompressorBand(threshold_db=-40.0, ratio=8.0, release_ms=20.0))
    params = MultibandParams(XO3, comp, bypass=False)
    x = xp.asarray(sine(2000.0, 1.0, RATE, level_dbfs=-12.0), dtype=xp.float32)  # band 2 only
    res = compress_multiband(x, RATE, params)
    gr = _h(res.gain_reduction_db)
    assert gr.shape == (4, x.shape[-1])
    late = slice(int(0.7 * RATE), int(0.9 * RATE))  # steady: after the onset, before the end's pre-ringing
    want = _design_db(-12.0, -24.0, 6.0, 4.0)
    assert abs(np.mean(gr[2, late]) - want) < 0.1
    # the tone leaks < -80 dB into the other bands; only its onset click (long released) reached them
    assert np.all(gr[[0, 1, 3], late] < 1e-3)
    out_db = 20 * np.log10(np.max(np.abs(_h(res.audio)[:, late])) / db_to_amp(-12.0))
    assert abs(out_db - (3.0 - want)) < 0.1  # makeup minus reduction


def _step_times(detection="peak"):
    """(attack, release) 63 % times in ms of a 0 -> 15 dB -> 0 reduction step (DC in, hard knee)."""
    rate, att, rel = RATE, 5.0, 100.0
    params = CompressorParams(threshold_db=-20.0, ratio=4.0, knee_db=0.0, attack_ms=att, release_ms=rel,
                              detection=detection, bypass=False)
    n0, n1, n2 = int(0.1 * rate), int(0.5 * rate), int(1.0 * rate)
    x = np.full((2, n0 + n1 + n2), 0.01)
    x[:, n0:n0 + n1] = 1.0  # 0 dBFS: 20 dB over, 15 dB of reduction
    gr = _h(compress(np.asarray(x, dtype=np.float32), rate, params).gain_reduction_db)
    top = gr[n0 + n1 - 1]
    assert abs(top - 15.0) < 1e-3
    up = np.argmax(gr[n0:] >= (1 - 1 / math.e) * top) + 1  # samples until 63 % of the step
    down = np.argmax(gr[n0 + n1:] <= top / math.e) + 1
    return up * 1000.0 / rate, down * 1000.0 / rate


def test_attack_and_release_time_constants():
    attack, release = _step_times()
    one = 1000.0 / RATE
    assert abs(attack - 5.0) <= one, f"63 % of the attack after {attack:.3f} ms, not 5 ms"
    # decoupled detector: the release exponential, then the attack one-pole; their cascade
    # (tR e^(-t/tR) - tA e^(-t/tA)) / (tR - tA) reaches 1/e at ~ tR (1 + ln(tR / (tR - tA)))
    want = 100.0 * (1.0 + math.log(100.0 / 95.0))
    assert abs(release - want) <= one, f"63 % of the release after {release:.3f} ms, not {want:.3f} ms"


@pytest.mark.parametrize("detection", ["peak", "rms"])
def test_gain_computer_matches_sequential_reference(xp, detection, monkeypatch):
    rng = np.random.default_rng(7)
    n = 3000
    env = np.repeat(db_to_amp(rng.uniform(-50.0, 0.0, 12)), n // 12)  # level jumps every 250 samples
    x = rng.standard_normal((2, 4, n)) * env
    comp = (CompressorBand(-30.0, 3.0, 6.0, 0.5, 20.0), CompressorBand(-20.0, 10.0, 0.0, 2.0, 5.0),
            CompressorBand(-10.0, 1.5, 20.0, 0.05, 200.0), CompressorBand(-40.0, 100.0, 40.0, 10.0, 1.0))
    want = _reference(x, RATE, comp, detection, 1.0)
    monkeypatch.setattr(dynamics, "GAIN_CHUNK_CPU", 700)  # several chunks: the state is carried
    monkeypatch.setattr(dynamics, "GAIN_CHUNK_GPU", 700)
    gc = dynamics._GainComputer(comp, detection, 1.0, RATE)
    got = np.concatenate([_h(gc(xp.asarray(x[..., s:s + 700]))) for s in range(0, n, 700)], axis=-1)
    assert np.max(np.abs(got - want)) < 1e-9  # float64 scans: the same sums in another order
    assert np.max(want) > 10.0  # the bands really compress

    # the public float32 path: reduction to float32 rounding, audio to ~1e-6 relative
    params = CompressorParams(-30.0, 3.0, 6.0, 0.5, 20.0, detection=detection, rms_ms=1.0, bypass=False)
    xb = x[:, 0]
    want = _reference(xb[:, None].astype(np.float32).astype(np.float64), RATE, (params.band,), detection, 1.0)[0]
    res = compress(xp.asarray(xb, dtype=xp.float32), RATE, params)
    assert np.max(np.abs(_h(res.gain_reduction_db) - want)) < 1e-5
    ref_audio = xb.astype(np.float32) * 10.0 ** (-want / 20.0)
    assert np.max(np.abs(_h(res.audio) - ref_audio)) < 1e-6 * np.max(np.abs(xb))


def test_rms_reads_crest_factor_peak_does_not(xp):
    params = dict(threshold_db=-30.0, ratio=4.0, knee_db=0.0, attack_ms=1.0, release_ms=1000.0, rms_ms=50.0,
                  bypass=False)
    steady = {}
    for detection in ("peak", "rms"):
        p = CompressorParams(detection=detection, **params)
        for name, sig in (("sine", sine(1000.0, 1.0, RATE, -10.0)), ("square", square(1000.0, 1.0, RATE, -10.0))):
            gr = _h(compress(xp.asarray(sig, dtype=xp.float32), RATE, p).gain_reduction_db)
            steady[detection, name] = float(np.mean(gr[-RATE // 10:]))
    assert abs(steady["peak", "sine"] - steady["peak", "square"]) < 0.1  # same peak, same reduction
    # the square's RMS is its peak, a sine's 3.01 dB under: 3.01 * (1 - 1/R) dB more reduction
    assert abs(steady["rms", "square"] - steady["rms", "sine"] - 3.0103 * 0.75) < 0.1
    assert abs(steady["rms", "square"] - steady["peak", "square"]) < 0.1


# --------------------------------------------------------------------------- saturation


def _spectrum_dbfs(y: np.ndarray) -> np.ndarray:
    """Blackman-Harris amplitude spectrum scaled so a full-scale sine reads 0 dBFS."""
    w = scipy.signal.windows.blackmanharris(y.size)
    return 20 * np.log10(np.maximum(np.abs(np.fft.rfft(y * w)) * 2.0 / w.sum(), 1e-20))


def _not_harmonics(freqs, f0, nyquist, guard=40.0):
    keep = freqs > guard
    for h in np.arange(f0, nyquist + 1, f0):
        keep &= np.abs(freqs - h) > guard  # the Blackman-Harris main lobe is +-4 bins (4 Hz here)
    return keep


@pytest.mark.parametrize("factor", sorted(SATURATION_MAX_DRIVE_DB))
def test_oversampling_filter_spec(factor):
    taps = dynamics.os_filter(factor) / factor
    n = 1 << 19
    mag_db = 20 * np.log10(np.abs(np.fft.rfft(taps, n)))
    f = np.arange(mag_db.size) * factor / n  # in units of the base rate
    assert np.max(np.abs(mag_db[f <= 0.45])) < 1e-4  # flat passband
    assert np.max(mag_db[f >= 0.5]) < -119.0  # nothing above the output Nyquist frequency survives


@pytest.mark.parametrize("factor", sorted(SATURATION_MAX_DRIVE_DB))
def test_saturation_adds_no_aliasing(xp, factor):
    drive = SATURATION_MAX_DRIVE_DB[factor]
    x = sine(10000.0, 3.0, RATE, level_dbfs=-0.1, channels=1)
    y = _h(saturate(xp.asarray(x, dtype=xp.float32), RATE,
                    SaturationParams(drive_db=drive, oversample=factor, bypass=False)))[0, RATE:2 * RATE]
    spec = _spectrum_dbfs(y)
    freqs = np.arange(spec.size) * RATE / y.size
    assert spec[10000] > -3.0 - drive  # the tone itself is there (clipped down by about the drive)
    alias = spec[_not_harmonics(freqs, 10000.0, RATE / 2)]
    assert alias.max() < -90.0, f"{factor}x at {drive} dB drive: alias at {alias.max():.1f} dBFS"
    # the odd harmonics 30, 50, 70 kHz would fold to 18, 2 and 22 kHz
    for f in (18000, 2000, 22000):
        assert spec[f] < -90.0
    # control: the same clipper at the base rate folds them back loudly
    g = db_to_amp(drive)
    naive = _spectrum_dbfs(np.tanh(g * x[0, RATE:2 * RATE]) / g)
    assert naive[18000] > -60.0


def test_saturation_small_signals_pass_and_mix(xp):
    x = sine(1000.0, 0.5, RATE, level_dbfs=-60.0)
    y = _h(saturate(xp.asarray(x, dtype=xp.float32), RATE, SaturationParams(drive_db=12.0, bypass=False)))
    mid = slice(1000, -1000)  # the band-limited filters ring around the abrupt start and end
    assert np.max(np.abs(y - x)[:, mid]) < 1e-4 * db_to_amp(-60.0)  # unity gain, flat passband
    loud = xp.asarray(music(0.5, RATE, 2, seed=2), dtype=xp.float32)
    dry = saturate(loud, RATE, SaturationParams(drive_db=12.0, mix=0.0, bypass=False))
    np.testing.assert_array_equal(_h(dry), _h(loud))
    wet = _h(saturate(loud, RATE, SaturationParams(drive_db=12.0, mix=1.0, bypass=False)))
    half = _h(saturate(loud, RATE, SaturationParams(drive_db=12.0, mix=0.5, bypass=False)))
    np.testing.assert_allclose(half, 0.5 * (wet + _h(loud)), atol=1e-6)
    # tanh(g x)/g stays under 1/g; band-limiting it overshoots a little (Gibbs)
    assert np.max(np.abs(wet)) < 1.15 * db_to_amp(-12.0)


# --------------------------------------------------------------------------- bypass and params


def test_bypass_is_bit_transparent(xp):
    x = xp.asarray(music(0.5, RATE, 2, seed=1), dtype=xp.float32)
    assert compress_multiband(x, RATE, MultibandParams()).audio is x  # defaults are bypassed
    assert compress(x, RATE, CompressorParams()).audio is x
    assert saturate(x, RATE, SaturationParams()) is x
    # a compressor that never crosses its threshold (no makeup) leaves every sample alone
    quiet = compress(x, RATE, CompressorParams(threshold_db=0.0, knee_db=0.0, bypass=False))
    np.testing.assert_array_equal(_h(quiet.audio), _h(x))
    for s in (MultibandStream(MultibandParams(), RATE, 2), CompressorStream(CompressorParams(), RATE, 2),
              SaturationStream(SaturationParams(), RATE, 2)):
        np.testing.assert_array_equal(_h(stream.run(s, stream.split(x, 1000))), _h(x))


def test_params_validate_with_fixes():
    with pytest.raises(ValueError, match="multiband bands must be 4 compressor bands"):
        MultibandParams(XO3, (CompressorBand(),) * 3)
    with pytest.raises(ValueError, match="crossovers_hz must be ascending"):
        MultibandParams((1000.0, 120.0))
    with pytest.raises(ValueError, match="2 or 3 frequencies"):
        MultibandParams((100.0,))
    with pytest.raises(ValueError, match="multiband detection must be one of"):
        MultibandParams(detection="loud")
    with pytest.raises(ValueError, match="compressor band ratio must be between 1"):
        CompressorBand(ratio=0.5)
    with pytest.raises(ValueError, match="compressor knee_db"):
        CompressorParams(knee_db=-1.0)
    with pytest.raises(ValueError, match="oversample = 16 allows 24 dB"):
        SaturationParams(drive_db=20.0, oversample=8)
    assert len(MultibandParams((200.0, 2000.0)).bands) == 3
    assert MultibandParams().bypass and CompressorParams().bypass and SaturationParams().bypass


# --------------------------------------------------------------------------- streaming

MB = MultibandParams(XO3, (CompressorBand(-30.0, 3.0, 6.0, 1.0, 50.0, 2.0), CompressorBand(-25.0, 2.0),
                           CompressorBand(-20.0, 4.0, 0.0, 0.1, 20.0), CompressorBand(-35.0, 2.5, 10.0)),
                     detection="rms", rms_ms=5.0, bypass=False)
COMP = CompressorParams(-30.0, 4.0, 6.0, 2.0, 80.0, 1.0, bypass=False)
SAT = SaturationParams(drive_db=9.0, mix=0.8, bypass=False)


def _whole_and_stream(name, x):
    if name == "multiband":
        return compress_multiband(x, RATE, MB).audio, MultibandStream(MB, RATE, x.shape[0], x.shape[1])
    if name == "compressor":
        return compress(x, RATE, COMP).audio, CompressorStream(COMP, RATE, x.shape[0], x.shape[1])
    return saturate(x, RATE, SAT), SaturationStream(SAT, RATE, x.shape[0], x.shape[1])


@pytest.mark.parametrize("name", ["multiband", "compressor", "saturation"])
def test_streamed_equals_whole_for_irregular_blocks(xp, name, monkeypatch):
    monkeypatch.setattr(dynamics, "GAIN_CHUNK_CPU", 5000)  # the whole-signal path crosses chunk edges too
    monkeypatch.setattr(dynamics, "SAT_CHUNK_CPU", 3000)
    x = xp.asarray(music(1.0, RATE, 2, seed=5), dtype=xp.float32)
    whole, s = _whole_and_stream(name, x)
    got = stream.run(s, stream.split(x, [1, 7, 0, 1000, 4096, 3, 20000, 333, 1]))
    assert got.shape == whole.shape and got.dtype == whole.dtype
    assert np.max(np.abs(_h(got) - _h(whole))) < 2e-6
    if xp is np:  # on the host the streams run the whole-signal function's chunk grid: bit for bit
        assert np.array_equal(got, whole)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["multiband", "compressor", "saturation"]),
       cuts=st.lists(st.integers(0, 12000), min_size=0, max_size=8), seed=st.integers(0, 2 ** 16))
def test_property_streamed_equals_whole(xp, name, cuts, seed):
    x = xp.asarray(music(0.4, RATE, 2, seed=seed) * db_to_amp(6.0), dtype=xp.float32)
    whole, s = _whole_and_stream(name, x)
    got = stream.run(s, stream.split(x, cuts))
    assert got.shape == whole.shape
    assert np.max(np.abs(_h(got) - _h(whole))) < 4e-6
    if xp is np:
        assert np.array_equal(got, whole)


def test_multiband_stream_without_total_is_within_rounding():
    """Without the signal's length the crossover slides a window (not the whole-signal frames)."""
    x = music(0.6, RATE, 2, seed=11).astype(np.float32)
    whole = compress_multiband(x, RATE, MB).audio
    got = stream.run(MultibandStream(MB, RATE, 2), stream.split(x, 7000))
    assert got.shape == whole.shape and np.max(np.abs(got - whole)) < 4e-6


# --------------------------------------------------------------------------- backends


@pytest.mark.gpu
def test_numpy_and_cupy_agree():
    import cupy

    x = music(1.0, RATE, 2, seed=9).astype(np.float32) * np.float32(db_to_amp(6.0))
    for fn, p in ((compress_multiband, MB), (compress, COMP)):
        host, dev = fn(x, RATE, p), fn(cupy.asarray(x), RATE, p)
        np.testing.assert_allclose(_h(dev.audio), host.audio, atol=2e-6)
        np.testing.assert_allclose(_h(dev.gain_reduction_db), host.gain_reduction_db, atol=1e-4)
    np.testing.assert_allclose(_h(saturate(cupy.asarray(x), RATE, SAT)), saturate(x, RATE, SAT), atol=2e-6)
