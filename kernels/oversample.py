"""Polyphase interpolation by an integer factor (2, 4, 8, 16) for true-peak work.

The interpolation filter is a Kaiser-windowed sinc cut at the input's
Nyquist frequency, designed in float64 on the host: passband to 0.45 fs,
stopband from 0.55 fs at >= 80 dB (checked in the tests), half-length
:data:`HALF_TAPS` input samples on each side whatever the factor. Its length
is ``2 * factor * HALF_TAPS + 1`` so the group delay is a whole number of
input samples: output sample ``factor * n`` *is* input sample ``n`` (a Nyquist
filter), and the oversampled signal is time-aligned with the input.
"""
from __future__ import annotations

import functools

import numpy as np

from . import backend
from .convolve import fftconvolve, fftconvolve_frames

HALF_TAPS = 32  # input samples each side of the centre
PEAK_CHUNK_CPU = 1 << 17  # base samples per peak chunk: cache-sized FFT batches on the host
PEAK_CHUNK_GPU = 1 << 21  # (at 4x; scaled down for higher factors) fewer, fuller launches on the device
STOPBAND_DB = 90.0  # design target; >= 80 dB is what the meter needs


@functools.lru_cache(maxsize=16)
def design(factor: int) -> np.ndarray:
    """The interpolation FIR for ``factor`` as float64 taps (DC gain = factor)."""
    if factor not in (1, 2, 4, 8, 16):
        raise ValueError(f"oversampling factor must be 1, 2, 4, 8 or 16, got {factor!r}")
    if factor == 1:
        return np.ones(1)
    half = factor * HALF_TAPS
    n = np.arange(-half, half + 1, dtype=np.float64)
    beta = 0.1102 * (STOPBAND_DB - 8.7)  # Kaiser's formula for A > 50 dB
    window = np.kaiser(2 * half + 1, beta)
    taps = np.sinc(n / factor) * window  # cutoff fs_in/2; zeros at multiples of factor
    taps *= factor / taps.sum()
    # Exact Nyquist filter: phase 0 is a unit impulse, so input samples pass through.
    taps[::factor] = 0.0
    taps[half] = 1.0
    return taps


@functools.lru_cache(maxsize=16)
def _bank(factor: int) -> np.ndarray:
    """Polyphase bank, shape (factor, 2*HALF_TAPS + 1): phase p holds taps[p::factor]."""
    taps = design(factor)
    width = 2 * HALF_TAPS + 1
    bank = np.zeros((factor, width))
    for p in range(factor):
        phase = taps[p::factor]
        bank[p, :len(phase)] = phase
    return bank


@functools.lru_cache(maxsize=16)
def phase_bank(factors: tuple[int, ...]) -> np.ndarray:
    """Polyphase rows (P, 2*HALF_TAPS + 1), float64, of every non-zero phase
    of every factor: row ``taps[p::factor]`` is what :func:`upsample`
    convolves for output phase ``p`` (phase 0 is the input itself, so it
    needs no row)."""
    return np.concatenate([_bank(factor)[1:] for factor in factors])


def true_peak(x, factor: int):
    """max |upsample(x, factor)| over all channels, as a device scalar.

    Only the non-trivial phases are computed (phase 0 is ``x`` itself), in
    chunks with ``HALF_TAPS`` samples of real context on each side, so the
    result equals the peak of the whole signal upsampled at once (zeros
    beyond its ends) while nothing the size of the oversampled signal is
    allocated (16x a 10-minute 5.1 programme would be ~7 GB in one piece).
    """
    xp = backend.array_module(x)
    x = xp.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    n = x.shape[-1]
    peak = xp.abs(x).max()
    if factor == 1:
        return peak
    dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
    bank = xp.asarray(phase_bank((factor,)), dtype=dtype)
    chunk = PEAK_CHUNK_CPU if xp is np else max(1 << 16, PEAK_CHUNK_GPU * 4 // factor)
    xd = x.astype(dtype, copy=False)
    peaks = [peak.astype(dtype)]
    for s in range(0, n, chunk):  # a loop over chunks of ~10^5-10^6 samples, not over samples
        peaks.append(phase_peaks(xd, 0, s, min(n, s + chunk), n, bank).max())
    return xp.max(xp.stack(peaks))


def phase_peaks(xw, off: int, s: int, e: int, n: int, bank):
    """Per base sample ``s .. e-1`` of an ``n``-sample signal, the largest
    ``|phase|`` over every channel and every row of ``bank`` (polyphase rows,
    :func:`phase_bank`); ``xw`` holds samples ``[off, off + xw.shape[-1])``, at
    least ``[max(0, s - HALF_TAPS), min(n, e + HALF_TAPS))``. The same slice
    goes through the same FFTs whether ``xw`` is the whole signal or a streamed
    window, so the result is the same to the bit."""
    h = HALF_TAPS
    lo, hi = max(0, s - h), min(n, e + h)
    # (C, 1, m) * (P, 2H+1) -> (C, P, m + 2H); signal sample i sits at column i - lo + H.
    # Left in its overlap-save frames: the peak over channels and phases is taken
    # there, and only that (frames, hop) result is joined into one time axis.
    frames = fftconvolve_frames(xw[:, None, lo - off:hi - off], bank)
    return backend.abs_max(frames, (0, 1)).reshape(-1)[s - lo + h:e - lo + h]


@functools.lru_cache(maxsize=16)
def peak_gain(factor: int) -> float:
    """The most interpolation can amplify a signal's peak: max over phases of
    sum |taps| (about 3 for these filters). A change of at most ``e`` per
    sample moves every interpolated value, hence the true peak, by at most
    ``e * peak_gain(factor)``; the chain uses it to keep quantization from
    pushing a limited signal over its ceiling."""
    return float(np.abs(_bank(factor)).sum(axis=1).max())


def upsample(x, factor: int = 4):
    """Interpolate ``x`` (..., N) to (..., N*factor) along the last axis.

    Samples outside the signal are taken as zero (the true peak of a file
    includes the ringing of its first and last samples). Output dtype is the
    input's float dtype; ``out[..., factor*n] == x[..., n]``.
    """
    xp = backend.array_module(x)
    x = xp.asarray(x)
    if factor == 1:
        return x
    dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
    bank = xp.asarray(_bank(factor), dtype=dtype)
    n = x.shape[-1]
    # (..., 1, N) * (factor, 2H+1) -> (..., factor, N + 2H); phase p, input n lives at column n + H
    phases = fftconvolve(x.astype(dtype, copy=False)[..., None, :], bank, mode="full")
    phases = phases[..., HALF_TAPS:HALF_TAPS + n]
    out = xp.swapaxes(phases, -1, -2).reshape(x.shape[:-1] + (n * factor,))
    return out
