"""A BS.1770-4 / EBU R128 loudness meter on NumPy or CuPy.

What it measures (``x`` shaped ``(channels, samples)``, any sample rate >= 8 kHz):

* integrated loudness, ITU-R BS.1770-4 Annex 1: K-weighting, mean square per
  400 ms gating block with 75 % overlap, channel weights, absolute gate at
  -70 LUFS and relative gate at -10 LU (eqs. 1-7);
* momentary (400 ms) and short-term (3 s) loudness series and their maxima,
  EBU Tech 3341 (the maxima are searched on a 1 ms grid, so a burst that is
  not aligned with the 100 ms display grid still reads its full level, as
  Tech 3341 cases 10, 11, 13 and 14 require);
* loudness range, EBU Tech 3342: short-term loudness every 100 ms, absolute
  gate -70 LUFS, relative gate -20 LU, 95th minus 10th percentile;
* true peak, BS.1770-4 Annex 2, by :func:`kernels.oversample.upsample`
  (4x by default, 16x on request), and sample peak.

Where the standards define no value -- digital silence, everything below the
gates, a programme shorter than one block or window -- the result is
``None``, never NaN and never an exception: integrated loudness and LRA of
silence, the maxima of a signal shorter than their window, and the true and
sample peak of digital silence (``None`` rather than ``-inf`` so a JSON
report reads ``null``). Series (:func:`momentary`, :func:`short_term`) read
``-inf`` for digitally silent windows.

How it runs: the K-weighted signal is squared and summed over channels with
their weights into one float64 power series, whose float64 cumulative sum
gives the energy of any window as one subtraction, so every block, window
and series is a gather of cumulative sums -- no loop over blocks. Gating and
percentiles stay on the array's device; results come to the host once, as
scalars, at the end. Unlike pyloudnorm only *complete* blocks count (a final
partial block is not a 400 ms gating block), any channel count is measured
(see :func:`channel_weights`), and the K-weighting is designed for the
actual sample rate.

For repeated measurement of the same signal at different gains (the
loudness-target loop), compute :func:`block_energies` once and call
:func:`gated_loudness` on ``energies * gain**2``: it is exact, because the
K-weighting is linear.

For programmes too long to hold in memory, :class:`LoudnessMeter` takes
the signal block by block and gives the same :class:`LoudnessStats` (bit
for bit on the host) from bounded state.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from . import backend, scan
from .convolve import fftconvolve
from .oversample import HALF_TAPS, PEAK_CHUNK_CPU, PEAK_CHUNK_GPU, design, phase_bank, true_peak

# BS.1770-4 Annex 1, eq. 2: loudness of a mean square z is -0.691 + 10 log10(z).
LOUDNESS_OFFSET_DB = -0.691
ABSOLUTE_GATE_LUFS = -70.0  # BS.1770-4 Annex 1, eq. 5 (Gamma_a)
RELATIVE_GATE_LU = -10.0  # BS.1770-4 Annex 1, eq. 6 (Gamma_r = gated mean - 10 LU)
BLOCK_S = 0.4  # gating block T_g (BS.1770-4 Annex 1, eq. 3); also the momentary window
HOP_S = 0.1  # 75 % overlap of the 400 ms blocks; the 10 Hz rate of the series (Tech 3341/3342)
SHORT_TERM_S = 3.0  # EBU Tech 3341 section 2.2 (short-term window)
MAX_SEARCH_HOP_S = 0.001  # grid on which the maxima are searched (<= 0.006 dB low for 400 ms)
LRA_ABSOLUTE_GATE_LUFS = -70.0  # EBU Tech 3342 section 2
LRA_RELATIVE_GATE_LU = -20.0  # EBU Tech 3342 section 2
LRA_PERCENTILES = (10.0, 95.0)  # EBU Tech 3342 section 2
SURROUND_WEIGHT = 1.41  # BS.1770-4 Annex 1, Table 3 (G_i for Ls, Rs: +1.5 dB)
MIN_SAMPLE_RATE = 8000  # the 1.68 kHz shelf needs the Nyquist frequency well above it
K_WEIGHT_CHUNK_S = 1.0  # device K-weighting: chunks filtered in parallel ...
K_WEIGHT_WARMUP_S = 0.25  # ... each started this early (>= 60 time constants of the 38 Hz pole pair)

# Analog prototypes of the two K-weighting stages, BS.1770-4 Annex 1, Figures 1-2.
# The standard prints only 48 kHz coefficients (Tables 1 and 2); these are
# the prototype parameters that reproduce those tables exactly through the
# bilinear transform with pre-warping at f0 (derived by B. De Man; the same
# values libebur128, ffmpeg's ebur128 and pyloudnorm's "DeMan" filter use),
# so the meter gives the standard's response at any sample rate. As in those
# meters the RLB numerator stays [1, -2, 1] (Table 2), so its passband gain,
# 1 + K/Q + K^2 (+0.043 dB at 48 kHz), varies slightly with the rate: the
# 1 kHz gain of the K-filter is 0.700 dB at 44.1 kHz, 0.698 dB at 48 kHz,
# 0.680 dB at 96 kHz.
SHELF_F0_HZ = 1681.974450955533
SHELF_GAIN_DB = 3.999843853973347
SHELF_Q = 0.7071752369554196
SHELF_VB_EXPONENT = 0.4996667741545416  # band gain Vb = Vh ** this (~sqrt(Vh))
RLB_F0_HZ = 38.13547087602444
RLB_Q = 0.5003270373238773

_FLOAT_SENTINEL = 1e30  # stands in for "not selected" in sorts (finite: no inf - inf warnings)


@dataclass(frozen=True)
class LoudnessStats:
    """What :func:`measure` reports; ``None`` where the standard defines no value."""

    integrated_lufs: float | None
    loudness_range_lu: float | None
    true_peak_dbtp: float | None
    max_momentary_lufs: float | None
    max_short_term_lufs: float | None
    sample_peak_dbfs: float | None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- design


@functools.lru_cache(maxsize=32)
def _k_sos(sample_rate: int) -> tuple:
    # Stage 1, the "pre-filter" high shelf (BS.1770-4 Annex 1, Fig. 1, Table 1).
    k = math.tan(math.pi * SHELF_F0_HZ / sample_rate)
    vh = 10.0 ** (SHELF_GAIN_DB / 20.0)
    vb = vh ** SHELF_VB_EXPONENT
    a0 = 1.0 + k / SHELF_Q + k * k
    shelf = ((vh + vb * k / SHELF_Q + k * k) / a0, 2.0 * (k * k - vh) / a0,
             (vh - vb * k / SHELF_Q + k * k) / a0,
             1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / SHELF_Q + k * k) / a0)
    # Stage 2, the RLB high-pass (BS.1770-4 Annex 1, Fig. 2, Table 2).
    k = math.tan(math.pi * RLB_F0_HZ / sample_rate)
    a0 = 1.0 + k / RLB_Q + k * k
    rlb = (1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / RLB_Q + k * k) / a0)
    return shelf, rlb


def _check_rate(sample_rate) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be an integer >= {MIN_SAMPLE_RATE} Hz (the K-weighting "
                         f"shelf sits at 1.68 kHz), got {sample_rate!r}")
    return int(sample_rate)


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """The K-weighting filter for ``sample_rate`` as second-order sections,
    float64 ``(2, 6)`` rows ``[b0, b1, b2, 1, a1, a2]`` (shelf, then RLB
    high-pass), as ``scipy.signal.sosfilt`` takes them. At 48 kHz these are
    the coefficients of BS.1770-4 Tables 1 and 2."""
    return np.array(_k_sos(_check_rate(sample_rate)), dtype=np.float64)


def channel_weights(channels: int) -> tuple[float, ...]:
    """BS.1770-4 channel weights G_i for ``channels`` channels in WAV/SMPTE order.

    1-3 channels (mono; L R; L R C) weigh 1.0. With 4 or 5 channels the first
    three are L R C and the rest surrounds (4.0 L R C S; 5.0 L R C Ls Rs,
    EBU Tech 3341 case 6) weighing 1.41. With 6 or more channels the fourth is
    the LFE, which BS.1770-4 excludes (weight 0), and channels from the fifth
    on are surrounds (5.1 L R C LFE Ls Rs; 6.1 ... Cs Ls Rs; 7.1 ... Lrs Rrs
    Lss Rss), 1.41 each -- as ffmpeg's ebur128 does. BS.1770-4 Table 3 would
    give rear channels beyond +-120 degrees a weight of 1.0; pass explicit
    ``channel_weights=`` to the measuring functions for such layouts, or for
    files whose order is not the WAV one (quad L R Ls Rs, for instance).
    """
    if channels < 1:
        raise ValueError(f"need at least one channel, got {channels}")
    w = [1.0] * min(channels, 3) + [SURROUND_WEIGHT] * max(channels - 3, 0)
    if channels >= 6:
        w[3] = 0.0  # LFE
    return tuple(w)


# --------------------------------------------------------------------------- filtering


def _as_2d(x):
    xp = backend.array_module(x)
    x = xp.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"audio must be shaped (channels, samples) (or (samples,) for mono), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("audio has no channels; shape it (channels, samples)")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"audio must be real numbers (float32 in the farm), got dtype {x.dtype}")
    return xp, x


def k_weight(x, sample_rate: int, chunk_s: float | None = None):
    """K-weight ``x`` (channels, samples): float64 output, same shape.

    On the host this is ``scipy.signal.sosfilt`` over the whole signal (its
    compiled twin :func:`kernels.scan.sosfilt`, the same bits). On a
    device, where a recursion over 10^7 samples is one long serial chain, the
    signal is cut into ``chunk_s`` chunks filtered side by side, each started
    :data:`K_WEIGHT_WARMUP_S` early from zero state: the filter's slowest
    poles (the 38 Hz pair) decay by e^-60 over the warm-up, so the chunks
    join the sequential result to float64 rounding (the first chunk is
    preceded by true zeros, as the signal is). ``chunk_s`` forces either
    path (``0`` = whole signal).
    """
    rate = _check_rate(sample_rate)
    xp, x = _as_2d(x)
    n = x.shape[-1]
    if n == 0:
        return xp.zeros(x.shape, dtype=xp.float64)
    chunk = _k_chunk(xp, n, rate, chunk_s)
    if not chunk:
        if xp is np:
            return scan.sosfilt(k_weighting_sos(rate), x)  # reads float32 as it is: no float64 copy first
        return backend.signal(xp).sosfilt(xp.asarray(k_weighting_sos(rate)), x.astype(xp.float64, copy=False),
                                          axis=-1)
    y, warm = _weighted_frames(x, rate, chunk)
    return y[..., warm:].reshape(x.shape[0], y.shape[1] * chunk)[:, :n]


def _k_chunk(xp, n: int, rate: int, chunk_s: float | None) -> int:
    """Samples per chunk of :func:`k_weight`'s chunked path, 0 for one pass over the whole signal."""
    if chunk_s is None:
        chunk_s = 0.0 if xp is np else K_WEIGHT_CHUNK_S
    chunk = int(round(chunk_s * rate))
    return 0 if chunk <= 0 or n <= 2 * chunk else chunk


def _weighted_frames(x, rate: int, chunk: int):
    """``(y, warm)``: the K-weighted frames (channels, count, warm + chunk) float64 of
    :func:`k_weight`'s chunked path, frame f being chunk f preceded by its warm-up
    (zeros before the signal and after its end)."""
    xp = backend.array_module(x)
    c, n = x.shape
    warm = int(math.ceil(K_WEIGHT_WARMUP_S * rate))
    count = -(-n // chunk)
    if backend.raw_kernels(xp) and x.dtype == xp.float32:  # one pass: read x, write the frames (K_FRAMES_CUDA)
        frames = xp.empty((c, count, warm + chunk), dtype=xp.float64)
        work, args = frames_args(xp.ascontiguousarray(x), chunk, warm, frames)
        backend.launch(K_FRAMES_CUDA, "farm_k_frames", work, args)
    else:
        padded = xp.zeros((c, warm + count * chunk), dtype=xp.float64)
        padded[:, warm:warm + n] = x
        # frame f reads padded[f*chunk : f*chunk + warm + chunk]: warm-up, then its chunk
        idx = (xp.arange(count)[:, None] * chunk + xp.arange(warm + chunk)[None, :])
        frames = padded[:, idx]  # (C, count, warm + chunk)
    sos = xp.asarray(k_weighting_sos(rate))
    return backend.signal(xp).sosfilt(sos, frames, axis=-1), warm


# The chunked K-weighting's copies as single passes on a device: the frames read
# straight from the float32 signal (no float64 copy, zero-padded copy, index array
# and gather first), and the weighted power summed straight from the filtered
# frames (no cropped copy, no per-channel temporaries). _power's float64
# operations in its order, so the same bits as the array path.
K_FRAMES_CUDA = r"""
extern "C" __global__ void farm_k_frames(
        const float* __restrict__ x, const long long n, const long long channels,
        const long long chunk, const long long warm, const long long count,
        double* __restrict__ frames) {
    const long long width = warm + chunk;
    const long long total = channels * count * width;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)blockDim.x * gridDim.x) {
        const long long c = t / (count * width);
        const long long r = t - c * count * width;
        const long long f = r / width;
        const long long i = f * chunk + (r - f * width) - warm;
        frames[t] = (i >= 0 && i < n) ? (double)x[c * n + i] : 0.0;
    }
}
"""

K_POWER_CUDA = r"""
extern "C" __global__ void farm_k_power(
        const double* __restrict__ y, const long long channels, const long long count,
        const long long chunk, const long long warm, const long long n,
        const double* __restrict__ w, double* __restrict__ p) {
    const long long width = warm + chunk;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const long long f = i / chunk;
        const long long at = f * width + warm + (i - f * chunk);
        double acc = 0.0;
        for (long long c = 0; c < channels; ++c) {
            const double g = w[c];
            if (g != 0.0) {
                const double v = y[c * count * width + at];
                acc = acc + g * (v * v);
            }
        }
        p[i] = acc;
    }
}
"""


def frames_args(x, chunk: int, warm: int, frames) -> tuple[int, tuple]:
    """(work items, arguments) of :data:`K_FRAMES_CUDA`: C-contiguous float32 ``x``
    (channels, n) into ``frames`` (channels, count, warm + chunk) float64."""
    c, n = x.shape
    return frames.size, (x, np.int64(n), np.int64(c), np.int64(chunk), np.int64(warm), np.int64(frames.shape[1]),
                         frames)


def power_args(y, warm: int, chunk: int, n: int, w, p) -> tuple[int, tuple]:
    """(work items, arguments) of :data:`K_POWER_CUDA`: C-contiguous filtered frames
    ``y`` (channels, count, warm + chunk) float64, channel weights ``w`` (float64
    array on ``y``'s backend), ``p`` (n,) float64 out."""
    c, count, _ = y.shape
    return n, (y, np.int64(c), np.int64(count), np.int64(chunk), np.int64(warm), np.int64(n), w, p)


def weighted_power(x, sample_rate: int, channel_weights: tuple[float, ...] | None = None,
                   chunk_s: float | None = None):
    """Sum over channels of G_i * y_i[n]^2 of the K-weighted signal y, float64
    ``(samples,)``: the integrand of BS.1770-4 eqs. 1-2 before the mean."""
    xp, x = _as_2d(x)
    w = _weights(x.shape[0], channel_weights)
    rate = _check_rate(sample_rate)
    n = x.shape[-1]
    chunk = _k_chunk(xp, n, rate, chunk_s) if n else 0
    if chunk and backend.raw_kernels(xp) and x.dtype == xp.float32:  # the frames' power in one pass (K_POWER_CUDA)
        y, warm = _weighted_frames(x, rate, chunk)
        p = xp.empty(n, dtype=xp.float64)
        work, args = power_args(xp.ascontiguousarray(y), warm, chunk, n, xp.asarray(w, dtype=xp.float64), p)
        backend.launch(K_POWER_CUDA, "farm_k_power", work, args)
        return p
    return _power(k_weight(x, rate, chunk_s), w)


def _power(y, w: tuple[float, ...]):
    """sum_i w_i y_i^2 of the K-weighted ``y`` (channels, samples), float64 (samples,)."""
    xp = backend.array_module(y)
    p = xp.zeros(y.shape[-1], dtype=xp.float64)
    for i, g in enumerate(w):  # a loop over channels, not samples
        if g != 0.0:
            p += g * (y[i] * y[i])
    return p


def _weights(channels: int, given) -> tuple[float, ...]:
    if given is None:
        return channel_weights(channels)
    w = tuple(float(g) for g in given)
    if len(w) != channels or any(not math.isfinite(g) or g < 0 for g in w):
        raise ValueError(f"channel_weights must be {channels} finite non-negative numbers (one per "
                         f"channel), got {given!r}")
    return w


# --------------------------------------------------------------------------- windows


def _cumsum0(p):
    """Cumulative sum along the last axis with a leading 0: the energy of samples
    [a, b) is c[..., b] - c[..., a] (one programme, or a batch's rows)."""
    xp = backend.array_module(p)
    return xp.concatenate([xp.zeros(p.shape[:-1] + (1,), dtype=xp.float64), xp.cumsum(p, axis=-1, dtype=xp.float64)],
                          axis=-1)


def _fraction(seconds: float, what: str) -> Fraction:
    f = Fraction(seconds).limit_denominator(100_000)
    if f <= 0:
        raise ValueError(f"{what} must be positive, got {seconds!r}")
    return f


def window_bounds(n_samples: int, sample_rate: int, window_s: float, hop_s: float, xp=np):
    """Start and end sample (end exclusive) of every *complete* window.

    Window k spans [floor(k hop fs), floor((k hop + window) fs)), exactly (in
    integers), so a 100 ms hop at 44.1 kHz is 4410 samples and at 11.025 kHz
    alternates 1102/1103. Windows that would run past the end are not
    counted: a partial block is no 400 ms block (BS.1770-4 Annex 1).
    """
    hr, wr = _hop_and_window(sample_rate, window_s, hop_s)
    return _bounds(xp.arange(_window_count(n_samples, hr, wr), dtype=xp.int64), hr, wr)


def _hop_and_window(sample_rate: int, window_s: float, hop_s: float) -> tuple[Fraction, Fraction]:
    """Hop and window length in samples, as exact rationals."""
    return _fraction(hop_s, "hop_s") * sample_rate, _fraction(window_s, "window_s") * sample_rate


def _window_count(n_samples: int, hr: Fraction, wr: Fraction) -> int:
    """How many complete windows ``n_samples`` samples hold."""
    room = (n_samples + 1) - wr  # k hr + wr < n + 1  <=>  floor(k hr + wr) <= n
    return max(0, math.ceil(room / hr)) if room > 0 else 0


def _bounds(k, hr: Fraction, wr: Fraction):
    """(start, end) samples of windows ``k`` (int64 array): floor(k hr), floor(k hr + wr)."""
    a, b = hr.numerator, hr.denominator
    c, d = wr.numerator, wr.denominator
    return (k * a) // b, (k * (a * d) + c * b) // (b * d)


def _window_energies(c, sample_rate: int, window_s: float, hop_s: float):
    """Mean of the power series over every complete window (float64, (..., windows))."""
    xp = backend.array_module(c)
    starts, ends = window_bounds(c.shape[-1] - 1, sample_rate, window_s, hop_s, xp)
    if starts.shape[0] == 0:
        return xp.zeros(c.shape[:-1] + (0,), dtype=xp.float64)
    return _mean_squares(c, starts, ends)


def _mean_squares(c, starts, ends):
    """Mean power over [starts, ends) from the cumulative sums ``c`` (indexed like them,
    along the last axis)."""
    xp = backend.array_module(c)
    z = (c[..., ends] - c[..., starts]) / (ends - starts).astype(xp.float64)
    return xp.maximum(z, 0.0)  # cumulative-sum rounding must not make a silent window negative


def block_energies(x, sample_rate: int, window_s: float = BLOCK_S, hop_s: float = HOP_S,
                   channel_weights: tuple[float, ...] | None = None):
    """Channel-weighted mean square of the K-weighted signal per complete
    window, sum_i G_i z_ij (BS.1770-4 Annex 1, eqs. 1 and 4), float64
    ``(windows,)`` on ``x``'s device. With the defaults these are the 400 ms
    gating blocks at 75 % overlap; ``window_s=3`` gives the short-term
    windows of :func:`loudness_range_from_energies`."""
    p = weighted_power(x, sample_rate, channel_weights)
    return _window_energies(_cumsum0(p), sample_rate, window_s, hop_s)


def energy_to_lufs(z):
    """Loudness of mean squares ``z`` (BS.1770-4 eq. 2/4), ``-inf`` where z is 0."""
    xp = backend.array_module(z)
    z = xp.asarray(z)
    positive = z > 0
    return xp.where(positive, LOUDNESS_OFFSET_DB + 10.0 * xp.log10(xp.where(positive, z, 1.0)), -xp.inf)


def _lufs_threshold(lufs: float) -> float:
    """The mean square whose loudness is ``lufs``."""
    return 10.0 ** ((lufs - LOUDNESS_OFFSET_DB) / 10.0)


# --------------------------------------------------------------------------- gating


def _gated_sums(z, absolute_gate_lufs: float, relative_gate_lu: float):
    """Device arrays (sum of z over the gated blocks, their count): BS.1770-4 eqs. 5-7,
    over the last axis (scalars for one programme's blocks; one per row for a batch's,
    where a row's zeros are blocks it does not have: zero never passes the absolute gate)."""
    xp = backend.array_module(z)
    above_abs = z > _lufs_threshold(absolute_gate_lufs)  # J_g = {j : l_j > Gamma_a}
    n_abs = above_abs.sum(axis=-1)
    mean_abs = xp.where(above_abs, z, 0.0).sum(axis=-1) / xp.maximum(n_abs, 1)
    relative = mean_abs * 10.0 ** (relative_gate_lu / 10.0)  # Gamma_r = l(mean) - 10 LU, as energy
    gated = above_abs & (z > relative[..., None])
    # + 0 * sum(z): a NaN/inf sample poisons the sum (and raises later) instead of being gated out
    return xp.where(gated, z, 0.0).sum(axis=-1) + 0.0 * z.sum(axis=-1), gated.sum(axis=-1)


def _to_host_floats(values) -> list[float]:
    """Device scalars -> Python floats in one transfer (one synchronisation)."""
    xp = backend.array_module(values[0])
    return [float(v) for v in backend.to_host(xp.stack([xp.asarray(v, dtype=xp.float64) for v in values]))]


def _lufs_from_sums(total: float, count: float) -> float | None:
    if not math.isfinite(total):
        raise ValueError("audio contains NaN or infinite samples; a loudness is defined only for finite audio")
    if count <= 0 or total <= 0:
        return None
    return LOUDNESS_OFFSET_DB + 10.0 * math.log10(total / count)


def gated_loudness(energies, absolute_gate_lufs: float = ABSOLUTE_GATE_LUFS,
                   relative_gate_lu: float = RELATIVE_GATE_LU) -> float | None:
    """Integrated loudness (LUFS) from :func:`block_energies` (BS.1770-4
    Annex 1, eqs. 5-7: absolute gate, relative gate, energy mean of the
    blocks above both). ``None`` when no block passes the gates (silence,
    everything under -70 LUFS, or no complete block)."""
    total, count = _to_host_floats(_gated_sums(energies, absolute_gate_lufs, relative_gate_lu))
    return _lufs_from_sums(total, count)


def integrated_loudness(x, sample_rate: int, channel_weights: tuple[float, ...] | None = None) -> float | None:
    """Gated integrated loudness of ``x`` (channels, samples) in LUFS, BS.1770-4
    Annex 1; ``None`` where the standard defines none (see module docstring)."""
    return gated_loudness(block_energies(x, sample_rate, channel_weights=channel_weights))


# --------------------------------------------------------------------------- series


def momentary(x, sample_rate: int, hop_s: float = HOP_S,
              channel_weights: tuple[float, ...] | None = None):
    """Momentary loudness (400 ms window, EBU Tech 3341) every ``hop_s``:
    float64 LUFS on ``x``'s device, value k for the window ending at
    ``0.4 + k * hop_s`` seconds; ``-inf`` for digitally silent windows,
    empty when ``x`` is shorter than 400 ms."""
    return energy_to_lufs(block_energies(x, sample_rate, BLOCK_S, hop_s, channel_weights))


def short_term(x, sample_rate: int, hop_s: float = HOP_S,
               channel_weights: tuple[float, ...] | None = None):
    """Short-term loudness (3 s window, EBU Tech 3341) every ``hop_s``, as
    :func:`momentary`; value k for the window ending at ``3 + k * hop_s`` s."""
    return energy_to_lufs(block_energies(x, sample_rate, SHORT_TERM_S, hop_s, channel_weights))


def _max_energy(c, sample_rate: int, window_s: float):
    """(largest window mean square on the fine grid, number of windows) as device scalars."""
    xp = backend.array_module(c)
    z = _window_energies(c, sample_rate, window_s, MAX_SEARCH_HOP_S)
    if z.shape[0] == 0:
        return xp.zeros((), dtype=xp.float64), 0
    return z.max(), z.shape[0]


def _max_lufs(x, sample_rate, window_s, channel_weights) -> float | None:
    c = _cumsum0(weighted_power(x, sample_rate, channel_weights))
    z, _ = _max_energy(c, sample_rate, window_s)
    return _lufs_from_sums(float(backend.to_host(z)), 1.0)


def max_momentary(x, sample_rate: int, channel_weights: tuple[float, ...] | None = None) -> float | None:
    """Largest momentary loudness (LUFS) over every 400 ms window on a 1 ms
    grid; ``None`` if ``x`` is shorter than 400 ms or silent throughout."""
    return _max_lufs(x, sample_rate, BLOCK_S, channel_weights)


def max_short_term(x, sample_rate: int, channel_weights: tuple[float, ...] | None = None) -> float | None:
    """Largest short-term loudness (LUFS) over every 3 s window on a 1 ms grid."""
    return _max_lufs(x, sample_rate, SHORT_TERM_S, channel_weights)


# --------------------------------------------------------------------------- loudness range


def _lra_device(z):
    """(LRA in LU, number of short-term values that passed both gates) as device scalars."""
    xp = backend.array_module(z)
    lo_pct, hi_pct = LRA_PERCENTILES
    if z.shape[0] == 0:
        zero = xp.zeros((), dtype=xp.float64)
        return zero, zero
    above_abs = z >= _lufs_threshold(LRA_ABSOLUTE_GATE_LUFS)  # Tech 3342: stl >= -70 LUFS
    n_abs = above_abs.sum()
    # Tech 3342: relative gate 20 LU under the power mean of the absolute-gated short-term values
    mean_abs = xp.where(above_abs, z, 0.0).sum() / xp.maximum(n_abs, 1)
    gated = above_abs & (z >= mean_abs * 10.0 ** (LRA_RELATIVE_GATE_LU / 10.0))
    n = gated.sum()
    values = xp.sort(xp.where(gated, energy_to_lufs(xp.where(gated, z, 1.0)), _FLOAT_SENTINEL))

    def percentile(q):  # linear interpolation between order statistics (numpy's default)
        pos = (n - 1).astype(xp.float64) * (q / 100.0)
        pos = xp.maximum(pos, 0.0)
        lo = xp.floor(pos).astype(xp.int64)
        hi = xp.minimum(lo + 1, xp.maximum(n - 1, 0))
        frac = pos - lo
        v_lo, v_hi = xp.take(values, lo), xp.take(values, hi)
        return v_lo + frac * (v_hi - v_lo)

    lra = percentile(hi_pct) - percentile(lo_pct) + 0.0 * z.sum()  # NaN in, NaN out (then raise)
    return lra, n.astype(xp.float64)


def loudness_range_from_energies(short_term_energies) -> float | None:
    """EBU Tech 3342 loudness range (LU) from the mean squares of the 3 s
    short-term windows (``block_energies(x, rate, window_s=3.0)``); ``None``
    when no window passes the gates."""
    return _lra_or_none(*_to_host_floats(_lra_device(short_term_energies)))


def _lra_or_none(lra: float, count: float) -> float | None:
    if not math.isfinite(lra):
        raise ValueError("audio contains NaN or infinite samples; a loudness is defined only for finite audio")
    return lra if count > 0 else None


def loudness_range(x, sample_rate: int, channel_weights: tuple[float, ...] | None = None) -> float | None:
    """Loudness range (LU) per EBU Tech 3342: short-term loudness every 100 ms
    over complete 3 s windows, gated at -70 LUFS and 20 LU under their power
    mean, 95th minus 10th percentile. ``None`` for programmes shorter than
    3 s or without any window above the gates."""
    return loudness_range_from_energies(block_energies(x, sample_rate, SHORT_TERM_S, HOP_S, channel_weights))


# --------------------------------------------------------------------------- peaks


def _db(linear: float) -> float | None:
    if not math.isfinite(linear):
        raise ValueError("audio contains NaN or infinite samples; a peak is defined only for finite audio")
    return 20.0 * math.log10(linear) if linear > 0 else None


def true_peak_dbtp(x, factor: int = 4) -> float | None:
    """True peak (dBTP) per BS.1770-4 Annex 2: the largest magnitude of ``x``
    interpolated ``factor`` times (4 as the Annex specifies for 48 kHz; 8 or
    16 read closer to the continuous-time peak). Floating-point audio needs no
    12.04 dB pre-attenuation (Annex 2 step 1 exists for fixed-point
    headroom). ``None`` for digital silence or empty input."""
    _, x = _as_2d(x)
    if x.shape[-1] == 0:
        return None
    return _db(float(backend.to_host(true_peak(x, factor))))


def true_peak_over(x, ceiling_dbtp: float, factor: int = 4, confirm_factor: int = 16,
                   confirm_within_db: float = 1.0) -> float:
    """How far (dB) the true peak of ``x`` is over ``ceiling_dbtp``: > 0 means
    over, <= 0 under, ``-inf`` for silence. The ``factor``-times measurement
    is repeated at ``confirm_factor`` when it comes within
    ``confirm_within_db`` of the ceiling (4x oversampling can read up to
    ~0.7 dB low near Nyquist), and the larger reading counts."""
    tp = true_peak_dbtp(x, factor)
    if tp is None:
        return -math.inf
    if confirm_factor > factor and tp > ceiling_dbtp - confirm_within_db:
        tp = max(tp, true_peak_dbtp(x, confirm_factor))
    return tp - ceiling_dbtp


def sample_peak_dbfs(x) -> float | None:
    """Largest sample magnitude in dBFS; ``None`` for digital silence or empty input."""
    xp, x = _as_2d(x)
    if x.shape[-1] == 0:
        return None
    return _db(float(backend.to_host(xp.abs(x).max())))


# --------------------------------------------------------------------------- everything


def measure(x, sample_rate: int, true_peak_factor: int = 4,
            channel_weights: tuple[float, ...] | None = None) -> LoudnessStats:
    """Every R128 measurement of ``x`` (channels, samples) in one pass over
    the K-weighted signal, with one transfer of scalars to the host.

    Raises ``ValueError`` for a bad shape, sample rate, weights, or NaN/inf
    samples; silence and too-short input give ``None`` fields instead.
    """
    return measure_with_short_term(x, sample_rate, true_peak_factor, channel_weights)[0]


def measure_with_short_term(x, sample_rate: int, true_peak_factor: int = 4,
                            channel_weights: tuple[float, ...] | None = None):
    """``(measure(x), short_term(x))`` from one K-weighting pass: the short-term
    series (LUFS every :data:`HOP_S` on ``x``'s device, the windows the LRA is
    computed from) is the same to the bit as :func:`short_term`'s, so a report
    that plots it needs no second pass over the signal."""
    rate = _check_rate(sample_rate)
    xp, x = _as_2d(x)
    if x.shape[-1] == 0:
        return LoudnessStats(None, None, None, None, None, None), xp.zeros(0, dtype=xp.float64)
    c = _cumsum0(weighted_power(x, rate, channel_weights))
    i_sum, i_count = _gated_sums(_window_energies(c, rate, BLOCK_S, HOP_S),
                                 ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU)
    z_short = _window_energies(c, rate, SHORT_TERM_S, HOP_S)
    lra, lra_count = _lra_device(z_short)
    m_max, _ = _max_energy(c, rate, BLOCK_S)
    s_max, _ = _max_energy(c, rate, SHORT_TERM_S)
    tp = true_peak(x, true_peak_factor)
    sp = xp.abs(x).max()
    return _stats(i_sum, i_count, lra, lra_count, m_max, s_max, tp, sp), energy_to_lufs(z_short)


def _stats(i_sum, i_count, lra, lra_count, m_max, s_max, tp, sp) -> LoudnessStats:
    """LoudnessStats from measure's device scalars, in one transfer."""
    i_sum, i_count, lra, lra_count, m_max, s_max, tp, sp = _to_host_floats(
        (i_sum, i_count, lra, lra_count, m_max, s_max, tp, sp))
    sample_peak = _db(sp)  # raises for NaN/inf samples before anything reads NaN
    return LoudnessStats(
        integrated_lufs=_lufs_from_sums(i_sum, i_count),
        loudness_range_lu=_lra_or_none(lra, lra_count),
        true_peak_dbtp=_db(tp),
        max_momentary_lufs=_lufs_from_sums(m_max, 1.0),
        max_short_term_lufs=_lufs_from_sums(s_max, 1.0),
        sample_peak_dbfs=sample_peak,
    )



# --------------------------------------------------------------------------- streaming

METER_SEGMENT_CPU = 1 << 16  # samples: small pushes are gathered into segments at least this long ...
METER_SEGMENT_GPU = 1 << 20  # ... (larger on the device, where every launch has a fixed cost)
METER_WHAT = ("all", "integrated", "true_peak")


class _Windows:
    """The complete windows of one (window, hop) grid as the cumulative sums grow:
    their mean squares (``keep="all"``) or only the largest (``keep="max"``)."""

    def __init__(self, sample_rate: int, window_s: float, hop_s: float, keep: str):
        self.hr, self.wr = _hop_and_window(sample_rate, window_s, hop_s)
        self.keep = keep
        self.done = 0  # windows measured so far
        self.parts: list = []
        self.best = None  # device scalar: largest mean square so far

    def advance(self, c, c0: int, n: int):
        """Measure the windows that end by sample ``n``; ``c[i]`` is cumulative sum ``c0 + i``."""
        xp = backend.array_module(c)
        count = _window_count(n, self.hr, self.wr)
        if count <= self.done:
            return
        starts, ends = _bounds(xp.arange(self.done, count, dtype=xp.int64), self.hr, self.wr)
        z = _mean_squares(c, starts - c0, ends - c0)
        self.done = count
        if self.keep == "all":
            self.parts.append(z)
        else:
            m = z.max()
            self.best = m if self.best is None else xp.maximum(self.best, m)

    def energies(self, xp):
        """Every mean square so far, float64 (windows,)."""
        if not self.parts:
            return xp.zeros(0, dtype=xp.float64)
        if len(self.parts) > 1:
            self.parts = [xp.concatenate(self.parts)]
        return self.parts[0]

    def maximum(self, xp):
        return xp.zeros((), dtype=xp.float64) if self.best is None else self.best


class LoudnessMeter:
    """:func:`measure`, block by block, in bounded memory.

    ``push`` the programme as consecutive ``(channels, k)`` blocks (any
    ``k >= 0``, NumPy or CuPy, float32 in the farm); :meth:`result` is then
    ``measure(whole, sample_rate, true_peak_factor, channel_weights)``. On the
    host it is bit-identical for any block sizes: the K-weighting carries its
    ``sosfilt`` state, the cumulative power sum carries its running total
    (the first element of the next segment's cumsum, as in the whole-signal
    cumsum), window edges are the same integers, and the true peak is
    computed on :func:`kernels.oversample.true_peak`'s own chunk grid with
    the same ``HALF_TAPS`` context. On a device the K-weighting of each
    segment starts :data:`K_WEIGHT_WARMUP_S` of carried input early (as the
    chunked :func:`k_weight` does) and the device cumsum is parallel, so
    results agree with :func:`measure` to float64 rounding, not bit for bit.

    Held: the 400 ms and 3 s window mean squares (one float64 per 100 ms:
    0.6 MB for two hours), the last 3 s of cumulative sums, running maxima,
    one true-peak chunk, and the pushes not yet gathered into a segment of
    :data:`METER_SEGMENT_CPU` (``_GPU``) samples. ``what="integrated"``
    measures only the 400 ms gating blocks (no 3 s windows, 1 ms maxima or
    peaks): all the loudness-target loop needs.

    :meth:`result`, :meth:`integrated` and the series may be read at any
    time (the programme so far) and pushing may continue after.
    """

    def __init__(self, sample_rate: int, channels: int, true_peak_factor: int = 4,
                 channel_weights: tuple[float, ...] | None = None, what: str = "all"):
        self.rate = _check_rate(sample_rate)
        self.channels = int(channels)
        self.weights = _weights(self.channels, channel_weights)
        if what not in METER_WHAT:
            raise ValueError(f"what must be one of {METER_WHAT}, got {what!r}")
        self.what = what
        self.factor = int(true_peak_factor)
        design(self.factor)  # raises for a factor upsample does not have
        self.samples = 0  # pushed so far
        self._xp = None
        self._dtype = None
        self._pending: list = []
        self._pending_n = 0
        self._done = 0  # samples through the K-weighting
        self._sos = None
        self._carry = None  # "zi" (host: sosfilt state carried) or "warmup" (device: input carried)
        self._zi = None  # sosfilt state (sections, channels, 2)
        self._warm = int(math.ceil(K_WEIGHT_WARMUP_S * self.rate))
        self._tail = None  # device: the last `warm` input samples (float64)
        self._c = None  # cumulative sums c[_c0 .. _done]
        self._c0 = 0
        self._blocks = _Windows(self.rate, BLOCK_S, HOP_S, "all")
        self._grids = [self._blocks]
        self._short = self._m_max = self._s_max = None
        if what == "all":
            self._short = _Windows(self.rate, SHORT_TERM_S, HOP_S, "all")
            self._m_max = _Windows(self.rate, BLOCK_S, MAX_SEARCH_HOP_S, "max")
            self._s_max = _Windows(self.rate, SHORT_TERM_S, MAX_SEARCH_HOP_S, "max")
            self._grids += [self._short, self._m_max, self._s_max]
        self._history = max(int(math.ceil(g.wr)) for g in self._grids) + 1  # cumsums kept
        self._tp_buf = None  # samples [_tp_b0, _done) still needed for the true peak
        self._tp_b0 = 0
        self._tp_next = 0  # start of the next true-peak chunk
        self._tp = None  # device scalars: largest true-peak chunk peak, largest |sample|
        self._sp = None

    # -- input

    def push(self, block) -> None:
        """Add the next ``(channels, k)`` samples (``(k,)`` for mono)."""
        xp, x = _as_2d(block)
        if x.shape[0] != self.channels:
            raise ValueError(f"meter has {self.channels} channels, block is shaped {tuple(x.shape)}")
        if self._xp is None:
            self._xp = xp
            self._dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
            self._sos = xp.asarray(k_weighting_sos(self.rate))
            self._c = xp.zeros(1, dtype=xp.float64)
            if self._carry is None:
                self._carry = "zi" if xp is np else "warmup"
            if self._carry == "zi":
                self._zi = np.zeros((self._sos.shape[0], self.channels, 2))
            else:
                self._tail = xp.zeros((self.channels, self._warm), dtype=xp.float64)
        elif xp is not self._xp:
            raise ValueError("all blocks must live on one backend (NumPy or CuPy)")
        if x.shape[-1] == 0:
            return
        self._pending.append(x.astype(self._dtype, copy=False))
        self._pending_n += x.shape[-1]
        self.samples += x.shape[-1]
        if self._pending_n >= (METER_SEGMENT_CPU if xp is np else METER_SEGMENT_GPU):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        xp = self._xp
        x = self._pending[0] if len(self._pending) == 1 else xp.concatenate(self._pending, axis=-1)
        self._pending, self._pending_n = [], 0
        m = x.shape[-1]
        if self.what == "true_peak":  # no K-weighting: peaks only
            self._done += m
            self._peaks(x)
            return
        x64 = x.astype(xp.float64, copy=False)
        if self._carry == "zi":  # the host whole-signal path's one sosfilt, continued
            y, self._zi = backend.signal(np).sosfilt(self._sos, x64, axis=-1, zi=self._zi)
        else:  # the chunked device path's warm-up, from the carried input
            ext = xp.concatenate([self._tail, x64], axis=-1)
            y = k_weight(ext, self.rate)[:, self._warm:]
            self._tail = ext[:, -self._warm:]
        # [c[done], p...] cumsummed: the running total rounds into c exactly as in one cumsum
        c_new = xp.cumsum(xp.concatenate([self._c[-1:], _power(y, self.weights)]), dtype=xp.float64)
        c = xp.concatenate([self._c[:-1], c_new])
        self._done += m
        for g in self._grids:
            g.advance(c, self._c0, self._done)
        keep = min(self._history, c.shape[0])
        self._c, self._c0 = c[-keep:], self._c0 + c.shape[0] - keep
        if self.what == "all":
            self._peaks(x)

    # -- peaks

    def _tp_chunk(self) -> int:
        return PEAK_CHUNK_CPU if self._xp is np else max(1 << 16, PEAK_CHUNK_GPU * 4 // self.factor)

    def _peaks(self, x) -> None:
        """Sample peak, and every true-peak chunk of oversample.true_peak's grid whose context is in."""
        xp = self._xp
        m = xp.abs(x).max()
        self._sp = m if self._sp is None else xp.maximum(self._sp, m)
        if self.factor == 1:
            return
        self._tp_buf = x if self._tp_buf is None else xp.concatenate([self._tp_buf, x], axis=-1)
        chunk, h = self._tp_chunk(), HALF_TAPS
        peaks = []
        while self._tp_next + chunk + h <= self._done:
            peaks.append(self._tp_peak(self._tp_next, self._tp_next + chunk, self._tp_next + chunk + h))
            self._tp_next += chunk
        if peaks:
            self._tp = _running_max(xp, self._tp, peaks)
        drop = max(0, self._tp_next - h) - self._tp_b0
        if drop > 0:
            self._tp_buf, self._tp_b0 = self._tp_buf[:, drop:], self._tp_b0 + drop

    def _tp_peak(self, s: int, e: int, hi: int):
        """Peak of the non-trivial phases of true_peak's chunk [s, e), context to ``hi``."""
        lo = max(0, s - HALF_TAPS)
        bank = self._xp.asarray(phase_bank((self.factor,)), dtype=self._dtype)
        seg = self._tp_buf[:, None, lo - self._tp_b0:hi - self._tp_b0]
        full = fftconvolve(seg, bank, mode="full")
        return self._xp.abs(full[..., s - lo + HALF_TAPS:e - lo + HALF_TAPS]).max()

    def _true_peak(self):
        """max(|x|, every phase) so far: the chunks still open are measured as if the signal ended here."""
        xp = self._xp
        if self.factor == 1:
            return self._sp
        chunk, n = self._tp_chunk(), self._done
        last = [self._tp_peak(s, min(n, s + chunk), min(n, s + chunk + HALF_TAPS))
                for s in range(self._tp_next, n, chunk)]
        return _running_max(xp, self._tp, [self._sp.astype(self._dtype)] + last)

    # -- results

    def result(self) -> LoudnessStats:
        """:func:`measure` of everything pushed so far (``what="all"`` only)."""
        if self.what != "all":
            raise ValueError('result() needs LoudnessMeter(..., what="all"); this meter measures only '
                             'the integrated loudness (use integrated())')
        self._flush()
        if self.samples == 0:
            return LoudnessStats(None, None, None, None, None, None)
        xp = self._xp
        i_sum, i_count = _gated_sums(self._blocks.energies(xp), ABSOLUTE_GATE_LUFS, RELATIVE_GATE_LU)
        lra, lra_count = _lra_device(self._short.energies(xp))
        return _stats(i_sum, i_count, lra, lra_count, self._m_max.maximum(xp), self._s_max.maximum(xp),
                      self._true_peak(), self._sp)

    def true_peak_dbtp(self) -> float | None:
        """True peak (dBTP, at the meter's factor) so far, as :func:`true_peak_dbtp`
        (``what="all"`` or ``"true_peak"``: the latter skips the loudness entirely)."""
        if self.what == "integrated":
            raise ValueError('true_peak_dbtp() needs LoudnessMeter(..., what="all" or "true_peak")')
        self._flush()
        if self.samples == 0:
            return None
        return _db(backend.to_float(self._true_peak()))

    def integrated(self) -> float | None:
        """Integrated loudness (LUFS) so far, as :func:`integrated_loudness`."""
        return gated_loudness(self.block_energies())

    def block_energies(self):
        """The 400 ms gating-block mean squares so far, as :func:`block_energies`
        (for :func:`gated_loudness` at other gains)."""
        if self.what == "true_peak":
            raise ValueError('a LoudnessMeter(..., what="true_peak") measures no loudness')
        self._flush()
        return self._blocks.energies(self._xp or np)

    def momentary_series(self):
        """Momentary loudness every 100 ms so far (LUFS), as :func:`momentary`."""
        return energy_to_lufs(self.block_energies())

    def short_term_series(self):
        """Short-term loudness every 100 ms so far (LUFS), as :func:`short_term`
        (``what="all"`` only)."""
        if self._short is None:
            raise ValueError('short_term_series() needs LoudnessMeter(..., what="all")')
        self._flush()
        return energy_to_lufs(self._short.energies(self._xp or np))


def _running_max(xp, current, values):
    m = xp.max(xp.stack(values))
    return m if current is None else xp.maximum(current, m)


__all__ = [
    "LoudnessStats", "measure", "k_weighting_sos", "channel_weights", "k_weight", "weighted_power",
    "window_bounds", "block_energies", "energy_to_lufs", "gated_loudness", "integrated_loudness",
    "momentary", "short_term", "max_momentary", "max_short_term", "loudness_range",
    "loudness_range_from_energies", "true_peak_dbtp", "true_peak_over", "sample_peak_dbfs",
    "LoudnessMeter",
]
