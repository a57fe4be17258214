"""`farm demo`: a small synthetic catalog, mastered on the embedded cluster.

The catalog mixes what a label's back catalog looks like: different sample
rates (44.1/48 kHz), containers and depths (WAV 24-bit, FLAC 16-bit, AIFF
16-bit), levels from a quiet -30 LUFS mix to a hot one, lengths from a few
seconds to a minute, and full metadata (ISRC, track numbers, year, genre).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .cmd_render import add_run_options
from .synth import music


@dataclass(frozen=True)
class DemoTrack:
    title: str
    seconds: float
    rate: int
    ext: str
    subtype: str
    peak_dbfs: float
    bpm: float


DEMO_TRACKS = (
    DemoTrack("Opening Lights", 24.0, 48000, "wav", "PCM_24", -1.0, 122.0),
    DemoTrack("Quiet Harbour", 18.0, 44100, "flac", "PCM_16", -14.0, 96.0),
    DemoTrack("Night Drive", 45.0, 48000, "flac", "PCM_24", -0.3, 128.0),
    DemoTrack("Paper Planes", 8.0, 44100, "aiff", "PCM_16", -6.0, 110.0),
    DemoTrack("Long Way Home", 60.0, 48000, "wav", "PCM_24", -3.0, 84.0),
    DemoTrack("Coda", 5.0, 48000, "flac", "PCM_16", -9.0, 140.0),
)

ARTIST, ALBUM, YEAR = "The Synthetic Ensemble", "Demo Sessions", "2026"


# Section levels (dB) of an arrangement, 8 bars each: intro, verse, chorus, verse, chorus, bridge, ...
SECTION_DB = (-8.0, -5.0, 0.0, -5.0, 0.0, -10.0, -2.0, 0.0)


def arrange(x: np.ndarray, rate: int, bpm: float, bars: int = 8) -> np.ndarray:
    """Give a loop an arrangement's dynamics: 8-bar sections at :data:`SECTION_DB`
    with 0.5 s crossfades, peak kept where it was. A flat loop has a loudness
    range under 1 LU; this gives a few LU, as real mixes have."""
    section = int(round(bars * 4 * 60.0 / bpm * rate))
    n = x.shape[-1]
    level = np.array([SECTION_DB[k % len(SECTION_DB)] for k in range(n // section + 1)])
    gain_db = np.repeat(level, section)[:n]
    ramp = max(1, int(0.5 * rate))
    padded = np.pad(gain_db, (ramp // 2, ramp - ramp // 2 - 1), mode="edge")
    c = np.concatenate([[0.0], np.cumsum(padded)])
    gain_db = (c[ramp:] - c[:-ramp]) / ramp  # moving average: linear crossfades between sections
    y = x * 10.0 ** (gain_db / 20.0)
    return y * (np.abs(x).max() / np.abs(y).max())


def make_catalog(folder: str, tracks=DEMO_TRACKS, seed: int = 2026) -> str:
    """Write the demo tracks and ``catalog.csv`` into ``folder``; return the catalog path."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, t in enumerate(tracks, start=1):
        name = f"{i:02d}_{t.title.lower().replace(' ', '_')}.{t.ext}"
        x = music(t.seconds, t.rate, channels=2, seed=seed + i, bpm=t.bpm, peak_dbfs=t.peak_dbfs)
        x = arrange(x, t.rate, t.bpm)
        sf.write(os.path.join(folder, name), np.ascontiguousarray(x.T), t.rate, subtype=t.subtype)
        rows.append({
            "file": name, "title": t.title, "artist": ARTIST, "album": ALBUM, "album_artist": ARTIST,
            "year": YEAR, "genre": "Electronic", "isrc": f"XX-S1N-26-{i:05d}", "track_number": str(i),
            "disc_number": "1", "composer": "Farm Demo", "label": "Synthetic Records",
            "copyright": f"(C) {YEAR} Synthetic Records",
        })
    path = os.path.join(folder, "catalog.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


DEFAULT_FOLDER = "demo-out"


def add_parser(subparsers, parents=()):
    p = subparsers.add_parser(
        "demo", parents=list(parents), help="make a small synthetic catalog and master it (the README's main job)",
        description="Write a small catalog of synthetic, music-like tracks (drums, bass, chords; 44.1/48 kHz, "
                    "WAV/FLAC/AIFF, quiet to hot, 5 s to a minute) with full metadata into FOLDER/catalog, "
                    "master it with PRESET on the embedded Dask cluster (or --scheduler) into FOLDER/masters, "
                    "and print the summary. Running it again re-renders only what changed.")
    p.add_argument("-o", "--output-dir", default=DEFAULT_FOLDER, metavar="FOLDER",
                   help=f"where the catalog and masters go (default: ./{DEFAULT_FOLDER})")
    p.add_argument("--preset", default="master", help="preset to master with (default: master)")
    add_run_options(p)
    p.set_defaults(handler=run)
    return p


def run(args, stdout=None, stderr=None) -> int:
    import sys

    from .cli import ExitStatus
    from .cmd_render import render_and_summarise
    from .errors import ConfigError
    from .job import job_from_flags

    out, err = stdout or sys.stdout, stderr or sys.stderr
    folder = os.path.abspath(args.output_dir)
    catalog = os.path.join(folder, "catalog", "catalog.csv")
    if not os.path.exists(catalog):  # keep the inputs of an earlier demo: the journal then skips them
        make_catalog(os.path.dirname(catalog))
        print(f"farm demo: wrote {len(DEMO_TRACKS)} synthetic tracks and {os.path.relpath(catalog)}", file=err)
    try:
        job = job_from_flags(catalog, args.preset, os.path.join(folder, "masters"))
    except ConfigError as e:
        print(f"farm demo: {e}", file=err)
        return ExitStatus.USAGE
    return render_and_summarise(job, args, out, err)
