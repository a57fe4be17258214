"""The runner on real clusters: `dask scheduler` / `dask worker` processes on
127.0.0.1 reached through ``open_client(scheduler=...)``, and the embedded
``LocalCluster``. Task functions come from ``dask_procs`` (importable by the
workers), so no audio is rendered here."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

import dask_procs
from dask_procs import DaskProcs, attempts, echo_task, make_task
from farm import cluster
from farm.cluster import ClusterError, open_client
from farm.runner import run_tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def gpu_and_cpu_worker(tmp_path_factory):
    """A scheduler plus two single-threaded workers: "gpu" advertises a made-up GPU=1, "cpu" nothing."""
    with DaskProcs(str(tmp_path_factory.mktemp("dask"))) as procs:
        procs.start_scheduler()
        procs.start_worker("gpu", resources="GPU=1")
        procs.start_worker("cpu")
        names = procs.wait_for_workers(2)
        yield procs, names


def _tasks(tmp_path, names, **kw):
    return [make_task(i + 1, str(tmp_path / f"{n}.wav"), str(tmp_path), **kw) for i, n in enumerate(names)]


def test_results_in_catalog_order_and_a_raising_task_is_a_failed_record(gpu_and_cpu_worker, tmp_path):
    procs, _ = gpu_and_cpu_worker
    # Slow tracks first, so completion order differs from catalog order.
    tasks = _tasks(tmp_path, ["slow-a", "slow-b", "boom-c", "d", "e", "f"])
    seen = []
    with open_client(scheduler=procs.address) as (client, info):
        assert not info.embedded and info.n_workers == 2
        results = run_tasks(client, tasks, task_fn=echo_task, progress=False, retries=1,
                            resources=None, on_result=seen.append)
    assert [r.row for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r.source for r in results] == [t.track.source for t in tasks]
    assert sorted(r.row for r in seen) == [1, 2, 3, 4, 5, 6]  # each once, as it landed
    assert [r.ok for r in results] == [True, True, False, True, True, True]
    boom = results[2]
    assert boom.reason.startswith(tasks[2].track.source + ":")
    assert "RuntimeError: boom" in boom.reason and "after 1 retry" in boom.reason
    assert len(attempts(tasks[2])) == 2  # retries=1: run twice, then given up


def test_gpu_tasks_go_only_to_the_worker_advertising_gpu(gpu_and_cpu_worker, tmp_path):
    procs, names = gpu_and_cpu_worker
    tasks = _tasks(tmp_path, [f"t{i}" for i in range(6)], backend="auto")
    with open_client(scheduler=procs.address, backend="gpu") as (client, info):
        assert info.gpu_workers == 1
        assert info.task_resources == {"GPU": 1.0}  # one thread per GPU: a whole GPU per task
        results = run_tasks(client, tasks, task_fn=echo_task, progress=False)
    assert all(r.ok for r in results)
    assert {r.worker for r in results} == {names["gpu"]}


def test_unreachable_scheduler_fails_with_a_clear_message():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:\d+") as e:
        with open_client(scheduler=address, connect_timeout_s=1):
            pass  # pragma: no cover
    assert "dask scheduler" in str(e.value) and "--scheduler" in str(e.value)
    assert time.monotonic() - t0 < 10


def test_task_of_a_sigkilled_worker_is_rerun_on_the_other_worker(tmp_path):
    (tmp_path / "dask").mkdir()
    with DaskProcs(str(tmp_path / "dask")) as procs:
        procs.start_scheduler()
        procs.start_worker("w1")
        procs.start_worker("w2")
        names = procs.wait_for_workers(2)
        pids = {procs.pid_of("w1"): "w1", procs.pid_of("w2"): "w2"}
        tasks = _tasks(tmp_path, ["hang-a", "b", "c"])
        killed = {}

        def kill_the_worker_running_hang():
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not attempts(tasks[0]):
                time.sleep(0.02)
            first = attempts(tasks[0])
            if first and first[0] in pids:  # only ever a worker this test started
                killed["name"] = pids[first[0]]
                os.kill(first[0], signal.SIGKILL)

        killer = threading.Thread(target=kill_the_worker_running_hang, daemon=True)
        with open_client(scheduler=procs.address) as (client, _):
            killer.start()
            results = run_tasks(client, tasks, task_fn=echo_task, progress=False, resources=None)
            killer.join(20)
        assert killed, "the hanging task never started"
        survivor = "w2" if killed["name"] == "w1" else "w1"
        assert all(r.ok for r in results), [r.reason for r in results]
        hang = results[0]
        ran_on = attempts(tasks[0])
        assert len(ran_on) == 2 and pids[ran_on[1]] == survivor  # run again, elsewhere, once
        assert hang.worker == names[survivor] and hang.timings["attempt"] == 2.0
        assert procs.procs[killed["name"]].wait(5) == -signal.SIGKILL


def _initial_environ() -> set[str]:
    with open("/proc/self/environ", "rb") as f:
        return {v.decode(errors="replace") for v in f.read().split(b"\0") if v}


def test_embedded_cpu_cluster_sized_and_runs_tasks(tmp_path):
    with open_client(backend="cpu", n_workers=1, dashboard=False) as (client, info):
        assert info.embedded and info.n_workers == 1 and not info.gpu and info.task_resources is None
        assert info.address.startswith("tcp://127.0.0.1:")
        env = client.run(dask_procs.env_var, "FARM_FFT_WORKERS")
        assert list(env.values()) == [str(cluster._cores())]  # one worker: it gets every core's FFT threads
        # glibc's malloc settings were in the worker process's environment when it started
        # (/proc/self/environ is the environment it was exec'd with; later changes do not show)
        for initial in client.run(_initial_environ).values():
            assert {f"{k}={v}" for k, v in cluster.WORKER_MALLOC_ENV.items()} <= initial
        results = run_tasks(client, _tasks(tmp_path, ["a", "b"]), task_fn=echo_task, progress=False)
    assert [r.ok for r in results] == [True, True]


def test_embedded_gpu_layout_pins_one_worker_per_device(monkeypatch):
    """Without a GPU here, pretend CuPy sees two: the layout (not the kernels) is under test."""
    from kernels import backend as kbackend

    monkeypatch.setattr(kbackend, "gpu_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with open_client(threads_per_worker=2, dashboard=False) as (client, info):
        assert info.n_workers == 2 and info.gpu_workers == 2
        assert info.task_resources == {"GPU": 0.5}  # two threads share each GPU
        devices = client.run(dask_procs.env_var, "CUDA_VISIBLE_DEVICES")
        assert sorted(devices.values()) == ["0,1", "1,0"]
        for initial in client.run(_initial_environ).values():  # the GPU workers are made after the constructor
            assert {f"{k}={v}" for k, v in cluster.WORKER_MALLOC_ENV.items()} <= initial
        assert {w["name"] for w in info.workers} == {"gpu-0", "gpu-1"}


def test_worker_dying_on_every_attempt_becomes_a_failed_record(tmp_path):
    with open_client(backend="cpu", n_workers=1, dashboard=False, allowed_failures=0) as (client, _):
        crash = _tasks(tmp_path, ["crash-x"])
        [result] = run_tasks(client, crash, task_fn=echo_task, progress=False, retries=0)
        assert not result.ok
        assert result.reason.startswith(crash[0].track.source + ": every worker that ran it died (1 attempt,")
        # The nanny restarts the worker: the rest of the catalog still renders.
        client.wait_for_workers(1, timeout=20)
        [after] = run_tasks(client, [make_task(2, str(tmp_path / "y.wav"), str(tmp_path))],
                            task_fn=dask_procs.echo_task, progress=False)
        assert after.ok
