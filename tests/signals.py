"""Signal generators for the tests (host NumPy, float64 unless asked otherwise).

One module so every test draws from the same, documented material: sines at
a level in dBFS, the EBU-style tone sequences, square waves, inter-sample
peak tones, and seeded "music-like" programme (kick, bass, chords, noise
hats) with a realistic crest factor.
"""
from __future__ import annotations

import numpy as np


def db_to_amp(db: float) -> float:
    return 10.0 ** (db / 20.0)


def sine(freq_hz: float, seconds: float, rate: int = 48000, level_dbfs: float = -20.0,
         channels: int = 2, phase: float = 0.0) -> np.ndarray:
    """A sine at ``level_dbfs`` peak in every channel, shape (channels, samples)."""
    n = np.arange(int(round(seconds * rate)))
    s = db_to_amp(level_dbfs) * np.sin(2 * np.pi * freq_hz * n / rate + phase)
    return np.tile(s, (channels, 1))


def tone_sequence(levels_dbfs, seconds, freq_hz: float = 1000.0, rate: int = 48000,
                  channels: int = 2) -> np.ndarray:
    """Concatenated sine segments (EBU Tech 3341/3342 style), shape (channels, samples)."""
    parts = [sine(freq_hz, s, rate, lvl, channels) for lvl, s in zip(levels_dbfs, seconds)]
    return np.concatenate(parts, axis=1)


def square(freq_hz: float, seconds: float, rate: int = 48000, level_dbfs: float = 0.0,
           channels: int = 2) -> np.ndarray:
    """A naive (aliased, full-band) square wave: a classic limiter torture test."""
    n = np.arange(int(round(seconds * rate)))
    s = db_to_amp(level_dbfs) * np.sign(np.sin(2 * np.pi * freq_hz * n / rate + 1e-3))
    return np.tile(s, (channels, 1))


def isp_tone(seconds: float = 1.0, rate: int = 48000, channels: int = 2) -> np.ndarray:
    """Full-scale samples whose reconstruction peaks ~3 dB over: fs/4 sine at 45 degrees."""
    return sine(rate / 4, seconds, rate, level_dbfs=0.0, channels=channels, phase=np.pi / 4) * np.sqrt(2)


def music(seconds: float = 10.0, rate: int = 48000, channels: int = 2, seed: int = 0,
          bpm: float = 120.0) -> np.ndarray:
    """Seeded music-like programme: kick, bass line, triad chords, hats, a little noise.

    Peak-normalised to -1 dBFS with a crest factor of roughly 12-18 dB, like an
    unmastered mix. Shape (channels, samples), float64.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    beat = 60.0 / bpm
    out = np.zeros((channels, n))
    # kick: pitched-down sine bursts on every beat
    for start in np.arange(0.0, seconds, beat):
        i0 = int(start * rate)
        m = min(n - i0, int(0.35 * rate))
        tt = np.arange(m) / rate
        f = 50 + 90 * np.exp(-tt * 30)
        out[:, i0:i0 + m] += 0.9 * np.sin(2 * np.pi * np.cumsum(f) / rate) * np.exp(-tt * 9)
    # bass line: saw-ish notes, one per half bar
    roots = rng.choice([41.2, 43.65, 49.0, 55.0], size=int(seconds / (2 * beat)) + 1)
    f_bass = roots[(t // (2 * beat)).astype(int)]
    phase = np.cumsum(f_bass) / rate
    bass = sum(np.sin(2 * np.pi * k * phase) / k for k in range(1, 6))
    out += 0.25 * bass
    # chords: triads with slow attack, slightly different per channel (stereo width)
    chord_roots = rng.choice([220.0, 246.9, 261.6, 293.7], size=int(seconds / (4 * beat)) + 1)
    f0 = chord_roots[(t // (4 * beat)).astype(int)]
    env = 1 - np.exp(-((t % (4 * beat)) * 6))
    for c in range(channels):
        det = 1 + 0.002 * (c - (channels - 1) / 2)
        ph = np.cumsum(f0 * det) / rate
        out[c] += 0.12 * env * sum(np.sin(2 * np.pi * r * ph + c) for r in (1.0, 1.26, 1.5))
    # hats: short noise bursts on off-beats, high-passed by differencing
    hats = np.zeros(n)
    for start in np.arange(beat / 2, seconds, beat):
        i0 = int(start * rate)
        m = min(n - i0, int(0.05 * rate))
        hats[i0:i0 + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / rate * 80)
    hats = np.diff(hats, prepend=0.0)
    out += 0.15 * hats
    out += 0.003 * rng.standard_normal((channels, n))
    return out / np.abs(out).max() * db_to_amp(-1.0)
