"""Linear-phase parametric EQ (bells, shelves, Butterworth-magnitude high/low-pass).

The target is the product of the bands' *analog* prototype magnitudes
(RBJ "Audio EQ Cookbook" bell and shelves, Butterworth ``|H|^2 = 1/(1 + w^2N)``
pass filters), evaluated on the frequency axis with zero phase, so there is
no bilinear-transform cramping near Nyquist. It becomes a symmetric
(type I, odd-length) FIR by frequency sampling on a grid much denser than
the filter, then a Tukey window (flat over the middle 80 %: the target's
own decay does the work, the taper only stops truncation ripple). Designs
run in float64 on the host and are cached per (params, rate); the audio is
convolved in its own dtype on its own backend with the (taps - 1) / 2
samples of latency removed, so the output is time-aligned with the input
and has its length.

Default length: the shortest of 2^k - 1 taps (8191 at 44.1/48 kHz, 16383 at
96 kHz, i.e. ~170 ms), then doubled up to 8x, whose measured response is
within :data:`MAX_ERROR_DB` of the target from :data:`MIN_FREQ_HZ` to Nyquist
wherever the target is above :data:`FLOOR_DB`. Measured over 322 single
bands (bells 30 Hz-16 kHz, Q 0.5-4, +-6/12 dB; shelves; 6-96 dB/oct
high/low-pass): ~170 ms meets it for all but 22-24 of them (Q >= 2 below
60 Hz, 48-96 dB/oct high-pass); ~340 ms all but 6-8; ~680 ms all, at 44.1,
48 and 96 kHz. A Kaiser window (beta 4-8) in place of the Tukey needed 4x
the length for the same error. Sharper bands than that get the best
~1.4 s design and may miss 0.1 dB.

:class:`EQStream` is the streaming form (:mod:`kernels.stream`): the same
FIR through :class:`kernels.convolve.ConvolveStream`, equal to
:func:`apply_eq` bit for bit on the host.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.signal

from . import backend
from .convolve import ConvolveStream, fftconvolve
from .params import EQBand, EQParams
from .stream import Identity, Streamer

MIN_FREQ_HZ = 30.0  # accuracy is promised from here up to Nyquist
MAX_ERROR_DB = 0.1
FLOOR_DB = -60.0  # below this the target is "stopband": not held to 0.1 dB
TAPER = 0.2  # Tukey window: fraction of the length in its cosine tapers
GRID_FACTOR = 8  # frequency-sampling grid = 8x the taps: the target's time aliasing lands far out
BASE_SECONDS = 0.17  # first candidate length, rounded to 2^k - 1 taps
MAX_DOUBLINGS = 3  # up to 8x the first candidate (~1.4 s)


def band_response(band: EQBand, freqs_hz) -> np.ndarray:
    """Linear magnitude of one band's analog prototype at ``freqs_hz`` (float64)."""
    w = np.abs(np.asarray(freqs_hz, dtype=np.float64)) / band.freq_hz  # normalised frequency
    w2 = w * w
    if band.kind in ("high_pass", "low_pass"):
        order = int(round(band.slope_db_per_oct / 6.0))  # 6 dB/oct per Butterworth order
        with np.errstate(divide="ignore", over="ignore"):
            if band.kind == "low_pass":
                return 1.0 / np.sqrt(1.0 + w2 ** order)
            # w^2N / (1 + w^2N), written so large w neither overflows nor loses precision
            return 1.0 / np.sqrt(1.0 + (1.0 / np.maximum(w2, 1e-300)) ** order)
    a = 10.0 ** (band.gain_db / 40.0)  # RBJ "A": sqrt of the linear gain
    q = band.q
    if band.kind == "bell":
        # H(s) = (s^2 + s A/Q + 1) / (s^2 + s/(A Q) + 1)
        re = (1.0 - w2) ** 2
        return np.sqrt((re + (w * a / q) ** 2) / (re + (w / (a * q)) ** 2))
    # Shelves: H(s) = A (s^2 + s sqrt(A)/Q + A) / (A s^2 + s sqrt(A)/Q + 1) (low);
    # the high shelf swaps the roles of A in numerator and denominator.
    # |H| is A^2 at one end, 1 at the other and A (half the gain in dB) at freq_hz.
    k = np.sqrt(a) / q
    lo = ((a - w2) ** 2 + (k * w) ** 2) / ((1.0 - a * w2) ** 2 + (k * w) ** 2)
    if band.kind == "low_shelf":
        return a * np.sqrt(lo)
    hi = ((1.0 - a * w2) ** 2 + (k * w) ** 2) / ((a - w2) ** 2 + (k * w) ** 2)
    return a * np.sqrt(hi)


def eq_response(params: EQParams, freqs_hz) -> np.ndarray:
    """Linear magnitude of the designed target (product of the bands) at ``freqs_hz``."""
    mag = np.ones(np.shape(freqs_hz))
    for band in params.bands:
        mag = mag * band_response(band, freqs_hz)
    return mag


def eq_response_db(params: EQParams, freqs_hz) -> np.ndarray:
    """The designed target magnitude in dB at ``freqs_hz`` (floored at -400 dB)."""
    return 20.0 * np.log10(np.maximum(eq_response(params, freqs_hz), 1e-20))


def fir_response_db(taps: np.ndarray, sample_rate: float, n_fft: int | None = None):
    """(freqs_hz, magnitude dB) of a FIR on an ``n_fft``-point grid from 0 to Nyquist."""
    taps = np.asarray(taps, dtype=np.float64)
    n_fft = n_fft or 1 << int(np.ceil(np.log2(max(GRID_FACTOR * taps.size, 2 ** 16))))
    mag = np.abs(np.fft.rfft(taps, n_fft))
    freqs = np.arange(mag.size) * (sample_rate / n_fft)
    return freqs, 20.0 * np.log10(np.maximum(mag, 1e-20))


def max_error_db(taps: np.ndarray, params: EQParams, sample_rate: float,
                 min_freq_hz: float = MIN_FREQ_HZ, floor_db: float = FLOOR_DB) -> float:
    """Largest |FIR - target| in dB from ``min_freq_hz`` to Nyquist where the target is above ``floor_db``."""
    freqs, got = fir_response_db(taps, sample_rate)
    want = eq_response_db(params, freqs)
    keep = (freqs >= min_freq_hz) & (want > floor_db)
    return float(np.max(np.abs(got - want)[keep])) if np.any(keep) else 0.0


def _fir(params: EQParams, sample_rate: float, ntaps: int) -> np.ndarray:
    """Frequency-sampled, Tukey-windowed zero-phase FIR of ``ntaps`` (odd), float64."""
    return fir_from_magnitude(lambda f: eq_response(params, f), sample_rate, ntaps)


def fir_from_magnitude(magnitude, sample_rate: float, ntaps: int) -> np.ndarray:
    """A symmetric (linear-phase, type I) FIR of ``ntaps`` (odd) taps, float64,
    whose magnitude follows ``magnitude(freqs_hz) -> linear gain`` (a callable
    evaluated on a grid from 0 Hz to Nyquist), by frequency sampling on a grid
    :data:`GRID_FACTOR` times the length and a Tukey window (the EQ's design;
    :mod:`kernels.match` designs its correction with it too)."""
    if ntaps < 1 or ntaps % 2 == 0:
        raise ValueError(f"ntaps must be a positive odd integer, got {ntaps!r}")
    n_grid = 1 << int(np.ceil(np.log2(GRID_FACTOR * ntaps)))
    freqs = np.arange(n_grid // 2 + 1) * (sample_rate / n_grid)
    # Zero phase: the inverse transform of a real, even spectrum is real and
    # even about sample 0; centre it and keep ntaps around the middle.
    impulse = np.fft.irfft(np.asarray(magnitude(freqs), dtype=np.float64), n_grid)
    half = ntaps // 2
    h = np.concatenate([impulse[n_grid - half:], impulse[:half + 1]])
    h = h * scipy.signal.windows.tukey(ntaps, TAPER)
    return 0.5 * (h + h[::-1])  # exactly symmetric (irfft leaves ~1e-18 asymmetry): exactly linear phase


def base_taps(sample_rate: float) -> int:
    """First automatic length: 2^k - 1 nearest to BASE_SECONDS (8191 at 44.1/48 kHz)."""
    return (1 << int(round(np.log2(BASE_SECONDS * sample_rate)))) - 1


@functools.lru_cache(maxsize=64)
def design_eq(params: EQParams, sample_rate: float) -> np.ndarray:
    """Symmetric linear-phase FIR taps (float64, odd length, read-only) for ``params``.

    ``params.taps`` fixes the length; otherwise lengths double from
    :func:`base_taps` until the response is within 0.1 dB of the target
    above 30 Hz (see :func:`max_error_db`), up to 8x.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
    if params.taps is not None:
        taps = _fir(params, sample_rate, params.taps)
    else:
        ntaps = base_taps(sample_rate)
        for attempt in range(MAX_DOUBLINGS + 1):
            taps = _fir(params, sample_rate, ntaps)
            if attempt == MAX_DOUBLINGS or max_error_db(taps, params, sample_rate) <= MAX_ERROR_DB:
                break
            ntaps = 2 * ntaps + 1
    taps.setflags(write=False)  # cached and shared: nobody may edit it in place
    return taps


def apply_eq(x, sample_rate: float, params: EQParams):
    """Linear-phase EQ of ``x`` (channels, samples) at ``sample_rate`` Hz.

    Returns an array of ``x``'s shape, dtype and backend, time-aligned with
    ``x`` (the FIR's (taps-1)/2 samples of delay are removed). Bypassed or
    band-less params return ``x`` itself.
    """
    if params.bypass or not params.bands:
        return x
    xp = backend.array_module(x)
    dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
    taps = xp.asarray(design_eq(params, sample_rate), dtype=dtype)
    # "same" keeps samples [(M-1)/2, (M-1)/2 + N) of the full convolution:
    # exactly the group delay of an odd symmetric FIR.
    return fftconvolve(x.astype(dtype, copy=False), taps, mode="same")


class EQStream(Streamer):
    """:func:`apply_eq` block by block for a (channels, total) signal at ``sample_rate`` Hz.

    Holds back the FIR's (taps - 1) / 2 samples of delay (plus up to one FFT
    frame) until the future samples they need arrive; :meth:`finish` gives
    the rest. Bypassed or band-less params pass blocks through unchanged.
    """

    def __init__(self, params: EQParams, sample_rate: float, channels: int, total: int):
        if params.bypass or not params.bands:
            self._inner = Identity(channels)
            return
        taps = design_eq(params, sample_rate)
        # "same" crop, as apply_eq: samples [(M-1)/2, (M-1)/2 + total) of the full convolution
        self._inner = ConvolveStream(taps, channels, total, offset=(taps.size - 1) // 2, length=total,
                                     cast=True)

    def push(self, x):
        return self._inner.push(x)

    def finish(self):
        return self._inner.finish()
