"""kernels.pyloudnorm_meter: pyloudnorm's integrated loudness on either backend,
held to pyloudnorm itself (the host, 1e-9 LU; a device runs the same arithmetic
through cupyx's lfilter, 1e-6 LU) on EBU Tech 3341 signals, music, noise, 1-5
channels, the shortest input pyloudnorm takes, gated-out and silent inputs,
and hypothesis-drawn signals; and failing where pyloudnorm fails."""
from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import pyloudnorm_meter as plm
from signals import music, sine, tone_sequence


def reference(x: np.ndarray, rate: int) -> float:
    return float(pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(x.T.astype(np.float64)))


def close(xp) -> float:
    return 1e-9 if xp is np else 1e-6


def check(xp, x: np.ndarray, rate: int) -> float:
    want = reference(x, rate)
    got = plm.integrated_loudness(xp.asarray(x), rate)
    if math.isinf(want):
        assert got == want
    else:
        assert abs(got - want) <= close(xp), (got, want)
    return got


@pytest.mark.parametrize("case", [
    ([-23.0], [20.0], -23.0),  # Tech 3341 case 1
    ([-36.0, -23.0, -36.0], [10.0, 60.0, 10.0], -23.0),  # case 3: the relative gate
    ([-72.0, -36.0, -23.0, -36.0, -72.0], [10.0, 10.0, 60.0, 10.0, 10.0], -23.0),  # case 4: both gates
])
def test_ebu_tech3341_signals_read_as_pyloudnorm_reads_them(xp, case):
    levels, seconds, expected = case
    got = check(xp, tone_sequence(levels, seconds, rate=48000), 48000)
    assert got == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("rate, channels", [(44100, 1), (48000, 2), (96000, 3), (48000, 5)])
def test_music_at_each_rate_and_layout(xp, rate, channels):
    check(xp, music(6.0, rate, channels, seed=channels), rate)


def test_noise_the_shortest_input_and_a_partial_last_block(xp):
    rng = np.random.default_rng(3)
    for frames in (19200, 19201, 48000 * 3 + 4799, 48000 * 3 + 4801):
        check(xp, 0.1 * rng.standard_normal((2, frames)), 48000)


def test_gated_out_and_silent_inputs_are_minus_infinity(xp):
    assert check(xp, np.zeros((2, 48000)), 48000) == -math.inf
    assert check(xp, sine(1000.0, 2.0, 48000, level_dbfs=-80.0), 48000) == -math.inf


def test_refuses_what_pyloudnorm_refuses(xp):
    for bad in (np.zeros((6, 48000)), np.zeros((2, 19199)), np.zeros((2, 48000), dtype=np.int16)):
        with pytest.raises(ValueError):
            pyloudnorm.Meter(48000, filter_class="DeMan").integrated_loudness(bad.T)
        with pytest.raises(ValueError):
            plm.integrated_loudness(xp.asarray(bad), 48000)


def test_filters_are_pyloudnorms_own():
    m = pyloudnorm.Meter(44100, filter_class="DeMan")
    for (b, a, gain), f in zip(plm.filter_stages(44100), m._filters.values(), strict=True):
        assert np.array_equal(b, f.b) and np.array_equal(a, f.a) and gain == f.passband_gain


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(19200, 48000 * 4), channels=st.integers(1, 5),
       level_db=st.floats(-75.0, 0.0), quiet_db=st.floats(-90.0, 0.0), seed=st.integers(0, 2 ** 16),
       rate=st.sampled_from([32000, 44100, 48000, 88200]))
def test_equals_pyloudnorm_on_drawn_signals(frames, channels, level_db, quiet_db, seed, rate):
    """Noise with a quieter middle third (the gates at work), any layout and rate."""
    rng = np.random.default_rng(seed)
    frames = max(frames, int(np.ceil(0.4 * rate)))
    x = 10.0 ** (level_db / 20.0) * rng.standard_normal((channels, frames))
    x[:, frames // 3:2 * frames // 3] *= 10.0 ** ((quiet_db - level_db) / 20.0) if quiet_db < level_db else 1.0
    check(np, x, rate)
