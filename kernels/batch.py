"""Several short tracks mastered in one pass over the device (issue 5: short tracks batched).

On a GPU a track's chain costs a part that does not shrink with the track:
every stage is a few dozen array operations and kernels that CuPy dispatches
from Python, and the loudness loop reads the device a few times a pass. For a
10 s sting that part can outweigh the arithmetic. :func:`master_batch` masters
tracks that share a chain, a rate and a channel count together: each is laid
at the start of a row of ``P`` samples (``P`` the longest track plus a gap of
zeros, rounded up to whole seconds) and the rows end to end make one
``(channels, S * P)`` signal, which every stage processes once.

What a track sees is what it sees alone:

* the gaps are zeroed again after every stage, so each stage sees each track
  followed and preceded by silence; the gap (:func:`gap_samples`) is longer
  than any filter a stage applies (EQ, crossover, reverb, the oversampling
  filters) and than the K-weighting's warm-up on a device;
* what carries state resets at each track's start, as at sample 0: the
  compressors' gain computers, the limiter's release and its attack ramp
  (``starts``); the limiter asks no gain in the gaps (``keep``), as nothing
  past a track's ends does alone; the reverb fades its wet path at each
  track's own end; saturation runs track by track (its oversampled signal is
  cut at a track's ends, which a gap of zeros would not do);
* per track stay its gain (the loudness loop, :func:`kernels.chain.loudness_steps`,
  runs one per track in lockstep, and the limiter scales each row by its own
  float32 factor), its 400 ms blocks and gating, its deepest gain reduction (all
  rows read from the device in one transfer per pass), the final
  check-and-correct, its dither, true peak and gain-reduction trace.

What differs from one track alone is rounding: FFT sizes follow the batch's
length. Masters match the tracks mastered one by one to float32 rounding
(``tests/test_batch.py``). On the CPU a batch costs more than it saves (its
gaps are computed too); it is for devices.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import backend, dynamics, eq, limiter, loudness, oversample, reverb
from .chain import (CompressorStage, LoopOutcome, MasterResult, MultibandStage, ReverbStage, SaturationStage,
                    UnmeasurableError, finish_pass, loudness_steps, needs_loop, shared_stages, working_limiter)
from .params import ChainParams


def batchable(params: ChainParams) -> str:
    """Why tracks with ``params`` cannot be mastered in a batch ("" when they can)."""
    if not params.match.bypass:
        return "reference matching designs a filter per track"
    if not params.reverb.bypass and params.reverb.tail == "keep":
        return "the reverb's tail=keep makes each master longer than its track"
    return ""


def gap_samples(sample_rate: int, params: ChainParams, channels: int, ir=None) -> int:
    """Zeros after each track in a batch: more than the longest filter a stage applies
    on either side of a sample, and the K-weighting's warm-up (module docstring)."""
    reach = [int(math.ceil(loudness.K_WEIGHT_WARMUP_S * sample_rate))]
    if not params.eq.bypass and params.eq.bands:
        reach.append(eq.design_eq(params.eq, sample_rate).size)
    if not params.multiband.bypass:
        reach.append(dynamics.crossover_bank(params.multiband.crossovers_hz, float(sample_rate)).shape[-1])
    if not params.saturation.bypass:
        reach.append(2 * dynamics._reach(params.saturation))
    if not params.reverb.bypass:
        reach.append(reverb._reverb_filter(params.reverb, sample_rate, channels, ir).shape[-1])
    if not params.limiter.bypass:
        lookahead = int(round(params.limiter.lookahead_ms * sample_rate / 1000.0))
        reach.append(2 * (lookahead + 2 * oversample.HALF_TAPS))
    return max(reach)


@dataclasses.dataclass
class _Rows:
    """The batch's layout: ``S`` rows of ``P`` samples, track ``s`` at ``[s P, s P + L_s)``."""

    lengths: list[int]
    period: int

    @property
    def spans(self) -> list[tuple[int, int]]:
        return [(s * self.period, s * self.period + n) for s, n in enumerate(self.lengths)]

    @property
    def starts(self) -> list[int]:
        """Where every track but the first begins (the first's is the signal's start)."""
        return [s * self.period for s in range(1, len(self.lengths))]

    def valid(self, xp):
        """(S, P) bools: the samples that belong to a track."""
        n = xp.asarray(np.asarray(self.lengths, dtype=np.int64))
        return xp.arange(self.period, dtype=xp.int64)[None, :] < n[:, None]


def master_batch(tracks, sample_rate: int, params: ChainParams, ir=None) -> list[MasterResult]:
    """Master each of ``tracks`` (a list of (channels, samples) float32 arrays on one
    backend, equal channel counts) with ``params``, in one batch (module docstring).

    Returns a :class:`~kernels.chain.MasterResult` per track, as
    :func:`kernels.chain.master` would (its ``stage_seconds`` are the batch's
    divided by the number of tracks). Raises :class:`UnmeasurableError` naming
    the track (by index) when a loudness target is set and a track has no
    integrated loudness, and ValueError when ``params`` cannot be batched
    (:func:`batchable`) or the tracks do not fit together.
    """
    if not tracks:
        return []
    why = batchable(params)
    if why:
        raise ValueError(f"these tracks cannot be mastered in a batch: {why}")
    xp = backend.array_module(tracks[0])
    channels = tracks[0].shape[0]
    if any(t.ndim != 2 or t.shape[0] != channels or backend.array_module(t) is not xp for t in tracks):
        raise ValueError("a batch takes (channels, samples) arrays with one channel count, on one backend")
    rate = int(sample_rate)
    gap = gap_samples(rate, params, channels, ir)
    rows = _Rows([int(t.shape[-1]) for t in tracks], -(-(max(t.shape[-1] for t in tracks) + gap) // rate) * rate)
    count = len(tracks)
    x = xp.zeros((channels, count * rows.period), dtype=xp.float32)
    for t, (a, b) in zip(tracks, rows.spans):
        x[:, a:b] = t
    mask = rows.valid(xp).reshape(-1).astype(xp.float32)

    clock = backend.StageClock(xp)
    pre = shared_stages(params, ir, None).prepare(rate)
    y = x
    for stage in pre.stages:
        if isinstance(stage, (ReverbStage, SaturationStage)):
            stage.programmes = rows.spans
        if isinstance(stage, (MultibandStage, CompressorStage)):
            stage.starts = rows.starts
        y = clock.time(stage.name, _with_silent_gaps, stage, y, mask)
    if not needs_loop(params):
        seconds = clock.seconds()
        return [MasterResult(xp.ascontiguousarray(y[:, a:b]), 0.0, 0.0, None, None, 0, True,
                             stage_seconds=_share(seconds, count)) for a, b in rows.spans]
    return _target_loop_batch(xp, y, rate, params, rows, mask, clock)


def _with_silent_gaps(stage, y, mask):
    """``stage(y)`` with the batch's gaps zeroed again: each stage sees every track as it is alone."""
    out = stage(y)
    out *= mask
    return out


def _share(seconds: dict, count: int) -> dict:
    return {k: v / count for k, v in seconds.items()}


def _row_levels(xp, audio, rate: int, rows: _Rows):
    """Per track: (sum of its gated block energies, their count), device arrays (S,)
    (BS.1770-4 Annex 1, each track's own blocks: loudness.gated_loudness per row)."""
    p = loudness.weighted_power(audio, rate).reshape(len(rows.lengths), rows.period)
    z = loudness._window_energies(loudness._cumsum0(p), rate, loudness.BLOCK_S, loudness.HOP_S)
    blocks = np.array([loudness.window_bounds(n, rate, loudness.BLOCK_S, loudness.HOP_S)[0].shape[0]
                       for n in rows.lengths], dtype=np.int64)
    own = xp.arange(z.shape[1], dtype=xp.int64)[None, :] < xp.asarray(blocks)[:, None]
    return loudness._gated_sums(xp.where(own, z, 0.0), loudness.ABSOLUTE_GATE_LUFS, loudness.RELATIVE_GATE_LU)


def _row_min_gain(xp, gain, valid):
    """Per track: the smallest limiter gain over its own samples, device array (S,)."""
    g = gain.reshape(valid.shape)
    return xp.where(valid, g, xp.asarray(1.0, dtype=g.dtype)).min(axis=1)


def _levels_to_host(total, count, min_gain) -> tuple[list, list]:
    """One transfer: per-track loudness (LUFS or None) and deepest gain reduction (dB)."""
    xp = backend.array_module(total)
    t, n, g = backend.to_host(xp.stack([total, count.astype(xp.float64), min_gain.astype(xp.float64)]))
    levels = [loudness._lufs_from_sums(float(a), float(b)) for a, b in zip(t, n)]
    reductions = [max(0.0, -20.0 * math.log10(v)) if v > 0 else math.inf for v in g]
    return levels, reductions


def _target_loop_batch(xp, y, rate: int, params: ChainParams, rows: _Rows, mask, clock) -> list[MasterResult]:
    """:func:`kernels.chain._target_loop` for every track of the batch at once."""
    lim = params.limiter
    count = len(rows.lengths)
    valid = rows.valid(xp)
    period = rows.period
    timed = clock.time

    measuring = not params.loudness.bypass and params.loudness.target_lufs is not None
    if measuring:
        total, n = timed("loudness", _row_levels, xp, y, rate, rows)
        start, _ = _levels_to_host(total, n, xp.ones(count, dtype=xp.float64))
        silent = [i for i, v in enumerate(start) if v is None]
        if silent:
            raise UnmeasurableError(f"track {silent[0]} of the batch has no valid integrated loudness: it is silent "
                                    "or entirely below the -70 LUFS absolute gate (BS.1770-4)")
    else:
        start = [None] * count
    work = working_limiter(params)
    detection = limiter.Detection(y, work.oversample)
    loops = [loudness_steps(s, params) for s in start]
    gains = [next(steps) for steps in loops]
    outcomes: list[LoopOutcome | None] = [None] * count

    def scales(gains_db):
        factors = xp.asarray(np.array([limiter.gain_scale(g) for g in gains_db], dtype=np.float32))
        return xp.repeat(factors, period)

    while True:
        scale = scales(gains)
        gained = y * scale
        if lim.bypass:
            gain_x = xp.ones(y.shape[-1], dtype=y.dtype)
        else:
            gain_x = timed("limiter", limiter.unchecked_gain, detection, scale, rate, work, mask,
                           rows.starts).astype(y.dtype)
        out = gained * gain_x
        if measuring:
            total, n = timed("loudness", _row_levels, xp, out, rate, rows)
        else:
            total = n = xp.zeros(count, dtype=xp.float64)
        levels, reductions = _levels_to_host(total, n, _row_min_gain(xp, gain_x, valid))
        for i, steps in enumerate(loops):
            if outcomes[i] is not None:
                continue  # done: its gain stays, and so does its part of the signal
            try:
                gains[i] = steps.send((levels[i] if measuring else None, reductions[i]))
            except StopIteration as done:
                outcomes[i] = done.value
        if all(o is not None for o in outcomes):
            break
    results = []
    for i, (a, b) in enumerate(rows.spans):
        # the final check-and-correct track by track: what it measures and corrects is the track's
        # own true peak, between its own samples, as alone (its 16x pass is the chain's largest)
        kept = limiter.LimiterResult(audio=xp.ascontiguousarray(out[:, a:b]), gain=gain_x[a:b],
                                     max_gain_reduction_db=reductions[i])
        results.append(finish_pass(xp.ascontiguousarray(gained[:, a:b]), kept, outcomes[i], rate, params, work,
                                   clock))
    seconds = _share(clock.seconds(), count)
    return [dataclasses.replace(r, stage_seconds=seconds) for r in results]


__all__ = ["batchable", "gap_samples", "master_batch"]
