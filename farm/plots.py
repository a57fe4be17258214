"""The report's plot series, computed on the worker beside each render.

Tasks carry paths, never audio, and only a small record goes back to the
client; so the worker that holds a track's samples computes what the report
plots and writes it as a small JSON file under the output folder
(``report/data/<master name>.json``, written under a temporary name and
renamed, like masters). :class:`~farm.records.TrackResult` carries only that
file's path relative to the master's folder (``plot_data``). Per track, for the
input and for the delivered master (re-decoded):

* short-term loudness (EBU Tech 3341, 3 s window) every 100 ms;
* the average spectrum: Welch's method (Hann window, 50 % overlap, power
  averaged over segments and channels), smoothed to 1/6 octave on
  :data:`SPECTRUM_POINTS` log-spaced frequencies;
* true-peak markers: the :data:`TOP_PEAKS` highest 100 ms hops by their 4x
  oversampled peak (BS.1770-4 Annex 2 interpolation,
  :func:`kernels.oversample.upsample`), with time and level;

plus the limiter's gain reduction per 100 ms (``MasterResult.gain_reduction_db``),
the delivery ceiling and the loudness target. Series longer than
:data:`MAX_POINTS` are decimated to a min/max envelope, so a two-hour
programme's file stays as small as a single's (~100 kB).

Everything here works block by block (:class:`SideStream`: push blocks,
then finish), so the streamed render computes the same series without
holding the programme; :func:`side_from_array` is the same accumulator fed
one block. Blocks may live on the host or a GPU: the FFTs and hop peaks run
where the samples are, and only sums, peaks and a few samples around the
candidate peaks come to the host (a GPU worker's CPU then spends nothing on
the series). Plot data is auxiliary: a failure here is logged and leaves
``plot_data`` empty, it never fails a master.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import os

import numpy as np

from kernels import backend
from kernels import loudness as meter
from kernels.oversample import HALF_TAPS, upsample

log = logging.getLogger(__name__)

REPORT_DIR = "report"  # under the output folder: data/ (per-track JSON, the workers'), png/, (the client's)
DATA_DIR = REPORT_DIR + "/data"
DATA_VERSION = 1
MAX_POINTS = 2000  # per time series in the JSON; longer ones become a min/max envelope
SPECTRUM_POINTS = 200
SPECTRUM_LOW_HZ, SPECTRUM_HIGH_HZ = 20.0, 20000.0
SMOOTHING_OCTAVES = 1.0 / 6.0
HOP_S = 0.1  # the meters' 10 Hz (kernels.loudness.HOP_S, kernels.chain.TRACE_HOP_S)
SHORT_TERM_FIRST_S = 3.0  # short-term value k is for the window ending at 3 s + k * HOP_S
TOP_PEAKS = 5  # true-peak markers per signal
_CANDIDATES = 16  # hops kept by sample peak; the markers are the best of these by true peak
_TP_FACTOR = 4  # BS.1770-4 Annex 2


def welch_segment(sample_rate: int) -> int:
    """Welch segment length: the power of two nearest a sixth of a second
    (8192 at 44.1/48 kHz: ~5.9 Hz bins, fine enough for 1/6 octave from 50 Hz)."""
    return int(min(1 << 15, max(1 << 10, 2 ** round(math.log2(sample_rate / 6.0)))))


class Welch:
    """Welch's average power spectral density, fed in consecutive blocks.

    Segments of :func:`welch_segment` samples start every half segment from
    sample 0 (the same grid however the signal is split into blocks), Hann
    window, no detrending, one-sided density scaling: ``result()`` equals
    ``scipy.signal.welch(x, fs, "hann", n, n // 2, detrend=False)`` averaged
    over channels. A signal shorter than one segment is one zero-padded segment.
    """

    _BATCH = 64  # segments per FFT batch: bounds the temporary (channels x batch x n)

    def __init__(self, sample_rate: int, channels: int):
        from scipy.signal import get_window

        self.rate, self.channels = int(sample_rate), int(channels)
        self.n = welch_segment(self.rate)  # a power of two: a segment is two half-segment hops
        self.hop = self.n // 2
        self.window = get_window("hann", self.n).astype(np.float64)
        self._carry = None  # the unfinished segment's samples, on the blocks' backend
        self._sum = None  # power summed over segments and channels, on the blocks' backend
        self._count = 0

    def push(self, x) -> None:
        """Add a ``(channels, k)`` block (NumPy or CuPy: the FFTs run where it is,
        float64 only per batch of segments)."""
        xp = backend.array_module(x)
        x = xp.asarray(x).reshape(self.channels, -1)
        buf = xp.concatenate([self._carry, x], axis=-1) if self._carry is not None and self._carry.shape[-1] else x
        k = 0 if buf.shape[-1] < self.n else (buf.shape[-1] - self.n) // self.hop + 1
        if k:
            fft, window = backend.fft(xp), xp.asarray(self.window)
            total = xp.zeros(self.n // 2 + 1) if self._sum is None else self._sum
            for i in range(0, k, self._BATCH):
                m = min(self._BATCH, k - i)
                halves = buf[:, i * self.hop:(i + m + 1) * self.hop].reshape(self.channels, m + 1, self.hop)
                frames = xp.concatenate([halves[:, :-1], halves[:, 1:]], axis=-1)  # segment j: halves j, j+1
                spec = fft.rfft(frames * window, axis=-1)
                total += (spec.real ** 2 + spec.imag ** 2).sum(axis=(0, 1))
            self._sum = total
            self._count += k * self.channels
        self._carry = buf[:, k * self.hop:].copy()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(frequencies in Hz, PSD in FS^2/Hz), both float64 of ``n // 2 + 1``."""
        total, count = (np.zeros(self.n // 2 + 1) if self._sum is None else backend.to_host(self._sum)), self._count
        if count == 0 and self._carry is not None and self._carry.shape[-1]:  # shorter than a segment: one padded
            pad = np.zeros((self.channels, self.n))
            pad[:, :self._carry.shape[-1]] = backend.to_host(self._carry)
            spec = np.fft.rfft(pad * self.window, axis=-1)
            total, count = (spec.real ** 2 + spec.imag ** 2).sum(axis=0), self.channels
        psd = total / max(count, 1) / (self.rate * float((self.window ** 2).sum()))
        psd[1:-1 if self.n % 2 == 0 else None] *= 2.0  # one-sided: every bin but DC (and Nyquist) twice
        return np.fft.rfftfreq(self.n, 1.0 / self.rate), psd


def smooth_spectrum(freqs: np.ndarray, psd: np.ndarray, sample_rate: int,
                    points: int = SPECTRUM_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The PSD averaged over 1/6-octave bands centred on ``points`` log-spaced
    frequencies (20 Hz to 20 kHz or just under Nyquist): (centres Hz, dB re FS^2/Hz).
    A band narrower than a bin takes the PSD interpolated at its centre."""
    high = min(SPECTRUM_HIGH_HZ, 0.95 * sample_rate / 2.0)
    centres = np.geomspace(SPECTRUM_LOW_HZ, high, points)
    half = 2.0 ** (SMOOTHING_OCTAVES / 2.0)
    lo = np.searchsorted(freqs, centres / half, side="left")
    hi = np.searchsorted(freqs, centres * half, side="right")
    csum = np.concatenate([[0.0], np.cumsum(psd)])
    band = np.where(hi > lo, (csum[hi] - csum[np.minimum(lo, hi)]) / np.maximum(hi - lo, 1),
                    np.interp(centres, freqs, psd))
    return centres, 10.0 * np.log10(np.maximum(band, 1e-30))


class PeakHops:
    """The highest 100 ms hops of a signal by true peak, fed in consecutive blocks.

    Every hop's sample peak is taken as it completes; the :data:`_CANDIDATES`
    highest are kept with :data:`~kernels.oversample.HALF_TAPS` samples of
    context each side, and at the end each is interpolated 4x (zeros outside
    the signal, as :func:`kernels.loudness.true_peak_dbtp` takes them) to find
    its true peak and where it lies. Interpolation can raise a peak by up to
    ~3 dB, so a hop outside the candidates could in principle out-peak one in
    them; for markers on a plot that is an acceptable approximation (the
    programme's exact true peak is in the report's measurements).
    """

    def __init__(self, sample_rate: int, channels: int):
        self.rate, self.channels = int(sample_rate), int(channels)
        self.hop = max(1, int(round(HOP_S * self.rate)))
        self._buf = None  # samples from the first unevaluated hop's left context on, on the blocks' backend
        self._b0 = 0  # absolute index of _buf[:, 0]
        self._next = 0  # start of the first hop not yet evaluated
        self._heap: list = []  # (sample peak, start, segment incl. context (host), left context)

    def _offer(self, peaks: np.ndarray, starts: np.ndarray, done: int) -> None:
        floor = self._heap[0][0] if len(self._heap) == _CANDIDATES else -1.0
        better = np.nonzero(peaks > floor)[0]
        for i in better[np.argsort(-peaks[better], kind="stable")][:_CANDIDATES]:
            s = int(starts[i])
            a, b = max(0, s - HALF_TAPS), min(done, s + self.hop + HALF_TAPS)
            seg = np.array(backend.to_host(self._buf[:, a - self._b0:b - self._b0]))  # a host copy
            item = (float(peaks[i]), s, seg, s - a)
            if len(self._heap) < _CANDIDATES:
                heapq.heappush(self._heap, item)
            elif item[0] > self._heap[0][0]:
                heapq.heapreplace(self._heap, item)

    def push(self, x) -> None:
        """Add a ``(channels, k)`` block (NumPy or CuPy: the hops' peaks are taken
        where it is; only they and the candidates' few samples come to the host)."""
        xp = backend.array_module(x)
        x = xp.asarray(x).reshape(self.channels, -1)
        self._buf = xp.concatenate([self._buf, x], axis=-1) if self._buf is not None and self._buf.shape[-1] else x
        done = self._b0 + self._buf.shape[-1]
        k = max(0, (done - HALF_TAPS - self._next) // self.hop)  # hops with their right context in
        for i in range(0, k, 600):  # a minute of hops at a time: |x| of a minute, not of a whole track
            m = min(600, k - i)
            s0 = self._next - self._b0
            hops = xp.abs(self._buf[:, s0:s0 + m * self.hop]).reshape(self.channels, m, self.hop)
            self._offer(backend.to_host(hops.max(axis=(0, 2))), self._next + self.hop * np.arange(m), done)
            self._next += m * self.hop
        cut = max(0, self._next - HALF_TAPS - self._b0)
        # a copy: what is kept (under a hop and the context) must not be a view of the caller's block
        self._buf, self._b0 = self._buf[:, cut:].copy(), self._b0 + cut

    def result(self, top: int = TOP_PEAKS) -> list[tuple[float, float]]:
        """[(time s, dBTP)] of the ``top`` highest hops, highest first (digital silence: [])."""
        done = self._b0 + (0 if self._buf is None else self._buf.shape[-1])
        starts = np.arange(self._next, done, self.hop)
        if starts.size:  # the last hops, the final one short: no context after the signal
            tail = np.asarray(backend.to_host(self._buf[:, self._next - self._b0:]))
            peaks = np.array([np.abs(tail[:, s - self._next:min(done, s + self.hop) - self._next]).max()
                              for s in starts])
            self._offer(peaks, starts, done)
        self._next = done
        marks = []
        for _, s, seg, left in self._heap:
            right = min(self.hop, done - s)
            ctx = np.zeros((self.channels, HALF_TAPS + right + HALF_TAPS), dtype=np.float64)
            ctx[:, HALF_TAPS - left:HALF_TAPS - left + seg.shape[-1]] = seg
            up = np.abs(upsample(ctx, _TP_FACTOR)[:, _TP_FACTOR * HALF_TAPS:_TP_FACTOR * (HALF_TAPS + right)])
            j = int(np.argmax(up.max(axis=0)))
            peak = float(up.max())
            if peak > 0:
                marks.append(((s + j / _TP_FACTOR) / self.rate, 20.0 * math.log10(peak)))
        marks.sort(key=lambda m: -m[1])
        return marks[:top]


@dataclasses.dataclass(frozen=True)
class Side:
    """What the report plots of one signal (the input, or the delivered master)."""

    sample_rate: int
    duration_s: float
    short_term_lufs: np.ndarray  # every HOP_S, value k for the window ending at 3 s + k * HOP_S; -inf silent
    spectrum_hz: np.ndarray
    spectrum_db: np.ndarray
    true_peaks: list  # [(time s, dBTP)], highest first


class SideStream:
    """:class:`Side` of a signal fed in consecutive ``(channels, k)`` blocks.

    The short-term series comes from the render's own meter (``short_term_from``:
    a :class:`~kernels.loudness.LoudnessMeter` that saw the same blocks, set
    before :meth:`finish`; no second K-weighting pass) or is given to :meth:`finish`.
    A failure while pushing is kept, not raised (plot data never fails a
    render); :meth:`finish` raises it.
    """

    def __init__(self, sample_rate: int, channels: int, short_term_from=None):
        self.rate, self.channels, self.frames = int(sample_rate), int(channels), 0
        self.welch = Welch(self.rate, self.channels)
        self.peaks = PeakHops(self.rate, self.channels)
        self.short_term_from = short_term_from
        self.error: BaseException | None = None

    def push(self, x) -> None:
        if self.error is not None:
            return
        try:
            self.frames += x.shape[-1]
            self.welch.push(x)
            self.peaks.push(x)
        except Exception as e:  # noqa: BLE001 - reported by finish(), logged by write_track_data
            self.error = e

    def finish(self, short_term_lufs=None) -> Side:
        if self.error is not None:
            raise self.error
        if short_term_lufs is None:
            if self.short_term_from is None:
                raise ValueError("SideStream.finish needs short_term_lufs or a short_term_from meter")
            short_term_lufs = self.short_term_from.short_term_series()
        freqs, psd = self.welch.result()
        hz, db = smooth_spectrum(freqs, psd, self.rate)
        return Side(self.rate, self.frames / self.rate, np.asarray(backend.to_host(short_term_lufs), np.float64),
                    hz, db, self.peaks.result())


def side_from_array(x, sample_rate: int, short_term_lufs=None) -> Side:
    """:class:`Side` of a whole signal ``(channels, samples)`` held in memory;
    ``short_term_lufs``: its series if the caller measured it already
    (:func:`kernels.loudness.measure_with_short_term`), else computed here."""
    xp = backend.array_module(x)
    x = xp.asarray(x)
    x = x.reshape(1, -1) if x.ndim == 1 else x
    s = SideStream(sample_rate, x.shape[0])
    s.push(x)
    return s.finish(meter.short_term(x, sample_rate) if short_term_lufs is None else short_term_lufs)


# ---------------------------------------------------------------- decimation and the JSON file

def envelope(values, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of ``values`` with at most ``max_points`` points: all
    of them when they fit, else each of ``max_points // 2`` equal buckets gives
    its minimum and maximum, in time order (a min/max envelope keeps every
    peak and dip a plot would show). NaN (-inf taken as NaN) is skipped; an
    all-NaN bucket gives one NaN point."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    n = v.size
    if n <= max_points:
        return np.arange(n), v
    buckets = max(1, max_points // 2)
    width = -(-n // buckets)
    rows = -(-n // width)
    padded = np.full(rows * width, np.nan)
    padded[:n] = v
    padded = padded.reshape(rows, width)
    empty = np.isnan(padded).all(axis=1)
    lo = np.argmin(np.where(np.isnan(padded), np.inf, padded), axis=1)
    hi = np.argmax(np.where(np.isnan(padded), -np.inf, padded), axis=1)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    base = np.arange(rows) * width
    idx = np.stack([base + first, base + second], axis=1)
    keep = np.stack([np.ones(rows, bool), (second != first) & ~empty], axis=1)
    idx = idx[keep]
    return idx, padded.reshape(-1)[idx]


def _series(values, t0: float, hop_s: float, nd: int = 2) -> dict:
    idx, v = envelope(values)
    return {"t": [round(t0 + i * hop_s, 3) for i in idx.tolist()],
            "v": [None if not math.isfinite(x) else round(x, nd) for x in v.tolist()]}


def _side_doc(side: Side | None) -> dict | None:
    if side is None:
        return None
    return {
        "sample_rate": side.sample_rate, "duration_s": round(side.duration_s, 3),
        "short_term": _series(side.short_term_lufs, SHORT_TERM_FIRST_S, HOP_S),
        "spectrum_db": [round(x, 2) for x in side.spectrum_db.tolist()],
        "spectrum_hz": [round(x, 1) for x in side.spectrum_hz.tolist()],
        "true_peaks": [[round(t, 3), round(db, 2)] for t, db in side.true_peaks],
    }


def plot_document(task, res, before: Side | None, after: Side | None) -> dict:
    """The plot-data JSON document of one track (plain JSON types only)."""
    target = task.track.target_lufs if task.track.target_lufs is not None else task.delivery.target_lufs
    gr = None if res is None else res.gain_reduction_db
    return {
        "version": DATA_VERSION,
        "source": task.track.source, "master": os.path.basename(task.out_path),
        "hop_s": HOP_S, "target_lufs": target, "ceiling_dbtp": task.delivery.max_true_peak_dbtp,
        "input": _side_doc(before), "master_audio": _side_doc(after),
        "gain_reduction": None if gr is None else _series(np.asarray(gr, np.float64), 0.0, HOP_S),
    }


def data_path(out_path: str) -> tuple[str, str]:
    """(absolute, relative to the master's folder) path of a master's plot data:
    ``<master's folder>/report/data/<master file name>.json`` (the whole name,
    extension included: two deliveries of one title in different formats
    keep apart)."""
    rel = f"{DATA_DIR}/{os.path.basename(out_path)}.json"
    return os.path.join(os.path.dirname(out_path) or ".", *rel.split("/")), rel


def write_track_data(task, res, before, after) -> str | None:
    """Compute (where given arrays) and write one track's plot data; return its
    path relative to the master's folder, or None (logged) if it could not be made.

    ``before``/``after``: a :class:`Side`, a :class:`SideStream` to finish,
    ``(array, sample_rate[, short-term series])`` to compute one from
    (:func:`side_from_array`), or None (no such signal).
    """
    from .report import atomic_write

    def side(s):
        return side_from_array(*s) if isinstance(s, tuple) else s.finish() if isinstance(s, SideStream) else s

    try:
        sides = [side(s) for s in (before, after)]
        doc = plot_document(task, res, *sides)
        path, rel = data_path(task.out_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
        return rel
    except Exception as e:  # plot data is auxiliary: it never fails a master
        log.warning("%s: no plot data for the report (%s: %s)", task.track.source, type(e).__name__, e)
        return None


__all__ = ["DATA_DIR", "REPORT_DIR", "MAX_POINTS", "PeakHops", "Side", "SideStream", "Welch", "data_path",
           "envelope", "plot_document", "side_from_array", "smooth_spectrum", "welch_segment",
           "write_track_data"]
