"""Oversampled true-peak lookahead limiter that guarantees its ceiling.

    audio (C, N) --detect (oversampled, channel-linked)--> peak[n]
      --> g_req[n] = min(1, ceiling / peak[n])
      --> forward sliding minimum over the lookahead       (attack: hold)
      --> triangular average over the lookahead             (attack: smooth ramp)
      --> release: exponential in dB, d = max(d_req, r*d)   (scan.affine_max_scan)
      --> apply at the base rate
      --> check the output's true peak at the detection factor and at 16x;
          correct the residual (same gain computation), last resort a global trim.

Detection. The signal is interpolated by ``params.oversample`` with the
polyphase filter of :mod:`kernels.oversample` (so the points are exactly the
ones ``oversample.upsample`` yields; ITU-R BS.1770-4 Annex 2 measures true
peak at 4x). For base sample ``n``, ``env[n]`` is the largest ``|x_os|``
over all channels (channel-linked: every channel gets the same gain, so the
stereo image does not wander) at the oversampled points in ``[n, n+1)``, and
``peak[n] = max(env[n-1], env[n])`` covers ``[n-1, n+1)``: a peak between
samples ``n`` and ``n+1`` is then charged to both neighbours, the two samples
whose gains shape the waveform there. Every oversampled point ``y[k]`` also
gets ``CURVATURE * |y[k-1] - 2 y[k] + y[k+1]|`` added, a bound on how far
the waveform can still rise between points (exact for sinusoids up to
Nyquist, see :data:`CURVATURE`) in every base sample where a point is
already over the ceiling (so input that is under it still reads exactly and
passes untouched); it makes the first pass hold the ceiling at 16x too in
practice, so the final check rarely has anything to correct. Both envelopes
(with and without the term) scale with the signal, so the loudness loop's
trials at different input gains interpolate the track once
(:class:`Detection`, :func:`gated_envelope`).
Phase 0 of the interpolator is the input itself, so only the other phases
are computed, chunk by chunk (the oversampled track is never materialised).

Why the ceiling holds (before the final check). Let ``G = g_req[p]`` for a
sample ``p``, ``L`` the lookahead in samples.

1. Hold: ``g1[n] = min(g_req[n .. n+L])``. For every ``j`` in ``0..L`` the
   window of ``g1[p-j]`` is ``[p-j, p-j+L]``, which contains ``p``, so
   ``g1[p-j] <= G``. Before the start ``g1`` is extended by ``g1[0]``, whose
   window ``[0, L]`` contains every ``p <= L``, so the same holds there.
2. Ramp: ``g2[n] = sum_j w_j g1[n-j]`` over ``j = 0..L`` with ``w_j >= 0``,
   ``sum w_j = 1`` (a triangle: two cascaded box averages whose lengths add
   up to ``L + 2``). By (1) every term at ``n = p`` is ``<= G``, so
   ``g2[p] <= G``: the smooth ramp never lets the gain exceed what any
   sample needs. (Rounding of the float64 running sums is removed by an
   explicit ``g2 = min(g2, g_req)``, which changes values by ~1e-12 at most.)
3. Release: in gain reduction ``d = -20 log10 g``,
   ``d[n] = max(d2[n], r*d[n-1])`` (``r = exp(-1/tau)``) is ``>= d2[n]``, so
   ``g <= g2 <= g_req`` (again enforced exactly with ``min``).

So at the base rate ``|g[n] x_os| <= ceiling`` at every oversampled point
charged to ``n``. The reconstructed output between samples is an
interpolation of ``g*x``, not ``g`` times the interpolation of ``x``; with a
smooth ``g`` the difference is second order, and the detection points
under-read the continuous peak slightly (up to ~0.7 dB at 4x for content
near Nyquist, typically < 0.1 dB; the curvature term covers most of it but is
exact only for sinusoids). Hence the final check-and-correct: the
output is measured at the detection factor and at 16x (the points
``upsample`` yields); wherever a point exceeds the ceiling, the same gain
computation runs on the output with the measured envelope (which only lowers
the gain), up to :data:`MAX_CORRECTIONS` times, and if anything is still over,
a global trim by ``ceiling / peak`` scales the whole output (exact, since
interpolation is linear). The working ceiling is :data:`MARGIN` (relative,
-0.0001 dB) under the requested one, so float32 rounding of a different FFT
blocking cannot push a later measurement over.

The lookahead is compensated internally: the gain is computed from the
future of the signal and applied to the same samples, so the output is not
delayed (``latency_samples`` is 0). Gains are computed in float64; a signal
that never exceeds the working ceiling gets a gain of exactly 1.0 everywhere
and comes back bit-identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backend
from .convolve import fftconvolve
from .oversample import HALF_TAPS, phase_bank, phase_peaks
from .params import LimiterParams
from .scan import affine_max_scan
from .stream import pieces

CHECK_FACTOR = 16  # the final check also looks at 16x
MARGIN = 1e-5  # gains aim at ceiling * (1 - MARGIN): ~ -0.0001 dB
ACCEPT = 5e-6  # the final check passes at <= ceiling * (1 - ACCEPT): float32 rounding room both ways
CORRECTION_MARGIN = 1e-4  # residual corrections aim a little lower (-0.0009 dB) so one usually suffices
SNAP_DB = 1e-6  # release tails below this much gain reduction become exactly 0 dB
MAX_CORRECTIONS = 4  # residual correction passes before the global trim
# Detection adds CURVATURE * |second difference| to every oversampled point,
# a bound on how far the waveform rises between points: for a sinusoid of
# w radians per oversampled step whose crest falls midway between points,
# the points read cos(w/2) and their second difference is 2 sin(w) sin(w/2);
# cos(w/2) + k * 2 sin(w) sin(w/2) >= 1 for every w up to Nyquist at 4x
# (w = pi/4) needs k >= 0.1406 (k -> 1/8 as w -> 0). It makes the first pass
# conservative enough that the 16x check rarely needs a correction (each one
# costs a gain computation and another check); it over-reads on-grid crests
# by 1 + 2k(1 - cos w), ~0.03 dB at 5 kHz at 48 kHz.
CURVATURE = 1.0 / 7.0
CHUNK_CPU = 1 << 17  # base samples per detection chunk (cache-sized FFT batches on the host)
CHUNK_GPU = 1 << 21  # larger on the device: fewer, fuller launches
GAIN_CHUNK_CPU = 1 << 17  # samples per gain-computer chunk: its float64 temporaries stay in cache
GAIN_CHUNK_GPU = 1 << 23

_DB_PER_NEPER = 20.0 / math.log(10.0)


@dataclass(frozen=True)
class LimiterResult:
    """What :func:`limit` returns.

    ``audio``: the limited signal, same shape, dtype and length as the input,
    time-aligned (not delayed). ``gain``: the linear gain applied to every
    channel, shape (samples,), in the audio's dtype (``audio == x * gain``).
    Host floats, computed once at the end: ``max_gain_reduction_db`` (>= 0),
    ``true_peak_dbtp`` (the output's peak over the detection-factor and 16x
    points; ``-inf`` for silence, ``None`` when bypassed), ``corrections``
    (residual passes the final check needed) and ``trim_db`` (the last-resort
    global trim, normally 0).
    """

    audio: Any
    gain: Any
    max_gain_reduction_db: float
    true_peak_dbtp: float | None = None
    corrections: int = 0
    trim_db: float = 0.0


def limit(x, sample_rate: float, params: LimiterParams, check: bool = True, gain_db: float = 0.0,
          detection: "Detection | None" = None) -> LimiterResult:
    """Limit ``apply_gain(x, gain_db)`` (channels, samples) so its true peak is
    <= ``params.ceiling_dbtp``.

    See the module docstring for the design and the argument that the
    ceiling holds. ``params.bypass`` returns the gained input itself with unit
    gain. ``check=False`` skips the final check-and-correct (``true_peak_dbtp``
    is then ``None``): a cheaper estimate for a loop that tries several input
    gains; run :func:`check` on the result it keeps. ``detection``: the
    :class:`Detection` of ``x``, which several calls at different ``gain_db``
    share (the detection of ``g x`` is ``g`` times that of ``x``, so the loudness
    loop's trials interpolate the track once).
    """
    xp, x = backend.float_audio(x, "limit")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate!r}")
    n = x.shape[-1]
    gained = apply_gain(x, gain_db)
    if params.bypass or n == 0 or x.shape[0] == 0:
        return LimiterResult(audio=gained, gain=xp.ones(n, dtype=x.dtype), max_gain_reduction_db=0.0,
                             true_peak_dbtp=None)

    detection = detection if detection is not None else Detection(x, params.oversample)
    if detection.x is not x or detection.factor != params.oversample:
        raise ValueError("limit: the detection given was made for another signal or oversampling factor")
    gain = unchecked_gain(detection, gain_scale(gain_db), sample_rate, params)
    if not check:
        gain_x = gain.astype(x.dtype)
        return LimiterResult(audio=gained * gain_x, gain=gain_x, max_gain_reduction_db=_reduction_db(gain_x))
    return _check(gained, gain, sample_rate, params)


def unchecked_gain(detection: "Detection", scale, sample_rate: float, params: LimiterParams, keep=None,
                   starts=()):
    """The limiter's gain curve (float64, (samples,)) for ``scale`` times the signal of
    ``detection``, before the final check: ``scale`` is a float32 factor
    (:func:`gain_scale`), or one per sample (a batch of tracks, each at its own gain:
    :mod:`kernels.batch`). ``keep``: float32 (samples,), 1 on the tracks and 0 in a
    batch's gaps, where nothing asks for gain reduction: neither the interpolation's
    ringing from the tracks' edges nor a track's last sample charged to the one
    after it. A track limited alone has no samples there (ones past its ends).
    ``starts``: where the batch's tracks begin (:func:`gain_curve`)."""
    ceiling = 10.0 ** (params.ceiling_dbtp / 20.0) * (1.0 - MARGIN)
    lookahead, release = _timing(sample_rate, params)
    env = gated_envelope(*detection.pair(), scale, ceiling)
    if keep is None:
        return gain_curve(required_gain(env, ceiling), lookahead, release)
    env *= keep
    g_req = required_gain(env, ceiling)
    g_req = backend.array_module(g_req).maximum(g_req, 1.0 - keep, out=g_req)
    return gain_curve(g_req, lookahead, release, starts)


def gain_scale(gain_db: float):
    """A static gain (dB) as the float32 factor :func:`apply_gain` multiplies by."""
    return np.float32(10.0 ** (gain_db / 20.0))


def apply_gain(y, gain_db: float):
    """``y`` times a static gain as a float32 scalar (``y`` itself at 0 dB): the
    one place the loudness loop scales its input, whole-signal or streamed, so
    every path makes the same samples."""
    return y * gain_scale(gain_db) if gain_db != 0.0 else y


class Detection:
    """The limiter's detection envelopes of one signal ``x`` (:func:`detection_pair`),
    computed on first use and shared by every :func:`limit` of ``x`` at another
    static gain."""

    def __init__(self, x, factor: int):
        self.x, self.factor = x, int(factor)
        self._pair = None

    def pair(self):
        if self._pair is None:
            self._pair = detection_pair(self.x, self.factor, CURVATURE)
        return self._pair


def check(x, result: LimiterResult, sample_rate: float, params: LimiterParams) -> LimiterResult:
    """The final check-and-correct of :func:`limit` on a ``check=False`` result
    for the same ``x`` and ``params``: afterwards the true peak is <= the ceiling."""
    if params.bypass or result.true_peak_dbtp is not None or x.shape[-1] == 0 or x.shape[0] == 0:
        return result
    xp = backend.array_module(x)
    return _check(x, result.gain.astype(xp.float64), sample_rate, params)


def _timing(sample_rate: float, params: LimiterParams) -> tuple[int, float]:
    """(lookahead, release time constant), in samples."""
    lookahead = max(1, int(round(params.lookahead_ms * sample_rate / 1000.0)))
    return lookahead, params.release_ms * sample_rate / 1000.0


def _reduction_db(gain_x) -> float:
    min_gain = backend.to_float(gain_x.min())
    return max(0.0, -20.0 * math.log10(min_gain)) if min_gain > 0 else math.inf


def _check(x, gain, sample_rate: float, params: LimiterParams) -> LimiterResult:
    """Measure ``x * gain`` at the detection factor and 16x; correct until under the ceiling."""
    ceiling_lin = 10.0 ** (params.ceiling_dbtp / 20.0)
    ceiling, accept = ceiling_lin * (1.0 - MARGIN), ceiling_lin * (1.0 - ACCEPT)
    lookahead, release = _timing(sample_rate, params)
    factor = params.oversample
    check_factors = (factor,) if factor == CHECK_FACTOR else (factor, CHECK_FACTOR)
    gain_x = gain.astype(x.dtype)
    out = x * gain_x

    corrections, trim = 0, 1.0
    env = peak_envelope(out, check_factors)
    while True:
        peak = backend.to_float(env.max())  # host sync: the final check
        if not math.isfinite(peak):
            raise ValueError("limit got audio with NaN or infinite samples; replace them (the render "
                             "rejects such tracks) before limiting")
        if peak <= accept:
            break
        if corrections == MAX_CORRECTIONS:
            # Last resort: scale everything; interpolation is linear, so the
            # peak scales by exactly the same factor (up to float rounding,
            # which the extra 1e-6 absorbs).
            trim = ceiling / peak * (1.0 - 1e-6)
            gain = gain * trim
            gain_x = gain.astype(x.dtype)
            out = x * gain_x
            peak *= trim
            break
        corrections += 1
        # Only the points still over the acceptance level ask for less gain (the
        # rest are already under the ceiling), so the correction is local: just
        # the lookahead and release around each over, and only the envelope
        # chunks it touched are measured again.
        target = ceiling_lin * (1.0 - CORRECTION_MARGIN)
        xp = backend.array_module(env)
        over = xp.where(env > accept, env, xp.zeros_like(env))
        step = gain_curve(required_gain(over, target), lookahead, release)
        gain = gain * step
        # Measured again where the applied (float32) gain changed, which is where the
        # output did: not `step < 1`, which a parallel cumsum in the ramp (the device's)
        # can leave at 1 - 1e-16 over whole unit-gain stretches.
        corrected_x = gain.astype(x.dtype)
        changed = corrected_x != gain_x
        gain_x = corrected_x
        out = x * gain_x
        _remeasure(env, out, changed, check_factors)

    return LimiterResult(
        audio=out,
        gain=gain_x,
        max_gain_reduction_db=_reduction_db(gain_x),
        true_peak_dbtp=20.0 * math.log10(peak) if peak > 0 else -math.inf,
        corrections=corrections,
        trim_db=-20.0 * math.log10(trim) if trim != 1.0 else 0.0,
    )


def _remeasure(env, out, changed, factors: tuple[int, ...]) -> None:
    """Update ``env`` (= ``peak_envelope(old_out, factors)``) in place for
    ``out``, which differs from the old output only where ``changed``: every
    detection chunk whose window (the chunk plus ``HALF_TAPS`` each side)
    holds a change is measured again, on the same grid and windows as
    :func:`peak_envelope`, so ``env`` becomes ``peak_envelope(out, factors)``
    to the bit."""
    xp = backend.array_module(env)
    n = env.shape[-1]
    chunk = detect_chunk(xp)
    bank = xp.asarray(phase_bank(tuple(factors)), dtype=out.dtype)
    for k in np.flatnonzero(touched_chunks(changed, chunk)):  # touched chunks, not samples
        s, e = k * chunk, min(n, (k + 1) * chunk)
        env[s:e] = envelope_chunk(xp, out, 0, s, e, n, bank, factors)


def touched_chunks(changed, chunk: int) -> np.ndarray:
    """Host bools, one per ``chunk`` of ``changed``: does the chunk's detection
    window ``[s - HALF_TAPS, e + HALF_TAPS)`` hold a True?"""
    xp = backend.array_module(changed)
    n = changed.shape[-1]
    count = -(-n // chunk)
    h = min(HALF_TAPS, chunk)
    padded = xp.zeros(count * chunk, dtype=bool)
    padded[:n] = changed
    rows = padded.reshape(count, chunk)
    core, head, tail = (backend.to_host(v) for v in
                        (rows.any(axis=1), rows[:, :h].any(axis=1), rows[:, chunk - h:].any(axis=1)))
    touched = core.copy()
    touched[1:] |= tail[:-1]  # the end of the chunk before lies in this chunk's window
    touched[:-1] |= head[1:]  # and so does the start of the chunk after
    return touched


# --------------------------------------------------------------------------- detection


def peak_envelope(x, factors: tuple[int, ...] = (4,), curvature: float = 0.0, gate: float = 0.0):
    """Per-base-sample, channel-linked peak of the oversampled signal.

    ``env[n] = max |x_os(t)|`` over every channel and every point
    ``t = n + p/factor`` (``p = 0 .. factor-1``) of every factor in
    ``factors``, i.e. the points of ``oversample.upsample(x, factor)`` in
    ``[n, n+1)``. Shape (samples,), the input's float dtype. Computed in
    chunks with ``HALF_TAPS`` samples of context on each side, so nothing
    the size of the oversampled track is allocated.

    ``curvature`` (one factor only) adds ``curvature * |y[k-1] - 2 y[k] + y[k+1]|``
    to every oversampled point ``y[k]`` of the samples whose plain envelope is
    over ``gate``: an estimate of how far the waveform can rise between points
    (see :data:`CURVATURE`; :func:`gated_envelope`). The limiter gates at its
    ceiling, so a signal whose points are all under it reads exactly as
    without the term (and passes bit-identical).
    """
    xp = backend.array_module(x)
    n = x.shape[-1]
    if curvature and len(factors) != 1:
        raise ValueError("peak_envelope: curvature needs exactly one oversampling factor")
    if curvature:
        return gated_envelope(*detection_pair(x, factors[0], curvature), np.float32(1.0), gate)
    bank = xp.asarray(phase_bank(tuple(factors)), dtype=x.dtype)
    chunk = detect_chunk(xp)
    env = xp.empty(n, dtype=x.dtype)
    for s in range(0, n, chunk):  # a loop over chunks of ~2^17 samples, not over samples
        e = min(n, s + chunk)
        env[s:e] = envelope_chunk(xp, x, 0, s, e, n, bank, factors)
    return env


def detection_pair(x, factor: int, curvature: float):
    """The limiter's two detection envelopes of ``x`` (channels, samples):
    ``e0[n]``, the plain per-sample peak of the ``factor``-times oversampled
    points (:func:`peak_envelope`), and ``e1[n]``, the same with every point
    raised by ``curvature`` times its second difference (``e1 >= e0``; the same
    array when ``curvature`` is 0). Both scale exactly with the signal (up to
    rounding), so one pair serves every static gain (:func:`gated_envelope`)."""
    xp = backend.array_module(x)
    n = x.shape[-1]
    if not curvature:
        e0 = peak_envelope(x, (factor,))
        return e0, e0
    bank = xp.asarray(phase_bank((factor,)), dtype=x.dtype)
    chunk = detect_chunk(xp)
    e0, e1 = xp.empty(n, dtype=x.dtype), xp.empty(n, dtype=x.dtype)
    for s in range(0, n, chunk):  # a loop over chunks, not samples
        e = min(n, s + chunk)
        e0[s:e], e1[s:e] = pair_chunk(xp, x, 0, s, e, n, bank, factor, curvature)
    return e0, e1


def gated_envelope(e0, e1, scale, gate: float):
    """The detection envelope of ``scale`` times the signal whose :func:`detection_pair`
    is ``(e0, e1)``: ``scale * e1`` where ``scale * e0`` is over ``gate`` (a point
    there is over the ceiling, so the curvature bound counts), else ``scale * e0``
    (exact: input under the ceiling is left alone). ``scale`` is the float32
    factor of :func:`gain_scale`. The gate is per base sample: every point of a
    sample with one point over gets the bound (never less than gating per point)."""
    xp = backend.array_module(e0)
    if e1 is e0:
        return e0 * scale
    scaled0 = e0 * scale
    return xp.where(scaled0 > gate, e1 * scale, scaled0)


def detect_chunk(xp) -> int:
    """Base samples per detection chunk on this backend (the grid every envelope is computed on)."""
    return CHUNK_CPU if xp is np else CHUNK_GPU


def envelope_chunk(xp, xw, off: int, s: int, e: int, n: int, bank, factors):
    """``env[s:e]`` of :func:`peak_envelope` for an ``n``-sample signal of which
    ``xw`` holds samples ``[off, off + xw.shape[-1])``, at least
    ``[max(0, s - HALF_TAPS), min(n, e + HALF_TAPS))``. The same slice of the
    signal goes through the same FFTs whether ``xw`` is the whole signal or a
    streamed window, so the result is the same to the bit."""
    m = phase_peaks(xw, off, s, e, n, bank)
    xp.maximum(m, xp.abs(xw[:, s - off:e - off]).max(axis=0), out=m)
    return m


def pair_chunk(xp, xw, off: int, s: int, e: int, n: int, bank, factor: int, curvature: float):
    """``(e0[s:e], e1[s:e])`` of :func:`detection_pair`, with ``xw`` holding
    samples ``[off, ...)`` as in :func:`envelope_chunk` (and the same grid, so a
    streamed window gives the whole signal's values to the bit)."""
    return _curved_pair(xp, *pair_views(xw, off, s, e, n, bank), factor, curvature)


def pair_views(xw, off: int, s: int, e: int, n: int, bank):
    """(core, nxt, ph) of :func:`_curved_pair` for chunk ``[s, e)`` (``xw`` as in
    :func:`pair_chunk`): views of the signal and of its phases' one FFT convolution."""
    h = HALF_TAPS
    lo, hi = max(0, s - h), min(n, e + h)
    core = xw[:, s - off:e - off]
    # (C, 1, m) * (P, 2H+1) -> (C, P, m + 2H); signal sample i sits at column i - lo + H
    full = fftconvolve(xw[:, None, lo - off:hi - off], bank, mode="full")
    nxt = xw[:, s + 1 - off:min(n, e + 1) - off]
    return core, nxt, full[..., s - lo + h - 1:e - lo + h]


def _curved_pair(xp, core, nxt, ph, factor: int, kappa: float):
    """One chunk of both detection envelopes: ``core`` holds its base samples,
    ``nxt`` the samples one later (one fewer at the signal's end), ``ph`` phases
    1..factor-1 from one base sample before the chunk on.

    The array operations below are the reference; float32 on a device runs
    :data:`CURVED_PAIR_CUDA`, one pass that reads the points once (the arrays
    here moved ~8.7 GB per 4-min track through device memory, bench/kernels.py)."""
    if backend.raw_kernels(xp) and all(a.dtype == xp.float32 and a.strides[-1] == a.itemsize
                                        for a in (core, nxt, ph)):
        e0, e1 = xp.empty(core.shape[1], dtype=xp.float32), xp.empty(core.shape[1], dtype=xp.float32)
        work, args = curved_pair_args(core, nxt, ph, factor, kappa, e0, e1)
        backend.launch(CURVED_PAIR_CUDA, "farm_curved_pair", work, args)
        return e0, e1
    c, m = core.shape
    # The oversampled points in time order, with one neighbour on each side:
    # phase factor-1 of sample n-1, x[n], phases 1..factor-1 of n, x[n+1].
    z = xp.empty((c, factor + 2, m), dtype=core.dtype)
    z[:, 0] = ph[:, factor - 2, :-1]
    z[:, 1] = core
    z[:, 2:factor + 1] = ph[:, :, 1:]
    z[:, factor + 1, :nxt.shape[1]] = nxt
    z[:, factor + 1, nxt.shape[1]:] = 0.0  # past the end the signal is zero, as in upsample
    d = z[:, :-2] + z[:, 2:]
    d -= z[:, 1:-1]
    d -= z[:, 1:-1]
    xp.abs(d, out=d)
    d *= kappa
    mid = xp.abs(z[:, 1:-1])
    e0 = mid.max(axis=(0, 1))
    mid += d
    return e0, mid.max(axis=(0, 1))


# _curved_pair in one pass: a thread per base sample n walks the channels and the
# points z_0..z_{factor+1} (phase factor-1 of n-1, x[n], phases 1..factor-1 of n,
# x[n+1]) and keeps the two maxima. The reference's float32 operations in its
# order, with NaN winning every comparison as numpy's max propagates it.
CURVED_PAIR_CUDA = r"""
extern "C" __global__ void farm_curved_pair(
        const float* __restrict__ core, const long long core_c,
        const float* __restrict__ nxt, const long long nxt_c, const long long nxt_len,
        const float* __restrict__ ph, const long long ph_c, const long long ph_p,
        const int channels, const int factor, const long long m, const float kappa,
        float* __restrict__ e0, float* __restrict__ e1) {
    for (long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x; n < m;
         n += (long long)blockDim.x * gridDim.x) {
        float best0 = 0.0f, best1 = 0.0f;
        for (int c = 0; c < channels; ++c) {
            const float* p = ph + c * ph_c;
            float prev = p[(long long)(factor - 2) * ph_p + n];  /* phase factor-1 of n-1 */
            float cur = core[c * core_c + n];
            for (int k = 1; k <= factor; ++k) {
                const float next = k < factor ? p[(long long)(k - 1) * ph_p + n + 1]
                                              : (n < nxt_len ? nxt[c * nxt_c + n] : 0.0f);
                float d = prev + next;
                d = d - cur;
                d = d - cur;
                d = fabsf(d) * kappa;
                const float a = fabsf(cur);
                const float v = a + d;
                if (a > best0 || a != a) best0 = a;
                if (v > best1 || v != v) best1 = v;
                prev = cur;
                cur = next;
            }
        }
        e0[n] = best0;
        e1[n] = best1;
    }
}
"""


def curved_pair_args(core, nxt, ph, factor: int, kappa: float, e0, e1) -> tuple[int, tuple]:
    """(work items, arguments) of :data:`CURVED_PAIR_CUDA` for :func:`_curved_pair`'s
    float32 views (last axis contiguous) and outputs ``e0``, ``e1`` (m,)."""
    def step(a, axis):  # elements between neighbours along ``axis``
        return np.int64(a.strides[axis] // a.itemsize)

    for a in (core, nxt, ph):
        assert a.strides[-1] == a.itemsize, "the sample axis must be contiguous"
    c, m = core.shape
    return m, (core, step(core, 0), nxt, step(nxt, 0), np.int64(nxt.shape[1]), ph, step(ph, 0), step(ph, 1),
               np.int32(c), np.int32(factor), np.int64(m), np.float32(kappa), e0, e1)


def required_gain(env, ceiling: float):
    """``g_req[n] = min(1, ceiling / max(env[n-1], env[n]))`` in float64.

    ``env[n]`` covers ``[n, n+1)``; taking the previous sample too charges
    every inter-sample peak to both samples around it.
    """
    xp = backend.array_module(env)
    if backend.raw_kernels(xp) and env.dtype == xp.float32 and env.ndim == 1:  # one pass (GAIN_CUDA)
        g = xp.empty(env.shape, dtype=xp.float64)
        backend.launch(GAIN_CUDA, "farm_required_gain", env.size, required_gain_args(xp.ascontiguousarray(env),
                                                                                     ceiling, g))
        return g
    peak = env.astype(xp.float64)  # a new array: the in-place steps below never alias env
    if peak.shape[-1] > 1:
        xp.maximum(peak[1:], env[:-1], out=peak[1:])
    # ceiling / max(peak, ceiling) == min(1, ceiling / peak), and never divides by zero
    xp.maximum(peak, ceiling, out=peak)
    return xp.divide(ceiling, peak, out=peak)


# --------------------------------------------------------------------------- gain computer


# The gain computer's elementwise steps as single passes on a device (the array
# operations are the reference and the host path): required_gain; g2 = min(g2, g_req)
# with its gain reduction in dB; and back from dB with the snap to unity and the final
# min. Each is the array path's float64 operations in its order, with numpy's NaN
# propagation in maximum/minimum (a NaN operand wins).
GAIN_CUDA = r"""
__device__ __forceinline__ double farm_max(const double a, const double b) {
    return (a != a) ? a : (b != b) ? b : (b > a ? b : a);
}
__device__ __forceinline__ double farm_min(const double a, const double b) {
    return (a != a) ? a : (b != b) ? b : (b < a ? b : a);
}

extern "C" __global__ void farm_required_gain(
        const float* __restrict__ env, const long long n, const double ceiling, double* __restrict__ g) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        double peak = (double)env[i];
        if (i > 0) peak = farm_max(peak, (double)env[i - 1]);
        peak = farm_max(peak, ceiling);
        g[i] = ceiling / peak;
    }
}

extern "C" __global__ void farm_gain_to_db(
        double* __restrict__ g2, const double* __restrict__ g_req, const long long n, const double db_per_neper,
        double* __restrict__ d) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const double g = farm_min(g2[i], g_req[i]);
        g2[i] = g;
        d[i] = log(g) * db_per_neper;
    }
}

extern "C" __global__ void farm_gain_from_db(
        const double* __restrict__ d, const long long n, const double snap_db, const double per_db,
        double* __restrict__ g2) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const double snap = d[i] < snap_db ? 1.0 : 0.0;
        const double g = farm_max(exp(d[i] * per_db), snap);
        g2[i] = farm_min(g, g2[i]);
    }
}
"""


def required_gain_args(env, ceiling: float, g) -> tuple:
    """:data:`GAIN_CUDA`'s ``farm_required_gain``: contiguous float32 ``env`` (n,) -> float64 ``g``."""
    return env, np.int64(env.size), np.float64(ceiling), g


def to_db_args(g2, g_req, d) -> tuple:
    """``farm_gain_to_db``: ``g2 = min(g2, g_req)`` in place and ``d`` its reduction in dB (contiguous float64)."""
    _float64(g2, g_req, d)
    return g2, g_req, np.int64(g2.size), np.float64(-_DB_PER_NEPER), d


def from_db_args(d, g2) -> tuple:
    """``farm_gain_from_db``: the released reduction ``d`` (dB) back to gains, snapped, ``min`` with ``g2`` in place."""
    _float64(d, g2)
    return d, np.int64(g2.size), np.float64(SNAP_DB), np.float64(-1.0 / _DB_PER_NEPER), g2


def _float64(*arrays) -> None:
    """The kernels read these as contiguous ``double`` arrays of one length."""
    for a in arrays:
        if a.dtype != np.float64 or a.ndim != 1 or a.size != arrays[0].size or a.strides[0] != 8:
            raise TypeError(f"GAIN_CUDA needs contiguous float64 arrays of one length, got {a.dtype} {a.shape}")


def gain_curve(g_req, lookahead_samples: int, release_samples: float, starts=()):
    """Attack (hold + triangular ramp over the lookahead) and release (in dB).

    ``g_req`` (samples,) in (0, 1]; returns float64 gains ``g <= g_req``
    (see the module docstring) that start falling at most
    ``lookahead_samples`` before the sample that needs them and recover
    with time constant ``release_samples`` (in samples) in dB.

    Works through the track in chunks (cache-sized on the host): hold and
    ramp are local (each chunk reads ``lookahead`` samples of context on
    either side), and the release scan carries its state from one chunk to
    the next (``y0``), so the result equals one whole-track computation.
    ``starts``: samples where a track begins after a gap of at least the lookahead
    (a batch, :mod:`kernels.batch`): the attack ramp and the release start there
    as at sample 0.
    """
    xp = backend.array_module(g_req)
    g_req = xp.asarray(g_req, dtype=xp.float64)
    n = g_req.shape[-1]
    w, r, chunk = gain_grid(xp, lookahead_samples, release_samples)
    out = xp.empty(n, dtype=xp.float64)
    state = xp.zeros((), dtype=xp.float64)  # gain reduction (dB) before the first sample
    for s in range(0, n, chunk):  # a loop over chunks, not samples
        e = min(n, s + chunk)
        out[s:e], state = gain_chunk(xp, g_req, 0, s, e, n, w, r, state, starts)
    return out


def gain_grid(xp, lookahead_samples: int, release_samples: float) -> tuple[int, float, int]:
    """(hold window w = lookahead + 1, release coefficient r per sample, chunk) of :func:`gain_curve`."""
    w = int(lookahead_samples) + 1  # hold window [n, n + L]; the ramp spans [n - L, n]
    r = math.exp(-1.0 / max(float(release_samples), 1e-9))
    return w, r, max(GAIN_CHUNK_CPU if xp is np else GAIN_CHUNK_GPU, w)


def gain_chunk(xp, gw, off: int, s: int, e: int, n: int, w: int, r: float, state, starts=()):
    """Gains ``[s, e)`` of :func:`gain_curve` and the release state after them.

    ``gw`` holds ``g_req`` (float64) samples ``[off, off + len)``, at least
    ``[max(0, s - w + 1), min(n, e + w - 1))``: hold and ramp are local, the
    release scan starts from ``state`` (gain reduction in dB before ``s``).
    On the host, a stretch that asks for no gain reduction, entered with none,
    is unity gain without computing it (the computation gives exactly 1.0 there;
    a device check would cost a synchronisation).
    """
    lo, hi = max(0, s - (w - 1)), min(n, e + (w - 1))
    window = gw[lo - off:hi - off]
    if xp is np and state == 0.0 and window.min() == 1.0:  # host only: a device check would sync
        return xp.ones(e - s, dtype=xp.float64), state
    g1 = _forward_min(xp, window, w)  # exact on [lo, e): windows end before hi
    for t in starts:  # a track's start in a batch: its ramp's history is its first hold, as at sample 0
        if lo < t < hi:
            g1[max(0, t - (w - 1) - lo):t - lo] = g1[t - lo]
    g2 = _ramp(xp, g1, w)[s - lo:e - lo]  # exact on [s, e): w - 1 samples of history
    device = backend.raw_kernels(xp)
    # g2 = min(g2, g_req): proven <= g_req; this removes the running sums' rounding. Then
    # the release in gain reduction dB: d = max(d2, r*d) (an exact scan), so d >= d2.
    if device:  # both steps in one pass (GAIN_CUDA)
        d = xp.empty_like(g2)
        backend.launch(GAIN_CUDA, "farm_gain_to_db", g2.size, to_db_args(g2, xp.ascontiguousarray(gw[s - off:e - off]),
                                                                         d))
    else:
        xp.minimum(g2, gw[s - off:e - off], out=g2)
        d = xp.log(g2)
        d *= -_DB_PER_NEPER
    cut = pieces(e - s, [t - s for t in starts])
    if any(fresh for _, _, fresh in cut):  # a batch's tracks: the release starts at rest at each, as at sample 0
        for a, b, fresh in cut:
            d[a:b] = affine_max_scan(d[a:b], r, 0.0, xp.zeros((), dtype=xp.float64) if fresh else state)
    else:
        d = affine_max_scan(d, r, 0.0, state)
    state = d[-1].copy()  # a copy: on CuPy d[-1] is a view, and d is overwritten below
    if device:  # the next four steps in one pass (GAIN_CUDA)
        backend.launch(GAIN_CUDA, "farm_gain_from_db", g2.size, from_db_args(xp.ascontiguousarray(d), g2))
        return g2, state
    snap = d < SNAP_DB
    d *= -1.0 / _DB_PER_NEPER
    g = xp.exp(d, out=d)
    xp.maximum(g, snap, out=g)  # release tails end exactly at unity gain (g > 0, snap is 0 or 1)
    return xp.minimum(g, g2, out=g2), state  # exact: g <= g2 <= g_req


def _forward_min(xp, g, w: int):
    """``out[n] = min(g[n : n + w])`` (ones past the end) by log-step doubling:
    ``ceil(log2 w)`` vectorised minimum passes, no per-sample loop."""
    n = g.shape[-1]
    if w <= 1:
        return g.copy()
    size = n + w - 1
    cur = xp.empty(size, dtype=g.dtype)
    cur[:n] = g
    cur[n:] = 1.0
    nxt = xp.empty(size, dtype=g.dtype)  # ping-pong buffers: no overlapping in/out views
    span = 1  # cur[i] = min(padded[i : i + span]) for i < size - span + 1
    while 2 * span <= w:
        valid = size - 2 * span + 1
        xp.minimum(cur[:valid], cur[span:span + valid], out=nxt[:valid])
        cur, nxt = nxt, cur
        span *= 2
    if span < w:  # two overlapping windows of `span` cover exactly w samples
        k = w - span
        xp.minimum(cur[:n], cur[k:k + n], out=nxt[:n])
        cur = nxt
    return cur[:n]


def _ramp(xp, g1, w: int):
    """Triangular average of ``g1`` over ``[n - w + 1, n]`` (``g1[k] = g1[0]`` for ``k < 0``).

    Two cascaded causal box sums of lengths ``m1 + m2 = w + 1`` (support
    ``w``), via float64 running sums of ``g1 - 1``: stretches of unit gain sum
    to exact zeros, so they come out exactly 1.0. Weights are non-negative
    and sum to 1.
    """
    n = g1.shape[-1]
    m1 = (w + 1) // 2
    m2 = w + 1 - m1
    c1 = xp.empty(n + m1, dtype=xp.float64)
    c1[0] = 0.0
    xp.subtract(g1, 1.0, out=c1[m1:])
    c1[1:m1] = c1[m1]  # edge extension before the start
    c1 = xp.cumsum(c1)
    c2 = xp.empty(n + m2, dtype=xp.float64)
    c2[0] = 0.0
    xp.subtract(c1[m1:], c1[:n], out=c2[m2:])  # box-1 sums (times m1)
    del c1
    c2[1:m2] = c2[m2]
    c2 = xp.cumsum(c2)
    out = xp.subtract(c2[m2:], c2[:n])
    out *= 1.0 / (m1 * m2)
    out += 1.0
    return out


__all__ = ["apply_gain", "check", "Detection", "LimiterResult", "limit", "peak_envelope", "detection_pair",
           "gated_envelope", "gain_scale", "required_gain", "gain_curve", "CHECK_FACTOR", "MARGIN"]
