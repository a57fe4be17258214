"""The one place that knows about NumPy versus CuPy.

Kernels never import CuPy themselves: they ask :func:`array_module` for the
module that owns their input and allocate with it, and ask :func:`fft` /
:func:`signal` for the matching FFT and filtering namespaces (``scipy.fft``
with worker threads on the host, ``cupy.fft`` on the device). Host<->device
moves (:func:`to_device`, :func:`to_host`) happen at one boundary, in the
per-track render, never inside a kernel.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy as np

try:  # CuPy is optional (the `gpu` extra); import errors mean "CPU only".
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None

BACKENDS = ("cpu", "gpu")


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when CuPy is importable and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device, broken install
        return False


def gpu_count() -> int:
    """Number of CUDA devices CuPy sees (0 without CuPy or a GPU)."""
    if not gpu_available():
        return 0
    return int(_cupy.cuda.runtime.getDeviceCount())


def resolve(name: str = "auto") -> str:
    """Turn ``"auto" | "cpu" | "gpu"`` into ``"cpu"`` or ``"gpu"``.

    ``auto`` picks the GPU when one is usable. Asking for ``gpu`` on a machine
    without one raises with a message that says how to fix it.
    """
    if name == "auto":
        return "gpu" if gpu_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "gpu":
        if not gpu_available():
            raise RuntimeError(
                "backend 'gpu' was requested but CuPy sees no CUDA device; "
                "install the 'gpu' extra (pip install 'mastering-farm[gpu]') on a "
                "machine with an NVIDIA GPU, or use backend 'cpu' / 'auto'"
            )
        return "gpu"
    raise ValueError(f"backend must be one of 'auto', 'cpu', 'gpu', not {name!r}")


def module_for(backend: str) -> ModuleType:
    """The array module (numpy or cupy) for a resolved backend name."""
    return _cupy if resolve(backend) == "gpu" else np


def array_module(x) -> ModuleType:
    """The array module that owns ``x`` (cupy for device arrays, else numpy)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy
    return np


def is_device(x) -> bool:
    return array_module(x) is not np


# Host<->device copies of at least this many bytes go through the thread's pinned
# staging buffers (page-locked memory: the DMA engine reads it directly, at full PCIe/
# NVLink rate and asynchronously to other threads' work); smaller ones (a peak, a
# loudness) are not worth a staging copy.
PINNED_MIN_BYTES = 1 << 20
_local = threading.local()  # per worker thread: its CUDA stream and staging buffers


@contextlib.contextmanager
def track_stream(backend: str = "auto"):
    """The calling thread's own non-blocking CUDA stream, current inside the block;
    nothing on the CPU. Yields the stream (or None).

    A GPU worker runs a track per thread (``farm.cluster``: up to 4 threads per
    GPU), so that one track's decode and encode on the CPU overlap another's device
    work. On the legacy default stream their kernels and copies would serialise,
    and each host synchronisation (the limiter check reads a peak) would wait for
    every thread's work; with a stream per thread it waits for its own. CuPy's
    current stream is per thread, and its memory pool and cuFFT plans follow it.
    """
    if resolve(backend) != "gpu":
        yield None
        return
    stream = getattr(_local, "stream", None)
    if stream is None:
        stream = _local.stream = _cupy.cuda.Stream(non_blocking=True)
    with stream:
        yield stream


def _staging(key: str, shape, dtype) -> np.ndarray:
    """This thread's pinned host buffer ``key`` viewed as ``shape``/``dtype`` (grown when short)."""
    import cupyx

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = getattr(_local, key, None)
    if buf is None or buf.nbytes < nbytes:
        buf = cupyx.empty_pinned((max(nbytes, 1),), dtype=np.uint8)
        setattr(_local, key, buf)
    return buf[:nbytes].view(dtype).reshape(shape)


def to_device(x, backend: str = "auto"):
    """``x`` in the backend's memory: a host array is uploaded to the GPU, a
    device array is returned as it is, and for the CPU either comes back as a
    NumPy array (a no-op for one already on the host).

    On the GPU a large array goes through this thread's pinned staging buffer,
    copied on the current stream (:func:`track_stream`); the buffer is reused
    only after that copy has finished (an event recorded after it)."""
    if resolve(backend) != "gpu":
        return to_host(x)
    if is_device(x):
        return x
    x = np.ascontiguousarray(x)
    if x.nbytes < PINNED_MIN_BYTES:
        return _cupy.asarray(x)
    done = getattr(_local, "upload_done", None)
    if done is not None:
        done.synchronize()  # the previous upload from the staging buffer has left it
    staged = _staging("upload_buf", x.shape, x.dtype)
    np.copyto(staged, x)
    out = _cupy.empty(x.shape, dtype=x.dtype)
    out.set(staged)  # asynchronous from page-locked memory, on the current stream
    _local.upload_done = _cupy.cuda.get_current_stream().record()
    return out


def to_host(x) -> np.ndarray:
    """Return ``x`` as a NumPy array (copies device arrays to the host; a large
    one through this thread's pinned buffer, synchronising the current stream)."""
    if not is_device(x):
        return np.asarray(x)
    if x.nbytes < PINNED_MIN_BYTES:
        return _cupy.asnumpy(x)
    x = _cupy.ascontiguousarray(x)
    staged = _staging("download_buf", x.shape, x.dtype)
    x.get(out=staged)  # waits for the current stream, then the copy
    return staged.copy()


def float_audio(x, name: str):
    """``(xp, x)`` for a kernel ``name`` that takes float audio shaped (channels,
    samples); a ValueError/TypeError that says how to fix any other shape or dtype."""
    xp = array_module(x)
    x = xp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} expects audio shaped (channels, samples), got shape {tuple(x.shape)}; "
                         "add a channel axis for mono (x[None, :])")
    if x.dtype not in (xp.float32, xp.float64):
        raise TypeError(f"{name} expects float32 or float64 audio, got {x.dtype}; convert with "
                        "x.astype(numpy.float32) (PCM integers scaled to [-1, 1))")
    return xp, x


def abs_max(x, axis):
    """``max |x|`` over ``axis`` (an int or a tuple), NaN propagating. On the host
    ``x`` is scratch and takes ``|x|`` in place; on the device one fused
    reduction reads it once (no ``|x|`` array: the peak detectors' largest
    memory term, bench/kernels.py)."""
    if array_module(x) is np:
        return np.abs(x, out=x).max(axis=axis)
    return _abs_max_kernel()(x, axis=axis)


@functools.lru_cache(maxsize=1)
def _abs_max_kernel():
    # NaN wins the comparison (a != a), as numpy's max propagates it: the limiter's
    # final check must see a NaN peak to refuse the signal.
    return _cupy.ReductionKernel("T x", "T y", "abs(x)", "(a > b || a != a) ? a : b", "y = a", "0",
                                 "farm_abs_max")


# Our RawKernels replace array operations on a device (each one's array path stays:
# the host runs it, and so does a device with them off). FARM_RAW_KERNELS=0 turns
# them off, to tell a kernel's fault or cost from the rest on a GPU (bench/kernels.py
# times the chain both ways).
RAW_KERNELS = os.environ.get("FARM_RAW_KERNELS", "1") != "0"


def raw_kernels(xp) -> bool:
    """Whether arrays of ``xp`` go through our RawKernels (a device, and not turned off)."""
    return xp is not np and RAW_KERNELS


# NVRTC options of every RawKernel: no fused multiply-adds, so a kernel's float
# arithmetic rounds as the same C source compiled for the host does (the tests run
# each kernel's source on the CPU, tests/cuda_host.py, and hold it to the NumPy path).
RAW_KERNEL_OPTIONS = ("--fmad=false",)
RAW_KERNEL_THREADS = 128  # threads per block of a grid-stride RawKernel launch


@functools.lru_cache(maxsize=None)
def raw_kernel(source: str, name: str):
    """The CuPy RawKernel ``name`` of CUDA C ``source`` (compiled by NVRTC on first
    launch, :data:`RAW_KERNEL_OPTIONS`)."""
    return _cupy.RawKernel(source, name, options=RAW_KERNEL_OPTIONS)


def launch(source: str, name: str, work_items: int, args: tuple) -> None:
    """Launch a grid-stride kernel (``for (t = thread; t < work_items; t += grid)``)
    over ``work_items`` on the current stream: enough blocks to cover them, capped
    (the loop takes the rest)."""
    blocks = max(1, min(-(-int(work_items) // RAW_KERNEL_THREADS), 1 << 16))
    raw_kernel(source, name)((blocks,), (RAW_KERNEL_THREADS,), args)


def to_float(x) -> float:
    """A Python float from a 0-d array on either backend (synchronises the GPU)."""
    return float(to_host(x))


@dataclass(frozen=True)
class FFT:
    """Real FFTs along the last axis on one backend.

    ``rfft``/``irfft`` mirror ``scipy.fft``; on the host they run with
    ``workers`` threads, on the device through cuFFT (CuPy keeps a plan cache,
    so repeated shapes reuse their plans).
    """

    xp: ModuleType
    workers: int

    def rfft(self, x, n: int | None = None, axis: int = -1):
        if self.xp is np:
            import scipy.fft

            return scipy.fft.rfft(x, n=n, axis=axis, workers=self.workers)
        return self.xp.fft.rfft(x, n=n, axis=axis)

    def irfft(self, x, n: int | None = None, axis: int = -1):
        if self.xp is np:
            import scipy.fft

            return scipy.fft.irfft(x, n=n, axis=axis, workers=self.workers)
        return self.xp.fft.irfft(x, n=n, axis=axis)

    @staticmethod
    def next_fast_len(n: int) -> int:
        """Smallest FFT size >= n made of small primes (fast on FFTW-like and cuFFT)."""
        import scipy.fft

        return int(scipy.fft.next_fast_len(int(n), real=True))


def cpu_workers() -> int:
    """FFT worker threads on the host: ``FARM_FFT_WORKERS`` or the usable cores."""
    env = os.environ.get("FARM_FFT_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def fft(xp: ModuleType) -> FFT:
    """The FFT namespace for an array module."""
    return FFT(xp=xp, workers=cpu_workers() if xp is np else 1)


def signal(xp: ModuleType) -> ModuleType:
    """``scipy.signal`` on the host, ``cupyx.scipy.signal`` on the device."""
    if xp is np:
        import scipy.signal

        return scipy.signal
    return _cupyx_signal()


@functools.lru_cache(maxsize=1)
def _cupyx_signal() -> ModuleType:
    # An explicit import (cupyx does not load it lazily). CuPy 14's import of it
    # builds a kernel with cupyx.jit, which warns "cupyx.jit.rawkernel is
    # experimental" (FutureWarning) each time; that says nothing about our use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import cupyx.scipy.signal

    return cupyx.scipy.signal


def synchronize(xp: ModuleType) -> None:
    """Wait for queued device work (for timing); a no-op on the host."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


class StageClock:
    """Seconds per named step, summed, without synchronising the device.

    On the host a mark is ``perf_counter``. On a GPU it is a CUDA event recorded
    on the thread's current stream, and the spans are read once, in
    :meth:`seconds`, after the last event has completed: a synchronisation
    around every stage (~15 per mastered track) would make the host wait for
    the device each time, so the device would then wait for the host's next
    launches instead of working through a queue. A span is the stream's time
    between its two marks, idle gaps included, as a host span is wall time.
    """

    def __init__(self, xp: ModuleType):
        self._xp = xp
        self._spans: list[tuple[str, object, object]] = []

    def mark(self):
        if self._xp is np:
            import time

            return time.perf_counter()
        event = self._xp.cuda.Event()
        event.record()
        return event

    def add(self, name: str, start) -> None:
        """Count the time from ``start`` (a :meth:`mark`) to now under ``name``."""
        self._spans.append((name, start, self.mark()))

    def time(self, name: str, fn, *args):
        """``fn(*args)``, its time counted under ``name``."""
        start = self.mark()
        out = fn(*args)
        self.add(name, start)
        return out

    def seconds(self) -> dict[str, float]:
        if self._xp is not np and self._spans:
            self._spans[-1][2].synchronize()  # every earlier event on the stream has completed too
        out: dict[str, float] = {}
        for name, a, b in self._spans:
            dt = b - a if self._xp is np else self._xp.cuda.get_elapsed_time(a, b) / 1000.0
            out[name] = out.get(name, 0.0) + dt
        return out
