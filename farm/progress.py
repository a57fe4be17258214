"""A running track's progress, from the worker to the client's progress bar.

The run's bar (:class:`farm.runner.Progress`) counts finished tracks; a
two-hour programme is one track, so the bar would stand still for its whole
render. A render that knows how far it is (the streamed render, block by
block) reports it::

    report = track_progress(task)     # on the worker, inside the task
    for block in ...:
        ...
        report(done_frames / total_frames)

On a Dask worker each report becomes an event under :data:`TOPIC`
(``Worker.log_event``), at most :data:`MAX_EVENTS_PER_S` a second per track
(the rest are dropped; events go through the scheduler, which keeps a log of
them); :func:`farm.runner.run_tasks` subscribes to the topic
(``Client.subscribe_topic``) and shows e.g. ``| 37% of long_mix.flac`` on the
bar line until the track's result lands. Outside a worker (a test, a local
call) the callable does nothing. Reporting never raises into the render.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

TOPIC = "farm-track-progress"
MAX_EVENTS_PER_S = 2.0


def _noop(fraction: float) -> None:
    return None


def track_progress(task, *, max_rate: float = MAX_EVENTS_PER_S, clock=time.monotonic) -> Callable[[float], None]:
    """A ``progress(fraction)`` callable for the render of ``task`` (a RenderTask)
    running in the current Dask task; ``fraction`` in 0..1 (clipped)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError, AttributeError):  # not inside a Dask task
        return _noop
    if key is None:
        return _noop
    track = getattr(task, "track", None)
    name = os.path.basename(str(getattr(track, "source", "") or ""))
    row = int(getattr(track, "row", 0) or 0)
    gap = 1.0 / max_rate
    lock = threading.Lock()
    last = [-float("inf")]

    def report(fraction: float) -> None:
        try:
            f = min(1.0, max(0.0, float(fraction)))
        except (TypeError, ValueError):
            return
        now = clock()
        with lock:
            if now - last[0] < gap:
                return
            last[0] = now
        try:
            worker.log_event(TOPIC, {"key": str(key), "row": row, "file": name, "fraction": round(f, 4)})
        except Exception:  # progress is a nicety: a closing worker must not fail the render
            pass

    return report


__all__ = ["MAX_EVENTS_PER_S", "TOPIC", "track_progress"]
