"""How much memory one track's render may use, and whether it must stream.

A whole-file render holds the decoded programme and the chain's working
buffers at once: fine for a song, not for a two-hour concert at 96 kHz
(5.5 GB as float32 before the chain's buffers). A job's ``memory_budget_mb``
(job file key, ``--memory-budget-mb``, else :func:`worker_budget_mb`'s
default) is the host memory one *worker process* may give its renders, in
MiB; its threads share it (:func:`resolve_budget_mb`). The render asks
:func:`should_stream` and, when it must stream, reads and processes blocks of
:func:`block_frames` frames.

The figures below are estimates of host memory (RSS), measured on the CPU
backend; they are meant to be conservative, not exact.
"""
from __future__ import annotations

import os

MiB = 1 << 20

# Peak RSS of the whole-file render (farm.render.render_track, the "master" preset:
# EQ, plate reverb, 4x oversampled true-peak limiter, dither, FLAC encode, tag,
# re-decode and validate; 48 kHz stereo PCM_24 WAV in, CPU backend), above the
# worker's idle footprint, per sample per channel. Measured 2026 on this 2-core
# machine, each length in a fresh process, input written by another process so
# the high-water mark before the render holds only the imports (~106 MiB):
#
#   python measure_whole.py SECONDS   # for SECONDS in 30 60 120 240
#   (the script: write synth.music(SECONDS, 48000, 2) as PCM_24 WAV; job_from_flags(...,
#    "master", backend="cpu").tasks()[0]; base = getrusage(RUSAGE_SELF).ru_maxrss;
#    render.render_track(task); peak = ru_maxrss again)
#
#   seconds  frames     ru_maxrss before -> after the render
#   30       1440000    108680 KiB -> 290304 KiB
#   60       2880000    108656 KiB -> 368268 KiB
#   120      5760000    108388 KiB -> 551404 KiB
#   240      11520000   108440 KiB -> 904944 KiB
#
# Least squares over 60..240 s: 31.7 bytes per sample per channel + 187 MiB
# (81 MiB above the imports). Since then the "master" preset runs a 4-band
# multiband compressor (float32 bands and float64 envelopes per band): bench/long.py's
# whole-file 4-min 96 kHz stereo track peaked at 2809 MiB RSS (2026-12-01 22:35,
# `.venv/bin/python bench/long.py`), ~61 bytes per sample per channel above the
# imports. Rounded up (pass the frames at the *output* rate).
WHOLE_FILE_BYTES_PER_SAMPLE = 64
WHOLE_FILE_OVERHEAD_BYTES = 128 * MiB

# The streamed render (farm.stream_render, "master" preset, 3-min 96 kHz stereo FLAC,
# CPU backend; each block size in a fresh process, ru_maxrss of the whole process):
#
#   .venv/bin/python rss.py BLOCK   # render_track with block_frames patched to BLOCK
#
#   block (frames)   peak RSS   render wall (2 loaded cores)
#   131072           416 MiB    18.2 s
#   524288           531 MiB    15.5 s
#   2097152          878 MiB    15.9 s
#
# i.e. ~235 bytes per block frame of stereo, ~118 per sample per channel (the
# reader's block and its transpose, the stages' float64 envelopes and gains of
# the limiter's check cascade, the meters' K-weighted copies), and ~385 MiB at
# the smallest block, of which ~110 MiB are the imports. Longer blocks than a few
# quanta buy no throughput (the stages work in 2^16..2^17-sample chunks anyway).
STREAM_BYTES_PER_SAMPLE = 128
STREAM_OVERHEAD_BYTES = 320 * MiB
HISTORY_SECONDS = 0.0  # the stages' history is in the fixed overhead above
MAX_BLOCK_SECONDS = 10.0  # rounded up to a quantum: 1048576 frames at 96 kHz

# The machine default: a share of the memory each worker process may plan for.
DEFAULT_MEMORY_FRACTION = 0.5  # of the machine's memory, split over its worker processes
WORKER_LIMIT_FRACTION = 0.6  # of a Dask worker's memory_limit (Dask pauses it at 80%)
MIN_BUDGET_MB = 256  # below this not even one streamed block of 7.1 fits
MAX_DEFAULT_BUDGET_MB = 32 * 1024  # a default never plans for more than this per worker
MAX_BUDGET_MB = 1 << 24  # 16 TiB: anything larger is a typo


def check_budget_mb(value, where: str) -> int:
    """``value`` as a budget in MiB, or ValueError whose message starts with ``where``
    and says what is allowed (for job files and the command line)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: must be a whole number of MiB, e.g. 8192, got {value!r}")
    if not MIN_BUDGET_MB <= value <= MAX_BUDGET_MB:
        raise ValueError(f"{where}: must be {MIN_BUDGET_MB} to {MAX_BUDGET_MB} MiB (host memory per worker "
                         f"process for its renders), got {value}")
    return value


def total_memory_bytes() -> int:
    """This machine's memory as the workers see it: the cgroup limit where one is
    set (distributed's ``MEMORY_LIMIT``, as farm.cluster sizes workers with),
    else /proc/meminfo's MemTotal, else ``os.sysconf``."""
    try:
        from distributed.system import MEMORY_LIMIT

        if MEMORY_LIMIT:
            return int(MEMORY_LIMIT)
    except ImportError:  # pragma: no cover - distributed is a dependency
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_budget_mb(workers: int = 1, total_bytes: int | None = None) -> int:
    """The machine default per worker process: :data:`DEFAULT_MEMORY_FRACTION` of
    the machine's memory split over ``workers``, at most
    :data:`MAX_DEFAULT_BUDGET_MB`, at least :data:`MIN_BUDGET_MB`."""
    total = total_memory_bytes() if total_bytes is None else total_bytes
    share = int(total * DEFAULT_MEMORY_FRACTION) // max(1, int(workers)) // MiB
    return max(MIN_BUDGET_MB, min(MAX_DEFAULT_BUDGET_MB, share))


def worker_budget_mb() -> int:
    """The default budget of the worker process this runs in: a share
    (:data:`WORKER_LIMIT_FRACTION`) of its Dask ``memory_limit`` when it has one
    (the embedded cluster and ``dask worker --memory-limit`` set it), else
    :func:`default_memory_budget_mb` for one worker."""
    limit = 0
    try:
        from distributed import get_worker

        limit = int(getattr(get_worker().memory_manager, "memory_limit", None) or 0)
    except (ImportError, ValueError, AttributeError):  # ValueError: not inside a worker
        pass
    if limit:
        return max(MIN_BUDGET_MB, min(MAX_BUDGET_MB, int(limit * WORKER_LIMIT_FRACTION) // MiB))
    return default_memory_budget_mb(1)


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def resolve_budget_mb(memory_budget_mb: int | None, threads: int | None = None) -> int:
    """What one render may use, in MiB: the task's per-worker budget
    (``RenderTask.memory_budget_mb``; ``None``: :func:`worker_budget_mb`) shared
    by the tracks the worker runs at once (``threads``; default: the current
    Dask worker's thread count, 1 outside a worker). Never below
    :data:`MIN_BUDGET_MB`, so a streamed render always gets one block."""
    budget = worker_budget_mb() if memory_budget_mb is None else int(memory_budget_mb)
    n = _worker_threads() if threads is None else max(1, int(threads))
    return max(MIN_BUDGET_MB, budget // n)


# A whole-file render on a GPU holds the programme on the device: the decoded
# signal, the shared stages' output, the gained and limited copies (float32) and
# the limiter's float64 gains and envelopes, plus one detection chunk's spectra.
# NOT measured (no GPU was lent to the session that wrote this): counted from the
# kernels' working set as ~12 float32 copies per sample per channel. The streamed
# render's device blocks are small (a few seconds), so a programme past the
# device budget streams instead of running out of device memory (and the
# render's out-of-memory fallback to the CPU stays a last resort).
GPU_BYTES_PER_SAMPLE = 48
GPU_MEMORY_FRACTION = 0.8  # of the device's memory, shared by the worker's threads


def gpu_budget_mb(gpu_memory_budget_mb: int | None = None, threads: int | None = None) -> int | None:
    """Device memory (MiB) one render on this worker's GPU may use: the job's
    ``gpu_memory_budget_mb`` (per GPU) or :data:`GPU_MEMORY_FRACTION` of the
    device's total memory, shared by the worker's threads; ``None`` when no
    CUDA device is visible."""
    n = _worker_threads() if threads is None else max(1, int(threads))
    if gpu_memory_budget_mb is not None:
        return max(1, int(gpu_memory_budget_mb) // n)
    try:
        import cupy

        _, total = cupy.cuda.Device().mem_info
    except Exception:  # no CuPy, no device, a broken driver: no device budget
        return None
    return max(1, int(total * GPU_MEMORY_FRACTION) // MiB // n)


def device_should_stream(frames: int, channels: int, gpu_mb: int | None) -> bool:
    """True when the whole-file chain would not fit ``gpu_mb`` MiB of device memory."""
    return gpu_mb is not None and int(frames) * int(channels) * GPU_BYTES_PER_SAMPLE > int(gpu_mb) * MiB


def whole_file_bytes(frames: int, channels: int) -> int:
    """Estimated peak host bytes of a whole-file render of ``frames`` frames
    (at the output rate) of ``channels`` channels, above the idle worker."""
    return int(frames) * int(channels) * WHOLE_FILE_BYTES_PER_SAMPLE + WHOLE_FILE_OVERHEAD_BYTES


def should_stream(frames: int, channels: int, budget_mb: int) -> bool:
    """True when the whole-file render of this programme would not fit ``budget_mb`` MiB."""
    return whole_file_bytes(frames, channels) > int(budget_mb) * MiB


def stream_overhead_bytes(channels: int, rate: int) -> int:
    """Estimated fixed bytes of a streamed render (history of the stages)."""
    return STREAM_OVERHEAD_BYTES + int(HISTORY_SECONDS * rate) * int(channels) * STREAM_BYTES_PER_SAMPLE


def block_frames(budget_mb: int, channels: int, rate: int) -> int:
    """Frames per block for a streamed render in ``budget_mb`` MiB: a multiple
    of :data:`kernels.stream.BLOCK_QUANTUM`, at most :data:`MAX_BLOCK_SECONDS`
    long (rounded up to a quantum), at least one quantum even when the budget
    is smaller than that needs."""
    from kernels.stream import BLOCK_QUANTUM  # here: kernels.backend is slow to import for farm.job

    room = int(budget_mb) * MiB - stream_overhead_bytes(channels, rate)
    fit = room // (max(1, int(channels)) * STREAM_BYTES_PER_SAMPLE) // BLOCK_QUANTUM
    cap = -(-int(MAX_BLOCK_SECONDS * rate) // BLOCK_QUANTUM)
    return max(1, min(fit, cap)) * BLOCK_QUANTUM


__all__ = ["MIN_BUDGET_MB", "block_frames", "check_budget_mb", "default_memory_budget_mb",
           "resolve_budget_mb", "should_stream", "stream_overhead_bytes", "total_memory_bytes",
           "whole_file_bytes", "worker_budget_mb"]
