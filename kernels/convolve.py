"""FFT convolution along the last axis, on NumPy or CuPy.

``fftconvolve`` mirrors ``scipy.signal.fftconvolve(in1, in2, mode, axes=-1)``
with NumPy broadcasting of the leading axes, so one call convolves every
channel, or one signal with a bank of filters. ``convolve_mimo`` is the
true-stereo (C_out x C_in matrix of filters) form, summing the inputs in the
frequency domain.

A long signal and a shorter filter go through overlap-save: the signal is
cut into frames of ``L`` samples overlapping by ``M - 1`` (``M`` the filter
length), every frame of every channel is transformed in one batched FFT,
multiplied by the filter's spectrum (transformed once) and the last
``L - M + 1`` samples of each inverse frame are kept. Small cache-resident
FFTs in one batch beat one huge FFT of the whole track on the CPU and keep
device memory bounded on the GPU. When the filter is not much shorter than
the signal (an IR longer than the track, say) a single FFT of the whole
output is used. Both paths give the full linear convolution exactly (up to
floating-point rounding): any lengths, no circular wrap-around.
"""
from __future__ import annotations

import numpy as np

from . import backend

MODES = ("full", "same", "valid")

# Overlap-save FFT size: the smallest fast size >= 8 M (4 M for filters
# over 64k taps), and at least MIN_BLOCK. Measured with scipy.fft on a 2-core
# EPYC, 4 min 48 kHz stereo float32 (whole-track single FFT: 0.8-1.2 s):
#   M = 1024:   L = 4M 0.16 s, 8M 0.12 s, 16M 0.12 s
#   M = 8192:   L = 3M 0.16 s, 4M 0.14 s, 8M 0.13 s, 12M 0.13 s
#   M = 32768:  L = 4M 0.15 s, 8M 0.14 s, 16M 0.21 s
#   M = 144000: L = 3M 0.23 s, 4M 0.24 s, 8M 0.26 s, 12M 0.27 s
# Below ~4x the M-1 overlap makes each frame mostly redundant; past ~2^19
# points the FFTs fall out of cache. A fixed lower bound keeps tiny filters
# (the oversampler's 65-tap phases: 1.65 s -> 0.4 s) from drowning in
# per-frame overhead.
BLOCK_FACTOR = 8
LARGE_BLOCK_FACTOR = 4
LARGE_BLOCK = 2 ** 19
MIN_BLOCK = 4096
# Use overlap-save only when the signal spans at least this many hops;
# otherwise a single FFT of the whole output is as fast and simpler.
MIN_FRAMES = 4


def block_size(n: int, m: int) -> int | None:
    """Overlap-save FFT size (samples) for an ``n``-sample signal and an
    ``m``-tap filter, or ``None`` when one FFT of the whole ``n + m - 1``
    output is the better plan."""
    target = BLOCK_FACTOR * m
    if target > LARGE_BLOCK:
        target = max(LARGE_BLOCK, LARGE_BLOCK_FACTOR * m)
    size = backend.FFT.next_fast_len(max(target, MIN_BLOCK))
    hop = size - m + 1
    if n < MIN_FRAMES * hop:
        return None
    return size


def fftconvolve(in1, in2, mode: str = "full"):
    """Linear convolution of ``in1`` and ``in2`` along the last axis.

    Leading axes broadcast (``(C, N) * (M,)``, ``(C, 1, N) * (K, M)`` ...).
    ``mode`` is ``full`` (N+M-1 samples), ``same`` (N samples, centred as in
    SciPy) or ``valid``. Inputs are real. Output dtype: float32 if both
    inputs are float32, else float64. Uses overlap-save when one input is
    much longer than the other (see :func:`block_size`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    xp = backend.array_module(in1)
    a, b, dtype = _as_real(xp, in1, in2)
    n, m = a.shape[-1], b.shape[-1]
    # Convolution commutes: treat the longer input as the signal (the full
    # result is the same; cropping below uses the caller's n and m).
    sig, fil = (a, b) if n >= m else (b, a)
    size = block_size(sig.shape[-1], fil.shape[-1])
    if size is None:
        full = _single_fft(xp, sig, fil, _multiply)
    else:
        full = _overlap_save(xp, sig, fil, size, lambda s, h: _multiply(s, h[..., None, :]))
    return _crop(full.astype(dtype, copy=False), n, m, mode)


def convolve_mimo(x, h):
    """True-stereo / MIMO convolution: ``y[o] = sum_i x[i] * h[o, i]``.

    ``x`` is (..., C_in, N), ``h`` is (C_out, C_in, M); returns
    (..., C_out, N + M - 1) ("full" length). The sum over inputs happens in
    the frequency domain, so the cost is C_in forward and C_out inverse FFTs
    per block. Output dtype as :func:`fftconvolve`.
    """
    xp = backend.array_module(x)
    x, h, dtype = _as_real(xp, x, h)
    if x.ndim < 2 or h.ndim != 3 or h.shape[1] != x.shape[-2]:
        raise ValueError(
            f"convolve_mimo needs x shaped (..., C_in, N) and h shaped (C_out, C_in, M) with "
            f"matching C_in; got x {tuple(x.shape)} and h {tuple(h.shape)}")
    c_in = x.shape[-2]

    def mix(spec_x, spec_h, frames):
        # spec_x (..., C_in[, K], F), spec_h (C_out, C_in, F) -> (..., C_out[, K], F)
        tail = (slice(None),) * (2 if frames else 1)  # the [K,] F axes
        hh = spec_h[..., None, :] if frames else spec_h
        out = spec_x[(Ellipsis, slice(0, 1)) + tail] * hh[:, 0]
        for i in range(1, c_in):  # loop over channels, not samples
            out += spec_x[(Ellipsis, slice(i, i + 1)) + tail] * hh[:, i]
        return out

    size = block_size(x.shape[-1], h.shape[-1])
    if size is None:
        full = _single_fft(xp, x, h, lambda s, hs: mix(s, hs, False))
    else:
        full = _overlap_save(xp, x, h, size, lambda s, hs: mix(s, hs, True))
    return full.astype(dtype, copy=False)


def _as_real(xp, in1, in2):
    a = xp.asarray(in1)
    b = xp.asarray(in2)
    if a.shape[-1:] == (0,) or b.shape[-1:] == (0,) or a.ndim == 0 or b.ndim == 0:
        raise ValueError("convolution needs non-empty inputs on the last axis")
    if xp.iscomplexobj(a) or xp.iscomplexobj(b):
        raise TypeError("these convolutions take real signals; convolve the real and "
                        "imaginary parts separately for complex data")
    dtype = xp.float32 if (a.dtype == xp.float32 and b.dtype == xp.float32) else xp.float64
    # Transform in the output precision: a float32 FFT of one input would cap
    # the accuracy of a float64 result.
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False), dtype


def _multiply(s, h):
    # In place when broadcasting does not grow the signal's spectra: saves
    # an allocation the size of the whole framed track.
    if tuple(s.shape) == tuple(np.broadcast_shapes(s.shape, h.shape)):
        s *= h
        return s
    return s * h


def _single_fft(xp, a, b, combine):
    """Full convolution with one FFT of the whole output length."""
    f = backend.fft(xp)
    full = a.shape[-1] + b.shape[-1] - 1
    size = f.next_fast_len(full)
    spec = combine(f.rfft(a, size), f.rfft(b, size))
    return f.irfft(spec, size)[..., :full]


def _overlap_save(xp, a, b, size: int, combine):
    """Full convolution of a long ``a`` (..., N) with ``b`` (..., M) by overlap-save.

    Frame k holds padded samples [k*hop, k*hop + size) of ``[zeros(M-1), a,
    zeros]``; after the circular convolution its last ``hop`` samples are
    the linear convolution's outputs [k*hop, (k+1)*hop).
    """
    f = backend.fft(xp)
    n, m = a.shape[-1], b.shape[-1]
    full = n + m - 1
    hop = size - m + 1
    frames = -(-full // hop)
    # size >= 2m - 1 so the overlap (m - 1) fits in one hop: each frame is a
    # block of the padded signal plus the head of the next block, built by
    # reshape + concatenate (no strided views, same on CuPy).
    if m - 1 > hop:
        raise ValueError(f"overlap-save needs an FFT size >= 2*M - 1 = {2 * m - 1}, got {size}")
    pad = [(0, 0)] * (a.ndim - 1) + [(m - 1, (frames + 1) * hop - (m - 1) - n)]
    blocks = xp.pad(a, pad).reshape(a.shape[:-1] + (frames + 1, hop))
    framed = xp.concatenate([blocks[..., :-1, :], blocks[..., 1:, :m - 1]], axis=-1)
    del blocks
    spec = combine(f.rfft(framed, size), f.rfft(b, size))
    del framed
    out = f.irfft(spec, size)[..., m - 1:]
    return out.reshape(out.shape[:-2] + (frames * hop,))[..., :full]


def _crop(full, n: int, m: int, mode: str):
    if mode == "full":
        return full
    if mode == "same":
        start = (m - 1) // 2
        return full[..., start:start + n]
    lo, hi = min(n, m), max(n, m)
    return full[..., lo - 1:hi]
