"""Faults during `farm render` on real `dask scheduler` / `dask worker` processes (issue 4).

Each test starts its own scheduler and workers on 127.0.0.1 (the fault breaks
them), runs the real console script as a subprocess, breaks something mid-run
and then checks that every good track ends rendered exactly once: one final
master per track (and no temporary file left), a journal entry that is ok, a
report verdict of pass, loudness and true peak in spec both in the report and
re-measured here, and the inputs byte-identical.

"Mid-track" and "mid-run" are reached by waiting on conditions (a ``.partial``
file appearing, the scheduler reporting the task on a worker, journal rows),
never by sleeping a guessed time: one track is long (~75 s of audio) so that
the window stays open for seconds even on a loaded 2-core machine.

1. a worker SIGKILLed while writing a master: the scheduler reruns the task on
   the other worker; the dead worker's ``.partial`` is removed at the end of the
   run (:func:`farm.pipeline.remove_stray_partials`); run twice, over plain TCP
   and over mutual TLS (scheduler, workers and client with certificates from
   ``deploy/make-certs.sh``);
2. the client SIGKILLed mid-run: the rerun renders only what the journal lacks;
3. the output disk full (a small tmpfs; skipped where mounting is not allowed):
   the track that does not fit fails naming its master and the full disk;
4. the scheduler SIGKILLed mid-run: the client exits in bounded time naming the
   scheduler, the journal keeps what finished, a rerun on a new one finishes;
5. GPU out of memory: :func:`farm.render.master_with_fallback` reruns the chain
   on the CPU. On a CPU-only machine only the choice is checked (a chain that
   raises MemoryError); the real CuPy OOM test is marked ``gpu``.
"""
from __future__ import annotations

import contextlib

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import soundfile as sf

from dask_procs import DaskProcs
from farm.synth import music
from kernels import loudness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FARM = os.path.join(os.path.dirname(sys.executable), "farm")
JOURNAL = ".farm-journal.sqlite"
NOT_MASTERS = ("report.json", "report.csv", JOURNAL, JOURNAL + "-wal", JOURNAL + "-shm")
RATE = 44100
LONG_S = 75.0  # the long track: seconds of audio (a few seconds of rendering)
SHORT_S = 2.5
TARGET, TOL, CEILING = -14.0, 1.0, -1.0  # the streaming preset
RUN_TIMEOUT_S = 240  # one `farm render` on a loaded 2-core machine, generously

# the process tests; the GPU-fallback unit tests at the end start no processes
integration = pytest.mark.integration


# ---------------------------------------------------------------- processes

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env.pop("FARM_PRESET_PATH", None)
    return env


class Procs(DaskProcs):
    """Scheduler and workers that import farm/kernels from this checkout."""

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["PYTHONPATH"] = os.pathsep.join((REPO, env["PYTHONPATH"]))
        return env

    def kill(self, name: str) -> None:
        """SIGKILL one process we started (its own session: exactly its group)."""
        self._signal(self.procs[name], signal.SIGKILL)
        self.procs[name].wait(10)


def cluster(workdir, n_workers: int = 2, tls: bool = False) -> tuple[Procs, dict[str, str]]:
    """A scheduler and ``n_workers`` workers; with ``tls`` all of them (and every client
    the tests open) speak mutual TLS with certificates from deploy/make-certs.sh."""
    os.makedirs(workdir, exist_ok=True)
    tls_dir = None
    if tls:
        tls_dir = os.path.join(workdir, "tls")
        p = subprocess.run([os.path.join(REPO, "deploy", "make-certs.sh"), tls_dir], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    procs = Procs(str(workdir), timeout_s=60.0, tls_dir=tls_dir)
    try:
        procs.start_scheduler()
        for i in range(n_workers):
            procs.start_worker(f"w{i + 1}")
        return procs, procs.wait_for_workers(n_workers)
    except BaseException:
        procs.close()
        raise


class Farm:
    """`farm render` started as a subprocess (own session, output to files)."""

    def __init__(self, root, catalog, out, scheduler: str, tag: str, tls_dir: str | None = None):
        self.stdout_path, self.stderr_path = root / f"{tag}.out", root / f"{tag}.err"
        args = [FARM, "render", str(catalog), "--preset", "streaming", "-o", str(out), "--naming", "{title}",
                "--scheduler", scheduler, "--no-progress"]
        if tls_dir:
            args += ["--tls-ca-file", os.path.join(tls_dir, "ca.pem"), "--tls-cert",
                     os.path.join(tls_dir, "client.pem"), "--tls-key", os.path.join(tls_dir, "client-key.pem")]
        with open(self.stdout_path, "wb") as o, open(self.stderr_path, "wb") as e:
            self.proc = subprocess.Popen(args, cwd=root, env=_env(), stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"farm render still running after {timeout} s\n{self}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    @property
    def out(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def __str__(self) -> str:
        return f"exit {self.proc.poll()}\n--- stdout\n{self.out[-4000:]}\n--- stderr\n{self.err[-4000:]}"


def wait_for(cond, timeout: float, what: str, *, every: float = 0.01, alive: Farm | None = None):
    """Poll ``cond()`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if alive is not None and alive.proc.poll() is not None:
            pytest.fail(f"farm render ended before {what}\n{alive}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}" + (f"\n{alive}" if alive else ""))


# ---------------------------------------------------------------- catalog and checks

def make_catalog(root, tracks: list[tuple[str, float]]):
    """Stereo 16-bit WAVs under root/audio, a catalog naming them (title = name); input hashes."""
    (root / "audio").mkdir()
    rows = []
    for i, (name, seconds) in enumerate(tracks):
        x = music(seconds, RATE, channels=2, seed=40 + i)
        sf.write(str(root / "audio" / f"{name}.wav"), np.ascontiguousarray(x.T), RATE, subtype="PCM_16")
        rows.append({"File": f"audio/{name}.wav", "Title": name, "Artist": "Fault Line"})
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "catalog.csv", {n: sha256(root / "audio" / f"{n}.wav") for n, _ in tracks}


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def stamp(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def journal_rows(out) -> dict[str, dict]:
    """Track name -> {status, attempts, output} as the journal holds it (read-only, live-safe)."""
    path = os.path.join(out, JOURNAL)
    if not os.path.exists(path):
        return {}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = con.execute("SELECT source, status, attempts, output FROM tracks").fetchall()
        finally:
            con.close()
    except sqlite3.OperationalError:  # created but not yet holding its schema
        return {}
    return {os.path.splitext(os.path.basename(s))[0]: {"status": st, "attempts": a, "output": o}
            for s, st, a, o in rows}


def ok_in_journal(out) -> set[str]:
    return {n for n, r in journal_rows(out).items() if r["status"] == "ok"}


def partials(out) -> list[str]:
    try:
        return sorted(n for n in os.listdir(out) if ".partial" in n)
    except FileNotFoundError:
        return []


def report(out) -> dict:
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        return json.load(f)


def check_rendered(out, root, hashes: dict[str, str], good: list[str]) -> dict:
    """Every track in ``good`` rendered exactly once and in spec; inputs untouched. Returns report.json."""
    doc = report(out)
    by_title = {t["title"]: t for t in doc["tracks"]}
    masters = {n for n in os.listdir(out) if n not in NOT_MASTERS}
    assert not partials(out), partials(out)
    journal = journal_rows(out)
    for name in good:
        t = by_title[name]
        assert t["verdict"] == "pass" and t["status"] == "ok", t
        assert t["output"] == os.path.join(str(out), f"{name}.flac"), t
        assert journal[name]["status"] == "ok" and journal[name]["output"] == t["output"], journal[name]
        r = t["result"]
        assert abs(r["integrated_lufs"] - TARGET) <= TOL and r["true_peak_dbtp"] <= CEILING, r
        data, rate = sf.read(t["output"], dtype="float64", always_2d=True)  # re-measured here
        x = np.ascontiguousarray(data.T)
        assert rate == RATE and x.shape[0] == 2
        assert abs(loudness.integrated_loudness(x, rate) - TARGET) <= TOL
        assert loudness.true_peak_dbtp(x, 4) <= CEILING + 0.05  # our 4x meter vs the farm's; ceiling + slack
    # exactly one master per good track (failed tracks leave nothing)
    assert {m for m in masters if m.endswith(".flac")} == {f"{n}.flac" for n in good}, masters
    for name, h in hashes.items():
        assert sha256(root / "audio" / f"{name}.wav") == h, f"input {name} changed"
    return doc


def processing_on(address: str, key_prefix: str, security=None) -> str | None:
    """The worker address the scheduler has ``key_prefix*`` processing on, if any."""
    from distributed import Client

    with Client(address, timeout=30, set_as_default=False, security=security) as client:
        for worker, keys in client.processing().items():
            if any(str(k).startswith(key_prefix) for k in keys):
                return worker
    return None


def idle_workers(address: str) -> bool:
    """No worker thread executes anything (tasks of a dead client keep running until they end)."""
    from distributed import Client

    def busy(dask_worker):
        return len(dask_worker.active_threads) + dask_worker.state.executing_count

    with Client(address, timeout=30, set_as_default=False) as client:
        return not any(client.run(busy).values())


# ---------------------------------------------------------------- 1. a worker killed mid-track

@integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_worker_killed_mid_track_is_rendered_elsewhere_and_its_partial_removed(tmp_path, tls):
    catalog, hashes = make_catalog(tmp_path, [("long", LONG_S), ("a", SHORT_S), ("b", SHORT_S), ("c", SHORT_S)])
    out = tmp_path / "out"
    procs, names = cluster(tmp_path / "dask", tls=tls)
    assert procs.address.startswith("tls://" if tls else "tcp://"), procs.address
    by_address = {a: n for n, a in names.items()}
    farm = None
    try:
        farm = Farm(tmp_path, catalog, out, procs.address, "run", tls_dir=procs.tls_dir)
        # Mid-track: the long track's temporary master exists (its worker is encoding,
        # tagging or validating it, for seconds), and the scheduler has it on a worker.
        stray = wait_for(lambda: [n for n in partials(out) if n.startswith(".long.")], 180,
                         "the long track's .partial file", alive=farm)[0]
        victim = by_address[processing_on(procs.address, "render_track-row000001-", procs.security)]
        procs.kill(victim)
        assert os.path.exists(out / stray), "the kill came too late to leave a partial file"
        code = farm.wait()
        assert code == 0, farm
        doc = check_rendered(out, tmp_path, hashes, ["long", "a", "b", "c"])
        survivor = "w2" if victim == "w1" else "w1"
        long = next(t for t in doc["tracks"] if t["title"] == "long")
        assert long["worker"].startswith(survivor), long["worker"]  # rerun on the other worker
        assert not (out / stray).exists()  # the dead worker's partial was cleaned up ...
        assert "removed 1 temporary file(s) left by renders that were killed mid-write" in farm.err, farm
        assert procs.procs[victim].returncode == -signal.SIGKILL
        assert all(r["attempts"] == 1 for r in journal_rows(out).values())  # ... and each track landed once
    finally:
        if farm is not None:
            farm.kill()
        procs.close()


# ---------------------------------------------------------------- 2. the client killed mid-run

@integration
@pytest.mark.timeout(600)
def test_client_killed_mid_run_resumes_from_the_journal(tmp_path):
    tracks = [("long", LONG_S)] + [(f"s{i}", SHORT_S) for i in range(1, 5)]
    catalog, hashes = make_catalog(tmp_path, tracks)
    out = tmp_path / "out"
    procs, _ = cluster(tmp_path / "dask")
    farm = rerun = None
    try:
        farm = Farm(tmp_path, catalog, out, procs.address, "run1")
        wait_for(lambda: len(ok_in_journal(out)) >= 2, 180, "two tracks in the journal", every=0.05, alive=farm)
        farm.kill()
        done = ok_in_journal(out)  # read after the kill: exactly what the journal kept
        assert 2 <= len(done) < len(tracks) and "long" not in done, done
        before = {n: stamp(out / f"{n}.flac") for n in done}
        # The cluster still finishes the dead client's running task (Dask cannot stop a
        # thread); wait for that, so that its late write cannot land during the checks.
        wait_for(lambda: idle_workers(procs.address), 180, "the workers to go idle", every=0.5)
        rerun = Farm(tmp_path, catalog, out, procs.address, "run2")
        assert rerun.wait() == 0, rerun
        doc = check_rendered(out, tmp_path, hashes, [n for n, _ in tracks])
        assert doc["job"]["rendered"] == len(tracks) - len(done) and doc["job"]["skipped"] == len(done), doc["job"]
        assert f"({len(tracks) - len(done)} rendered, {len(done)} unchanged since the last run" in rerun.out
        journal = journal_rows(out)
        for n in done:  # finished before the kill: not rendered again
            assert stamp(out / f"{n}.flac") == before[n]
            assert journal[n]["attempts"] == 1
    finally:
        for f in (farm, rerun):
            if f is not None:
                f.kill()
        procs.close()


# ---------------------------------------------------------------- 3. the output disk full

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs as the output folder (needs the right to mount: root or CAP_SYS_ADMIN)."""
    mnt = tmp_path / "out"
    mnt.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if not mount or not umount:
        pytest.skip("no mount/umount here to make a small filesystem")
    p = subprocess.run([mount, "-t", "tmpfs", "-o", "size=3m,mode=0755", f"farm-full-{uuid.uuid4().hex[:8]}",
                        str(mnt)], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root or CAP_SYS_ADMIN): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run([umount, "-l", str(mnt)], capture_output=True, timeout=30)


@integration
@pytest.mark.timeout(600)
def test_disk_full_fails_the_track_that_does_not_fit_and_the_rest_render(tmp_path, small_disk):
    # One worker: tracks run one after another, so the big track's failed write
    # cannot take space from a small track being written at the same moment.
    catalog, hashes = make_catalog(tmp_path, [("a", SHORT_S), ("big", 30.0), ("b", SHORT_S)])
    out = small_disk
    procs, _ = cluster(tmp_path / "dask", n_workers=1)
    farm = None
    try:
        farm = Farm(tmp_path, catalog, out, procs.address, "run")
        assert farm.wait() == 3, farm
        doc = check_rendered(out, tmp_path, hashes, ["a", "b"])
        big = next(t for t in doc["tracks"] if t["title"] == "big")
        assert big["verdict"] == "FAIL" and big["output"] in (None, ""), big
        reason = big["reason"]
        assert reason.startswith(str(tmp_path / "audio" / "big.wav") + ":"), reason
        assert f"cannot write the master {out / 'big.flac'}" in reason and "No space left on device" in reason
        assert not (out / "big.flac").exists() and not partials(out)
        assert journal_rows(out)["big"]["status"] == "failed"
        assert doc["totals"]["failed"] == 1 and doc["totals"]["passed"] == 2
        assert "1 failed" in farm.out, farm  # the summary counts it (report.json holds the full reason)
    finally:
        if farm is not None:
            farm.kill()
        procs.close()


# ---------------------------------------------------------------- 4. the scheduler killed mid-run

@integration
@pytest.mark.timeout(600)
def test_scheduler_killed_mid_run_client_exits_and_a_rerun_finishes(tmp_path):
    tracks = [("long", LONG_S)] + [(f"s{i}", SHORT_S) for i in range(1, 5)]
    catalog, hashes = make_catalog(tmp_path, tracks)
    out = tmp_path / "out"
    procs, _ = cluster(tmp_path / "dask1")
    procs2 = None
    farm = rerun = None
    try:
        farm = Farm(tmp_path, catalog, out, procs.address, "run1")
        wait_for(lambda: len(ok_in_journal(out)) >= 2, 180, "two tracks in the journal", every=0.05, alive=farm)
        procs.kill("scheduler")
        t0 = time.monotonic()
        code = farm.wait(120)
        took = time.monotonic() - t0
        # A lost scheduler is a cluster problem (exit 2, as for one that cannot be reached),
        # not a failure of the tracks in flight: they are neither journaled nor reported as failed.
        assert code == 2 and took < 60, (took, str(farm))
        last = farm.err.strip().splitlines()[-1]
        assert last.startswith(f"farm render: lost the connection to the Dask scheduler at {procs.address} "
                               "mid-run:"), farm
        assert "run the same command again" in last, farm
        journal = journal_rows(out)  # the journal opens and holds exactly what finished
        done = ok_in_journal(out)
        assert len(done) >= 2 and "long" not in done and set(journal) == done, journal
        assert f"{len(done)} of {len(tracks)} track(s) finished" in last, farm
        before = {n: stamp(out / f"{n}.flac") for n in done}
        # The old workers go (they would exit after --death-timeout anyway); one may die
        # writing the long track's master, whose .partial the rerun then removes.
        procs.close()

        procs2, _ = cluster(tmp_path / "dask2")
        rerun = Farm(tmp_path, catalog, out, procs2.address, "run2")
        assert rerun.wait() == 0, rerun
        doc = check_rendered(out, tmp_path, hashes, [n for n, _ in tracks])
        assert doc["job"]["skipped"] == len(done) and doc["job"]["rendered"] == len(tracks) - len(done)
        for n in done:
            assert stamp(out / f"{n}.flac") == before[n]
    finally:
        for f in (farm, rerun):
            if f is not None:
                f.kill()
        procs.close()
        if procs2 is not None:
            procs2.close()


# ---------------------------------------------------------------- 5. GPU out of memory

def _task(tmp_path, seconds: float = SHORT_S):
    """One render task for a fresh WAV, built as `farm render` builds it."""
    from farm.job import job_from_flags

    catalog, _ = make_catalog(tmp_path, [("t", seconds)])
    (task,) = job_from_flags(str(catalog), "streaming", str(tmp_path / "out")).tasks()
    return task


def test_gpu_oom_choice_reruns_the_chain_on_the_cpu():
    """The CPU-side check of the fallback logic: a chain that raises MemoryError
    (what CuPy's OutOfMemoryError is) on "gpu". Whether a real device OOM arrives as
    such an error, and whether the pools are freed, only the ``gpu`` tests below check."""
    from farm.render import GPU_OOM_BACKEND, master_with_fallback

    calls = []

    def chain(x, rate, params, ir, name, timings):
        calls.append(name)
        if name == "gpu":
            raise MemoryError("Out of memory allocating 8,589,934,592 bytes")
        return "res", "audio"

    assert master_with_fallback(None, RATE, None, None, "gpu", run_chain=chain) == ("res", "audio", GPU_OOM_BACKEND)
    assert calls == ["gpu", "cpu"]
    def no_memory(x, rate, params, ir, name, timings):
        calls.append(name)
        raise MemoryError("Out of memory")

    calls.clear()
    with pytest.raises(MemoryError):  # out of memory on the CPU itself is not hidden
        master_with_fallback(None, RATE, None, None, "cpu", run_chain=no_memory)
    assert calls == ["cpu"]
    calls.clear()
    with pytest.raises(MemoryError):  # nor when the CPU rerun runs out too
        master_with_fallback(None, RATE, None, None, "gpu", run_chain=no_memory)
    assert calls == ["gpu", "cpu"]

    def broken(x, rate, params, ir, name, timings):
        calls.append(name)
        raise ValueError("a bug, not memory")

    calls.clear()
    with pytest.raises(ValueError):  # only out-of-memory falls back
        master_with_fallback(None, RATE, None, None, "gpu", run_chain=broken)
    assert calls == ["gpu"]


def test_render_track_records_the_cpu_fallback(tmp_path, monkeypatch):
    """render_track end to end with the GPU pretended and its chain raising MemoryError:
    the track is mastered on the CPU, validated, and its result says why."""
    import farm.render as render

    real = render._run_chain

    def chain(x, rate, params, ir, name, timings):
        if name == "gpu":
            raise MemoryError("simulated device out of memory")
        return real(x, rate, params, ir, name, timings)

    resolve = render.backend.resolve  # "gpu" passes as usable; the CPU path stays real
    monkeypatch.setattr(render.backend, "resolve", lambda name="auto": "gpu" if name == "gpu" else resolve(name))
    # the pretended device holds the measured copies on the host, with no CUDA stream (and
    # refuses what the real one refuses: a name that is no backend)
    monkeypatch.setattr(render.backend, "to_device", lambda x, name="auto": (render.backend.resolve(name),
                                                                             np.asarray(x))[1])
    monkeypatch.setattr(render.backend, "track_stream", lambda name="auto": contextlib.nullcontext())
    monkeypatch.setattr(render, "_run_chain", chain)
    task = dataclasses.replace(_task(tmp_path), backend="gpu")
    r = render.render_track(task)
    assert r.ok, r.reason
    assert r.backend == render.GPU_OOM_BACKEND == "cpu (gpu out of memory)"
    assert abs(r.result["integrated_lufs"] - TARGET) <= TOL and r.result["true_peak_dbtp"] <= CEILING
    assert os.path.exists(task.out_path) and not partials(os.path.dirname(task.out_path))


def test_a_measurement_out_of_gpu_memory_runs_on_the_host(monkeypatch):
    """render._measured: the meters run where the track is (the device on a GPU
    worker); out of device memory they run on the host instead, and any other
    error is not swallowed."""
    import farm.render as render
    from farm.audio import Decoded

    x = music(4.0, RATE, 2, seed=5).astype(np.float32)
    dec = Decoded(np.ascontiguousarray(x.T), RATE, "WAV", "PCM_24", "/in/x.wav")
    real = render._stats
    calls = []

    def stats(a, rate):
        calls.append(a)
        if len(calls) == 1:
            raise MemoryError("simulated device out of memory")
        return real(a, rate)

    monkeypatch.setattr(render, "_on_backend", lambda d, name: d.audio.copy())  # a "device" copy
    monkeypatch.setattr(render, "_stats", stats)
    held, st, series = render._measured(dec, "gpu")
    assert held is dec.audio and calls[1] is dec.audio  # measured again on the host array itself
    want, want_series = real(x, RATE)
    assert st == want and np.array_equal(series, want_series)

    def broken(a, rate):
        raise ValueError("not an out-of-memory")

    monkeypatch.setattr(render, "_stats", broken)
    with pytest.raises(ValueError):
        render._measured(dec, "gpu")


@pytest.mark.gpu
def test_on_a_gpu_the_decoded_frames_go_up_as_read_and_are_transposed_there():
    """render._on_backend: the (samples, channels) frames are uploaded and transposed on
    the device; the host's (channels, samples) copy is never made."""
    import cupy

    import farm.render as render
    from farm.audio import Decoded

    x = music(2.0, RATE, 2, seed=8).astype(np.float32)
    dec = Decoded(np.ascontiguousarray(x.T), RATE, "WAV", "PCM_24", "/in/x.wav")
    dev = render._on_backend(dec, "gpu")
    assert isinstance(dev, cupy.ndarray) and dev.flags.c_contiguous and dev.shape == x.shape
    assert "audio" not in vars(dec)  # the cached host transpose was not needed
    assert np.array_equal(cupy.asnumpy(dev), x)


def test_the_second_meter_on_a_device_falls_back_to_pyloudnorm_when_out_of_memory(monkeypatch):
    """render._pyloudnorm: a master held on a device is measured there by pyloudnorm's
    arithmetic (kernels.pyloudnorm_meter); out of device memory, by pyloudnorm on the host."""
    import farm.render as render
    from kernels import pyloudnorm_meter

    x = music(3.0, RATE, 2, seed=6).astype(np.float32)
    host = render._pyloudnorm(x, RATE)
    real, calls = pyloudnorm_meter.integrated_loudness, []

    def port(a, rate):
        calls.append(a)
        if len(calls) == 1:
            raise MemoryError("simulated device out of memory")
        return real(a, rate)

    monkeypatch.setattr(pyloudnorm_meter, "integrated_loudness", port)
    monkeypatch.setattr(render.backend, "is_device", lambda a: a is x)  # x plays the device copy
    monkeypatch.setattr(render.backend, "to_host", lambda a: np.array(a))
    assert render._pyloudnorm(x, RATE) == host  # out of memory: pyloudnorm itself
    assert abs(render._pyloudnorm(x, RATE) - host) < 1e-9 and calls[-1] is x  # the port, on the "device"


@pytest.mark.gpu
def test_real_cupy_oom_is_recognised_and_falls_back(tmp_path):
    """On a GPU: a real oversized allocation raises what the fallback catches, and a
    render whose device memory is capped (CuPy's pool limit) comes out on the CPU."""
    import cupy

    import farm.render as render

    with pytest.raises(Exception) as e:
        cupy.empty(1 << 52, dtype=cupy.uint8)  # 4 PiB: more than any GPU has
    assert render._is_gpu_oom(e.value), repr(e.value)

    def oversized(x, rate, params, ir, name, timings):
        if name == "gpu":
            cupy.empty(1 << 52, dtype=cupy.uint8)
        return "res", "audio"

    assert render.master_with_fallback(None, RATE, None, None, "gpu", run_chain=oversized)[2] == "cpu (gpu out of memory)"

    pool = cupy.get_default_memory_pool()
    task = dataclasses.replace(_task(tmp_path), backend="gpu")
    pool.set_limit(size=1 << 20)  # 1 MiB: a 2.5 s stereo track's chain cannot fit
    try:
        r = render.render_track(task)
    finally:
        pool.set_limit(size=0)  # 0: no limit again
    assert r.ok, r.reason
    assert r.backend == "cpu (gpu out of memory)"
    # The failed attempt's blocks went back to the device (free_all_blocks), and the
    # CPU rerun allocated nothing on it. (Unverified here: written on a CPU-only machine.)
    assert pool.free_bytes() == 0
