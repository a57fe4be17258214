"""Realtime factor of each kernel and of the whole chain, per backend.

    .venv/bin/python bench/kernels.py [--seconds 240] [--rate 48000] [--repeat 3] [--backend cpu,gpu]

Material: a seeded music-like (farm.synth) 4-minute 48 kHz stereo float32
track with the demo catalog's section dynamics (farm.demo.arrange: 8-bar
sections from -10 to 0 dB, LRA ~8 LU, so the loudness loop and the limiter
work as on the demo tracks; ``--flat`` uses the plain loop), already in the
backend's memory (the host<->device copies the render
does around the chain are not timed). Stages, each timed alone:

* EQ: linear-phase, 3 bands, 8191 taps (the automatic length at 44.1/48 kHz);
* reverb: built-in stereo ``hall`` whose impulse response is 3.0 s long
  (mid-band RT60 2.4 s; the lows ring 1.25x longer and set the IR length);
* oversample 4x: ``kernels.oversample.upsample`` of the whole track;
* limiter: 4x true-peak limiter (ceiling -1 dBTP) on the track driven +6 dB;
* loudness: ``kernels.loudness.measure`` (integrated, LRA, max M/S, true peak 4x);
* dither: TPDF quantization to 16 bit;
* the whole chain: ``kernels.chain.master`` with the EQ, the 3 s reverb, the
  loudness loop to -14 LUFS, the 4x limiter and 16-bit dither (which also
  checks the quantized true peak at 4x/16x and measures the output).

Realtime factor = audio seconds / wall seconds of the best of ``--repeat``
timed runs (the median is printed too), after one untimed warm-up call that
fills the design caches and, on the GPU, cuFFT plans and the memory pool.
On the GPU the device is synchronised before and after each timed call.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from farm.demo import arrange  # noqa: E402
from farm.synth import music  # noqa: E402
from kernels import backend, dither, eq, limiter, loudness, oversample, reverb  # noqa: E402
from kernels.chain import master  # noqa: E402
from kernels.params import (ChainParams, DitherParams, EQBand, EQParams, LimiterParams,  # noqa: E402
                            LoudnessParams, ReverbParams)

EQ_TAPS = 8191
EQ = EQParams(bands=(EQBand("high_pass", 30.0, slope_db_per_oct=12), EQBand("bell", 250.0, -1.5, 1.0),
                     EQBand("high_shelf", 10000.0, 1.5, 0.7)), taps=EQ_TAPS)
REVERB_IR_S = 3.0  # length of the hall's impulse response (its slowest band's RT60)
REVERB = ReverbParams(ir="hall", decay_s=REVERB_IR_S / max(reverb.SPACES["hall"].rt60_ratios), wet_db=-26.0)
LIMITER = LimiterParams(ceiling_dbtp=-1.0, oversample=4)
LIMITER_DRIVE_DB = 6.0
DITHER = DitherParams(bit_depth=16)
CHAIN = ChainParams(eq=EQ, reverb=REVERB, loudness=LoudnessParams(target_lufs=-14.0),
                    limiter=LIMITER, dither=DITHER)


def timeit(fn, xp, repeat: int):
    """(best seconds, median seconds, result of the best run) over ``repeat`` runs after a warm-up."""
    fn()  # warm-up: designs, plans, allocator pools
    best, times, best_out = None, [], None
    for _ in range(repeat):
        backend.synchronize(xp)
        t0 = time.perf_counter()
        out = fn()
        backend.synchronize(xp)
        t = time.perf_counter() - t0
        times.append(t)
        if best is None or t < best:
            best, best_out = t, out
        del out
    return best, statistics.median(times), best_out


def material(seconds: float, rate: int, flat: bool = False) -> np.ndarray:
    bpm = 120.0
    x = music(seconds, rate, channels=2, seed=1, bpm=bpm, peak_dbfs=-1.0)
    return (x if flat else arrange(x, rate, bpm)).astype(np.float32)


def run(name: str, seconds: float, rate: int, repeat: int, flat: bool = False) -> dict:
    xp = backend.module_for(name)
    host = material(seconds, rate, flat)
    x = backend.to_device(host, name)
    drive = xp.float32(10.0 ** (LIMITER_DRIVE_DB / 20.0))
    ir = reverb.synthetic_ir(REVERB.ir, rate, decay_s=REVERB.decay_s, seed=REVERB.seed, channels=2)
    taps = eq.design_eq(EQ, rate).size
    stages = [
        (f"eq ({taps} taps, linear phase)", lambda: eq.apply_eq(x, rate, EQ)),
        (f"reverb (hall, {ir.shape[-1] / rate:.2f} s stereo IR)", lambda: reverb.apply_reverb(x, rate, REVERB)),
        ("oversample 4x", lambda: oversample.upsample(x, 4)),
        (f"limiter 4x true-peak (+{LIMITER_DRIVE_DB:.0f} dB)", lambda: limiter.limit(x * drive, rate, LIMITER)),
        ("loudness measure (I,LRA,M,S,TP4x)", lambda: loudness.measure(x, rate)),
        ("dither 16-bit TPDF", lambda: dither.quantize(x, DITHER)),
    ]
    rows = []
    for label, fn in stages:
        best, med, _ = timeit(fn, xp, repeat)
        rows.append((label, best))
        print(f"  {name:3s}  {label:36s} {best * 1000:9.1f} ms (median {med * 1000:8.1f})  "
              f"{seconds / best:8.1f}x realtime", flush=True)
    best, med, res = timeit(lambda: master(x, rate, CHAIN), xp, repeat)
    label = "WHOLE CHAIN master() -14 LUFS"
    print(f"  {name:3s}  {label:36s} {best * 1000:9.1f} ms (median {med * 1000:8.1f})  "
          f"{seconds / best:8.1f}x realtime", flush=True)
    top = max(rows, key=lambda r: r[1])
    print(f"  {name:3s}  slowest single stage: {top[0]} ({top[1] / sum(r[1] for r in rows) * 100:.0f}% of "
          f"the stages' summed time)")
    print(f"  {name:3s}  chain (best run): {res.passes} loudness pass(es), gain {res.gain_db:+.2f} dB, "
          f"GR {res.max_gain_reduction_db:.2f} dB, {res.integrated_lufs:.2f} LUFS, "
          f"{res.true_peak_dbtp:.2f} dBTP", flush=True)
    st = res.stage_seconds
    total = sum(st.values())
    parts = sorted(st.items(), key=lambda kv: -kv[1])
    print(f"  {name:3s}  chain stage_seconds (best run, {total:.2f} s of {best:.2f} s): "
          + ", ".join(f"{k} {v:.3f} s ({v / best * 100:.0f}%)" for k, v in parts))
    print(f"  {name:3s}  chain dominated by: {parts[0][0]} ({parts[0][1] / best * 100:.0f}% of the chain's wall "
          f"time); whole chain {seconds / best:.1f}x realtime "
          f"({'above' if seconds / best > 20 else 'BELOW'} the 20x target)", flush=True)
    return {"stages": rows, "chain": best, "chain_stage_seconds": st}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=240.0, help="track length in seconds (default 240)")
    ap.add_argument("--rate", type=int, default=48000, help="sample rate in Hz (default 48000)")
    ap.add_argument("--repeat", "--repeats", dest="repeat", type=int, default=3,
                    help="timed runs per stage after one warm-up; the best counts (default 3)")
    ap.add_argument("--flat", action="store_true", help="the plain synth loop, without section dynamics")
    ap.add_argument("--backend", default="cpu,gpu" if backend.gpu_available() else "cpu",
                    help="comma-separated backends: cpu, gpu, auto (default: cpu, plus gpu when CuPy sees one)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    try:
        names = [backend.resolve(b.strip()) for b in args.backend.split(",") if b.strip()]
    except (RuntimeError, ValueError) as e:
        print(f"bench/kernels.py: {e}", file=sys.stderr)
        return 2
    import scipy

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} {platform.node()}: {model}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}, numpy {np.__version__}, "
          f"scipy {scipy.__version__}, FFT workers {backend.cpu_workers()}")
    if backend.gpu_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        print(f"# GPU: {props['name'].decode()}, cupy {cupy.__version__}")
    else:
        print("# GPU: none (CuPy missing or no CUDA device): GPU figures not measured")
    m = loudness.measure(material(args.seconds, args.rate, args.flat), args.rate)
    print(f"# material: {'flat loop' if args.flat else 'arranged'}, {m.integrated_lufs:.1f} LUFS, "
          f"LRA {m.loudness_range_lu:.1f} LU, {m.true_peak_dbtp:.1f} dBTP")
    print(f"# {args.seconds:.0f} s of {args.rate} Hz stereo float32; best of {args.repeat} after a warm-up; "
          f"RTF = audio seconds / wall seconds")
    for name in dict.fromkeys(names):
        run(name, args.seconds, args.rate, args.repeat, args.flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
