"""The true-peak limiter, streamed: :func:`kernels.limiter.limit` block by block.

A two-hour programme cannot be limited in one piece, so the limiter's
stages run as a pipeline of rolling buffers, each derived signal computed
chunk by chunk on the same grid as the whole-signal functions
(:func:`~kernels.limiter.envelope_chunk` on the detection grid,
:func:`~kernels.limiter.gain_chunk` on the gain grid, with the release state
carried from chunk to chunk). A chunk is computed as soon as the samples its
window needs (the interpolator's ``HALF_TAPS``, the lookahead) have arrived,
and every buffer drops what no later chunk reads, so memory stays at a few
chunks whatever the programme's length, and the output equals the
whole-signal limiter's to the bit.

:class:`LimiterStream` is ``limit(x, rate, params, check=False)``: the
cheap pass the loudness loop runs. :class:`CheckStream` is
:func:`kernels.limiter.check` on such a pass: the whole-signal check
measures the output, corrects the residual overs, measures the changed
chunks again and repeats up to ``MAX_CORRECTIONS`` times; streamed, the
repetitions become a cascade of that many correction stages (a stage with
nothing over passes the gain through exactly, as the whole-signal loop stops
early). Its last resort, a global trim by ``ceiling / peak``, needs the
peak of the whole output: after :meth:`CheckStream.finish` the stream says
whether it was needed (:attr:`CheckStream.trim`), and the caller runs the
pass again with that trim.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from . import limiter
from .limiter import (ACCEPT, CHECK_FACTOR, CORRECTION_MARGIN, MARGIN, MAX_CORRECTIONS, _timing, apply_gain,
                      detect_chunk, envelope_chunk, gain_chunk, gain_grid, gain_scale, gated_envelope, pair_chunk,
                      required_gain)
from .oversample import HALF_TAPS, phase_bank
from .params import LimiterParams
from .stream import Streamer


class _Buf:
    """Samples ``[start, end)`` (last axis) of one derived signal, kept while
    a consumer still needs them: ``needs`` are callables giving the first
    sample each consumer will still read. Appends go into spare room at the
    end of one array (grown by doubling, compacted when the live part is
    small), so a long run of appends and trims copies each sample O(1) times."""

    def __init__(self, xp, lead: tuple, dtype):
        self.xp = xp
        self.start = 0
        self._store = xp.empty(lead + (0,), dtype=dtype)
        self._lo = self._hi = 0  # the live samples are _store[..., _lo:_hi]
        self.needs: list = []

    @classmethod
    def wrap(cls, a, start: int) -> "_Buf":
        """A buffer holding ``a`` as samples ``[start, start + len)``."""
        b = cls(backend.array_module(a), tuple(a.shape[:-1]), a.dtype)
        b._store, b._hi, b.start = a, a.shape[-1], start
        return b

    @property
    def data(self):
        return self._store[..., self._lo:self._hi]

    @property
    def end(self) -> int:
        return self.start + self._hi - self._lo

    def append(self, a) -> None:
        k = a.shape[-1]
        cap = self._store.shape[-1]
        if self._hi + k > cap:
            live = self._hi - self._lo
            if live + k > cap // 2:  # grow (amortised doubling) ...
                store = self.xp.empty(self._store.shape[:-1] + (2 * (live + k),), dtype=self._store.dtype)
            else:  # ... or slide the live part to the front
                store = self._store
            store[..., :live] = self._store[..., self._lo:self._hi].copy()  # a copy: the ranges may overlap
            self._store, self._lo, self._hi = store, 0, live
        self._store[..., self._hi:self._hi + k] = a
        self._hi += k

    def window(self, a: int, b: int):
        if a < self.start or b > self.end:
            raise RuntimeError(f"stream buffer holds [{self.start}, {self.end}), asked for [{a}, {b})")
        return self._store[..., self._lo + a - self.start:self._lo + b - self.start]

    def drop_before(self, pos: int) -> None:
        k = max(0, min(pos, self.end) - self.start)
        self._lo += k
        self.start += k

    def trim(self) -> None:
        self.drop_before(min((f() for f in self.needs), default=self.end))


class _Detector:
    """The envelope of a signal buffer, chunk by chunk on the detection grid; with
    ``curvature``, the limiter's gated envelope of ``scale`` times the signal
    (:func:`~kernels.limiter.pair_chunk`, :func:`~kernels.limiter.gated_envelope`)."""

    def __init__(self, xp, n: int, dtype, factors, curvature: float = 0.0, gate: float = 0.0, scale=None):
        self.xp, self.n, self.factors = xp, n, tuple(factors)
        self.curvature, self.gate = curvature, gate
        self.scale = np.float32(1.0) if scale is None else scale
        self.bank = xp.asarray(phase_bank(self.factors), dtype=dtype)
        self.chunk = detect_chunk(xp)
        self.env = _Buf(xp, (), dtype)
        self.done = 0

    def ready(self, available: int) -> tuple[int, int] | None:
        """The next chunk ``(s, e)`` if the signal has arrived up to what its window needs."""
        if self.done >= self.n:
            return None
        s, e = self.done, min(self.n, self.done + self.chunk)
        return (s, e) if min(self.n, e + HALF_TAPS) <= available else None

    def compute(self, sig: _Buf, s: int, e: int):
        if self.curvature:
            pair = pair_chunk(self.xp, sig.data, sig.start, s, e, self.n, self.bank, self.factors[0],
                              self.curvature)
            return gated_envelope(*pair, self.scale, self.gate)
        return envelope_chunk(self.xp, sig.data, sig.start, s, e, self.n, self.bank, self.factors)

    def advance(self, sig: _Buf) -> None:
        while (c := self.ready(sig.end)) is not None:
            self.env.append(self.compute(sig, *c))
            self.done = c[1]

    def first_needed(self) -> int:
        return max(0, self.done - HALF_TAPS)


class _Gains:
    """Attack/release gains (float64) from an envelope buffer: ``required_gain``
    of each new stretch (one sample of the envelope before it), then
    :func:`gain_chunk` on the gain grid with the release state carried."""

    def __init__(self, xp, n: int, lookahead: int, release: float, ceiling: float, over: float | None = None):
        self.xp, self.n, self.ceiling, self.over = xp, n, ceiling, over
        self.w, self.r, self.chunk = gain_grid(xp, lookahead, release)
        self.greq = _Buf(xp, (), xp.float64)
        self.greq.needs.append(lambda: max(0, self.done - (self.w - 1)))
        self.out = _Buf(xp, (), xp.float64)
        self.state = xp.zeros((), dtype=xp.float64)
        self.done = 0

    def advance(self, env: _Buf) -> None:
        xp = self.xp
        a, b = self.greq.end, env.end
        if b > a:
            w = env.window(max(0, a - 1), b)
            if self.over is not None:  # a correction: only the points still over ask for less gain
                w = xp.where(w > self.over, w, xp.zeros_like(w))
            g = required_gain(w, self.ceiling)
            self.greq.append(g[1:] if a > 0 else g)
        while self.done < self.n:
            s, e = self.done, min(self.n, self.done + self.chunk)
            if min(self.n, e + self.w - 1) > self.greq.end:
                break
            g, self.state = gain_chunk(xp, self.greq.data, self.greq.start, s, e, self.n, self.w, self.r,
                                       self.state)
            self.out.append(g)
            self.done = e
        self.greq.trim()

    def env_needed(self) -> int:
        return max(0, self.greq.end - 1)


def _as_input(xp, x, channels: int):
    x = xp.asarray(x)
    if x.ndim != 2 or x.shape[0] != channels:
        raise ValueError(f"stream block shaped {tuple(x.shape)}; expected ({channels}, samples)")
    return x


class _Emits:
    """What both streams do with the gain they settle: apply it to the held input,
    hand it to ``gain_sink``, and keep the deepest reduction."""

    gain_sink = None
    emitted = 0
    min_gain = 1.0

    gain_db = 0.0  # the static gain the held input still needs (LimiterStream holds it ungained)

    def _apply(self, x: _Buf, gain_x):
        a = self.emitted
        b = a + gain_x.shape[-1]
        out = apply_gain(x.window(a, b), self.gain_db) * gain_x
        if b > a:
            self.min_gain = min(self.min_gain, backend.to_float(gain_x.min()))
            if self.gain_sink is not None:
                self.gain_sink(gain_x)
        self.emitted = b
        return out

    @property
    def max_gain_reduction_db(self) -> float:
        g = self.min_gain
        return max(0.0, -20.0 * math.log10(g)) if g > 0 else math.inf


class LimiterStream(_Emits, Streamer):
    """``limit(x, rate, params, check=False, gain_db=gain_db)`` block by block:
    the blocks pushed are ``x`` before the static gain.

    ``push`` returns the limited samples determined so far (the lookahead
    and the interpolator's context hold back up to about two detection
    chunks); ``gain_sink``, if given, is called with each emitted stretch of
    the float32 gain (what :class:`CheckStream` takes back). After
    :meth:`finish`: :attr:`max_gain_reduction_db`.
    """

    def __init__(self, params: LimiterParams, sample_rate: float, channels: int, total: int, gain_sink=None,
                 gain_db: float = 0.0):
        self.params, self.channels, self.n = params, channels, int(total)
        self.sample_rate = sample_rate
        self.gain_sink = gain_sink
        self.gain_db = gain_db
        self.xp = None
        self.emitted = 0
        self.min_gain = 1.0

    def _start(self, x) -> None:
        xp = self.xp = backend.array_module(x)
        self.dtype = x.dtype
        p = self.params
        self.ceiling = 10.0 ** (p.ceiling_dbtp / 20.0) * (1.0 - MARGIN)
        lookahead, release = _timing(self.sample_rate, p)
        self.x = _Buf(xp, (self.channels,), x.dtype)
        self.det = _Detector(xp, self.n, x.dtype, (p.oversample,), limiter.CURVATURE, self.ceiling,
                             gain_scale(self.gain_db))
        self.gains = _Gains(xp, self.n, lookahead, release, self.ceiling)
        self.x.needs += [self.det.first_needed, lambda: self.emitted]
        self.det.env.needs.append(self.gains.env_needed)
        self.gains.out.needs.append(lambda: self.emitted)

    @property
    def bypassed(self) -> bool:
        return self.params.bypass or self.n == 0 or self.channels == 0

    def push(self, x):
        if self.xp is None:
            self._start(x)
        x = _as_input(self.xp, x, self.channels)
        if self.bypassed:
            self.emitted += x.shape[-1]
            if self.gain_sink is not None:
                self.gain_sink(self.xp.ones(x.shape[-1], dtype=x.dtype))
            return apply_gain(x, self.gain_db)
        if self.x.end + x.shape[-1] > self.n:
            raise ValueError(f"limiter stream got more than its {self.n} samples")
        self.x.append(x)
        self.det.advance(self.x)
        self.gains.advance(self.det.env)
        return self._emit()

    def _emit(self):
        out = self._apply(self.x, self.gains.out.window(self.emitted, self.gains.out.end).astype(self.dtype))
        for buf in (self.x, self.det.env, self.gains.out):
            buf.trim()
        return out

    def finish(self):
        if self.xp is None:
            self._start(np.zeros((self.channels, 0), dtype=np.float32))
        if not self.bypassed and self.x.end != self.n:
            raise ValueError(f"limiter stream ended after {self.x.end} of its {self.n} samples")
        if self.bypassed:
            return self.xp.zeros((self.channels, 0), dtype=self.dtype)
        return self._emit()



class _Correction:
    """One pass of the check's correction loop, streamed: from the previous
    gains and the previous output's envelope to this pass's gains and
    envelope (measured again only where this pass changed the gain)."""

    def __init__(self, check: "CheckStream", prev_gain: _Buf, prev_env: _Buf):
        xp = check.xp
        self.check, self.prev_gain, self.prev_env = check, prev_gain, prev_env
        self.step = _Gains(xp, check.n, check.lookahead, check.release, check.target, over=check.accept)
        self.gain = _Buf(xp, (), xp.float64)
        self.det = _Detector(xp, check.n, check.dtype, check.factors)
        self.env = self.det.env
        self.any_over = False
        prev_env.needs += [self.step.env_needed, lambda: self.det.done]
        prev_gain.needs.append(lambda: self.gain.end)
        self.step.out.needs += [lambda: self.gain.end, self.det.first_needed]
        self.gain.needs.append(self.det.first_needed)

    def advance(self) -> None:
        n = self.check.n
        a = self.prev_env.end
        seen = self.step.greq.end
        self.step.advance(self.prev_env)
        if a > seen and not self.any_over:
            self.any_over = backend.to_float(self.prev_env.window(max(seen, self.prev_env.start), a).max()) \
                > self.check.accept
        b = min(self.prev_gain.end, self.step.out.end)
        if b > self.gain.end:
            a = self.gain.end
            self.gain.append(self.prev_gain.window(a, b) * self.step.out.window(a, b))
        while (c := self.det.ready(min(self.gain.end, self.step.out.end))) is not None:
            s, e = c
            if e > self.prev_env.end:
                break
            lo, hi = max(0, s - HALF_TAPS), min(n, e + HALF_TAPS)
            # (limit() decides by the applied float32 gain; on a device whose cumsum leaves the
            # step at 1 - 1e-16 this measures more chunks again, to the same values)
            if backend.to_float(self.step.out.window(lo, hi).min()) < 1.0:
                out = self.check.x.window(lo, hi) * self.gain.window(lo, hi).astype(self.check.dtype)
                self.env.append(self.det.compute(_Buf.wrap(out, lo), s, e))
            else:
                self.env.append(self.prev_env.window(s, e))
            self.det.done = e


class CheckStream(_Emits):
    """:func:`kernels.limiter.check` on a :class:`LimiterStream` pass, block by block.

    ``push(x, gain)`` takes the same input ``x`` the pass limited and the
    float32 gain it emitted for those samples (same lengths) and returns the
    checked output determined so far (``gain_sink``, if given, gets the final
    gain of the same samples); :meth:`finish` returns the rest. Then
    :attr:`true_peak_dbtp`, :attr:`corrections`, :attr:`max_gain_reduction_db`,
    and :attr:`trim`: ``None`` when the ceiling held, else the factor the
    caller must run this pass again with (``CheckStream(..., trim=t)``),
    which gives the whole-signal check's output to the bit.
    """

    def __init__(self, params: LimiterParams, sample_rate: float, channels: int, total: int,
                 trim: float = 1.0, gain_sink=None):
        self.params, self.channels, self.n = params, channels, int(total)
        self.gain_sink = gain_sink  # called with each emitted stretch of the final float32 gain
        self.sample_rate = sample_rate
        self.trim_in = float(trim)
        ceiling_lin = 10.0 ** (params.ceiling_dbtp / 20.0)
        self.ceiling = ceiling_lin * (1.0 - MARGIN)
        self.accept = ceiling_lin * (1.0 - ACCEPT)
        self.target = ceiling_lin * (1.0 - CORRECTION_MARGIN)
        self.lookahead, self.release = _timing(sample_rate, params)
        f = params.oversample
        self.factors = (f,) if f == CHECK_FACTOR else (f, CHECK_FACTOR)
        self.xp = None
        self.emitted = 0
        self.peak = 0.0
        self.min_gain = 1.0
        self.trim: float | None = None

    def _start(self, x) -> None:
        xp = self.xp = backend.array_module(x)
        self.dtype = x.dtype
        self.x = _Buf(xp, (self.channels,), x.dtype)
        self.gain0 = _Buf(xp, (), xp.float64)
        self.out0 = _Buf(xp, (self.channels,), x.dtype)
        self.det0 = _Detector(xp, self.n, x.dtype, self.factors)
        self.stages: list[_Correction] = []
        gain, env = self.gain0, self.det0.env
        for _ in range(MAX_CORRECTIONS):
            c = _Correction(self, gain, env)
            self.stages.append(c)
            gain, env = c.gain, c.env
        self.final_gain, self.final_env = gain, env
        self.out0.needs.append(self.det0.first_needed)
        self.final_gain.needs.append(lambda: self.emitted)
        self.x.needs.append(lambda: self.emitted)
        for c in self.stages:
            self.x.needs.append(c.det.first_needed)

    def push(self, x, gain):
        if self.xp is None:
            self._start(x)
        xp = self.xp
        x = _as_input(xp, x, self.channels)
        if gain.shape[-1] != x.shape[-1]:
            raise ValueError(f"check stream: {x.shape[-1]} samples but {gain.shape[-1]} gains")
        if self.params.bypass:
            self.emitted += x.shape[-1]
            return x
        if self.x.end + x.shape[-1] > self.n:
            raise ValueError(f"check stream got more than its {self.n} samples")
        self.x.append(x)
        g64 = xp.asarray(gain).astype(xp.float64)
        self.gain0.append(g64)
        self.out0.append(x * g64.astype(self.dtype))
        return self._advance()

    def _advance(self):
        self.det0.advance(self.out0)
        for c in self.stages:
            c.advance()
        env = self.final_env
        if env.end > env.start:
            self.peak = max(self.peak, backend.to_float(env.data.max()))
        env.drop_before(env.end)  # taken: no one reads it again
        g = self.final_gain.window(self.emitted, self.final_gain.end)
        if self.trim_in != 1.0:
            g = g * self.trim_in
        out = self._apply(self.x, g.astype(self.dtype))
        bufs = [self.x, self.gain0, self.out0, self.det0.env]
        for c in self.stages:
            bufs += [c.step.out, c.gain, c.env]
        for buf in bufs:
            buf.trim()
        return out

    def finish(self):
        if self.xp is None:
            self._start(np.zeros((self.channels, 0), dtype=np.float32))
        if self.params.bypass:
            return self.xp.zeros((self.channels, 0), dtype=self.dtype)
        if self.x.end != self.n:
            raise ValueError(f"check stream ended after {self.x.end} of its {self.n} samples")
        out = self._advance()
        if not math.isfinite(self.peak):
            raise ValueError("limit got audio with NaN or infinite samples; replace them (the render "
                             "rejects such tracks) before limiting")
        if self.trim_in == 1.0 and self.peak > self.accept:
            self.trim = self.ceiling / self.peak * (1.0 - 1e-6)
        return out

    @property
    def corrections(self) -> int:
        return sum(c.any_over for c in self.stages)

    @property
    def true_peak_dbtp(self) -> float:
        p = self.peak * self.trim_in
        return 20.0 * math.log10(p) if p > 0 else -math.inf



__all__ = ["CheckStream", "LimiterStream"]
