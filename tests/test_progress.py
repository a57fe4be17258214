"""A running track's fraction done: farm.progress on the worker, the bar line on the client."""
from __future__ import annotations

import io
import threading
import time

import pytest
from distributed import Client, LocalCluster

from dask_procs import make_task
from farm.progress import MAX_EVENTS_PER_S, TOPIC, track_progress
from farm.records import STATUS_OK, TrackResult
from farm.runner import Progress, run_tasks

# In-process workers (processes=False) share this module with the test: a task
# waits on SHOWN until the client's bar has drawn its fraction.
SHOWN = threading.Event()
KEYS: list[str] = []


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


class Screen(io.StringIO):
    """A terminal stand-in that says when a line showing '37% of' has been drawn."""

    def write(self, s):
        if "37% of long_mix.flac" in s:
            SHOWN.set()
        return super().write(s)


def reports_progress(task):
    from distributed import get_worker

    KEYS.append(str(get_worker().get_current_task()))
    report = track_progress(task)
    report(0.37)
    shown = SHOWN.wait(60)  # the render goes on while the client draws; here: until it has
    return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_OK,
                       reason="" if shown else "never shown")


def test_a_running_tracks_fraction_shows_on_the_bar_line(client, tmp_path):
    SHOWN.clear()
    screen = Screen()
    tasks = [make_task(1, str(tmp_path / "long_mix.flac"), str(tmp_path))]
    (result,) = run_tasks(client, tasks, task_fn=reports_progress, progress=screen, resources=None)
    assert result.ok, result.reason
    frames = screen.getvalue().split("\r")
    shown = [f for f in frames if "| 37% of long_mix.flac" in f]
    assert shown and shown[0].startswith("[") and "0/1 tracks" in shown[0]
    assert "% of" not in frames[-1]  # once the track landed, the bar no longer names it
    # After the run nothing draws on the screen any more, whatever arrives late.
    drawn = screen.getvalue()
    client.log_event(TOPIC, {"key": KEYS[-1], "row": 1, "file": "long_mix.flac", "fraction": 0.5})
    time.sleep(0.5)
    assert screen.getvalue() == drawn


def floods_progress(task):
    report = track_progress(task)
    t0 = time.monotonic()
    for i in range(400):
        report(i / 400)
        time.sleep(0.005)
    return time.monotonic() - t0


def test_reports_are_rate_limited_on_the_worker(client, tmp_path):
    task = make_task(7, str(tmp_path / "flood.wav"), str(tmp_path))
    fut = client.submit(floods_progress, task, pure=False)
    took = fut.result()
    deadline = time.monotonic() + 30
    events = []
    while time.monotonic() < deadline:  # events travel through the scheduler: wait for them
        events = [m for _, m in client.get_events(TOPIC) if m["key"] == str(fut.key)]
        if events:
            time.sleep(0.5)
            events = [m for _, m in client.get_events(TOPIC) if m["key"] == str(fut.key)]
            break
        time.sleep(0.05)
    assert 1 <= len(events) <= 1 + took * MAX_EVENTS_PER_S
    assert {k: events[0][k] for k in ("key", "row", "file", "fraction")} == \
        {"key": str(fut.key), "row": 7, "file": "flood.wav", "fraction": 0.0}
    assert [e["fraction"] for e in events] == sorted(e["fraction"] for e in events)


def test_outside_a_worker_reporting_does_nothing(tmp_path):
    report = track_progress(make_task(1, str(tmp_path / "x.wav"), str(tmp_path)))
    report(0.5)  # no worker, no error
    report("nonsense")


def test_rate_limit_with_a_fake_clock(tmp_path):
    sent = []

    class FakeWorker:
        def get_current_task(self):
            return "render_track-row000001-0-abc"

        def log_event(self, topic, msg):
            sent.append((topic, msg))

    import distributed

    now = [0.0]
    orig = distributed.get_worker
    distributed.get_worker = lambda: FakeWorker()
    try:
        report = track_progress(make_task(1, str(tmp_path / "a" / "mix.wav"), str(tmp_path)), clock=lambda: now[0])
    finally:
        distributed.get_worker = orig
    for i in range(21):  # 0, 0.1, ..., 2.0 s: one event per half second at most
        now[0] = i / 10
        report(i / 20 + (5 if i == 20 else 0))  # the last is clipped to 1.0
    assert [round(m["fraction"], 2) for _, m in sent] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {t for t, _ in sent} == {TOPIC} and sent[0][1]["file"] == "mix.wav"


def test_bar_line_names_running_tracks_and_forgets_landed_ones():
    bar = Progress(3, None)
    bar.start -= 10.0
    bar.running("k1", "long_mix.flac", 0.371)
    assert bar.line(bar.start + 10.0).endswith("0/3 tracks, 00:10 elapsed, 0.00 tracks/s | 37% of long_mix.flac")
    bar.running("k2", "concert.wav", 0.8)
    bar.running("k3", "other.wav", 0.1)
    assert bar.line().endswith("| 37% of long_mix.flac, 80% of concert.wav, +1 more")
    bar.update(TrackResult(row=1, source="x", status="ok"), key="k1")
    bar.running("k1", "long_mix.flac", 0.9)  # a late event of a track that already landed
    assert bar.line().endswith("| 80% of concert.wav, 10% of other.wav")
    bar.update(TrackResult(row=2, source="x", status="ok"), key="k2")
    bar.update(TrackResult(row=3, source="x", status="ok"), key="k3")
    assert "%" not in bar.line()
