"""Streaming forms of the linear stages and the quantizer (issue 7): fed in
blocks of any size, ConvolveStream, EQStream, ReverbStream and QuantizeStream
give the whole-signal function's output (bit for bit on the host; within
float32 rounding of the peak on cuFFT, whose batched plans may differ)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import backend, stream
from kernels.convolve import ConvolveStream, block_size, convolve_mimo, fftconvolve
from kernels.dither import DITHER_BLOCK_CPU, QuantizeStream, quantize
from kernels.eq import EQStream, apply_eq, design_eq
from kernels.params import DitherParams, EQBand, EQParams, ReverbParams
from kernels.reverb import ReverbStream, apply_reverb
from signals import music

RATE = 48000
LONG = 5 * RATE  # overlap-save for every filter below (checked in the tests)
SHORT = 9000  # one FFT of the whole output
# irregular blocks, a fixed size, one whole block
SPLITS = {"irregular": [1, 777, DITHER_BLOCK_CPU, 3, 0, 40_000, 2], "k1000": 1000, "whole": 1 << 30}
BANDS = (EQBand("bell", 1000.0, 4.0, 1.0), EQBand("high_shelf", 8000.0, -3.0, 0.707))


def _signal(xp, channels, n, seed=0, dtype=np.float32):
    x = music(n / RATE + 0.01, RATE, channels, seed=seed)[:, :n]
    return xp.asarray(x.astype(dtype))


def _streamed(make, x, sizes):
    return stream.run(make(), stream.split(x, sizes))


def _assert_same(got, want):
    """Bit for bit on the host; within 1e-6 of the peak on the device (batched cuFFT plans)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    on_host = not backend.is_device(want)
    got, want = backend.to_host(got), backend.to_host(want)
    if on_host:
        np.testing.assert_array_equal(got, want)
    else:
        assert np.max(np.abs(got - want)) <= 1e-6 * max(np.max(np.abs(want)), 1e-30)


def _decaying_ir(shape, length, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape + (length,)) * np.exp(-np.arange(length) / (length / 5))


# --- convolution -------------------------------------------------------------

CONV_CASES = {  # name: (signal length, filter shape, overlap-save?)
    "per_channel_long": (LONG, (2, 8191), True),
    "mono_filter_long": (LONG, (8191,), True),
    "mimo_long": (3 * RATE, (2, 2, 3000), True),
    "per_channel_short": (SHORT, (2, 3000), False),
    "mimo_short": (SHORT, (2, 2, 3000), False),
    "filter_longer_than_signal": (2000, (1, 5000), False),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_convolve_stream_matches_whole(xp, case, split):
    n, shape, ols = CONV_CASES[case]
    assert (block_size(n, shape[-1]) is not None) == ols
    x = _signal(xp, 2, n, seed=1)
    h = xp.asarray(_decaying_ir(shape[:-1], shape[-1]).astype(np.float32))
    want = convolve_mimo(x, h) if h.ndim == 3 else fftconvolve(x, h)
    _assert_same(_streamed(lambda: ConvolveStream(h, 2, n), x, SPLITS[split]), want)


@pytest.mark.parametrize("split", ["irregular", "whole"])
@pytest.mark.parametrize("n", [LONG, SHORT])
def test_convolve_stream_bank_mode_is_the_broadcast_convolution(xp, n, split):
    """bank=True: a (B, M) bank on every channel, rows c * B + b, equal to
    fftconvolve(x[:, None, :], bank) (the crossover's form) on both plans."""
    x = _signal(xp, 2, n, seed=3)
    bank = xp.asarray(_decaying_ir((4,), 2009, seed=4).astype(np.float32))
    want = fftconvolve(x[:, None, :], bank).reshape(8, -1)
    _assert_same(_streamed(lambda: ConvolveStream(bank, 2, n, bank=True), x, SPLITS[split]), want)
    with pytest.raises(ValueError, match="does not fit"):
        ConvolveStream(np.ones(5), 2, 10, bank=True)


def test_convolve_stream_crops_and_promotes(xp):
    """A window [offset, offset+length) of the full convolution; float32 * float64 -> float64."""
    x = _signal(xp, 2, LONG, seed=2)
    h = xp.asarray(_decaying_ir((), 4001))  # float64
    full = fftconvolve(x, h)
    s = ConvolveStream(h, 2, LONG, offset=2000, length=LONG)
    assert s.push(x[:, :10]).dtype == np.float64  # even while holding back
    got = _streamed(lambda: ConvolveStream(h, 2, LONG, offset=2000, length=LONG), x, SPLITS["irregular"])
    _assert_same(got, full[:, 2000:2000 + LONG])
    _assert_same(got, fftconvolve(x, h, mode="same"))


def test_convolve_stream_checks_lengths():
    h = np.ones(5, dtype=np.float32)
    s = ConvolveStream(h, 1, 10)
    s.push(np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="announced"):
        s.push(np.zeros((1, 6), np.float32))
    s = ConvolveStream(h, 1, 10)
    s.push(np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="announced"):
        s.finish()
    with pytest.raises(ValueError, match="does not fit"):
        ConvolveStream(np.ones((2, 3, 5)), 2, 10)


# --- EQ ----------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("taps,n", [(None, LONG), (255, LONG), (None, SHORT), (255, 700)])
def test_eq_stream_matches_apply_eq(xp, taps, n, split):
    params = EQParams(bands=BANDS, taps=taps)
    m = design_eq(params, RATE).size
    assert taps is not None or m == 8191
    assert (block_size(n, m) is not None) == (n == LONG)
    x = _signal(xp, 2, n, seed=3)
    want = apply_eq(x, RATE, params)
    _assert_same(_streamed(lambda: EQStream(params, RATE, 2, n), x, SPLITS[split]), want)


def test_eq_stream_holds_back_the_group_delay(xp):
    params = EQParams(bands=BANDS, taps=255)
    s = EQStream(params, RATE, 2, LONG)
    out = [s.push(b).shape[-1] for b in stream.split(_signal(xp, 2, LONG), 1000)]
    assert sum(out) <= LONG - 127  # (taps - 1) / 2 samples wait for their lookahead
    assert sum(out) + s.finish().shape[-1] == LONG


def test_eq_stream_bypass_is_identity(xp):
    x = _signal(xp, 2, 3000)
    for params in (EQParams(bands=BANDS, bypass=True), EQParams(bands=())):
        s = EQStream(params, RATE, 2, 3000)
        assert s.push(x) is x
        assert s.finish().shape == (2, 0)


# --- reverb ------------------------------------------------------------------

def _room(tail, **kw):
    # a short room keeps overlap-save within a few seconds of signal
    return ReverbParams(ir="room", decay_s=0.1, predelay_ms=7.0, wet_db=-6.0, dry_db=-2.0, tail=tail, **kw)


@pytest.mark.parametrize("split", ["irregular", "k1000"])
@pytest.mark.parametrize("tail", ["trim", "keep"])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_reverb_stream_matches_apply_reverb(xp, channels, tail, split):
    params = _room(tail)
    n = 4 * RATE
    x = _signal(xp, channels, n, seed=channels)
    want = apply_reverb(x, RATE, params)
    got = _streamed(lambda: ReverbStream(params, RATE, channels, n), x, SPLITS[split])
    _assert_same(got, want)
    if channels == 6:  # the LFE stays dry
        _assert_same(got[3, :n], x[3] * np.float32(10 ** (-2 / 20)))


@pytest.mark.parametrize("tail", ["trim", "keep"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reverb_stream_true_stereo_user_ir(xp, tail, dtype):
    ir = _decaying_ir((2, 2), 3000, seed=4)
    params = ReverbParams(ir="my_space.wav", predelay_ms=12.0, dry_db=0.0, tail=tail, fade_ms=20.0)
    n = 3 * RATE
    assert block_size(n, 3000 + 576) is not None
    x = _signal(xp, 2, n, seed=5, dtype=dtype)
    want = apply_reverb(x, RATE, params, ir=ir)
    for split in SPLITS.values():
        _assert_same(_streamed(lambda: ReverbStream(params, RATE, 2, n, ir=ir), x, split), want)


@pytest.mark.parametrize("tail", ["trim", "keep"])
def test_reverb_stream_short_signal_and_long_builtin_ir(xp, tail):
    """The default room (0.69 s) on 0.5 s: longer IR than signal, one FFT."""
    params = ReverbParams(ir="room", tail=tail)
    n = RATE // 2
    x = _signal(xp, 2, n, seed=6)
    want = apply_reverb(x, RATE, params)
    if tail == "keep":
        assert want.shape[-1] > 2 * n
    for split in (SPLITS["irregular"], 7000):
        _assert_same(_streamed(lambda: ReverbStream(params, RATE, 2, n), x, split), want)


def test_reverb_stream_bypass_and_file_ir_errors(xp):
    x = _signal(xp, 2, 100)
    s = ReverbStream(ReverbParams(bypass=True), RATE, 2, 100)
    assert s.push(x) is x
    with pytest.raises(ValueError, match="is a file"):
        ReverbStream(ReverbParams(ir="hall.wav"), RATE, 2, 100)


# --- quantizer ---------------------------------------------------------------

DITHERS = {
    "flat16": DitherParams(bit_depth=16),
    "flat24": DitherParams(bit_depth=24, seed=3),
    "plain16": DitherParams(bit_depth=16, dither=False),
    "lipshitz16": DitherParams(bit_depth=16, noise_shaping="lipshitz"),
    "lipshitz24_plain": DitherParams(bit_depth=24, noise_shaping="lipshitz", dither=False),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", DITHERS)
def test_quantize_stream_matches_quantize(xp, name, split):
    params = DITHERS[name]
    n = 3 * DITHER_BLOCK_CPU + 4321  # several noise blocks and a partial one
    x = _signal(xp, 2, n, seed=7) * 1.1  # some samples clip
    want = quantize(x, params)
    got = _streamed(lambda: QuantizeStream(params, 2), x, SPLITS[split])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(backend.to_host(got), backend.to_host(want))


def test_quantize_stream_on_a_small_gpu_grid(xp, monkeypatch):
    """On the device the noise grid is DITHER_BLOCK_GPU; a small one exercises it with short signals."""
    from kernels import dither

    monkeypatch.setattr(dither, "DITHER_BLOCK_GPU", 1 << 14)
    monkeypatch.setattr(dither, "DITHER_BLOCK_CPU", 1 << 14)
    x = _signal(xp, 2, 50_000, seed=8)
    for params in (DITHERS["flat16"], DITHERS["lipshitz16"]):
        want = quantize(x, params)
        got = _streamed(lambda: QuantizeStream(params, 2), x, [1, 777, 20_000, 3])
        np.testing.assert_array_equal(backend.to_host(got), backend.to_host(want))


def test_quantize_stream_bypass_is_identity(xp):
    x = _signal(xp, 2, 100)
    for params in (DitherParams(bit_depth=16, bypass=True), DitherParams(bit_depth=None)):
        s = QuantizeStream(params, 2)
        assert s.push(x) is x
        assert s.finish().shape == (2, 0)


# --- random splits through a pipeline ------------------------------------------

_PIPE_N = 60_000
_PIPE_EQ = EQParams(bands=BANDS, taps=255)
_PIPE_IR = _decaying_ir((2,), 1500, seed=9)
_PIPE_REVERB = ReverbParams(ir="my_space.wav", predelay_ms=3.0, wet_db=-12.0, tail="keep")
_PIPE_DITHER = DitherParams(bit_depth=16, noise_shaping="lipshitz")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 25_000), max_size=8))
def test_random_splits_through_eq_reverb_quantize(xp, sizes):
    x = _signal(xp, 2, _PIPE_N, seed=10)
    want = quantize(apply_reverb(apply_eq(x, RATE, _PIPE_EQ), RATE, _PIPE_REVERB, ir=_PIPE_IR), _PIPE_DITHER)
    pipe = stream.Pipeline([EQStream(_PIPE_EQ, RATE, 2, _PIPE_N),
                            ReverbStream(_PIPE_REVERB, RATE, 2, _PIPE_N, ir=_PIPE_IR),
                            QuantizeStream(_PIPE_DITHER, 2)])
    got = stream.run(pipe, stream.split(x, sizes))
    assert got.shape == want.shape
    if xp is np:
        np.testing.assert_array_equal(got, want)
    else:  # cuFFT rounding may move a sample across a rounding boundary: at most a few LSB
        assert np.max(np.abs(backend.to_host(got) - backend.to_host(want))) <= 8 * 2.0 ** -15
