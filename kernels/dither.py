"""Quantization to 16 or 24 bit with TPDF dither and optional noise shaping.

The output stays floating point but every value lies on the integer grid of
the target depth (``k / 2**(bits-1)``, ``k`` in ``[-2**(bits-1), 2**(bits-1)-1]``),
so libsndfile writes it to PCM exactly.

* TPDF dither: the sum of two independent uniform variables of 1 LSB each
  (2 LSB peak to peak), which makes the first two moments of the rounding
  error independent of the signal (Wannamaker, Lipshitz & Vanderkooy 1992).
* Noise shaping (``"lipshitz"``): error feedback through the 5-tap
  E-weighted filter of Lipshitz, Vanderkooy & Wannamaker, "Minimally audible
  noise shaping", JAES 39(11), 1991, designed for 44.1 kHz. The noise
  transfer function is ``1 - sum_k h[k] z^-(k+1)``: about -16 dB at DC and
  +19 dB at Nyquist.

Error feedback is a nonlinear recursion (the quantizer sits inside the
loop), so it has no associative form. It runs *chunk-parallel*: the signal is
cut into :data:`SHAPING_CHUNK`-sample chunks processed side by side (vectorised
over chunks and channels), each with a fresh filter state. The loop is over
the position inside a chunk, not over the samples of the track; a fresh
state only makes the first five samples of each chunk unshaped (white TPDF
noise), which moves the long-term spectrum by well under 0.1 dB.

On the host the feedback loop runs compiled (Numba), on a device as one
RawKernel (:data:`SHAPING_CUDA`, a thread per chunk); flat quantization on a
device is one RawKernel per block (:data:`FLAT_CUDA`). The array code is the
reference both are held to.

The TPDF noise is drawn from one generator (seeded by ``params.seed``) block
by block, :data:`DITHER_BLOCK_CPU` samples on the host and
:data:`DITHER_BLOCK_GPU` on the device, the same for flat and shaped
quantization. Both block sizes are multiples of :data:`SHAPING_CHUNK`, so
:class:`QuantizeStream`, which works on the same blocks, gives the
whole-signal output bit for bit whatever blocks it is fed.
"""
from __future__ import annotations

import functools

import numpy as np

from . import backend
from .convolve import SampleQueue
from .params import DitherParams
from .stream import Identity, Streamer

LIPSHITZ_44K = (2.033, -2.165, 1.959, -1.590, 0.6149)
SHAPING_CHUNK = 4096  # samples per chunk of the chunk-parallel error feedback
HOST_COMPILED = True  # NumPy inputs run the compiled feedback loop (False: the device's vectorised one)
DITHER_BLOCK_CPU = 1 << 16  # samples per block of TPDF draws and flat quantization on the host
DITHER_BLOCK_GPU = 1 << 22  # the same on the device (fewer, larger kernel launches)


def lsb(bit_depth: int) -> float:
    """One least significant bit at ``bit_depth``, in full-scale units."""
    return 2.0 ** (1 - bit_depth)


def max_error_lsb(params: DitherParams) -> float:
    """Worst-case |output - input| in LSB (rounding + dither + shaped feedback).

    The chain lowers the limiter's working ceiling by this much so the
    quantized output still meets the true-peak ceiling.
    """
    if params.bypass or params.bit_depth is None:
        return 0.0
    e = 0.5 + (1.0 if params.dither else 0.0)  # rounding + TPDF (|d| < 1 LSB)
    if params.noise_shaping == "lipshitz":
        e *= 1.0 + float(np.sum(np.abs(LIPSHITZ_44K)))
    return e


def dither_block(xp) -> int:
    """Samples per block of TPDF draws on this backend (the noise's grid)."""
    return DITHER_BLOCK_CPU if xp is np else DITHER_BLOCK_GPU


def _tpdf(xp, g, shape, block: int):
    """TPDF dither in LSB for ``shape`` (..., n), drawn from ``g`` block by block
    exactly as the flat path draws it (two uniforms per sample, per block)."""
    d = xp.empty(shape, dtype=xp.float64)
    for s in range(0, shape[-1], block):  # a loop over blocks, not samples
        b = d[..., s:s + block]
        r = g.random(b.shape, dtype=xp.float64)
        xp.subtract(r, g.random(b.shape, dtype=xp.float64), out=b)
    return d


def quantize(x, params: DitherParams):
    """Quantize ``x`` (channels, samples) to ``params.bit_depth`` with dither.

    Returns float32 values on the PCM grid, clipped to the representable
    range. ``bit_depth=None`` or ``bypass`` returns ``x`` unchanged.
    """
    if params.bypass or params.bit_depth is None:
        return x
    xp = backend.array_module(x)
    g = xp.random.default_rng(params.seed) if params.dither else None
    return _quantize(xp, xp.asarray(x), params, g)


def _quantize(xp, x, params: DitherParams, g):
    """:func:`quantize` of ``x`` drawing from generator ``g`` (None: no dither).

    Consecutive calls on consecutive segments that start on the
    :func:`dither_block` grid give the same output as one call on the whole.
    """
    scale = 2.0 ** (params.bit_depth - 1)
    block = dither_block(xp)
    if params.noise_shaping == "lipshitz":
        # float64 internally: float32 cannot hold every 24-bit code next to a fraction
        d = _tpdf(xp, g, x.shape, block) if g is not None else None
        if backend.raw_kernels(xp):
            return _shaped_device(x, d, scale)
        if xp is np and HOST_COMPILED:
            return _shaped_host(x, d, scale)
        v = x.astype(xp.float64) * scale
        q = xp.clip(_shaped(xp, v, d), -scale, scale - 1.0)
        return (q / scale).astype(xp.float32)
    # Flat TPDF, block by block in place: float64 temporaries of one block stay in
    # cache on the host (8 whole-track float64 arrays took ~1 s for 4 min stereo).
    out = xp.empty(x.shape, dtype=xp.float32)
    n = x.shape[-1]
    fused = backend.raw_kernels(xp) and x.dtype == xp.float32 and x.ndim == 2 and x.strides[-1] == x.itemsize
    for s in range(0, n, block):  # a loop over blocks of 64k samples, not over samples
        xs = x[..., s:s + block]
        r1 = r2 = None
        if g is not None:  # the block's two uniform draws, in this order
            r1 = g.random(xs.shape, dtype=xp.float64)
            r2 = g.random(xs.shape, dtype=xp.float64)
        if fused:  # one pass on the device (FLAT_CUDA)
            work, args = flat_args(xs, r1, r2, scale, out[:, s:s + block])
            backend.launch(FLAT_CUDA, "farm_tpdf_quantize", work, args)
        else:
            out[..., s:s + block] = flat_block(xp, xs, r1, r2, scale)
    return out


def flat_block(xp, xs, r1, r2, scale: float):
    """One block of flat TPDF quantization in float64 (full-scale units on the
    PCM grid): ``clip(rint(xs * scale + r1 - r2), -scale, scale - 1) / scale``,
    without dither when ``r1`` is None."""
    v = xs.astype(xp.float64)
    v *= scale
    if r1 is not None:
        v += r1
        v -= r2
    xp.rint(v, out=v)
    xp.clip(v, -scale, scale - 1.0, out=v)
    v /= scale
    return v


# flat_block in one pass on the device: reads the float32 block and its draws once,
# writes the float32 output (the array path's five float64 passes per block); its
# float64 operations in their order, so the same bits.
FLAT_CUDA = r"""
extern "C" __global__ void farm_tpdf_quantize(
        const float* __restrict__ x, const long long x_row, const double* __restrict__ r1,
        const double* __restrict__ r2, const int dithered, const long long rows, const long long m,
        const double scale, float* __restrict__ out, const long long out_row) {
    const double top = scale - 1.0;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < rows * m;
         t += (long long)blockDim.x * gridDim.x) {
        const long long r = t / m, i = t - r * m;
        double v = (double)x[r * x_row + i] * scale;
        if (dithered) {
            v = v + r1[t];
            v = v - r2[t];
        }
        v = rint(v);
        v = fmin(fmax(v, -scale), top);
        out[r * out_row + i] = (float)(v / scale);
    }
}
"""


def flat_args(xs, r1, r2, scale: float, out) -> tuple[int, tuple]:
    """(work items, arguments) of :data:`FLAT_CUDA` for a float32 block ``xs``
    (rows, m) and ``out`` like it (views whose rows are contiguous), draws ``r1``,
    ``r2`` C-contiguous (rows, m) float64 or None."""
    rows, m = xs.shape
    assert xs.strides[-1] == xs.itemsize and out.strides[-1] == out.itemsize
    dithered = r1 is not None
    if not dithered:  # not read: an empty array of the parameter's type
        r1 = r2 = backend.array_module(xs).empty(0, dtype=np.float64)
    return rows * m, (xs, np.int64(xs.strides[0] // xs.itemsize), r1, r2, np.int32(dithered), np.int64(rows),
                      np.int64(m), np.float64(scale), out, np.int64(out.strides[0] // out.itemsize))


class QuantizeStream(Streamer):
    """:func:`quantize` block by block for a (channels, n) signal, equal to it
    bit for bit for any block sizes.

    The TPDF noise is drawn per :func:`dither_block` block (64k samples on
    the host), so with dither or noise shaping the streamer holds back up to
    one block until the block is complete (or :meth:`finish`); undithered
    flat rounding is per sample and passes straight through. Bypass or
    ``bit_depth=None`` passes blocks through unchanged.
    """

    def __init__(self, params: DitherParams, channels: int):
        self.params, self.channels = params, channels
        self._inner = Identity(channels) if (params.bypass or params.bit_depth is None) else None
        self._queue = SampleQueue()
        self._xp = self._g = None
        # flat undithered rounding has no grid; shaping's chunks (4096) divide the dither block
        self._grid = None if (params.dither or params.noise_shaping == "lipshitz") else 1

    def push(self, x):
        if self._inner is not None:
            return self._inner.push(x)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, k) block, got {tuple(x.shape)}")
        if self._xp is None:
            self._xp = backend.array_module(x)
            self._g = self._xp.random.default_rng(self.params.seed) if self.params.dither else None
            if self._grid is None:
                self._grid = dither_block(self._xp)
        if self._grid == 1:
            return _quantize(self._xp, x, self.params, None)
        self._queue.append(x.astype(self._xp.float32 if x.dtype == self._xp.float32 else self._xp.float64))
        ready = self._queue.size // self._grid * self._grid
        if not ready:
            return self._xp.zeros((self.channels, 0), dtype=self._xp.float32)
        return _quantize(self._xp, self._queue.take(ready), self.params, self._g)

    def finish(self):
        if self._inner is not None:
            return self._inner.finish()
        xp = self._xp or np
        if not self._queue.size:
            return xp.zeros((self.channels, 0), dtype=xp.float32)
        return _quantize(xp, self._queue.take(self._queue.size), self.params, self._g)


def _shaped(xp, v, d):
    """Chunk-parallel error-feedback quantization of ``v`` (already in LSB units),
    vectorised over chunks: the loop is over the position inside a chunk. The
    readable reference: the host runs :func:`_shaped_host` and the device
    :data:`SHAPING_CUDA`, each held to this bit for bit by the tests (on a device
    the loop's ~15 launches per position were ~60 000 per track)."""
    h = LIPSHITZ_44K
    order = len(h)
    lead = v.shape[:-1]
    n = v.shape[-1]
    chunks = -(-n // SHAPING_CHUNK)
    pad = chunks * SHAPING_CHUNK - n
    vv = xp.pad(v, [(0, 0)] * len(lead) + [(0, pad)]).reshape(lead + (chunks, SHAPING_CHUNK))
    dd = None
    if d is not None:
        dd = xp.pad(d, [(0, 0)] * len(lead) + [(0, pad)]).reshape(lead + (chunks, SHAPING_CHUNK))
    out = xp.empty_like(vv)
    hist = [xp.zeros(lead + (chunks,), dtype=vv.dtype) for _ in range(order)]  # e[n-1], e[n-2], ...
    for i in range(SHAPING_CHUNK):
        want = vv[..., i] - sum(hk * ek for hk, ek in zip(h, hist))
        y = xp.rint(want + dd[..., i]) if dd is not None else xp.rint(want)
        out[..., i] = y
        hist = [y - want] + hist[:-1]
    return out.reshape(lead + (chunks * SHAPING_CHUNK,))[..., :n]


def _shaped_host(x: np.ndarray, d: np.ndarray | None, scale: float) -> np.ndarray:
    """The noise-shaped quantization of ``x`` on the host (``_quantize``'s
    lipshitz branch: scale, :func:`_shaped`, clip, back to full scale) with every
    chunk's feedback loop compiled (Numba) and the vectorised path's float64
    operations in its order, so the same bits. 4 min of 48 kHz stereo to 16 bit
    with TPDF: 2.5-2.6 s vectorised on the host, see bench/RESULTS.md."""
    lead, n = x.shape[:-1], x.shape[-1]
    rows = np.ascontiguousarray(x).reshape(-1, n)
    noise = np.zeros((1, 1)) if d is None else np.ascontiguousarray(d, dtype=np.float64).reshape(-1, n)
    out = np.empty(rows.shape, dtype=np.float32)
    assert len(LIPSHITZ_44K) == 5  # the loop holds the five errors in registers
    if out.size:
        _shaping_loop()(rows, noise, d is not None, np.asarray(LIPSHITZ_44K, dtype=np.float64), SHAPING_CHUNK,
                        float(scale), out)
    return out.reshape(lead + (n,))


# The same loop for the device: one thread per (row, chunk), the errors in
# registers, the host loop's float64 operations in its order (RawKernels are
# compiled without fused multiply-adds, backend.RAW_KERNEL_OPTIONS).
SHAPING_CUDA = r"""
extern "C" __global__ void farm_lipshitz_shape(
        const double* __restrict__ x, const double* __restrict__ d, const int dithered,
        const long long rows, const long long n, const long long chunk, const double scale,
        const double h0, const double h1, const double h2, const double h3, const double h4,
        float* __restrict__ out) {
    const long long chunks = (n + chunk - 1) / chunk;
    const long long total = rows * chunks;
    const double top = scale - 1.0;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)blockDim.x * gridDim.x) {
        const long long r = t / chunks, c = t % chunks;
        const long long s = r * n + c * chunk;
        const long long e = r * n + ((c + 1) * chunk < n ? (c + 1) * chunk : n);
        double e0 = 0.0, e1 = 0.0, e2 = 0.0, e3 = 0.0, e4 = 0.0;  /* a fresh state per chunk */
        for (long long i = s; i < e; ++i) {
            double acc = 0.0 + h0 * e0;
            acc = acc + h1 * e1;
            acc = acc + h2 * e2;
            acc = acc + h3 * e3;
            acc = acc + h4 * e4;
            const double want = x[i] * scale - acc;
            const double y = rint(dithered ? want + d[i] : want);
            e4 = e3; e3 = e2; e2 = e1; e1 = e0; e0 = y - want;
            const double q = fmin(fmax(y, -scale), top);
            out[i] = (float)(q / scale);
        }
    }
}
"""


def shaping_args(x, d, scale: float, out) -> tuple[int, tuple]:
    """(work items, arguments) of :data:`SHAPING_CUDA` for contiguous ``x`` and
    ``d`` (rows, n) float64 (``d`` None without dither), ``out`` (rows, n) float32."""
    rows, n = x.shape
    work = rows * -(-n // SHAPING_CHUNK)
    noise = x if d is None else d  # not read without dither
    taps = tuple(np.float64(h) for h in LIPSHITZ_44K)
    return work, (x, noise, np.int32(d is not None), np.int64(rows), np.int64(n), np.int64(SHAPING_CHUNK),
                  np.float64(scale), *taps, out)


def _shaped_device(x, d, scale: float):
    """The noise-shaped quantization of ``x`` on the device (:data:`SHAPING_CUDA`)."""
    xp = backend.array_module(x)
    lead, n = x.shape[:-1], x.shape[-1]
    rows = xp.ascontiguousarray(x, dtype=xp.float64).reshape(-1, n)  # exact for float32 input
    noise = None if d is None else xp.ascontiguousarray(d, dtype=xp.float64).reshape(-1, n)
    out = xp.empty(rows.shape, dtype=xp.float32)
    if out.size:
        work, args = shaping_args(rows, noise, scale, out)
        backend.launch(SHAPING_CUDA, "farm_lipshitz_shape", work, args)
    return out.reshape(lead + (n,))


@functools.lru_cache(maxsize=1)
def _shaping_loop():
    import numba

    @numba.njit(cache=True, nogil=True)
    def loop(x, d, dithered, h, chunk, scale, out):
        rows, n = x.shape
        h0, h1, h2, h3, h4 = h[0], h[1], h[2], h[3], h[4]
        top = scale - 1.0
        for r in range(rows):
            for s in range(0, n, chunk):
                e0 = e1 = e2 = e3 = e4 = 0.0  # every chunk starts from a fresh filter state
                for i in range(s, min(n, s + chunk)):
                    # sum(h_k * e_k) in the vectorised loop's order (Python's sum starts from 0)
                    acc = 0.0 + h0 * e0
                    acc = acc + h1 * e1
                    acc = acc + h2 * e2
                    acc = acc + h3 * e3
                    acc = acc + h4 * e4
                    want = np.float64(x[r, i]) * scale - acc
                    y = np.rint(want + d[r, i]) if dithered else np.rint(want)
                    e4, e3, e2, e1, e0 = e3, e2, e1, e0, y - want
                    q = min(max(y, -scale), top)  # xp.clip
                    out[r, i] = np.float32(q / scale)

    return loop
