"""What a track costs on a backend besides its length, and how that work scales with threads.

    .venv/bin/python bench/short.py [--backend cpu|gpu] [--lengths 1,5,30,240] [--repeat 3]
                                    [--thread-seconds 10] [--threads 1,2,4,8,16] [--tracks 32]

Issue 5 asks for short tracks to be batched on a GPU node. Whether that pays
depends on a number only a GPU can give: the device work's cost per track that
does not shrink with the track (kernel launches, CuPy's Python dispatch,
host synchronisations), and whether worker threads can share it. On a GPU the
dispatch runs in Python under one interpreter lock, so threads cannot divide
it; batching (or more worker processes per GPU) could. This measures:

1. **Per track, one thread**: the device work a GPU worker's render does for
   one decoded track, at each of ``--lengths`` seconds (48 kHz stereo, the
   ``master`` preset's chain, 24-bit): upload the interleaved frames and
   transpose them, measure (``farm.render._stats``: every R128 figure and the
   short-term series), master (``kernels.chain.master``), measure the master
   again with both meters (``farm.render._pyloudnorm``: the second meter), and
   bring the master home for the encoder. Best of ``--repeat`` after a warm-up,
   wall time (the device synchronised by the final copy home) and the thread's
   CPU time. A least-squares line through the lengths gives the fixed cost per
   track and the cost per audio second.
2. **Batched**: ``--batch`` tracks of ``--thread-seconds`` through
   ``kernels.chain.master`` one by one and through ``kernels.batch.master_batch``
   together (one thread, best of ``--repeat``): the chain's time per track both
   ways, on the backend's memory (no copies).
3. **Threads**: ``--tracks`` tracks of ``--thread-seconds`` shared by T threads
   (each on its own CUDA stream, ``kernels.backend.track_stream``, as a GPU
   worker runs them) for each T of ``--threads``: tracks per second, realtime
   factor, speedup over one thread, and the process's CPU seconds per wall
   second (near 1 with many threads: the lock sets the pace).
4. **The codec floor at the same length**: decode + encode of a 24-bit FLAC of
   ``--thread-seconds`` on one thread (``farm.audio``), so a node of C cores
   decodes and encodes at most C / that many tracks a second; printed beside
   the device work's best rate. If the device work's rate is under the codec
   floor's, the GPU side, not the codecs, bounds a node on such tracks.

On the CPU backend the same steps run on the host (pyloudnorm itself as the
second meter): the figures are the CPU worker's, for comparison.
"""
from __future__ import annotations

import argparse
import os
import platform
import queue
import resource
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from farm import audio, render  # noqa: E402
from farm.demo import arrange  # noqa: E402
from farm.presets import load_preset  # noqa: E402
from farm.synth import music  # noqa: E402
from kernels import backend  # noqa: E402
from kernels.batch import master_batch  # noqa: E402
from kernels.chain import master  # noqa: E402

RATE = 48000
BIT_DEPTH = 24


def material(seconds: float, seed: int = 1) -> np.ndarray:
    """Interleaved (samples, 2) float32 frames, as libsndfile decodes them (farm.audio.Decoded)."""
    x = arrange(music(seconds, RATE, channels=2, seed=seed, bpm=120.0, peak_dbfs=-1.0), RATE, 120.0)
    return np.ascontiguousarray(x.T.astype(np.float32))


def chain_params(preset: str):
    import dataclasses

    chain = load_preset(preset).chain
    return dataclasses.replace(chain, dither=dataclasses.replace(chain.dither, bit_depth=BIT_DEPTH))


def device_work(frames: np.ndarray, chain, name: str) -> np.ndarray:
    """What a worker's render does on its backend for one decoded track (see the module doc)."""
    x = render._on_backend(audio.Decoded(frames, RATE, "FLAC", "PCM_24", "bench"), name)
    render._stats(x, RATE)
    res = master(x, RATE, chain)
    render._stats(res.audio, RATE)
    render._pyloudnorm(res.audio, RATE)
    return backend.to_host(res.audio)


def per_track(lengths, chain, name: str, repeat: int) -> list[tuple[float, float, float]]:
    """(seconds of audio, best wall s, that run's thread CPU s) per length, one thread."""
    rows = []
    with backend.track_stream(name):
        device_work(material(min(lengths)), chain, name)  # warm-up: designs, plans, compiled kernels
        for seconds in lengths:
            frames = material(seconds)
            device_work(frames, chain, name)  # this length's plans and pools
            best = None
            for _ in range(repeat):
                c0, t0 = time.thread_time(), time.perf_counter()
                device_work(frames, chain, name)
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                if best is None or wall < best[0]:
                    best = (wall, cpu)
            rows.append((seconds, *best))
    return rows


def fit(rows) -> tuple[float, float]:
    """``wall = fixed + per_second * seconds`` by least squares on the relative error (each
    length weighs alike, so the long track does not drown the short ones that show the
    fixed cost): (fixed s per track, s per audio second)."""
    s = np.array([r[0] for r in rows], dtype=np.float64)
    w = np.array([r[1] for r in rows], dtype=np.float64)
    if len(rows) < 2:
        return 0.0, float(w[0] / s[0])
    per_second, fixed = np.polyfit(s, w, 1, w=1.0 / w)
    return float(fixed), float(per_second)


def threaded(frames: np.ndarray, chain, name: str, threads: int, tracks: int) -> tuple[float, float]:
    """(wall s, process CPU s) for ``tracks`` copies of ``frames`` shared by ``threads`` threads."""
    todo: queue.Queue = queue.Queue()
    for i in range(tracks):
        todo.put(i)
    errors: list[BaseException] = []

    def worker():
        try:
            with backend.track_stream(name):
                device_work(frames, chain, name)  # this thread's stream, plans and pool (not timed)
                start.wait()
                while True:
                    try:
                        todo.get_nowait()
                    except queue.Empty:
                        return
                    device_work(frames, chain, name)
        except BaseException as e:  # reported after the join
            errors.append(e)
            start.abort()

    start = threading.Barrier(threads + 1)
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for t in pool:
        t.join()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    if errors:
        raise errors[0]
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def batched(seconds: float, count: int, chain, name: str, repeat: int) -> tuple[float, float]:
    """Best seconds per track of the chain over ``count`` tracks: one by one, and batched."""
    with backend.track_stream(name):
        xs = [backend.to_device(np.ascontiguousarray(material(seconds, seed=10 + i).T), name) for i in range(count)]
        xp = backend.array_module(xs[0])

        def alone():
            for x in xs:
                backend.to_host(master(x, RATE, chain).audio[:, :1])

        def together():
            for r in master_batch(xs, RATE, chain):
                backend.to_host(r.audio[:, :1])

        best = []
        for fn in (alone, together):
            fn()  # warm-up: this shape's plans and pools
            times = []
            for _ in range(repeat):
                backend.synchronize(xp)
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best.append(min(times) / count)
    return best[0], best[1]


def codec_floor(frames: np.ndarray, repeat: int) -> float:
    """Best seconds to decode and encode a 24-bit FLAC of ``frames`` on one thread."""
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "in.flac"), os.path.join(d, "out.flac")
        audio.encode(src, frames.T, RATE, "flac", BIT_DEPTH)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            dec = audio.decode(src)
            audio.encode(out, dec.audio, RATE, "flac", BIT_DEPTH)
            times.append(time.perf_counter() - t0)
    return min(times)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto", help="cpu, gpu or auto (default: gpu when CuPy sees one)")
    ap.add_argument("--preset", default="master", help="whose chain (default master)")
    ap.add_argument("--lengths", type=_floats, default=[1.0, 5.0, 30.0, 240.0],
                    help="track lengths in seconds for the per-track line (default 1,5,30,240)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per length, best counts (default 3)")
    ap.add_argument("--thread-seconds", type=float, default=10.0, help="track length for the thread runs (default 10)")
    ap.add_argument("--threads", type=_ints, default=None,
                    help="thread counts (default 1,2,4,... up to this machine's cores)")
    ap.add_argument("--tracks", type=int, default=32, help="tracks per thread run (default 32)")
    ap.add_argument("--batch", type=int, default=8,
                    help="tracks per batch for the batched-chain comparison (default 8; 0 skips it)")
    a = ap.parse_args(argv)
    if a.repeat < 1 or a.tracks < 1 or not a.lengths or min(a.lengths) < 0.5:
        ap.error("--repeat and --tracks must be at least 1, and every length at least 0.5 s")
    try:
        name = backend.resolve(a.backend)
    except (RuntimeError, ValueError) as e:
        print(f"bench/short.py: {e}", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    threads = a.threads or [t for t in (1, 2, 4, 8, 16, 32, 64) if t < cores] + [cores]
    chain = chain_params(a.preset)
    gpu = ""
    if name == "gpu":
        import cupy

        gpu = f", GPU {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {cupy.__version__}"
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} {platform.node()}: {cores} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}{gpu}")
    print(f"# backend {name}; preset {a.preset}'s chain at 48 kHz stereo, {BIT_DEPTH}-bit; per track: upload, "
          "measure, master, measure the master (both meters), copy home")

    rows = per_track(sorted(set(a.lengths)), chain, name, a.repeat)
    print(f"\n  per track, one thread (best of {a.repeat}):")
    print(f"  {'audio s':>8s} {'wall s':>9s} {'thread CPU s':>13s} {'x realtime':>11s}")
    for seconds, wall, cpu in rows:
        print(f"  {seconds:8.1f} {wall:9.4f} {cpu:13.4f} {seconds / wall:11.1f}")
    fixed, per_second = fit(rows)
    print(f"  {name}  FIXED COST per track {fixed * 1000:.1f} ms + {per_second * 1000:.2f} ms per audio second "
          f"(least squares on relative error, {len(rows)} lengths)")

    if a.batch > 0:
        one, many = batched(a.thread_seconds, a.batch, chain, name, a.repeat)
        print(f"\n  {name}  BATCHED CHAIN ({a.batch} x {a.thread_seconds:g} s, one thread): {one * 1000:.1f} ms per track "
              f"alone, {many * 1000:.1f} ms per track batched ({one / many:.2f}x)", flush=True)
    frames = material(a.thread_seconds, seed=2)
    print(f"\n  {a.tracks} tracks of {a.thread_seconds:g} s shared by T threads (each its own stream):")
    print(f"  {'threads':>7s} {'wall s':>8s} {'tracks/s':>9s} {'x realtime':>11s} {'speedup':>8s} {'CPU s / wall s':>15s}")
    base, best_rate = None, 0.0
    for t in threads:
        wall, cpu = threaded(frames, chain, name, t, a.tracks)
        rate = a.tracks / wall
        base = base or rate
        best_rate = max(best_rate, rate)
        print(f"  {t:7d} {wall:8.2f} {rate:9.2f} {a.tracks * a.thread_seconds / wall:11.1f} {rate / base:8.2f} "
              f"{cpu / wall:15.2f}", flush=True)
    codec = codec_floor(frames, max(2, a.repeat))
    floor_rate = cores / codec
    print(f"\n  codec floor: decode + encode of a {a.thread_seconds:g} s 24-bit FLAC {codec * 1000:.1f} ms on one core"
          f" -> {floor_rate:.1f} tracks/s on {cores} cores")
    work = "device work" if name == "gpu" else "chain and meters"
    print(f"  {name}  SHORT TRACKS ({a.thread_seconds:g} s): {work} at best {best_rate:.1f} tracks/s = "
          f"{best_rate / floor_rate * 100:.0f}% of the node's codec rate "
          f"(the node is bound by {'the codecs' if best_rate >= floor_rate else 'the ' + work})")
    return 0


if __name__ == "__main__":
    from farm.cluster import WORKER_MALLOC_ENV

    if any(os.environ.get(k) != v for k, v in WORKER_MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **WORKER_MALLOC_ENV})
    sys.exit(main())
