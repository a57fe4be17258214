"""Reference matching: move a track's long-term average spectrum toward a reference master's.

    reference file --decode at the track's rate--> ReferenceProfile (spectrum, integrated loudness)
    track (the chain's input) --SpectrumMeter--> spectrum
    correction = smooth(reference) / smooth(track), level offset removed, limited, held flat outside the range
      --> linear-phase FIR (kernels.eq.fir_from_magnitude) --> a shared stage right after the EQ

Spectrum. Welch's method: Hann segments of :func:`segment_length` samples
(2^k nearest 0.34 s: 16384 at 44.1/48 kHz, ~3 Hz bins) with 50 % overlap at
fixed positions from the start, the periodograms summed over channels and
segments in float64 on the host (a power spectral density per channel).
Signals shorter than one segment are one zero-padded segment. The sum runs
segment by segment in order, so the streamed meter (blocks of any size)
gives the whole-signal result bit for bit, and the host analysis makes the
correction the same on every backend.

Not K-weighted: both spectra would get the same weighting, which cancels in
their ratio; loudness is matched separately by BS.1770-4 (the loudness
target becomes the reference's integrated loudness, see
:func:`matched_chain`).

Correction. Both spectra are smoothed over ``smoothing_octaves`` (the mean
power over [f 2^-b/2, f 2^b/2] of every bin), their ratio taken in dB, the
mean of that over log-spaced frequencies in [min_freq_hz, max_freq_hz]
subtracted (a level difference is the loudness stage's job, so the EQ is a
tonal correction only), the result limited to +/- ``max_gain_db`` and held
at its edge values below ``min_freq_hz`` and above ``max_freq_hz`` (no step
at the range's edges). The FIR has ``2 * base_taps + 1`` taps (16383 at
48 kHz, ~340 ms: ~6 Hz resolution, enough for 1/3 octave at 30 Hz) and is
applied like the EQ ("same" crop: time-aligned, the input's length);
:class:`MatchStream` is its streaming form, bit for bit.

What is analysed: the chain's input (decoded, at the track's rate, before
the preset's EQ), so the preset's own EQ moves stay on top of the match.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft

from . import backend, eq
from .convolve import ConvolveStream, fftconvolve
from .params import ChainParams, MatchParams
from .stream import Streamer

SEGMENT_SECONDS = 0.34  # Welch segment, rounded to a power of two of samples
LEVEL_POINTS = 256  # log-spaced frequencies over which the level offset is averaged
FLOOR = 1e-12  # spectra floored at this fraction of their largest bin before the ratio


def segment_length(sample_rate: float) -> int:
    """Welch segment length in samples: the power of two nearest :data:`SEGMENT_SECONDS`."""
    return 1 << max(8, int(round(math.log2(SEGMENT_SECONDS * sample_rate))))


class SpectrumMeter:
    """Long-term average spectrum of a (channels, samples) signal fed in blocks
    of any size (any backend; analysed on the host in float64). :meth:`result`
    gives the same array for any blocking, bit for bit."""

    def __init__(self, sample_rate: float, channels: int):
        self.sample_rate, self.channels = float(sample_rate), int(channels)
        self.nperseg = segment_length(sample_rate)
        self.hop = self.nperseg // 2
        self.window = np.hanning(self.nperseg + 1)[:-1]  # periodic Hann
        self._buf = np.zeros((self.channels, 0))
        self._acc = np.zeros(self.nperseg // 2 + 1)
        self.segments = 0

    def push(self, x) -> None:
        x = np.asarray(backend.to_host(x), dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, k) block, got {tuple(x.shape)}")
        if x.shape[-1]:
            self._buf = np.concatenate([self._buf, x], axis=-1)
            self._segments(self._buf)

    def _segments(self, buf) -> None:
        k = (buf.shape[-1] - self.nperseg) // self.hop + 1 if buf.shape[-1] >= self.nperseg else 0
        if k <= 0:
            return
        idx = np.arange(k)[:, None] * self.hop + np.arange(self.nperseg)[None, :]
        segs = buf[:, idx].transpose(1, 0, 2) * self.window  # (k, C, nperseg)
        spec = scipy.fft.rfft(segs, axis=-1)
        power = spec.real * spec.real + spec.imag * spec.imag
        p = power[:, 0]
        for c in range(1, self.channels):  # a fixed order: the same sum for any blocking
            p = p + power[:, c]
        for i in range(k):  # segment by segment, in order
            self._acc += p[i]
        self.segments += k
        self._buf = buf[:, k * self.hop:]

    def result(self):
        """(freqs_hz, power spectral density per channel, float64)."""
        acc, count = self._acc, self.segments
        if count == 0:  # shorter than one segment: one zero-padded segment
            pad = np.zeros((self.channels, self.nperseg))
            pad[:, :self._buf.shape[-1]] = self._buf
            spec = scipy.fft.rfft(pad * self.window, axis=-1)
            power = spec.real * spec.real + spec.imag * spec.imag
            acc = power[0]
            for c in range(1, self.channels):
                acc = acc + power[c]
            count = 1
        scale = 1.0 / (count * self.channels * self.sample_rate * float(np.sum(self.window ** 2)))
        psd = acc * scale
        psd[1:-1] *= 2.0  # one-sided
        freqs = np.arange(psd.size) * (self.sample_rate / self.nperseg)
        return freqs, psd


def long_term_spectrum(x, sample_rate: float):
    """(freqs_hz, psd) of ``x`` (channels, samples): :class:`SpectrumMeter` fed the whole signal."""
    m = SpectrumMeter(sample_rate, x.shape[0])
    m.push(x)
    return m.result()


@dataclass(frozen=True)
class ReferenceProfile:
    """What matching needs of a reference, at the track's sample rate."""

    freqs_hz: np.ndarray
    psd: np.ndarray
    integrated_lufs: float | None
    sample_rate: float
    path: str = ""


def profile(x, sample_rate: float, path: str = "") -> ReferenceProfile:
    """The reference's spectrum and integrated loudness (BS.1770-4)."""
    from .loudness import integrated_loudness

    freqs, psd = long_term_spectrum(x, sample_rate)
    return ReferenceProfile(freqs, psd, integrated_loudness(x, int(sample_rate)), float(sample_rate), path)


def smooth(freqs_hz: np.ndarray, psd: np.ndarray, octaves: float) -> np.ndarray:
    """Fractional-octave smoothing: each bin becomes the mean power over
    [f 2^(-octaves/2), f 2^(octaves/2)] (at least itself)."""
    df = freqs_hz[1] - freqs_hz[0]
    cs = np.concatenate([[0.0], np.cumsum(psd)])
    k = np.arange(psd.size)
    half = 2.0 ** (octaves / 2.0)
    lo = np.clip(np.ceil(freqs_hz / half / df - 1e-9).astype(int), 0, psd.size - 1)
    hi = np.clip(np.floor(freqs_hz * half / df + 1e-9).astype(int), 0, psd.size - 1)
    lo, hi = np.minimum(lo, k), np.maximum(hi, k)
    return (cs[hi + 1] - cs[lo]) / (hi - lo + 1)


def correction_db(freqs_hz: np.ndarray, ref_psd: np.ndarray, track_psd: np.ndarray, params: MatchParams):
    """The match's gain in dB on ``freqs_hz`` (see the module docstring)."""
    nyq = freqs_hz[-1]
    fmin, fmax = params.min_freq_hz, min(params.max_freq_hz, 0.95 * nyq)
    if fmax <= fmin:
        return np.zeros_like(freqs_hz)
    r = smooth(freqs_hz, ref_psd, params.smoothing_octaves)
    t = smooth(freqs_hz, track_psd, params.smoothing_octaves)
    r = np.maximum(r, FLOOR * max(float(r.max()), 1e-300))
    t = np.maximum(t, FLOOR * max(float(t.max()), 1e-300))
    d = 10.0 * np.log10(r / t)
    points = np.geomspace(fmin, fmax, LEVEL_POINTS)
    d = d - float(np.mean(np.interp(points, freqs_hz, d)))
    d = np.clip(d, -params.max_gain_db, params.max_gain_db)
    return np.interp(np.clip(freqs_hz, fmin, fmax), freqs_hz, d)  # held flat outside the range


def match_taps(sample_rate: float) -> int:
    """FIR length of the match: twice the EQ's first length, plus one (16383 at 48 kHz)."""
    return 2 * eq.base_taps(sample_rate) + 1


def design_match(reference: ReferenceProfile, track_spectrum, params: MatchParams, sample_rate: float):
    """The match FIR (float64 host taps, odd length) from the reference's
    profile and the track's ``(freqs_hz, psd)``."""
    freqs, track_psd = track_spectrum
    if reference.sample_rate != sample_rate or reference.psd.shape != track_psd.shape:
        raise ValueError(f"the reference was analysed at {reference.sample_rate:g} Hz, the track at "
                         f"{sample_rate:g} Hz; decode the reference at the track's rate")
    gain_db = correction_db(freqs, reference.psd, track_psd, params)
    taps = eq.fir_from_magnitude(lambda f: 10.0 ** (np.interp(f, freqs, gain_db) / 20.0), sample_rate,
                                 match_taps(sample_rate))
    taps.setflags(write=False)
    return taps


def apply_match(x, taps):
    """Convolve ``x`` (channels, samples) with the match FIR, "same" crop, in ``x``'s dtype and backend."""
    xp = backend.array_module(x)
    dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
    return fftconvolve(x.astype(dtype, copy=False), xp.asarray(taps, dtype=dtype), mode="same")


class MatchStream(Streamer):
    """:func:`apply_match` block by block, bit for bit on the host (as :class:`kernels.eq.EQStream`)."""

    def __init__(self, taps, channels: int, total: int):
        self._inner = ConvolveStream(np.asarray(taps), channels, total, offset=(len(taps) - 1) // 2, length=total,
                                     cast=True)

    def push(self, x):
        return self._inner.push(x)

    def finish(self):
        return self._inner.finish()


def band_levels_db(freqs_hz: np.ndarray, psd: np.ndarray, lo_hz: float = 30.0, hi_hz: float = 16000.0,
                   per_octave: int = 3) -> np.ndarray:
    """Energy per fractional-octave band (dB) from ``lo_hz`` to ``hi_hz``: for measuring matches."""
    edges = lo_hz * 2.0 ** (np.arange(int(round(per_octave * math.log2(hi_hz / lo_hz))) + 1) / per_octave)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (freqs_hz >= a) & (freqs_hz < b)
        out.append(10.0 * math.log10(max(float(psd[sel].sum()), 1e-300)))
    return np.array(out)


def matched_chain(chain: ChainParams, reference: ReferenceProfile) -> ChainParams:
    """``chain`` with the loudness target the reference's integrated loudness
    (when the match is on, ``[match] loudness`` is true and the chain has a
    target at all); otherwise ``chain`` itself."""
    import dataclasses

    m, lo = chain.match, chain.loudness
    if m.bypass or not m.loudness or lo.bypass or lo.target_lufs is None or reference.integrated_lufs is None:
        return chain
    target = min(0.0, max(-70.0, reference.integrated_lufs))
    return dataclasses.replace(chain, loudness=dataclasses.replace(lo, target_lufs=target))


__all__ = ["MatchStream", "ReferenceProfile", "SpectrumMeter", "apply_match", "band_levels_db", "correction_db",
           "design_match", "long_term_spectrum", "match_taps", "matched_chain", "profile", "segment_length",
           "smooth"]
