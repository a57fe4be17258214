"""Conformance of the BS.1770-4 / EBU R128 meter (kernels.loudness).

The EBU Tech 3341 (loudness meter) and Tech 3342 (loudness range) test
signals are synthesised from their descriptions in the specs; expected
values and tolerances are the specs' (integrated, momentary, short-term
+-0.1 LU; true peak +0.2/-0.4 dB; LRA +-1 LU). Cases 7/8 (authentic
programme) and 20-23 (true-peak files) need the EBU's recordings and are not
synthesised. pyloudnorm with ``filter_class="DeMan"`` (the exact BS.1770
coefficients) is the independent second meter.
"""
import math

import numpy as np
import pyloudnorm
import pytest
import scipy.signal

from kernels import backend
from kernels import loudness as L
from signals import db_to_amp, music, sine, tone_sequence

RATE = 48000


def dev(xp, x):
    """Test audio as the farm holds it: float32 on the backend under test."""
    return xp.asarray(np.asarray(x), dtype=xp.float32)


def bursts(levels_dbfs, burst_s, gap_s, offset_samples, rate=RATE, channels=2):
    """EBU Tech 3341 cases 10, 11, 13, 14: tone bursts separated by silence,
    each burst starting ``offset_samples * i`` later than a round gap so the
    bursts sit at every phase of the 100 ms (and 1 ms) grid."""
    parts = []
    for i, lvl in enumerate(levels_dbfs):
        parts.append(np.zeros((channels, int(round(gap_s * rate)) + offset_samples * i)))
        parts.append(sine(1000.0, burst_s, rate, lvl, channels))
    parts.append(np.zeros((channels, int(round(gap_s * rate)))))
    return np.concatenate(parts, axis=1)


def tp_sine(freq_hz, phase_deg, amplitude, rate=RATE, seconds=2.0, channels=2):
    """Tech 3341 cases 15-19: a sine at a fraction of fs with a phase that puts
    its peaks between samples, with 10 ms fades so the ends do not ring."""
    n = np.arange(int(round(seconds * rate)))
    s = amplitude * np.sin(2 * np.pi * freq_hz * n / rate + np.deg2rad(phase_deg))
    fade = int(round(0.01 * rate))
    ramp = np.arange(fade) / fade
    s[:fade] *= ramp
    s[-fade:] *= ramp[::-1]
    return np.tile(s, (channels, 1))


# --------------------------------------------------------------------------- K-weighting

BS1770_TABLE_1 = [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585]
BS1770_TABLE_2 = [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]


def test_k_weighting_reproduces_the_bs1770_tables_at_48k():
    sos = L.k_weighting_sos(48000)
    assert sos.shape == (2, 6) and sos.dtype == np.float64
    np.testing.assert_allclose(sos[0], BS1770_TABLE_1, rtol=0, atol=1e-8)
    np.testing.assert_allclose(sos[1], BS1770_TABLE_2, rtol=0, atol=1e-8)


@pytest.mark.parametrize("rate", [22050, 32000, 44100, 88200, 96000, 192000])
def test_k_weighting_response_at_other_rates_matches_48k(rate):
    freqs = np.array([20.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0])
    _, ref = scipy.signal.sosfreqz(L.k_weighting_sos(48000), freqs, fs=48000)
    _, h = scipy.signal.sosfreqz(L.k_weighting_sos(rate), freqs, fs=rate)
    diff_db = 20 * np.log10(np.abs(h) / np.abs(ref))
    assert np.abs(diff_db[freqs <= 5000]).max() < 0.1  # warping grows towards Nyquist (0.07 dB at 22.05 kHz)
    assert abs(diff_db[freqs == 1000][0]) < 0.035


def test_k_weighting_rejects_rates_it_cannot_represent():
    with pytest.raises(ValueError, match="sample_rate"):
        L.k_weighting_sos(4000)
    with pytest.raises(ValueError, match="sample_rate"):
        L.integrated_loudness(np.zeros((2, 100), np.float32), 48000.5)


def test_chunked_k_weighting_matches_sequential_filter(xp):
    x = music(6.0, RATE, seed=5)
    ref = scipy.signal.sosfilt(L.k_weighting_sos(RATE), x, axis=-1)
    for chunk_s in (None, 0.5):  # auto (whole on the host, chunks on a device) and forced chunks
        y = backend.to_host(L.k_weight(xp.asarray(x), RATE, chunk_s=chunk_s))
        assert y.shape == x.shape and y.dtype == np.float64
        assert np.abs(y - ref).max() < 1e-9


# --------------------------------------------------------------------------- channels


def test_channel_weights_follow_bs1770_table_3_in_wav_order():
    assert L.channel_weights(1) == (1.0,)
    assert L.channel_weights(2) == (1.0, 1.0)
    assert L.channel_weights(3) == (1.0, 1.0, 1.0)
    assert L.channel_weights(5) == (1.0, 1.0, 1.0, 1.41, 1.41)  # 5.0 L R C Ls Rs
    assert L.channel_weights(6) == (1.0, 1.0, 1.0, 0.0, 1.41, 1.41)  # 5.1: LFE excluded
    assert L.channel_weights(8) == (1.0, 1.0, 1.0, 0.0) + (1.41,) * 4  # 7.1
    assert len(L.channel_weights(12)) == 12  # no channel limit


def test_lfe_is_excluded_and_weights_can_be_given(xp):
    levels = [-28.0, -28.0, -24.0, -30.0, -30.0]
    x5 = np.concatenate([sine(1000.0, 5.0, RATE, lvl, 1) for lvl in levels])
    lfe = sine(60.0, 5.0, RATE, -1.0, 1)  # a loud LFE must not count
    x6 = np.concatenate([x5[:3], lfe, x5[3:]])
    i5 = L.integrated_loudness(dev(xp, x5), RATE)
    i6 = L.integrated_loudness(dev(xp, x6), RATE)
    assert i5 == pytest.approx(-23.0, abs=0.1) and i6 == pytest.approx(i5, abs=1e-4)
    quad = L.integrated_loudness(dev(xp, x5[[0, 1, 3, 4]]), RATE, channel_weights=(1, 1, 1.41, 1.41))
    expected = 10 * np.log10(2 * db_to_amp(-28) ** 2 / 2 + 2 * 1.41 * db_to_amp(-30) ** 2 / 2)
    assert quad == pytest.approx(expected, abs=0.05)
    with pytest.raises(ValueError, match="channel_weights"):
        L.integrated_loudness(dev(xp, x5), RATE, channel_weights=(1.0, 1.0))


# --------------------------------------------------------------------------- EBU Tech 3341


TECH_3341_INTEGRATED = {  # case: (levels dBFS, durations s, expected I LUFS)
    1: ([-23.0], [20.0], -23.0),
    2: ([-33.0], [20.0], -33.0),
    3: ([-36.0, -23.0, -36.0], [10.0, 60.0, 10.0], -23.0),
    4: ([-72.0, -36.0, -23.0, -36.0, -72.0], [10.0, 10.0, 60.0, 10.0, 10.0], -23.0),
    5: ([-26.0, -20.0, -26.0], [20.0, 20.1, 20.0], -23.0),
}


@pytest.mark.parametrize("case", sorted(TECH_3341_INTEGRATED))
def test_tech3341_integrated_loudness(xp, case):
    levels, seconds, expected = TECH_3341_INTEGRATED[case]
    x = dev(xp, tone_sequence(levels, seconds, rate=RATE))
    assert L.integrated_loudness(x, RATE) == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("level", [-23.0, -33.0])
def test_tech3341_cases_1_2_momentary_short_term_and_integrated(xp, level):
    x = dev(xp, sine(1000.0, 20.0, RATE, level))
    s = L.measure(x, RATE)
    for v in (s.integrated_lufs, s.max_momentary_lufs, s.max_short_term_lufs):
        assert v == pytest.approx(level, abs=0.1)
    m = backend.to_host(L.momentary(x, RATE))
    st = backend.to_host(L.short_term(x, RATE))
    assert m.shape == (197,) and st.shape == (171,)  # complete windows every 100 ms
    assert np.abs(m - level).max() < 0.1 and np.abs(st - level).max() < 0.1


def test_tech3341_case_6_five_channels(xp):
    levels = [-28.0, -28.0, -24.0, -30.0, -30.0]  # L R C Ls Rs
    x = np.concatenate([sine(1000.0, 20.0, RATE, lvl, 1) for lvl in levels])
    assert L.integrated_loudness(dev(xp, x), RATE) == pytest.approx(-23.0, abs=0.1)
    x51 = np.concatenate([x[:3], np.zeros((1, x.shape[1])), x[3:]])  # the 6-channel WAVEEX file
    assert L.integrated_loudness(dev(xp, x51), RATE) == pytest.approx(-23.0, abs=0.1)


def test_tech3341_case_9_short_term_is_constant(xp):
    x = tone_sequence([-20.0, -30.0] * 5, [1.34, 1.66] * 5, rate=RATE)
    st = backend.to_host(L.short_term(dev(xp, x), RATE))
    assert st.size > 100 and np.abs(st + 23.0).max() < 0.1


def test_tech3341_case_12_momentary_is_constant(xp):
    x = tone_sequence([-20.0, -30.0] * 25, [0.18, 0.22] * 25, rate=RATE)
    m = backend.to_host(L.momentary(dev(xp, x), RATE))
    assert m.size > 90 and np.abs(m + 23.0).max() < 0.1


@pytest.mark.parametrize("case,burst_s,levels,expected", [
    (10, 3.0, [-23.0] * 20, -23.0),
    (11, 3.0, [-38.0 + i for i in range(20)], -19.0),
    (13, 0.4, [-23.0] * 20, -23.0),
    (14, 0.4, [-38.0 + i for i in range(20)], -19.0),
])
def test_tech3341_maximum_of_offset_tone_bursts(xp, case, burst_s, levels, expected):
    x = dev(xp, bursts(levels, burst_s, gap_s=0.6 if burst_s < 1 else 1.2, offset_samples=1153))
    s = L.measure(x, RATE)
    got = s.max_short_term_lufs if burst_s == 3.0 else s.max_momentary_lufs
    assert got == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("case,freq_div,phase,amp,expected", [
    (15, 4, 0.0, 0.5, -6.0),
    (16, 4, 45.0, 0.5, -6.0),
    (17, 6, 60.0, 0.5, -6.0),
    (18, 8, 67.5, 0.5, -6.0),
    (19, 4, 45.0, 1.41, 3.0),
])
@pytest.mark.parametrize("factor", [4, 16])
def test_tech3341_true_peak(xp, case, freq_div, phase, amp, expected, factor):
    x = dev(xp, tp_sine(RATE / freq_div, phase, amp))
    tp = L.true_peak_dbtp(x, factor)
    assert expected - 0.4 <= tp <= expected + 0.2
    assert tp >= L.sample_peak_dbfs(x) - 1e-6  # the input samples are among the interpolated ones


def test_true_peak_in_measure_and_over_ceiling(xp):
    x = dev(xp, tp_sine(RATE / 4, 45.0, 0.5))
    assert L.measure(x, RATE).true_peak_dbtp == pytest.approx(L.true_peak_dbtp(x), abs=1e-9)
    assert L.measure(x, RATE, true_peak_factor=16).true_peak_dbtp == pytest.approx(
        L.true_peak_dbtp(x, 16), abs=1e-9)
    over = L.true_peak_over(x, -7.0)
    assert over == pytest.approx(L.true_peak_dbtp(x, 16) + 7.0, abs=1e-9)  # near the ceiling: 16x
    assert L.true_peak_over(x, 0.0) < 0 and L.true_peak_over(xp.zeros((2, 100), xp.float32), -1.0) == -math.inf


def test_chunked_true_peak_equals_whole_signal_upsampling(xp):
    from kernels.oversample import upsample

    x = dev(xp, music(3.0, RATE, seed=9) * 1.3)
    whole = float(backend.to_host(xp.abs(upsample(x, 4)).max()))
    assert L.true_peak_dbtp(x, 4) == pytest.approx(20 * np.log10(whole), abs=1e-6)


# --------------------------------------------------------------------------- EBU Tech 3342


@pytest.mark.parametrize("case,levels,expected", [
    (1, [-20.0, -30.0], 10.0),
    (2, [-20.0, -15.0], 5.0),
    (3, [-40.0, -20.0], 20.0),
    (4, [-50.0, -35.0, -20.0, -35.0, -50.0], 15.0),
])
def test_tech3342_loudness_range(xp, case, levels, expected):
    x = dev(xp, tone_sequence(levels, [20.0] * len(levels), rate=RATE))
    assert L.loudness_range(x, RATE) == pytest.approx(expected, abs=1.0)


# --------------------------------------------------------------------------- pyloudnorm


def _pyloudnorm(x, rate):
    return pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(np.asarray(x, np.float64).T)


@pytest.mark.parametrize("seconds,rate,channels,seed", [
    (12.0, 48000, 2, 1), (9.3, 44100, 2, 2), (7.0, 48000, 1, 3), (6.0, 96000, 2, 4), (8.0, 48000, 5, 6),
])
def test_integrated_agrees_with_pyloudnorm(xp, seconds, rate, channels, seed):
    x = music(seconds, rate, channels, seed).astype(np.float32)  # a whole number of 100 ms steps
    ours = L.integrated_loudness(dev(xp, x), rate)
    assert ours == pytest.approx(_pyloudnorm(x, rate), abs=0.05)


def test_gating_agrees_with_pyloudnorm_on_a_programme_with_quiet_passages(xp):
    loud = music(6.0, RATE, seed=7)
    x = np.concatenate([loud, loud * db_to_amp(-25.0), np.zeros((2, RATE)), loud * db_to_amp(-8.0)], axis=1)
    x = x.astype(np.float32)
    ours = L.integrated_loudness(dev(xp, x), RATE)
    assert ours == pytest.approx(_pyloudnorm(x, RATE), abs=0.05)
    # the -25 dB passage is gated out: the loudness is that of the loud parts only
    assert ours > L.integrated_loudness(dev(xp, loud), RATE) - 3.0


def test_a_final_partial_block_is_not_counted(xp):
    x = music(4.98, RATE, seed=8).astype(np.float32)
    x[:, -int(0.08 * RATE):] *= 8.0  # a loud last 80 ms that no complete 400 ms block reaches
    ours = L.integrated_loudness(dev(xp, x), RATE)
    complete = x[:, :int(4.9 * RATE)]  # blocks end every 100 ms: the last complete one ends at 4.9 s
    assert ours == pytest.approx(L.integrated_loudness(dev(xp, complete), RATE), abs=1e-9)
    assert ours == pytest.approx(_pyloudnorm(complete, RATE), abs=0.05)
    assert _pyloudnorm(x, RATE) > ours + 0.1  # pyloudnorm counts a partial block 4.6-5.0 s


# --------------------------------------------------------------------------- rates, gain, API


@pytest.mark.parametrize("rate", [11025, 32000, 44100, 96000, 192000])
def test_other_sample_rates_measure_a_1k_sine(xp, rate):
    s = L.measure(dev(xp, sine(1000.0, 10.0, rate, -23.0)), rate)
    assert s.integrated_lufs == pytest.approx(-23.0, abs=0.1)
    assert s.max_momentary_lufs == pytest.approx(-23.0, abs=0.1)
    assert s.max_short_term_lufs == pytest.approx(-23.0, abs=0.1)
    assert s.loudness_range_lu == pytest.approx(0.0, abs=0.1)
    assert s.sample_peak_dbfs == pytest.approx(-23.0, abs=0.01)


def test_window_bounds_are_exact_and_complete():
    s, e = L.window_bounds(48000, 48000, 0.4, 0.1)
    assert s.tolist() == [0, 4800, 9600, 14400, 19200, 24000, 28800] and (e - s == 19200).all()
    assert len(L.window_bounds(47999, 48000, 0.4, 0.1)[0]) == 6  # the 7th block would miss a sample
    assert len(L.window_bounds(19199, 48000, 0.4, 0.1)[0]) == 0
    s, e = L.window_bounds(11025 * 2, 11025, 0.4, 0.1)
    assert set((e - s).tolist()) <= {4410, 4411} and e[-1] <= 22050 and np.all(np.diff(s) >= 1102)


def test_block_energies_give_the_loudness_at_any_gain_without_refiltering(xp):
    x = dev(xp, music(6.0, RATE, seed=11))
    z = L.block_energies(x, RATE)
    base = L.gated_loudness(z)
    assert base == pytest.approx(L.integrated_loudness(x, RATE), abs=1e-12)
    g_db = -7.5
    g = 10 ** (g_db / 20)
    assert L.gated_loudness(z * g * g) == pytest.approx(base + g_db, abs=1e-9)
    assert L.integrated_loudness(x * xp.float32(g), RATE) == pytest.approx(base + g_db, abs=1e-4)


def test_measure_is_consistent_with_the_separate_functions(xp):
    x = dev(xp, music(8.0, RATE, seed=12))
    s = L.measure(x, RATE)
    assert s.integrated_lufs == pytest.approx(L.integrated_loudness(x, RATE), abs=1e-9)
    assert s.loudness_range_lu == pytest.approx(L.loudness_range(x, RATE), abs=1e-9)
    assert s.max_momentary_lufs == pytest.approx(L.max_momentary(x, RATE), abs=1e-9)
    assert s.max_short_term_lufs == pytest.approx(L.max_short_term(x, RATE), abs=1e-9)
    assert s.max_momentary_lufs >= float(backend.to_host(L.momentary(x, RATE)).max()) - 1e-9
    assert s.true_peak_dbtp == pytest.approx(L.true_peak_dbtp(x), abs=1e-9)
    assert s.sample_peak_dbfs == pytest.approx(L.sample_peak_dbfs(x), abs=1e-9)
    assert set(s.to_dict()) == {"integrated_lufs", "loudness_range_lu", "true_peak_dbtp",
                                "max_momentary_lufs", "max_short_term_lufs", "sample_peak_dbfs"}
    # the same pass also gives the short-term series, bit for bit short_term()'s
    s2, st = L.measure_with_short_term(x, RATE)
    assert s2 == s
    np.testing.assert_array_equal(backend.to_host(st), backend.to_host(L.short_term(x, RATE)))
    empty, none = L.measure_with_short_term(x[:, :0], RATE)
    assert empty.integrated_lufs is None and none.shape == (0,)


def test_backends_agree(xp):
    x = music(5.0, RATE, seed=13).astype(np.float32)
    a, b = L.measure(x, RATE), L.measure(dev(xp, x), RATE)
    for k, v in a.to_dict().items():
        assert getattr(b, k) == pytest.approx(v, abs=1e-4), k


# --------------------------------------------------------------------------- undefined values


def test_silence_has_no_loudness_and_no_peak(xp):
    s = L.measure(xp.zeros((2, 5 * RATE), xp.float32), RATE)
    assert s == L.LoudnessStats(None, None, None, None, None, None)
    assert L.integrated_loudness(xp.zeros((2, 5 * RATE), xp.float32), RATE) is None
    assert L.true_peak_dbtp(xp.zeros((2, 100), xp.float32)) is None
    m = backend.to_host(L.momentary(xp.zeros((2, RATE), xp.float32), RATE))
    assert m.size == 7 and np.all(m == -np.inf)


def test_everything_below_the_absolute_gate_has_no_integrated_loudness(xp):
    s = L.measure(dev(xp, sine(1000.0, 5.0, RATE, -80.0)), RATE)
    assert s.integrated_lufs is None and s.loudness_range_lu is None
    assert s.max_momentary_lufs == pytest.approx(-80.0, abs=0.1)  # momentary is not gated
    assert s.true_peak_dbtp == pytest.approx(-80.0, abs=0.1)


def test_too_short_programmes(xp):
    short = L.measure(dev(xp, sine(1000.0, 0.3, RATE, -20.0)), RATE)
    assert short.integrated_lufs is None and short.max_momentary_lufs is None
    assert short.max_short_term_lufs is None and short.loudness_range_lu is None
    assert short.sample_peak_dbfs == pytest.approx(-20.0, abs=0.01) and short.true_peak_dbtp is not None
    two = L.measure(dev(xp, sine(1000.0, 2.0, RATE, -20.0)), RATE)
    assert two.integrated_lufs == pytest.approx(-20.0, abs=0.1)
    assert two.max_short_term_lufs is None and two.loudness_range_lu is None
    assert backend.to_host(L.short_term(dev(xp, sine(1000.0, 2.0, RATE)), RATE)).size == 0
    empty = xp.zeros((2, 0), xp.float32)
    assert L.measure(empty, RATE) == L.LoudnessStats(None, None, None, None, None, None)
    assert L.integrated_loudness(empty, RATE) is None and L.loudness_range(empty, RATE) is None
    assert L.max_momentary(empty, RATE) is None and L.true_peak_dbtp(empty) is None
    one = xp.full((2, 1), 0.5, xp.float32)  # a single sample: peaks only
    assert L.integrated_loudness(one, RATE) is None and L.sample_peak_dbfs(one) == pytest.approx(-6.02, abs=0.01)


def test_mono_vector_and_bad_input(xp):
    x = sine(1000.0, 3.0, RATE, -20.0, channels=1)
    assert L.integrated_loudness(dev(xp, x[0]), RATE) == pytest.approx(L.integrated_loudness(dev(xp, x), RATE))
    bad = np.array(x, dtype=np.float32)
    bad[0, 100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        L.measure(dev(xp, bad), RATE)
    with pytest.raises(ValueError, match="NaN"):
        L.integrated_loudness(dev(xp, bad), RATE)
    with pytest.raises(ValueError, match="channels, samples"):
        L.measure(xp.zeros((1, 2, 3), xp.float32), RATE)


# --------------------------------------------------------------------------- device kernels


@pytest.mark.parametrize("rate, seconds, channels", [(48000, 3.7, 2), (44100, 5.0, 1), (48000, 2.5, 6)])
def test_device_k_weighting_kernel_sources_equal_the_array_path_on_the_cpu(rate, seconds, channels):
    """K_FRAMES_CUDA and K_POWER_CUDA (the chunked K-weighting's frames and the
    weighted power on a device), compiled for the CPU (tests/cuda_host.py): the
    array path's bytes for the frames (zeros before and after the signal) and for
    the power (5.1 weights with the LFE at 0), on 1 s chunks as on a device."""
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel source for the host")
    x = music(seconds, rate, channels).astype(np.float32)
    n = x.shape[-1]
    chunk = L._k_chunk(np, n, rate, 1.0)
    assert chunk == rate
    warm = int(math.ceil(L.K_WEIGHT_WARMUP_S * rate))
    count = -(-n // chunk)
    padded = np.zeros((channels, warm + count * chunk))
    padded[:, warm:warm + n] = x
    want_frames = padded[:, np.arange(count)[:, None] * chunk + np.arange(warm + chunk)[None, :]]
    frames = np.empty((channels, count, warm + chunk))
    work, args = L.frames_args(x, chunk, warm, frames)
    cuda_host.run(L.K_FRAMES_CUDA, "farm_k_frames", args)
    assert work == frames.size and frames.tobytes() == want_frames.tobytes()

    y, warm_used = L._weighted_frames(x, rate, chunk)  # the array path (NumPy)
    assert warm_used == warm
    w = L.channel_weights(channels)
    want = L.weighted_power(x, rate, chunk_s=1.0)  # crop, then _power
    p = np.empty(n)
    work, args = L.power_args(np.ascontiguousarray(y), warm, chunk, n, np.asarray(w, dtype=np.float64), p)
    cuda_host.run(L.K_POWER_CUDA, "farm_k_power", args)
    assert work == n and p.tobytes() == want.tobytes()
    assert np.allclose(p, L.weighted_power(x, rate, chunk_s=0.0), rtol=1e-9, atol=1e-15)  # chunks join


@pytest.mark.gpu
def test_device_weighted_power_kernels_equal_the_array_path_on_the_device(launches):
    """On a GPU: weighted_power through the two kernels (float32 input) against the
    array path on the same device (float64 input takes it), to float64 rounding of
    the float32 -> float64 conversion (exact): the same bits."""
    import cupy

    x = cupy.asarray(music(4.0, RATE, 2).astype(np.float32))
    fused = L.weighted_power(x, RATE)
    assert launches == ["farm_k_frames", "farm_k_power"]
    arrays = L.weighted_power(x.astype(cupy.float64), RATE)
    assert cupy.asnumpy(fused).tobytes() == cupy.asnumpy(arrays).tobytes()
