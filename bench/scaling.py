"""Scheduler overhead, journal commit rate and per-worker render throughput: the inputs of deploy/SCALING.md.

    .venv/bin/python bench/scaling.py [--tasks 2000] [--windows auto,0] [--no-dask-procs]
                                      [--journal-records 1000] [--hash-mb 30]
                                      [--tracks 8] [--seconds 30] [--presets streaming,master]
                                      [--workers 1,2] [--skip-overhead] [--skip-journal] [--skip-render]
                                      [--workdir DIR]

A. Scheduler overhead. ``farm.runner.run_tasks`` (the code ``farm render``
   uses: windows of ``client.map``, ``as_completed``, one journal record per
   result) with :func:`noop_task`, a module-level task that returns an ok
   ``TrackResult`` at once (no audio), for ``--tasks`` tasks, on
   (1) an embedded ``LocalCluster`` (``farm.cluster.open_client``: worker
   processes, 1 thread each) and (2) a real ``dask scheduler`` plus
   ``dask worker`` processes on 127.0.0.1 (``tests/dask_procs.py``), each
   without and with the SQLite journal, for each ``--windows`` value
   (``auto`` = run_tasks' default of 2 x the cluster's threads in flight;
   ``0`` = the whole catalog submitted at once). Every task's input and
   output exist (1 KiB files), so the journal path hashes both and commits
   one row per task as in a render. Gives tasks/s and ms of overhead per task.
B. Journal alone (no cluster): ``Journal.input_hash`` of new files (a hash +
   a cache commit each), ``Journal.record`` (one ``BEGIN IMMEDIATE ... COMMIT``
   with ``synchronous=FULL`` each) -> commits/s, and ``journal.file_hash`` of
   a ``--hash-mb`` MiB file -> MB/s (the client hashes every input before
   submission and every output when it records it), and ``Journal.record``
   of ``--big-records`` results whose master is a ``--hash-mb`` MiB file.
C. Render throughput. A catalog of ``--tracks`` x ``--seconds`` s stereo
   48 kHz 24-bit FLAC tracks (``farm.demo.make_catalog``, as bench/render.py),
   rendered with ``farm.pipeline.render_job`` (what ``farm render`` runs) on
   an embedded cluster of N worker processes x 1 thread, backend cpu, for
   each N in ``--workers`` and each preset. Cluster start-up is timed apart
   (``open_client`` with no tasks) and subtracted for the steady rate.
   Prints tracks/s, audio-seconds/s (RTF) and the per-step split of the
   workers' time from report.json: codec (decode, encode, tag, validate =
   re-decode + measure + tag read-back) vs DSP (measure_input, resample, chain).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # dask_procs: real scheduler/worker processes

from farm.records import STATUS_OK, TrackResult  # noqa: E402

CODEC_STEPS = ("decode", "encode", "tag", "validate")
DSP_STEPS = ("measure_input", "resample", "upload", "chain")


def noop_task(task) -> TrackResult:
    """Returns an ok record at once: what is left is the cluster's and the client's overhead."""
    return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_OK, output=task.out_path,
                       preset=task.preset, worker="noop")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# ------------------------------------------------------------------ A. scheduler overhead

def make_noop_tasks(folder: str, n: int) -> list:
    from dask_procs import make_task

    src_dir, out_dir = os.path.join(folder, "in"), os.path.join(folder, "out")
    os.makedirs(src_dir), os.makedirs(out_dir)
    blob = os.urandom(1024)
    tasks = []
    for i in range(1, n + 1):
        src = os.path.join(src_dir, f"t{i:06d}.flac")
        with open(src, "wb") as f:
            f.write(blob)
        t = make_task(i, src, out_dir)
        with open(t.out_path, "wb") as f:  # the journal hashes an ok result's output
            f.write(blob)
        tasks.append(t)
    return tasks


def time_run(client, tasks, journal_dir: str | None, window) -> float:
    """Wall seconds of run_tasks over ``tasks`` (journal opened before the clock starts)."""
    from farm.journal import Journal
    from farm.runner import run_tasks

    journal = Journal(journal_dir) if journal_dir else None
    try:
        t0 = time.perf_counter()
        results = run_tasks(client, tasks, task_fn=noop_task, journal=journal, progress=False, retries=0,
                            resources=None, max_in_flight=None if window == "auto" else int(window))
        wall = time.perf_counter() - t0
    finally:
        if journal is not None:
            journal.close()
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} noop task(s) failed, first: {bad[0].reason}")
    return wall


def overhead(args, workdir: str) -> list[dict]:
    from farm.cluster import open_client

    rows = []
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]

    def series(label, client, threads):
        client.submit(noop_task, make_noop_tasks(os.path.join(workdir, f"warm-{len(rows)}"), 1)[0],
                      pure=False).result()  # warm: the function reaches every worker once
        for window in windows:
            for journaled in (False, True):
                tag = f"{label}-w{window}-{'j' if journaled else 'nj'}"
                tasks = make_noop_tasks(os.path.join(workdir, tag), args.tasks)
                jdir = os.path.join(workdir, tag, "out") if journaled else None
                wall = time_run(client, tasks, jdir, window)
                win = f"{2 * threads}" if window == "auto" else ("all" if window == "0" else window)
                row = dict(cluster=label, window=win, journal=journaled, tasks=len(tasks), wall_s=wall,
                           tasks_per_s=len(tasks) / wall, ms_per_task=wall / len(tasks) * 1000)
                rows.append(row)
                print(f"  {label:34s} in flight {win:>4s}  journal {'yes' if journaled else 'no ':3s}  "
                      f"{len(tasks):6d} tasks {wall:7.2f} s  {row['tasks_per_s']:7.1f} tasks/s  "
                      f"{row['ms_per_task']:6.2f} ms/task", flush=True)
                shutil.rmtree(os.path.join(workdir, tag), ignore_errors=True)

    n = args.overhead_workers
    print(f"\n## A. scheduler overhead: run_tasks(task_fn=noop_task), {args.tasks} tasks, "
          f"{n} worker processes x 1 thread, retries=0 (loadavg {loadavg()})", flush=True)
    with open_client(None, "cpu", n, 1, False) as (client, _):
        series(f"embedded LocalCluster ({n} procs)", client, n)
    if not args.no_dask_procs:
        from dask_procs import DaskProcs

        pdir = os.path.join(workdir, "dask-procs")
        os.makedirs(pdir)
        with DaskProcs(pdir) as procs:
            address = procs.start_scheduler()
            for i in range(n):
                procs.start_worker(f"w{i}", nthreads=1)
            procs.wait_for_workers(n)
            with open_client(address, "cpu") as (client, _):
                series(f"dask scheduler + {n} dask worker", client, n)
    return rows


# ------------------------------------------------------------------ B. journal alone

def journal_alone(args, workdir: str) -> dict:
    from farm.journal import Journal, file_hash

    print(f"\n## B. journal alone (SQLite WAL, synchronous=FULL, on {workdir}; loadavg {loadavg()})", flush=True)
    n = args.journal_records
    tasks = make_noop_tasks(os.path.join(workdir, "journal"), n)
    out = {}
    with Journal(os.path.join(workdir, "journal", "out")) as j:
        t0 = time.perf_counter()
        hashes = [j.input_hash(t.track.source) for t in tasks]
        dt = time.perf_counter() - t0
        out["input_hash_per_s"] = n / dt
        print(f"  Journal.input_hash, new 1 KiB files (hash + cache commit each): {n} in {dt:.2f} s = "
              f"{n / dt:7.1f}/s ({dt / n * 1000:.2f} ms each)")
        results = [noop_task(t) for t in tasks]
        t0 = time.perf_counter()
        for t, h, r in zip(tasks, hashes, results):
            j.record(t, h, r)
        dt = time.perf_counter() - t0
        out["record_per_s"] = n / dt
        print(f"  Journal.record, ok results (output hash + one commit each):  {n} in {dt:.2f} s = "
              f"{n / dt:7.1f}/s ({dt / n * 1000:.2f} ms each)")
    big = os.path.join(workdir, "hash.bin")
    block = os.urandom(1 << 20)
    with open(big, "wb") as f:
        for _ in range(args.hash_mb):
            f.write(block)
    file_hash(big)  # warm the page cache: the rate below is the hash's, not the disk's
    best = min(_timed(file_hash, big) for _ in range(3))
    out["sha256_mb_per_s"] = args.hash_mb * 1.048576 / best
    print(f"  journal.file_hash (SHA-256) of a {args.hash_mb} MiB file in the page cache: best of 3 {best:.3f} s = "
          f"{out['sha256_mb_per_s']:.0f} MB/s")
    # What landing one real track costs the client: record() hashes the master it is given.
    k = args.big_records
    tasks = make_noop_tasks(os.path.join(workdir, "journal-big"), k)
    for t in tasks:
        shutil.copyfile(big, t.out_path)  # a fresh file (not yet in the journal's hash cache), in the page cache
    with Journal(os.path.join(workdir, "journal-big", "out")) as j:
        hashes = [j.input_hash(t.track.source) for t in tasks]
        t0 = time.perf_counter()
        for t, h in zip(tasks, hashes):
            j.record(t, h, noop_task(t))
        dt = time.perf_counter() - t0
    out["record_big_per_s"] = k / dt
    print(f"  Journal.record with a {args.hash_mb} MiB master each (what run_tasks does per landed track): {k} in "
          f"{dt:.2f} s = {k / dt:6.1f}/s ({dt / k * 1000:.1f} ms each)")
    os.unlink(big)
    shutil.rmtree(os.path.join(workdir, "journal-big"), ignore_errors=True)
    shutil.rmtree(os.path.join(workdir, "journal"), ignore_errors=True)
    return out


def _fft_env():
    return os.environ.get("FARM_FFT_WORKERS")


def _timed(fn, *a) -> float:
    t0 = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t0


# ------------------------------------------------------------------ C. render throughput

def make_inputs(folder: str, tracks: int, seconds: float) -> tuple[str, float, int]:
    import soundfile as sf

    from farm.demo import DemoTrack, make_catalog

    bpms = (124.0, 96.0, 132.0, 110.0)
    peaks = (-1.0, -6.0, -3.0, -9.0)
    specs = [DemoTrack(f"Scale Track {i + 1}", seconds, 48000, "flac", "PCM_24", peaks[i % 4], bpms[i % 4])
             for i in range(tracks)]
    catalog = make_catalog(folder, tracks=tuple(specs), seed=4343)
    total, size = 0.0, 0
    for name in os.listdir(folder):
        if name.endswith(".flac"):
            p = os.path.join(folder, name)
            info = sf.info(p)
            total += info.frames / info.samplerate
            size += os.path.getsize(p)
    return catalog, total, size


def render_throughput(args, workdir: str) -> list[dict]:
    from farm.cluster import open_client
    from farm.job import job_from_flags
    from farm.pipeline import render_job

    cat_dir = os.path.join(workdir, "catalog")
    t0 = time.perf_counter()
    catalog, audio_s, in_bytes = make_inputs(cat_dir, args.tracks, args.seconds)
    print(f"\n## C. render throughput: {args.tracks} x {args.seconds:g} s stereo 48 kHz 24-bit FLAC "
          f"= {audio_s:.0f} audio s, {in_bytes / 1e6:.1f} MB in ({in_bytes / 1e6 / audio_s * 240:.1f} MB per "
          f"4 min), written in {time.perf_counter() - t0:.1f} s; backend cpu, N worker processes x 1 thread",
          flush=True)
    rows = []
    for n in [int(w) for w in args.workers.split(",")]:
        t0 = time.perf_counter()
        with open_client(None, "cpu", n, 1, False) as (client, _):
            fft = sorted(set(client.run(_fft_env).values()))
        startup = time.perf_counter() - t0
        print(f"  N={n}: embedded cluster start+stop with no tasks: {startup:.2f} s (FARM_FFT_WORKERS {fft})")
        for preset in args.presets.split(","):
            out_dir = os.path.join(workdir, f"render-{preset}-n{n}")
            job = job_from_flags(catalog, preset, out_dir, backend="cpu")
            load0 = loadavg()
            t0 = time.perf_counter()
            outcome = render_job(job, force=True, backend="cpu", n_workers=n, threads_per_worker=1,
                                 dashboard=False, progress=False)
            wall = time.perf_counter() - t0
            with open(os.path.join(out_dir, "report.json"), encoding="utf-8") as f:
                rep = json.load(f)
            ok = sum(1 for t in rep["tracks"] if t.get("status") == STATUS_OK)
            out_bytes = sum(os.path.getsize(t["output"]) for t in rep["tracks"] if t.get("output")
                            and os.path.exists(t["output"]))
            steps: dict[str, float] = {}
            for t in rep["tracks"]:
                for k, v in t.get("timings", {}).items():
                    steps[k] = steps.get(k, 0.0) + v
            k_tr = len(rep["tracks"])
            steady = max(wall - startup, 1e-9)
            codec = sum(steps.get(k, 0.0) for k in CODEC_STEPS)
            dsp = sum(steps.get(k, 0.0) for k in DSP_STEPS)
            total = steps.get("total", 0.0)
            per4 = 240.0 / (audio_s / k_tr)  # scale per-track seconds to a 4-minute track (linear in length)
            row = dict(workers=n, preset=preset, tracks=k_tr, ok=ok, audio_s=audio_s, wall_s=wall,
                       startup_s=startup, tracks_per_s=k_tr / wall, rtf=audio_s / wall,
                       steady_tracks_per_s=k_tr / steady, steady_rtf=audio_s / steady,
                       codec_s_per_track=codec / k_tr, dsp_s_per_track=dsp / k_tr, total_s_per_track=total / k_tr,
                       codec_s_per_4min=codec / k_tr * per4, dsp_s_per_4min=dsp / k_tr * per4,
                       out_mb_per_4min=out_bytes / 1e6 / audio_s * 240,
                       steps={k: round(v / k_tr, 4) for k, v in steps.items()}, load_start=load0, load_end=loadavg())
            rows.append(row)
            print(f"  N={n} {preset:9s} {ok}/{k_tr} ok  wall {wall:6.2f} s  {row['tracks_per_s']:.3f} tracks/s  "
                  f"RTF {row['rtf']:5.1f}x  | minus start-up: {row['steady_tracks_per_s']:.3f} tracks/s, "
                  f"RTF {row['steady_rtf']:5.1f}x  (loadavg {load0} -> {row['load_end']})")
            order = [k for k in ("decode", "measure_input", "resample", "upload", "chain", "encode", "tag",
                                 "validate") if k in steps]
            print("      per track (s): " + ", ".join(f"{k} {steps[k] / k_tr:.3f}" for k in order)
                  + f", total {total / k_tr:.3f}")
            print(f"      codec (decode+encode+tag+validate) {codec / k_tr:.3f} s = {codec / total * 100:.0f}% | "
                  f"DSP (measure_input+resample+chain) {dsp / k_tr:.3f} s = {dsp / total * 100:.0f}% | "
                  f"per 4-min track: codec {row['codec_s_per_4min']:.2f} s, DSP {row['dsp_s_per_4min']:.2f} s, "
                  f"output {row['out_mb_per_4min']:.1f} MB", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=2000, help="noop tasks per overhead run (default 2000)")
    ap.add_argument("--windows", default="auto,0",
                    help="max_in_flight values for A: auto (2 x threads, the default of farm render), 0 (all "
                         "at once) or a number; comma-separated (default auto,0)")
    ap.add_argument("--overhead-workers", type=int, default=2, help="worker processes for A (default 2)")
    ap.add_argument("--no-dask-procs", action="store_true", help="A: skip the real dask scheduler/worker processes")
    ap.add_argument("--journal-records", type=int, default=1000, help="B: journal records to time (default 1000)")
    ap.add_argument("--hash-mb", type=int, default=30, help="B: size of the file hashed, MiB (default 30)")
    ap.add_argument("--big-records", type=int, default=20,
                    help="B: journal records with a --hash-mb master each (default 20)")
    ap.add_argument("--tracks", type=int, default=8, help="C: tracks in the catalog (default 8)")
    ap.add_argument("--seconds", type=float, default=30.0, help="C: seconds per track (default 30)")
    ap.add_argument("--presets", default="streaming,master", help="C: presets, comma-separated")
    ap.add_argument("--workers", default="1,2", help="C: worker-process counts, comma-separated (default 1,2)")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-journal", action="store_true")
    ap.add_argument("--skip-render", action="store_true")
    ap.add_argument("--workdir", help="scratch folder (default: a new one in the temp dir, removed at the end)")
    ap.add_argument("--json", help="also write every measured row to this JSON file")
    args = ap.parse_args(argv)

    import dask
    import distributed
    import numpy

    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="farm-bench-scaling-"))
    os.makedirs(workdir, exist_ok=True)
    print(f"$ {' '.join([os.path.relpath(sys.executable, ROOT), *sys.argv])}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} {socket.gethostname()}: {cpu_model()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}, numpy {numpy.__version__}, "
          f"dask {dask.__version__}, distributed {distributed.__version__}")
    print(f"# loadavg at start {loadavg()}; scratch {workdir}", flush=True)
    out: dict = {"argv": sys.argv, "date": time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                 "host": socket.gethostname(), "cores": os.cpu_count(), "load_start": loadavg()}
    try:
        if not args.skip_overhead:
            out["overhead"] = overhead(args, workdir)
        if not args.skip_journal:
            out["journal"] = journal_alone(args, workdir)
        if not args.skip_render:
            out["render"] = render_throughput(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    out["load_end"] = loadavg()
    print(f"\n# loadavg at end {out['load_end']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
