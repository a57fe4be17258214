"""End-to-end realtime factor of ``farm render`` next to the codec floor.

    .venv/bin/python bench/render.py [--tracks 4] [--seconds 240] [--preset master]
                                     [--workdir DIR] [--backend auto|cpu|gpu] [--workers N]

1. Writes a catalog of ``--tracks`` synthetic (``farm.synth.music``) stereo
   tracks of ``--seconds`` each, alternating 48 kHz 24-bit WAV and 44.1 kHz
   16-bit FLAC, at different levels and tempi, with full metadata
   (``farm.demo.make_catalog``).
2. Codec floor: the same job through the same path (``render_job`` ->
   journal -> embedded Dask cluster -> one task per track -> journal ->
   reports) with ``task_fn`` = :func:`codec_only`, which only decodes the
   input (``farm.audio.decode``) and encodes it to the task's output path
   (``farm.audio.encode``, the preset's container and bit depth).
3. Render: ``farm render CATALOG --preset P -o DIR --force --no-progress``
   (``farm.cli.main``, in this process, so neither number pays for Python
   imports; both pay for starting the embedded cluster).

Both runs get fresh output folders and ``--force``, so the journal skips
nothing. Prints audio seconds, wall seconds and realtime factor (audio
seconds / wall seconds) of both, their ratio, and the per-step timings every
render records in ``TrackResult.timings`` (read back from report.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import soundfile as sf  # noqa: E402

from farm import audio  # noqa: E402
from farm.demo import DemoTrack, make_catalog  # noqa: E402
from farm.records import STATUS_FAILED, STATUS_OK, RenderTask, TrackResult  # noqa: E402

# (rate, container, subtype, peak dBFS, bpm), cycled over the tracks
KINDS = (
    (48000, "wav", "PCM_24", -1.0, 124.0),
    (44100, "flac", "PCM_16", -6.0, 96.0),
    (48000, "wav", "PCM_24", -3.0, 132.0),
    (44100, "flac", "PCM_16", -9.0, 110.0),
)
# Steps render_track records, in order (chain_* are kernels.chain stage_seconds).
STEPS = ("decode", "measure_input", "resample", "upload", "chain", "encode", "tag", "validate", "total")


def codec_only(task: RenderTask) -> TrackResult:
    """Decode the task's input and encode it to its output path: the I/O floor of a render.

    Module-level (picklable) so ``render_job(task_fn=codec_only)`` ships it to
    the workers. Written under a temporary name and renamed like a master, so
    the journal accepts it as an output.
    """
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    try:
        dec = audio.decode(task.track.source)
        timings["decode"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        rate = task.output.sample_rate or dec.sample_rate
        bit_depth = task.output.bit_depth or dec.native_bit_depth
        x = audio.resample(dec.audio, dec.sample_rate, rate)
        with audio.atomic_output(task.out_path) as tmp:
            audio.encode(tmp, x, rate, task.output.format, bit_depth)
            timings["encode"] = round(time.perf_counter() - t, 4)
            audio.commit(tmp, task.out_path)
    except Exception as e:  # a record, never an exception, like render_track
        timings["total"] = round(time.perf_counter() - t0, 4)
        return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_FAILED,
                           reason=f"{task.track.source}: {type(e).__name__}: {e}", preset=task.preset,
                           timings=timings, worker=socket.gethostname())
    timings["total"] = round(time.perf_counter() - t0, 4)
    return TrackResult(row=task.track.row, source=task.track.source, status=STATUS_OK, output=task.out_path,
                       preset=task.preset, timings=timings, worker=socket.gethostname(), backend="codec-only")


def make_inputs(folder: str, tracks: int, seconds: float) -> tuple[str, float]:
    """Write the catalog (farm.demo.make_catalog: farm.synth.music with an
    arrangement's section dynamics, full metadata); return (catalog path,
    total audio seconds)."""
    specs = []
    for i in range(tracks):
        rate, ext, subtype, peak, bpm = KINDS[i % len(KINDS)]
        specs.append(DemoTrack(f"Bench Track {i + 1}", seconds, rate, ext, subtype, peak, bpm))
    catalog = make_catalog(folder, tracks=tuple(specs), seed=4242)
    total = 0.0
    for name in sorted(os.listdir(folder)):
        if name.endswith((".wav", ".flac")):
            info = sf.info(os.path.join(folder, name))
            total += info.frames / info.samplerate
    return catalog, total


def fresh_dir(workdir: str, stem: str) -> str:
    path = os.path.join(workdir, f"{stem}-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while os.path.exists(path if n == 1 else f"{path}-{n}"):
        n += 1
    path = path if n == 1 else f"{path}-{n}"
    os.makedirs(path)
    return path


def load_report(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "report.json"), encoding="utf-8") as f:
        return json.load(f)


def print_timings(label: str, tracks: list[dict], steps=None) -> None:
    """One line per track with every recorded step, then the sums over tracks."""
    keys: list[str] = []
    for t in tracks:
        for k in t.get("timings", {}):
            if k not in keys:
                keys.append(k)
    order = [k for k in (steps or STEPS) if k in keys and k != "total"]
    order += sorted(k for k in keys if k.startswith("chain_"))
    order += [k for k in keys if k not in order and k != "total"] + (["total"] if "total" in keys else [])
    width = max(8, *(len(k) for k in order))
    print(f"\n  {label}: per-step seconds (TrackResult.timings)")
    print("  " + f"{'step':{width}s}" + "".join(f"  row {t['row']:>2}" for t in tracks) + "       sum   share")
    total = sum(t.get("timings", {}).get("total", 0.0) for t in tracks) or 1.0
    for k in order:
        vals = [t.get("timings", {}).get(k) for t in tracks]
        s = sum(v for v in vals if v is not None)
        cells = "".join(f"  {v:6.2f}" if v is not None else "       -" for v in vals)
        print(f"  {k:{width}s}{cells}  {s:8.2f}  {s / total * 100:5.1f}%")


def sum_timings(tracks, keep) -> dict[str, float]:
    """Per-step seconds summed over the report's tracks, for the steps ``keep(name)`` accepts."""
    sums: dict[str, float] = {}
    for tr in tracks:
        for k, v in tr.get("timings", {}).items():
            if keep(k):
                sums[k] = sums.get(k, 0.0) + v
    return sums


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=4, help="number of tracks in the catalog (default 4)")
    ap.add_argument("--seconds", type=float, default=240.0, help="length of each track in seconds (default 240)")
    ap.add_argument("--preset", default="master", help="preset for the render (default: master, the full chain)")
    ap.add_argument("--workdir", help="where the catalog and outputs go (default: a new folder in the temp dir)")
    ap.add_argument("--backend", choices=("auto", "cpu", "gpu"), default="auto", help="render backend (default auto)")
    ap.add_argument("--workers", type=int, help="embedded cluster: worker processes (default: farm's own sizing)")
    ap.add_argument("--threads-per-worker", type=int, help="embedded cluster: threads per worker")
    ap.add_argument("--batch-short", choices=("auto", "on", "off"), default="auto",
                    help="farm render --batch-short (default auto: short tracks in batches on GPU workers)")
    args = ap.parse_args(argv)
    if args.tracks < 1 or args.seconds < 1:
        ap.error("--tracks and --seconds must be at least 1")

    from farm import cli
    from farm.job import job_from_flags
    from farm.pipeline import render_job

    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="farm-bench-render-"))
    os.makedirs(workdir, exist_ok=True)
    catalog_dir = fresh_dir(workdir, "catalog")
    t = time.perf_counter()
    catalog, audio_s = make_inputs(catalog_dir, args.tracks, args.seconds)
    kinds = ", ".join(f"{r // 1000 if r % 1000 == 0 else r / 1000:g} kHz {e.upper()} {s[4:]}-bit"
                      for r, e, s, _, _ in KINDS[:min(args.tracks, 2)])
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} {platform.node()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"# catalog: {args.tracks} x {args.seconds:.0f} s stereo ({kinds}, alternating) = {audio_s:.1f} audio s, "
          f"written in {time.perf_counter() - t:.1f} s to {catalog_dir}")
    from kernels import backend as kb

    if kb.gpu_available():
        import cupy

        names = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(kb.gpu_count())]
        print(f"# GPU: {', '.join(names)}, cupy {cupy.__version__}")
    else:
        print("# GPU: none (CuPy missing or no CUDA device)")
    if args.backend == "gpu" and not kb.gpu_available():
        print("bench/render.py: --backend gpu needs a GPU that CuPy sees", file=sys.stderr)
        return 2
    print(f"# preset {args.preset}, backend {args.backend}, embedded Dask cluster"
          + (f", {args.workers} workers" if args.workers else "")
          + (f", {args.threads_per_worker} threads/worker" if args.threads_per_worker else ""), flush=True)

    # -- codec floor: decode + encode only, same job, same cluster path
    floor_dir = fresh_dir(workdir, "codec-floor")
    job = job_from_flags(catalog, args.preset, floor_dir, backend=args.backend)
    lines: list[str] = []
    t0 = time.perf_counter()
    outcome = render_job(job, force=True, backend=args.backend, n_workers=args.workers,
                         threads_per_worker=args.threads_per_worker, dashboard=False, progress=False,
                         log=lines.append, task_fn=codec_only)
    floor_wall = time.perf_counter() - t0
    for line in lines:
        print(f"  codec floor: {line}")
    if outcome.failed:
        print(f"codec floor: {len(outcome.failed)} track(s) failed, first: {outcome.failed[0].reason}",
              file=sys.stderr)
        return 1

    # -- the render: the CLI itself, in this process
    render_dir = fresh_dir(workdir, "render")
    cmd = ["render", catalog, "--preset", args.preset, "-o", render_dir, "--force", "--no-progress",
           "--backend", args.backend]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.threads_per_worker:
        cmd += ["--threads-per-worker", str(args.threads_per_worker)]
    if args.batch_short != "auto":
        cmd += ["--batch-short", args.batch_short]
    print(f"\n$ farm {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = cli.main(cmd)
    render_wall = time.perf_counter() - t0
    print(f"(farm render exit status {rc})", flush=True)
    rep = load_report(render_dir)
    if rc != 0:
        print(f"farm render failed (exit {rc}); see {render_dir}/report.json", file=sys.stderr)

    floor_rep = load_report(floor_dir)
    print_timings("codec floor (decode + encode only)", floor_rep["tracks"], ("decode", "encode", "total"))
    print_timings(f"farm render --preset {args.preset}", rep["tracks"])

    chain = sum_timings(rep["tracks"], lambda k: k.startswith("chain_"))
    if chain:
        top = max(chain, key=chain.get)
        chain_total = sum(tr.get("timings", {}).get("chain", 0.0) for tr in rep["tracks"])
        print(f"\n  chain dominated by {top[6:]}: {chain[top]:.2f} s of {chain_total:.2f} s chain time "
              f"({chain[top] / chain_total * 100:.0f}%)")
    steps = sum_timings(rep["tracks"], lambda k: not k.startswith("chain_") and k != "total")
    if steps:
        top = max(steps, key=steps.get)
        total = sum(tr.get("timings", {}).get("total", 0.0) for tr in rep["tracks"])
        print(f"  render dominated by {top}: {steps[top]:.2f} s of {total:.2f} s task time "
              f"({steps[top] / total * 100:.0f}%)")

    floor_rtf, render_rtf = audio_s / floor_wall, audio_s / render_wall
    passed = sum(1 for tr in rep["tracks"] if tr.get("status") == STATUS_OK)
    print("\n  RESULT                         audio s    wall s      RTF")
    print(f"  codec floor (decode+encode)  {audio_s:9.1f} {floor_wall:9.2f} {floor_rtf:8.1f}x")
    print(f"  farm render --preset {args.preset:8s}{audio_s:9.1f} {render_wall:9.2f} {render_rtf:8.1f}x"
          f"   ({passed}/{len(rep['tracks'])} tracks passed)")
    print(f"  render / floor wall ratio: {render_wall / floor_wall:.2f}x "
          f"(the render reaches {render_rtf / floor_rtf * 100:.0f}% of the codec floor's RTF)")
    print(f"  both walls include starting the embedded cluster, hashing inputs, the journal and the reports; "
          f"outputs in {workdir}")
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
