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
AIFF and the file head in MP3. The label goes to both Vorbis names because
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
"""
from __future__ import annotations

import math
import os
import re

import mutagen
from mutagen.aiff import AIFF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TXXX, Encoding, Frames
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
SUPPORTED = ("FLAC (.flac)", "Ogg Vorbis (.ogg, .oga)", "Ogg Opus (.opus)", "WAV (.wav)",
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
