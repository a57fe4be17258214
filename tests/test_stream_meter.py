"""The streaming loudness meter (kernels.loudness.LoudnessMeter) against measure().

On the host the streamed result must be bit-identical to ``measure`` of the
whole signal for any block sizes; on the device (chunked K-weighting with a
warm-up, parallel cumsum) within 1e-9 LU / dB.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import backend, stream
from kernels import loudness as L
from kernels.oversample import PEAK_CHUNK_CPU
from signals import db_to_amp, music, sine

FIELDS = tuple(L.LoudnessStats.__dataclass_fields__)


def dev(xp, x):
    return xp.asarray(np.asarray(x), dtype=xp.float32)


def programme(seconds_each, gains_db, rate, channels, seed=0):
    """Music-like sections at different levels, so both gates and the LRA have work."""
    parts = [music(s, rate, channels, seed=seed + i) * db_to_amp(g)
             for i, (s, g) in enumerate(zip(seconds_each, gains_db))]
    return np.concatenate(parts, axis=1)


def streamed(xp, x, rate, sizes, **kw):
    m = L.LoudnessMeter(rate, x.shape[0], **kw)
    for b in stream.split(x, sizes):
        m.push(b)
    return m


def assert_same(xp, got: L.LoudnessStats, want: L.LoudnessStats, tol_db=1e-9):
    if xp is np:
        assert got == want  # bit for bit
        return
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert a == pytest.approx(b, abs=tol_db), f


def assert_series_same(xp, got, want):
    got, want = backend.to_host(got), backend.to_host(want)
    if xp is np:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


LAYOUTS = {  # channels, rate (44.1 and 32 kHz put the 1 ms search grid on fractional samples)
    "mono": (1, 44100),
    "stereo": (2, 48000),
    "5.1": (6, 32000),
}
SIZES = {
    "777": 777,
    "4800": 4800,
    "65536": 65536,
    "whole": 1 << 30,
    "irregular": [0, 1, 3, 777, 0, 65536, 1, 4800, PEAK_CHUNK_CPU - 34, 65, 200000, 2],
}


@pytest.fixture(scope="module")
def programmes():
    cache = {}

    def get(layout):
        if layout not in cache:
            channels, rate = LAYOUTS[layout]
            x = programme([4.0, 3.0, 4.0, 2.0], [0.0, -18.0, -6.0, -45.0], rate, channels, seed=3)
            cache[layout] = (x.astype(np.float32), rate)
        return cache[layout]

    return get


@pytest.mark.parametrize("sizes", sorted(SIZES))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_streamed_equals_whole(xp, programmes, layout, sizes):
    x, rate = programmes(layout)
    x = dev(xp, x)
    want = L.measure(x, rate)
    assert want.loudness_range_lu > 5  # the quiet sections count: gating and LRA matter
    m = streamed(xp, x, rate, SIZES[sizes])
    assert_same(xp, m.result(), want)
    assert_series_same(xp, m.short_term_series(), L.short_term(x, rate))
    assert_series_same(xp, m.momentary_series(), L.momentary(x, rate))
    assert m.integrated() == pytest.approx(want.integrated_lufs, abs=0 if xp is np else 1e-9)


def test_one_sample_blocks_across_a_true_peak_chunk(xp):
    x = dev(xp, programme([1.5, 1.5], [0.0, -12.0], 48000, 1, seed=5))  # > PEAK_CHUNK_CPU + HALF_TAPS
    assert x.shape[-1] > PEAK_CHUNK_CPU + 64
    assert_same(xp, streamed(xp, x, 48000, 1).result(), L.measure(x, 48000))


def test_shorter_than_one_gating_block(xp):
    x = dev(xp, sine(1000.0, 0.3, 48000, -20.0))
    want = L.measure(x, 48000)
    assert want.integrated_lufs is None and want.max_momentary_lufs is None and want.true_peak_dbtp is not None
    m = streamed(xp, x, 48000, 777)
    assert_same(xp, m.result(), want)
    assert m.integrated() is None and backend.to_host(m.short_term_series()).size == 0


def test_silence_and_nothing_pushed(xp):
    x = xp.zeros((2, 5 * 48000), xp.float32)
    want = L.measure(x, 48000)
    assert want == L.LoudnessStats(None, None, None, None, None, None)
    assert streamed(xp, x, 48000, 4800).result() == want
    empty = L.LoudnessMeter(48000, 2)
    empty.push(xp.zeros((2, 0), xp.float32))
    assert empty.result() == want and empty.integrated() is None
    assert L.LoudnessMeter(48000, 2).result() == want


@pytest.mark.parametrize("factor", [1, 4, 16])
def test_inter_sample_peak_on_a_block_edge(xp, factor):
    rate, edge = 48000, PEAK_CHUNK_CPU  # both a block edge and a true-peak chunk edge
    x = 0.01 * music(4.0, rate, 2, seed=7)
    n = np.arange(-200, 200)
    burst = np.sqrt(2) * np.sin(np.pi / 2 * n + np.pi / 4) * np.hanning(n.size)  # fs/4 at 45 deg
    x[:, edge - 200:edge + 200] += 0.5 * burst
    x = dev(xp, x)
    want = L.measure(x, rate, true_peak_factor=factor)
    if factor > 1:
        assert want.true_peak_dbtp > want.sample_peak_dbfs + 2.5  # the peak is between samples
    for sizes in ([edge], [edge - 1, 2], [edge - 40, 80], 4800):
        assert_same(xp, streamed(xp, x, rate, sizes, true_peak_factor=factor).result(), want)


def test_reading_mid_stream_then_continuing(xp, programmes):
    x, rate = programmes("stereo")
    x = dev(xp, x)
    half = 5 * rate + 123
    m = L.LoudnessMeter(rate, 2)
    for b in stream.split(x[:, :half], 4800):
        m.push(b)
    assert_same(xp, m.result(), L.measure(x[:, :half], rate))
    for b in stream.split(x[:, half:], 65536):
        m.push(b)
    assert_same(xp, m.result(), L.measure(x, rate))


def test_integrated_mode_and_gain_reuse(xp, programmes):
    x, rate = programmes("stereo")
    x = dev(xp, x)
    m = streamed(xp, x, rate, 4800, what="integrated")
    assert m.integrated() == pytest.approx(L.integrated_loudness(x, rate), abs=0 if xp is np else 1e-9)
    assert_series_same(xp, m.block_energies(), L.block_energies(x, rate))
    g = 10 ** (-3.0 / 20)
    assert L.gated_loudness(m.block_energies() * g * g) == pytest.approx(m.integrated() - 3.0, abs=1e-9)
    with pytest.raises(ValueError, match="what"):
        m.result()
    with pytest.raises(ValueError, match="what"):
        m.short_term_series()


def test_channel_weights_and_bad_input(xp):
    x = dev(xp, programme([4.0], [0.0], 48000, 4, seed=9))
    w = (1.0, 1.0, 1.41, 1.41)
    assert_same(xp, streamed(xp, x, 48000, 4800, channel_weights=w).result(),
                L.measure(x, 48000, channel_weights=w))
    with pytest.raises(ValueError, match="channels"):
        L.LoudnessMeter(48000, 2).push(x)
    with pytest.raises(ValueError, match="what"):
        L.LoudnessMeter(48000, 2, what="peaks")
    with pytest.raises(ValueError, match="factor"):
        L.LoudnessMeter(48000, 2, true_peak_factor=3)
    with pytest.raises(ValueError, match="sample_rate"):
        L.LoudnessMeter(4000, 2)
    with pytest.raises(ValueError, match="channel_weights"):
        L.LoudnessMeter(48000, 2, channel_weights=(1.0,))
    bad = xp.asarray(np.full((2, 48000), 0.1, np.float32))
    bad[0, 30000] = np.nan
    with pytest.raises(ValueError, match="finite"):
        L.measure(bad, 48000)
    with pytest.raises(ValueError, match="finite"):
        streamed(xp, bad, 48000, 4800).result()


def test_device_carry_mode_on_the_host(programmes):
    """The device path (K-weighting restarted K_WEIGHT_WARMUP_S early on carried
    input) checked on NumPy, where the CI has no GPU: float64-rounding close."""
    x, rate = programmes("stereo")
    want = L.measure(x, rate)
    m = L.LoudnessMeter(rate, 2)
    m._carry = "warmup"
    for b in stream.split(x, [100, 4800, 20000, 65536, 300000]):
        m.push(b)
    got = m.result()
    for f in FIELDS:
        assert getattr(got, f) == pytest.approx(getattr(want, f), abs=1e-9), f


_PROPERTY_RATE = 44100
_PROPERTY_X = programme([2.0, 2.5, 1.5], [0.0, -20.0, -8.0], _PROPERTY_RATE, 2, seed=11).astype(np.float32)
_PROPERTY_WANT = L.measure(_PROPERTY_X, _PROPERTY_RATE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, _PROPERTY_X.shape[-1]), min_size=0, max_size=12))
def test_any_block_split_gives_the_whole_signal_result(cuts):
    edges = [0] + sorted(cuts) + [_PROPERTY_X.shape[-1]]
    sizes = [b - a for a, b in zip(edges, edges[1:])]
    m = streamed(np, _PROPERTY_X, _PROPERTY_RATE, sizes)
    assert m.result() == _PROPERTY_WANT
    assert math.isfinite(_PROPERTY_WANT.loudness_range_lu)


@pytest.mark.parametrize("blocks", [777, 65536, [1, 2, 131071, 5, 131072 * 2]])
def test_true_peak_mode_equals_true_peak_dbtp(blocks):
    """what="true_peak" skips the loudness and gives true_peak_dbtp of the whole, to the bit."""
    rng = np.random.default_rng(11)
    x = (0.3 * rng.standard_normal((2, 400_000))).astype(np.float32)
    x[:, 131071:131073] = [[0.9, -0.9]] * 2  # an inter-sample peak across a true-peak chunk edge
    m = L.LoudnessMeter(48000, 2, what="true_peak")
    for b in stream.split(x, blocks):
        m.push(b)
    assert m.true_peak_dbtp() == L.true_peak_dbtp(x, 4)
    with pytest.raises(ValueError, match="no loudness"):
        m.integrated()
    assert L.LoudnessMeter(48000, 2, what="true_peak").true_peak_dbtp() is None
