"""Sample-rate conversion: whole-signal and block-streamed (issue 7).

:func:`resample` is the farm's rate conversion (``scipy.signal.resample_poly``
in float64, Kaiser beta 8.6, float32 out), kept here so the render and the
streamed long-programme path share one definition.

:class:`ResampleStream` is its :class:`~kernels.stream.Streamer`. It does not
approximate ``resample_poly``: it rebuilds the same filter (``firwin`` design
times ``up``, the ``n_pre_pad`` / ``n_post_pad`` zeros, ``n_pre_remove``) and
runs the same ``scipy.signal.upfirdn`` on the carried input history plus the
new block, then keeps only the outputs whose whole input window has arrived.

Why that is bit-for-bit the whole-signal result: ``upfirdn`` computes output
``m`` of a signal as one sequential float64 sum over the input window
``[i - P + 1, i]`` with ``i = floor(m * down / up)`` and ``P`` taps per
polyphase branch, in increasing input order, starting from 0 (samples before
the start are skipped, samples past the end count as zeros). Feeding it the
input from sample ``a`` on, with ``a`` a multiple of ``down``, shifts the
output grid by exactly ``a * up / down`` outputs and keeps every filter phase;
so an output whose window lies inside the history (or past the end of the
signal, known from ``total``) is the same sum of the same products in the same
order. Streamed and whole agree exactly (0 ulp) on the host.

Memory: the streamer keeps at most ``P + down`` input samples of history plus
the pushed block, per channel (``P`` is 21 for 44.1 <-> 48 kHz, 41 for
96 -> 48 kHz), never the signal.

Host only: the work is done in NumPy/SciPy on the host. CuPy input is moved to
the host (:func:`kernels.backend.to_host`) and the result moved back, so both
functions accept device arrays, but nothing runs on the GPU.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .stream import Streamer

KAISER_BETA = 8.6  # ~-90 dB images; the farm's long-standing setting
WINDOW = ("kaiser", KAISER_BETA)


def ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    """``(up, down)``: the reduced factors that turn ``rate_in`` into ``rate_out``."""
    rate_in, rate_out = int(rate_in), int(rate_out)
    if rate_in < 1 or rate_out < 1:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    g = math.gcd(rate_in, rate_out)
    return rate_out // g, rate_in // g


def _output_len(len_h: int, in_len: int, up: int, down: int) -> int:
    """``upfirdn``'s output length (scipy.signal._upfirdn._output_len)."""
    return ((in_len - 1) * up + len_h - 1) // down + 1


def _back(y, xp):
    return y if xp is np else xp.asarray(y)


def resample(x, rate_in: int, rate_out: int):
    """High-quality rate conversion (polyphase, Kaiser beta 8.6: ~-90 dB
    images) along the last axis, float32 out; ``x`` itself when the rates match.

    The same result as ``farm.audio.resample``: ``resample_poly`` of the
    float64 signal. Runs on the host; a CuPy array comes back as CuPy.
    """
    if rate_in == rate_out:
        return x
    import scipy.signal

    up, down = ratio(rate_in, rate_out)
    xp = backend.array_module(x)
    y = scipy.signal.resample_poly(backend.to_host(x).astype(np.float64), up, down,
                                   axis=-1, window=WINDOW)
    return _back(y.astype(np.float32), xp)


class ResampleStream(Streamer):
    """:func:`resample` block by block (the :mod:`kernels.stream` contract).

    ``push`` takes ``(channels, k)`` blocks (any ``k >= 0``) and returns the
    float32 output samples whose input windows have fully arrived; ``finish``
    returns the rest, using the zeros past ``total`` that ``resample_poly``
    pads with. The outputs concatenate to ``resample(whole, rate_in,
    rate_out)`` exactly, ``ceil(total * rate_out / rate_in)`` samples (reduced
    ratio). Equal rates pass blocks through unchanged, like :func:`resample`.
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int, total: int):
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self.channels, self.total = int(channels), int(total)
        self.up, self.down = up, down = ratio(rate_in, rate_out)
        self.identity = up == down == 1
        self._xp = None
        self._received = 0
        self._finished = False
        if self.identity:
            self.n_out = self.total
            return
        self.h, self.n_pre_remove = self._design(up, down, self.total)
        # Taps per polyphase branch: upfirdn pads h with zeros to a multiple of up.
        self.taps = -(-len(self.h) // up)
        n_out = self.total * up
        self.n_out = n_out // down + bool(n_out % down)
        self._next = self.n_pre_remove              # next output index (upfirdn's grid) to emit
        self._end = self.n_pre_remove + self.n_out  # one past the last kept output
        self._start = 0                             # input index of _buf[:, 0]; a multiple of down
        self._buf = np.zeros((self.channels, 0), dtype=np.float64)

    @staticmethod
    def _design(up: int, down: int, n_in: int):
        """``resample_poly``'s padded filter and ``n_pre_remove`` for ``n_in`` inputs."""
        from scipy.signal import firwin

        max_rate = max(up, down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=WINDOW)
        h = np.asarray(h, dtype=np.float64)
        h *= up
        n_pre_pad = down - half_len % down
        n_post_pad = 0
        n_pre_remove = (half_len + n_pre_pad) // down
        n_out = n_in * up
        n_out = n_out // down + bool(n_out % down)
        while _output_len(len(h) + n_pre_pad + n_post_pad, n_in, up, down) < n_out + n_pre_remove:
            n_post_pad += 1
        h = np.concatenate((np.zeros(n_pre_pad), h, np.zeros(n_post_pad)))
        return h, n_pre_remove

    @property
    def held(self) -> int:
        """Input samples per channel held as history (bounded by ``taps + down``
        after each push, plus nothing of the signal beyond that)."""
        return 0 if self.identity else self._buf.shape[-1]

    def _window_start(self, m: int) -> int:
        """First input sample that output ``m`` (upfirdn's grid) reads."""
        return (m * self.down) // self.up - self.taps + 1

    def _check(self, x):
        if self._finished:
            raise RuntimeError("ResampleStream: push() after finish()")
        if self._xp is None:
            self._xp = backend.array_module(x)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"ResampleStream: expected a ({self.channels}, k) block, got shape {x.shape}")
        k = x.shape[-1]
        if self._received + k > self.total:
            raise ValueError(f"ResampleStream: {self._received + k} samples pushed, "
                             f"more than total={self.total}")
        self._received += k

    def _emit(self, stop: int) -> np.ndarray:
        """Outputs ``[_next, stop)`` from the history, then drop the history they
        no longer need."""
        import scipy.signal

        up, down = self.up, self.down
        if stop <= self._next:
            return np.zeros((self.channels, 0), dtype=np.float32)
        shift = (self._start // down) * up  # output-grid offset of _buf's first sample
        y = scipy.signal.upfirdn(self.h, self._buf, up, down, axis=-1)
        out = y[:, self._next - shift:stop - shift].astype(np.float32)
        self._next = stop
        # Keep from the largest multiple of down at or before the next window.
        keep = max(0, self._window_start(self._next)) // down * down
        if keep > self._start:
            self._buf = self._buf[:, keep - self._start:]
            self._start = keep
        return out

    def push(self, x):
        self._check(x)
        if self.identity:
            return x
        xh = backend.to_host(x)
        if xh.shape[-1]:
            self._buf = np.concatenate((self._buf, xh.astype(np.float64)), axis=-1)
        if self._received == self.total:
            stop = self._end  # everything past the end is the known zero padding
        else:
            # Output m reads inputs up to floor(m * down / up): determined while
            # that is below the number received.
            stop = min(self._end, (self._received * self.up - 1) // self.down + 1)
        return _back(self._emit(stop), self._xp)

    def finish(self):
        if self._finished:
            raise RuntimeError("ResampleStream: finish() called twice")
        if self._received != self.total:
            raise ValueError(f"ResampleStream: {self._received} samples pushed, total={self.total}")
        xp = self._xp or np
        self._finished = True
        if self.identity:
            return xp.zeros((self.channels, 0), dtype=xp.float32)
        out = self._emit(self._end)
        self._buf = self._buf[:, :0]
        return _back(out, xp)


__all__ = ["KAISER_BETA", "ResampleStream", "ratio", "resample"]
