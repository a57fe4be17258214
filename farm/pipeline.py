"""A whole job, end to end: plan against the journal, render on Dask, report.

:func:`render_job` is what ``farm render`` and ``farm demo`` run:

1. the job's tasks (already validated when the job was loaded);
2. the journal in the output folder splits them into *to render* and
   *done earlier* (same input bytes, same settings, master still intact);
   ``force=True`` renders everything;
3. only if something is left, a cluster: the embedded ``LocalCluster`` or
   the scheduler the job or caller names; one task per track, paths and
   settings only, each result journaled as it lands;
4. ``report.json`` / ``report.csv`` covering *every* catalog row: rendered
   now, done earlier (from the journal), or set aside for metadata problems.

The exit code is 0 only if every row passed.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, TextIO

from . import album, audio, report
from .catalog import RejectedRow
from .delivery import copy_path
from .job import Job
from .journal import Journal, task_key
from .records import STATUS_FAILED, RenderBatch, RenderGroup, RenderTask, TrackResult
from .runner import plan, run_tasks


@dataclass
class RunOutcome:
    """What one ``farm render`` did."""

    results: list[TrackResult]  # every catalog row, in row order
    rendered: int  # tracks rendered in this run (passed or failed)
    skipped: int  # tracks done by an earlier run and left alone
    rejected: int  # rows set aside for their own metadata problems
    reports: report.ReportPaths | None = None
    cluster: Any = None  # farm.cluster.ClusterInfo, or None when nothing needed rendering
    wall_s: float = 0.0
    job_info: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return report.exit_code(self.results)

    @property
    def failed(self) -> list[TrackResult]:
        return [r for r in self.results if not r.ok]


def rejected_result(row: RejectedRow, preset: str) -> TrackResult:
    """The failure record of a catalog row that was set aside before rendering."""
    return TrackResult(row=row.row, source=row.source, status=STATUS_FAILED,
                       reason="; ".join(row.problems) + " (row not rendered: fix the catalog and run again)",
                       preset=preset)


def _partial_pattern(final_path: str) -> re.Pattern:
    """The temporary names :func:`farm.audio.atomic_output` gives ``final_path``'s master:
    ``.<stem[:80]>.<8 random chars from mkstemp>.partial<ext>``."""
    stem, ext = os.path.splitext(os.path.basename(final_path))
    return re.compile(re.escape(f".{stem[:80]}.") + r"[A-Za-z0-9_]{8}" + re.escape(f".partial{ext}"))


def remove_stray_partials(tasks) -> list[str]:
    """Remove the temporary files of these tasks' masters; return their paths.

    Called only once every task of the run has landed: a worker SIGKILLed (or
    OOM-killed) while encoding leaves its ``.NAME.XXXXXXXX.partial.EXT``
    behind, and nothing else would ever remove it. Only names that
    ``atomic_output`` makes for *these* outputs are matched (never a final
    name, another track's file or anything else in the folder). What this can
    touch that it should not: a partial that another ``farm render`` rendering
    the *same* master into the *same* folder at the same moment is writing (or
    a zombie attempt whose worker the scheduler already gave up on); that
    attempt then fails its rename (a clear OSError on its track) and nothing
    under a final name is ever damaged.
    """
    removed = []
    by_folder: dict[str, list[re.Pattern]] = {}
    for t in tasks:
        folder = by_folder.setdefault(os.path.dirname(t.out_path) or ".", [])
        folder.append(_partial_pattern(t.out_path))
        for fmt in getattr(t.output, "copies", ()) or ():  # the lossy copies beside the master (farm.delivery)
            folder.append(_partial_pattern(copy_path(t.out_path, fmt)))
    for folder, patterns in by_folder.items():
        try:
            names = [n for n in os.listdir(folder) if n.startswith(".") and ".partial" in n]
        except OSError:
            continue
        for n in names:
            if any(p.fullmatch(n) for p in patterns):
                path = os.path.join(folder, n)
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:  # gone meanwhile, or not ours to remove: leave it
                    pass
    return removed


def _units(tasks: list) -> list:
    """One unit of work per input: a track's deliverables (``--preset a,b,c``) that
    still need rendering go to one worker together as a RenderGroup, so the input is
    decoded and its shared stages run once; a lone task goes as itself."""
    by_input: dict[tuple, list] = {}
    for t in tasks:
        by_input.setdefault((t.track.row, t.track.source), []).append(t)
    return [g[0] if len(g) == 1 else RenderGroup(tuple(g)) for g in by_input.values()]


BATCH_MAX_SECONDS = 60.0  # tracks up to this long are mastered in batches on GPU workers
BATCH_TRACKS = 8  # tracks per batch at most


def batches(units: list, max_seconds: float = BATCH_MAX_SECONDS, size: int = BATCH_TRACKS) -> list:
    """``units`` with the short lone tracks that share a chain, an output, a backend and
    a loudness target put together as :class:`~farm.records.RenderBatch` es of up to
    ``size``, tracks of like length together (a batch pads each track to its longest);
    everything else as it was. A track's length is read from its header; one that cannot
    be read is left alone (its render says why)."""
    from kernels.batch import batchable

    out, pools = [], {}
    for u in units:
        if isinstance(u, RenderTask) and not batchable(u.chain) and not getattr(u.track, "reference", None):
            try:
                seconds = audio.BlockReader(u.track.source, 1 << 16).duration_s
            except (audio.AudioError, OSError, ValueError):
                seconds = None
            if seconds is not None and seconds <= max_seconds:
                key = (repr(u.chain), repr(u.output), u.backend, u.track.target_lufs)
                pools.setdefault(key, []).append((seconds, u))
                continue
        out.append(u)
    for pool in pools.values():
        pool.sort(key=lambda p: p[0])
        for k in range(0, len(pool), size):
            chunk = tuple(u for _, u in pool[k:k + size])
            out.append(chunk[0] if len(chunk) == 1 else RenderBatch(chunk))
    return out


def render_job(job: Job, *, force: bool = False, scheduler: str | None = None, backend: str | None = None,
               n_workers: int | None = None, threads_per_worker: int | None = None, dashboard: bool | str = True,
               progress: bool | TextIO = True, log: Callable[[str], None] | None = None,
               task_fn: Callable | None = None, security: Any = None, batch_short: bool | None = None) -> RunOutcome:
    """Render ``job`` (see the module docstring); never raises for a bad track.

    ``scheduler``/``backend`` override the job's; ``log`` receives one line
    per step (cluster, plan); ``task_fn`` replaces :func:`farm.render.render_track`
    (for benchmarks that time the codec floor through the same cluster path);
    ``security`` (a :class:`distributed.security.Security`) is for a ``tls://``
    scheduler (default: Dask's TLS configuration). ``batch_short``: master
    short tracks in batches (:func:`batches`); ``None`` does so when the
    cluster has GPU workers and the render is :func:`farm.render.render_track`
    (on CPU workers a batch only costs: its gaps are computed too).
    Raises :class:`farm.cluster.ClusterError` when the cluster cannot be
    reached, :class:`farm.journal.JournalError` for an unusable journal.
    """
    from .cluster import open_client

    say = log or (lambda line: None)
    started = time.time()
    t0 = time.perf_counter()
    tasks = job.tasks()
    os.makedirs(job.output_dir, exist_ok=True)
    scheduler = scheduler or job.scheduler
    backend = backend or job.backend
    info = None
    with contextlib.ExitStack() as stack:
        client = None

        def connect():
            nonlocal client, info
            if client is None:
                client, info = stack.enter_context(open_client(scheduler, backend, n_workers, threads_per_worker,
                                                               dashboard, security=security))
                say(info.describe())
            return client

        album_info = {}
        if job.album_mode:  # the targets depend on every album track's loudness: measure first
            loudness = album.measure_albums(connect(), tasks) if any(album.album_key(t) for t in tasks) else {}
            tasks, album_info = album.album_targets(tasks, loudness)
            for name, a in album_info.items():
                say(f"album {name}: {a['tracks']} tracks, loudest input {a['loudest_input_lufs']} LUFS "
                    f"-> {a['target_lufs']} LUFS")
        journal = stack.enter_context(Journal(job.output_dir))
        is_done = None if force else (lambda t: journal.is_done(t, journal.input_hash(t.track.source)))
        work = plan(tasks, is_done)
        # A journaled result carries the row number of the run that rendered it. Look it
        # up by task key (input + output) and give it the row it has now: keyed by the old
        # row, a catalog with a row inserted or moved since (which re-renders nothing)
        # reported other tracks' results under these rows and dropped the last ones.
        by_key = {e.key: e.result for e in journal.entries([task_key(t) for t in work.done])}
        earlier = [replace(by_key[task_key(t)], row=t.track.row) for t in work.done if task_key(t) in by_key]
        say(f"{len(tasks) + len(job.rejected)} catalog rows: {len(work.todo)} to render, "
            f"{len(work.done)} done by an earlier run"
            + (f", {len(job.rejected)} set aside for catalog problems" if job.rejected else ""))
        fresh: list[TrackResult] = []
        if work.todo:
            units = _units(work.todo)
            connect()
            if batch_short or (batch_short is None and task_fn is None and info.gpu and backend != "cpu"):
                units = batches(units)
                n = sum(isinstance(u, RenderBatch) for u in units)
                if n:
                    say(f"{sum(len(u.tasks) for u in units if isinstance(u, RenderBatch))} short tracks "
                        f"in {n} batch(es) of up to {BATCH_TRACKS}")
            landed = run_tasks(connect(), units, task_fn=task_fn, journal=journal, progress=progress)
            fresh = [r for x in landed for r in (x if isinstance(x, list) else [x])]
        # Every task of this run has landed (run_tasks returned), so no attempt of ours
        # is writing now: temporary files still beside these masters were left by a
        # worker killed mid-write (in this run or an earlier one) and are removed.
        stray = remove_stray_partials(tasks)
        if stray:
            say(f"removed {len(stray)} temporary file(s) left by renders that were killed mid-write")
    results = sorted(fresh + earlier
                     + [rejected_result(r, job.preset.name) for r in job.rejected], key=lambda r: r.row)
    wall = time.perf_counter() - t0
    job_info = {
        "job": job.path, "catalog": job.catalog, "preset": job.preset.name, "output_dir": job.output_dir,
        "backend": backend, "scheduler": scheduler, "force": force, "started": started,
        "finished": time.time(), "rendered": len(fresh), "skipped": len(work.done), "rejected": len(job.rejected),
        "cluster": info.to_dict() if info is not None else None,
        "albums": album_info or None,
    }
    paths = report.write_reports(results, job.output_dir, job_info, titles=job.titles())
    return RunOutcome(results=results, rendered=len(fresh), skipped=len(work.done), rejected=len(job.rejected),
                      reports=paths, cluster=info, wall_s=wall, job_info=job_info)
