"""Seeded, music-like programme for the demo catalog, the benchmarks and the tests.

Not music, but close enough in the ways that matter to a mastering chain:
a kick with a pitch drop on every beat, a harmonic bass line, sustained
triads with slightly detuned, decorrelated channels, noise hats on the
off-beats and a low noise floor. Peak-normalised like an unmastered mix
(-1 dBFS peak, crest factor roughly 12-18 dB). Deterministic per seed.
"""
from __future__ import annotations

import numpy as np


def music(seconds: float = 10.0, rate: int = 48000, channels: int = 2, seed: int = 0,
          bpm: float = 120.0, peak_dbfs: float = -1.0) -> np.ndarray:
    """Return float64 programme shaped (channels, samples)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    beat = 60.0 / bpm
    out = np.zeros((channels, n))
    # kick: a sine whose pitch falls from ~140 to 50 Hz, on every beat
    m = int(0.35 * rate)
    tt = np.arange(m) / rate
    kick = 0.9 * np.sin(2 * np.pi * np.cumsum(50 + 90 * np.exp(-tt * 30)) / rate) * np.exp(-tt * 9)
    for start in np.arange(0.0, seconds, beat):
        i0 = int(start * rate)
        k = min(n - i0, m)
        out[:, i0:i0 + k] += kick[:k]
    # bass: five harmonics of a root that changes every half bar
    roots = rng.choice([41.2, 43.65, 49.0, 55.0], size=int(seconds / (2 * beat)) + 2)
    phase = np.cumsum(roots[(t // (2 * beat)).astype(int)]) / rate
    out += 0.25 * sum(np.sin(2 * np.pi * k * phase) / k for k in range(1, 6))
    # chords: triads with a slow attack per bar, detuned per channel for width
    chord_roots = rng.choice([220.0, 246.9, 261.6, 293.7], size=int(seconds / (4 * beat)) + 2)
    f0 = chord_roots[(t // (4 * beat)).astype(int)]
    env = 1 - np.exp(-((t % (4 * beat)) * 6))
    for c in range(channels):
        det = 1 + 0.002 * (c - (channels - 1) / 2)
        ph = np.cumsum(f0 * det) / rate
        out[c] += 0.12 * env * sum(np.sin(2 * np.pi * r * ph + c) for r in (1.0, 1.26, 1.5))
    # hats: short differenced-noise bursts on the off-beats
    hats = np.zeros(n)
    m = int(0.05 * rate)
    decay = np.exp(-np.arange(m) / rate * 80)
    for start in np.arange(beat / 2, seconds, beat):
        i0 = int(start * rate)
        k = min(n - i0, m)
        hats[i0:i0 + k] += rng.standard_normal(k) * decay[:k]
    out += 0.15 * np.diff(hats, prepend=0.0)
    out += 0.003 * rng.standard_normal((channels, n))
    peak = np.abs(out).max()
    return out / peak * 10.0 ** (peak_dbfs / 20.0) if peak > 0 else out
