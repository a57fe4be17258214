"""Run a catalog's tasks on a Dask cluster and bring back one result per track.

::

    todo = plan(tasks, is_done=lambda t: journal.is_done(t, journal.input_hash(t.track.source)))
    with open_client() as (client, info):
        results = run_tasks(client, todo.todo, journal=journal)

One Dask task per track, carrying the :class:`~farm.records.RenderTask`
(paths and parameters, never audio). Results stream back with
``as_completed`` and each is handed to the journal (and ``on_result``) the
moment it lands, so killing the client loses only the tracks in flight; and
only a window of tracks is in flight at a time (``max_in_flight``), so a
worker that dies takes few queued tracks' attempts with it.
Whatever goes wrong with a task itself (its worker died on every attempt,
it raised, it could not be serialised) becomes a failed
:class:`~farm.records.TrackResult` that names the file: one bad track never
costs the rest of the catalog.

Two retry counters, because Dask has two (see :mod:`farm.cluster`): a task
whose *worker died* is re-run by the scheduler up to
``distributed.scheduler.allowed-failures`` times before ``KilledWorker``;
``retries`` here re-runs a task that *raised* (``client.submit(retries=)``).
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .cluster import ClusterError
from .records import STATUS_FAILED, RenderTask, TrackResult

AUTO = "auto"
LOST = "scheduler-connection-lost"  # distributed's cancel reason when the client loses its scheduler


class SchedulerLostError(ClusterError):
    """The scheduler went away mid-run. Every result that landed before is journaled;
    the tracks still in flight are not (they never finished), so a rerun renders them."""


@dataclass(frozen=True)
class Plan:
    """A catalog split into what must render and what a previous run already did."""

    todo: list = field(default_factory=list)
    done: list = field(default_factory=list)


def plan(tasks: Iterable[RenderTask], is_done: Callable[[RenderTask], bool] | None = None) -> Plan:
    """Split ``tasks`` (keeping their order) with a predicate such as the journal's.

    ``is_done=None`` (e.g. ``--force``) renders everything. A predicate that
    raises ``OSError`` (an input that cannot be read to hash it) counts as
    not done: the render then reports the problem on that track.
    """
    todo, done = [], []
    for task in tasks:
        try:
            finished = bool(is_done(task)) if is_done is not None else False
        except OSError:
            finished = False
        (done if finished else todo).append(task)
    return Plan(todo=todo, done=done)


def _default_task_fn():
    from .render import render_track  # imported late: the render is heavy and written by its owner

    return render_track


def _describe(task) -> tuple[int, str]:
    track = getattr(task, "track", None)
    return int(getattr(track, "row", 0) or 0), str(getattr(track, "source", "") or "")


def failure(task, reason: str, *, worker: str = "") -> TrackResult:
    """A failed record for ``task`` whose reason names its file."""
    row, source = _describe(task)
    return TrackResult(row=row, source=source, status=STATUS_FAILED, reason=f"{source}: {reason}",
                       preset=str(getattr(task, "preset", "") or ""), worker=worker)


def _exception_failure(task, exc: BaseException, retries: int) -> TrackResult:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        last = getattr(exc.last_worker, "address", "")
        n = exc.allowed_failures + 1
        return failure(task, f"every worker that ran it died ({n} attempt{'s' if n != 1 else ''}, the last on "
                             f"{last}); the track may need more memory than a worker has, or crashes native "
                             "code (check the worker logs)", worker=last)
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > 500:
        text = text[:497] + "..."
    again = f" (after {retries} retr{'y' if retries == 1 else 'ies'})" if retries else ""
    return failure(task, f"the task failed on the cluster{again}: {text}")


def members(task) -> list:
    """The render tasks a unit of work stands for: a group's (:class:`~farm.records.RenderGroup`,
    one input mastered for several deliverables in one Dask task) or a batch's
    (:class:`~farm.records.RenderBatch`, short tracks mastered together), else the task itself."""
    return list(getattr(task, "tasks", None) or [task])


def _per_member(task, value: Any) -> list[TrackResult]:
    """One result per member of ``task``: a unit's list of results, or one result (a
    failure that hit the whole unit) given to every member: under its own preset in a
    group (one input), as its own failure naming its own file in a batch."""
    group = members(task)
    if isinstance(value, (list, tuple)) and len(value) == len(group):
        return [_as_result(m, v) for m, v in zip(group, value)]
    one = _as_result(group[0], value)
    prefix = f"{group[0].track.source}: "
    why = one.reason[len(prefix):] if one.reason.startswith(prefix) else one.reason
    return [one] + [TrackResult(**{**one.to_dict(), "preset": str(getattr(m, "preset", "") or "")})
                    if m.track.source == group[0].track.source else failure(m, why, worker=one.worker)
                    for m in group[1:]]


def _as_result(task, value: Any) -> TrackResult:
    if isinstance(value, TrackResult):
        return value
    if isinstance(value, dict):
        try:
            return TrackResult.from_dict(value)
        except TypeError:
            pass
    return failure(task, f"the task returned {type(value).__name__}, not a TrackResult")


class Progress:
    """A one-line progress bar: done/total, failed, elapsed, rate and ETA, and how far
    running tracks that report it are (``| 37% of long_mix.flac``, see :mod:`farm.progress`).

    Drawn only on a terminal (or any stream given explicitly), at most
    ``hz`` times a second and always for the last result. :meth:`running` may
    be called from another thread (the client's event loop) than :meth:`update`.
    """

    SHOW_RUNNING = 2  # running tracks named on the line; the rest are "+N more"

    def __init__(self, total: int, stream: TextIO | None, *, hz: float = 10.0, width: int = 24):
        self.total, self.stream, self.width = total, stream, width
        self.done = self.failed = 0
        self.start = time.monotonic()
        self._min_gap = 1.0 / hz
        self._last = 0.0
        self._running: dict[str, tuple[str, float]] = {}  # task key -> (file name, fraction done)
        self._landed: set[str] = set()  # a late event must not bring a finished track back
        self._lock = threading.Lock()

    def update(self, result: TrackResult, key: str | None = None) -> None:
        with self._lock:
            self.done += 1
            self.failed += 0 if result.ok else 1
            if key is not None:
                self._running.pop(key, None)
                self._landed.add(key)
            self._draw(force=self.done == self.total)

    def running(self, key: str, name: str, fraction: float) -> None:
        """Task ``key`` (rendering file ``name``) is ``fraction`` done."""
        with self._lock:
            if key in self._landed:
                return
            self._running[key] = (name, fraction)
            self._draw(force=False)

    def _draw(self, force: bool) -> None:
        now = time.monotonic()
        if self.stream is not None and (force or now - self._last >= self._min_gap):
            self._last = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.start
        frac = self.done / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        failed = f", {self.failed} failed" if self.failed else ""
        eta_s = f", ETA {_clock(eta)}" if eta is not None and self.done < self.total else ""
        shown = list(self._running.values())[:self.SHOW_RUNNING]
        more = len(self._running) - len(shown)
        running = ", ".join(f"{int(f * 100)}% of {name}" for name, f in shown) + (f", +{more} more" if more else "")
        return (f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} tracks{failed}, "
                f"{_clock(elapsed)} elapsed, {rate:.2f} tracks/s{eta_s}" + (f" | {running}" if running else ""))

    def close(self) -> None:
        if self.stream is not None and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _progress_stream(progress: bool | TextIO) -> TextIO | None:
    if progress is True:
        return sys.stderr if getattr(sys.stderr, "isatty", lambda: False)() else None
    if progress is False or progress is None:
        return None
    return progress  # an explicit stream: draw on it whatever it is


def _keys(task_fn, tasks: Sequence) -> list[str]:
    # Unique per run (two runs of one catalog must never share results), readable
    # on the dashboard: "render_track-row000012-<run>".
    run = uuid.uuid4().hex[:12]
    name = getattr(task_fn, "__name__", "task").replace("-", "_")
    return [f"{name}-row{_describe(t)[0]:06d}-{i}-{run}" for i, t in enumerate(tasks)]


def run_tasks(client, tasks: Iterable[RenderTask], task_fn: Callable[[RenderTask], TrackResult] | None = None,
              journal=None, progress: bool | TextIO = True, retries: int = 2,
              on_result: Callable[[TrackResult], None] | None = None,
              resources: dict[str, float] | None | str = AUTO,
              max_in_flight: int | None = None) -> list[TrackResult]:
    """Run ``task_fn`` (default :func:`farm.render.render_track`) once per task; results in task order.

    A task may be a :class:`~farm.records.RenderGroup` (one input, several
    deliverables): ``task_fn`` then returns a list of results, each journaled
    under its own member task, and the group's entry in the returned list is
    that list (see :func:`members`).

    ``journal``: an object with ``input_hash(path)`` and ``record(task,
    input_hash, result)`` (:class:`farm.journal.Journal`); inputs are hashed
    here before submission and each result is recorded as it lands.
    ``on_result(result)`` is called after that, in completion order.
    ``resources``: ``"auto"`` asks for a share of a GPU when workers advertise
    one (see :func:`farm.cluster.task_resources`) and the task's backend is not
    ``"cpu"``; a dict asks for exactly that; ``None`` for nothing.
    ``progress``: ``True`` draws a bar on stderr when it is a terminal (and
    prints the dashboard link), ``False`` nothing, or a stream to draw on.
    ``max_in_flight``: how many tasks the cluster holds at once; ``None`` is
    twice the cluster's threads (re-read every few seconds, so added workers
    get work), ``0`` submits the whole catalog at once (lets an adaptive
    cluster see the backlog). A bound keeps tracks from queueing on workers:
    when a worker dies, every task assigned to it counts an attempt towards
    ``allowed-failures``, running or not.

    If the caller is interrupted (Ctrl-C) or ``on_result``/the journal raises,
    the tasks still in flight are cancelled before the exception propagates.
    """
    from distributed import as_completed

    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    tasks = list(tasks)
    if not tasks:
        return []
    task_fn = task_fn or _default_task_fn()
    if resources == AUTO:
        from .cluster import task_resources

        gpu_share = task_resources(client)
    else:
        gpu_share = resources
    stream = _progress_stream(progress)
    link = _dashboard_link(client) if stream is not None else None
    if link:
        stream.write(f"dashboard: {link}\n")

    def hashed(source: str) -> str | None:
        try:  # hashed before submission, so a change during the render is seen next run
            return journal.input_hash(source)
        except OSError:
            return None  # unreadable input: the render reports it, nothing to journal

    # per member of each unit (a batch's members are different inputs)
    hashes = [[hashed(m.track.source) if journal is not None else None for m in members(t)] for t in tasks]

    results: list[TrackResult | None] = [None] * len(tasks)
    bar = Progress(sum(len(members(t)) for t in tasks), stream)
    pending: dict[str, tuple[int, Any]] = {}

    def land(i: int, value) -> None:
        landed = []
        for m, result, h in zip(members(tasks[i]), _per_member(tasks[i], value), hashes[i]):
            if journal is not None and h is not None:
                result = _record(journal, m, h, result)
            landed.append(result)
        results[i] = landed if hasattr(tasks[i], "tasks") else landed[0]
        for r in landed:
            bar.update(r, key=submitter.keys[i])
        if on_result is not None:
            for r in landed:
                on_result(r)

    submitter = _Submitter(client, task_fn, tasks, retries, gpu_share, max_in_flight)
    ac = as_completed([], with_results=True, raise_errors=False, loop=client.loop)
    address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
    lost = 0  # tasks cancelled because the scheduler went away
    unfollow = _follow_progress(client, bar, submitter.keys, tasks) if stream is not None else None
    try:
        for i, reason in submitter.unsendable():
            land(i, failure(tasks[i], reason))
        ac.update(submitter.refill(pending))
        for future, value in ac:
            i, _ = pending.pop(future.key)
            status = future.status
            del future  # drop our reference: the worker may release the result now
            if getattr(value, "reason", None) == LOST:
                # Not a track's fault: recorded as failed, the journal and the report
                # would blame each track in flight (and exit 3 as for bad inputs). Keep
                # draining results that did land, submit nothing more, then raise.
                lost += 1
                continue
            if status == "finished":
                land(i, value)
            elif isinstance(value, tuple) and len(value) == 3:  # (type, exception, traceback)
                land(i, _exception_failure(tasks[i], value[1], retries))
            elif isinstance(value, BaseException):  # CancelledError: scheduler lost or cancelled
                land(i, failure(tasks[i], f"the task was cancelled before it finished ({type(value).__name__}); "
                                          "the scheduler may have gone away: run the job again to resume"))
            else:  # pragma: no cover - defensive
                land(i, failure(tasks[i], f"the task ended in state {status!r}"))
            if not lost:
                ac.update(submitter.refill(pending))
        if lost:
            done = sum(len(members(t)) for t, r in zip(tasks, results) if r is not None)
            total = sum(len(members(t)) for t in tasks)
            raise SchedulerLostError(
                f"lost the connection to the Dask scheduler at {address} mid-run: {done} of {total} "
                f"track(s) finished and are recorded in the journal, {total - done} did not finish; "
                "check that the scheduler is running (it may have stopped or crashed), then run the same "
                "command again: it renders only the tracks that did not finish")
    finally:
        if unfollow is not None:
            unfollow()
        bar.close()
        if pending:  # interrupted: stop the cluster from working on tracks nobody will record
            try:
                client.cancel([f for _, f in pending.values()])
            except Exception:  # the client may be the thing that broke
                pass
    missing = [tasks[i] for i, r in enumerate(results) if r is None]
    if missing:  # pragma: no cover - every task lands exactly once
        raise RuntimeError(f"{len(missing)} task(s) never reported back, first {_describe(missing[0])}")
    return results  # type: ignore[return-value]


def _follow_progress(client, bar: Progress, keys: list[str], tasks: list) -> Callable[[], None] | None:
    """Show the fractions workers report for this run's tasks (farm.progress) on ``bar``;
    return the function that stops it (None when the client has no event topics).
    Events of other runs on the same scheduler carry keys not in ``keys`` and are ignored."""
    from .progress import TOPIC

    names = {k: os.path.basename(_describe(t)[1]) for k, t in zip(keys, tasks)}
    active = [True]

    def on_event(event) -> None:
        if not active[0]:  # unsubscribing stops the scheduler, not events already on their way
            return
        try:
            msg = event[1]
            key = str(msg["key"])
            if key in names:
                bar.running(key, names[key] or str(msg.get("file", "")), float(msg["fraction"]))
        except Exception:  # a malformed event must not break the client's event loop
            pass

    def unfollow() -> None:
        active[0] = False
        try:
            client.unsubscribe_topic(TOPIC)
        except Exception:  # the client may be the thing that broke
            pass

    try:
        client.subscribe_topic(TOPIC, on_event)
    except Exception:  # a client without topics (or one already closing): no per-track progress
        return None
    return unfollow


def _dashboard_link(client) -> str | None:
    from .cluster import has_dashboard

    link = getattr(client, "dashboard_link", None)
    # Without bokeh an embedded cluster's link only says how to install it;
    # a remote scheduler may have it even when this machine does not.
    if link and getattr(client, "cluster", None) is not None and not has_dashboard():
        link += " (install bokeh>=3.1 to see it)"
    return link


def _record(journal, task, input_hash: str, result: TrackResult) -> TrackResult:
    """Journal the result; an ok result the journal refuses (e.g. the client cannot
    see the output) is journaled and returned as a failure with the journal's reason."""
    try:
        # An ok result carries the worker's hash of its master: the client need not read it back.
        journal.record(task, input_hash, result, output_hash=result.output_hash if result.ok else None)
        return result
    except ValueError as e:  # JournalError: a misconfiguration that must show on the track
        if not result.ok:
            raise
        failed = TrackResult(**{**result.to_dict(), "status": STATUS_FAILED, "reason": str(e)})
        journal.record(task, input_hash, failed)
        return failed


class _Submitter:
    """Feeds the cluster in catalog order, keeping at most ``window`` tasks in flight.

    Each refill is one ``client.map`` per resource request (one scheduler round
    trip, not one per track). Tasks that cannot be serialised are found up
    front, one by one, since a batch that fails to serialise would take every
    track in it along.
    """

    REFRESH_S = 5.0

    def __init__(self, client, task_fn, tasks: list, retries: int, gpu_share, max_in_flight: int | None):
        if max_in_flight is not None and max_in_flight < 0:
            raise ValueError(f"max_in_flight must be 0 (no limit) or more, not {max_in_flight}")
        self.client, self.task_fn, self.tasks, self.retries = client, task_fn, tasks, retries
        self.gpu_share = gpu_share
        self.keys = _keys(task_fn, tasks)
        self.fixed = max_in_flight
        self.queue: list[int] = []
        self._bad: list[tuple[int, str]] = []
        self._window, self._checked = 0, -math.inf
        self._sorted = False

    def unsendable(self) -> list[tuple[int, str]]:
        """Check every task serialises; return (index, reason) for those that do not."""
        import cloudpickle  # what distributed falls back to for what pickle cannot do

        for i, t in enumerate(self.tasks):
            try:
                cloudpickle.dumps(t)
            except Exception as e:
                self._bad.append((i, f"the task could not be sent to the cluster: {type(e).__name__}: {e}"))
            else:
                self.queue.append(i)
        self.queue.reverse()  # pop() from the end gives catalog order
        return self._bad

    def window(self) -> int:
        if self.fixed is not None:
            return self.fixed or len(self.tasks)
        now = time.monotonic()
        if now - self._checked >= self.REFRESH_S:
            self._checked = now
            try:
                threads = sum(self.client.nthreads().values())
            except Exception:  # keep the last window if the scheduler does not answer now
                threads = self._window // 2
            self._window = max(2, 2 * threads)
        return self._window

    def refill(self, pending: dict) -> list:
        room = self.window() - len(pending)
        if room <= 0 or not self.queue:
            return []
        take = [self.queue.pop() for _ in range(min(room, len(self.queue)))]
        groups: dict[Any, list[int]] = {}
        for i in take:
            wants_gpu = self.gpu_share is not None and str(getattr(self.tasks[i], "backend", "auto")) != "cpu"
            groups.setdefault(_freeze(self.gpu_share) if wants_gpu else None, []).append(i)
        new = []
        for frozen, idx in groups.items():
            futs = self.client.map(self.task_fn, [self.tasks[i] for i in idx], key=[self.keys[i] for i in idx],
                                   retries=self.retries, resources=dict(frozen) if frozen else None, pure=False)
            for i, f in zip(idx, futs):
                pending[f.key] = (i, f)
                new.append(f)
        return new


def _freeze(d) -> tuple | None:
    return None if d is None else tuple(sorted(d.items()))

