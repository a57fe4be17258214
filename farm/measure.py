"""`farm measure FILE... [--json]`: BS.1770-4 / EBU R128 measurements of audio files.

A thin layer over :func:`kernels.loudness.measure`: decode each file with
soundfile (anything libsndfile reads: WAV, FLAC, AIFF, OGG, MP3, ...) to
float32 ``(channels, samples)``, measure it, print a table or JSON lines. A
file that cannot be decoded or measured gives an error line naming it, and
the other files are still measured; the exit status says that one failed.

Every command-line option is a parameter of :func:`measure_file`, so the
Python API and the CLI do the same thing.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from kernels import backend as kb
from kernels import loudness

from .audio import AudioError

# The measurement keys of a JSON line, in order (all float or null).
STAT_KEYS = ("integrated_lufs", "loudness_range_lu", "true_peak_dbtp", "max_momentary_lufs",
             "max_short_term_lufs", "sample_peak_dbfs")
TRUE_PEAK_FACTORS = (4, 8, 16)
JSON_DECIMALS = 3  # 0.001 dB/LU: finer than any meter's tolerance, short enough to read


@dataclass(frozen=True)
class FileMeasurement:
    """The measurements of one file plus what was decoded."""

    file: str
    sample_rate: int
    channels: int
    duration_s: float
    stats: loudness.LoudnessStats

    def to_dict(self, decimals: int | None = JSON_DECIMALS) -> dict:
        """``file``, the six measurements (``None`` where the standard defines
        none), ``sample_rate``, ``channels``, ``duration_s``."""
        def r(v):
            return None if v is None else (v if decimals is None else round(v, decimals))

        d = {"file": self.file}
        d.update({k: r(getattr(self.stats, k)) for k in STAT_KEYS})
        d.update(sample_rate=self.sample_rate, channels=self.channels,
                 duration_s=round(self.duration_s, 6))
        return d


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``(channels, samples)`` and its sample rate.

    Raises :class:`~farm.audio.AudioError` naming the file when it is
    missing, not a file, or not decodable. No channel limit: a meter
    measures what it is given (see :func:`kernels.loudness.channel_weights`).
    """
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise AudioError(f"{path}: not a regular file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as e:
        raise AudioError(f"{path}: cannot decode ({e}); measurable inputs are the formats "
                         f"libsndfile reads: WAV, FLAC, AIFF, OGG, MP3, ...") from e
    return np.ascontiguousarray(data.T), int(rate)


def measure_file(path: str, true_peak_factor: int = 4, backend: str = "auto") -> FileMeasurement:
    """Decode and measure one file on ``backend`` (``auto``/``cpu``/``gpu``).

    Raises :class:`~farm.audio.AudioError` (undecodable) or ``ValueError``
    (unmeasurable: NaN samples, a sample rate under 8 kHz), both naming the
    file.
    """
    audio, rate = read_audio(path)
    x = kb.to_device(audio, backend)
    try:
        stats = loudness.measure(x, rate, true_peak_factor=true_peak_factor)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return FileMeasurement(file=path, sample_rate=rate, channels=audio.shape[0],
                           duration_s=audio.shape[1] / rate, stats=stats)


# --------------------------------------------------------------------------- CLI

TABLE_COLUMNS = (  # header, key, width
    ("I LUFS", "integrated_lufs", 7), ("LRA LU", "loudness_range_lu", 6),
    ("TP dBTP", "true_peak_dbtp", 7), ("M max", "max_momentary_lufs", 6),
    ("S max", "max_short_term_lufs", 6), ("peak dBFS", "sample_peak_dbfs", 9),
    ("rate", "sample_rate", 6), ("ch", "channels", 2), ("seconds", "duration_s", 8),
)


def _cell(v, width: int) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:{width}.2f}"
    return f"{v:>{width}}"


def table_header() -> str:
    return "  ".join(h.rjust(w) for h, _, w in TABLE_COLUMNS) + "  file"


def table_row(m: FileMeasurement) -> str:
    d = m.to_dict(decimals=None)
    return "  ".join(_cell(d[k], w) for _, k, w in TABLE_COLUMNS) + f"  {m.file}"


def add_parser(subparsers, parents=()):
    """Register ``measure`` on the ``farm`` command's subparsers."""
    p = subparsers.add_parser(
        "measure", parents=list(parents),
        help="loudness (BS.1770-4 / EBU R128), loudness range and true peak of audio files",
        description="Measure integrated loudness (LUFS), loudness range (LU, EBU Tech 3342), "
                    "true peak (dBTP, BS.1770-4 Annex 2), maximum momentary and short-term "
                    "loudness and sample peak of each FILE. Values the standards do not define "
                    "(silence, programmes shorter than a window) print as '-' (null in JSON).")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format libsndfile reads)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per line per file instead of a table")
    p.add_argument("--true-peak-factor", type=int, choices=TRUE_PEAK_FACTORS, default=4,
                   help="oversampling factor of the true-peak meter (default 4, as BS.1770-4 Annex 2)")
    p.add_argument("--backend", choices=("auto",) + kb.BACKENDS, default="auto",
                   help="where to measure: auto (a GPU when CuPy sees one), cpu or gpu")
    p.set_defaults(handler=run)
    return p


def run(args, stdout=None, stderr=None) -> int:
    """The ``measure`` command: 0 when every file was measured, 3
    (:attr:`farm.cli.ExitStatus.INPUT_ERROR`) when any failed, 2 for an
    unusable ``--backend``."""
    from .cli import ExitStatus  # the CLI owns the exit codes; imported late (cli imports us)

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        name = kb.resolve(args.backend)
    except (RuntimeError, ValueError) as e:
        print(f"farm measure: error: {e}", file=err)
        return ExitStatus.USAGE
    failed = 0
    if not args.json:
        print(table_header(), file=out)
    for path in args.files:
        try:
            m = measure_file(path, args.true_peak_factor, name)
        except (AudioError, ValueError) as e:
            failed += 1
            print(f"farm measure: error: {e}", file=err)
            if args.json:
                print(json.dumps({"file": path, "error": str(e)}, allow_nan=False), file=out)
            continue
        if args.json:
            print(json.dumps(m.to_dict(), allow_nan=False), file=out)
        else:
            print(table_row(m), file=out)
        out.flush()
    if failed:
        print(f"farm measure: {failed} of {len(args.files)} file(s) could not be measured", file=err)
        return ExitStatus.INPUT_ERROR
    return ExitStatus.SUCCESS
