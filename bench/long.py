"""A long programme rendered streamed: peak memory and realtime factor next to a short track's.

    .venv/bin/python bench/long.py [--minutes 120] [--rate 96000] [--short-minutes 4]
                                   [--preset master] [--memory-budget-mb 1024] [--workdir DIR] [--reuse]

1. Writes a ``--minutes`` stereo programme at ``--rate`` (24-bit FLAC, made
   of ``farm.synth.music`` minutes with different seeds, tempi and levels,
   generated and written minute by minute so this script never holds it) and
   a ``--short-minutes`` track of the same material.
2. Renders each with ``farm.render.render_track`` (what a Dask worker runs)
   in a fresh child process. The long programme's task carries
   ``--memory-budget-mb`` as a job's ``memory_budget_mb`` would (it does not
   fit and is streamed); the short track gets the machine's default budget
   and is rendered whole (the fast path short tracks take). The child's peak resident set
   is the child's own ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end
   (Linux: KiB; imports included).
3. Prints, for both: audio seconds, wall seconds of the render (imports
   excluded), realtime factor, peak RSS, the per-pass timings, and the long
   programme's RTF relative to the short track's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from farm import synth  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from farm.job import job_from_flags
from farm.render import render_track
import dataclasses
job = job_from_flags({catalog!r}, {preset!r}, {out!r})
job = job.with_memory_budget({budget!r})
(task,) = job.tasks()
t0 = time.perf_counter()
r = render_track(task)
wall = time.perf_counter() - t0
import resource
print(json.dumps({{"status": r.status, "reason": r.reason, "wall": wall, "timings": r.timings,
                  "result": r.result, "output": r.output,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def write_programme(path: str, minutes: float, rate: int, seed: int) -> float:
    """Minute-by-minute synthetic music into a 24-bit FLAC; returns its length in seconds."""
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, format="FLAC", subtype="PCM_24") as f:
        whole, rest = int(minutes), minutes - int(minutes)
        for m in range(whole + (1 if rest > 1e-9 else 0)):
            secs = 60.0 if m < whole else rest * 60.0
            level = (-1.0, -4.0, -9.0, -2.0, -14.0)[(seed + m) % 5]  # sections: the gate and LRA have work
            x = synth.music(secs, rate, seed=seed * 1000 + m, bpm=96.0 + 8 * (m % 6), peak_dbfs=level)
            f.write(np.ascontiguousarray(x.T.astype(np.float32)))
    return sf.info(path).duration


def render_in_child(src: str, workdir: str, preset: str, budget: int) -> dict:
    name = os.path.splitext(os.path.basename(src))[0]
    catalog = os.path.join(workdir, f"{name}.csv")
    with open(catalog, "w") as f:
        f.write(f"file,title,artist\n{src},{name},Bench\n")
    out = os.path.join(workdir, f"out-{name}")
    code = CHILD.format(root=os.path.abspath(ROOT), catalog=catalog, preset=preset, out=out, budget=budget)
    from farm.cluster import WORKER_MALLOC_ENV  # the child runs as a farm worker would

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **WORKER_MALLOC_ENV})
    if p.returncode != 0:
        raise SystemExit(f"render of {src} crashed:\n{p.stderr[-3000:]}")
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    doc["peak_rss_mib"] = doc["rss_kib"] / 1024.0  # the child's own high-water mark, imports included
    return doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--rate", type=int, default=96000)
    ap.add_argument("--short-minutes", type=float, default=4.0)
    ap.add_argument("--preset", default="master")
    ap.add_argument("--memory-budget-mb", type=int, default=1024)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--reuse", action="store_true",
                    help="keep programmes already in --workdir that have the asked length and rate")
    a = ap.parse_args(argv)
    work = a.workdir or tempfile.mkdtemp(prefix="farm-long-")
    os.makedirs(work, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}, numpy {np.__version__}")
    print(f"# preset {a.preset}, memory budget {a.memory_budget_mb} MiB, workdir {work}")
    t = time.perf_counter()
    long_src = os.path.join(work, "long.flac")
    short_src = os.path.join(work, "short.flac")
    def made(path, minutes):
        if a.reuse and os.path.exists(path):
            info = sf.info(path)
            if info.samplerate == a.rate and abs(info.duration - minutes * 60) < 1e-6:
                return info.duration
        return write_programme(path, minutes, a.rate, seed=1)

    long_s = made(long_src, a.minutes)
    short_s = made(short_src, a.short_minutes)
    print(f"# wrote {long_s / 60:.1f} min and {short_s / 60:.1f} min of {a.rate} Hz stereo 24-bit FLAC "
          f"({os.path.getsize(long_src) / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    rows = []
    for label, src, secs, budget in (("short (whole file)", short_src, short_s, None),
                                     ("long (streamed)", long_src, long_s, a.memory_budget_mb)):
        d = render_in_child(src, work, a.preset, budget)
        streamed = "streamed_block_frames" in d["timings"]
        if streamed != label.startswith("long"):
            raise SystemExit(f"{label}: expected {'a streamed' if label.startswith('long') else 'a whole-file'} "
                             "render; change --memory-budget-mb or the lengths")
        if d["status"] != "ok":
            raise SystemExit(f"{label}: {d['reason']}")
        rtf = secs / d["wall"]
        rows.append((label, secs, d, rtf))
        tm = {k: v for k, v in d["timings"].items() if k.startswith(("chain_", "stream", "validate", "decode",
                                                                         "encode", "total"))}
        print(f"  {label:20s} {secs:8.0f} s audio  {d['wall']:8.1f} s wall  {rtf:7.1f}x realtime  "
              f"peak RSS {d['peak_rss_mib']:7.0f} MiB  "
              f"{d['result']['integrated_lufs']} LUFS {d['result']['true_peak_dbtp']} dBTP")
        print(f"      timings {json.dumps(tm)}")
    ratio = rows[1][3] / rows[0][3]
    print(f"  long/short realtime factor: {ratio:.2f} ({(ratio - 1) * 100:+.0f}%)")
    print(f"  long render peak RSS {rows[1][2]['peak_rss_mib']:.0f} MiB "
          f"({'under' if rows[1][2]['peak_rss_mib'] < 1536 else 'OVER'} 1.5 GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
