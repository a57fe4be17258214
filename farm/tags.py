"""Metadata and loudness tags for the files the farm writes and reads (mutagen).

One call per direction: :func:`write_tags` puts a catalog row's metadata (keys
from :data:`farm.records.TAG_FIELDS`) and the measured loudness into a file,
:func:`read_tags` reads the metadata back. The render tags the temporary file
before renaming it, so this module edits in place exactly the file it is given.

Where each field goes, by container (chosen so independent readers find it:
ffprobe/libavformat, metaflac, foobar2000, MusicBrainz Picard):

======================  =====================================  ==========
field                   Vorbis comment (FLAC, Ogg Vorbis/Opus)  ID3v2.4
======================  =====================================  ==========
title                   TITLE                                  TIT2
artist                  ARTIST                                 TPE1
album                   ALBUM                                  TALB
album_artist            ALBUMARTIST                            TPE2
date                    DATE                                   TDRC
genre                   GENRE                                  TCON
isrc                    ISRC                                   TSRC
track_number "3/12"     TRACKNUMBER=3, TRACKTOTAL=12           TRCK 3/12
disc_number  "1/2"      DISCNUMBER=1, DISCTOTAL=2              TPOS 1/2
composer                COMPOSER                               TCOM
label                   LABEL and ORGANIZATION                 TPUB
copyright               COPYRIGHT                              TCOP
======================  =====================================  ==========

ID3v2.4 (UTF-8 text) lives in an ``id3 `` chunk in WAV, an ``ID3 `` chunk in
AIFF and the file head in MP3. RF64 WAV (EBU Tech 3306, the ``.wav`` the
farm writes for masters over 4 GiB) gets the same ``id3 `` chunk; mutagen
cannot open RF64, so :class:`_RF64Wave` finds and rewrites that chunk itself
(see there). The label goes to both Vorbis names because
readers disagree: the Vorbis comment spec names ORGANIZATION ("the record
label"), Picard and most taggers use LABEL.

Loudness (where the container has a place for it):

* Vorbis comments in FLAC/Ogg Vorbis and TXXX frames in ID3:
  ``REPLAYGAIN_TRACK_GAIN`` = -18 LUFS - integrated loudness, as "-4.00 dB"
  (ReplayGain 2.0 reference level, measured with BS.1770), and
  ``REPLAYGAIN_TRACK_PEAK`` = linear true peak, as "0.891251".
* Ogg Opus instead: ``R128_TRACK_GAIN`` (RFC 7845 5.2.1: a Q7.8 integer,
  relative to -23 LUFS, applied on top of the header's output gain); an Opus
  file must not carry REPLAYGAIN_* tags, and no other container uses R128_*.
* Everywhere: the farm's own measurements, ``FARM_INTEGRATED_LUFS``,
  ``FARM_TRUE_PEAK_DBTP`` and ``FARM_LOUDNESS_RANGE_LU`` (plain numbers).
* Broadcast WAV (WAV and RF64): :func:`write_bext` puts an EBU Tech 3285 v2
  ``bext`` chunk in front of the data chunk (LoudnessValue, LoudnessRange,
  MaxTruePeakLevel, MaxMomentaryLoudness, MaxShortTermLoudness as int16 in
  1/100 units, 0x7FFF when not measured); :func:`read_bext` reads it. Note
  that libavformat shows the bext text fields and then ignores the ID3 chunk.
"""
from __future__ import annotations

import io
import math
import os
import re
import struct

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, ID3NoHeaderError, TXXX, Encoding, Frames
from mutagen.mp3 import MP3
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from .audio import AudioError
from .records import TAG_FIELDS

# ReplayGain 2.0 reference level: BS.1770 integrated loudness of -18 LUFS.
REPLAYGAIN_REFERENCE_LUFS = -18.0
# RFC 7845 5.2.1: R128 gains are relative to EBU R128's -23 LUFS.
R128_REFERENCE_LUFS = -23.0

LOUDNESS_KEYS = ("integrated_lufs", "true_peak_dbtp", "loudness_range_lu")
_FARM_KEYS = {"integrated_lufs": "FARM_INTEGRATED_LUFS", "true_peak_dbtp": "FARM_TRUE_PEAK_DBTP",
              "loudness_range_lu": "FARM_LOUDNESS_RANGE_LU"}
RG_GAIN, RG_PEAK, R128_GAIN = "REPLAYGAIN_TRACK_GAIN", "REPLAYGAIN_TRACK_PEAK", "R128_TRACK_GAIN"
# Every loudness name this module writes (and replaces when asked to write loudness).
_LOUDNESS_NAMES = (RG_GAIN, RG_PEAK, R128_GAIN, *_FARM_KEYS.values())

# extension -> (container kind, mutagen class)
_KINDS = {
    ".flac": ("vorbis", FLAC),
    ".ogg": ("vorbis", OggVorbis),
    ".oga": ("vorbis", OggVorbis),
    ".opus": ("opus", OggOpus),
    ".wav": ("id3", WAVE),
    ".wave": ("id3", WAVE),
    ".aif": ("id3", AIFF),
    ".aiff": ("id3", AIFF),
    ".mp3": ("id3", MP3),
}
SUPPORTED = ("FLAC (.flac)", "Ogg Vorbis (.ogg, .oga)", "Ogg Opus (.opus)", "WAV and RF64 (.wav)",
             "AIFF (.aif, .aiff)", "MP3 (.mp3)")

# Vorbis comment names: the first is written (all of a tuple are written, see
# label), every one is accepted when reading, in order of preference.
_VORBIS_WRITE = {
    "title": ("TITLE",), "artist": ("ARTIST",), "album": ("ALBUM",), "album_artist": ("ALBUMARTIST",),
    "date": ("DATE",), "genre": ("GENRE",), "isrc": ("ISRC",), "composer": ("COMPOSER",),
    "label": ("LABEL", "ORGANIZATION"), "copyright": ("COPYRIGHT",),
}
_VORBIS_READ = {
    **_VORBIS_WRITE,
    "album_artist": ("ALBUMARTIST", "ALBUM ARTIST", "ALBUM_ARTIST"),
    "date": ("DATE", "YEAR"),
    "label": ("LABEL", "ORGANIZATION", "PUBLISHER"),
}
# number field -> (number name, total name written, total names accepted when reading)
_VORBIS_NUMBERS = {
    "track_number": ("TRACKNUMBER", "TRACKTOTAL", ("TRACKTOTAL", "TOTALTRACKS")),
    "disc_number": ("DISCNUMBER", "DISCTOTAL", ("DISCTOTAL", "TOTALDISCS")),
}
_ID3_FRAMES = {
    "title": "TIT2", "artist": "TPE1", "album": "TALB", "album_artist": "TPE2", "date": "TDRC",
    "genre": "TCON", "isrc": "TSRC", "track_number": "TRCK", "disc_number": "TPOS",
    "composer": "TCOM", "label": "TPUB", "copyright": "TCOP",
}
_NUMBER_OF_TOTAL = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# ID3v2.4 timestamps (4.2.5): yyyy[-MM[-dd[THH[:mm[:ss]]]]]; anything else goes to TXXX:DATE.
_ID3_TIMESTAMP = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2})?)?)?)?)?$")


class TagError(AudioError, ValueError):
    """A file that cannot be tagged or read; the message names the file and says why."""


# ---------------------------------------------------------------- RF64 WAV

_RF64_MAGICS = (b"RF64", b"BW64")  # EBU Tech 3306 RF64; ITU-R BS.2088 BW64 has the same layout
_ID3_CHUNK_IDS = (b"id3 ", b"ID3 ")
_NO_SIZE = 0xFFFFFFFF  # a 32-bit size field whose real value is in ds64
# Chunks after the data chunk are metadata and are read into memory when the
# tail is rewritten; refuse a tail bigger than this rather than load audio.
_MAX_TAIL = 64 * 1024 * 1024


def _is_rf64(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head[:4] in _RF64_MAGICS and head[8:12] == b"WAVE"


class _Chunk:
    __slots__ = ("id", "offset", "size")

    def __init__(self, cid: bytes, offset: int, size: int):
        self.id, self.offset, self.size = cid, offset, size  # offset of the 8-byte header

    @property
    def data_offset(self) -> int:
        return self.offset + 8

    @property
    def end(self) -> int:
        """Where the next chunk starts (chunks are word-aligned: odd sizes get a pad byte)."""
        return self.offset + 8 + self.size + (self.size & 1)


class _RF64Wave:
    """An RF64 WAV with the face of ``mutagen.wave.WAVE`` that this module uses.

    ``.tags`` (an :class:`~mutagen.id3.ID3` or None), ``add_tags()`` and
    ``save(v2_version=4)``, so :func:`_write_id3`, :func:`_read_id3` and
    :func:`read_loudness` treat it like a plain WAV.

    Layout (EBU Tech 3306): ``"RF64"``, a 32-bit size of 0xFFFFFFFF,
    ``"WAVE"``, then the ``ds64`` chunk (64-bit riffSize, dataSize,
    sampleCount, a table of 64-bit sizes of other big chunks), then chunks as
    in RIFF. A chunk whose 32-bit size is 0xFFFFFFFF takes its size from ds64
    (dataSize for ``data``, the table for others). The audio is never read:
    the data chunk is skipped with a seek.

    Saving renders the tag with mutagen's ID3 and puts it in an ``id3 ``
    chunk. Chunks after the data chunk (the tail) are rewritten: old ID3
    chunks are dropped, foreign ones kept in order, the new ``id3 `` chunk
    appended (a pad byte after an odd size). An ID3 chunk in front of the data
    is rewritten in place when the new tag fits (ID3 padding fills it) and
    otherwise renamed ``JUNK`` (so no reader sees a stale tag) and the tag
    goes to the tail. Then ds64's riffSize becomes the file size - 8; the
    32-bit RF64 size stays 0xFFFFFFFF.
    """

    def __init__(self, path: str):
        self.filename = path
        with open(path, "rb") as fh:
            self._parse(fh)
            self.tags = self._load_id3(fh)

    # -- reading

    def _parse(self, fh) -> None:
        fh.seek(0, os.SEEK_END)
        file_size = fh.tell()
        fh.seek(0)
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in _RF64_MAGICS or head[8:12] != b"WAVE":
            raise mutagen.MutagenError("not an RF64 WAVE file")
        first = fh.read(8)
        if len(first) < 8 or first[:4] != b"ds64":
            raise mutagen.MutagenError("RF64 file without a ds64 chunk after the WAVE id")
        ds64_size = struct.unpack("<I", first[4:])[0]
        if ds64_size < 28:
            raise mutagen.MutagenError(f"ds64 chunk too short ({ds64_size} bytes)")
        body = fh.read(ds64_size)
        if len(body) < ds64_size:
            raise mutagen.MutagenError("truncated ds64 chunk")
        riff_size, data_size, _samples, table_len = struct.unpack("<QQQI", body[:28])
        big: dict[bytes, int] = {}
        for i in range(table_len):
            entry = body[28 + 12 * i:40 + 12 * i]
            if len(entry) == 12:
                cid, size = struct.unpack("<4sQ", entry)
                big.setdefault(cid, size)
        self._ds64 = _Chunk(b"ds64", 12, ds64_size)
        self.riff_size = riff_size
        # The declared end; a file cut short (or padded) ends where the bytes end.
        end = min(file_size, riff_size + 8) if riff_size else file_size
        chunks = [self._ds64]
        pos = self._ds64.end
        data = None
        while pos + 8 <= end:
            fh.seek(pos)
            cid, size = struct.unpack("<4sI", fh.read(8))
            if size == _NO_SIZE:
                if cid == b"data":
                    size = data_size
                elif cid in big:
                    size = big[cid]
                else:
                    raise mutagen.MutagenError(f"chunk {cid!r} at {pos} has size 0xFFFFFFFF and no ds64 entry")
            chunk = _Chunk(cid, pos, size)
            if cid == b"data" and data is None:
                data = chunk
            chunks.append(chunk)
            pos = chunk.end
        if data is None:
            raise mutagen.MutagenError("RF64 file without a data chunk")
        if data.data_offset + data.size > file_size:
            raise mutagen.MutagenError(f"data chunk runs past the end of the file "
                                       f"({data.data_offset + data.size} > {file_size} bytes)")
        # A chunk cut off by the end of the file ends the list (nothing of it is kept).
        self.chunks = [c for c in chunks if c.data_offset + c.size <= file_size or c is data]
        self._data = data

    def _id3_chunks(self) -> list[_Chunk]:
        return [c for c in self.chunks if c.id in _ID3_CHUNK_IDS]

    def _load_id3(self, fh) -> ID3 | None:
        found = self._id3_chunks()
        if not found:
            return None
        c = found[0]
        fh.seek(c.data_offset)
        try:
            return ID3(io.BytesIO(fh.read(c.size)))
        except ID3NoHeaderError:
            return None  # an empty or foreign chunk: treated as untagged, replaced on save

    # -- writing

    def add_tags(self) -> None:
        if self.tags is None:
            self.tags = ID3()
        else:
            raise mutagen.MutagenError("an ID3 tag already exists")

    @staticmethod
    def _render(tag: ID3, v2_version: int, size: int | None = None) -> bytes:
        """The ID3v2 tag as bytes: unpadded, or padded with ID3 padding to exactly ``size`` bytes."""
        buf = io.BytesIO()
        # Saved into an empty buffer, mutagen's PaddingInfo.padding is -(bytes the tag needs).
        pad = (lambda info: 0) if size is None else (lambda info: size + info.padding)
        tag.save(buf, v1=0, v2_version=v2_version, padding=pad)
        return buf.getvalue()

    def save(self, v2_version: int = 4) -> None:
        tag = self.tags if self.tags is not None else ID3()
        data = self._data
        body = self._render(tag, v2_version)
        with open(self.filename, "r+b") as fh:
            tail_start = data.data_offset + data.size  # where the pad byte (if any) and the tail go
            tail = [c for c in self.chunks if c.offset >= tail_start]
            if sum(c.size + 8 for c in tail) > _MAX_TAIL:
                raise mutagen.MutagenError(f"more than {_MAX_TAIL} bytes of chunks after the data chunk")
            keep = []
            for c in tail:
                if c.id in _ID3_CHUNK_IDS:
                    continue
                fh.seek(c.data_offset)
                keep.append((c.id, fh.read(c.size)))
            placed = False
            for c in self._id3_chunks():
                if c.offset >= tail_start:
                    continue
                # An ID3 chunk in front of the audio: fill it if the tag fits, else retire it.
                if not placed and c.size >= len(body):
                    fh.seek(c.data_offset)
                    fh.write(self._render(tag, v2_version, c.size))
                    placed = True
                else:
                    fh.seek(c.offset)
                    fh.write(b"JUNK")
            if not placed:
                keep.append((b"id3 ", body))
            out = bytearray(b"\0" if data.size & 1 else b"")
            for cid, payload in keep:
                out += struct.pack("<4sI", cid, len(payload)) + payload
                if len(payload) & 1:
                    out += b"\0"
            fh.seek(tail_start)
            fh.write(out)
            new_size = tail_start + len(out)
            fh.truncate(new_size)
            # ds64 riffSize: everything after the first 8 bytes; the RF64 size field stays 0xFFFFFFFF.
            fh.seek(self._ds64.data_offset)
            fh.write(struct.pack("<Q", new_size - 8))
            fh.seek(4)
            if struct.unpack("<I", fh.read(4))[0] != _NO_SIZE:
                fh.seek(4)
                fh.write(struct.pack("<I", _NO_SIZE))
        with open(self.filename, "rb") as fh:  # re-read the layout we just wrote
            self._parse(fh)


def _kind(path: str):
    ext = os.path.splitext(path)[1].lower()
    if ext not in _KINDS:
        raise TagError(f"{path}: cannot tag {ext or 'extension-less'} files; supported formats: "
                       f"{', '.join(SUPPORTED)}")
    return _KINDS[ext]


def _open(path: str):
    kind, cls = _kind(path)
    if not os.path.isfile(path):
        raise TagError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: not a regular file")
    if cls is WAVE and _is_rf64(path):
        cls = _RF64Wave
    try:
        f = cls(path)
    except (mutagen.MutagenError, OSError) as e:
        raise TagError(f"{path}: not a readable {cls.__name__} file ({e})") from e
    return kind, f


def _check_tags(path: str, tags: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(tags) - set(TAG_FIELDS))
    if unknown:
        raise TagError(f"{path}: unknown tag field(s) {unknown}; allowed: {', '.join(TAG_FIELDS)}")
    for k, v in tags.items():
        if v is not None and not isinstance(v, str):
            raise TagError(f"{path}: tag {k!r} must be text, got {type(v).__name__} {v!r}")
    # Empty values mean "no such tag": they are removed, never written as "".
    return {k: v for k, v in tags.items() if v}


def _loudness_values(path: str, loudness: dict, opus: bool) -> dict[str, str]:
    """The loudness tags (name -> text) that ``loudness`` calls for in this container."""
    unknown = sorted(set(loudness) - set(LOUDNESS_KEYS))
    if unknown:
        raise TagError(f"{path}: unknown loudness key(s) {unknown}; allowed: {', '.join(LOUDNESS_KEYS)}")
    vals: dict[str, float] = {}
    for k in LOUDNESS_KEYS:
        v = loudness.get(k)
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            vals[k] = v
    out = {_FARM_KEYS[k]: f"{v:.2f}" for k, v in vals.items()}
    lufs, tp = vals.get("integrated_lufs"), vals.get("true_peak_dbtp")
    if opus:
        if lufs is not None:
            q78 = round((R128_REFERENCE_LUFS - lufs) * 256)
            out[R128_GAIN] = str(max(-32768, min(32767, q78)))
    else:
        if lufs is not None:
            gain = REPLAYGAIN_REFERENCE_LUFS - lufs
            out[RG_GAIN] = f"{gain:.2f} dB"
        if tp is not None:
            out[RG_PEAK] = f"{10.0 ** (tp / 20.0):.6f}"
    return out


def _split_number(value: str) -> tuple[str, str | None]:
    m = _NUMBER_OF_TOTAL.match(value)
    return (m.group(1), m.group(2)) if m else (value, None)


def write_tags(path: str, tags: dict[str, str], loudness: dict | None = None) -> None:
    """Write ``tags`` (keys from TAG_FIELDS) and, if given, ``loudness`` into ``path``.

    The file ends up holding exactly ``tags`` among the fields this module
    manages: a field that is absent or empty is removed. Tags this module does
    not manage (an encoder string, a comment) are kept. ``loudness`` takes
    ``integrated_lufs``, ``true_peak_dbtp`` and ``loudness_range_lu`` (None or
    missing values are left out); when given it replaces all loudness tags,
    when ``None`` they are left as they are.

    Raises :class:`TagError` (a ``ValueError``) naming the file for an
    unsupported extension, an unreadable file or an unknown key.
    """
    tags = _check_tags(path, tags)
    kind, f = _open(path)
    loud = None if loudness is None else _loudness_values(path, loudness, opus=kind == "opus")
    try:
        if kind in ("vorbis", "opus"):
            _write_vorbis(f, tags, loud)
        else:
            _write_id3(f, tags, loud)
    except (mutagen.MutagenError, OSError) as e:
        raise TagError(f"{path}: cannot write tags ({e})") from e


def _write_vorbis(f, tags: dict[str, str], loud: dict[str, str] | None) -> None:
    if f.tags is None:
        f.add_tags()
    vc = f.tags
    managed = {n for names in _VORBIS_READ.values() for n in names}
    for num, total, totals in _VORBIS_NUMBERS.values():
        managed |= {num, *totals}
    if loud is not None:
        managed |= set(_LOUDNESS_NAMES)
    for name in list(vc.keys()):  # Vorbis comment names are case-insensitive
        if name.upper() in managed:
            del vc[name]
    for field, names in _VORBIS_WRITE.items():
        if field in tags:
            for name in names:
                vc[name] = [tags[field]]
    for field, (num, total, _) in _VORBIS_NUMBERS.items():
        if field in tags:
            n, t = _split_number(tags[field])
            vc[num] = [n]
            if t is not None:
                vc[total] = [t]
    for name, value in (loud or {}).items():
        vc[name] = [value]
    f.save()


def _write_id3(f, tags: dict[str, str], loud: dict[str, str] | None) -> None:
    if f.tags is None:
        f.add_tags()
    id3 = f.tags
    for fid in _ID3_FRAMES.values():
        id3.delall(fid)
    txxx_managed = {"DATE"}  # where a date that is no ID3 timestamp goes
    if loud is not None:
        txxx_managed |= set(_LOUDNESS_NAMES)
    for frame in list(id3.getall("TXXX")):
        if frame.desc.upper() in txxx_managed:
            del id3[frame.HashKey]
    for field, fid in _ID3_FRAMES.items():
        if field not in tags:
            continue
        value = tags[field]
        if fid == "TDRC" and not _ID3_TIMESTAMP.match(value):
            # TDRC only holds ISO timestamps; keep free-form dates verbatim beside it.
            id3.add(TXXX(encoding=Encoding.UTF8, desc="DATE", text=[value]))
            continue
        id3.add(Frames[fid](encoding=Encoding.UTF8, text=[value]))
    for name, value in (loud or {}).items():
        id3.add(TXXX(encoding=Encoding.UTF8, desc=name, text=[value]))
    f.save(v2_version=4)


def read_tags(path: str) -> dict[str, str]:
    """The TAG_FIELDS present in ``path`` (missing fields are left out).

    Numbers read back as written: "3" or "3/12" (a Vorbis TRACKTOTAL is joined
    back on). Several values of one field are joined with "; ".
    """
    kind, f = _open(path)
    if f.tags is None:
        return {}
    if kind in ("vorbis", "opus"):
        return _read_vorbis(f.tags)
    return _read_id3(f.tags)


def _first(vc, names) -> str | None:
    for name in names:
        values = [v for v in vc.get(name, []) if v]
        if values:
            return "; ".join(values)
    return None


def _read_vorbis(vc) -> dict[str, str]:
    out: dict[str, str] = {}
    for field, names in _VORBIS_READ.items():
        v = _first(vc, names)
        if v is not None:
            out[field] = v
    for field, (num, _, totals) in _VORBIS_NUMBERS.items():
        n = _first(vc, (num,))
        if n is None:
            continue
        t = _first(vc, totals)
        out[field] = f"{n}/{t}" if t is not None and "/" not in n else n
    return {k: out[k] for k in TAG_FIELDS if k in out}


def _read_id3(id3: ID3) -> dict[str, str]:
    out: dict[str, str] = {}
    for field, fid in _ID3_FRAMES.items():
        frames = id3.getall(fid)
        values = [str(t) for fr in frames for t in fr.text if str(t)]
        if values:
            out[field] = "; ".join(values)
    if "date" not in out:
        for fr in id3.getall("TXXX"):
            if fr.desc.upper() == "DATE" and fr.text:
                out["date"] = "; ".join(str(t) for t in fr.text)
    return {k: out[k] for k in TAG_FIELDS if k in out}


def read_loudness(path: str) -> dict[str, str]:
    """The loudness tags in ``path`` as written (e.g. ``{"REPLAYGAIN_TRACK_GAIN": "-4.00 dB"}``)."""
    kind, f = _open(path)
    if f.tags is None:
        return {}
    out: dict[str, str] = {}
    if kind in ("vorbis", "opus"):
        for name in _LOUDNESS_NAMES:
            v = _first(f.tags, (name,))
            if v is not None:
                out[name] = v
    else:
        for fr in f.tags.getall("TXXX"):
            if fr.desc.upper() in _LOUDNESS_NAMES and fr.text:
                out[fr.desc.upper()] = str(fr.text[0])
    return out


# ---------------------------------------------------------------- BWF bext (EBU Tech 3285 v2)

BEXT_VERSION = 2
BEXT_FIXED_SIZE = 602  # bytes before CodingHistory
BEXT_UNKNOWN = 0x7FFF  # a loudness field that was not measured
# loudness key (farm.render's measurements) -> bext field, each an int16 in 1/100 LU/LUFS/dB
BEXT_LOUDNESS = (("integrated_lufs", "loudness_value"), ("loudness_range_lu", "loudness_range"),
                 ("true_peak_dbtp", "max_true_peak_level"), ("max_momentary_lufs", "max_momentary_loudness"),
                 ("max_short_term_lufs", "max_short_term_loudness"))
# Description, Originator, OriginatorReference, OriginationDate, OriginationTime, TimeReference
# (low, high), Version, UMID, the five loudness fields, Reserved: 602 bytes, little-endian.
_BEXT = struct.Struct("<256s32s32s10s8sIIH64s5h180s")
assert _BEXT.size == BEXT_FIXED_SIZE


def _ascii(text: str, size: int) -> bytes:
    """``text`` as the ASCII bext text fields hold (accents folded, the rest dropped), NUL-padded."""
    import unicodedata

    raw = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore")
    return raw[:size].strip(b" ")


def _centi(v) -> int:
    if v is None:
        return BEXT_UNKNOWN
    v = float(v)
    if not math.isfinite(v):
        return BEXT_UNKNOWN
    return max(-32768, min(32766, round(v * 100.0)))  # 32767 means "unknown"


def bext_payload(loudness: dict, *, description: str = "", originator: str = "", originator_reference: str = "",
                 date: str = "", time: str = "", coding_history: str = "") -> bytes:
    """A version 2 ``bext`` chunk body: the text fields (ASCII, NUL-padded),
    TimeReference 0, UMID zeroed, the loudness fields from ``loudness`` (keys as
    :data:`BEXT_LOUDNESS`; missing or None: 0x7FFF), Reserved zeroed, then the
    CodingHistory (padded with a NUL to an even size)."""
    fixed = _BEXT.pack(_ascii(description, 256), _ascii(originator, 32), _ascii(originator_reference, 32),
                       _ascii(date, 10), _ascii(time, 8), 0, 0, BEXT_VERSION, b"",
                       *(_centi(loudness.get(k)) for k, _ in BEXT_LOUDNESS), b"")
    history = _ascii(coding_history, 1 << 16)
    if len(history) & 1:
        history += b"\0"
    return fixed + history


def _wave_chunks(path: str):
    """(is RF64, top-level chunks, the ds64 chunk or None) of a WAV or RF64 file."""
    if _is_rf64(path):
        w = _RF64Wave(path)
        return True, w.chunks, w._ds64
    chunks = []
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(0)
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise mutagen.MutagenError("not a RIFF WAVE file")
        end = min(size, struct.unpack("<I", head[4:8])[0] + 8)
        pos = 12
        while pos + 8 <= end:
            fh.seek(pos)
            cid, n = struct.unpack("<4sI", fh.read(8))
            c = _Chunk(cid, pos, n)
            chunks.append(c)
            pos = c.end
    return False, chunks, None


def write_bext(path: str, loudness: dict, **fields) -> None:
    """Put a version 2 ``bext`` chunk (see :func:`bext_payload` for ``fields``)
    into the WAV or RF64 file ``path``, in front of its data chunk, where BWF
    readers look for it first.

    An existing bext chunk of the same size is overwritten in place; one of
    another size is renamed ``JUNK`` and the new one inserted. Inserting moves
    the audio up by the chunk's size in place (mutagen's ``insert_bytes``:
    bounded memory, also for a multi-GB RF64 programme), then fixes the RIFF
    size (RF64: ds64's riffSize). Raises :class:`TagError` naming the file."""
    if os.path.splitext(path)[1].lower() not in (".wav", ".wave"):
        raise TagError(f"{path}: a bext chunk goes into WAV (or RF64) files only")
    payload = bext_payload(loudness, **fields)
    chunk = struct.pack("<4sI", b"bext", len(payload)) + payload
    try:
        rf64, chunks, ds64 = _wave_chunks(path)
        data = next((c for c in chunks if c.id == b"data"), None)
        if data is None:
            raise mutagen.MutagenError("no data chunk")
        old = [c for c in chunks if c.id == b"bext"]
        with open(path, "r+b") as fh:
            if old and old[0].size == len(payload):
                fh.seek(old[0].data_offset)
                fh.write(payload)
                for c in old[1:]:
                    fh.seek(c.offset)
                    fh.write(b"JUNK")
                return
            for c in old:
                fh.seek(c.offset)
                fh.write(b"JUNK")
            from mutagen._util import insert_bytes

            insert_bytes(fh, len(chunk), data.offset)
            fh.seek(data.offset)
            fh.write(chunk)
            if rf64:
                fh.seek(ds64.data_offset)
                riff = struct.unpack("<Q", fh.read(8))[0]
                fh.seek(ds64.data_offset)
                fh.write(struct.pack("<Q", riff + len(chunk)))
            else:
                fh.seek(4)
                riff = struct.unpack("<I", fh.read(4))[0] + len(chunk)
                if riff > 0xFFFFFFFF:
                    raise mutagen.MutagenError("the bext chunk would take the WAV past 4 GiB")
                fh.seek(4)
                fh.write(struct.pack("<I", riff))
    except (mutagen.MutagenError, OSError, struct.error) as e:
        raise TagError(f"{path}: cannot write the BWF bext chunk ({e})") from e


def read_bext(path: str) -> dict | None:
    """The ``bext`` chunk of a WAV/RF64 file as a dict (None if it has none):
    the text fields, ``time_reference``, ``version``, ``umid`` (hex), the
    loudness fields in LU/LUFS/dBTP (None for 0x7FFF) and ``coding_history``."""
    try:
        _, chunks, _ = _wave_chunks(path)
        c = next((c for c in chunks if c.id == b"bext"), None)
        if c is None:
            return None
        with open(path, "rb") as fh:
            fh.seek(c.data_offset)
            body = fh.read(c.size)
    except (mutagen.MutagenError, OSError, struct.error) as e:
        raise TagError(f"{path}: cannot read the bext chunk ({e})") from e
    if len(body) < BEXT_FIXED_SIZE:
        raise TagError(f"{path}: bext chunk of {len(body)} bytes, shorter than its {BEXT_FIXED_SIZE} fixed bytes")
    f = _BEXT.unpack(body[:BEXT_FIXED_SIZE])

    def text(b: bytes) -> str:
        return b.split(b"\0", 1)[0].decode("ascii", "replace")

    out = {"description": text(f[0]), "originator": text(f[1]), "originator_reference": text(f[2]),
           "origination_date": text(f[3]), "origination_time": text(f[4]),
           "time_reference": f[5] | (f[6] << 32), "version": f[7], "umid": f[8].hex()}
    for (_, name), v in zip(BEXT_LOUDNESS, f[9:14]):
        out[name] = None if v == BEXT_UNKNOWN or out["version"] < 2 else v / 100.0
    out["coding_history"] = text(body[BEXT_FIXED_SIZE:])
    return out
