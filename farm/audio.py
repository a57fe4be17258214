"""Decoding and encoding through soundfile/libsndfile, with errors that name the file.

Audio inside the farm is float32 shaped ``(channels, samples)``. Inputs are
opened read-only; outputs are written to a temporary name beside the final
one and renamed into place only when complete (:func:`atomic_output`).

A programme too long to hold in memory (a two-hour concert at 96 kHz is
5.5 GB as float32) is read with :func:`open_blocks` and written with
:func:`open_writer`, block by block, with the same checks and errors as
:func:`decode` and :func:`encode`; a WAV master that would pass RIFF's 4 GiB
is written as RF64 (RF64 and W64 inputs are read like WAV).
"""
from __future__ import annotations

import contextlib
import functools
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


# Integer PCM: decoded to float32 by scaling, so never NaN or infinite (no check needed)
_INTEGER_PCM = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32"})


@dataclass(frozen=True)
class Decoded:
    """A decoded file. ``interleaved`` is float32 (samples, channels) as libsndfile
    reads it; ``audio``, the (channels, samples) copy the kernels take, is made on
    first use, so a GPU worker that uploads ``interleaved`` and transposes on the
    device never pays for it on the host (~35 ms per 4 min of stereo)."""

    interleaved: np.ndarray  # float32, (samples, channels)
    sample_rate: int
    format: str  # libsndfile major format, e.g. "FLAC"
    subtype: str  # e.g. "PCM_24", "VORBIS", "MPEG_LAYER_III"
    path: str

    @functools.cached_property
    def audio(self) -> np.ndarray:
        """float32, (channels, samples), C-contiguous. Once made, ``interleaved``
        becomes a view of it, so the decoded samples are held once, not twice."""
        a = np.ascontiguousarray(self.interleaved.T)
        object.__setattr__(self, "interleaved", a.T)  # frozen: the same samples, the old buffer freed
        return a

    @property
    def channels(self) -> int:
        return self.interleaved.shape[1]

    @property
    def frames(self) -> int:
        return self.interleaved.shape[0]

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def native_bit_depth(self) -> int:
        """16 or 24: what the master keeps unless the preset says otherwise
        (lossy and float inputs become 24-bit masters)."""
        return _NATIVE_DEPTH.get(self.subtype, 24)


_READ_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
_INPUTS = "WAV (also RF64/W64), FLAC, AIFF, OGG, MP3"


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise AudioError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        # libsndfile only says "Format not recognised" for a 0-byte file; say what it is.
        raise AudioError(f"{path}: cannot decode: empty file (0 bytes); re-export or re-copy the file")


def _open_read(path: str) -> sf.SoundFile:
    """The file opened read-only by libsndfile, after :func:`_check_path`."""
    _check_path(path)
    try:
        return sf.SoundFile(path, mode="r")
    except _READ_ERRORS as e:
        raise AudioError(f"{path}: cannot decode ({e}); supported inputs: {_INPUTS}") from e


def _damaged(path: str, e: BaseException) -> AudioError:
    # The header opened, so a failure now is in the audio data: a cut-off FLAC,
    # for one, only makes libsndfile report "flac decoder lost sync".
    return AudioError(f"{path}: cannot decode: the audio data is damaged or truncated ({e}); "
                      "re-export or re-copy the file")


def _expected(path: str, fmt: str, info_frames: int) -> tuple[int | None, int]:
    """(frames the file should hold, shortfall tolerated) for the truncation check."""
    if fmt in _EXACT_HEADERS:  # exact headers
        return declared_frames(path, fmt), 0
    # MP3's frame count is an estimate from its VBR header: flag only a clear shortfall
    return info_frames, max(4608, info_frames // 100)


def _check_complete(path: str, read: int, declared: int | None, slack: int) -> None:
    if read == 0:
        raise AudioError(f"{path}: holds no audio samples (empty or truncated file)")
    if declared is not None and read + slack < declared:
        raise AudioError(f"{path}: truncated: its header declares {declared} frames but only {read} "
                         "could be read; re-export or re-copy the file")


def _check_channels(path: str, channels: int) -> None:
    if channels > MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels; the farm masters mono to 7.1 (at most {MAX_CHANNELS})")


def decode(path: str) -> Decoded:
    """Decode any file libsndfile reads (WAV, RF64, W64, FLAC, AIFF, OGG, MP3, ...).

    Raises :class:`AudioError` naming the file for: missing or unreadable
    files, undecodable data, no samples, a file shorter than its header
    declares, more than :data:`MAX_CHANNELS` channels, and NaN/inf samples.
    A programme too long to hold in memory is read with :class:`BlockReader`
    instead, which makes the same checks block by block.
    """
    f = _open_read(path)
    try:
        with f:
            info = (f.samplerate, f.channels, f.format, f.subtype)
            info_frames = f.frames  # MP3: from the Xing/VBR header, so a cut file reads short
            data = f.read(dtype="float32", always_2d=True)
    except _READ_ERRORS as e:
        raise _damaged(path, e) from e
    rate, channels, fmt, subtype = info
    declared, slack = _expected(path, fmt, info_frames)
    _check_complete(path, data.shape[0], declared, slack)
    _check_channels(path, channels)
    if subtype not in _INTEGER_PCM and not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return Decoded(data, int(rate), fmt, subtype, os.path.abspath(path))


class BlockReader:
    """A file read block by block, for programmes too long to decode whole.

    ``BlockReader(path, block)`` reads the header only (the file is opened
    read-only and closed again) and exposes what :class:`Decoded` does
    without the audio: ``sample_rate`` (also ``rate``), ``channels``,
    ``frames``, ``format``, ``subtype``, ``native_bit_depth``, ``duration_s``,
    ``path``. Iterating it is one *pass*: the file is opened again and
    float32 ``(channels, k)`` blocks of ``block`` frames come out (the last
    one shorter); a second ``for`` is a second pass. Each pass makes
    :func:`decode`'s checks, raising :class:`AudioError` naming the file:
    NaN/inf samples in the block that holds them, damaged data where libsndfile
    stops, and, after the last block, no samples at all or fewer frames than
    the header declares (the MP3 slack rule as in :func:`decode`).

    ``frames`` is what the header declares: exact for WAV/RF64/W64/AIFF, FLAC
    and Ogg, an estimate for MP3 (``frames_exact`` is False there; the count a
    complete pass read is ``frames_read`` afterwards). A WAV/RF64/W64/AIFF
    whose file is already shorter than its header declares is refused on
    opening, before any block is read.
    """

    def __init__(self, path: str, block: int):
        if not isinstance(block, int) or isinstance(block, bool) or block <= 0:
            raise ValueError(f"block must be a positive number of frames, got {block!r}")
        self.path = os.path.abspath(path)
        self._name = path  # messages name the file as the caller did, like decode()
        self.block = block
        f = _open_read(path)
        with f:
            self.sample_rate, self.channels = int(f.samplerate), int(f.channels)
            self.format, self.subtype = f.format, f.subtype
            info_frames = int(f.frames)
        _check_channels(path, self.channels)
        self._declared, self._slack = _expected(path, self.format, info_frames)
        self.frames = self._declared if self._declared is not None else info_frames
        self.frames_exact = self.format != "MP3"
        self.frames_read: int | None = None  # set by each complete pass
        if self.format in _EXACT_HEADERS:  # libsndfile's count is what the file holds: a cut shows now
            _check_complete(path, info_frames, self._declared, 0)

    @property
    def rate(self) -> int:
        return self.sample_rate

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def native_bit_depth(self) -> int:
        return _NATIVE_DEPTH.get(self.subtype, 24)

    def __iter__(self):
        return self.blocks()

    def blocks(self):
        """One pass over the file: float32 ``(channels, k)`` blocks (see the class)."""
        path = self._name
        f = _open_read(path)
        read = 0
        with f:
            while True:
                try:
                    data = f.read(self.block, dtype="float32", always_2d=True)
                except _READ_ERRORS as e:
                    raise _damaged(path, e) from e
                k = data.shape[0]
                if k == 0:
                    break
                if not np.isfinite(data).all():
                    at = read + int(np.argmin(np.isfinite(data).all(axis=1)))
                    raise AudioError(f"{path}: contains NaN or infinite samples (first at frame {at}, "
                                     f"{at / self.sample_rate:.1f} s)")
                read += k
                yield np.ascontiguousarray(data.T)
        _check_complete(path, read, self._declared, self._slack)
        self.frames_read = read


def open_blocks(path: str, block: int) -> BlockReader:
    """A :class:`BlockReader` for ``path`` in blocks of ``block`` frames."""
    return BlockReader(path, block)


_EXACT_HEADERS = ("WAV", "WAVEX", "RF64", "W64", "AIFF")  # headers that state the data size exactly
# Wave64 ids are GUIDs: 4 letters, then these 12 bytes (the "riff" GUID's differ from the others')
_W64_RIFF_TAIL = bytes.fromhex("2e91cf11a5d628db04c10000")
_W64_GUID_TAIL = bytes.fromhex("f3acd3118cd100c04f8edb8a")


def declared_frames(path: str, fmt: str) -> int | None:
    """Frames a WAV, RF64, W64 or AIFF header declares (``None`` if it does not say).

    libsndfile quietly shortens a cut-off file of these kinds to what it
    holds, so a truncated master source would otherwise be mastered as a
    shorter track. RF64 keeps its 64-bit data size in the ``ds64`` chunk (the
    RIFF ``data`` size then reads 0xFFFFFFFF); Wave64 has 64-bit chunk sizes
    that count their own 24-byte header.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if fmt in ("WAV", "WAVEX", "RF64") and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        pos, align, size, ds64 = 12, None, None, None
        while pos + 8 <= len(head):
            cid, n = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
            if cid == b"ds64" and pos + 24 <= len(head):
                ds64 = struct.unpack("<Q", head[pos + 16:pos + 24])[0]  # after the 64-bit RIFF size
            elif cid == b"fmt " and pos + 22 <= len(head):
                align = struct.unpack("<H", head[pos + 20:pos + 22])[0]
            elif cid == b"data":
                size = ds64 if head[:4] == b"RF64" and n == 0xFFFFFFFF else n
                break
            pos += 8 + n + (n & 1)
        if align and size and size != 0xFFFFFFFF:  # 0 / 0xFFFFFFFF: written by a streaming encoder
            return size // align
    if fmt == "W64" and head[:16] == b"riff" + _W64_RIFF_TAIL and head[24:40] == b"wave" + _W64_GUID_TAIL:
        pos, align = 40, None  # riff GUID + size (24 bytes), then the 16-byte wave GUID
        while pos + 24 <= len(head):
            cid, n = head[pos:pos + 4], struct.unpack("<Q", head[pos + 16:pos + 24])[0]
            if n < 24 or head[pos + 4:pos + 16] != _W64_GUID_TAIL:
                break
            if cid == b"fmt " and pos + 38 <= len(head):
                align = struct.unpack("<H", head[pos + 36:pos + 38])[0]
            elif cid == b"data":
                return (n - 24) // align if align else None
            pos += (n + 7) & ~7  # chunks are padded to 8 bytes
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
    except _WRITE_ERRORS as e:
        raise _write_error(path, container, bit_depth, e) from e


_WRITE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError)


def _write_error(path: str, container: str, bit_depth: int, e: BaseException) -> AudioError:
    # libsndfile reports a failed write() (a full disk, a quota, an I/O error) only as
    # "System error."; the C errno, read at once through soundfile's cffi, says which.
    why = str(e)
    if getattr(e, "code", None) == 2:  # SFE_SYSTEM
        code = getattr(getattr(sf, "_ffi", None), "errno", 0)
        if code:
            why = f"{why.rstrip('.')}: [Errno {code}] {os.strerror(code)}"
    return AudioError(f"{path}: cannot write {container} {bit_depth}-bit ({why})")


# RIFF (WAV) and AIFF keep chunk sizes in 32 bits: a file must stay under 4 GiB.
# Module constants so that a test can lower them instead of writing 4 GiB.
WAV_LIMIT_BYTES = 2**32 - 1
AIFF_LIMIT_BYTES = 2**32 - 1
# Room for the header and the tags farm.tags adds afterwards (an ID3 chunk, a
# few KiB; cover art is never written), so a WAV close to the limit is RF64 too.
HEADER_ALLOWANCE_BYTES = 1 << 20
_BYTES_PER_SAMPLE = {16: 2, 24: 3, 32: 4}


def stream_format(container: str, bit_depth: int, channels: int, frames: int) -> str:
    """The libsndfile format a master of ``frames`` frames is written in: the
    container's own, or "RF64" for a WAV whose data would pass RIFF's 4 GiB
    (:data:`WAV_LIMIT_BYTES`). An AIFF that large is refused (AIFF has no
    64-bit form that libsndfile writes)."""
    fmt, _, _ = CONTAINERS[container]
    subtype_for(container, bit_depth)
    size = frames * channels * _BYTES_PER_SAMPLE[bit_depth] + HEADER_ALLOWANCE_BYTES
    if container == "wav" and size >= WAV_LIMIT_BYTES:
        return "RF64"
    if container == "aiff" and size >= AIFF_LIMIT_BYTES:
        raise AudioError(f"aiff cannot hold {frames} frames x {channels} channels at {bit_depth}-bit "
                         f"({size / 2**30:.1f} GiB): AIFF files stop at 4 GiB; deliver this programme as "
                         "flac (lossless, no size limit) or wav (written as RF64 past 4 GiB)")
    return fmt


class BlockWriter:
    """A master written block by block: ``write((channels, k) block)`` in order, then ``close()``.

    ``frames`` is how many frames will be written (an upper estimate will do):
    it chooses the format (:func:`stream_format`: RF64 for a WAV past 4 GiB,
    keeping the ``.wav`` name as RF64 files conventionally do; an AIFF past
    4 GiB is refused here, before anything is written). Writing more than
    ``frames`` into a plain WAV or AIFF so that it would pass 4 GiB raises
    instead of leaving a file whose sizes wrapped. Values are expected on the
    PCM grid (see kernels.dither.quantize), so the write is exact. Every
    failure (a full disk included) is an :class:`AudioError` naming ``path``,
    as :func:`encode`'s are. A context manager: leaving the block closes the
    file (the caller's :func:`atomic_output` removes it on an exception).
    """

    def __init__(self, path: str, sample_rate: int, channels: int, container: str, bit_depth: int,
                 frames: int):
        self.path, self.container, self.bit_depth = path, container, bit_depth
        self.channels, self.sample_rate = int(channels), int(sample_rate)
        self.frames = int(frames)  # as announced
        self.format = stream_format(container, bit_depth, self.channels, self.frames)
        self.subtype = subtype_for(container, bit_depth)
        self.frames_written = 0
        limit = {"WAV": WAV_LIMIT_BYTES, "AIFF": AIFF_LIMIT_BYTES}.get(self.format)
        self._max_frames = None if limit is None else \
            (limit - HEADER_ALLOWANCE_BYTES) // (self.channels * _BYTES_PER_SAMPLE[bit_depth])
        try:
            self._f = sf.SoundFile(path, mode="w", samplerate=self.sample_rate, channels=self.channels,
                                   format=self.format, subtype=self.subtype)
        except _WRITE_ERRORS as e:
            raise _write_error(path, container, bit_depth, e) from e

    def write(self, block) -> None:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"{self.path}: a block must be shaped ({self.channels}, k), got {block.shape}")
        k = block.shape[1]
        if self._max_frames is not None and self.frames_written + k > self._max_frames:
            raise AudioError(f"{self.path}: cannot write {self.container} {self.bit_depth}-bit: frames past "
                             f"{self._max_frames} would pass {self.format}'s 4 GiB, and the writer was opened "
                             f"for {self.frames} frames; open it with the programme's full length")
        try:
            self._f.write(np.ascontiguousarray(block.T))
        except _WRITE_ERRORS as e:
            raise _write_error(self.path, self.container, self.bit_depth, e) from e
        self.frames_written += k

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            self._f.close()  # libsndfile writes the final sizes into the header here
        except _WRITE_ERRORS as e:
            raise _write_error(self.path, self.container, self.bit_depth, e) from e

    def __enter__(self) -> "BlockWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # already failing: close quietly, the original error is the one to see
            with contextlib.suppress(Exception):
                self._f.close()


# ---------------------------------------------------------------- lossy delivery copies

# copy format -> (libsndfile format, subtype, extension, sample rates it takes (None: any), most channels)
COPY_CONTAINERS = {
    "ogg": ("OGG", "VORBIS", ".ogg", None, 8),
    "opus": ("OGG", "OPUS", ".opus", (48000, 24000, 16000, 12000, 8000), 8),
    "mp3": ("MP3", "MPEG_LAYER_III", ".mp3", (48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000), 2),
}
_COPY_NAMES = {"ogg": "Ogg Vorbis", "opus": "Ogg Opus", "mp3": "MP3 (MPEG Layer III)"}


def copy_encoder_missing(fmt: str) -> str | None:
    """Why this soundfile/libsndfile cannot encode copy format ``fmt`` (None: it can).

    Asked at run time of the library in this process: libsndfile lists MP3
    only when it was built with LAME and mpg123 (the wheel's 1.2.2 is; many
    distribution builds are not), Opus only from 1.0.29 on."""
    if fmt not in COPY_CONTAINERS:
        return f"{fmt!r} is not a copy format; allowed: {', '.join(COPY_CONTAINERS)}"
    if _listed(fmt):
        return None
    major, sub = COPY_CONTAINERS[fmt][:2]
    have = [f for f in COPY_CONTAINERS if f != fmt and _listed(f)]
    return (f"{_COPY_NAMES[fmt]} needs libsndfile's {major}/{sub} encoder, which this libsndfile "
            f"({getattr(sf, '__libsndfile_version__', '?')}) does not have; copy formats available here: "
            f"{', '.join(have) or 'none'}")


def _listed(fmt: str) -> bool:
    major, sub = COPY_CONTAINERS[fmt][:2]
    try:
        return major in sf.available_formats() and sub in sf.available_subtypes(major)
    except Exception:  # a libsndfile that cannot even list its formats
        return False


def copy_extension(fmt: str) -> str:
    return COPY_CONTAINERS[fmt][2]


def copy_rate(fmt: str, rate: int) -> int:
    """The sample rate a ``fmt`` copy of a ``rate`` Hz master is written at: the
    master's where the codec takes it; else 48 kHz (Opus always decodes at 48 kHz;
    MP3 stops at 48 kHz) or, for MP3 from a 44.1 kHz family rate, 44.1 kHz."""
    rates = COPY_CONTAINERS[fmt][3]
    if rates is None or rate in rates:
        return 48000 if fmt == "opus" else int(rate)
    return 44100 if fmt == "mp3" and rate % 44100 == 0 else 48000


class CopyWriter:
    """A lossy copy written block by block: ``write((channels, k) float block)``, ``close()``.

    ``quality`` 0.1 .. 1.0 is libsndfile's ``compression_level = 1 - quality``
    (Vorbis VBR quality, Opus and MP3 bitrate). Every failure is an
    :class:`AudioError` naming ``path``. A context manager, as :class:`BlockWriter`."""

    def __init__(self, path: str, sample_rate: int, channels: int, fmt: str, quality: float):
        major, sub, _, rates, most = COPY_CONTAINERS[fmt]
        self.path, self.fmt = path, fmt
        self.channels, self.sample_rate = int(channels), int(sample_rate)
        self.frames_written = 0
        what = f"{_COPY_NAMES[fmt]} copy"
        if self.channels > most:
            raise AudioError(f"{path}: cannot write a {what}: {fmt} holds at most {most} channels, "
                             f"the master has {self.channels}")
        if rates is not None and self.sample_rate not in rates:
            raise AudioError(f"{path}: cannot write a {what} at {self.sample_rate} Hz; {fmt} takes "
                             f"{', '.join(map(str, rates))} Hz")
        try:
            self._f = sf.SoundFile(path, mode="w", samplerate=self.sample_rate, channels=self.channels,
                                   format=major, subtype=sub,
                                   compression_level=min(0.95, max(0.0, 1.0 - float(quality))))
        except _WRITE_ERRORS + (ValueError, TypeError) as e:
            raise AudioError(f"{path}: cannot write a {what} ({e})") from e
        self._what = what

    def write(self, block) -> None:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"{self.path}: a block must be shaped ({self.channels}, k), got {block.shape}")
        if not block.shape[1]:
            return
        try:
            self._f.write(np.ascontiguousarray(block.T))
        except _WRITE_ERRORS as e:
            raise AudioError(f"{self.path}: cannot write a {self._what} ({e})") from e
        self.frames_written += block.shape[1]

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            self._f.close()  # the encoder flushes its last packets here
        except _WRITE_ERRORS as e:
            raise AudioError(f"{self.path}: cannot write a {self._what} ({e})") from e

    def __enter__(self) -> "CopyWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self._f.close()


def open_writer(path: str, sample_rate: int, channels: int, container: str, bit_depth: int,
                frames: int) -> BlockWriter:
    """A :class:`BlockWriter` (use it as ``with open_writer(...) as w: w.write(block)``)."""
    return BlockWriter(path, sample_rate, channels, container, bit_depth, frames)


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
    ~-90 dB images), float32 out. Identity when the rates match. The same
    arithmetic as the streamed render's :class:`kernels.resample.ResampleStream`."""
    from kernels.resample import resample as _resample

    return _resample(audio, rate_in, rate_out)
