"""kernels.batch: short tracks mastered together equal each mastered alone.

The reference is kernels.chain.master() on each track: the same loudness
outcome (passes, reached, reason), and levels, gains and masters within float32
rounding (the batch's FFTs have other sizes; measured 2026-12-02: masters
within 1.5e-6, gains within 4e-6 dB, levels within 1e-7 LU); the limiter's
ceiling holds on every track. Driven hot (-8 LUFS) the limiter works
hard, hard edges included (music cut off at full level at both ends).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from farm.presets import load_preset
from kernels import batch, loudness
from kernels.chain import UnmeasurableError, master
from kernels.params import ChainParams, ReverbParams
from signals import music

RATE = 48000
# (seconds, level): different lengths, a quiet one, and one hard against full scale
TRACKS = [(5.0, 1.0), (12.3, 0.3), (8.7, 0.9), (2.1, 0.05)]


def _tracks(channels: int = 2, spec=TRACKS):
    return [(music(s, RATE, channels, seed=i) * g).astype(np.float32) for i, (s, g) in enumerate(spec)]


def _chain(preset: str, target: float | None = -14.0, bit_depth: int | None = 24, **changes) -> ChainParams:
    c = load_preset(preset).chain
    c = dataclasses.replace(c, dither=dataclasses.replace(c.dither, bit_depth=bit_depth, bypass=bit_depth is None),
                            loudness=dataclasses.replace(c.loudness, target_lufs=target), **changes)
    return c


def _same(alone, together, atol):
    assert len(alone) == len(together)
    for a, b in zip(alone, together):
        assert (a.passes, a.reached, a.reason) == (b.passes, b.reached, b.reason)
        assert a.gain_db == pytest.approx(b.gain_db, abs=1e-4)
        if a.integrated_lufs is None:
            assert b.integrated_lufs is None
        else:
            assert abs(a.integrated_lufs - b.integrated_lufs) < 1e-5
        assert a.max_gain_reduction_db == pytest.approx(b.max_gain_reduction_db, abs=1e-4)
        assert a.ceiling_dbtp_used == b.ceiling_dbtp_used
        assert b.audio.shape == a.audio.shape and b.audio.dtype == np.float32
        np.testing.assert_allclose(b.audio, a.audio, rtol=0, atol=atol)
        if a.true_peak_dbtp is not None:
            assert abs(a.true_peak_dbtp - b.true_peak_dbtp) < 1e-3
        if a.gain_reduction_db is None:
            assert b.gain_reduction_db is None
        else:
            np.testing.assert_allclose(np.asarray(b.gain_reduction_db), np.asarray(a.gain_reduction_db), atol=1e-4)


@pytest.mark.parametrize("preset, target", [("master", -14.0), ("master", -8.0), ("streaming", -8.0),
                                            ("ebu-r128", None)])
def test_batch_equals_each_track_alone(preset, target):
    chain = _chain(preset, target, bit_depth=None)
    xs = _tracks()
    alone = [master(x, RATE, chain) for x in xs]
    together = batch.master_batch(xs, RATE, chain)
    _same(alone, together, atol=5e-6)
    if target == -8.0:
        assert max(a.max_gain_reduction_db for a in alone) > 3.0  # the limiter worked
    for r in together:
        if not chain.limiter.bypass:
            assert loudness.true_peak_dbtp(r.audio, 16) <= chain.limiter.ceiling_dbtp + 1e-6


def test_batch_quantized_masters_are_on_the_grid_and_under_the_ceiling():
    chain = _chain("master", -9.0, bit_depth=16)
    xs = _tracks()
    alone = [master(x, RATE, chain) for x in xs]
    together = batch.master_batch(xs, RATE, chain)
    _same(alone, together, atol=2.0 ** -15)  # one LSB where float32 rounding crosses a step
    for r in together:
        q = r.audio.astype(np.float64) * 2.0 ** 15
        assert np.array_equal(q, np.round(q)) and r.true_peak_dbtp <= chain.limiter.ceiling_dbtp


def test_batch_keeps_each_tracks_own_outcome():
    """A target one track cannot reach without more limiting than allowed fails that
    track's loop alone (its reason), while the others land."""
    chain = _chain("streaming", -11.0, bit_depth=None)  # needs 2.6-4.0 dB of limiting per track
    chain = dataclasses.replace(chain, loudness=dataclasses.replace(chain.loudness, max_gain_reduction_db=3.0))
    xs = _tracks()
    alone = [master(x, RATE, chain) for x in xs]
    assert {a.reached for a in alone} == {True, False}  # the material makes both outcomes
    _same(alone, batch.master_batch(xs, RATE, chain), atol=5e-6)


def test_batch_with_saturation():
    """The soft clipper's oversampled signal is cut at a track's ends: in a batch it runs
    track by track (across a gap its upsampling filter's ringing was clipped and read back
    into each track's first and last ~160 samples, up to 0.01 off)."""
    from kernels.params import SaturationParams

    chain = _chain("streaming", -10.0, bit_depth=None, saturation=SaturationParams(drive_db=6.0, bypass=False))
    xs = _tracks(spec=TRACKS[:3])
    _same([master(x, RATE, chain) for x in xs], batch.master_batch(xs, RATE, chain), atol=5e-6)


@pytest.mark.parametrize("channels", [1, 6])
def test_batch_mono_and_5_1(channels):
    chain = _chain("streaming", -10.0, bit_depth=None, reverb=ReverbParams(ir="plate", wet_db=-20.0))
    xs = _tracks(channels, TRACKS[:3])
    _same([master(x, RATE, chain) for x in xs], batch.master_batch(xs, RATE, chain), atol=5e-6)


def test_batch_of_one_and_a_bypassed_chain():
    xs = _tracks(spec=TRACKS[:1])
    chain = _chain("master", -12.0, bit_depth=None)
    _same([master(xs[0], RATE, chain)], batch.master_batch(xs, RATE, chain), atol=5e-6)
    off = ChainParams.bypassed()
    (r,) = batch.master_batch(xs, RATE, off)
    assert np.array_equal(r.audio, xs[0]) and r.passes == 0


def test_batch_names_a_silent_track_and_refuses_what_it_cannot_batch():
    xs = _tracks(spec=TRACKS[:3])
    xs[1] = np.zeros_like(xs[1])
    with pytest.raises(UnmeasurableError, match="track 1 of the batch"):
        batch.master_batch(xs, RATE, _chain("streaming"))
    keep = _chain("streaming", reverb=ReverbParams(ir="plate", tail="keep"))
    assert "tail=keep" in batch.batchable(keep)
    with pytest.raises(ValueError, match="tail=keep"):
        batch.master_batch(_tracks(spec=TRACKS[:2]), RATE, keep)
    with pytest.raises(ValueError, match="one channel count"):
        batch.master_batch([_tracks(1, TRACKS[:1])[0], _tracks(2, TRACKS[:1])[0]], RATE, _chain("streaming"))
    assert batch.master_batch([], RATE, _chain("streaming")) == []


def test_gap_covers_the_longest_filter_and_the_k_weighting_warm_up():
    chain = _chain("master")
    gap = batch.gap_samples(RATE, chain, 2)
    assert gap >= loudness.K_WEIGHT_WARMUP_S * RATE
    dry = dataclasses.replace(chain, reverb=dataclasses.replace(chain.reverb, bypass=True))
    assert batch.gap_samples(RATE, dry, 2) < gap  # the plate's length counts
    assert gap >= chain.reverb.decay_s * RATE  # (its IR runs about as long as its decay)


@pytest.mark.parametrize("stage", ["multiband", "compressor", "limiter"])
def test_state_resets_at_each_track(stage):
    """With a gap far shorter than the release, what a compressor or the limiter
    carried out of the track before would reach the next; it starts at rest instead.
    A hot track first, a quiet one after: alone, the quiet one needs no reduction at
    its start."""
    off = {k: dataclasses.replace(getattr(_chain("master"), k), bypass=True)
           for k in ("eq", "multiband", "compressor", "reverb", "limiter")}
    chain = _chain("master", -8.0 if stage == "limiter" else None, bit_depth=None, **{k: v for k, v in off.items()
                                                                                       if k != stage})
    if stage == "compressor":
        chain = dataclasses.replace(chain, compressor=dataclasses.replace(
            chain.compressor, bypass=False, threshold_db=-30.0, ratio=4.0, release_ms=2000.0))
    if stage == "limiter":
        chain = dataclasses.replace(chain, limiter=dataclasses.replace(chain.limiter, release_ms=3000.0))
    xs = _tracks(spec=[(3.0, 1.0), (3.0, 0.02), (2.0, 1.0)])
    _same([master(x, RATE, chain) for x in xs], batch.master_batch(xs, RATE, chain), atol=5e-6)
    assert batch.gap_samples(RATE, chain, 2) < 0.5 * RATE  # far under any of those releases


def test_batch_through_the_device_dispatch(request):
    """The batch on the device's code path (RawKernels compiled for the CPU) against
    each track alone on the host path."""
    chain = _chain("master", -8.0, bit_depth=None)
    xs = _tracks()
    alone = [master(x, RATE, chain) for x in xs]
    launched = request.getfixturevalue("cpu_device_dispatch")
    together = batch.master_batch(xs, RATE, chain)
    assert {"farm_curved_pair", "farm_gain_to_db", "farm_k_power"} <= set(launched)
    _same(alone, together, atol=5e-6)


@pytest.mark.gpu
def test_batch_on_the_device_equals_each_track_alone_there(launches):
    """On a GPU: the batch and each track alone, both on CuPy (the RawKernels ran)."""
    import cupy

    chain = _chain("master", -8.0, bit_depth=None)
    xs = [cupy.asarray(x) for x in _tracks()]
    alone = [master(x, RATE, chain) for x in xs]
    together = batch.master_batch(xs, RATE, chain)
    assert {"farm_curved_pair", "farm_gain_to_db", "farm_k_power"} <= set(launches)
    host = [dataclasses.replace(r, audio=cupy.asnumpy(r.audio)) for r in alone]
    _same(host, [dataclasses.replace(r, audio=cupy.asnumpy(r.audio)) for r in together], atol=5e-6)
