"""The host's share of one render: what a worker's CPU does per track besides the codecs.

    .venv/bin/python bench/host.py [--seconds 240] [--rate 48000] [--format flac|wav] [--repeat 2]

A GPU node is to render at >= 90% of its codec floor (decode + encode of the
same files and nothing else, issue 5). Its CPUs decode and encode; everything
else they do per track lowers that ratio, however fast the GPU is. This times,
on this machine's CPU, each host step of ``farm.render`` for one synthetic
track (best of ``--repeat``), in two columns:

* the CPU worker: every step on the host (the meters, the second meter, the
  plot series of the input and the master);
* a GPU worker, as ``render_track`` now runs it: the meters, the second meter
  (``kernels.pyloudnorm_meter``) and the plot series run on the device, and the
  decoded frames go up as libsndfile reads them (samples, channels) to be
  transposed there, so the host keeps the codecs, the re-decode of the written
  master, the tags and the output's hash.

and prints the bound a host-bound node cannot pass:
``codec / (codec + host extras)``. Device time is not counted (it overlaps
other tracks' host work on the worker's other threads).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from farm import audio, plots, render, tags  # noqa: E402
from farm.journal import file_hash  # noqa: E402
from farm.synth import music  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--rate", type=int, default=48000)
    ap.add_argument("--format", choices=("flac", "wav"), default="flac", help="the master's container")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}, numpy {np.__version__}")
    print(f"# {a.seconds:.0f} s of {a.rate} Hz stereo: a 24-bit WAV in, a 24-bit {a.format.upper()} master out; "
          f"best of {a.repeat} per step")
    x = (0.3 * music(a.seconds, a.rate, 2, seed=1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "in.wav"), os.path.join(d, f"out.{a.format}")
        audio.encode(src, x, a.rate, "wav", 24)
        dec = audio.decode(src)
        render._stats(dec.audio[:, :a.rate * 5], a.rate)  # numba's first call outside the timings
        audio.encode(out, dec.audio, a.rate, a.format, 24)
        back = audio.decode(out)
        _, st = render._stats(back.audio, a.rate)
        steps = [  # (step, seconds, on the host of a GPU worker too)
            ("decode the input", best(lambda: audio.decode(src), a.repeat), True),
            ("encode the master", best(lambda: audio.encode(out, dec.audio, a.rate, a.format, 24), a.repeat), True),
            ("the input as (channels, samples) on the host", best(lambda: np.ascontiguousarray(dec.interleaved.T),
                                                                   a.repeat), False),
            ("measure the input (I, LRA, M, S, TP 4x)", best(lambda: render._stats(dec.audio, a.rate), a.repeat),
             False),
            ("plot series of the input", best(lambda: plots.side_from_array(dec.audio, a.rate, st), a.repeat), False),
            ("write the tags", best(lambda: tags.write_tags(out, {"title": "t", "artist": "a"}), a.repeat), True),
            ("re-decode the written master", best(lambda: audio.decode(out), a.repeat), True),
            ("the master as (channels, samples) on the host",
             best(lambda: np.ascontiguousarray(back.interleaved.T), a.repeat), False),
            ("measure the master", best(lambda: render._stats(back.audio, a.rate), a.repeat), False),
            ("second meter (pyloudnorm)", best(lambda: render._pyloudnorm(back.audio, a.rate), a.repeat), False),
            ("plot series of the master", best(lambda: plots.side_from_array(back.audio, a.rate, st), a.repeat),
             False),
            ("read the tags back, hash the output", best(lambda: (tags.read_tags(out), file_hash(out)), a.repeat),
             True),
        ]
    codec = steps[0][1] + steps[1][1]
    cpu_extra = sum(s for _, s, _ in steps[2:])
    gpu_extra = sum(s for _, s, host in steps[2:] if host)
    print(f"  {'step':42s} {'seconds':>8s}  on a GPU worker's host")
    for name, s, host in steps:
        print(f"  {name:42s} {s:8.3f}  {'yes' if host else 'no (device)'}")
    print(f"  codec floor per track (decode + encode)        {codec:8.3f} s")
    for label, extra in (("CPU worker", cpu_extra), ("GPU worker", gpu_extra)):
        print(f"  {label}: host extras {extra:6.3f} s per track = {extra / codec * 100:5.1f}% of the codecs; "
              f"a host-bound node reaches at most {codec / (codec + extra) * 100:5.1f}% of its codec floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
