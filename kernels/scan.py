"""Exact parallel scans for first-order recursions, on NumPy or CuPy.

The recursions of a mastering chain (limiter release, compressor envelope
followers, one-pole smoothers) are sequential per sample, which is fatal on a
GPU and slow in NumPy. The ones here are *affine-min* maps

    y[n] = min(t[n], a[n] * y[n-1] + b[n]),       a[n] >= 0

(or the same with ``max``), and their maps compose in closed form: with
``f_i(y) = min(T_i, A_i*y + B_i)`` and ``A_2 >= 0``,

    f_2(f_1(y)) = min(T_2, A_2*T_1 + B_2,  A_2*A_1*y + A_2*B_1 + B_2)
               =: min(T, A*y + B),

because multiplying by ``A_2 >= 0`` and adding ``B_2`` are monotone, so they
distribute over the inner ``min``. Composition is associative, so the prefix
compositions ``f_n o ... o f_0`` form an associative scan, and
``y[n] = (f_n o ... o f_0)(y[-1])``. The ``max`` form is the same algebra
with ``max`` in place of ``min`` (equivalently ``-min(-t, a*(-y) - b)``);
without ``t`` it is the plain linear recursion ``y = a*y + b``.

Algorithm (a blocked scan, all vectorised ``xp`` operations, no loop over
samples): the last axis is cut into blocks of :data:`BLOCK` samples; within
every block at once a Hillis-Steele scan composes each element with the one
``2^k`` before it (``log2(BLOCK)`` passes); each block's total map is then
scanned across blocks by the same function recursively (``1/BLOCK`` of the
data), which yields the state entering each block; one last pass applies the
block-local prefix maps to that state. Work is about ``N*(log2(BLOCK)+1)``
compositions, depth ``O(log N)``. A constant ``a`` (a Python float) makes
every ``A`` a known power ``a**k`` and, with a constant ``b``, every ``B`` a
known geometric sum, so only the arrays that really vary are scanned (the
limiter's release ``d = max(t, r*d)`` scans ``T`` alone: two operations per
pass).

The result is exact up to floating-point rounding of the compositions (same
operations in a different order), checked against :func:`reference` (a plain
float64 loop) in ``tests/test_scan.py``.

On the host the recursion itself is the fastest exact form: with
:data:`HOST_SEQUENTIAL` (the default) NumPy inputs go through
:func:`_sequential`, the reference loop compiled by Numba (float64, the
reference's operations in its order, so equal to it to the bit). It runs at
~6 ns per sample where the vectorised scan needs ~50 (4 min of 48 kHz: 66 ms
vs 600 ms for the multiband's release), and it carries ``y0`` exactly, so
consecutive calls equal one call. The parallel scan is what CuPy runs; the
tests run it on NumPy too (``HOST_SEQUENTIAL = False``), so CI exercises the
device algorithm. A float64 scan with a constant coefficient (the limiter's
release, the compressors' envelopes) runs on a device as :func:`blocked_scan`
instead: the recursion per block of :data:`SEQ_BLOCK` samples in a thread,
four passes over the signal rather than ~14 (its kernels are tested on the
CPU, compiled there from the same source).

:func:`one_pole` is the one-pole smoother ``y = a*y + (1-a)*x`` as a linear
scan. DESIGN.md also mentions overlapped chunks (start each chunk early until
the unknown state has decayed below rounding); that needs a warm-up of
``tau*ln(1/eps)`` (~17 time constants in float32, 80 000 samples for a 100 ms
time constant at 48 kHz) and still a parallel method inside each chunk, while
the scan is exact and its cost does not depend on ``a``.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from . import backend

BLOCK = 64  # samples per block of the Hillis-Steele stage (log2 = passes per level)
OPS = ("min", "max")
HOST_SEQUENTIAL = True  # NumPy inputs run the compiled sequential loop (False: the device's parallel scan)


def affine_min_scan(t, a, b=0.0, y0=0.0):
    """``y[n] = min(t[n], a[n]*y[n-1] + b[n])`` along the last axis, ``y[-1] = y0``.

    ``t`` is an array (..., N). ``a`` (>= 0, not checked) and ``b`` are
    Python floats or arrays broadcastable to ``t``; ``y0`` is a float or an
    array broadcastable to ``t.shape[:-1]``. ``t`` must be finite where
    ``a`` can be 0 (``0 * inf`` is NaN). Returns an array shaped like ``t``
    in the floating dtype of the array inputs.
    """
    return _scan_public(t, a, b, y0, "min")


def affine_max_scan(t, a, b=0.0, y0=0.0):
    """``y[n] = max(t[n], a[n]*y[n-1] + b[n])``: :func:`affine_min_scan` mirrored.

    E.g. a peak-hold with exponential decay, or the limiter's release of gain
    reduction in dB: ``d[n] = max(d_target[n], r*d[n-1])``.
    """
    return _scan_public(t, a, b, y0, "max")


def linear_scan(a, b, y0=0.0):
    """``y[n] = a[n]*y[n-1] + b[n]`` along the last axis, ``y[-1] = y0``.

    One of ``a``/``b`` must be an array (..., N); the other may be a float.
    """
    ref = b if not _is_scalar(b) else a
    if _is_scalar(ref):
        raise ValueError("linear_scan needs a or b as an array (..., N) to know the length")
    xp = backend.array_module(ref)
    dtype = _dtype(xp, a, b)
    shape = np.broadcast_shapes(*[tuple(v.shape) for v in (a, b) if not _is_scalar(v)])
    a_ = float(a) if _is_scalar(a) else xp.broadcast_to(xp.asarray(a, dtype=dtype), shape)
    b_ = float(b) if _is_scalar(b) else xp.broadcast_to(xp.asarray(b, dtype=dtype), shape)
    if xp is np and HOST_SEQUENTIAL:
        return _sequential(None, a, b, y0, "min", shape, dtype)
    return _scan(xp, None, a_, b_, _y0(xp, y0, shape, dtype), "min", shape, dtype)


def one_pole(x, a, y0=0.0):
    """One-pole smoother ``y[n] = a*y[n-1] + (1-a)*x[n]`` along the last axis.

    ``a`` in [0, 1): a float (``exp(-1/(tau_s*fs))`` for a time constant
    ``tau_s``) or an array broadcastable to ``x`` (per-sample coefficients,
    e.g. switching between attack and release). Exact (a linear scan, see
    the module docstring); ``y0`` is the state before the first sample.
    """
    xp = backend.array_module(x)
    x = xp.asarray(x)
    if xp is np and HOST_SEQUENTIAL:
        # b in float64 as the reference computes it, so the loop equals it to the bit
        a64 = float(a) if _is_scalar(a) else np.asarray(a, dtype=np.float64)
        b = x.astype(np.float64) * (1.0 - a64)
        shape = np.broadcast_shapes(tuple(x.shape), () if _is_scalar(a) else np.shape(a))
        return _sequential(None, a64, b, y0, "min", shape, _dtype(np, x, a))
    if _is_scalar(a):
        b = x * (1.0 - float(a))
    else:
        a = xp.asarray(a, dtype=_dtype(xp, x))
        b = x * (1.0 - a)
    return linear_scan(a, b, y0)


def reference(t, a, b=0.0, y0=0.0, op: str = "min") -> np.ndarray:
    """Plain sequential float64 loop on the host: the scans' test reference.

    ``t=None`` is the linear recursion ``y = a*y + b``. Slow (a Python loop
    per sample): for tests on short inputs only.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    arrays = [backend.to_host(v).astype(np.float64) for v in (t, a, b) if v is not None and not _is_scalar(v)]
    shape = np.broadcast_shapes(*[v.shape for v in arrays])
    tt = None if t is None else np.broadcast_to(backend.to_host(t).astype(np.float64), shape)
    aa = np.broadcast_to(np.asarray(backend.to_host(a), dtype=np.float64), shape)
    bb = np.broadcast_to(np.asarray(backend.to_host(b), dtype=np.float64), shape)
    y = np.array(np.broadcast_to(np.asarray(backend.to_host(y0), dtype=np.float64), shape[:-1]))
    out = np.empty(shape)
    pick = np.minimum if op == "min" else np.maximum
    for n in range(shape[-1]):
        y = aa[..., n] * y + bb[..., n]
        if tt is not None:
            y = pick(tt[..., n], y)
        out[..., n] = y
    return out


# --------------------------------------------------------------------------- internals


def _is_scalar(v) -> bool:
    return isinstance(v, numbers.Real)


def _dtype(xp, *vals):
    arrays = [v for v in vals if v is not None and not _is_scalar(v)]
    if any(getattr(v, "dtype", None) == xp.float64 for v in arrays):
        return xp.float64
    if arrays and all(getattr(v, "dtype", None) == xp.float32 for v in arrays):
        return xp.float32
    return xp.float64


def _y0(xp, y0, shape, dtype):
    lead = tuple(shape[:-1])
    if _is_scalar(y0):
        return xp.full(lead, float(y0), dtype=dtype)
    return xp.broadcast_to(xp.asarray(y0, dtype=dtype), lead)


def _scan_public(t, a, b, y0, op):
    xp = backend.array_module(t)
    t = xp.asarray(t)
    if t.ndim == 0:
        raise ValueError("the scan needs t shaped (..., N); got a 0-d array")
    dtype = _dtype(xp, t, a, b)
    shape = np.broadcast_shapes(tuple(t.shape), *[tuple(v.shape) for v in (a, b) if not _is_scalar(v)])
    t_ = xp.broadcast_to(t.astype(dtype, copy=False), shape)
    a_ = float(a) if _is_scalar(a) else xp.broadcast_to(xp.asarray(a, dtype=dtype), shape)
    b_ = float(b) if _is_scalar(b) else xp.broadcast_to(xp.asarray(b, dtype=dtype), shape)
    if xp is np and HOST_SEQUENTIAL:
        return _sequential(t_, a, b, y0, op, shape, dtype)
    if backend.raw_kernels(xp) and isinstance(a_, float) and a_ >= 0.0 and dtype == xp.float64 \
            and shape[-1] > SEQ_BLOCK:
        return blocked_scan(xp, t_, a_, b_, _y0(xp, y0, shape, dtype), op, shape, backend.launch)
    return _scan(xp, t_, a_, b_, _y0(xp, y0, shape, dtype), op, shape, dtype)


# --------------------------------------------------------------------------- the device's blocked scan

SEQ_BLOCK = 256  # samples per thread of blocked_scan (a thread runs its block's recursion in order)

# blocked_scan's two passes. farm_scan_local: each thread runs the recursion over
# its block as if the state before it were -inf for max (+inf for min), i.e. the
# block's own part, and the block's affine part from 0 (no pick). farm_scan_fix:
# with the state y entering the block, y[i] = pick(local[i], L_i(y)), L_i the
# affine steps from the block's start, each rounded in order: because a >= 0
# makes every step monotone, pick commutes with it exactly in floating point, so
# this equals the sequential recursion to the bit given the entering state.
SCAN_CUDA = r"""
__device__ __forceinline__ double farm_pick(const double v, const double y, const int is_max) {
    return is_max ? ((v > y) ? v : y) : ((v < y) ? v : y);  /* the host loop's comparison */
}

/* samples [*s, *e) of work item w: block w % nb of row w / nb */
__device__ __forceinline__ void farm_block(const long long w, const long long nb, const long long n,
                                           const long long block, long long* s, long long* e) {
    const long long r = w / nb, k = w - r * nb;
    *s = r * n + k * block;
    *e = r * n + ((k + 1) * block < n ? (k + 1) * block : n);
}

extern "C" __global__ void farm_scan_local(
        const double* __restrict__ t, const double* __restrict__ b, const int b_array, const double b_const,
        const double a, const int is_max, const long long rows, const long long n, const long long block,
        double* __restrict__ local, double* __restrict__ local_end, double* __restrict__ affine_end) {
    const long long nb = (n + block - 1) / block;
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < rows * nb;
         w += (long long)blockDim.x * gridDim.x) {
        long long s, e;
        farm_block(w, nb, n, block, &s, &e);
        double y = t[s];  /* pick(t, a * (-/+inf) + b) */
        double lin = b_array ? b[s] : b_const;
        local[s] = y;
        for (long long i = s + 1; i < e; ++i) {
            const double bi = b_array ? b[i] : b_const;
            y = farm_pick(t[i], a * y + bi, is_max);
            lin = a * lin + bi;
            local[i] = y;
        }
        local_end[w] = y;
        affine_end[w] = lin;
    }
}

extern "C" __global__ void farm_scan_fix(
        const double* __restrict__ local, const double* __restrict__ b, const int b_array, const double b_const,
        const double a, const int is_max, const long long rows, const long long n, const long long block,
        const double* __restrict__ y_in, double* __restrict__ out) {
    const long long nb = (n + block - 1) / block;
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < rows * nb;
         w += (long long)blockDim.x * gridDim.x) {
        long long s, e;
        farm_block(w, nb, n, block, &s, &e);
        double lin = y_in[w];
        for (long long i = s; i < e; ++i) {
            lin = a * lin + (b_array ? b[i] : b_const);
            out[i] = farm_pick(local[i], lin, is_max);
        }
    }
}
"""


def blocked_scan(xp, t, a: float, b, y0, op: str, shape, launch):
    """``pick(t[n], a*y[n-1] + b[n])`` (constant ``a >= 0``) on a device, float64:
    each thread runs the recursion over a block of :data:`SEQ_BLOCK` samples
    (``farm_scan_local``), the blocks' entering states come from a scan over the
    blocks' summaries (this module's scan, 1/SEQ_BLOCK of the data: the only step
    that rounds differently from the sequential loop), and each thread finishes its
    block from its entering state (``farm_scan_fix``, exact given that state).
    Four passes over the track instead of the blocked Hillis-Steele scan's ~14.

    ``launch(source, name, work_items, args)`` runs a kernel (``backend.launch``;
    the tests pass one that runs the source compiled for the CPU)."""
    n = shape[-1]
    rows = math.prod(shape[:-1])
    nb = -(-n // SEQ_BLOCK)
    tt = xp.ascontiguousarray(t, dtype=xp.float64).reshape(rows, n)
    b_array = not isinstance(b, float)
    bb = xp.ascontiguousarray(b, dtype=xp.float64).reshape(rows, n) if b_array else tt
    b_const = 0.0 if b_array else float(b)
    is_max = np.int32(op == "max")
    common = (bb, np.int32(b_array), np.float64(b_const), np.float64(a), is_max, np.int64(rows), np.int64(n),
              np.int64(SEQ_BLOCK))
    local = xp.empty((rows, n), dtype=xp.float64)
    local_end = xp.empty((rows, nb), dtype=xp.float64)
    affine_end = xp.empty((rows, nb), dtype=xp.float64)
    launch(SCAN_CUDA, "farm_scan_local", rows * nb, (tt,) + common + (local, local_end, affine_end))
    first = xp.asarray(y0, dtype=xp.float64).reshape(rows)
    y_in = xp.empty((rows, nb), dtype=xp.float64)
    y_in[:, 0] = first
    if nb > 1:
        # every block but the last (each SEQ_BLOCK long) maps the state y entering it to
        # pick(local_end[k], a**SEQ_BLOCK * y + affine_end[k]), the state entering block k + 1
        y_in[:, 1:] = _scan_public(local_end[:, :-1], float(a) ** SEQ_BLOCK, affine_end[:, :-1], first, op)
    out = xp.empty((rows, n), dtype=xp.float64)
    launch(SCAN_CUDA, "farm_scan_fix", rows * nb, (local,) + common + (y_in, out))
    return out.reshape(shape)


def _geom(a: float, k: int) -> float:
    """1 + a + ... + a**(k-1)."""
    return float(k) if a == 1.0 else (1.0 - a ** k) / (1.0 - a)


def _rows(v, shape) -> np.ndarray:
    """``v`` (a float or an array broadcastable to ``shape``) as float64 (rows, n)
    or (1, 1): constants stay one value, full arrays are not copied twice."""
    if _is_scalar(v):
        return np.full((1, 1), float(v))
    v = np.broadcast_to(np.asarray(backend.to_host(v), dtype=np.float64), shape)
    return np.ascontiguousarray(v).reshape(-1, shape[-1])


def _sequential(t, a, b, y0, op, shape, dtype):
    """The recursion as a compiled float64 loop over each row (host only)."""
    n = shape[-1]
    rows = math.prod(shape[:-1])
    y_init = np.ascontiguousarray(
        np.broadcast_to(np.asarray(backend.to_host(y0), dtype=np.float64), tuple(shape[:-1]))).reshape(rows)
    out = np.empty((rows, n), dtype=np.float64)
    if n and rows:
        tt = np.zeros((1, 1)) if t is None else _rows(t, shape)
        _loop()(tt, _rows(a, shape), _rows(b, shape), y_init, out, t is not None, op == "max")
    return out.reshape(shape).astype(dtype, copy=False)


@functools.lru_cache(maxsize=1)
def _loop():
    """The compiled loop (Numba, compiled once and cached on disk beside this module)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def loop(t, a, b, y0, out, has_t, is_max):
        rows, n = out.shape
        rt, ra, rb = int(t.shape[0] > 1), int(a.shape[0] > 1), int(b.shape[0] > 1)
        it, ia, ib = int(t.shape[1] > 1), int(a.shape[1] > 1), int(b.shape[1] > 1)
        for r in range(rows):
            y = y0[r]
            for i in range(n):
                y = a[r * ra, i * ia] * y + b[r * rb, i * ib]  # the reference's order: a*y + b, then pick
                if has_t:
                    v = t[r * rt, i * it]
                    if is_max:
                        y = v if v > y else y
                    else:
                        y = v if v < y else y
                out[r, i] = y

    return loop


def sosfilt(sos, x) -> np.ndarray:
    """``scipy.signal.sosfilt(sos, x, axis=-1)`` on the host, from zero state, as a
    compiled float64 loop: the same direct-form-II-transposed operations in the
    same order, so the same bits (tested), without sosfilt's float64 copies of
    the whole signal (the K-weighting of 4 min of stereo: 0.22 -> 0.15 s)."""
    sos = np.ascontiguousarray(np.asarray(sos, dtype=np.float64))
    x = np.asarray(x)
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim else x.reshape(1, 1)
    if not rows.flags.c_contiguous or rows.dtype not in (np.float32, np.float64):
        rows = np.ascontiguousarray(rows, dtype=np.float64)
    out = np.empty(rows.shape, dtype=np.float64)
    if out.size:
        _sos_loop()(sos, rows, out)
    return out.reshape(x.shape)


@functools.lru_cache(maxsize=1)
def _sos_loop():
    import numba

    @numba.njit(cache=True, nogil=True)
    def loop(sos, x, out):
        rows, n = x.shape
        sections = sos.shape[0]
        z = np.zeros((sections, 2))
        for r in range(rows):
            z[:] = 0.0
            for i in range(n):
                v = np.float64(x[r, i])
                for k in range(sections):  # scipy's order: y = b0 x + z0; z0 = b1 x - a1 y + z1; z1 = b2 x - a2 y
                    y = sos[k, 0] * v + z[k, 0]
                    z[k, 0] = sos[k, 1] * v - sos[k, 4] * y + z[k, 1]
                    z[k, 1] = sos[k, 2] * v - sos[k, 5] * y
                    v = y
                out[r, i] = v

    return loop


def _scan(xp, t, a, b, y0, op, shape, dtype):
    """Blocked scan. ``t``: array or None; ``a``/``b``: float (constant) or
    array of ``shape``; ``y0``: array of ``shape[:-1]``. Returns ``y``."""
    n = shape[-1]
    if n == 0:
        return xp.empty(shape, dtype=dtype)
    pick = xp.minimum if op == "min" else xp.maximum
    const_a = isinstance(a, float)
    const_b = isinstance(b, float)
    if not const_a and const_b:
        b = xp.full(shape, b, dtype=dtype)  # B varies once A does
        const_b = False

    k = min(BLOCK, n)
    nb = -(-n // k)
    lead = tuple(shape[:-1])

    def blocks(v):
        """A private, writable (..., nb, k) copy (the passes update it in place)."""
        if v is None or isinstance(v, float):
            return v
        v = xp.asarray(v, dtype=dtype)
        if nb * k != n:  # pad the end: padded maps come after every real one and are discarded
            pad = [(0, 0)] * (len(shape) - 1) + [(0, nb * k - n)]
            v = xp.pad(v, pad)
        else:
            v = xp.array(v, dtype=dtype, order="C")
        return v.reshape(lead + (nb, k))

    T, A, B = blocks(t), blocks(a), blocks(b)
    # Hillis-Steele within every block: after the pass with shift s, element i
    # holds the composition of the min(i+1, 2s) maps ending at i.
    #
    # Each pass works on the flat (..., nb*k) arrays so every big operation
    # is contiguous (2-D slices with short rows run several times slower in
    # NumPy): ``tmp[i]`` = element i composed with element i-s, computed for
    # all i >= s at once, then reset to the identity at the first s positions
    # of every block (a narrow strided fill), where i-s lies in the previous
    # block. The combine then reads ``tmp`` and updates in place with
    # identical input/output views, which is safe on CuPy too (its kernels do
    # not guard against overlapping views).
    flat = lead + (nb * k,)
    T, A, B = (None if v is None or isinstance(v, float) else v.reshape(flat) for v in (T, A, B))
    neutral_t = math.inf if op == "min" else -math.inf
    scratch = xp.empty(flat, dtype=dtype) if k > 1 else None
    s = 1
    while s < k:
        cur = (Ellipsis, slice(s, None))
        prev = (Ellipsis, slice(None, -s))
        tmp = scratch[cur]
        head = scratch.reshape(lead + (nb, k))[..., :s]  # positions whose i-s is in the previous block
        if const_a:
            a_s = a ** s  # A of every element being updated (it holds s maps)
        if T is not None:  # T <- pick(T, A*T_prev + B), with the old A and B
            if const_a:
                xp.multiply(T[prev], a_s, out=tmp)
                if const_b:
                    b_s = b * _geom(a, s)
                    if b_s != 0.0:
                        tmp += b_s
                else:
                    tmp += B[cur]
            else:
                xp.multiply(A[cur], T[prev], out=tmp)
                tmp += B[cur]
            head[...] = neutral_t
            pick(T[cur], tmp, out=T[cur])
        if not const_b:  # B <- A*B_prev + B, with the old A
            if const_a:
                xp.multiply(B[prev], a_s, out=tmp)
            else:
                xp.multiply(A[cur], B[prev], out=tmp)
            head[...] = 0.0
            B[cur] += tmp
        if not const_a:  # A <- A*A_prev
            tmp[...] = A[prev]
            head[...] = 1.0
            A[cur] *= tmp
        s *= 2
    del scratch
    T, A, B = (None if v is None or isinstance(v, float) else v.reshape(lead + (nb, k)) for v in (T, A, B))

    # Prefix maps of every position within its block (for the fix-up) and
    # each block's total map (its last position).
    if const_a:
        powers = a ** np.arange(1, k + 1, dtype=np.float64)
        A_loc = xp.asarray(powers, dtype=dtype)  # (k,), broadcasts over blocks
        A_tot = a ** k
    else:
        A_loc, A_tot = A, A[..., -1]
    if const_b:
        sums = b * np.array([_geom(a, i) for i in range(1, k + 1)])
        B_loc = xp.asarray(sums, dtype=dtype)
        B_tot = b * _geom(a, k)
    else:
        B_loc, B_tot = B, B[..., -1]
    T_tot = None if T is None else T[..., -1]

    # State entering each block: y0 for the first; for block j > 0 the state
    # leaving block j-1, i.e. the scan of the block totals (recursively).
    if nb == 1:
        carry = y0[..., None]
    else:
        tot_shape = lead + (nb - 1,)
        upto = slice(None, -1)  # the last block's total leads nowhere
        t_in = None if T_tot is None else T_tot[..., upto]
        a_in = A_tot if isinstance(A_tot, float) else A_tot[..., upto]
        b_in = B_tot if isinstance(B_tot, float) else B_tot[..., upto]
        if not isinstance(a_in, float) and isinstance(b_in, float):
            b_in = xp.full(tot_shape, b_in, dtype=dtype)
        ends = _scan(xp, t_in, a_in, b_in, y0, op, tot_shape, dtype)
        carry = xp.concatenate([y0[..., None], ends], axis=-1)

    y = A_loc * carry[..., None]
    if not (const_b and b == 0.0):
        y += B_loc
    if T is not None:
        pick(T, y, out=y)
    return y.reshape(lead + (nb * k,))[..., :n]


__all__ = ["affine_min_scan", "affine_max_scan", "linear_scan", "one_pole", "reference", "sosfilt", "BLOCK"]
