"""The streamed master: a long programme mastered in passes over files, in bounded memory.

A two-hour concert at 96 kHz is 5.5 GB as float32: more than a worker may
hold, and more than it needs to. The same chain as :func:`kernels.chain.master`
runs block by block (every stage a :class:`kernels.stream.Streamer` that
equals its whole-signal function), in passes:

0. **analysis pass** (only with reference matching on): the input is read,
   resampled and its long-term spectrum measured
   (:class:`kernels.match.SpectrumMeter`), from which the match filter is
   designed before any sample can go through it;
1. **decode pass**: the input is read in blocks, measured (the report's
   "before" figures), resampled and run through the shared stages (EQ,
   match, multiband, compressor, saturation, reverb); the result (the
   shared stages' output) is spilled to a raw float32 file beside the master
   and its integrated loudness measured (BS.1770-4 needs the whole programme
   before any gain can be chosen: this is the first of the two passes);
2. **loudness passes**: :func:`kernels.chain.loudness_loop` runs unchanged;
   each of its trials reads the spill, applies the gain, runs the unchecked
   limiter and measures the result, and spills the limiter's gain;
3. **final pass**: the spill and the kept trial's gain go through the
   limiter's final check, the quantizer and the encoder. In the rare case
   the check needs its last-resort global trim (it needs the peak of the
   whole output), the pass runs again with it.

Every stage works on the same chunk grid as its whole-signal function, so
the master is the one :func:`kernels.chain.master` would make of the whole
file, sample for sample. The spills (the shared stages' output, channels x 4
bytes per sample, and one gain per sample) are temporary files named like
the master's own partial file, removed when the render ends, and swept by
the pipeline if a worker dies.
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np

from kernels import backend
from kernels.chain import (MasterResult, ReductionTrace, UnmeasurableError, apply_gain, check_ceiling, loudness_loop,
                           needs_loop, working_limiter)
from kernels.dither import QuantizeStream
from kernels.dynamics import CompressorStream, MultibandStream, SaturationStream
from kernels.eq import EQStream
from kernels.limiter_stream import CheckStream, LimiterStream
from kernels.loudness import LoudnessMeter
from kernels.match import MatchStream, SpectrumMeter, design_match
from kernels.params import ChainParams
from kernels.resample import ResampleStream
from kernels.reverb import ReverbStream
from kernels.stream import Pipeline

from . import audio


class Spill:
    """A float32 ``(channels, n)`` signal written block by block to a raw
    file (interleaved frames) and read back block by block, any number of times."""

    def __init__(self, path: str, channels: int):
        self.path, self.channels, self.frames = path, int(channels), 0
        self._f = open(path, "wb")

    def write(self, block) -> None:
        block = np.asarray(backend.to_host(block), dtype=np.float32).reshape(self.channels, -1)
        np.ascontiguousarray(block.T).tofile(self._f)
        self.frames += block.shape[-1]

    def close(self) -> None:
        self._f.close()

    def blocks(self, size: int):
        """One pass: float32 ``(channels, k)`` blocks of ``size`` frames."""
        self._f.flush()
        with open(self.path, "rb") as f:
            while True:
                a = np.fromfile(f, dtype=np.float32, count=size * self.channels)
                if a.size == 0:
                    return
                yield np.ascontiguousarray(a.reshape(-1, self.channels).T)


@contextlib.contextmanager
def spill(beside: str, channels: int):
    """A :class:`Spill` under a temporary name of the master's (``audio.atomic_output``:
    the pipeline sweeps it after a crash), removed on exit."""
    with audio.atomic_output(beside) as path:
        s = Spill(path, channels)
        try:
            yield s
        finally:
            s.close()


class _Progress:
    """Passes so far over the passes expected, never going back."""

    def __init__(self, report, frames: int):
        self.report, self.frames = report or (lambda f: None), max(1, frames)
        self.done, self.expected, self.shown = 0.0, 5.0, 0.0  # decode, ~2 loudness, final, validation

    def at(self, frames: int, weight: float = 1.0) -> None:
        f = min(1.0, (self.done + weight * frames / self.frames) / self.expected)
        if f > self.shown:
            self.shown = f
            self.report(f)

    def passed(self, weight: float = 1.0) -> None:
        self.done += weight
        self.expected = max(self.expected, self.done + 1.5)


def _analysis_pass(reader, rate: int, channels: int, n_in: int, prog) -> tuple:
    """0. The input's long-term spectrum at ``rate`` (for the reference match):
    the same resampled samples the decode pass will see."""
    resample = ResampleStream(reader.sample_rate, rate, channels, n_in) if reader.sample_rate != rate else None
    meter = SpectrumMeter(rate, channels)
    read = 0
    for b in reader.blocks():
        meter.push(resample.push(b) if resample else b)
        read += b.shape[-1]
        prog.at(read)
    if resample:
        meter.push(resample.finish())
    prog.passed()
    return meter.result()


def shared_streams(chain: ChainParams, rate: int, channels: int, n: int, ir, match_taps=None) -> Pipeline:
    """The shared stages as one :class:`kernels.stream.Pipeline`, in
    :func:`kernels.chain.shared_stages`' order."""
    stages = [EQStream(chain.eq, rate, channels, n)]
    if not chain.match.bypass:
        if match_taps is None:
            raise ValueError("reference matching is on but no match filter was designed")
        stages.append(MatchStream(match_taps, channels, n))
    stages += [MultibandStream(chain.multiband, rate, channels, n), CompressorStream(chain.compressor, rate, channels, n),
               SaturationStream(chain.saturation, rate, channels, n), ReverbStream(chain.reverb, rate, channels, n, ir)]
    return Pipeline(stages)


def master_streamed(reader, rate: int, chain: ChainParams, ir, sink, *, block: int, spill_beside: str,
                    backend_name: str = "cpu", progress=None, timings: dict | None = None, reference=None,
                    plot_input=None):
    """Master ``reader`` (an :class:`farm.audio.BlockReader`) at ``rate`` Hz into ``sink``.

    ``sink()`` opens the output and returns a context manager with
    ``write(block)`` (a :class:`farm.audio.BlockWriter`); it may be opened
    twice (the final pass's trim rerun), each time from the start. Returns
    ``(MasterResult with audio=None, the input's LoudnessStats, frames written)``.
    Raises :class:`kernels.chain.UnmeasurableError` as :func:`~kernels.chain.master` does.
    ``reference``: the :class:`kernels.match.ReferenceProfile` when ``chain.match`` is on.
    ``plot_input``: a :class:`farm.plots.SideStream` that sees the input's blocks in the
    decode pass and takes its short-term loudness series from the input meter (the report's plots).
    """
    timings = {} if timings is None else timings
    channels, n_in = reader.channels, reader.frames
    dev = (lambda b: b) if backend_name == "cpu" else (lambda b: backend.to_device(b, backend_name))
    prog = _Progress(progress, n_in)
    seconds: dict[str, float] = {}
    lp = chain.loudness
    measuring = not lp.bypass and lp.target_lufs is not None

    resample = ResampleStream(reader.sample_rate, rate, channels, n_in) if reader.sample_rate != rate else None
    n = -(-n_in * rate // reader.sample_rate) if resample else n_in  # ceil, as resample_poly
    taps = None
    if not chain.match.bypass:
        if reference is None:
            raise ValueError("reference matching is on but no reference was given")
        t = time.perf_counter()
        prog.expected += 1.0
        taps = design_match(reference, _analysis_pass(reader, rate, channels, n_in, prog), chain.match, rate)
        seconds["analysis_pass"] = time.perf_counter() - t
    with spill(spill_beside, channels) as pre_spill:
        # 1. decode pass: measure the input, run the shared stages, spill them, measure them
        t = time.perf_counter()
        meter_in = LoudnessMeter(reader.sample_rate, channels)
        pre = shared_streams(chain, rate, channels, n, ir, taps)
        meter_pre = LoudnessMeter(rate, channels, what="integrated") if measuring else None
        read = 0

        def shared(x):
            y = pre.push(x) if x is not None else pre.finish()
            if y.shape[-1]:
                pre_spill.write(y)
                if meter_pre is not None:
                    meter_pre.push(y)

        for b in reader.blocks():
            meter_in.push(b)
            if plot_input is not None:
                plot_input.push(b)
            read += b.shape[-1]
            shared(dev(resample.push(b) if resample else b))
            prog.at(read)
        if resample:
            shared(dev(resample.finish()))
        shared(None)
        before = meter_in.result()
        if plot_input is not None:
            plot_input.short_term_from = meter_in
        if before.integrated_lufs is None:
            raise UnmeasurableError("silent (nothing above the -70 LUFS absolute gate): nothing to master")
        ny = pre_spill.frames
        start = meter_pre.integrated() if meter_pre is not None else None
        seconds["decode_pass"] = time.perf_counter() - t
        prog.passed()

        if not needs_loop(chain):
            t = time.perf_counter()
            with sink() as w:
                for y in pre_spill.blocks(block):
                    w.write(y)
            seconds["final_pass"] = time.perf_counter() - t
            timings.update({f"chain_{k}": round(v, 4) for k, v in seconds.items()})
            return MasterResult(None, 0.0, 0.0, None, None, 0, True, stage_seconds=seconds), before, ny

        work = working_limiter(chain)
        kept: dict = {}
        gain_spills = contextlib.ExitStack()

        def trial(gain_db: float):
            """2. one loudness pass: gain, unchecked limiter, measure; spill the gain."""
            t0 = time.perf_counter()
            gs = gain_spills.enter_context(spill(spill_beside, 1))
            ls = LimiterStream(work, rate, channels, ny, gain_sink=gs.write, gain_db=gain_db)
            meter = LoudnessMeter(rate, channels, what="integrated") if measuring else None
            done = 0
            for y in pre_spill.blocks(block):
                y = dev(y)
                out = ls.push(y)  # the stream applies the static gain (and detects on y, as limit() does)
                if meter is not None:
                    meter.push(out)
                done += y.shape[-1]
                prog.at(done * n_in // max(1, ny))
            out = ls.finish()
            if meter is not None:
                meter.push(out)
            if "gain" in kept:  # the earlier trial's gain spill is no longer needed
                with contextlib.suppress(OSError):
                    os.unlink(kept["gain"].path)
            kept.update(gain=gs, gain_db=gain_db)
            seconds["loudness_passes"] = seconds.get("loudness_passes", 0.0) + time.perf_counter() - t0
            prog.passed()
            return (meter.integrated() if meter is not None else None), ls.max_gain_reduction_db

        with gain_spills:
            loop = loudness_loop(start, chain, trial)
            # 3. final pass: check, quantize, encode (again with the trim if the check needs it)
            t = time.perf_counter()
            trim = 1.0
            for _ in range(2):
                cs, tp_meter, trace = _final_pass(pre_spill, kept, sink, block, chain, work, rate, channels, ny,
                                                  trim, dev, prog)
                if cs.trim is None:
                    break
                trim = cs.trim
            seconds["final_pass"] = time.perf_counter() - t
            prog.passed(1.0)
    tp = tp_meter.true_peak_dbtp()
    check_ceiling(tp, chain.limiter, work)
    timings.update({f"chain_{k}": round(v, 4) for k, v in seconds.items()})
    res = MasterResult(None, loop.gain_db, cs.max_gain_reduction_db, loop.level_lufs, tp, loop.passes,
                       loop.reached, loop.reason,
                       ceiling_dbtp_used=None if chain.limiter.bypass else work.ceiling_dbtp,
                       stage_seconds=seconds, gain_reduction_db=trace.result())
    return res, before, ny


def _final_pass(pre_spill, kept, sink, block, chain, work, rate, channels, ny, trim, dev, prog):
    trace = ReductionTrace(rate)
    cs = CheckStream(work, rate, channels, ny, trim=trim, gain_sink=None if work.bypass else trace.push)
    q = QuantizeStream(chain.dither, channels)
    tp_meter = LoudnessMeter(rate, channels, what="true_peak")
    done = 0
    with sink() as w:
        def out(a):
            if a.shape[-1]:
                a = backend.to_host(a)
                w.write(a)
                tp_meter.push(a)

        for y, gain in zip(pre_spill.blocks(block), kept["gain"].blocks(block)):
            y = dev(y)
            out(q.push(cs.push(apply_gain(y, kept["gain_db"]), dev(gain[0]))))
            done += y.shape[-1]
            prog.at(done * prog.frames // max(1, ny), 1.5)
        tail = cs.finish()
        if cs.trim is None:
            out(q.push(tail))
            out(q.finish())
    return cs, tp_meter, trace


__all__ = ["Spill", "master_streamed", "shared_streams", "spill"]
