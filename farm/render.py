"""One track: decode -> chain -> quantize -> encode -> tag -> re-decode and validate.

:func:`render_track` is what a Dask task runs. It never raises for a bad
track: every problem (missing or corrupt file, silence, too short, a target
that cannot be reached, a write that fails, a result out of spec) becomes a
:class:`~farm.records.TrackResult` with a reason that names the file, and the
run goes on. The input is only ever opened for reading; the output is
written under a temporary name and renamed to its final name only once it
has been tagged, re-decoded and validated, so a final name never holds a
partial or out-of-spec file.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import logging
import math
import os
import socket
import time

import numpy as np

from kernels import backend, stream
from kernels import loudness as meter
from kernels.chain import UnmeasurableError, master
from kernels.params import REVERB_TYPES

from . import audio, budget, delivery, plots, tags
from .journal import file_hash
from .progress import track_progress
from .records import STATUS_FAILED, STATUS_OK, RenderBatch, RenderGroup, RenderTask, TrackResult

# Validation tolerances on the re-decoded output.
TRUE_PEAK_SLACK_DB = 0.0  # the ceiling is a hard limit
PYLOUDNORM_AGREEMENT_LU = 0.2  # our meter vs pyloudnorm on the delivered file


def _round(v, nd=2):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), nd)


def _stats(x, rate) -> tuple[dict, np.ndarray]:
    """Every R128 measurement of ``x`` (LoudnessStats' fields), rounded to 0.01 for the
    report, and its short-term loudness series for the report's plots (same pass)."""
    stats, short_term = meter.measure_with_short_term(x, rate)
    return _rounded(stats), short_term


def _rounded(stats) -> dict:
    """A LoudnessStats as the report holds it: every field rounded to 0.01."""
    return {k: _round(v) for k, v in stats.to_dict().items()}


def _check_length(src: str, seconds: float) -> None:
    if seconds < audio.MIN_SECONDS:
        raise audio.AudioError(f"{src}: {seconds * 1000:.0f} ms long; BS.1770 loudness needs at "
                               f"least {audio.MIN_SECONDS * 1000:.0f} ms (one gating block)")


def _write_error(src: str, final: str, e: audio.AudioError) -> audio.AudioError:
    """The encoder's message names only the temporary file: name the master too."""
    return audio.AudioError(f"{src}: cannot write the master {final}: {e} (nothing was left there)")


def worker_name() -> str:
    """Which Dask worker ran this (its name and address), or the host name outside one."""
    try:
        from distributed import get_worker

        w = get_worker()
        return f"{w.name} {w.address}" if str(w.name) != w.address else w.address
    except (ImportError, ValueError):  # ValueError: not running inside a worker
        return socket.gethostname()


def _fail(task: RenderTask, reason: str, timings: dict, **kw) -> TrackResult:
    return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_FAILED,
                       reason=reason, preset=task.preset, timings=timings,
                       worker=worker_name(), **kw)


def _load_ir(task: RenderTask, rate: int, channels: int):
    """A user impulse response from a file, resampled to the track's rate (None for built-ins).

    Every problem with the IR file (missing, undecodable, silent, a channel
    layout that does not fit the track) is an AudioError naming both the track
    and the IR: before, a missing IR's reason did not name the track, and a
    silent or ill-fitting IR only surfaced inside the chain as an "internal
    error" that did not name the IR file.
    """
    rv = task.chain.reverb
    if rv.bypass or rv.ir in REVERB_TYPES:
        return None
    src = task.track.source
    path, ir = _decode_user_file(task, rv.ir, "reverb impulse response")
    from kernels.reverb import ir_layout, normalize_ir, resample_ir

    h = resample_ir(ir.audio.astype(np.float64), ir.sample_rate, rate)
    try:
        normalize_ir(ir_layout(h, channels))  # what apply_reverb will do with it
    except ValueError as e:
        raise audio.AudioError(f"{src}: reverb impulse response {path}: {e}") from e
    return h


def _decode_user_file(task: RenderTask, name: str, what: str):
    """(path, Decoded) of a file the job names (resolved by RenderTask.user_file);
    an AudioError names the track and says ``what`` the file is for."""
    path = task.user_file(name)
    try:
        return path, audio.decode(path)
    except audio.AudioError as e:
        raise audio.AudioError(f"{task.track.source}: {what} {e}") from e


def _load_reference(task: RenderTask, chain, rate: int):
    """The reference master for matching (:mod:`kernels.match`), decoded at the
    track's rate and profiled (spectrum, integrated loudness); None when the
    match is off. A relative path resolves like the reverb's IR (the job's
    folders). Every problem with the file (missing, undecodable, silent) is an
    AudioError naming both the track and the reference."""
    m = chain.match
    if m.bypass:
        return None
    src = task.track.source
    path, ref = _decode_user_file(task, m.reference, "match reference")
    from kernels.match import profile

    prof = profile(audio.resample(ref.audio, ref.sample_rate, rate), rate, path)
    if prof.integrated_lufs is None:
        raise audio.AudioError(f"{src}: match reference {path}: silent (nothing above the -70 LUFS absolute "
                               "gate): nothing to match")
    return prof


def _matched(task: RenderTask, chain, reference):
    """(task, chain) with the reference's loudness rule applied (kernels.match.matched_chain):
    the loudness target, and with it the delivery check's target, becomes the reference's
    integrated loudness, unless the catalog row sets its own target_lufs."""
    if reference is None or task.track.target_lufs is not None:
        return task, chain
    from kernels.match import matched_chain

    chain = matched_chain(chain, reference)
    if chain.loudness.target_lufs != task.delivery.target_lufs and task.delivery.target_lufs is not None:
        task = dataclasses.replace(task, delivery=dataclasses.replace(task.delivery,
                                                                       target_lufs=chain.loudness.target_lufs))
    return task, chain


def render_track(task: RenderTask | RenderGroup | RenderBatch) -> TrackResult | list[TrackResult]:
    """Master one track as ``task`` says; always returns a record (a list of
    records, one per member, for a :class:`~farm.records.RenderGroup` or
    :class:`~farm.records.RenderBatch`)."""
    try:
        if isinstance(task, RenderGroup):
            return render_group(task)
        if isinstance(task, RenderBatch):
            return render_batch(task)
        return _render_guarded(task)
    finally:
        release_heap()


def release_heap() -> None:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim``; nothing
    elsewhere): the workers keep freed memory for reuse within a track
    (:data:`farm.cluster.WORKER_MALLOC_ENV`), and between tracks it goes back."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def render_group(group: RenderGroup) -> list[TrackResult]:
    """Every deliverable of one input (``--preset a,b,c``), one record each: the
    input is decoded, measured and resampled once per rate, and the shared stages
    (EQ, match, dynamics, reverb) run once per distinct setting
    (:func:`kernels.chain.shared_key`); each member then runs its own target
    stages, encode, tags and validation, and fails or passes alone. A programme
    long enough to stream is streamed per member (nothing shared)."""
    source: dict = {}
    shared: dict = {}
    return [_render_guarded(t, source, shared) for t in group.tasks]


def _render_guarded(task: RenderTask, source: dict | None = None, shared: dict | None = None) -> TrackResult:
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    return _guard(task, timings, lambda: _render(task, timings, t_start, source, shared))


def _guard(task: RenderTask, timings: dict, step):
    """``step()``, or the failure record of ``task`` its exception stands for."""
    src = task.track.source
    try:
        return step()
    except audio.AudioError as e:
        # Errors from the encode and tag steps name the temporary file, not the
        # track: the reason must always name the track's input file.
        reason = str(e)
        return _fail(task, reason if reason.startswith(src) else f"{src}: {reason}", timings)
    except UnmeasurableError as e:
        return _fail(task, f"{src}: {e}", timings)
    except MemoryError:
        return _fail(task, f"{src}: out of memory while rendering", timings)
    except OSError as e:  # the output folder cannot be made, the disk is full, ...: not an "internal error"
        return _fail(task, f"{src}: cannot write the master {task.out_path} ({e})", timings)
    except Exception as e:  # a bug must not take the catalog down: report it on the track
        return _fail(task, f"{src}: internal error {type(e).__name__}: {e}", timings)


def _render(task: RenderTask, timings: dict, t_start: float, source: dict | None = None,
            shared: dict | None = None) -> TrackResult:
    """One master. ``source``/``shared``: dicts a RenderGroup keeps across its
    members (the decoded input and its measurements, resampled copies, the
    shared stages' outputs); None for a lone track."""
    head, budget_mb, name, streamed = _plan(task)
    if streamed:
        with backend.track_stream(name):  # this worker thread's own CUDA stream (nothing on the CPU)
            return _render_streamed(task, head, budget_mb, name, timings, t_start)
    with backend.track_stream(name):  # every device step of the track on this thread's own stream
        return _render_whole(task, name, timings, t_start, source, shared)


def _plan(task: RenderTask):
    """``(header reader, memory budget MB, backend, streamed?)`` of a task: a programme
    too long to hold whole (for the memory budget) is rendered in passes over blocks;
    the header says how long it is before anything is decoded."""
    src, final = task.track.source, task.out_path
    # A task built by hand (not through farm.job, which checks this) may name the
    # input itself as its output; the rename would then replace the input.
    if os.path.exists(final) and os.path.exists(src) and os.path.samefile(final, src):
        raise audio.AudioError(f"{src}: the output path {final} is the input file itself; a master never "
                               "overwrites its input, write to another folder")
    head = audio.BlockReader(src, stream.BLOCK_QUANTUM)
    budget_mb = budget.resolve_budget_mb(task.memory_budget_mb)
    rate = task.output.sample_rate or head.sample_rate
    frames = max(head.frames, -(-head.frames * rate // head.sample_rate))
    name = backend.resolve(task.backend)
    gpu_mb = budget.gpu_budget_mb(task.gpu_memory_budget_mb) if name != "cpu" else None
    streamed = budget.should_stream(frames, head.channels, budget_mb) or budget.device_should_stream(
        frames, head.channels, gpu_mb)
    return head, budget_mb, name, streamed


def render_batch(batch: RenderBatch) -> list[TrackResult]:
    """Every member of a :class:`~farm.records.RenderBatch`, one record each.

    Each member is decoded and measured alone (a bad input fails alone, as in
    :func:`render_track`); those that then share a backend, a master rate, a
    channel count and a chain are mastered together by
    :func:`kernels.batch.master_batch`, the rest one by one; each master is then
    encoded, tagged, validated and published alone. A batch the device cannot
    hold (or any failure of the batched pass) masters its members one by one
    instead. The record's backend reads e.g. ``gpu (batch of 8)``."""
    results: list = [None] * len(batch.tasks)
    ready: dict[tuple, list] = {}
    for i, task in enumerate(batch.tasks):
        timings: dict[str, float] = {}
        t_start = time.perf_counter()

        def prepare(task=task, timings=timings):
            head, _, name, streamed = _plan(task)
            if streamed:
                return None
            with backend.track_stream(name):
                return name, _prepare(task, name, timings)

        got = _guard(task, timings, prepare)
        if got is None:  # long after all: the streamed render, alone
            results[i] = _render_guarded(task)
        elif isinstance(got, TrackResult):
            results[i] = got
        else:
            name, p = got
            key = (name, p.rate, p.dec.channels, p.chain, p.task.chain.reverb.ir)
            ready.setdefault(key, []).append((i, p, timings, t_start))
    for (name, rate, _, chain, _), members in ready.items():
        together = _master_together(name, rate, chain, members) if len(members) > 1 else None
        for k, (i, p, timings, t_start) in enumerate(members):
            def finish(p=p, timings=timings, t_start=t_start, done=together and together[k]):
                with backend.track_stream(name):
                    res, mastered, label = done or _master_alone(p, name, timings)
                    return _finish(p, name, res, mastered, label, timings, t_start)

            results[i] = _guard(p.task, timings, finish)
    return results


def _master_together(name: str, rate: int, chain, members) -> list | None:
    """``[(MasterResult, host samples, label)]`` of the members mastered in one batch, or
    None to master them one by one: the device short of memory, a member with no loudness
    left after the shared stages (alone it fails alone), or any other failure (logged:
    a bug to look into). Each member's timings get its share."""
    from kernels.batch import batchable, master_batch

    if batchable(chain):
        return None
    t0 = time.perf_counter()
    out = None
    with backend.track_stream(name):
        try:
            xs = [backend.to_device(p.x, name) for _, p, _, _ in members]
            t1 = time.perf_counter()
            out = master_batch(xs, rate, chain, members[0][1].ir)
            host = [backend.to_host(r.audio) for r in out]
        except UnmeasurableError:  # a track with no loudness after the shared stages: alone, it fails alone
            return None
        except Exception as e:  # MemoryError is an Exception
            if name == "cpu" or not _is_gpu_oom(e):
                logging.getLogger(__name__).warning("batch of %d tracks (%s, ...) failed, mastering them one by one: "
                                                    "%s: %s", len(members), members[0][1].task.track.source,
                                                    type(e).__name__, e)
                return None
            out = None
    if out is None:  # out of device memory: freed outside the except block (its traceback held the arrays)
        _free_gpu_memory()
        return None
    t2 = time.perf_counter()
    label = f"{name} (batch of {len(members)})"
    for _, _, timings, _ in members:
        timings.update(upload=round((t1 - t0) / len(members), 4), chain=round((t2 - t1) / len(members), 4))
    return [(r, h, label) for r, h in zip(out, host)]


def _measured(dec: audio.Decoded, name: str):
    """``(the samples where they were measured, their rounded stats, their short-term series)``
    of a decoded file.

    On a GPU worker the meters run on the device, so the host only decodes,
    encodes, tags and cross-checks (its meters and the plot series were ~2.5 s
    of host time per 4-min track, several times the codecs'); the device copy
    is returned for the chain and the plot series to reuse. Out of GPU memory,
    the measurement runs on the host instead of failing the track."""
    try:
        held = _on_backend(dec, name)
        return (held, *_stats(held, dec.sample_rate))
    except Exception as e:  # MemoryError is an Exception; anything else that is no GPU OOM re-raises
        if name == "cpu" or not _is_gpu_oom(e):
            raise
    _free_gpu_memory()  # outside the except block: the failed attempt's arrays are gone
    return (dec.audio, *_stats(dec.audio, dec.sample_rate))


def _on_backend(dec: audio.Decoded, name: str):
    """``dec``'s samples (channels, samples) on backend ``name``: on a GPU the
    interleaved frames go up as decoded and are transposed there."""
    if backend.resolve(name) != "gpu":
        return dec.audio
    dev = backend.to_device(dec.interleaved, name)
    return backend.array_module(dev).ascontiguousarray(dev.T)


def _render_whole(task: RenderTask, name: str, timings: dict, t_start: float, source: dict | None,
                  shared: dict | None) -> TrackResult:
    """:func:`_render` for a programme held whole, on backend ``name``."""
    p = _prepare(task, name, timings, source)
    res, mastered, label = _master_alone(p, name, timings, shared)
    return _finish(p, name, res, mastered, label, timings, t_start)


def _master_alone(p: "_Prepared", name: str, timings: dict, shared: dict | None = None):
    """:func:`master_with_fallback` of a prepared track, with its reference profile and a
    group's ``shared`` stages. One long track can need more device memory than the GPU
    has: it is mastered on the CPU instead of failing."""
    run_chain = None if p.reference is None and shared is None else (
        lambda *a, **k: _run_chain(*a, **k, reference=p.reference, shared=shared))
    return master_with_fallback(p.x, p.rate, p.chain, p.ir, name, run_chain=run_chain, timings=timings)


@dataclasses.dataclass
class _Prepared:
    """A track decoded and measured, with the settings its chain runs with (:func:`_prepare`)."""

    task: RenderTask  # with the reference match's loudness rule applied
    dec: audio.Decoded
    held: object  # the decoded samples where they were measured (a device copy on a GPU worker)
    before: dict
    before_st: object
    rate: int  # of the master
    bit_depth: int
    x: object  # the chain's input at ``rate``
    chain: object
    ir: object
    reference: object


def _prepare(task: RenderTask, name: str, timings: dict, source: dict | None = None) -> _Prepared:
    """Decode and measure the input (once for a group: ``source``), bring it to the
    master's rate and settle the chain's settings."""
    src, out_spec = task.track.source, task.output

    def lap(key, t0):
        timings[key] = round(time.perf_counter() - t0, 4)
        return time.perf_counter()

    source = {} if source is None else source
    t = time.perf_counter()
    if "dec" not in source:  # a group's first member decodes and measures for all
        dec = audio.decode(src)
        t = lap("decode", t)
        _check_length(src, dec.duration_s)
        held, before, before_st = _measured(dec, name)
        t = lap("measure_input", t)
        if before["integrated_lufs"] is None:
            raise UnmeasurableError("silent (nothing above the -70 LUFS absolute gate): nothing to master")
        source.update(dec=dec, held=held, before=before, before_st=before_st)
    dec, held, before, before_st = source["dec"], source["held"], dict(source["before"]), source["before_st"]

    rate = out_spec.sample_rate or dec.sample_rate
    bit_depth = out_spec.bit_depth or dec.native_bit_depth
    if ("x", rate) not in source:  # at the input's rate the chain takes the measured (device) copy
        source[("x", rate)] = held if rate == dec.sample_rate else audio.resample(dec.audio, dec.sample_rate, rate)
        t = lap("resample", t)
    task, chain, ir, reference = _settings(task, rate, bit_depth, dec.channels)
    return _Prepared(task, dec, held, before, before_st, rate, bit_depth, source[("x", rate)], chain, ir, reference)


def _finish(p: _Prepared, name: str, res, mastered, label: str, timings: dict, t_start: float) -> TrackResult:
    """Encode, tag, re-decode and validate the master ``mastered`` (host samples) of
    :func:`_prepare`'s track, then publish it (or fail it) under its final name."""
    task, dec, held, before, before_st = p.task, p.dec, p.held, p.before, p.before_st
    src, out_spec, final = task.track.source, task.output, task.out_path
    rate, bit_depth = p.rate, p.bit_depth
    if label == GPU_OOM_BACKEND:  # the device is short of memory: the rest of the track runs on the host
        name, held = "cpu", backend.to_host(held)
    t = time.perf_counter()
    timings.update({f"chain_{k}": round(v, 4) for k, v in res.stage_seconds.items()})

    def lap(key, t0):
        timings[key] = round(time.perf_counter() - t0, 4)
        return time.perf_counter()

    with audio.atomic_output(final) as tmp:
        try:
            audio.encode(tmp, mastered, rate, out_spec.format, bit_depth)
        except audio.AudioError as e:
            raise _write_error(src, final, e) from e
        t = lap("encode", t)
        loud_tags = {"integrated_lufs": res.integrated_lufs, "true_peak_dbtp": res.true_peak_dbtp}
        tags.write_tags(tmp, task.track.tags, loudness=loud_tags)
        t = lap("tag", t)
        check = audio.decode(tmp)
        held_out, after, after_st = _measured(check, name)
        checks, problems = _validate(task, dec, check, after, rate, bit_depth, held_out)
        # the report's plot series (farm.plots) of the input and the delivered file, pass or fail,
        # where they were measured; their short-term loudness comes from the measurements above
        plot_data = _plot_data(task, res, (held, dec.sample_rate, before_st),
                               (held_out, check.sample_rate, after_st), timings)
        return dataclasses.replace(_publish(task, tmp, res, before, after, checks, problems, label, timings,
                                            t_start, t), plot_data=plot_data)


def _settings(task: RenderTask, rate: int, bit_depth: int, channels: int):
    """(task, chain, user IR, reference profile) as both render paths master with:
    the track's chain, its files loaded, the reference's loudness rule applied."""
    chain = _track_chain(task, bit_depth)
    ir = _load_ir(task, rate, channels)
    reference = _load_reference(task, chain, rate)
    task, chain = _matched(task, chain, reference)
    return task, chain, ir, reference


def _track_chain(task: RenderTask, bit_depth: int):
    """The task's chain with the output's bit depth and the row's own loudness target."""
    chain = dataclasses.replace(task.chain, dither=dataclasses.replace(task.chain.dither, bit_depth=bit_depth))
    ref = getattr(task.track, "reference", None)  # the catalog row's own reference master
    if ref:
        chain = dataclasses.replace(chain, match=dataclasses.replace(chain.match, reference=ref, bypass=False))
    target = task.track.target_lufs
    if target is not None:
        chain = dataclasses.replace(chain, loudness=dataclasses.replace(chain.loudness, target_lufs=target))
    return chain


def _publish(task: RenderTask, tmp: str, res, before: dict, after: dict, checks: dict, problems: list,
             name: str, timings: dict, t_start: float, t: float) -> TrackResult:
    """Tags read back, the verdict, and the rename of a master that passed (inside atomic_output)."""
    src, final = task.track.source, task.out_path
    delivery.add_bwf(task, tmp, after, checks, problems)  # [output] bwf: the bext chunk, read back
    read_back = tags.read_tags(tmp)
    missing = [k for k, v in task.track.tags.items() if v and read_back.get(k) != v]
    checks["tags"] = not missing
    if missing:
        problems.append(f"tags did not read back: {', '.join(missing)}")
    if not res.reached:
        problems.insert(0, res.reason)
    timings["validate"] = round(time.perf_counter() - t, 4)
    result_kw = dict(input=before, result=after, gain_db=_round(res.gain_db),
                     max_gain_reduction_db=_round(res.max_gain_reduction_db), checks=checks,
                     backend=name)
    if problems:
        timings["total"] = round(time.perf_counter() - t_start, 4)
        return _fail(task, f"{src}: " + "; ".join(problems) + " (no master written)", timings, **result_kw)
    output_hash = file_hash(tmp)  # the bytes the rename publishes (the worker has them in cache)
    audio.commit(tmp, final)
    timings["total"] = round(time.perf_counter() - t_start, 4)
    result = TrackResult(row=task.track.row, source=src, status=STATUS_OK, output=final, preset=task.preset,
                         output_hash=output_hash,
                         timings=timings, worker=worker_name(),
                         **result_kw)
    return delivery.make_copies(task, result, timings)  # [output] copies, each re-decoded and checked


def _render_streamed(task: RenderTask, reader, budget_mb: int, name: str, timings: dict,
                     t_start: float) -> TrackResult:
    """:func:`_render` for a programme longer than the memory budget holds whole:
    mastered by :func:`farm.stream_render.master_streamed` in passes over blocks,
    written block by block (RF64 for a WAV past 4 GiB), validated by a streamed
    re-decode. The second meter (pyloudnorm) needs the whole programme in memory,
    so the streamed render leaves that cross-check out (``checks`` says so by
    not listing it)."""
    from kernels.loudness import LoudnessMeter

    from .stream_render import master_streamed

    src, out_spec, final = task.track.source, task.output, task.out_path
    _check_length(src, reader.duration_s)  # a long programme never is short; kept for a tiny budget
    rate = out_spec.sample_rate or reader.sample_rate
    bit_depth = out_spec.bit_depth or reader.native_bit_depth
    task, chain, ir, reference = _settings(task, rate, bit_depth, reader.channels)
    block = budget.block_frames(budget_mb, reader.channels, max(rate, reader.sample_rate))
    reader.block = block
    progress = track_progress(task)
    timings["streamed_block_frames"] = block
    # the writer needs an upper bound of the length (RF64 or not): the rate-converted
    # input plus a reverb tail that rings out (the IR's length: at most a few minutes)
    frames_out = -(-reader.frames * rate // reader.sample_rate) + 600 * rate
    with audio.atomic_output(final) as tmp:
        def sink():
            return audio.open_writer(tmp, rate, reader.channels, out_spec.format, bit_depth, frames_out)

        t = time.perf_counter()
        try:
            plot_in = plots.SideStream(reader.sample_rate, reader.channels)  # fed by the decode pass
            res, before_stats, _ = master_streamed(reader, rate, chain, ir, sink, block=block, spill_beside=final,
                                                   backend_name=name, progress=progress, timings=timings,
                                                   reference=reference, plot_input=plot_in)
        except audio.AudioError as e:
            raise _write_error(src, final, e) from e
        before = _rounded(before_stats)
        timings["stream_master"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        loud_tags = {"integrated_lufs": res.integrated_lufs, "true_peak_dbtp": res.true_peak_dbtp}
        tags.write_tags(tmp, task.track.tags, loudness=loud_tags)
        timings["tag"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        check = audio.BlockReader(tmp, block)
        meter = LoudnessMeter(check.sample_rate, check.channels)
        plot_out = plots.SideStream(check.sample_rate, check.channels, short_term_from=meter)
        for b in check.blocks():
            meter.push(b)
            plot_out.push(b)
        progress(1.0)
        after = _rounded(meter.result())
        check.frames = check.frames_read
        checks, problems = _validate(task, reader, check, after, rate, bit_depth, None)
        plot_data = _plot_data(task, res, plot_in, plot_out, timings)
        return dataclasses.replace(_publish(task, tmp, res, before, after, checks, problems, name, timings,
                                            t_start, t), plot_data=plot_data)


def _plot_data(task: RenderTask, res, before, after, timings: dict) -> str | None:
    """Write the report's plot data (farm.plots.write_track_data); time it as "plots"."""
    t = time.perf_counter()
    rel = plots.write_track_data(task, res, before, after)
    timings["plots"] = round(time.perf_counter() - t, 4)
    return rel


GPU_OOM_BACKEND = "cpu (gpu out of memory)"  # the result's backend when a GPU render fell back


def _run_chain(x: np.ndarray, rate: int, chain, ir, name: str, timings: dict, reference=None, shared=None):
    """The chain on backend ``name``: (MasterResult, mastered audio on the host);
    sets ``timings`` "upload" and "chain" (a fallback's run overwrites them).
    ``reference``: the match's ReferenceProfile (see _load_reference)."""
    # On a GPU the copies and the chain run on this worker thread's own CUDA stream,
    # so the worker's other threads (decoding, encoding, their own chains) overlap it.
    with backend.track_stream(name):
        t0 = time.perf_counter()
        dev = backend.to_device(x, name)
        t1 = time.perf_counter()
        # a group's shared outputs live on the backend they were made on: key them by it too
        cache = None if shared is None else shared.setdefault(name, {})
        res = master(dev, rate, chain, ir=ir, reference=reference, shared=cache)
        mastered = backend.to_host(res.audio)
    timings.update(upload=round(t1 - t0, 4), chain=round(time.perf_counter() - t1, 4))
    return res, mastered


def _is_gpu_oom(e: BaseException) -> bool:
    """CuPy's OutOfMemoryError is a MemoryError; cuFFT (CuFFTError "CUFFT_ALLOC_FAILED"),
    the CUDA runtime (CUDARuntimeError "cudaErrorMemoryAllocation") and the driver
    (CUDADriverError "CUDA_ERROR_OUT_OF_MEMORY", e.g. loading a kernel module) report a
    failed allocation with their own error types, recognised by their messages."""
    if isinstance(e, MemoryError):
        return True
    text = f"{type(e).__name__} {e}"
    return type(e).__module__.startswith("cupy") and (
        "ALLOC_FAILED" in text or "MemoryAllocation" in text or "OUT_OF_MEMORY" in text)


def _free_gpu_memory() -> None:
    """Give back what CuPy's pools and the FFT plan cache hold, so the worker's next
    track (and the other threads sharing the GPU) start from free memory.

    Order matters: cached cuFFT plans hold their work areas as blocks of the
    memory pool, so the plan cache is cleared first (its work areas go back to
    the pool as free blocks) and the pool is emptied after; the other order left
    the work areas in the pool. A garbage collection first frees device arrays
    that only a reference cycle (a failed attempt's frames) still holds."""
    try:
        import cupy

        gc.collect()
        cupy.fft.config.get_plan_cache().clear()
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # no CuPy (CPU-only worker) or a device too broken to answer
        pass


def master_with_fallback(x: np.ndarray, rate: int, chain, ir, name: str, run_chain=None,
                         timings: dict | None = None):
    """Run the chain on ``name``; if the GPU runs out of memory, free it and run on the CPU.

    Returns ``(MasterResult, host audio, backend label)``; the label is
    :data:`GPU_OOM_BACKEND` after a fallback, so the report says where the track
    went and why. Out of memory on the CPU itself still raises (render_track
    reports it). ``run_chain`` replaces :func:`_run_chain` (tests).
    """
    run_chain = run_chain or _run_chain
    timings = {} if timings is None else timings
    try:
        res, mastered = run_chain(x, rate, chain, ir, name, timings)
        return res, mastered, name
    except Exception as e:  # MemoryError is an Exception; anything else that is no OOM re-raises
        if name == "cpu" or not _is_gpu_oom(e):
            raise
    # Outside the except block: the traceback (holding the failed attempt's device
    # arrays) is gone, so the pool can really free their blocks.
    _free_gpu_memory()
    res, mastered = run_chain(x, rate, chain, ir, "cpu", timings)
    return res, mastered, GPU_OOM_BACKEND


def _validate(task: RenderTask, dec, check, after: dict, rate: int, bit_depth: int, audio_out):
    """Delivery checks on the re-decoded master: (checks by name, problems as text).

    ``dec``/``check`` describe the input and the re-decoded master (frames,
    sample_rate, channels, duration_s); ``audio_out`` is the master's samples
    for the second meter (on the host, or the device copy a GPU worker measured),
    or None where they are not held (a streamed render)."""
    d = task.delivery
    target = task.track.target_lufs if task.track.target_lufs is not None else d.target_lufs
    problems: list[str] = []
    checks: dict[str, bool] = {}
    lufs = after["integrated_lufs"]
    if target is not None:
        checks["loudness"] = lufs is not None and abs(lufs - target) <= d.tolerance_lu
        if not checks["loudness"]:
            problems.append(f"integrated loudness {lufs} LUFS is outside {target} +/- {d.tolerance_lu} LU")
        if audio_out is not None and check.channels <= 6:
            pln = _pyloudnorm(audio_out, check.sample_rate)
            after["pyloudnorm_lufs"] = _round(pln)
            checks["loudness_cross_check"] = bool(pln is not None and lufs is not None
                                                   and abs(pln - lufs) <= PYLOUDNORM_AGREEMENT_LU)
            if not checks["loudness_cross_check"]:
                problems.append(f"meters disagree: ours {lufs} LUFS, pyloudnorm {_round(pln)} LUFS")
    tp = after["true_peak_dbtp"]
    checks["true_peak"] = tp is None or tp <= d.max_true_peak_dbtp + TRUE_PEAK_SLACK_DB + 1e-9
    if not checks["true_peak"]:
        problems.append(f"true peak {tp} dBTP is over the {d.max_true_peak_dbtp} dBTP ceiling")
    want_frames = round(dec.frames * rate / dec.sample_rate)
    rings_out = not task.chain.reverb.bypass and task.chain.reverb.tail == "keep"  # longer by design
    checks["duration"] = rings_out or abs(check.frames - want_frames) <= 1
    if not checks["duration"]:
        problems.append(f"duration {check.frames} samples, expected {want_frames}")
    checks["format"] = bool(check.sample_rate == rate and check.channels == dec.channels)
    if not checks["format"]:
        problems.append(f"wrote {check.channels} ch at {check.sample_rate} Hz, expected "
                        f"{dec.channels} ch at {rate} Hz")
    after.update(sample_rate=check.sample_rate, channels=check.channels, bit_depth=bit_depth,
                 duration_s=round(check.duration_s, 3), format=task.output.format)
    return checks, problems


def _pyloudnorm(x, rate: int) -> float | None:
    """Integrated loudness by the independent second meter, None if it has none.

    pyloudnorm takes at most 5 channels (L, R, C, Ls, Rs): of 5.1 (SMPTE order
    L, R, C, LFE, Ls, Rs) the LFE is left out, which BS.1770 does not count either.

    pyloudnorm itself on the host. A master held on a GPU is measured there by
    pyloudnorm's own arithmetic and filters (:mod:`kernels.pyloudnorm_meter`,
    held to pyloudnorm by the tests): pyloudnorm on the host was the largest
    host cost a GPU worker had left per track. Out of device memory, pyloudnorm
    runs on the host after all."""
    if backend.is_device(x):
        from kernels.pyloudnorm_meter import integrated_loudness

        try:
            v = integrated_loudness(_without_lfe(x), rate)
            return v if math.isfinite(v) else None
        except ValueError:
            return None
        except Exception as e:  # MemoryError is an Exception; anything else that is no GPU OOM re-raises
            if not _is_gpu_oom(e):
                raise
        x = backend.to_host(x)
        _free_gpu_memory()
    import pyloudnorm

    m = pyloudnorm.Meter(rate, filter_class="DeMan")
    try:
        v = m.integrated_loudness(_without_lfe(x).T.astype(np.float64))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _without_lfe(x):
    """``x`` (channels, samples) without the LFE of a 5.1 layout (channel 3)."""
    return x[[0, 1, 2, 4, 5]] if x.shape[0] == 6 else x
