"""Decoding and encoding through soundfile/libsndfile, with errors that name the file.

Audio inside the farm is float32 shaped ``(channels, samples)``. Inputs are
opened read-only; outputs are written to a temporary name beside the final
one and renamed into place only when complete (:func:`atomic_output`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

MAX_CHANNELS = 8  # mono .. 7.1; beyond that a mastering chain is the wrong tool
MIN_SECONDS = 0.4  # one BS.1770 gating block: shorter has no integrated loudness

# container -> (soundfile format, subtypes by bit depth, file extension)
CONTAINERS = {
    "flac": ("FLAC", {16: "PCM_16", 24: "PCM_24"}, ".flac"),
    "wav": ("WAV", {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}, ".wav"),
    "aiff": ("AIFF", {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}, ".aiff"),
}

# input subtype -> the bit depth a master keeps when the preset does not choose
_NATIVE_DEPTH = {"PCM_S8": 16, "PCM_U8": 16, "PCM_16": 16, "PCM_24": 24, "PCM_32": 24,
                 "FLOAT": 24, "DOUBLE": 24}


class AudioError(Exception):
    """A file that cannot be decoded or written; the message names the file."""


@dataclass(frozen=True)
class Decoded:
    audio: np.ndarray  # float32, (channels, samples)
    sample_rate: int
    format: str  # libsndfile major format, e.g. "FLAC"
    subtype: str  # e.g. "PCM_24", "VORBIS", "MPEG_LAYER_III"
    path: str

    @property
    def channels(self) -> int:
        return self.audio.shape[0]

    @property
    def frames(self) -> int:
        return self.audio.shape[1]

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def native_bit_depth(self) -> int:
        """16 or 24: what the master keeps unless the preset says otherwise
        (lossy and float inputs become 24-bit masters)."""
        return _NATIVE_DEPTH.get(self.subtype, 24)


def decode(path: str) -> Decoded:
    """Decode any file libsndfile reads (WAV, FLAC, AIFF, OGG, MP3, ...).

    Raises :class:`AudioError` naming the file for: missing or unreadable
    files, undecodable data, no samples, more than :data:`MAX_CHANNELS`
    channels, and NaN/inf samples.
    """
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise AudioError(f"{path}: not a regular file")
    try:
        with sf.SoundFile(path, mode="r") as f:
            info = (f.samplerate, f.channels, f.format, f.subtype)
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot decode ({e}); supported inputs: WAV, FLAC, AIFF, OGG, MP3") from e
    rate, channels, fmt, subtype = info
    if data.shape[0] == 0:
        raise AudioError(f"{path}: holds no audio samples (empty or truncated file)")
    if channels > MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels; the farm masters mono to 7.1 (at most {MAX_CHANNELS})")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return Decoded(np.ascontiguousarray(data.T), int(rate), fmt, subtype, os.path.abspath(path))


def subtype_for(container: str, bit_depth: int) -> str:
    fmt, subtypes, _ = CONTAINERS[container]
    if bit_depth not in subtypes:
        raise AudioError(f"{container} cannot hold {bit_depth}-bit audio; choose one of {sorted(subtypes)}")
    return subtypes[bit_depth]


def extension(container: str) -> str:
    return CONTAINERS[container][2]


def encode(path: str, audio, sample_rate: int, container: str, bit_depth: int) -> None:
    """Write ``audio`` (channels, samples) to ``path`` as ``container`` at ``bit_depth``.

    Values are expected on the PCM grid already (see kernels.dither.quantize),
    so the write is exact.
    """
    fmt, _, _ = CONTAINERS[container]
    subtype = subtype_for(container, bit_depth)
    data = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).T)
    try:
        sf.write(path, data, sample_rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: cannot write {container} {bit_depth}-bit ({e})") from e


@contextlib.contextmanager
def atomic_output(final_path: str):
    """Yield a temporary path beside ``final_path``; on success the caller
    renames it with :func:`commit`; on any exception it is removed.

    The temporary name starts with '.' and ends with '.partial' plus the real
    extension's letters, so it never looks like a finished master.
    """
    folder = os.path.dirname(final_path) or "."
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(final_path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem[:80]}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def commit(tmp_path: str, final_path: str) -> None:
    """fsync the finished temporary file and rename it to its final name."""
    with open(tmp_path, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp_path, final_path)
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows
        dfd = os.open(os.path.dirname(final_path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """High-quality rate conversion on the host (polyphase, Kaiser beta 8.6:
    ~-90 dB images), float32 out. Identity when the rates match."""
    if rate_in == rate_out:
        return audio
    import math

    import scipy.signal

    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    y = scipy.signal.resample_poly(audio.astype(np.float64), up, down, axis=-1,
                                   window=("kaiser", 8.6))
    return y.astype(np.float32)
