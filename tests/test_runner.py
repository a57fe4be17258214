"""The runner on an in-process cluster (threads, but real TCP comms, so tasks are
serialised as on a real cluster), and the sizing/resource logic as pure functions."""
from __future__ import annotations

import dataclasses
import io
import threading
import time

import pytest
from distributed import Client, LocalCluster

import dask_procs
from dask_procs import attempts, echo_task, make_task
from farm.cluster import GPU, MIN_WORKER_MEMORY_BYTES, plan_workers, task_resources
from farm.records import STATUS_FAILED, TrackResult
from farm.runner import Progress, plan, run_tasks

GiB = 2**30


def _cluster(**kw):
    return LocalCluster(n_workers=1, processes=False, protocol="tcp://", host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}, **kw)


@pytest.fixture(scope="module")
def client():
    with _cluster(threads_per_worker=2) as cluster, Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def gpu_client():
    """One worker advertising a made-up GPU=1 with two threads: tasks should ask for half of it."""
    with _cluster(threads_per_worker=2, resources={GPU: 1}) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


def _tasks(tmp_path, names, **kw):
    return [make_task(i + 1, str(tmp_path / f"{n}.wav"), str(tmp_path), **kw) for i, n in enumerate(names)]


# ---------------------------------------------------------------- plan

def test_plan_keeps_order_and_treats_unreadable_inputs_as_todo(tmp_path):
    tasks = _tasks(tmp_path, ["a", "b", "c", "d"])

    def is_done(t):
        if t.track.row == 3:
            raise FileNotFoundError(t.track.source)
        return t.track.row % 2 == 0

    p = plan(tasks, is_done)
    assert [t.track.row for t in p.todo] == [1, 3] and [t.track.row for t in p.done] == [2, 4]
    assert plan(tasks).todo == tasks  # no predicate (--force): everything renders


# ---------------------------------------------------------------- run_tasks

def test_results_in_task_order_each_reported_once(client, tmp_path):
    tasks = _tasks(tmp_path, ["slow-a", "b", "slow-c", "d", "e"])
    seen, bar = [], io.StringIO()
    results = run_tasks(client, tasks, task_fn=echo_task, on_result=seen.append, progress=bar)
    assert [r.source for r in results] == [t.track.source for t in tasks]
    assert all(r.ok for r in results)
    assert sorted(r.row for r in seen) == [1, 2, 3, 4, 5]
    assert [r.row for r in seen] != [1, 2, 3, 4, 5]  # they landed as they finished, slow ones last
    assert "5/5 tracks" in bar.getvalue() and bar.getvalue().endswith("\n")
    assert all(r.timings["gpu_share"] == 0.0 for r in results)  # no GPU workers: no resources asked


def _not_done(client) -> int:
    """Tasks the scheduler holds that have not finished (a finished one lingers until released)."""
    return sum(1 for ts in client.cluster.scheduler.tasks.values() if ts.state != "memory")


def test_in_flight_window_bounds_what_the_cluster_holds(client, tmp_path):
    tasks = _tasks(tmp_path, [f"slow-{i}" if i % 3 == 0 else str(i) for i in range(12)])
    held = []
    results = run_tasks(client, tasks, task_fn=echo_task, progress=False,
                        on_result=lambda r: held.append(_not_done(client)))
    assert all(r.ok for r in results)
    assert 1 <= max(held) <= 4  # auto: twice the cluster's two threads


def test_one_in_flight_runs_the_catalog_in_order(client, tmp_path):
    order = []
    run_tasks(client, _tasks(tmp_path, ["slow-a", "b", "slow-c", "d"]), task_fn=echo_task, progress=False,
              max_in_flight=1, on_result=lambda r: order.append(r.row))
    assert order == [1, 2, 3, 4]  # catalog order even though the slow ones come first


def test_empty_catalog_submits_nothing(client):
    assert run_tasks(client, [], task_fn=echo_task, progress=False) == []


def test_a_raising_task_is_retried_then_becomes_a_failed_record(client, tmp_path):
    tasks = _tasks(tmp_path, ["a", "boom", "c"])
    results = run_tasks(client, tasks, task_fn=echo_task, retries=2, progress=False)
    assert [r.ok for r in results] == [True, False, True]
    failed = results[1]
    assert failed.status == STATUS_FAILED and failed.row == 2 and failed.preset == "test"
    assert failed.reason.startswith(tasks[1].track.source + ": the task failed on the cluster (after 2 retries)")
    assert "RuntimeError: boom on attempt 3" in failed.reason
    assert len(attempts(tasks[1])) == 3


def test_a_task_returning_something_else_is_a_failed_record(client, tmp_path):
    [r] = run_tasks(client, _tasks(tmp_path, ["a"]), task_fn=dask_procs.returns_garbage, progress=False)
    assert not r.ok and "returned int, not a TrackResult" in r.reason and r.reason.startswith(str(tmp_path))


def test_a_task_that_cannot_be_serialised_fails_alone(client, tmp_path):
    good, other = _tasks(tmp_path, ["a", "b"])
    unpicklable = dataclasses.replace(other, track=dataclasses.replace(other.track, tags={"title": threading.Lock()}))
    results = run_tasks(client, [good, unpicklable], task_fn=echo_task, progress=False)
    assert results[0].ok
    assert not results[1].ok and "could not be sent to the cluster" in results[1].reason
    assert results[1].reason.startswith(other.track.source + ":")


def test_gpu_tasks_ask_for_their_share_of_the_gpu_cpu_tasks_for_nothing(gpu_client, tmp_path):
    tasks = _tasks(tmp_path, ["a", "b"], backend="auto") + _tasks(tmp_path, ["c"], backend="cpu")
    results = run_tasks(gpu_client, tasks, task_fn=echo_task, progress=False)
    assert [r.timings["gpu_share"] for r in results] == [0.5, 0.5, 0.0]
    [r] = run_tasks(gpu_client, tasks[:1], task_fn=echo_task, progress=False, resources=None)
    assert r.timings["gpu_share"] == 0.0


class FakeJournal:
    """The two calls the runner makes on farm.journal.Journal."""

    def __init__(self, refuse_ok_for=()):
        self.records, self.refuse = [], set(refuse_ok_for)

    def input_hash(self, path):
        if path.endswith("missing.wav"):
            raise FileNotFoundError(path)
        return "sha256:" + path

    def record(self, task, input_hash, result, output_hash=None):
        assert output_hash == (result.output_hash if result.ok else None)  # the worker's hash, passed on
        if result.ok and task.track.row in self.refuse:
            raise ValueError(f"journal: track {task.track.row} reported ok but the client cannot see it")
        self.records.append((task.track.row, input_hash, result.status))


def test_journal_records_each_result_with_the_hash_taken_before_submission(client, tmp_path):
    journal = FakeJournal(refuse_ok_for={3})
    tasks = _tasks(tmp_path, ["a", "boom", "c", "missing"])
    results = run_tasks(client, tasks, task_fn=echo_task, journal=journal, retries=0, progress=False)
    assert sorted(journal.records) == [(1, "sha256:" + tasks[0].track.source, "ok"),
                                       (2, "sha256:" + tasks[1].track.source, "failed"),
                                       (3, "sha256:" + tasks[2].track.source, "failed")]
    # The journal refused an ok result: the track shows as failed, with the journal's reason.
    assert not results[2].ok and "client cannot see it" in results[2].reason
    assert results[3].ok  # unreadable input: nothing to journal (the real render reports it failed)


def test_an_exception_in_on_result_cancels_what_is_still_queued(tmp_path):
    tasks = _tasks(tmp_path, ["a"] + [f"slow-{i}" for i in range(8)])

    def stop(result):
        raise KeyboardInterrupt

    with _cluster(threads_per_worker=1) as cluster, Client(cluster, set_as_default=False) as c:
        with pytest.raises(KeyboardInterrupt):
            run_tasks(c, tasks, task_fn=echo_task, on_result=stop, progress=False)
        time.sleep(0.5)
        ran = sum(1 for t in tasks if attempts(t))
        assert ran < len(tasks)  # the queued slow tracks never started
        deadline = time.monotonic() + 5
        while cluster.scheduler.tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not cluster.scheduler.tasks  # nothing left behind on the scheduler


def test_default_task_fn_is_the_render_imported_only_when_needed(monkeypatch):
    """The render (heavy, written elsewhere) is looked up when a run starts, not at import."""
    import subprocess
    import sys
    import types

    code = "import sys, farm.runner, farm.cluster, farm.report; print('farm.render' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    fake = types.ModuleType("farm.render")
    fake.render_track = lambda task: None
    monkeypatch.setitem(sys.modules, "farm.render", fake)
    monkeypatch.delattr("farm.render", raising=False)  # an attribute left by an earlier real import
    from farm.runner import _default_task_fn

    assert _default_task_fn() is fake.render_track


def test_progress_line():
    bar = Progress(10, None)
    bar.start -= 20.0
    for ok in (True, True, False, True):
        bar.update(TrackResult(row=1, source="x", status="ok" if ok else "failed"))
    line = bar.line(bar.start + 20.0)
    assert line.startswith("[##########..............] 4/10 tracks, 1 failed, 00:20 elapsed, 0.20 tracks/s")
    assert line.endswith("ETA 00:30")


# ---------------------------------------------------------------- sizing and resources

def test_cpu_workers_one_process_per_core_fft_threads_fill_the_machine():
    p = plan_workers(cores=16, memory_bytes=64 * GiB)
    assert (p.n_workers, p.threads_per_worker, p.fft_workers, p.gpu) == (16, 1, 1, False)
    assert p.n_workers * p.memory_limit_bytes <= 64 * GiB
    p = plan_workers(cores=16, memory_bytes=64 * GiB, n_workers=4)
    assert (p.n_workers, p.fft_workers) == (4, 4)  # 4 processes x 4 FFT threads = 16 cores


def test_cpu_workers_fewer_when_memory_is_short():
    p = plan_workers(cores=16, memory_bytes=8 * GiB)
    assert p.n_workers == 3 and p.memory_limit_bytes >= MIN_WORKER_MEMORY_BYTES  # 0.85 x 8 GiB / 2 GiB
    assert p.fft_workers == 5  # the spare cores go to FFT threads
    assert plan_workers(cores=2, memory_bytes=1 * GiB).n_workers == 1


def test_gpu_workers_one_per_device_with_a_few_threads():
    p = plan_workers(cores=16, memory_bytes=128 * GiB, devices=["0", "1"])
    assert (p.n_workers, p.threads_per_worker, p.devices, p.fft_workers) == (2, 4, ("0", "1"), 2)
    p = plan_workers(cores=2, memory_bytes=16 * GiB, devices=["0"])
    assert (p.n_workers, p.threads_per_worker) == (1, 2)
    with pytest.raises(ValueError, match="n_workers"):
        plan_workers(cores=2, memory_bytes=GiB, n_workers=0)


@pytest.mark.parametrize("workers, want", [
    ({}, None),
    ({"a": {"nthreads": 4, "resources": {}}}, None),
    ({"a": {"nthreads": 1, "resources": {GPU: 1}}}, {GPU: 1.0}),
    ({"a": {"nthreads": 4, "resources": {GPU: 1}}}, {GPU: 0.25}),
    ({"a": {"nthreads": 3, "resources": {GPU: 1}}}, {GPU: 0.5}),  # rounded up to a power of two
    ({"a": {"nthreads": 4, "resources": {GPU: 1}}, "b": {"nthreads": 1, "resources": {GPU: 1}}}, {GPU: 1.0}),
    ({"a": {"nthreads": 1, "resources": {GPU: 2}}}, {GPU: 1.0}),
])
def test_task_resources(workers, want):
    assert task_resources(workers) == want
