"""kernels.resample: the whole-signal rate conversion and its streamed form.

The streamed output is compared with the whole-signal output for exact
equality: ResampleStream runs the same float64 upfirdn sums in the same order
(see the kernels/resample.py docstring), so any difference at all is a bug in
its window bookkeeping, not rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.resample import ResampleStream, ratio, resample
from kernels.stream import run, split

PAIRS = [(96000, 48000), (44100, 48000), (48000, 44100), (48000, 96000)]
MORE_PAIRS = PAIRS + [(88200, 48000), (32000, 44100), (22050, 48000), (48000, 8000)]


def _signal(channels: int, n: int, seed: int = 0) -> np.ndarray:
    """Noise plus a loud sine: float32 programme with content at every frequency."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 48000.0
    x = 0.3 * rng.standard_normal((channels, n)) + 0.6 * np.sin(2 * np.pi * 997.0 * t)
    return x.astype(np.float32)


def _reference(x, rate_in, rate_out):
    """farm.audio.resample as it stands: resample_poly in float64, float32 out."""
    if rate_in == rate_out:
        return x
    up, down = ratio(rate_in, rate_out)
    return scipy.signal.resample_poly(x.astype(np.float64), up, down, axis=-1,
                                      window=("kaiser", 8.6)).astype(np.float32)


def _expected_len(n, rate_in, rate_out):
    up, down = ratio(rate_in, rate_out)
    return -(-n * up // down)


def _streamed(x, rate_in, rate_out, blocks, check_held=True):
    s = ResampleStream(rate_in, rate_out, x.shape[0], x.shape[-1])
    parts = []
    for b in split(x, blocks):
        parts.append(s.push(b))
        assert parts[-1].dtype == np.float32
        assert parts[-1].shape[0] == x.shape[0]
        if check_held:  # bounded history: one filter window plus one decimation step
            assert s.held <= s.taps + s.down, (s.held, s.taps, s.down)
    parts.append(s.finish())
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
def test_whole_matches_farm_resample(rate_in, rate_out):
    x = _signal(2, 9001)
    y = resample(x, rate_in, rate_out)
    assert y.dtype == np.float32
    assert y.shape == (2, _expected_len(9001, rate_in, rate_out))
    np.testing.assert_array_equal(y, _reference(x, rate_in, rate_out))


def test_whole_identity_when_rates_match():
    x = _signal(2, 100)
    assert resample(x, 48000, 48000) is x


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
@pytest.mark.parametrize("blocks", [777, 48000, "whole", [5000, 1, 0, 48000, 3, 777]])
def test_streamed_equals_whole(rate_in, rate_out, blocks):
    n = 2 * rate_in + 4321  # a couple of seconds, not a whole number of blocks
    x = _signal(2, n, seed=rate_in + rate_out)
    whole = resample(x, rate_in, rate_out)
    got = _streamed(x, rate_in, rate_out, n if blocks == "whole" else blocks)
    assert got.shape == whole.shape == (2, _expected_len(n, rate_in, rate_out))
    np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
def test_streamed_one_sample_blocks(rate_in, rate_out):
    x = _signal(1, 3000, seed=7)
    got = _streamed(x, rate_in, rate_out, 1)
    np.testing.assert_array_equal(got, resample(x, rate_in, rate_out))


@pytest.mark.parametrize("rate_in,rate_out", PAIRS)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 40])
def test_short_signal_shorter_than_filter(rate_in, rate_out, n):
    x = _signal(3, n, seed=n)
    s = ResampleStream(rate_in, rate_out, 3, n)
    assert n < s.taps * s.up  # fewer samples than the filter has taps
    whole = _reference(x, rate_in, rate_out) if n else np.zeros((3, 0), np.float32)
    for blocks in (1, 3, max(n, 1)):
        got = _streamed(x, rate_in, rate_out, blocks)
        assert got.shape == (3, _expected_len(n, rate_in, rate_out))
        np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_channel_count(channels):
    x = _signal(channels, 5000, seed=channels)
    got = _streamed(x, 44100, 48000, [100, 2000, 1])
    np.testing.assert_array_equal(got, resample(x, 44100, 48000))


def test_outputs_arrive_while_streaming():
    """push gives back output as soon as its inputs are in (not all at finish)."""
    x = _signal(2, 48000)
    s = ResampleStream(48000, 44100, 2, 48000)
    first = s.push(x[:, :24000])
    assert first.shape[-1] > 24000 * 44100 // 48000 - 2 * s.taps
    rest = np.concatenate([s.push(x[:, 24000:]), s.finish()], axis=-1)
    np.testing.assert_array_equal(np.concatenate([first, rest], axis=-1),
                                  resample(x, 48000, 44100))


def test_identity_stream_passes_blocks_through():
    x = _signal(2, 1000)
    got = run(ResampleStream(48000, 48000, 2, 1000), split(x, 333))
    np.testing.assert_array_equal(got, x)


def test_misuse_is_reported():
    s = ResampleStream(44100, 48000, 2, 10)
    with pytest.raises(ValueError, match="expected a \\(2, k\\) block"):
        s.push(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="more than total"):
        s.push(np.zeros((2, 11), np.float32))
    s.push(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="4 samples pushed, total=10"):
        s.finish()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(MORE_PAIRS), channels=st.integers(1, 3),
       n=st.integers(0, 4000), cuts=st.lists(st.integers(0, 1500), max_size=12),
       seed=st.integers(0, 2**32 - 1))
def test_random_splits_equal_whole(pair, channels, n, cuts, seed):
    rate_in, rate_out = pair
    x = _signal(channels, n, seed=seed)
    whole = _reference(x, rate_in, rate_out) if n else np.zeros((channels, 0), np.float32)
    got = _streamed(x, rate_in, rate_out, cuts)
    assert got.shape == (channels, _expected_len(n, rate_in, rate_out))
    np.testing.assert_array_equal(got, whole)
