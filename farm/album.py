"""Album mode: the tracks of an album keep their loudness relative to each other.

Normalising every track of an album to the same loudness flattens what the
artist meant (a ballad is quieter than the single; an interlude quieter
still). Labels master albums with one gain for the album instead: the
album's loudest track meets the delivery target and every other track keeps
its distance from it. The farm does that in two phases:

1. every track of an album (catalog rows sharing album_artist/artist and
   album) has its input's integrated loudness measured (BS.1770-4, streamed:
   any length in bounded memory), as Dask tasks on the same cluster;
2. each track gets its own loudness target: the album's target minus how
   far (LU) its input sits below the album's loudest input. The loudness
   loop then lands every track on its target within
   :data:`ALBUM_TOLERANCE_LU`, so the inter-track differences survive
   within twice that, although the loud tracks need more limiting than the
   quiet ones (one literal gain would let the limiter squeeze the loud
   tracks' distance); the limiter still holds every track's ceiling.

Rows without an album tag, and tracks whose input cannot be measured (they
fail alone in the render with their own reason), are mastered as singles.
"""
from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict

from .records import RenderTask

ALBUM_TOLERANCE_LU = 0.05  # loop tolerance in album mode: differences kept within 0.1 LU
MEASURE_BLOCK = 1 << 18  # frames per block when measuring an input


def album_key(task: RenderTask) -> tuple[str, str] | None:
    """(album artist or artist, album), case- and space-insensitive; None without an album."""
    tags = task.track.tags
    album = (tags.get("album") or "").strip()
    if not album:
        return None
    artist = (tags.get("album_artist") or tags.get("artist") or "").strip()
    return (" ".join(artist.casefold().split()), " ".join(album.casefold().split()))


def input_loudness(path: str) -> float | None:
    """Integrated loudness (LUFS) of the file at ``path``, read block by block;
    None when it cannot be measured (unreadable, silent, too short): such a
    track is left to fail, or render, alone."""
    from kernels.loudness import LoudnessMeter

    from .audio import AudioError, BlockReader

    try:
        reader = BlockReader(path, MEASURE_BLOCK)
        meter = LoudnessMeter(reader.sample_rate, reader.channels, what="integrated")
        for b in reader.blocks():
            meter.push(b)
        return meter.integrated()
    except (AudioError, ValueError, OSError):
        return None


def album_targets(tasks: list[RenderTask], loudness: dict[str, float | None]) -> tuple[list[RenderTask], dict]:
    """The tasks with album targets set, and a summary per album.

    ``loudness`` maps each task's source to its input loudness (LUFS, or
    None). For every album with at least one measurable track, each
    measurable track gets ``target_lufs = album target - (loudest - own)``
    (the album target: the loudest track's own target) and the album loop
    tolerance; the rest are returned unchanged.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    several = len({t.preset for t in tasks}) > 1  # --preset a,b,c: one album per deliverable
    for i, t in enumerate(tasks):
        key = album_key(t)
        if key is not None and loudness.get(t.track.source) is not None:
            groups[key + ((t.preset,) if several else ())].append(i)
    out = list(tasks)
    summary = {}
    for key, idx in groups.items():
        loudest = max(idx, key=lambda i: loudness[tasks[i].track.source])
        lp = tasks[loudest].chain.loudness
        target = tasks[loudest].track.target_lufs
        target = lp.target_lufs if target is None else target
        if lp.bypass or target is None:
            continue
        top = loudness[tasks[loudest].track.source]
        for i in idx:
            t = tasks[i]
            own = target - (top - loudness[t.track.source])
            loud = dataclasses.replace(t.chain.loudness, tolerance_lu=min(t.chain.loudness.tolerance_lu,
                                                                          ALBUM_TOLERANCE_LU))
            out[i] = dataclasses.replace(t, track=dataclasses.replace(t.track, target_lufs=round(own, 3)),
                                         chain=dataclasses.replace(t.chain, loudness=loud))
        summary[" - ".join(key)] = {"tracks": len(idx), "target_lufs": target, "loudest_input_lufs": round(top, 2),
                                    "rows": [tasks[i].track.row for i in idx]}
    return out, summary


def measure_albums(client, tasks: list[RenderTask]) -> dict[str, float | None]:
    """Input loudness of every album track, measured on the cluster (one task per file)."""
    paths = sorted({t.track.source for t in tasks if album_key(t) is not None})
    if not paths:
        return {}
    run = uuid.uuid4().hex[:12]  # another run on a shared scheduler must not share these keys
    futures = client.map(input_loudness, paths, key=[f"album-loudness-{run}-{i}" for i in range(len(paths))])
    return dict(zip(paths, client.gather(futures)))


__all__ = ["ALBUM_TOLERANCE_LU", "album_key", "album_targets", "input_loudness", "measure_albums"]
