"""Signal generators for the tests (host NumPy, float64 unless asked otherwise).

One module so every test draws from the same, documented material: sines at
a level in dBFS, the EBU-style tone sequences, square waves, inter-sample
peak tones, and seeded "music-like" programme (kick, bass, chords, noise
hats) with a realistic crest factor.
"""
from __future__ import annotations

import numpy as np

from farm import synth


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
    """Seeded music-like programme (see :func:`farm.synth.music`), -1 dBFS peak,
    shape (channels, samples), float64."""
    return synth.music(seconds, rate, channels, seed, bpm)
