"""The mastering chain: stages from plain parameters, and the loudness-target loop.

    EQ -> reference match -> multiband compressor -> compressor -> saturation -> reverb
       -> static gain -> true-peak limiter -> dither/quantize

(the match and the dynamics are bypassed unless the parameters turn them on)

A :class:`Stage` has ``prepare(sample_rate)``, ``__call__(x)`` and
``latency_samples`` (every stage here compensates its own latency, so it is
0: outputs are time-aligned with inputs). :class:`Chain` is itself a Stage.

:func:`master` runs the shared stages once, then the loudness-target loop:
gain -> limit -> measure, correcting the gain by the secant method until the
integrated loudness (BS.1770-4) is within the tolerance of the target, or
reporting that the target cannot be reached without more limiting than
``max_gain_reduction_db`` allows; then dither/quantize once. The limiter's
working ceiling is lowered by the quantizer's worst-case error times the
interpolator's peak gain (:func:`kernels.oversample.peak_gain`), so the
quantized samples meet the ceiling at any oversampling, not only the floats;
the output's 4x true peak is measured and checked.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from . import backend, dither, dynamics, eq, limiter, loudness, oversample, reverb
from .limiter import apply_gain  # the loop's static gain (also the streamed render's)
from .params import (ChainParams, CompressorParams, DitherParams, EQParams, LimiterParams, MultibandParams,
                     ReverbParams, SaturationParams)


class UnmeasurableError(ValueError):
    """The programme has no valid integrated loudness (silence, or everything
    below the -70 LUFS absolute gate, or shorter than one 400 ms block)."""


class Stage:
    """One processing step: ``prepare`` caches designs, ``__call__`` processes."""

    name = "stage"
    latency_samples = 0
    bypass = False

    def prepare(self, sample_rate: int) -> "Stage":
        self.sample_rate = sample_rate
        return self

    def __call__(self, x):  # pragma: no cover - abstract
        raise NotImplementedError


class Chain(Stage):
    """Stages in order; a Chain is a Stage, so chains nest. Latencies add."""

    name = "chain"

    def __init__(self, stages):
        self.stages = [s for s in stages if not s.bypass]
        self.latency_samples = sum(s.latency_samples for s in self.stages)
        self.clock: backend.StageClock | None = None  # set by the caller to share one, else made on first call

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per stage over every call (on a GPU reading them waits for the device)."""
        return self.clock.seconds() if self.clock is not None else {}

    def prepare(self, sample_rate: int) -> "Chain":
        super().prepare(sample_rate)
        for s in self.stages:
            s.prepare(sample_rate)
        return self

    def __call__(self, x):
        if self.clock is None:
            self.clock = backend.StageClock(backend.array_module(x))
        for s in self.stages:
            x = self.clock.time(s.name, s, x)
        return x


class EQStage(Stage):
    name = "eq"

    def __init__(self, params: EQParams):
        self.params = params
        self.bypass = params.bypass or not params.bands

    def __call__(self, x):
        return eq.apply_eq(x, self.sample_rate, self.params)


class MatchStage(Stage):
    """Reference matching's linear-phase FIR (:mod:`kernels.match`), designed
    from the track's own spectrum before the stage runs (``taps`` None: bypassed)."""

    name = "match"

    def __init__(self, taps=None):
        self.taps = taps
        self.bypass = taps is None

    def __call__(self, x):
        from . import match

        return match.apply_match(x, self.taps)


class MultibandStage(Stage):
    name = "multiband"

    def __init__(self, params: MultibandParams):
        self.params = params
        self.bypass = params.bypass
        self.starts = ()  # where each track begins when several lie end to end (kernels.batch)

    def __call__(self, x):
        return dynamics.compress_multiband(x, self.sample_rate, self.params, starts=self.starts).audio


class CompressorStage(Stage):
    name = "compressor"

    def __init__(self, params: CompressorParams):
        self.params = params
        self.bypass = params.bypass
        self.starts = ()  # where each track begins when several lie end to end (kernels.batch)

    def __call__(self, x):
        return dynamics.compress(x, self.sample_rate, self.params, starts=self.starts).audio


class SaturationStage(Stage):
    name = "saturation"

    def __init__(self, params: SaturationParams):
        self.params = params
        self.bypass = params.bypass
        self.programmes = None  # (start, stop) of each track when several lie end to end (kernels.batch)

    def __call__(self, x):
        if self.programmes is None:
            return dynamics.saturate(x, self.sample_rate, self.params)
        # track by track: the oversampled signal is cut at a track's ends (nothing of the
        # upsampling filter's ringing past them is clipped and read back), as when it is alone
        out = x.copy()
        for a, b in self.programmes:
            out[:, a:b] = dynamics.saturate(x[:, a:b], self.sample_rate, self.params)
        return out


class ReverbStage(Stage):
    name = "reverb"

    def __init__(self, params: ReverbParams, ir=None):
        self.params = params
        self.ir = ir  # user IR already at the track's rate, or None for the built-in space
        self.bypass = params.bypass
        self.programmes = None  # (start, stop) of each track when several lie end to end (kernels.batch)

    def __call__(self, x):
        return reverb.apply_reverb(x, self.sample_rate, self.params, ir=self.ir, programmes=self.programmes)


@dataclass(frozen=True)
class MasterResult:
    """The mastered audio and what the chain did to it."""

    audio: object  # array on the input's backend, (channels, samples)
    gain_db: float  # static gain before the limiter
    max_gain_reduction_db: float  # deepest limiter gain reduction
    integrated_lufs: float | None  # of the limited output before dither (BS.1770-4; dither moves it < 0.001 LU)
    true_peak_dbtp: float | None  # of the output, 4x oversampled
    passes: int  # loudness-loop passes
    reached: bool  # loudness within tolerance (True when no target is set)
    reason: str = ""  # why not reached
    ceiling_dbtp_used: float | None = None  # limiter working ceiling (under the ceiling by the quantizer's bound)
    stage_seconds: dict = field(default_factory=dict)
    # the limiter's deepest gain reduction (dB, >= 0) in every TRACE_HOP_S of the output
    # (host float32; empty with the limiter bypassed, None when no loudness/limiter pass
    # ran at all): what the report plots over time
    gain_reduction_db: object = None


TRACE_HOP_S = 0.1  # seconds per value of MasterResult.gain_reduction_db (the loudness meters' 10 Hz)


class ReductionTrace:
    """The deepest gain reduction (dB) per :data:`TRACE_HOP_S` of a gain curve
    fed in consecutive pieces (the whole curve at once, or a stream's blocks)."""

    def __init__(self, sample_rate: float):
        self.hop = max(1, int(round(TRACE_HOP_S * sample_rate)))
        self._mins: list = []
        self._part = None  # host float64: min gain of the unfinished hop, and its length
        self._fill = 0

    def push(self, gain) -> None:
        g = np.asarray(backend.to_host(gain), dtype=np.float64).reshape(-1)
        if self._fill:
            k = min(self.hop - self._fill, g.size)
            self._part = min(self._part, float(g[:k].min())) if k else self._part
            self._fill += k
            g = g[k:]
            if self._fill == self.hop:
                self._mins.append(np.array([self._part]))
                self._fill = 0
        whole = g.size // self.hop * self.hop
        if whole:
            self._mins.append(g[:whole].reshape(-1, self.hop).min(axis=1))
        if g.size > whole:
            self._part, self._fill = float(g[whole:].min()), g.size - whole

    def result(self):
        mins = self._mins + ([np.array([self._part])] if self._fill else [])
        g = np.concatenate(mins) if mins else np.zeros(0)
        with np.errstate(divide="ignore"):
            return np.maximum(0.0, -20.0 * np.log10(g)).astype(np.float32)


def _db(v: float) -> float:
    return 20.0 * math.log10(v) if v > 0 else -math.inf


def shared_stages(params: ChainParams, ir=None, match_taps=None) -> Chain:
    """The stages that do not depend on the delivery target:
    EQ -> match -> multiband -> compressor -> saturation -> reverb.
    ``match_taps``: the reference match's FIR for this track (:func:`match_fir`)."""
    if not params.match.bypass and match_taps is None:
        raise ValueError("reference matching is on but no match filter was designed: pass the reference "
                         "(master(..., reference=...)) or match_taps")
    return Chain([EQStage(params.eq), MatchStage(None if params.match.bypass else match_taps),
                  MultibandStage(params.multiband), CompressorStage(params.compressor),
                  SaturationStage(params.saturation), ReverbStage(params.reverb, ir)])


def match_fir(x, sample_rate: int, params: ChainParams, reference):
    """The reference match's FIR for the chain input ``x`` (None when matching
    is bypassed); ``reference`` a :class:`kernels.match.ReferenceProfile`."""
    if params.match.bypass:
        return None
    from . import match

    if reference is None:
        raise ValueError("reference matching is on but no reference was given")
    return match.design_match(reference, match.long_term_spectrum(x, sample_rate), params.match, sample_rate)


def shared_key(sample_rate: int, params: ChainParams) -> tuple:
    """What the shared stages' output depends on besides the input: two deliverables
    of one input with equal keys share it (the IR and the reference are named by
    path in the params)."""
    return (int(sample_rate), params.eq, params.match, params.multiband, params.compressor, params.saturation,
            params.reverb)


def master(x, sample_rate: int, params: ChainParams, ir=None, reference=None,
           shared: dict | None = None) -> MasterResult:
    """Master ``x`` (channels, samples; float32, NumPy or CuPy) with ``params``.

    ``reference``: the :class:`kernels.match.ReferenceProfile` when
    ``params.match`` is on (its loudness rule is applied by the caller,
    :func:`kernels.match.matched_chain`). ``shared``: a dict the caller keeps
    across several masters of the same ``x`` (one input, several
    deliverables): the shared stages' output is kept there under
    :func:`shared_key` and reused, so they run once per distinct setting.
    Raises :class:`UnmeasurableError` when a loudness target is set but the
    programme has no integrated loudness (silence, fully gated out).
    Everything bypassed returns ``x`` itself, bit for bit.
    """
    xp = backend.array_module(x)
    key = shared_key(sample_rate, params)
    clock = backend.StageClock(xp)  # stage times without a device synchronisation per stage
    reused = shared is not None and key in shared
    if reused:
        y = shared[key][0]
    else:
        t0 = clock.mark()
        taps = match_fir(x, sample_rate, params, reference)
        pre = shared_stages(params, ir, taps).prepare(sample_rate)
        if taps is not None:
            clock.add("match_analysis", t0)  # the reference match's analysis and the stages' designs
        pre.clock = clock
        y = pre(x)
        if shared is not None:
            shared[key] = (y,)
    result = _target_loop(xp, y, sample_rate, params, clock)
    seconds = {"shared_stages_reused": 0.0} if reused else {}
    seconds.update(clock.seconds())
    return dataclasses.replace(result, stage_seconds=seconds)


def working_limiter(params: ChainParams) -> LimiterParams:
    """The limiter's parameters with its working ceiling (dBTP).

    Quantization moves each sample by at most ``err``, so every interpolated
    value (the true peak at any oversampling) by at most ``err * peak_gain``:
    the limiter works under the ceiling by that much and the PCM meets the
    ceiling by construction.
    """
    lim, dp = params.limiter, params.dither
    quantizing = not dp.bypass and dp.bit_depth is not None
    ceiling_lin = 10.0 ** (lim.ceiling_dbtp / 20.0)
    err = dither.max_error_lsb(dp) * dither.lsb(dp.bit_depth) if quantizing else 0.0
    bound = err * max(oversample.peak_gain(f) for f in (lim.oversample, limiter.CHECK_FACTOR))
    return dataclasses.replace(lim, ceiling_dbtp=min(_db(ceiling_lin - bound), 0.0))


@dataclass(frozen=True)
class LoopOutcome:
    """Where the loudness-target loop stopped: the gain (dB) of the pass kept."""

    gain_db: float
    level_lufs: float | None  # of that pass's limited output (None without a target)
    passes: int
    reached: bool
    reason: str = ""


def loudness_loop(start_lufs: float | None, params: ChainParams, trial) -> LoopOutcome:
    """The loudness-target loop, independent of how a pass is run.

    ``start_lufs``: integrated loudness of the shared stages' output (None
    when no target is set). ``trial(gain_db) -> (level_lufs, max_gain_reduction_db)``
    runs one unchecked limiter pass at that static gain and measures it (the
    whole-signal chain on arrays, the streamed render over files). Secant
    steps on the gain until the level is within the tolerance, the limiter
    would need more than ``max_gain_reduction_db``, or the passes run out.
    The last pass run is the one kept. (:func:`loudness_steps` is the loop
    itself, for a caller that runs the passes of several tracks together.)
    """
    steps = loudness_steps(start_lufs, params)
    try:
        gain_db = next(steps)
        while True:
            gain_db = steps.send(trial(gain_db))
    except StopIteration as done:
        return done.value


def loudness_steps(start_lufs: float | None, params: ChainParams):
    """:func:`loudness_loop` as a generator: it yields the gain (dB) of each pass,
    is sent that pass's ``(level_lufs, max_gain_reduction_db)``, and returns the
    :class:`LoopOutcome` (``StopIteration.value``). A batch of tracks
    (:mod:`kernels.batch`) runs one per track, in lockstep."""
    lp = params.loudness
    target = None if lp.bypass else lp.target_lufs
    if target is None:
        yield 0.0
        return LoopOutcome(0.0, None, 1, True)
    if start_lufs is None:
        raise UnmeasurableError(
            "no valid integrated loudness: the programme is silent or entirely below the "
            "-70 LUFS absolute gate (BS.1770-4), so no gain can reach the target")
    gain_db = target - start_lufs
    history: list[tuple[float, float]] = []
    for npass in range(1, lp.max_passes + 1):
        level, gr_db = yield gain_db
        if level is None:  # cannot happen for a measurable input and finite gain; be explicit anyway
            raise UnmeasurableError("the limited output has no valid integrated loudness")
        miss = target - level
        history.append((gain_db, level))
        if abs(miss) <= lp.tolerance_lu:
            return LoopOutcome(gain_db, level, npass, True)
        if miss > 0 and gr_db > lp.max_gain_reduction_db:
            return LoopOutcome(gain_db, level, npass, False,
                               f"target {target:.1f} LUFS needs more than {lp.max_gain_reduction_db:.1f} dB of "
                               f"limiting: reached {level:.2f} LUFS with {gr_db:.1f} dB of gain reduction")
        if npass == lp.max_passes:
            return LoopOutcome(gain_db, level, npass, False,
                               f"loudness loop did not converge in {lp.max_passes} passes: "
                               f"{level:.2f} LUFS for a target of {target:.1f} LUFS")
        gain_db += miss / _slope(history)
    raise AssertionError("unreachable: max_passes >= 1")


def needs_loop(params: ChainParams) -> bool:
    """False when nothing after the shared stages runs (no target, no limiter, no quantizer)."""
    dp = params.dither
    quantizing = not dp.bypass and dp.bit_depth is not None
    target = None if params.loudness.bypass else params.loudness.target_lufs
    return not (target is None and params.limiter.bypass and not quantizing)


def _target_loop(xp, y, rate: int, params: ChainParams, clock: backend.StageClock) -> MasterResult:
    if not needs_loop(params):
        return MasterResult(y, 0.0, 0.0, None, None, 0, True)

    timed = clock.time

    measuring = not params.loudness.bypass and params.loudness.target_lufs is not None
    start = timed("loudness", loudness.integrated_loudness, y, rate) if measuring else None
    work = working_limiter(params)
    detection = limiter.Detection(y, work.oversample)  # interpolated once, for every trial's gain
    kept = {}

    def trial(gain_db: float):
        """One unchecked limiter pass at ``gain_db``, measured; the 16x check runs once, on the pass kept.
        The loop runs on the float signal: dither adds noise ~90 dB below the
        programme, which moves integrated loudness by far less than 0.001 LU."""
        res = timed("limiter", limiter.limit, y, rate, work, False, gain_db, detection)
        kept.update(gain_db=gain_db, res=res)
        level = timed("loudness", loudness.integrated_loudness, res.audio, rate) if measuring else None
        return level, res.max_gain_reduction_db

    loop = loudness_loop(start, params, trial)
    return finish_pass(apply_gain(y, kept["gain_db"]), kept["res"], loop, rate, params, work, clock)


def finish_pass(gained, kept: "limiter.LimiterResult", loop: LoopOutcome, rate: int, params: ChainParams,
                work: LimiterParams, clock: backend.StageClock) -> MasterResult:
    """The loop's kept pass (``kept``, the unchecked limiter's result for ``gained``, the
    input at the kept gain) checked and corrected to the ceiling, quantized and measured:
    the master (also each track's of a batch, :mod:`kernels.batch`)."""
    lim = params.limiter
    res = clock.time("limiter", limiter.check, gained, kept, rate, work)
    trace = ReductionTrace(rate)
    if not lim.bypass:
        trace.push(res.gain)
    out = clock.time("dither", dither.quantize, res.audio, params.dither)
    tp = clock.time("true_peak", loudness.true_peak_dbtp, out, 4)
    check_ceiling(tp, lim, work)
    return MasterResult(out, loop.gain_db, res.max_gain_reduction_db, loop.level_lufs, tp, loop.passes,
                        loop.reached, loop.reason, ceiling_dbtp_used=None if lim.bypass else work.ceiling_dbtp,
                        gain_reduction_db=trace.result())


def check_ceiling(tp: float | None, lim: LimiterParams, work: LimiterParams) -> None:
    """The quantized output's 4x true peak must be under the ceiling (the working ceiling makes it so)."""
    if not lim.bypass and tp is not None and tp > lim.ceiling_dbtp:
        raise RuntimeError(f"quantized output reads {tp:.4f} dBTP, over the {lim.ceiling_dbtp} dBTP ceiling "
                           f"(working ceiling {work.ceiling_dbtp:.4f} dBTP): a bug in the limiter or quantizer")


def _slope(history) -> float:
    """dLoudness/dGain from the last two passes (secant), clamped to [0.05, 1]:
    a limiter never makes loudness grow faster than the gain."""
    if len(history) < 2:
        return 1.0
    (g0, l0), (g1, l1) = history[-2], history[-1]
    if g1 == g0:
        return 1.0
    return min(1.0, max(0.05, (l1 - l0) / (g1 - g0)))


__all__ = ["Chain", "Stage", "EQStage", "MatchStage", "MultibandStage", "CompressorStage", "SaturationStage",
           "ReverbStage", "match_fir", "MasterResult", "LoopOutcome", "UnmeasurableError",
           "ReductionTrace", "TRACE_HOP_S", "apply_gain", "check_ceiling", "finish_pass", "loudness_loop", "loudness_steps", "master", "needs_loop", "shared_key", "shared_stages", "working_limiter", "ChainParams", "DitherParams", "LimiterParams"]
