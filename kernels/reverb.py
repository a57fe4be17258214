"""Convolution reverb "glue": built-in synthetic spaces or a user impulse response.

Built-in spaces (``room``, ``plate``, ``hall``) are seeded Gaussian noise
split into four bands (crossovers 250 Hz, 1 kHz, 4 kHz, raised-cosine
transitions one octave wide that sum to one), each band given an
exponential decay with its own RT60 so highs die faster than lows, then
summed. Left and right get independent noise (decorrelated), the same seed
gives the same IR, and the IR runs until its slowest band has fallen 60 dB.

Every IR (built-in or user) is normalised to unit energy per output
channel, so for broadband material ``wet_db = 0`` puts the reverb at about
the level of the dry signal and ``wet_db`` reads as "reverb relative to dry".

IR layouts: mono ``(M,)``/``(1, M)`` is applied to every channel; ``(C, M)``
per channel (C = the track's channels); true stereo ``(2, 2, M)`` as
``h[out, in]`` (or a 4-channel file ordered L->L, L->R, R->L, R->R) through
:func:`kernels.convolve.convolve_mimo`; a mono track takes the mean of a
multichannel IR's channels. IRs are designed and resampled in
float64 on the host; the audio is convolved in its own dtype on its own
backend.

:class:`ReverbStream` is the streaming form (:mod:`kernels.stream`), equal
to :func:`apply_reverb` bit for bit on the host.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import backend
from .convolve import ConvolveStream, SampleQueue, convolve_mimo, fftconvolve
from .params import REVERB_TYPES, ReverbParams
from .stream import Identity, Streamer

CROSSOVERS_HZ = (250.0, 1000.0, 4000.0)
BAND_CENTRES_HZ = (125.0, 500.0, 2000.0, 8000.0)  # where each band's decay is pure (tests measure here)
TRANSITION_OCT = 1.0  # width of each crossover's raised-cosine blend
MID_BAND = 1  # decay_s is the RT60 of the 250 Hz-1 kHz band, as RT60s are usually quoted
END_FADE = 0.05  # fraction of the IR faded out at its end (the slowest band is at -57 dB there)


@dataclass(frozen=True)
class Space:
    """A built-in space: mid-band RT60 (s), per-band RT60 ratios and levels (dB), build-up (ms)."""

    rt60_s: float
    rt60_ratios: tuple[float, float, float, float]
    levels_db: tuple[float, float, float, float]
    onset_ms: float


SPACES = {
    # Small room: short, fairly even decay, highs absorbed by furnishings.
    "room": Space(0.6, (1.15, 1.0, 0.8, 0.55), (0.0, 0.0, -1.0, -4.0), 3.0),
    # Plate: dense from the first millisecond, thin lows, bright, even decay.
    "plate": Space(1.8, (1.0, 1.0, 0.85, 0.65), (-4.0, 0.0, 0.0, -1.0), 1.0),
    # Hall: slow build-up, long warm lows, air absorbs the highs.
    "hall": Space(2.4, (1.25, 1.0, 0.75, 0.5), (0.0, 0.0, -2.0, -6.0), 15.0),
}


def band_rt60s(kind: str, decay_s: float | None = None) -> tuple[float, ...]:
    """Designed RT60 (s) of each band of a built-in space (at :data:`BAND_CENTRES_HZ`)."""
    space = _space(kind)
    mid = space.rt60_s if decay_s is None else float(decay_s)
    return tuple(mid * r for r in space.rt60_ratios)


def _space(kind: str) -> Space:
    if kind not in SPACES:
        raise ValueError(f"built-in reverb must be one of {REVERB_TYPES}, got {kind!r}; "
                         "for an impulse-response file load it and pass it as ir=")
    return SPACES[kind]


def band_masks(freqs_hz: np.ndarray) -> np.ndarray:
    """(4, F) crossover weights at ``freqs_hz``; non-negative, summing to 1 at every frequency."""
    lf = np.log2(np.maximum(np.asarray(freqs_hz, dtype=np.float64), 1e-3))
    above = []  # raised-cosine step from 0 to 1 across each crossover, one octave wide
    for fc in CROSSOVERS_HZ:
        u = np.clip((lf - np.log2(fc)) / TRANSITION_OCT + 0.5, 0.0, 1.0)
        above.append(np.sin(0.5 * np.pi * u) ** 2)
    edges = [np.ones_like(lf)] + above + [np.zeros_like(lf)]
    return np.stack([edges[b] - edges[b + 1] for b in range(len(BAND_CENTRES_HZ))])


@functools.lru_cache(maxsize=16)
def _synthetic_ir_cached(kind: str, sample_rate: int, decay_s: float | None, seed: int,
                         channels: int) -> np.ndarray:
    space = _space(kind)
    rt60 = band_rt60s(kind, decay_s)
    length = int(math.ceil(max(rt60) * sample_rate))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((channels, length))  # independent per channel: decorrelated L/R
    spec = np.fft.rfft(noise, axis=-1)
    masks = band_masks(np.fft.rfftfreq(length, 1.0 / sample_rate))
    t = np.arange(length) / sample_rate
    ir = np.zeros((channels, length))
    for b in range(len(BAND_CENTRES_HZ)):
        band = np.fft.irfft(spec * masks[b], length, axis=-1)
        # -60 dB at t = RT60: amplitude 10^(-3 t / RT60)
        ir += band * (10.0 ** (space.levels_db[b] / 20.0) * 10.0 ** (-3.0 * t / rt60[b]))
    onset = max(1, int(round(space.onset_ms * 1e-3 * sample_rate)))
    ir[:, :onset] *= np.sin(0.5 * np.pi * np.arange(onset) / onset) ** 2  # build-up, no click
    fade = max(1, int(END_FADE * length))
    ir[:, length - fade:] *= np.cos(0.5 * np.pi * np.arange(1, fade + 1) / fade) ** 2
    ir = normalize_ir(ir)
    ir.setflags(write=False)  # cached and shared
    return ir


def synthetic_ir(kind: str, sample_rate: int, decay_s: float | None = None, seed: int = 0,
                 channels: int = 2) -> np.ndarray:
    """A built-in space's impulse response, (channels, M) float64, unit energy per channel.

    ``decay_s`` sets the mid-band (250 Hz-1 kHz) RT60 in seconds (default per
    space: room 0.6, plate 1.8, hall 2.4); the other bands scale with it (see
    :func:`band_rt60s`). M = the slowest band's RT60 in samples. Deterministic
    in ``seed``; the result is cached and read-only.
    """
    if not (isinstance(channels, int) and channels >= 1):
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return _synthetic_ir_cached(kind, int(sample_rate), None if decay_s is None else float(decay_s),
                                int(seed), channels)


def normalize_ir(ir) -> np.ndarray:
    """``ir`` (float64) scaled to unit energy per output channel on average.

    Layouts as :func:`apply_reverb`: for (C_out, C_in, M) the energy of an
    output sums over its inputs. A silent IR raises.
    """
    ir = np.asarray(ir, dtype=np.float64)
    outputs = 1 if ir.ndim == 1 else ir.shape[0]
    energy = float(np.sum(ir * ir)) / outputs
    if not energy > 0.0 or not math.isfinite(energy):
        raise ValueError("the impulse response is silent (or not finite); check the IR file")
    return ir / math.sqrt(energy)


def resample_ir(ir, ir_rate: float, sample_rate: float) -> np.ndarray:
    """Resample an impulse response (..., M) from ``ir_rate`` to ``sample_rate`` Hz.

    Polyphase (``scipy.signal.resample_poly``, Kaiser window) along the last
    axis, on the host in float64; the duration is kept (M' = ceil(M * up / down)).
    """
    import scipy.signal

    ir = np.asarray(backend.to_host(ir), dtype=np.float64)
    if ir_rate <= 0 or sample_rate <= 0:
        raise ValueError(f"sample rates must be positive, got ir_rate={ir_rate!r}, "
                         f"sample_rate={sample_rate!r}")
    # exact up/down factors (44100 -> 48000 is 160/147); limit_denominator tames float rates
    ratio = (Fraction(sample_rate).limit_denominator(1_000_000)
             / Fraction(ir_rate).limit_denominator(1_000_000))
    if ratio == 1:
        return ir.copy()
    return scipy.signal.resample_poly(ir, ratio.numerator, ratio.denominator, axis=-1)


def ir_layout(ir: np.ndarray, channels: int) -> np.ndarray:
    """Put ``ir`` in a layout :func:`apply_reverb` can convolve ``channels`` with."""
    if ir.ndim == 1:
        return ir[None, :]
    if ir.ndim == 2:
        c = ir.shape[0]
        if c == 1 or c == channels:
            return ir
        if c == 4 and channels == 2:  # true-stereo file: L->L, L->R, R->L, R->R
            return np.stack([np.stack([ir[0], ir[2]]), np.stack([ir[1], ir[3]])])
        if channels == 1:  # a mono track takes the mean of the IR's channels
            return ir.mean(axis=0, keepdims=True)
    if ir.ndim == 3 and ir.shape[0] == ir.shape[1] == channels:
        return ir
    raise ValueError(
        f"an impulse response shaped {ir.shape} does not fit a {channels}-channel track; use a mono IR "
        f"(M,), one channel per track channel ({channels}, M), or true stereo (2, 2, M) for stereo tracks")


LFE_CHANNEL_5_1 = 3  # index of the LFE in a 6-channel (5.1) programme; reverb never feeds it


def _reverb_filter(params: ReverbParams, sample_rate: int, channels: int, ir) -> np.ndarray:
    """The wet path's filter (host float64): normalised IR in a layout for
    ``channels``, pre-delay as leading zeros, times the wet gain."""
    if ir is None and not params.is_builtin:
        raise ValueError(f"reverb ir {params.ir!r} is a file: decode it, resample it with "
                         "kernels.reverb.resample_ir and pass it as ir=")
    if ir is None:
        # one decorrelated IR channel per track channel: mono, stereo and 5.1 alike
        ir = synthetic_ir(params.ir, sample_rate, params.decay_s, params.seed, channels=channels)
    h = normalize_ir(ir_layout(np.asarray(backend.to_host(ir), dtype=np.float64), channels))
    delay = int(round(params.predelay_ms * 1e-3 * sample_rate))
    if delay:  # pre-delay as leading zeros of the IR: exact, and free inside the FFT
        h = np.concatenate([np.zeros(h.shape[:-1] + (delay,)), h], axis=-1)
    h *= 10.0 ** (params.wet_db / 20.0)
    return h


def _fade_ramp(xp, fade: int, dtype):
    """Raised-cosine gain of the wet path over the last ``fade`` samples (tail="trim")."""
    return xp.cos(xp.linspace(0.0, 0.5 * math.pi, fade + 1, dtype=dtype)[1:]) ** 2


def apply_reverb(x, sample_rate: int, params: ReverbParams, ir=None, programmes=None):
    """Convolution reverb on ``x`` (channels, samples) at ``sample_rate`` Hz.

    ``ir`` (already at ``sample_rate``; see :func:`resample_ir`) overrides the
    built-in space; a file name in ``params.ir`` requires it. Output =
    dry * 10^(dry_db/20) + (x conv ir, pre-delayed) * 10^(wet_db/20), in ``x``'s
    dtype and backend. ``tail="trim"``: same length as ``x``, the wet path
    faded out over the last ``fade_ms`` (the dry signal is untouched);
    ``tail="keep"``: longer by the pre-delay plus the IR length minus one, so
    the reverb rings out. A 6-channel (5.1) programme's LFE gets no reverb
    (mastering never sends the sub channel to a room). Bypass returns ``x`` itself.
    ``programmes``: ``(start, stop)`` sample ranges of ``x`` that are programmes of
    their own (:mod:`kernels.batch` lays several tracks end to end), each with its
    wet path faded before its own stop (tail="trim" only); default ``[(0, samples)]``.
    """
    if params.bypass:
        return x
    if x.ndim != 2:
        raise ValueError(f"apply_reverb takes audio shaped (channels, samples), got {tuple(x.shape)}")
    h = _reverb_filter(params, sample_rate, x.shape[0], ir)
    xp = backend.array_module(x)
    dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
    x = x.astype(dtype, copy=False)
    channels, n = x.shape
    h_dev = xp.asarray(h, dtype=dtype)
    wet = convolve_mimo(x, h_dev) if h.ndim == 3 else fftconvolve(x, h_dev)
    if channels == 6:  # 5.1 in WAV/FLAC/SMPTE order (L, R, C, LFE, Ls, Rs): the LFE stays dry
        wet[LFE_CHANNEL_5_1] = 0.0
    dry_gain = 10.0 ** (params.dry_db / 20.0)
    if params.tail == "keep":
        out = wet
        out[:, :n] += x * dry_gain if dry_gain != 1.0 else x
        return out
    out = wet[:, :n]
    fade_len = int(round(params.fade_ms * 1e-3 * sample_rate))
    for start, stop in programmes if programmes is not None else [(0, n)]:
        fade = min(stop - start, fade_len)
        if fade:
            # raised-cosine fade of the wet path only: the reverb dies at the end of
            # the file instead of being cut off mid-tail
            out[:, stop - fade:stop] *= _fade_ramp(xp, fade, dtype)
    out += x * dry_gain if dry_gain != 1.0 else x
    return out


class ReverbStream(Streamer):
    """:func:`apply_reverb` block by block for a (channels, total) signal at ``sample_rate`` Hz.

    The wet path runs through :class:`kernels.convolve.ConvolveStream`; the
    dry blocks wait (at most one FFT frame, or the whole signal when it is
    not much longer than the IR) for the wet samples they are added to.
    ``tail="trim"`` gives ``total`` samples with the wet path faded over the
    last ``fade_ms``; ``tail="keep"`` gives ``total + predelay + M - 1``,
    the ring-out coming from :meth:`finish`. Bypass passes blocks through.
    """

    def __init__(self, params: ReverbParams, sample_rate: int, channels: int, total: int, ir=None):
        if params.bypass:
            self._inner = Identity(channels)
            return
        self._inner = None
        h = _reverb_filter(params, sample_rate, channels, ir)
        keep = params.tail == "keep"
        self.channels, self.total = channels, int(total)
        self._wet = ConvolveStream(h, channels, total, length=None if keep else total, cast=True)
        self._dry = SampleQueue()
        self._dry_gain = 10.0 ** (params.dry_db / 20.0)
        self._fade = 0 if keep else min(self.total, int(round(params.fade_ms * 1e-3 * sample_rate)))
        self._ramp = None
        self._pos = 0  # output samples given back

    def push(self, x):
        if self._inner is not None:
            return self._inner.push(x)
        if x.ndim != 2:
            raise ValueError(f"ReverbStream takes blocks shaped (channels, samples), got {tuple(x.shape)}")
        xp = backend.array_module(x)
        dtype = x.dtype if x.dtype in (xp.float32, xp.float64) else xp.float64
        x = x.astype(dtype)  # a copy: it waits for its wet samples, callers may reuse their buffers
        self._dry.append(x)
        return self._mix(self._wet.push(x))

    def finish(self):
        if self._inner is not None:
            return self._inner.finish()
        return self._mix(self._wet.finish())

    def _mix(self, wet):
        """Wet samples [pos, pos + k) -> output: LFE dry, trim fade, plus the dry signal."""
        a, k = self._pos, wet.shape[-1]
        if not k:
            return wet
        self._pos += k
        if self.channels == 6:
            wet[LFE_CHANNEL_5_1] = 0.0
        start = self.total - self._fade  # first faded sample
        if self._fade and a + k > start:
            if self._ramp is None:
                self._ramp = _fade_ramp(backend.array_module(wet), self._fade, wet.dtype)
            lo = max(a, start)
            wet[:, lo - a:] *= self._ramp[lo - start:a + k - start]
        j = min(k, self.total - a)  # output samples that have a dry sample
        if j > 0:
            d = self._dry.take(j)
            wet[:, :j] += d * self._dry_gain if self._dry_gain != 1.0 else d
        return wet
