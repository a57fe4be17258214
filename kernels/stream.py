"""Block-wise processing with carried state: the streaming form of the kernels.

A long programme (a two-hour concert at 96 kHz is 5.5 GB of float32) cannot
be held in memory, so the render reads, processes and writes it in blocks.
Every kernel that has a whole-signal function (``apply_eq``, ``apply_reverb``,
``limit``, ``quantize``, ...) can also have a :class:`Streamer`: an object
that takes the same signal as consecutive blocks and gives back consecutive
output blocks whose concatenation equals the whole-signal function's output
(within float32 rounding; bit for bit where the streamer works on the same
internal chunk grid as the whole-signal function).

The contract:

- ``Streamer(...)`` is built with the stage's parameters, the sample rate,
  the channel count and ``total``: the signal's whole length in samples
  (known from the file header before the first block). Stages that behave
  differently at the end of the signal (a fade over the last 50 ms, a
  filter's zero padding past the end) need it.
- ``push(block)`` takes the next ``(channels, k)`` samples (any ``k >= 0``;
  blocks need not be equal) and returns the next output samples that are
  already determined: a ``(channels, j)`` array, ``j`` possibly 0 while the
  stage waits for the future samples its lookahead needs.
- ``finish()`` is called once after the last block and returns the rest.
  The outputs of every ``push`` and the ``finish`` concatenated have the
  whole-signal function's length (usually ``total``; more where a reverb
  rings out).
- A streamer holds only a bounded amount of history (its filter length,
  lookahead, envelope state), never the signal.

Blocks that are multiples of :data:`BLOCK_QUANTUM` keep every kernel on the
chunk grid its whole-signal function uses on the host.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from . import backend

BLOCK_QUANTUM = 1 << 17  # samples; a multiple of every host-side chunk size in kernels/


class Streamer:
    """One stage, block by block (see the module docstring for the contract)."""

    def push(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self):  # pragma: no cover - abstract
        raise NotImplementedError


class Identity(Streamer):
    """Passes blocks through (a bypassed stage)."""

    def __init__(self, channels: int, xp=None):
        self.channels = channels
        self.xp = xp

    def push(self, x):
        if self.xp is None:
            self.xp = backend.array_module(x)
        return x

    def finish(self):
        import numpy as np

        xp = self.xp or np
        return xp.zeros((self.channels, 0), dtype=xp.float32)


class Pipeline(Streamer):
    """Streamers in order: each one's output is the next one's input."""

    def __init__(self, stages: Sequence[Streamer]):
        self.stages = list(stages)

    def push(self, x):
        for s in self.stages:
            x = s.push(x)
        return x

    def finish(self):
        out = None
        xp = None
        for s in self.stages:
            if out is not None and out.shape[-1]:
                head = s.push(out)
                tail = s.finish()
                xp = backend.array_module(tail)
                out = xp.concatenate([head, tail], axis=-1)
            else:
                out = s.finish()
        return out


def split(x, sizes: Iterable[int] | int):
    """``x`` (channels, samples) cut into consecutive blocks: of ``sizes``
    samples each when an int (the last one shorter), else of the given sizes
    (the rest as one final block)."""
    n = x.shape[-1]
    if isinstance(sizes, int):
        if sizes <= 0:
            raise ValueError(f"block size must be positive, got {sizes}")
        return [x[:, s:s + sizes] for s in range(0, n, sizes)] or [x[:, :0]]
    out, s = [], 0
    for k in sizes:
        out.append(x[:, s:s + k])
        s += k
    if s < n:
        out.append(x[:, s:])
    return out


def pieces(n: int, starts) -> list[tuple[int, int, bool]]:
    """``[0, n)`` cut at ``starts`` (offsets; those outside ``[0, n)`` are ignored):
    ``(a, b, fresh)`` per non-empty piece, ``fresh`` where it begins at one of
    ``starts``. A batch's tracks begin there (:mod:`kernels.batch`), and what carries
    state (a compressor, the limiter's release) starts such a piece at rest."""
    cuts = sorted({int(t) for t in starts if 0 <= t < n})
    return [(a, b, a in cuts) for a, b in zip([0] + cuts, cuts + [n]) if b > a]


def run(streamer: Streamer, blocks):
    """Feed ``blocks`` through ``streamer`` and concatenate its output."""
    parts = [streamer.push(b) for b in blocks]
    parts.append(streamer.finish())
    xp = backend.array_module(parts[-1])
    return xp.concatenate(parts, axis=-1)


__all__ = ["BLOCK_QUANTUM", "Identity", "Pipeline", "Streamer", "pieces", "run", "split"]
