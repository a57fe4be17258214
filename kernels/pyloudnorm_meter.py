"""pyloudnorm's integrated loudness, on NumPy or CuPy: the second meter on a GPU worker.

Every delivered master is measured twice: by our meter (:mod:`kernels.loudness`)
and by an independent one, pyloudnorm (``Meter(rate, filter_class="DeMan")``),
and the two must agree (``farm.render.PYLOUDNORM_AGREEMENT_LU``). pyloudnorm
runs on the host only; on a GPU worker it was the largest host cost left
per track (~0.75-0.8 s for 4 min of 48 kHz stereo on this VM, more than decoding
and encoding the file), so there the same arithmetic runs where the samples
already are:

* pyloudnorm's own filters: the two biquads its ``Meter`` builds for the rate
  (their ``b``, ``a`` and passband gain are read from pyloudnorm itself, not
  from :mod:`kernels.loudness`), applied in order by ``lfilter``
  (``scipy.signal`` on the host, ``cupyx.scipy.signal`` on the device), in
  float64;
* its blocks: ``numBlocks = round((T - 0.4) / 0.1) + 1`` blocks of 400 ms
  whose bounds are ``int(0.4 * (j * 0.25) * rate)`` and
  ``int(0.4 * (j * 0.25 + 1) * rate)`` samples, the same float expressions;
* its mean squares per block and channel, here from one running sum of squares
  (pyloudnorm sums each block on its own: the two differ by float64 rounding,
  ~1e-12 LU), and its gating (absolute ``>= -70``, then relative ``> G - 10``
  and ``> -70``), channel weights ``1, 1, 1, 1.41, 1.41`` and ``nan_to_num`` of
  an empty gate, written as pyloudnorm writes them.

Tests hold it to pyloudnorm itself on the host (music, noise, EBU test
signals, 1 to 5 channels, the shortest signal pyloudnorm takes, silence), and
on a GPU to its own NumPy run. Nothing here is shared with :mod:`kernels.loudness`.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import backend

BLOCK_S = 0.400  # pyloudnorm's defaults: gating block and overlap
OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
CHANNEL_GAINS = (1.0, 1.0, 1.0, 1.41, 1.41)  # L, R, C, Ls, Rs (pyloudnorm's G)


@functools.lru_cache(maxsize=16)
def filter_stages(rate: float) -> tuple[tuple[np.ndarray, np.ndarray, float], ...]:
    """``((b, a, passband gain), ...)`` of pyloudnorm's DeMan K-weighting at
    ``rate`` Hz, in the order its meter applies them."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate, filter_class="DeMan")
    return tuple((np.asarray(f.b, dtype=np.float64), np.asarray(f.a, dtype=np.float64), float(f.passband_gain))
                 for f in meter._filters.values())


def block_bounds(frames: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) sample bounds of pyloudnorm's gating blocks for ``frames`` samples."""
    step = 1.0 - OVERLAP
    t = frames / rate
    count = int(np.round((t - BLOCK_S) / (BLOCK_S * step))) + 1
    j = np.arange(0, count)
    lower = (BLOCK_S * (j * step) * rate).astype(np.int64)  # int() of a positive float: truncation
    upper = (BLOCK_S * (j * step + 1) * rate).astype(np.int64)
    return np.minimum(lower, frames), np.minimum(upper, frames)  # a slice past the end stops at it


def integrated_loudness(x, rate: float) -> float:
    """Integrated loudness (LUFS; -inf when every block is gated out) of ``x``
    (channels, samples), as ``pyloudnorm.Meter(rate, filter_class="DeMan")
    .integrated_loudness(x.T)`` computes it, on ``x``'s backend.

    Raises ValueError as pyloudnorm does: more than five channels, integer
    samples, or shorter than one 400 ms block."""
    xp = backend.array_module(x)
    if x.ndim == 1:
        x = x[None, :]
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError("Data must be floating point.")
    channels, frames = x.shape
    if channels > 5:
        raise ValueError("Audio must have five channels or less.")
    if frames < BLOCK_S * rate:
        raise ValueError("Audio must have length greater than the block size.")
    sig = backend.signal(xp)
    data = x.astype(xp.float64)
    for b, a, gain in filter_stages(rate):
        data = gain * sig.lfilter(xp.asarray(b), xp.asarray(a), data, axis=-1)
    data *= data
    total = xp.cumsum(data, axis=-1)  # total[:, k]: the squares of samples 0..k
    del data
    lower, upper = block_bounds(frames, rate)

    def before(k: np.ndarray):  # the sum of squares of samples [0, k), per channel
        return xp.where(xp.asarray(k > 0), total[:, xp.asarray(np.maximum(k - 1, 0))], 0.0)

    z = backend.to_host((1.0 / (BLOCK_S * rate)) * (before(upper) - before(lower)))
    return gate(z)


def gate(z: np.ndarray) -> float:
    """pyloudnorm's gating of the block mean squares ``z`` (channels, blocks), on
    the host: LUFS, -inf when no block passes."""
    g = np.asarray(CHANNEL_GAINS[:z.shape[0]])

    def means(keep):  # pyloudnorm's np.mean per channel; an empty gate gives nan, as there
        return np.array([z[i, keep].mean() if keep.any() else math.nan for i in range(z.shape[0])])

    with np.errstate(divide="ignore", invalid="ignore"):
        level = -0.691 + 10.0 * np.log10((g[:, None] * z).sum(axis=0))
        above = level >= ABSOLUTE_GATE_LUFS
        relative = -0.691 + 10.0 * np.log10((g * means(above)).sum()) - 10.0
        kept = (level > relative) & (level > ABSOLUTE_GATE_LUFS)
        return float(-0.691 + 10.0 * np.log10((g * np.nan_to_num(means(kept))).sum()))


__all__ = ["filter_stages", "block_bounds", "gate", "integrated_loudness"]
