"""Dynamics: linear-phase crossover, multiband and broadband compressors, oversampled saturation.

    x (C, N) --crossover (one FFT convolution with a (bands, taps) bank)--> bands (C, B, N)
      --> level per band, channel-linked: peak max_c |x|, or rms max_c (one-pole mean square)
      --> static curve: gain reduction in dB (threshold, ratio, quadratic soft knee)
      --> smoothing in dB: smooth decoupled peak detector (release scan, then attack one-pole)
      --> gain = makeup - reduction, applied per band; the bands summed

Crossover. Every crossover frequency ``f_k`` gets a Kaiser-windowed sinc
low-pass ``lp_k`` (6 dB at ``f_k``, transition ``f_k/2 .. 3 f_k/2``, >= 80 dB
stopband), all zero-padded to one odd length so they share one centre. The
bands are ``lp_0, lp_1 - lp_0, ..., delta - lp_last``: the rows telescope to a
unit impulse, so with unit gains the bands sum back to the input exactly
(float32 rounding of the convolution aside). The "same" crop removes the
(taps - 1)/2 samples of delay, as :func:`kernels.eq.apply_eq` does.

Gain computer (Giannoulis, Massberg & Reiss, "Digital Dynamic Range
Compressor Design - A Tutorial and Analysis", JAES 60(6), 2012). Static
curve, level ``x`` and threshold ``T`` in dB, ratio ``R``, knee width ``W``:
``x`` below ``T - W/2``: no reduction; above ``T + W/2``: ``(x - T)(1 - 1/R)``;
in between the quadratic knee ``(1 - 1/R)(x - T + W/2)^2 / (2W)``. The
reduction ``c[n]`` is smoothed in dB (their "log domain" placement) by the
*smooth decoupled* peak detector::

    y1[n] = max(c[n], a_R y1[n-1] + (1 - a_R) c[n])     release: scan.affine_max_scan
    y[n]  = a_A y[n-1] + (1 - a_A) y1[n]                 attack:  scan.one_pole

with ``a = exp(-1 / (tau * fs))``. Both recursions are exact associative
scans (:mod:`kernels.scan`), so there is no per-sample loop and no
approximation on either backend. The paper's other form, the *smooth
branching* detector (attack or release coefficient depending on whether
``c > y``), composes into piecewise-linear maps whose number of pieces grows
with the span, so it has no closed-form scan; an overlapped-chunk version
needs a warm-up of ~16 release time constants (768 000 samples for 1 s at
48 kHz). The decoupled form attacks with exactly ``tau_A`` (63 % of a step
after ``attack_ms``) and releases with ``tau_R`` followed by the attack
one-pole (63 % after about ``release_ms + attack_ms``).
Levels and the gain computer run in float64 in chunks of
:data:`GAIN_CHUNK_CPU` / :data:`GAIN_CHUNK_GPU` samples with the state
carried (as :func:`kernels.limiter.gain_curve`); audio stays in its dtype.

Saturation. ``tanh(g x) / g`` (unity gain for small signals) on the signal
upsampled ``oversample`` times with a linear-phase polyphase FIR (passband to
0.45 fs within 1e-5 dB, stopband from 0.5 fs at 119.5 dB), then the same FIR as the
anti-aliasing filter before taking every ``oversample``-th sample, computed
as one multi-input convolution of the phases (:func:`convolve_mimo`). The
stopband starts at the *output* Nyquist frequency, so nothing between it and
the high rate's Nyquist folds back (the price: the response falls over
0.45 - 0.5 fs). Harmonics beyond the high rate's Nyquist still fold; tanh's
decay more slowly the harder it is driven, hence the drive limit per factor
(:data:`kernels.params.SATURATION_MAX_DRIVE_DB`: a full-scale 10 kHz sine at
48 kHz aliases at -110 / -108 / -101 dBFS at 4x / 8x / 16x at the limit).

Streaming (:mod:`kernels.stream`): :class:`MultibandStream`,
:class:`CompressorStream`, :class:`SaturationStream` take blocks and return
outputs whose concatenation equals the whole-signal function within float32
rounding. The compressors carry their scan state; the FIR stages keep just
enough input history (their reach) and hold back outputs whose future is
not yet known (the crossover's (taps - 1)/2, 1004 samples at 48 kHz for a
120 Hz crossover; the saturator's 2 x :data:`OS_HALF_TAPS` + 1).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.signal

from . import backend
from .convolve import ConvolveStream, convolve_mimo, fftconvolve
from .params import CompressorBand, CompressorParams, MultibandParams, SaturationParams
from .scan import affine_max_scan, one_pole
from .stream import Identity, Streamer, pieces, run, split

CROSSOVER_STOPBAND_DB = 80.0  # Kaiser design attenuation of each crossover low-pass
CROSSOVER_TRANSITION = 1.0  # transition width as a fraction of the crossover frequency (f/2 .. 3f/2)
MAX_CROSSOVER = 0.45  # crossovers must sit below 0.45 x the sample rate
OS_PASS = 0.45  # saturation oversampling filter: passband edge / base rate
OS_STOP = 0.5  # stopband edge / base rate: nothing above the output Nyquist frequency survives
OS_STOPBAND_DB = 120.0  # Kaiser design target (119.5 dB measured)
GAIN_CHUNK_CPU = 1 << 16  # samples per gain-computer chunk: float64 temporaries stay in cache
GAIN_CHUNK_GPU = 1 << 22
SAT_CHUNK_CPU = 1 << 15  # base samples per saturation chunk (x oversample at the high rate)
SAT_CHUNK_GPU = 1 << 20
LEVEL_FLOOR = 1e-30  # linear floor before taking dB: silence reads -600 dB (peak)

_DB_PER_NEPER = 20.0 / math.log(10.0)


@dataclass(frozen=True)
class DynamicsResult:
    """What the compressors return.

    ``audio``: the output, shape, dtype and backend of the input,
    time-aligned. ``gain_reduction_db``: the smoothed gain reduction (>= 0 dB,
    makeup not included) in float32, shape (bands, samples) for
    :func:`compress_multiband`, (samples,) for :func:`compress`.
    """

    audio: Any
    gain_reduction_db: Any


# --------------------------------------------------------------------------- crossover



@functools.lru_cache(maxsize=32)
def crossover_bank(crossovers_hz: tuple[float, ...], sample_rate: float) -> np.ndarray:
    """The crossover as FIR rows (bands, taps), float64, odd length, read-only.

    Row 0 is the low-pass at ``crossovers_hz[0]``, row k the difference of
    the low-passes at ``crossovers_hz[k]`` and ``[k-1]``, the last row a unit
    impulse minus the top low-pass: the rows sum to a unit impulse at the
    centre tap. Each low-pass is as long as its own transition needs
    (lower crossovers are longer), centred in the common length.
    """
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate!r}")
    nyq = sample_rate / 2.0
    for f in crossovers_hz:
        if not 0.0 < f < MAX_CROSSOVER * sample_rate:
            raise ValueError(f"multiband crossovers_hz must be below {MAX_CROSSOVER} x the sample rate "
                             f"({MAX_CROSSOVER * sample_rate:g} Hz at {sample_rate:g} Hz), got {f:g} Hz; "
                             "lower it or resample the track")
    lows = []
    for f in crossovers_hz:
        width = min(CROSSOVER_TRANSITION * f, 2.0 * (nyq - f))  # keep the transition under Nyquist
        ntaps, beta = scipy.signal.kaiserord(CROSSOVER_STOPBAND_DB, width / nyq)
        ntaps |= 1  # odd: symmetric about a whole-sample centre (type I, linear phase)
        lows.append(scipy.signal.firwin(ntaps, f, window=("kaiser", beta), fs=sample_rate))
    m = max(lp.size for lp in lows)
    padded = np.zeros((len(lows), m))
    for k, lp in enumerate(lows):
        off = (m - lp.size) // 2
        padded[k, off:off + lp.size] = 0.5 * (lp + lp[::-1])  # exactly symmetric
    delta = np.zeros(m)
    delta[m // 2] = 1.0
    rows = [padded[0]] + [padded[k] - padded[k - 1] for k in range(1, len(lows))] + [delta - padded[-1]]
    bank = np.stack(rows)
    bank.setflags(write=False)  # cached and shared
    return bank


def crossover_split(x, sample_rate: float, crossovers_hz: tuple[float, ...]):
    """Split ``x`` (channels, samples) into bands (channels, bands, samples), low to high.

    One FFT convolution of every channel with the :func:`crossover_bank`,
    "same" crop (time-aligned with ``x``), in ``x``'s dtype and backend.
    ``bands.sum(axis=1)`` equals ``x`` within rounding.
    """
    xp, x = backend.float_audio(x, "crossover_split")
    bank = xp.asarray(crossover_bank(tuple(float(f) for f in crossovers_hz), float(sample_rate)), dtype=x.dtype)
    return fftconvolve(x[:, None, :], bank, mode="same")


# --------------------------------------------------------------------------- gain computer


def static_gain_reduction_db(level_db, threshold_db: float, ratio: float, knee_db: float):
    """Gain reduction (>= 0 dB) of the static curve at ``level_db`` (array, float64).

    Giannoulis et al. 2012's soft-knee gain computer, written without branches:
    with ``o = x - T`` and ``q = clip(o + W/2, 0, W)`` the reduction is
    ``(1 - 1/R) (q^2 / (2W) + max(o - W/2, 0))``, continuous with its slope.
    """
    xp = backend.array_module(level_db)
    slope = 1.0 - 1.0 / ratio
    over = level_db - threshold_db
    if knee_db <= 0.0:
        return xp.maximum(over, 0.0) * slope
    half = 0.5 * knee_db
    q = xp.clip(over + half, 0.0, knee_db)
    out = xp.maximum(over - half, 0.0)
    out += q * q / (2.0 * knee_db)
    out *= slope
    return out


def _alpha(time_ms: float, sample_rate: float) -> float:
    """One-pole coefficient ``exp(-1 / (tau fs))`` for a time constant in ms."""
    return math.exp(-1000.0 / (time_ms * sample_rate))


class _GainComputer:
    """Detection, static curve and smoothing for every band of a (C, B, n)
    signal; the recursion state is carried from one call to the next, so
    consecutive calls equal one call on the concatenation."""

    def __init__(self, bands: tuple[CompressorBand, ...], detection: str, rms_ms: float, sample_rate: float):
        self.bands = bands
        self.rms = detection == "rms"
        self.a_rms = _alpha(rms_ms, sample_rate)
        self.coef = [(_alpha(b.attack_ms, sample_rate), _alpha(b.release_ms, sample_rate)) for b in bands]
        self.ms = None  # (C, B) mean square before the next sample (rms detection)
        self.y1 = self.y = None  # (B,) release and attack states, dB

    def reset(self) -> None:
        """Back to rest, as before a track's first sample (a batch's next track)."""
        self.ms = self.y1 = self.y = None

    def __call__(self, x):
        """Gain reduction in dB (B, n), float64, for the next ``n`` samples ``x`` (C, B, n)."""
        xp = backend.array_module(x)
        c, nb, n = x.shape
        if self.y is None:
            self.ms = xp.zeros((c, nb), dtype=xp.float64)
            self.y1 = xp.zeros(nb, dtype=xp.float64)
            self.y = xp.zeros(nb, dtype=xp.float64)
        if n == 0:
            return xp.zeros((nb, 0), dtype=xp.float64)
        v = x.astype(xp.float64)
        if self.rms:
            v *= v
            v = one_pole(v, self.a_rms, self.ms)  # exact linear scan, per channel and band
            self.ms = v[..., -1].copy()
            level = v.max(axis=0)  # channel-linked
            xp.maximum(level, LEVEL_FLOOR * LEVEL_FLOOR, out=level)
            level_db = xp.log10(level, out=level)
            level_db *= 10.0
        else:
            xp.abs(v, out=v)
            level = v.max(axis=0)
            xp.maximum(level, LEVEL_FLOOR, out=level)
            level_db = xp.log10(level, out=level)
            level_db *= 20.0
        del v
        gr = xp.empty((nb, n), dtype=xp.float64)
        for k, band in enumerate(self.bands):  # a loop over bands, not samples
            c_db = static_gain_reduction_db(level_db[k], band.threshold_db, band.ratio, band.knee_db)
            if xp is np and self.y1[k] == 0.0 and self.y[k] == 0.0 and not c_db.any():
                gr[k] = 0.0  # at rest and under the knee: the scans would return exact zeros
                continue
            a_att, a_rel = self.coef[k]
            y1 = affine_max_scan(c_db, a_rel, c_db * (1.0 - a_rel), self.y1[k])
            y = one_pole(y1, a_att, self.y[k])
            self.y1[k] = y1[-1]
            self.y[k] = y[-1]
            gr[k] = y
        return gr

    def gains(self, gr, dtype):
        """Linear gains (B, n) in ``dtype``: ``makeup - reduction`` in dB."""
        xp = backend.array_module(gr)
        makeup = xp.asarray([b.makeup_db for b in self.bands], dtype=xp.float64)[:, None]
        g = makeup - gr
        g *= 1.0 / _DB_PER_NEPER
        return xp.exp(g, out=g).astype(dtype)  # exp(0) == 1.0 exactly: no reduction, no makeup is unity


def _gain_chunk(xp) -> int:
    return GAIN_CHUNK_CPU if xp is np else GAIN_CHUNK_GPU


def _apply_bands(gc: _GainComputer, bands, starts=()):
    """(audio (C, n), gain reduction (B, n) float32) for bands (C, B, n) through ``gc``;
    ``gc`` is reset (:meth:`_GainComputer.reset`) at each of ``starts`` (offsets into
    the bands: the tracks of a batch, :mod:`kernels.batch`)."""
    xp = backend.array_module(bands)
    cut = pieces(bands.shape[-1], starts)
    if any(fresh for _, _, fresh in cut):  # a batch's tracks: the gain computer starts at rest at each
        outs = []
        for a, b, fresh in cut:
            if fresh:
                gc.reset()
            outs.append(_apply_bands(gc, bands[..., a:b]))
        return xp.concatenate([o[0] for o in outs], axis=-1), xp.concatenate([o[1] for o in outs], axis=-1)
    gr = gc(bands)
    g = gc.gains(gr, bands.dtype)
    out = (bands * g).sum(axis=1) if bands.shape[1] > 1 else bands[:, 0] * g[0]
    return out, gr.astype(xp.float32)


def compress_multiband(x, sample_rate: float, params: MultibandParams, starts=()) -> DynamicsResult:
    """Multiband compression of ``x`` (channels, samples) at ``sample_rate`` Hz.

    Crossover, then one gain computer per band (see the module docstring),
    channel-linked. Bypassed params return ``x`` itself and no reduction.
    ``starts``: samples where a track of a batch begins (:mod:`kernels.batch`):
    the gain computers start there at rest, as at sample 0, whatever they heard
    before (the track before it, the crossover's ringing from this one's start).
    """
    xp, x = backend.float_audio(x, "compress_multiband")
    nb, n = len(params.bands), x.shape[-1]
    if params.bypass or n == 0 or x.shape[0] == 0:
        return DynamicsResult(x, xp.zeros((nb, n), dtype=xp.float32))
    # The streamed form does the work: the crossover chunk by chunk on its whole-signal
    # overlap-save frames (the same bands to the bit as crossover_split, without a
    # (channels, bands, samples) array of the whole track: 1.5 GB of transients for
    # 4 min of stereo in 4 bands), the gain computer on its chunk grid.
    grs: list = []
    ms = MultibandStream(params, sample_rate, x.shape[0], n, gr_sink=grs.append, starts=starts)
    out = run(ms, split(x, _gain_chunk(xp)))
    return DynamicsResult(out, grs[0] if len(grs) == 1 else xp.concatenate(grs, axis=-1))


def compress(x, sample_rate: float, params: CompressorParams, starts=()) -> DynamicsResult:
    """Broadband compression of ``x`` (channels, samples): the multiband gain
    computer on the whole band. Bypassed params return ``x`` itself. Samples
    that need no reduction (with no makeup) come back bit-identical.
    ``starts``: samples where a batch's track begins (:mod:`kernels.batch`): the
    gain computer starts there at rest, as at sample 0."""
    xp, x = backend.float_audio(x, "compress")
    n = x.shape[-1]
    if params.bypass or n == 0 or x.shape[0] == 0:
        return DynamicsResult(x, xp.zeros(n, dtype=xp.float32))
    gc = _GainComputer((params.band,), params.detection, params.rms_ms, sample_rate)
    out = xp.empty_like(x)
    gr = xp.empty(n, dtype=xp.float32)
    step = _gain_chunk(xp)
    for s in range(0, n, step):  # a loop over chunks, not samples
        o, r = _apply_bands(gc, x[:, None, s:s + step], [t - s for t in starts])
        out[:, s:s + step], gr[s:s + step] = o, r[0]
    return DynamicsResult(out, gr)


# --------------------------------------------------------------------------- saturation


@functools.lru_cache(maxsize=8)
def os_filter(factor: int) -> np.ndarray:
    """Saturation's interpolation / anti-aliasing FIR at ``factor`` x the rate,
    float64, DC gain ``factor``, length ``2 * factor * OS_HALF_TAPS + 1``
    (a whole number of base samples of delay on each side)."""
    if factor not in (2, 4, 8, 16):
        raise ValueError(f"saturation oversample must be 2, 4, 8 or 16, got {factor!r}")
    half = factor * OS_HALF_TAPS
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = 0.5 * (OS_PASS + OS_STOP) / factor  # cycles per high-rate sample
    beta = scipy.signal.kaiser_beta(OS_STOPBAND_DB)
    taps = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(n.size, beta)
    taps *= factor / taps.sum()
    taps.setflags(write=False)
    return taps


def _os_half_taps() -> int:
    """Half-length in base samples for the Kaiser spec (independent of the factor)."""
    width = OS_STOP - OS_PASS  # of the base rate; the high-rate length scales with the factor
    ntaps, _ = scipy.signal.kaiserord(OS_STOPBAND_DB, 2.0 * width)  # per base sample
    return int(math.ceil((ntaps - 1) / 2.0))


OS_HALF_TAPS = _os_half_taps()  # 79 base samples each side for 120 dB over 0.45-0.5 fs


@functools.lru_cache(maxsize=8)
def _os_bank(factor: int) -> np.ndarray:
    """Polyphase rows (factor, 2*OS_HALF_TAPS + 1): row p holds taps[p::factor]."""
    taps = os_filter(factor)
    bank = np.zeros((factor, 2 * OS_HALF_TAPS + 1))
    for p in range(factor):
        row = taps[p::factor]
        bank[p, :row.size] = row
    bank.setflags(write=False)
    return bank


def _saturate_block(x, params: SaturationParams):
    """Saturate ``x`` (C, n) taken as zero outside: upsample, tanh, filter, decimate."""
    xp = backend.array_module(x)
    f, h, n = params.oversample, OS_HALF_TAPS, x.shape[-1]
    bank = xp.asarray(_os_bank(f), dtype=x.dtype)
    # phases[c, p, m] is the high-rate sample m*f + p (as oversample.upsample)
    phases = fftconvolve(x[:, None, :], bank, mode="full")[..., h:h + n]
    g = 10.0 ** (params.drive_db / 20.0)
    phases *= g
    wet = xp.tanh(phases, out=phases)
    wet *= 1.0 / g
    # Decimation y[m] = sum_i taps[i]/f * w[m f + f h - i]: with i = j f + q it is
    # sum_q (row_q * w_q)[m + h], w_q[m] = w[m f - q], i.e. phase 0 at m and
    # phase f - q at m - 1; the phases are summed in the frequency domain.
    w = xp.zeros((x.shape[0], f, n + 1), dtype=x.dtype)
    w[:, 0, :n] = wet[:, 0]
    w[:, 1:, 1:] = wet[:, :0:-1]
    del wet, phases
    y = convolve_mimo(w, bank[None] * (1.0 / f))[:, 0, h:h + n]
    if params.mix != 1.0:
        y *= params.mix
        y += x * (1.0 - params.mix)
    return y


def _reach(params: SaturationParams) -> int:
    """Base samples of input on each side that one output sample depends on."""
    return 2 * OS_HALF_TAPS + 1


def saturate(x, sample_rate: float, params: SaturationParams):
    """Oversampled soft clipping of ``x`` (channels, samples); same shape, dtype
    and backend, time-aligned. Bypassed params return ``x`` itself.

    Computed in chunks with :func:`_reach` samples of context on each side,
    so nothing the size of the oversampled track is allocated.
    ``sample_rate`` is accepted for the kernels' common signature; the
    filter is specified relative to it.
    """
    xp, x = backend.float_audio(x, "saturate")
    n = x.shape[-1]
    if params.bypass or n == 0 or x.shape[0] == 0:
        return x
    r = _reach(params)
    chunk = SAT_CHUNK_CPU if xp is np else SAT_CHUNK_GPU
    out = xp.empty_like(x)
    for s in range(0, n, chunk):  # a loop over chunks, not samples
        e = min(n, s + chunk)
        lo, hi = max(0, s - r), min(n, e + r)
        out[:, s:e] = _saturate_block(x[:, lo:hi], params)[:, s - lo:e - lo]
    return out


# --------------------------------------------------------------------------- streaming


class _LocalStream:
    """Streams ``fn``, a whole-signal operator whose output sample ``n``
    depends only on input samples ``n - reach .. n + reach`` (zeros outside
    the signal): keeps ``2 * reach`` samples of history, emits what is
    determined. ``fn`` maps (C, k) to (..., k) aligned with its input."""

    def __init__(self, fn: Callable, reach: int):
        self.fn, self.reach = fn, reach
        self.buf = None  # input samples [start, end)
        self.start = self.end = self.done = 0  # absolute indices; done: outputs emitted

    def push(self, x):
        """Outputs for samples [done, end - reach), or None when none are determined yet."""
        xp = backend.array_module(x)
        self.buf = x if self.buf is None else xp.concatenate([self.buf, x], axis=-1)
        self.end += x.shape[-1]
        return self._emit(self.end - self.reach)

    def finish(self):
        """The remaining outputs (the end of the buffer is the end of the signal)."""
        return self._emit(self.end)

    def _emit(self, ready: int):
        if self.buf is None or ready <= self.done:
            return None
        # The buffer's left edge is read as zeros: exact for outputs at least
        # `reach` after it (kept below), and at the true start it *is* zeros.
        y = self.fn(self.buf)[..., self.done - self.start:ready - self.start]
        self.done = ready
        keep = max(self.start, self.done - 2 * self.reach)
        self.buf = self.buf[..., keep - self.start:]
        self.start = keep
        return y


def _empty(xp, shape, dtype):
    return xp.zeros(shape, dtype=dtype)


def _bands_out(gc: "_GainComputer", chunks, xp, channels: int, dtype, gr_sink=None, offset: int = 0, starts=()):
    """The audio (channels, k) of consecutive band chunks (C, B, j) through ``gc``, in
    order; each chunk's gain reduction (B, j), float32, goes to ``gr_sink`` if given.
    ``starts`` (see :func:`compress_multiband`) are samples of the signal whose
    sample ``offset`` the first chunk begins with."""
    if not chunks:
        return _empty(xp, (channels, 0), dtype)
    outs = []
    for bands in chunks:
        audio, gr = _apply_bands(gc, bands, [t - offset for t in starts])
        offset += bands.shape[-1]
        outs.append(audio)
        if gr_sink is not None:
            gr_sink(gr)
    return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)


class _Regrid:
    """Re-cuts consecutive (..., k) pieces into chunks of ``step`` samples on the
    grid the whole-signal function uses (counted from the signal's start)."""

    def __init__(self, step: int):
        self.step, self._parts, self.size = step, [], 0

    def push(self, y):
        if y is not None and y.shape[-1]:
            self._parts.append(y)
            self.size += y.shape[-1]

    def chunks(self, final: bool = False):
        """Every full chunk queued (and with ``final`` the shorter rest), in order."""
        if not self._parts or (self.size < self.step and not final):
            return []
        xp = backend.array_module(self._parts[0])
        seg = self._parts[0] if len(self._parts) == 1 else xp.concatenate(self._parts, axis=-1)
        whole = self.size if final else self.size // self.step * self.step
        out = [seg[..., s:min(s + self.step, whole)] for s in range(0, whole, self.step)]
        rest = seg[..., whole:]
        self._parts = [rest] if rest.shape[-1] else []
        self.size = rest.shape[-1]
        return out


class _CrossoverStream:
    """:func:`crossover_split` block by block, bit for bit on the host: the bank
    runs through :class:`kernels.convolve.ConvolveStream` in its bank mode (the
    whole-signal convolution's overlap-save frames, FFT sizes, broadcast and
    "same" crop). Returns (C, B, j) or None."""

    def __init__(self, bank: np.ndarray, channels: int, total: int):
        self.nb, self.channels = bank.shape[0], channels
        m = bank.shape[-1]
        # row c * B + b filters channel c with band b (the broadcast (C, 1, N) * (B, M) of crossover_split)
        self._conv = ConvolveStream(bank, channels, total, offset=(m - 1) // 2, length=total, cast=True,
                                    bank=True)

    def _bands(self, y):
        return y.reshape(self.channels, self.nb, -1) if y.shape[-1] else None

    def push(self, x):
        return self._bands(self._conv.push(x))

    def finish(self):
        return self._bands(self._conv.finish())


class MultibandStream(Streamer):
    """:func:`compress_multiband` block by block for a (channels, total) signal.

    With ``total`` (the render always knows it) the crossover runs through
    :class:`kernels.convolve.ConvolveStream` on the whole-signal convolution's
    frames and the gain computer on its chunk grid (:data:`GAIN_CHUNK_CPU` /
    :data:`GAIN_CHUNK_GPU` from the start), so the output equals
    :func:`compress_multiband` bit for bit on the host; it holds back the
    crossover's (taps - 1)/2 samples plus up to one FFT frame and one gain
    chunk. Without ``total`` the crossover is recomputed over a sliding window
    (equal within float32 rounding). Bypassed params pass blocks through.
    """

    def __init__(self, params: MultibandParams, sample_rate: float, channels: int, total: int | None = None,
                 gr_sink=None, starts=()):
        self.channels = channels
        self.gr_sink = gr_sink  # called with each emitted stretch's gain reduction (bands, j), float32
        self.starts, self._emitted = tuple(starts), 0  # compress_multiband's starts; how far the output has come
        if params.bypass:
            self._inner = Identity(channels)
            return
        self._inner = None
        xo = tuple(params.crossovers_hz)
        bank = crossover_bank(xo, float(sample_rate))
        reach = bank.shape[-1] // 2
        if total is not None and total > 0:
            self._split = _CrossoverStream(bank, channels, total)
        else:
            self._split = _LocalStream(lambda b: crossover_split(b, sample_rate, xo), reach)
        self._gc = _GainComputer(params.bands, params.detection, params.rms_ms, sample_rate)
        self._grid = None
        self._xp = self._dtype = None
        self.latency_samples = reach

    def push(self, x):
        if self._inner is not None:
            return self._inner.push(x)
        xp, x = backend.float_audio(x, "MultibandStream.push")
        self._xp, self._dtype = xp, x.dtype
        if self._grid is None:
            self._grid = _Regrid(_gain_chunk(xp))
        if x.shape[-1]:
            self._grid.push(self._split.push(x))
        return self._out(self._grid.chunks())

    def finish(self):
        if self._inner is not None:
            return self._inner.finish()
        if self._grid is None:
            self._grid = _Regrid(_gain_chunk(self._xp or np))
        self._grid.push(self._split.finish())
        return self._out(self._grid.chunks(final=True))

    def _out(self, chunks):
        xp = self._xp or np
        out = _bands_out(self._gc, chunks, xp, self.channels, self._dtype or xp.float32, self.gr_sink,
                         self._emitted, self.starts)
        self._emitted += out.shape[-1]
        return out


class CompressorStream(Streamer):
    """:func:`compress` block by block, bit for bit: causal, but the gain
    computer runs on the whole-signal function's chunk grid, so up to one
    chunk (:data:`GAIN_CHUNK_CPU` samples on the host) is held back."""

    def __init__(self, params: CompressorParams, sample_rate: float, channels: int, total: int | None = None):
        self.channels = channels
        self._inner = Identity(channels) if params.bypass else None
        self._gc = _GainComputer((params.band,), params.detection, params.rms_ms, sample_rate)
        self._grid = None
        self._xp = self._dtype = None
        self.latency_samples = 0

    def push(self, x):
        if self._inner is not None:
            return self._inner.push(x)
        xp, x = backend.float_audio(x, "CompressorStream.push")
        self._xp, self._dtype = xp, x.dtype
        if self._grid is None:
            self._grid = _Regrid(_gain_chunk(xp))
        self._grid.push(x[:, None, :])
        return self._out(self._grid.chunks())

    def finish(self):
        if self._inner is not None:
            return self._inner.finish()
        if self._grid is None:
            return _empty(np, (self.channels, 0), np.float32)
        return self._out(self._grid.chunks(final=True))

    def _out(self, chunks):
        xp = self._xp or np
        return _bands_out(self._gc, chunks, xp, self.channels, self._dtype or xp.float32)


class SaturationStream(Streamer):
    """:func:`saturate` block by block, bit for bit: the same chunks
    (:data:`SAT_CHUNK_CPU` / :data:`SAT_CHUNK_GPU` from the start) with the
    same :func:`_reach` samples of context on each side, each computed once
    its right-hand context has arrived (up to a chunk plus the reach is held
    back). Bypassed params pass blocks through unchanged."""

    def __init__(self, params: SaturationParams, sample_rate: float, channels: int, total: int | None = None):
        self.channels = channels
        self.params = params
        self._inner = Identity(channels) if params.bypass else None
        self.reach = _reach(params)
        self.buf = None  # input samples [start, end)
        self.start = self.end = self.done = 0  # absolute indices; done: outputs emitted (a chunk edge)
        self._xp = self._dtype = None
        self.latency_samples = self.reach

    def push(self, x):
        if self._inner is not None:
            return self._inner.push(x)
        xp, x = backend.float_audio(x, "SaturationStream.push")
        self._xp, self._dtype = xp, x.dtype
        if x.shape[-1]:
            self.buf = x if self.buf is None else xp.concatenate([self.buf, x], axis=-1)
            self.end += x.shape[-1]
        return self._emit(final=False)

    def finish(self):
        if self._inner is not None:
            return self._inner.finish()
        return self._emit(final=True)

    def _emit(self, final: bool):
        xp = self._xp or np
        outs = []
        if self.buf is not None:
            chunk, r = (SAT_CHUNK_CPU if xp is np else SAT_CHUNK_GPU), self.reach
            while self.done < self.end:
                s = self.done
                e = min(self.end, s + chunk)
                if not final and (e < s + chunk or self.end < e + r):
                    break  # its right-hand context (or the chunk itself) has not arrived yet
                lo, hi = max(0, s - r), min(self.end, e + r)  # as saturate() with n = end at the end
                blk = self.buf[:, lo - self.start:hi - self.start]
                outs.append(_saturate_block(blk, self.params)[:, s - lo:e - lo])
                self.done = e
            keep = max(self.start, self.done - r)
            self.buf = self.buf[:, keep - self.start:]
            self.start = keep
        if not outs:
            return _empty(xp, (self.channels, 0), self._dtype or xp.float32)
        return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)


__all__ = ["DynamicsResult", "crossover_bank", "crossover_split", "static_gain_reduction_db",
           "compress_multiband", "compress", "os_filter", "saturate", "MultibandStream", "CompressorStream",
           "SaturationStream", "OS_HALF_TAPS"]
