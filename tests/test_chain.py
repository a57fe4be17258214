"""The mastering chain (kernels.chain): bypass is bit-transparent, the
loudness loop lands within +/-0.1 LU of the target, the true-peak ceiling
holds on the *quantized* output at 4x and 16x, an unreachable target is
reported with its reason, and silence is refused as unmeasurable."""
from __future__ import annotations

import math

import numpy as np
import pytest
import pyloudnorm

from kernels import backend, loudness
from kernels.chain import Chain, EQStage, ReverbStage, UnmeasurableError, master, shared_stages
from kernels.oversample import upsample
from kernels.params import (ChainParams, DitherParams, EQBand, EQParams, LimiterParams, LoudnessParams,
                            ReverbParams)
from signals import db_to_amp, isp_tone, music

RATE = 48000


def _gentle(target=-14.0, bit_depth=16, ceiling=-1.0, oversample=4, **loud) -> ChainParams:
    return ChainParams(
        eq=EQParams(bands=(EQBand("high_pass", 25.0, slope_db_per_oct=12),
                           EQBand("bell", 2500.0, gain_db=1.0, q=0.8),
                           EQBand("high_shelf", 10000.0, gain_db=1.5))),
        reverb=ReverbParams(ir="plate", wet_db=-26.0),
        loudness=LoudnessParams(target_lufs=target, **loud),
        limiter=LimiterParams(ceiling_dbtp=ceiling, oversample=oversample),
        dither=DitherParams(bit_depth=bit_depth),
    )


def _programme(xp, seconds=12.0, level_db=-6.0, seed=3, channels=2):
    x = music(seconds, RATE, channels, seed=seed).astype(np.float32) * np.float32(db_to_amp(level_db))
    return xp.asarray(x)


def _true_peak_linear(y, factor: int) -> float:
    return float(np.max(np.abs(backend.to_host(upsample(y, factor)))))


def _on_grid(y, bit_depth: int) -> bool:
    scaled = backend.to_host(y).astype(np.float64) * 2.0 ** (bit_depth - 1)
    return bool(np.all(scaled == np.round(scaled)))


def test_everything_bypassed_returns_the_input_itself(xp):
    x = _programme(xp, seconds=2.0)
    res = master(x, RATE, ChainParams.bypassed())
    assert res.audio is x
    assert res.gain_db == 0.0 and res.max_gain_reduction_db == 0.0 and res.reached


def test_bypassed_with_float_output_is_bit_transparent(xp):
    """Stages present but switched off (and no bit depth): the same samples come back."""
    x = _programme(xp, seconds=2.0)
    p = ChainParams(eq=EQParams(bands=(EQBand("bell", 1000.0, 3.0),), bypass=True),
                    reverb=ReverbParams(bypass=True), loudness=LoudnessParams(target_lufs=None),
                    limiter=LimiterParams(bypass=True), dither=DitherParams(bit_depth=None))
    res = master(x, RATE, p)
    assert np.array_equal(backend.to_host(res.audio), backend.to_host(x))


@pytest.mark.parametrize("level_db,target", [(-20.0, -14.0), (-3.0, -23.0), (-12.0, -16.0), (-1.0, -9.0)])
def test_loudness_loop_lands_on_target_and_ceiling_holds_after_quantizing(xp, level_db, target):
    x = _programme(xp, level_db=level_db)
    res = master(x, RATE, _gentle(target=target))
    assert res.reached, res.reason
    assert 1 <= res.passes <= 6
    y = res.audio
    assert backend.array_module(y) is xp and y.shape == x.shape
    got = loudness.integrated_loudness(y, RATE)
    assert abs(got - target) <= 0.1, got
    assert abs(res.integrated_lufs - got) < 1e-3  # measured before dither
    assert _on_grid(y, 16)
    ceiling = db_to_amp(-1.0)
    for factor in (4, 16):
        assert _true_peak_linear(y, factor) <= ceiling * (1 + 1e-7), factor
    # A second, independent meter agrees on the delivered loudness.
    pln = pyloudnorm.Meter(RATE, filter_class="DeMan").integrated_loudness(backend.to_host(y).T.astype(np.float64))
    assert abs(pln - target) <= 0.15


def test_loud_target_on_a_hard_signal_needs_limiting_and_stays_under_ceiling(xp):
    """Full-scale inter-sample-peak tones pushed to -8 LUFS at a 16x-oversampled -0.1 dBTP ceiling."""
    tone = isp_tone(seconds=6.0, rate=RATE, channels=2)
    x = xp.asarray(tone.astype(np.float32))
    res = master(x, RATE, ChainParams(loudness=LoudnessParams(target_lufs=-8.0),
                                      limiter=LimiterParams(ceiling_dbtp=-0.1, oversample=16),
                                      dither=DitherParams(bit_depth=24)))
    assert res.reached, res.reason
    ceiling = db_to_amp(-0.1)
    for factor in (4, 16):
        assert _true_peak_linear(res.audio, factor) <= ceiling * (1 + 1e-7)
    assert _on_grid(res.audio, 24)


def test_unreachable_target_is_reported_not_crushed(xp):
    x = _programme(xp, level_db=-1.0)
    p = _gentle(target=-4.0, max_gain_reduction_db=3.0)
    res = master(x, RATE, p)
    assert not res.reached
    assert "-4.0 LUFS" in res.reason and "3.0 dB" in res.reason
    assert res.max_gain_reduction_db > 3.0
    # Whatever it stopped at still meets the ceiling.
    assert _true_peak_linear(res.audio, 16) <= db_to_amp(-1.0) * (1 + 1e-7)


def test_target_without_limiter_is_a_static_gain(xp):
    x = _programme(xp, level_db=-20.0)
    p = ChainParams(loudness=LoudnessParams(target_lufs=-30.0), limiter=LimiterParams(bypass=True))
    res = master(x, RATE, p)
    assert res.reached and res.passes == 1
    x_h, y_h = backend.to_host(x).astype(np.float64), backend.to_host(res.audio).astype(np.float64)
    nz = np.abs(x_h) > 1e-4
    assert np.allclose(y_h[nz] / x_h[nz], db_to_amp(res.gain_db), rtol=1e-5)


@pytest.mark.parametrize("silence", ["zeros", "below_gate"])
def test_silence_is_unmeasurable(xp, silence):
    n = RATE * 3
    x = xp.zeros((2, n), dtype=xp.float32)
    if silence == "below_gate":
        x = x + xp.float32(db_to_amp(-90.0)) * xp.asarray(np.sign(np.sin(np.arange(n) / 7.0)), dtype=xp.float32)
    with pytest.raises(UnmeasurableError, match="-70 LUFS"):
        master(x, RATE, _gentle())


def test_no_target_limits_and_quantizes_only(xp):
    x = _programme(xp, level_db=0.0)
    p = _gentle(target=None)
    res = master(x, RATE, p)
    assert res.gain_db == 0.0 and res.integrated_lufs is None and res.reached
    assert _on_grid(res.audio, 16)
    assert res.true_peak_dbtp <= -1.0


def test_shared_stages_run_eq_then_reverb_and_time_them(xp):
    p = _gentle()
    chain = shared_stages(p).prepare(RATE)
    assert [s.name for s in chain.stages] == ["eq", "reverb"]
    x = _programme(xp, seconds=3.0)
    y = chain(x)
    assert y.shape == x.shape and set(chain.seconds) == {"eq", "reverb"}
    # Bypassed stages drop out of the chain entirely.
    assert Chain([EQStage(EQParams()), ReverbStage(ReverbParams(bypass=True))]).stages == []


def test_mono_and_surround_programmes(xp):
    for channels in (1, 6):
        x = _programme(xp, seconds=6.0, channels=channels, level_db=-10.0)
        res = master(x, RATE, _gentle(target=-18.0))
        assert res.reached, res.reason
        assert res.audio.shape == x.shape
        assert abs(loudness.integrated_loudness(res.audio, RATE) + 18.0) <= 0.1
        assert _true_peak_linear(res.audio, 16) <= db_to_amp(-1.0) * (1 + 1e-7)
        assert math.isfinite(res.true_peak_dbtp)
