"""Where the catalog runs: an embedded ``LocalCluster`` or an existing Dask cluster.

::

    with open_client() as (client, info):                  # embedded, sized to this machine
        print(info.describe())
    with open_client("tcp://10.0.0.5:8786") as (client, info):   # an existing scheduler
        ...

The embedded cluster listens on 127.0.0.1 only. With CuPy seeing GPUs it
starts one worker process per GPU, each pinned to its device through
``CUDA_VISIBLE_DEVICES`` and advertising the resource ``GPU=1``, with a few
threads so one track's decode/encode overlaps another's device work.
Without a GPU it starts one single-threaded worker process per core (fewer
when memory is short: each needs :data:`MIN_WORKER_MEMORY_BYTES`), and sets
``FARM_FFT_WORKERS`` in every worker so that processes x threads x FFT
threads stays near the core count instead of oversubscribing it (Dask's
nanny already pins OpenMP/MKL/OpenBLAS to 1 thread).

What each render task must ask for is decided here from what the workers
advertise (:func:`task_resources`): a GPU worker started as
``dask worker --nthreads 4 --resources GPU=1`` takes tasks asking for
``{"GPU": 0.25}``, so its four threads can each hold a track, while workers
without the label never get GPU tasks.

Retries. A task whose worker dies (SIGKILL, OOM-killer, a crash in native
code) is re-run elsewhere by the scheduler itself, up to
``distributed.scheduler.allowed-failures`` times (default 3, settable here
for the embedded cluster with ``allowed_failures``; a remote scheduler uses
its own configuration); after that the future errs with ``KilledWorker``.
``retries`` given to :func:`farm.runner.run_tasks` is a different counter:
re-runs after the task *raised*, which the render never does for a bad track.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Each worker process needs room for one track in flight: a 4-minute stereo
# 48 kHz track is ~92 MB in float32; oversampling, FFT buffers and the
# re-decode for validation take a render to ~1-1.5 GB at peak.
MIN_WORKER_MEMORY_BYTES = 2 << 30
# Of the machine's memory (cgroup-aware), what the workers may use together;
# the rest is for the client, the scheduler and the OS page cache.
WORKER_MEMORY_FRACTION = 0.85
# Threads per GPU worker when not told: enough to overlap host and device work.
DEFAULT_GPU_THREADS = 4
DEFAULT_DASHBOARD_PORT = 8787
# glibc malloc in the worker processes, set in their environment before they start
# (glibc reads it once; Dask's nanny sets its own MALLOC_TRIM_THRESHOLD_ the same way,
# which these replace). By default every array over 32 MB is a fresh mmap, and task
# threads allocate from per-thread arenas that cannot hold one either, so each of the
# chain's many 10-200 MB temporaries is page-faulted in and zeroed again: on a 2-core
# VM the master chain took 9.0-9.8 s per 4-min track with the defaults and 6.7-7.3 s
# with these (one arena, arrays up to 1 GiB from the heap, freed memory kept for the
# next pass). farm.render gives the heap back between tracks (malloc_trim), so a
# worker's memory still falls when it is idle. deploy/launch.sh exports the same.
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
                     "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
GPU = "GPU"  # the resource label GPU workers advertise and GPU tasks ask for


class ClusterError(RuntimeError):
    """The cluster cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class WorkerPlan:
    """How the embedded cluster is laid out on this machine."""

    n_workers: int
    threads_per_worker: int
    memory_limit_bytes: int  # per worker
    fft_workers: int  # FARM_FFT_WORKERS in each worker
    devices: tuple[str, ...] = ()  # CUDA device per worker (one entry each); () for CPU workers

    @property
    def gpu(self) -> bool:
        return bool(self.devices)


def plan_workers(*, cores: int, memory_bytes: int, devices: Sequence[str] = (),
                 n_workers: int | None = None, threads_per_worker: int | None = None) -> WorkerPlan:
    """Size the embedded cluster (pure, so it is tested without processes).

    ``devices`` are the visible CUDA devices: one worker per device unless
    ``n_workers`` says otherwise (extra workers share devices round-robin).
    """
    cores = max(1, int(cores))
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, not {n_workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be at least 1, not {threads_per_worker}")
    if devices:
        n = n_workers or len(devices)
        threads = threads_per_worker or max(1, min(DEFAULT_GPU_THREADS, cores // n))
        assigned = tuple(str(devices[i % len(devices)]) for i in range(n))
    else:
        threads = threads_per_worker or 1
        # One single-threaded process per core: tracks are independent, so
        # processes scale better than FFT threads and never share a GIL.
        by_memory = max(1, int(memory_bytes * WORKER_MEMORY_FRACTION) // MIN_WORKER_MEMORY_BYTES)
        n = n_workers or max(1, min(cores // threads, by_memory))
        assigned = ()
    memory = int(memory_bytes * WORKER_MEMORY_FRACTION) // n
    fft_workers = max(1, cores // (n * threads))
    return WorkerPlan(n_workers=n, threads_per_worker=threads, memory_limit_bytes=memory,
                      fft_workers=fft_workers, devices=assigned)


@dataclass(frozen=True)
class ClusterInfo:
    """What the client is connected to (also written into report.json)."""

    address: str
    embedded: bool
    n_workers: int
    threads: int  # all workers together
    memory_limit_bytes: int  # all workers together (0 when unknown)
    gpu_workers: int  # workers advertising the GPU resource
    task_resources: dict[str, float] | None  # what each render task asks for
    dashboard_link: str | None = None
    workers: tuple[dict[str, Any], ...] = field(default=())  # per worker: address, name, nthreads, resources

    @property
    def gpu(self) -> bool:
        return self.gpu_workers > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["workers"] = [dict(w) for w in self.workers]
        d["gpu"] = self.gpu
        return d

    def describe(self) -> str:
        kind = "embedded LocalCluster" if self.embedded else f"Dask scheduler {self.address}"
        gpu = f", {self.gpu_workers} with {GPU}" if self.gpu_workers else ", CPU only"
        mem = f", {self.memory_limit_bytes / 2**30:.1f} GiB" if self.memory_limit_bytes else ""
        dash = f"; dashboard {self.dashboard_link}" if self.dashboard_link else ""
        if dash and self.embedded and not has_dashboard():
            dash += " (install bokeh>=3.1 to see it)"
        return f"{kind}: {self.n_workers} workers, {self.threads} threads{mem}{gpu}{dash}"


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _visible_devices(count: int) -> list[str]:
    """The CUDA device ids a child process may be pinned to (honours a parent's CUDA_VISIBLE_DEVICES)."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [d.strip() for d in parent.split(",") if d.strip()] if parent else []
    return ids[:count] if ids else [str(i) for i in range(count)]


def _rotated(devices: Sequence[str], first: str) -> str:
    """CUDA_VISIBLE_DEVICES with ``first`` as device 0 (the others stay visible, as dask-cuda does)."""
    order = list(dict.fromkeys(devices))
    i = order.index(first)
    return ",".join(order[i:] + order[:i])


def _dashboard_address(dashboard: bool | str) -> str:
    if dashboard is False or dashboard is None:
        # The scheduler serves /health and /metrics even without a dashboard, on 8787
        # unless told otherwise: keep it off a port another cluster may want.
        return "127.0.0.1:0"
    if isinstance(dashboard, str):
        return dashboard
    # 8787 by convention, on loopback; a random port when another cluster holds it
    # (distributed would fall back too, but with a UserWarning).
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEFAULT_DASHBOARD_PORT))
        except OSError:
            return "127.0.0.1:0"
    return f"127.0.0.1:{DEFAULT_DASHBOARD_PORT}"


def _workers(client) -> dict[str, dict[str, Any]]:
    return dict(client.scheduler_info(n_workers=-1).get("workers", {}))


def task_resources(client_or_workers) -> dict[str, float] | None:
    """The resources a GPU render task should ask for, or ``None`` without GPU workers.

    A worker advertising ``GPU=g`` with ``t`` threads can hold ``t`` tracks at
    once when each asks for ``g/t`` of it; the share is rounded up to a power
    of two (1, 1/2, 1/4, ...) so that the scheduler's sums of used resources
    stay exact in floating point, and taken as the largest over all GPU
    workers so that no worker is oversubscribed.
    """
    workers = client_or_workers if isinstance(client_or_workers, Mapping) else _workers(client_or_workers)
    shares = [float(w.get("resources", {}).get(GPU, 0)) / max(1, int(w.get("nthreads", 1)))
              for w in workers.values() if float(w.get("resources", {}).get(GPU, 0)) > 0]
    if not shares:
        return None
    share = min(1.0, max(shares))
    return {GPU: 2.0 ** -math.floor(-math.log2(share)) if share < 1 else 1.0}


def cluster_info(client, *, embedded: bool, dashboard_link: str | None = None) -> ClusterInfo:
    """Describe the cluster the client is connected to, as it is now."""
    workers = _workers(client)
    rows = tuple(
        {"address": addr, "name": str(w.get("name", "")), "nthreads": int(w.get("nthreads", 0)),
         "memory_limit_bytes": int(w.get("memory_limit") or 0), "resources": dict(w.get("resources", {}))}
        for addr, w in sorted(workers.items()))
    return ClusterInfo(
        address=client.scheduler.address,
        embedded=embedded,
        n_workers=len(rows),
        threads=sum(r["nthreads"] for r in rows),
        memory_limit_bytes=sum(r["memory_limit_bytes"] for r in rows),
        gpu_workers=sum(1 for r in rows if float(r["resources"].get(GPU, 0)) > 0),
        task_resources=task_resources(workers),
        dashboard_link=dashboard_link,
        workers=rows,
    )


def _local_cluster(plan: WorkerPlan, dashboard: bool | str, allowed_failures: int | None):
    import dask
    from distributed import LocalCluster

    env = {"FARM_FFT_WORKERS": str(plan.fft_workers)}
    scheduler_kwargs: dict[str, Any] = {"dashboard": bool(dashboard)}
    if allowed_failures is not None:
        scheduler_kwargs["allowed_failures"] = int(allowed_failures)
    resources = {GPU: 1} if plan.gpu else None
    # Read by each Nanny when it is made (the GPU workers below are made after the
    # constructor), and applied before the worker process is spawned.
    spawn_env = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}), **WORKER_MALLOC_ENV}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_env}):
        cluster = LocalCluster(
            host="127.0.0.1",  # loopback only: nothing outside this machine may submit work
            n_workers=0 if plan.gpu else plan.n_workers,
            threads_per_worker=plan.threads_per_worker,
            processes=True,
            memory_limit=plan.memory_limit_bytes,
            dashboard_address=_dashboard_address(dashboard),
            scheduler_kwargs=scheduler_kwargs,
            resources=resources,
            env=env,
        )
        if plan.gpu:
            # One process per GPU, each seeing its own device as device 0: LocalCluster
            # builds identical workers, so give each spec its own environment.
            try:
                for i, device in enumerate(plan.devices):
                    spec = copy.deepcopy(cluster.new_spec)
                    spec["options"]["env"] = {**env, "CUDA_VISIBLE_DEVICES": _rotated(plan.devices, device)}
                    cluster.worker_spec[f"gpu-{i}"] = spec
                cluster.scale(len(cluster.worker_spec))
                cluster.wait_for_workers(plan.n_workers, timeout=120)
            except BaseException:
                cluster.close()
                raise
    return cluster


@contextlib.contextmanager
def open_client(scheduler: str | None = None, backend: str = "auto", n_workers: int | None = None,
                threads_per_worker: int | None = None, dashboard: bool | str = True, *,
                connect_timeout_s: float = 10.0, worker_timeout_s: float = 60.0,
                allowed_failures: int | None = None, security: Any = None) -> Iterator[tuple[Any, ClusterInfo]]:
    """Yield ``(client, info)`` for an embedded cluster or the scheduler at ``scheduler``.

    ``backend``: ``"auto"`` uses GPUs when CuPy sees them, ``"cpu"`` starts CPU
    workers even on a GPU machine, ``"gpu"`` fails unless GPUs are usable
    (embedded) or some worker advertises the ``GPU`` resource (remote).
    ``dashboard``: ``True`` (loopback, port 8787 or a free one), ``False``, or an
    address such as ``"0.0.0.0:8787"``. ``n_workers``/``threads_per_worker``
    override the sizing (embedded only). Connecting waits up to
    ``connect_timeout_s`` for the scheduler and ``worker_timeout_s`` for a first
    worker, then raises :class:`ClusterError` saying what to check.
    ``security``: a :class:`distributed.security.Security` for a ``tls://``
    scheduler (remote only); ``None`` takes Dask's configuration
    (``distributed.comm.tls.*``, e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``,
    ``..._CLIENT__CERT``, ``..._CLIENT__KEY``), and a ``tls://`` address
    without a CA and client certificate there is a :class:`ClusterError`.
    """
    from distributed import Client

    if backend not in ("auto", "cpu", "gpu"):
        raise ValueError(f"backend must be one of 'auto', 'cpu', 'gpu', not {backend!r}")
    if scheduler:
        if n_workers is not None or threads_per_worker is not None or allowed_failures is not None:
            raise ValueError("n_workers, threads_per_worker and allowed_failures size the embedded cluster; "
                             f"the workers of {scheduler} are sized where they are started (`dask worker "
                             "--nthreads N`) and allowed-failures is the scheduler's own setting")
        security = _client_security(scheduler, security)
        try:
            client = Client(scheduler, timeout=connect_timeout_s, set_as_default=False, security=security)
        except (OSError, TimeoutError) as e:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout_s:g} s ({e}); "
                "check that `dask scheduler` is running there and that the address, port and protocol "
                "(tcp:// or tls://) are right, or leave out --scheduler to use an embedded cluster") from e
        with client:
            try:
                client.wait_for_workers(1, timeout=worker_timeout_s)
            except TimeoutError as e:
                raise ClusterError(
                    f"the Dask scheduler at {scheduler} has no workers after {worker_timeout_s:g} s; "
                    f"start some with `dask worker {scheduler}` (add `--resources GPU=1` on GPU nodes)") from e
            info = cluster_info(client, embedded=False, dashboard_link=client.dashboard_link)
            if backend == "gpu" and not info.gpu:
                raise ClusterError(
                    f"backend 'gpu' was requested but no worker of {scheduler} advertises the {GPU} "
                    f"resource; start GPU workers with `dask worker {scheduler} --resources {GPU}=1`, "
                    "or use backend 'auto' / 'cpu'")
            yield client, info
        return

    if security is not None:
        raise ValueError("security (TLS) is for a remote scheduler; the embedded cluster listens on 127.0.0.1 only")
    from distributed.system import MEMORY_LIMIT
    from kernels import backend as kbackend

    count = 0 if backend == "cpu" else kbackend.gpu_count()
    if backend == "gpu" and count == 0:
        kbackend.resolve("gpu")  # raises with the message that says how to fix it
    plan = plan_workers(cores=_cores(), memory_bytes=MEMORY_LIMIT, devices=_visible_devices(count),
                        n_workers=n_workers, threads_per_worker=threads_per_worker)
    with _local_cluster(plan, dashboard, allowed_failures) as cluster, \
            Client(cluster, set_as_default=False) as client:
        link = cluster.dashboard_link if dashboard else None
        yield client, cluster_info(client, embedded=True, dashboard_link=link)


def _client_security(scheduler: str, security: Any = None):
    """The client's :class:`~distributed.security.Security` for ``scheduler``: the
    one given, else Dask's configuration; a ``tls://`` address needs a CA and a
    client certificate (the scheduler asks for one: mutual TLS)."""
    from distributed.security import Security

    security = security if security is not None else Security()
    if scheduler.startswith("tls://") and not (security.tls_ca_file and security.tls_client_cert):
        raise ClusterError(
            f"{scheduler} is a TLS scheduler but no TLS certificates are configured for the client; pass "
            "--tls-ca-file CA.pem --tls-cert CLIENT.pem --tls-key CLIENT-KEY.pem (see deploy/make-certs.sh), or "
            "set DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")
    return security


def has_dashboard() -> bool:
    """The dashboard's pages need bokeh; without it the link shows how to install it."""
    return importlib.util.find_spec("bokeh") is not None
