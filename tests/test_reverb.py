"""Convolution reverb: synthetic IRs decay as designed (Schroeder RT60 per
band), the reverb equals a float64 reference convolution for mono, stereo
and true-stereo IRs, pre-delay, wet/dry, trim/keep, and IR resampling."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from conftest import tol

from kernels import backend, reverb
from kernels.params import REVERB_TYPES, ReverbParams
from kernels.reverb import apply_reverb, band_rt60s, resample_ir, synthetic_ir

RATE = 48000


def _rt60(ir: np.ndarray, rate: int, centre_hz: float) -> float:
    """RT60 (s) in the octave band at ``centre_hz``: Schroeder backward
    integration of the channels' summed energy, line fit from -5 to -35 dB (T30,
    ISO 3382-1)."""
    sos = scipy.signal.butter(4, [centre_hz / np.sqrt(2), centre_hz * np.sqrt(2)], "bandpass",
                              fs=rate, output="sos")
    y = scipy.signal.sosfilt(sos, np.atleast_2d(ir), axis=-1)
    edc = np.cumsum(np.sum(y * y, axis=0)[::-1])[::-1]
    db = 10 * np.log10(edc / edc[0])
    i0, i1 = int(np.argmax(db <= -5.0)), int(np.argmax(db <= -35.0))
    slope = np.polyfit(np.arange(i0, i1) / rate, db[i0:i1], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
@pytest.mark.parametrize("kind", REVERB_TYPES)
def test_rt60_per_band_matches_design(kind, rate):
    ir = synthetic_ir(kind, rate)
    for centre, want in zip(reverb.BAND_CENTRES_HZ, band_rt60s(kind)):
        assert _rt60(ir, rate, centre) == pytest.approx(want, rel=0.10), f"{kind} at {centre} Hz"


def test_decay_s_sets_the_mid_band_rt60():
    ir = synthetic_ir("hall", RATE, decay_s=3.0, seed=5)
    assert band_rt60s("hall", 3.0)[reverb.MID_BAND] == 3.0
    assert _rt60(ir, RATE, reverb.BAND_CENTRES_HZ[reverb.MID_BAND]) == pytest.approx(3.0, rel=0.10)
    assert ir.shape == (2, int(np.ceil(max(band_rt60s("hall", 3.0)) * RATE)))


@pytest.mark.parametrize("kind", REVERB_TYPES)
def test_highs_decay_faster_than_lows(kind):
    ir = synthetic_ir(kind, RATE, seed=1)
    low, mid, _, high = (_rt60(ir, RATE, f) for f in reverb.BAND_CENTRES_HZ)
    assert high < 0.85 * low and high < 0.85 * mid


def test_synthetic_ir_seeded_decorrelated_unit_energy():
    a = synthetic_ir("plate", RATE, seed=3)
    np.testing.assert_array_equal(a, synthetic_ir("plate", RATE, seed=3))
    assert not np.allclose(a, synthetic_ir("plate", RATE, seed=4))
    assert a.dtype == np.float64 and a.shape[0] == 2
    assert abs(np.corrcoef(a)[0, 1]) < 0.05  # independent noise per side
    assert np.mean(np.sum(a * a, axis=-1)) == pytest.approx(1.0)
    assert synthetic_ir("room", RATE, channels=1).shape[0] == 1
    with pytest.raises(ValueError, match="file"):
        synthetic_ir("cathedral", RATE)


def test_band_masks_sum_to_one():
    f = np.geomspace(1, 48000, 500)
    m = reverb.band_masks(f)
    assert np.all(m >= 0)
    np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-12)


def _decaying_ir(shape, seed=0, length=3000):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape + (length,)) * np.exp(-np.arange(length) / 600.0)


def _reference(x, ir, params, rate):
    """Float64 reverb from its definition, with scipy's convolution."""
    x = np.asarray(x, dtype=np.float64)
    h = reverb.normalize_ir(ir) * 10 ** (params.wet_db / 20)
    delay = int(round(params.predelay_ms * rate / 1000))
    h = np.concatenate([np.zeros(h.shape[:-1] + (delay,)), h], axis=-1)
    if h.ndim == 3:
        wet = np.stack([sum(scipy.signal.fftconvolve(x[i], h[o, i]) for i in range(x.shape[0]))
                        for o in range(h.shape[0])])
    else:
        wet = scipy.signal.fftconvolve(x, np.atleast_2d(h), axes=-1)
    n = x.shape[-1]
    dry = x * 10 ** (params.dry_db / 20)
    if params.tail == "keep":
        wet[:, :n] += dry
        return wet
    wet = wet[:, :n]
    fade = int(round(params.fade_ms * rate / 1000))
    if fade:
        wet[:, n - fade:] *= np.cos(np.linspace(0, np.pi / 2, fade + 1)[1:]) ** 2
    return wet + dry


IR_SHAPES = {"mono": (), "mono2d": (1,), "stereo": (2,), "true_stereo": (2, 2)}


@pytest.mark.parametrize("layout", IR_SHAPES)
@pytest.mark.parametrize("tail", ["trim", "keep"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(xp, layout, tail, dtype):
    x = np.random.default_rng(7).standard_normal((2, 20_000)).astype(dtype)
    ir = _decaying_ir(IR_SHAPES[layout], seed=2)
    params = ReverbParams(ir="my_space.wav", wet_db=-6.0, dry_db=-3.0, predelay_ms=5.0, tail=tail,
                          fade_ms=20.0)
    y = apply_reverb(xp.asarray(x), RATE, params, ir=ir)
    want = _reference(x, ir, params, RATE)
    assert y.dtype == dtype and y.shape == want.shape
    err = np.max(np.abs(backend.to_host(y) - want)) / np.max(np.abs(want))
    assert err < tol(np.dtype(dtype), f32=1e-5, f64=1e-10)


def test_four_channel_file_is_true_stereo(xp):
    """A 4-channel IR (L->L, L->R, R->L, R->R) equals the (2, 2, M) layout h[out, in]."""
    h = _decaying_ir((2, 2), seed=3)
    four = np.stack([h[0, 0], h[1, 0], h[0, 1], h[1, 1]])
    x = xp.asarray(np.random.default_rng(1).standard_normal((2, 5000)))
    p = ReverbParams(ir="ts.wav", wet_db=0.0)
    np.testing.assert_allclose(backend.to_host(apply_reverb(x, RATE, p, ir=four)),
                               backend.to_host(apply_reverb(x, RATE, p, ir=h)), atol=1e-12)


def test_builtin_space_used_by_default(xp):
    x = np.random.default_rng(0).standard_normal((2, RATE)).astype(np.float32)
    p = ReverbParams(ir="room", wet_db=-10.0, fade_ms=0.0)
    y = apply_reverb(xp.asarray(x), RATE, p)
    want = _reference(x, synthetic_ir("room", RATE), p, RATE)
    assert np.max(np.abs(backend.to_host(y) - want)) < 1e-5 * np.max(np.abs(want))


def test_wet_level_tracks_wet_db():
    """Unit-energy IRs: on white noise the wet path's power is wet_db re the input."""
    x = np.random.default_rng(4).standard_normal((2, 4 * RATE))
    for wet_db in (-20.0, 0.0):
        p = ReverbParams(ir="plate", wet_db=wet_db, dry_db=-120.0, fade_ms=0.0)
        y = apply_reverb(x, RATE, p)[:, 2 * RATE:]  # after the build-up
        assert 10 * np.log10(np.mean(y ** 2)) == pytest.approx(wet_db, abs=0.5)


def test_no_wet_is_transparent(xp):
    x = np.random.default_rng(5).standard_normal((2, 30_000)).astype(np.float32) * 0.5
    y = apply_reverb(xp.asarray(x), RATE, ReverbParams(ir="hall", wet_db=-120.0, dry_db=0.0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.max(np.abs(backend.to_host(y) - x)) < 1e-5


def test_bypass_returns_input(xp):
    x = xp.asarray(np.ones((2, 100), np.float32))
    assert apply_reverb(x, RATE, ReverbParams(bypass=True)) is x


def _onset(y, threshold=1e-4):
    return int(np.argmax(np.abs(backend.to_host(y)[0]) > threshold))


def test_predelay_shifts_the_wet_onset(xp):
    x = np.zeros((2, RATE), np.float32)
    x[:, 1000] = 1.0
    base = ReverbParams(ir="plate", wet_db=0.0, dry_db=-120.0, fade_ms=0.0)
    y0 = apply_reverb(xp.asarray(x), RATE, base)
    y1 = apply_reverb(xp.asarray(x), RATE, ReverbParams(ir="plate", wet_db=0.0, dry_db=-120.0, fade_ms=0.0,
                                                       predelay_ms=25.0))
    assert 1000 <= _onset(y0) <= 1000 + RATE // 1000  # only the plate's 1 ms build-up
    assert _onset(y1) - _onset(y0) == round(0.025 * RATE)
    np.testing.assert_allclose(backend.to_host(y1)[:, 2200:], backend.to_host(y0)[:, 1000:-1200], atol=1e-6)


def test_trim_keeps_length_and_fades_the_tail_only(xp):
    rate, n = RATE, RATE // 2
    x = np.random.default_rng(6).standard_normal((2, n)).astype(np.float32) * 0.1
    trim = ReverbParams(ir="hall", wet_db=0.0, dry_db=-120.0, tail="trim", fade_ms=50.0)
    y = backend.to_host(apply_reverb(xp.asarray(x), rate, trim))
    assert y.shape == x.shape
    assert np.max(np.abs(y[:, -10:])) < 1e-3 * np.max(np.abs(y))  # faded to silence at the end
    # the dry path is not faded: a dry-only trim is the input itself
    dry = ReverbParams(ir="hall", wet_db=-120.0, dry_db=0.0, tail="trim", fade_ms=50.0)
    np.testing.assert_allclose(backend.to_host(apply_reverb(xp.asarray(x), rate, dry)), x, atol=1e-6)
    keep = ReverbParams(ir="hall", wet_db=0.0, dry_db=-120.0, tail="keep", predelay_ms=10.0)
    yk = backend.to_host(apply_reverb(xp.asarray(x), rate, keep))
    m = synthetic_ir("hall", rate).shape[-1]
    assert yk.shape == (2, n + round(0.010 * rate) + m - 1)
    no_fade = ReverbParams(ir="hall", wet_db=0.0, dry_db=-120.0, tail="trim", fade_ms=0.0, predelay_ms=10.0)
    y_trim = backend.to_host(apply_reverb(xp.asarray(x), rate, no_fade))
    np.testing.assert_allclose(yk[:, :n], y_trim, atol=1e-6)


@pytest.mark.parametrize("ir_rate,rate", [(44100, 48000), (48000, 44100), (96000, 48000), (22050, 96000),
                                          (48000, 48000)])
def test_resample_ir_keeps_duration_and_pitch(ir_rate, rate):
    seconds = 0.75
    t = np.arange(int(seconds * ir_rate)) / ir_rate
    ir = np.stack([np.sin(2 * np.pi * 1000 * t), np.cos(2 * np.pi * 3000 * t)]) * np.exp(-t / 0.2)
    out = resample_ir(ir, ir_rate, rate)
    assert out.dtype == np.float64 and out.shape[0] == 2
    assert abs(out.shape[-1] / rate - ir.shape[-1] / ir_rate) <= 1.0 / rate
    t2 = np.arange(out.shape[-1]) / rate
    want = np.stack([np.sin(2 * np.pi * 1000 * t2), np.cos(2 * np.pi * 3000 * t2)]) * np.exp(-t2 / 0.2)
    middle = slice(out.shape[-1] // 10, -out.shape[-1] // 10)  # away from the filter's edge effects
    np.testing.assert_allclose(out[:, middle], want[:, middle], atol=2e-3)


def test_layout_and_input_errors(xp):
    x = xp.asarray(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="true stereo"):
        apply_reverb(x, RATE, ReverbParams(ir="a.wav"), ir=np.ones((3, 10)))
    with pytest.raises(ValueError, match="resample_ir"):
        apply_reverb(x, RATE, ReverbParams(ir="a.wav"))
    with pytest.raises(ValueError, match="silent"):
        apply_reverb(x, RATE, ReverbParams(ir="a.wav"), ir=np.zeros(10))
    # a mono track with a stereo IR takes the IR channels' mean
    y = apply_reverb(xp.asarray(np.ones((1, 50))), RATE, ReverbParams(ir="a.wav", tail="keep"),
                     ir=np.ones((2, 10)))
    assert y.shape == (1, 59)


@pytest.mark.parametrize("tail", ["trim", "keep"])
def test_the_lfe_of_a_5_1_programme_stays_dry(xp, tail):
    """5.1 (L, R, C, LFE, Ls, Rs): every other channel gets its reverb, the LFE none at all."""
    rng = np.random.default_rng(9)
    x = xp.asarray(rng.standard_normal((6, 24000)).astype(np.float32) * 0.1)
    params = ReverbParams(ir="room", wet_db=-6.0, tail=tail)
    y = backend.to_host(apply_reverb(x, 48000, params))
    x_h = backend.to_host(x)
    n = x_h.shape[1]
    assert np.array_equal(y[3, :n], x_h[3]) and not np.any(y[3, n:])
    for c in (0, 1, 2, 4, 5):
        assert np.abs(y[c, :n] - x_h[c]).max() > 1e-3, c
