"""Decoding and encoding through soundfile/libsndfile, with errors that name the file.

Audio inside the farm is float32 shaped ``(channels, samples)``. Inputs are
opened read-only; outputs are written to a temporary name beside the final
one and renamed into place only when complete (:func:`atomic_output`).
"""
from __future__ import annotations

import contextlib
import os
import struct
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
    if os.path.getsize(path) == 0:
        # libsndfile only says "Format not recognised" for a 0-byte file; say what it is.
        raise AudioError(f"{path}: cannot decode: empty file (0 bytes); re-export or re-copy the file")
    errors = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
    try:
        f = sf.SoundFile(path, mode="r")
    except errors as e:
        raise AudioError(f"{path}: cannot decode ({e}); supported inputs: WAV, FLAC, AIFF, OGG, MP3") from e
    # The header opened, so a failure now is in the audio data: a cut-off FLAC,
    # for one, only makes libsndfile report "flac decoder lost sync".
    try:
        with f:
            info = (f.samplerate, f.channels, f.format, f.subtype)
            info_frames = f.frames  # MP3: from the Xing/VBR header, so a cut file reads short
            data = f.read(dtype="float32", always_2d=True)
    except errors as e:
        raise AudioError(f"{path}: cannot decode: the audio data is damaged or truncated ({e}); "
                         "re-export or re-copy the file") from e
    rate, channels, fmt, subtype = info
    if data.shape[0] == 0:
        raise AudioError(f"{path}: holds no audio samples (empty or truncated file)")
    if fmt in ("WAV", "AIFF"):  # exact headers
        declared, slack = declared_frames(path, fmt), 0
    else:  # MP3's frame count is an estimate from its VBR header: flag only a clear shortfall
        declared, slack = info_frames, max(4608, info_frames // 100)
    if declared is not None and data.shape[0] + slack < declared:
        raise AudioError(f"{path}: truncated: its header declares {declared} frames but only {data.shape[0]} "
                         "could be read; re-export or re-copy the file")
    if channels > MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels; the farm masters mono to 7.1 (at most {MAX_CHANNELS})")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return Decoded(np.ascontiguousarray(data.T), int(rate), fmt, subtype, os.path.abspath(path))


def declared_frames(path: str, fmt: str) -> int | None:
    """Frames a WAV or AIFF header declares (``None`` if it does not say).

    libsndfile quietly shortens a cut-off WAV/AIFF to what the file holds, so
    a truncated master source would otherwise be mastered as a shorter track.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if fmt == "WAV" and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        pos, align, size = 12, None, None
        while pos + 8 <= len(head):
            cid, n = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
            if cid == b"fmt " and pos + 22 <= len(head):
                align = struct.unpack("<H", head[pos + 20:pos + 22])[0]
            elif cid == b"data":
                size = n
                break
            pos += 8 + n + (n & 1)
        if align and size and size != 0xFFFFFFFF:  # 0 / 0xFFFFFFFF: written by a streaming encoder
            return size // align
    if fmt == "AIFF" and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        pos = 12
        while pos + 8 <= len(head):
            cid, n = head[pos:pos + 4], struct.unpack(">I", head[pos + 4:pos + 8])[0]
            if cid == b"COMM" and pos + 14 <= len(head):
                return struct.unpack(">I", head[pos + 10:pos + 14])[0] or None
            pos += 8 + n + (n & 1)
    return None


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
        # libsndfile reports a failed write() (a full disk, a quota, an I/O error) only as
        # "System error."; the C errno, read at once through soundfile's cffi, says which.
        why = str(e)
        if getattr(e, "code", None) == 2:  # SFE_SYSTEM
            code = getattr(getattr(sf, "_ffi", None), "errno", 0)
            if code:
                why = f"{why.rstrip('.')}: [Errno {code}] {os.strerror(code)}"
        raise AudioError(f"{path}: cannot write {container} {bit_depth}-bit ({why})") from e


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


def publish_mode(path: str) -> None:
    """Give a finished file the mode a plain ``open()`` would have (0666 minus
    the umask): temporary files are created 0600, and a master or report that
    the rest of the label's pipeline cannot read is not delivered."""
    os.chmod(path, 0o666 & ~_UMASK)


def commit(tmp_path: str, final_path: str) -> None:
    """fsync the finished temporary file and rename it to its final name."""
    publish_mode(tmp_path)
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
