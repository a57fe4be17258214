"""FFT convolution along the last axis, on NumPy or CuPy.

``fftconvolve`` mirrors ``scipy.signal.fftconvolve(in1, in2, mode, axes=-1)``
with NumPy broadcasting of the leading axes, so one call convolves every
channel, or one signal with a bank of filters.
"""
from __future__ import annotations

from . import backend

MODES = ("full", "same", "valid")


def fftconvolve(in1, in2, mode: str = "full"):
    """Linear convolution of ``in1`` and ``in2`` along the last axis.

    Leading axes broadcast (``(C, N) * (M,)``, ``(C, 1, N) * (K, M)`` ...).
    ``mode`` is ``full`` (N+M-1 samples), ``same`` (N samples, centred as in
    SciPy) or ``valid``. Output dtype: float32 if both inputs are float32,
    else float64.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    xp = backend.array_module(in1)
    a = xp.asarray(in1)
    b = xp.asarray(in2)
    n, m = a.shape[-1], b.shape[-1]
    if n == 0 or m == 0:
        raise ValueError("fftconvolve needs non-empty inputs on the last axis")
    dtype = xp.float32 if (a.dtype == xp.float32 and b.dtype == xp.float32) else xp.float64
    full = n + m - 1
    f = backend.fft(xp)
    size = f.next_fast_len(full)
    spec = f.rfft(a, size) * f.rfft(b, size)
    out = f.irfft(spec, size)[..., :full].astype(dtype, copy=False)
    return _crop(out, n, m, mode)


def _crop(full, n: int, m: int, mode: str):
    if mode == "full":
        return full
    if mode == "same":
        start = (m - 1) // 2
        return full[..., start:start + n]
    lo, hi = min(n, m), max(n, m)
    return full[..., lo - 1:hi]
