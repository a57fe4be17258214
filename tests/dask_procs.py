"""Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 for tests, and
small task functions those workers can import.

Workers import this module by name (``dask_procs``): :class:`DaskProcs`
puts ``tests/`` on their ``PYTHONPATH``, and workers of an embedded
``LocalCluster`` inherit the test process's ``sys.path`` (pytest adds
``tests/`` through ``pythonpath`` in pyproject.toml).

Every process is started in its own session so that teardown can signal
exactly the process group it started (SIGTERM, wait, SIGKILL on timeout);
workers also get ``--death-timeout`` so that none outlives a lost scheduler.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from farm.records import STATUS_OK, DeliverySpec, OutputSpec, RenderTask, TrackResult, TrackSpec
from kernels.params import ChainParams

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
DASK = os.path.join(os.path.dirname(sys.executable), "dask")


# ---------------------------------------------------------------- tasks the workers run

def make_task(row: int, source: str, out_dir: str, *, backend: str = "cpu") -> RenderTask:
    """A RenderTask that the small task functions below understand (no audio involved)."""
    stem = os.path.splitext(os.path.basename(source))[0]
    return RenderTask(track=TrackSpec(row=row, source=source), chain=ChainParams.bypassed(),
                      output=OutputSpec(), delivery=DeliverySpec(),
                      out_path=os.path.join(out_dir, f"{row:02d}-{stem}.flac"), preset="test",
                      backend=backend)


def _where() -> str:
    """The address of the Dask worker running this task (or the pid outside one)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return f"pid:{os.getpid()}"


def _gpu_share() -> float:
    """The GPU share the running task asked for (0.0 outside a worker or without one)."""
    try:
        from distributed import get_worker
        from distributed.worker import thread_state

        ts = get_worker().state.tasks[thread_state.key]
        return float((ts.resource_restrictions or {}).get("GPU", 0.0))
    except (ValueError, AttributeError, KeyError):
        return 0.0


def _attempt(task: RenderTask) -> int:
    """Append this attempt to ``<out_path>.attempts`` (pid per line); return its number (1-based)."""
    path = task.out_path + ".attempts"
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        return sum(1 for _ in f)


def attempts(task: RenderTask) -> list[int]:
    """The pids that ran ``task`` so far, in order."""
    try:
        with open(task.out_path + ".attempts") as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def echo_task(task: RenderTask) -> TrackResult:
    """Behaves by the input's name.

    ``boom*``: raises (an exception escaping the task). ``slow*``: sleeps 0.3 s.
    ``hang*``: on its first attempt sleeps 60 s (to be killed), then returns.
    ``crash*``: the worker process dies (``os._exit``) on every attempt.
    Anything else: returns an ok record at once. Every call logs its attempt.
    """
    name = os.path.basename(task.track.source)
    n = _attempt(task)
    if name.startswith("boom"):
        raise RuntimeError(f"boom on attempt {n}")
    if name.startswith("crash"):
        os._exit(17)
    if name.startswith("hang") and n == 1:
        time.sleep(60)
    if name.startswith("slow"):
        time.sleep(0.3)
    return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_OK,
                       output=task.out_path, preset=task.preset, worker=_where(),
                       timings={"attempt": float(n), "gpu_share": _gpu_share()})


def env_var(name: str) -> str | None:
    """An environment variable as the worker sees it (``os.environ.get`` itself would
    pickle the client's ``os.environ`` along with it)."""
    return os.environ.get(name)


def returns_garbage(task: RenderTask):
    return 42


# ---------------------------------------------------------------- processes

@dataclass
class DaskProcs:
    """A scheduler and workers started as real processes; use as a context manager."""

    workdir: str
    timeout_s: float = 20.0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    address: str = ""
    tls_dir: str | None = None  # deploy/make-certs.sh output: scheduler, workers and clients speak TLS

    def tls_args(self, role: str) -> list[str]:
        """Dask CLI flags for ``role`` (scheduler or worker) when ``tls_dir`` is set."""
        if not self.tls_dir:
            return []
        d = self.tls_dir
        return ["--tls-ca-file", os.path.join(d, "ca.pem"), "--tls-cert", os.path.join(d, f"{role}.pem"),
                "--tls-key", os.path.join(d, f"{role}-key.pem")]

    @property
    def security(self):
        """The client-side ``distributed.security.Security`` (None without TLS)."""
        if not self.tls_dir:
            return None
        from distributed.security import Security

        d = self.tls_dir
        return Security(tls_ca_file=os.path.join(d, "ca.pem"), tls_client_cert=os.path.join(d, "client.pem"),
                        tls_client_key=os.path.join(d, "client-key.pem"), require_encryption=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        try:
            proc = subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._env(), cwd=self.workdir, start_new_session=True)
        finally:
            log.close()  # the child holds its own copy
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 3000) -> str:
        try:
            with open(os.path.join(self.workdir, f"{name}.log"), "rb") as f:
                return f.read().decode(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def start_scheduler(self) -> str:
        sched_file = os.path.join(self.workdir, "scheduler.json")
        proc = self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sched_file]
                           + (["--protocol", "tls", *self.tls_args("scheduler")] if self.tls_dir else []))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {proc.returncode}:\n{self.log('scheduler')}")
            try:
                with open(sched_file) as f:
                    self.address = json.load(f)["address"]
                return self.address
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.05)
        raise TimeoutError(f"dask scheduler did not start in {self.timeout_s} s:\n{self.log('scheduler')}")

    def start_worker(self, name: str, *, nthreads: int = 1, resources: str | None = None) -> subprocess.Popen:
        args = ["worker", self.address, "--name", name, "--nthreads", str(nthreads), "--no-nanny",
                "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "30",
                "--local-directory", os.path.join(self.workdir, name)]
        if resources:
            args += ["--resources", resources]
        return self._spawn(name, args + self.tls_args("worker"))

    def wait_for_workers(self, n: int) -> dict[str, str]:
        """Block until ``n`` workers are connected; return {worker name: address}."""
        from distributed import Client

        with Client(self.address, timeout=self.timeout_s, set_as_default=False, security=self.security) as client:
            try:
                client.wait_for_workers(n, timeout=self.timeout_s)
            except TimeoutError:
                logs = "\n".join(f"--- {k}\n{self.log(k)}" for k in self.procs)
                raise TimeoutError(f"{n} workers did not connect in {self.timeout_s} s\n{logs}") from None
            workers = client.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): addr for addr, w in workers.items()}

    def pid_of(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(5)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # its own session: this group is exactly what we started
        except ProcessLookupError:
            pass

    def close(self) -> None:
        # Workers first (they would otherwise wait death-timeout for the scheduler).
        for name in [n for n in self.procs if n != "scheduler"] + ["scheduler"]:
            if name in self.procs:
                self.stop(name)

    def __enter__(self) -> "DaskProcs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
