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
from .stream import Streamer

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
    size = block_size(x.shape[-1], h.shape[-1])
    if size is None:
        full = _single_fft(xp, x, h, lambda s, hs: _mix(s, hs, False))
    else:
        full = _overlap_save(xp, x, h, size, lambda s, hs: _mix(s, hs, True))
    return full.astype(dtype, copy=False)


class SampleQueue:
    """FIFO of (channels, k) blocks: appends are O(1), taking concatenates once."""

    def __init__(self):
        self._parts = []
        self.size = 0  # samples queued

    def append(self, x) -> None:
        if x.shape[-1]:
            self._parts.append(x)
            self.size += x.shape[-1]

    def take(self, k: int, extra: int = 0):
        """The first ``k + extra`` queued samples; only the first ``k`` leave the queue."""
        xp = backend.array_module(self._parts[0])
        seg = self._parts[0] if len(self._parts) == 1 else xp.concatenate(self._parts, axis=-1)
        rest = seg[..., k:]
        self._parts = [rest] if rest.shape[-1] else []
        self.size = rest.shape[-1]
        return seg[..., :k + extra]


class ConvolveStream(Streamer):
    """Samples ``[offset, offset + length)`` of the full convolution of a
    (channels, total) signal with ``h``, block by block.

    ``h``: (M,) or (1, M) for every channel, (channels, M) per channel (as
    :func:`fftconvolve`), or (C_out, channels, M) true stereo / MIMO (as
    :func:`convolve_mimo`). With ``bank=True``, ``h`` (B, M) is a filter bank
    applied to every channel, as ``fftconvolve(x[:, None, :], h)``: output row
    ``c * B + b`` is channel ``c`` through filter ``b`` (each channel is
    transformed once, not once per filter). ``length`` defaults to the rest of the full
    ``total + M - 1`` samples (``offset=(M-1)//2, length=total`` is the
    "same" crop). Output dtype: float32 if the blocks and ``h`` are, else
    float64; with ``cast=True`` ``h`` is first cast to the blocks' float
    dtype (float64 for other dtypes) and moved to their backend, as
    ``apply_eq``/``apply_reverb`` do with host float64 filters.

    Holds M - 1 samples of history plus at most one FFT frame of input
    (:func:`block_size`) between blocks. When the whole-signal functions
    would use a single FFT (a signal not much longer than the filter) the
    streamer queues the signal (then bounded by a few filter lengths) and
    convolves it at :meth:`finish`.
    """

    def __init__(self, h, channels: int, total: int, offset: int = 0, length: int | None = None,
                 cast: bool = False, bank: bool = False):
        self.mimo = h.ndim == 3
        self.bank = bank
        if h.ndim not in (1, 2, 3) or h.shape[-1] == 0 or (self.mimo and h.shape[1] != channels) or (
                h.ndim == 2 and h.shape[0] not in (1, channels) and not bank) or (bank and h.ndim != 2):
            raise ValueError(f"a filter shaped {tuple(h.shape)} does not fit a {channels}-channel signal; "
                             f"use (M,), (1, M), ({channels}, M), (C_out, {channels}, M) or a (B, M) bank")
        self.h, self.channels, self.total, self.cast = h, channels, int(total), cast
        self.m = m = int(h.shape[-1])
        self.c_out = int(h.shape[0]) if self.mimo else channels * int(h.shape[0]) if bank else channels
        full = self.total + m - 1
        self.offset = int(offset)
        self.stop = full if length is None else self.offset + int(length)
        if not 0 <= self.offset <= self.stop <= full:
            raise ValueError(f"samples [{offset}, {self.stop}) are not within the {full}-sample convolution")
        # the whole-signal functions' plan: fftconvolve treats the longer input as the signal
        self.size = block_size(self.total, m) if (self.mimo or self.total >= m) else None
        self.hop = None if self.size is None else self.size - m + 1
        self._queue = SampleQueue()
        self._received = 0  # input samples pushed
        self._frames = 0  # overlap-save frames done
        self._pos = 0  # full-convolution samples produced
        self._xp = self._dtype = self._spec = None

    def _setup(self, x):
        xp = self._xp = backend.array_module(x)
        if self.cast:
            dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
        else:
            h = xp.asarray(self.h)
            dtype = xp.float32 if (x.dtype == xp.float32 and h.dtype == xp.float32) else xp.float64
        self._dtype = dtype
        self.h = xp.asarray(self.h, dtype=dtype)
        if self.size is not None:
            self._spec = backend.fft(xp).rfft(self.h, self.size)  # once, as the whole-signal path does
            self._queue.append(xp.zeros((self.channels, self.m - 1), dtype=dtype))  # the leading M-1 zeros

    def _empty(self):
        xp = self._xp or backend.array_module(self.h)
        return xp.zeros((self.c_out, 0), dtype=xp.float32 if self._dtype is None else self._dtype)

    def push(self, x):
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, k) block, got {tuple(x.shape)}")
        self._received += x.shape[-1]
        if self._received > self.total:
            raise ValueError(f"more than the announced {self.total} samples were pushed")
        if self._xp is None:
            self._setup(x)
        self._queue.append(x.astype(self._dtype))  # a copy: callers may reuse their block buffers
        if self.size is None:
            return self._empty()
        return self._frames_out((self._queue.size - (self.m - 1)) // self.hop)

    def finish(self):
        if self._received != self.total:
            raise ValueError(f"{self._received} samples were pushed, {self.total} announced")
        if self._xp is None:  # no block at all
            raise ValueError("convolution needs non-empty inputs on the last axis")
        if self.size is None:
            x = self._queue.take(self._queue.size)
            if self.mimo:
                full = convolve_mimo(x, self.h)
            elif self.bank:
                full = fftconvolve(x[:, None, :], self.h).reshape(self.c_out, -1)
            else:
                full = fftconvolve(x, self.h)
            return self._crop(full)
        frames = -(-(self.total + self.m - 1) // self.hop) - self._frames
        pad = frames * self.hop + self.m - 1 - self._queue.size  # the zeros past the end
        if pad > 0:
            self._queue.append(self._xp.zeros((self.channels, pad), dtype=self._dtype))
        return self._frames_out(frames)

    def _frames_out(self, frames: int):
        """The next ``frames`` overlap-save frames' outputs, cropped."""
        if frames <= 0:
            return self._empty()
        xp, m, hop = self._xp, self.m, self.hop
        f = backend.fft(xp)
        seg = self._queue.take(frames * hop, m - 1)
        body = seg[:, :frames * hop].reshape(self.channels, frames, hop)
        heads = xp.concatenate([body[:, 1:, :m - 1], seg[:, None, frames * hop:]], axis=1)
        framed = xp.concatenate([body, heads], axis=-1)  # (channels, frames, size)
        spec = f.rfft(framed, self.size)
        del framed
        if self.mimo:
            spec = _mix(spec, self._spec, True)
        elif self.bank:  # (C, 1, frames, F) * (B, 1, F) -> (C * B, frames, F), as fftconvolve broadcasts
            spec = _multiply(spec[:, None], self._spec[:, None, :]).reshape(self.c_out, frames, -1)
        else:
            spec = _multiply(spec, self._spec[..., None, :])
        out = f.irfft(spec, self.size)[..., m - 1:]
        self._frames += frames
        return self._crop(out.reshape(out.shape[:-2] + (frames * hop,)))

    def _crop(self, y):
        a = self._pos
        self._pos += y.shape[-1]
        lo, hi = max(a, self.offset), min(self._pos, self.stop)
        return y[..., lo - a:hi - a] if hi > lo else self._empty()


def _mix(spec_x, spec_h, frames: bool):
    """``sum_i spec_x[..., i] * spec_h[:, i]``: spec_x (..., C_in[, K], F), spec_h
    (C_out, C_in, F) -> (..., C_out[, K], F); ``frames`` says whether the K axis is there."""
    tail = (slice(None),) * (2 if frames else 1)  # the [K,] F axes
    hh = spec_h[..., None, :] if frames else spec_h
    out = spec_x[(Ellipsis, slice(0, 1)) + tail] * hh[:, 0]
    for i in range(1, spec_h.shape[1]):  # loop over channels, not samples
        out += spec_x[(Ellipsis, slice(i, i + 1)) + tail] * hh[:, i]
    return out


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


def fftconvolve_frames(in1, in2):
    """The full convolution of :func:`fftconvolve` as a (..., frames, hop) view
    whose flat sample ``k = frame * hop + i`` is output sample ``k`` (the
    ``n + m - 1`` first are the convolution, the rest the frames' spare tail).
    The same values, bit for bit, without the copy that
    joins the frames into one time axis: for a reduction over the leading axes
    (a peak detector) that copy costs as much as the inverse FFTs."""
    xp = backend.array_module(in1)
    a, b, _ = _as_real(xp, in1, in2)
    n, m = a.shape[-1], b.shape[-1]
    size = block_size(n, m) if n >= m else None
    if size is None:  # one FFT (or the inputs swapped): already one time axis
        return fftconvolve(in1, in2)[..., None, :]
    return _overlap_save_frames(xp, a, b, size, lambda s, h: _multiply(s, h[..., None, :]))


def _overlap_save(xp, a, b, size: int, combine):
    """Full convolution of a long ``a`` (..., N) with ``b`` (..., M) by overlap-save."""
    out = _overlap_save_frames(xp, a, b, size, combine)
    full = a.shape[-1] + b.shape[-1] - 1
    return out.reshape(out.shape[:-2] + (out.shape[-2] * out.shape[-1],))[..., :full]


def _overlap_save_frames(xp, a, b, size: int, combine):
    """Overlap-save of a long ``a`` (..., N) with ``b`` (..., M): the frames'
    outputs (..., frames, hop), a view of the inverse FFTs.

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
    return f.irfft(spec, size)[..., m - 1:]


def _crop(full, n: int, m: int, mode: str):
    if mode == "full":
        return full
    if mode == "same":
        start = (m - 1) // 2
        return full[..., start:start + n]
    lo, hi = min(n, m), max(n, m)
    return full[..., lo - 1:hi]
