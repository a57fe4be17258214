"""Realtime factor of each kernel and of the whole chain, per backend, and how
far each is from the memory-bandwidth floor.

    .venv/bin/python bench/kernels.py [--seconds 240] [--rate 48000] [--repeat 3] [--gpu-repeat N]
                                      [--backend cpu|gpu|cpu,gpu] [--bandwidth-mib MiB]
    .venv/bin/python bench/kernels.py --model [--seconds 240] [--passes 2]   # the bytes model only

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

Timing: one untimed warm-up call (design caches; on the GPU also cuFFT
plans, the memory pool and CuPy's compiled kernels), then ``--repeat``
timed calls (``--gpu-repeat`` on the GPU); best and median are printed,
realtime factor = audio seconds / best seconds. On the host a call is timed
with ``perf_counter``; on the GPU with CUDA events recorded on the stream
before and after it (device synchronised first), and the host's wall time
around the same calls is printed next to it.

Bandwidth floor: after the timings, one large copy measures the memory
bandwidth (GPU: device-to-device ``cudaMemcpyAsync`` of 1 GiB; host: a
256 MiB ``numpy.copyto``, one thread), counting bytes read plus bytes
written. :func:`bytes_model` counts per stage the bytes the kernels as
written move ("model": every op reads its inputs and writes its output once
through memory) and the least a stage call could move ("ideal": input read
once, output written once); each over the bandwidth is a floor time, and
the table prints the fraction of it the median time reaches, and the
chain's realtime factor. The model follows the device code path (the host
runs sosfilt unchunked and caches much of it), so on the host the table
shows that the code path runs, not a meaningful floor.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from farm.demo import arrange  # noqa: E402
from farm.synth import music  # noqa: E402
from kernels import backend, dither, eq, limiter, loudness, oversample, pyloudnorm_meter, reverb  # noqa: E402
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
DITHER_SHAPED = DitherParams(bit_depth=16, noise_shaping="lipshitz")  # an extra row: no preset shapes today
CHAIN = ChainParams(eq=EQ, reverb=REVERB, loudness=LoudnessParams(target_lufs=-14.0),
                    limiter=LIMITER, dither=DITHER)


# --------------------------------------------------------------------------- bytes model
#
# Bytes each stage moves through device memory for a (channels, n) float32
# track, counted op by op as the kernels are written today: every elementwise
# op, copy, gather, reduction and FFT is charged one read of each input array
# and one write of its output (nothing kept in cache between ops, one pass
# through memory per cuFFT call; a filter's spectrum, a few MB at most, is
# charged once). "ideal" is the least any implementation of the same stage
# call could move: its input read once, its output written once. Either
# total over the measured device bandwidth is a floor time; measured time
# over it is the gap. Host<->device copies (design taps, the reverb IR,
# scalars, the chain's gain trace) go over PCIe and are not counted.
F32, F64, C64 = 4, 8, 8  # bytes per float32, float64, complex64 value


def _conv(c: int, n: int, m: int, rows: int = 1, frames_view: bool = False) -> list[tuple[str, float]]:
    """kernels.convolve.fftconvolve of (c, [1,] n) float32 with ``rows`` filters of ``m`` taps
    (``frames_view``: fftconvolve_frames, whose caller reduces in the frames: no crop copy)."""
    from kernels import convolve

    size = convolve.block_size(n, m)
    if size is None:  # one FFT of the whole output
        size = backend.FFT.next_fast_len(n + m - 1)
        z = c * (size // 2 + 1) * C64
        return [("rfft signal", c * n * F32 + z),
                ("rfft filter", rows * (m * F32 + (size // 2 + 1) * C64)),
                ("spectrum x filter", 2 * z if rows == 1 else z + rows * z),
                ("irfft", rows * (z + c * size * F32))]
    hop = size - m + 1
    frames = -(-(n + m - 1) // hop)
    e = c * frames * size * F32  # framed signal, float32
    z = c * frames * (size // 2 + 1) * C64  # its spectra, complex64
    return [("pad", c * n * F32 + c * (frames + 1) * hop * F32),
            ("frame (concatenate)", 2 * e),
            ("rfft frames", e + z),
            ("rfft filter", rows * (m * F32 + (size // 2 + 1) * C64)),
            ("spectrum x filter", 2 * z if rows == 1 else z + rows * z),
            ("irfft", rows * (z + e))] + (
            [] if frames_view else [("crop (reshape copy)", 2 * rows * c * frames * hop * F32)])


def _prefix(name: str, terms) -> list[tuple[str, float]]:
    return [(f"{name}: {t}", b) for t, b in terms]


def _kweight(c: int, n: int, rate: int) -> list[tuple[str, float]]:
    """loudness.weighted_power + cumulative sum, the device path (1 s chunks, 0.25 s warm-up
    each; float32 input: the frames and the power are one kernel each)."""
    from kernels import loudness

    chunk = int(round(loudness.K_WEIGHT_CHUNK_S * rate))
    warm = int(math.ceil(loudness.K_WEIGHT_WARMUP_S * rate))
    u, s64, m64 = c * n * F32, c * n * F64, n * F64
    if n <= 2 * chunk:
        return [("to float64", u + s64), ("sosfilt (2 biquads, one pass)", 2 * s64),
                ("channel power sum", m64 + c * 7 * m64), ("cumulative sum (+ concatenate)", 4 * m64)]
    count = -(-n // chunk)
    framed = c * count * (warm + chunk) * F64
    return [("frames: one kernel (loudness.K_FRAMES_CUDA: x read, float64 frames written)",
             u * (warm + chunk) / chunk + framed),
            ("sosfilt (2 biquads, one pass)", 2 * framed),
            ("weighted power: one kernel (loudness.K_POWER_CUDA: frames read past the warm-up)", s64 + m64),
            ("cumulative sum (+ concatenate)", 4 * m64)]


def _true_peak(c: int, n: int, factor: int) -> list[tuple[str, float]]:
    """oversample.true_peak: |x| max, then phases 1..factor-1 chunk by chunk, |.| and max."""
    u = c * n * F32
    p = factor - 1
    return ([("sample peak |x| max", 3 * u)]
            + _prefix(f"{p}-phase interpolation", _conv(c, n, 2 * 32 + 1, p, frames_view=True))
            + [("|phases| max over channels and phases (one fused reduction)", p * u + n * F32)])


def _gain(n: int, rate: int, lookahead_ms: float) -> list[tuple[str, float]]:
    """limiter.required_gain + gain_curve (float64 gains; the elementwise steps are GAIN_CUDA's kernels)."""
    m32, m64 = n * F32, n * F64
    w = max(1, int(round(lookahead_ms * rate / 1000.0))) + 1
    fm_passes = int(math.floor(math.log2(w))) + (0 if w & (w - 1) == 0 else 1)
    return [("required gain: one kernel (limiter.GAIN_CUDA)", m32 + m64),
            (f"hold: forward min ({fm_passes} passes)", 2 * m64 + 3 * fm_passes * m64),
            ("ramp: two running-sum boxes", 16 * m64),
            ("min with required, to dB: one kernel", 4 * m64),
            ("release scan: blocked (scan.SCAN_CUDA: a block per thread, then the fix-up)", 4 * m64),
            ("back to linear, snap, min: one kernel", 3 * m64),
            ("gain chunks into the curve", 2 * m64)]


def _detect(c: int, n: int, factor: int) -> list[tuple[str, float]]:
    """limiter.detection_pair at ``factor`` (phases 1..factor-1 computed): e0 and e1."""
    u = c * n * F32
    p = factor - 1
    return (_prefix(f"{p}-phase interpolation", _conv(c, n, 65, p))
            + [("curvature pair: one kernel (limiter.CURVED_PAIR_CUDA: points read once, e0 e1 written)",
                (p + 2) * u + 2 * n * F32)])


def _gated(n: int) -> list[tuple[str, float]]:
    """limiter.gated_envelope: scale e0 and e1, compare with the gate, select."""
    return [("gated envelope (scale, compare, select)", 8 * n * F32 + n)]


def _check(c: int, n: int, factor: int, check: int, from_f64: bool) -> list[tuple[str, float]]:
    """limiter._check: apply the gain, envelope at factor and 16x (no corrections counted)."""
    u, m32, m64 = c * n * F32, n * F32, n * F64
    p = (factor - 1) + (check - 1 if check != factor else 0)
    return ([("gain to float64", m32 + m64)] if from_f64 else []) + [
        ("gain to float32, x * gain", m64 + m32 + 2 * u + m32)] + _prefix(
        f"check: {p}-phase interpolation", _conv(c, n, 65, p, frames_view=True)) + [
        ("check: |phases| max (one fused reduction), |x| max", p * u + m32 + 3 * u + m32 + 5 * m32),
        ("peak, reduction", 2 * m32)]


def _limit_unchecked(c: int, n: int, rate: int, factor: int, lookahead_ms: float, detect: bool = True):
    """An unchecked limiter pass; ``detect``: it computes the Detection pair (the loop's
    first trial; the others reuse it and only gate)."""
    u, m32, m64 = c * n * F32, n * F32, n * F64
    return ((_detect(c, n, factor) if detect else []) + _gated(n) + _gain(n, rate, lookahead_ms)
            + [("gain to float32, x * gain, reduction", m64 + m32 + 2 * u + m32 + m32)])


def _dither(c: int, n: int) -> list[tuple[str, float]]:
    """dither.quantize, flat TPDF on float32: the draws, then one kernel per block."""
    u = c * n * F32
    return [("two uniform draws (float64, written)", 4 * u),
            ("quantize: one kernel (dither.FLAT_CUDA: x and the draws read, float32 written)", u + 4 * u + u)]


def _loudness(c: int, n: int, rate: int, full: bool) -> list[tuple[str, float]]:
    """loudness.measure (``full``) or integrated_loudness: K-weighting, power, windows (+ true peak 4x)."""
    terms = _kweight(c, n, rate)
    windows = n // max(1, rate // 10)
    if full:  # M and S maxima on a 1 ms grid, LRA and gating on 100 ms blocks
        terms += [("window energies (1 ms and 100 ms grids)", 2 * (n // max(1, rate // 1000)) * 5 * F64
                   + 2 * windows * 5 * F64)]
        terms += _prefix("true peak 4x", _true_peak(c, n, 4)) + [("sample peak", 3 * c * n * F32)]
    else:
        terms += [("block energies (100 ms grid)", windows * 5 * F64)]
    return terms


def bytes_model(seconds: float, rate: int, channels: int = 2, eq_taps: int = EQ_TAPS, ir_len: int | None = None,
                factor: int = 4, passes: int = 2) -> dict[str, dict]:
    """Per stage: ``{"terms": [(what, bytes)], "model": bytes, "ideal": bytes}`` (see the comment above).

    Stages are the ones :func:`run` times (eq, reverb, oversample, limiter,
    loudness, dither) and ``chain``: :func:`kernels.chain.master` with
    ``passes`` loudness-loop passes (EQ, reverb, the input's integrated
    loudness, per pass a gain, an unchecked limiter and its output's
    integrated loudness, then the 4x/16x check, dither and the output's 4x
    true peak). Limiter corrections (rare) are not counted.
    """
    c, n = channels, int(round(seconds * rate))
    u = c * n * F32
    ir_len = ir_len or int(math.ceil(REVERB_IR_S * rate))
    la = LIMITER.lookahead_ms
    st: dict[str, tuple[list, float]] = {}
    st["eq"] = (_conv(c, n, eq_taps), 2 * u)
    st["reverb"] = (_prefix("wet", _conv(c, n, ir_len)) + [("fade tail, add dry", 3 * u)], 2 * u)
    st["oversample"] = (_prefix("4 phases", _conv(c, n, 65, factor))
                        + [("interleave (swapaxes copy)", 2 * factor * u)], u + factor * u)
    st["limiter"] = ([("drive x * g (bench)", 2 * u)] + _detect(c, n, factor) + _gated(n) + _gain(n, rate, la)
                     + _check(c, n, factor, 16, False), 2 * u + 2 * u + n * F32)
    st["loudness"] = (_loudness(c, n, rate, True), u)
    st["dither"] = (_dither(c, n), 2 * u)
    integ = _loudness(c, n, rate, False)
    chain = (_prefix("eq", st["eq"][0]) + _prefix("reverb", st["reverb"][0])
             + _prefix("input loudness", integ))
    for p in range(1, passes + 1):
        chain += ([(f"pass {p}: gain", 2 * u)]
                  + _prefix(f"pass {p}: limiter", _limit_unchecked(c, n, rate, factor, la, detect=p == 1))
                  + _prefix(f"pass {p}: loudness", integ))
    chain += ([("gain again for the check", 2 * u)] + _prefix("limiter check", _check(c, n, factor, 16, True))
              + _prefix("dither", st["dither"][0])
              + _prefix("output true peak", _true_peak(c, n, 4)))
    chain_ideal = 2 * u + 2 * u + u + passes * (2 * u + 2 * u + u) + 2 * u + 2 * u + u
    st["chain"] = (chain, chain_ideal)
    return {k: {"terms": t, "model": float(sum(b for _, b in t)), "ideal": float(i)} for k, (t, i) in st.items()}


def timeit(fn, xp, repeat: int):
    """Time ``fn`` ``repeat`` times after one warm-up call.

    Returns ``{"best", "median", "wall_median" (seconds), "out"}`` (``out``:
    the result of the best run). On the host the times are ``perf_counter``
    wall times. On the GPU they are CUDA event times on the current stream
    (events recorded before and after the call, the device synchronised
    before the first), so queued device work is counted and nothing of the
    host's Python after the last launch; ``wall_median`` is the host's
    ``perf_counter`` around the same calls (until the end event completes):
    the two differ where the host, not the device, sets the pace.
    """
    fn()  # warm-up: designs, plans, allocator pools, compiled kernels
    gpu = xp is not np
    times, walls, best, best_out = [], [], None, None
    for _ in range(repeat):
        backend.synchronize(xp)
        if gpu:
            start, end = xp.cuda.Event(), xp.cuda.Event()
            t0 = time.perf_counter()
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            wall = time.perf_counter() - t0
            t = xp.cuda.get_elapsed_time(start, end) / 1000.0
        else:
            t0 = time.perf_counter()
            out = fn()
            t = wall = time.perf_counter() - t0
        times.append(t)
        walls.append(wall)
        if best is None or t < best:
            best, best_out = t, out
        del out
    return {"best": best, "median": statistics.median(times), "wall_median": statistics.median(walls),
            "out": best_out}


def measure_bandwidth(xp, mib: int, repeat: int = 10) -> tuple[float, str]:
    """Memory bandwidth (bytes/s, bytes read + bytes written) of a large copy, and how it was measured.

    GPU: a device-to-device ``cudaMemcpyAsync`` of ``mib`` MiB (timed with
    CUDA events, median of ``repeat``). Host: ``numpy.copyto`` of ``mib`` MiB
    (one thread, perf_counter, median). Inputs are non-zero.
    """
    n = mib * 2 ** 20 // 4
    if xp is np:
        a = np.arange(n, dtype=np.float32)
        b = np.empty_like(a)
        np.copyto(b, a)
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            np.copyto(b, a)
            ts.append(time.perf_counter() - t0)
        del a, b
        t = statistics.median(ts)
        return 2 * n * 4 / t, f"numpy.copyto of {mib} MiB, one thread, read + write counted, median of {repeat}"
    a = xp.arange(n, dtype=xp.float32)
    b = xp.empty_like(a)
    ts = []
    for i in range(repeat + 1):
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        b.data.copy_from_device_async(a.data, n * 4)
        end.record()
        end.synchronize()
        if i:  # the first is a warm-up
            ts.append(xp.cuda.get_elapsed_time(start, end) / 1000.0)
    if not bool((b[-4:] == a[-4:]).all()):
        raise RuntimeError("device copy check failed")
    del a, b
    xp.get_default_memory_pool().free_all_blocks()
    t = statistics.median(ts)
    return (2 * n * 4 / t, f"device-to-device cudaMemcpyAsync of {mib} MiB, read + write counted, "
            f"CUDA events, median of {repeat}")


def print_floor_table(name: str, rows, model: dict, bw: float, bw_how: str, seconds: float, passes: int) -> dict:
    """Per stage: median time, model and ideal bytes, their floor times at ``bw`` and the fraction reached."""
    tag = f"  {name:3s}"
    timer = "CUDA events" if name == "gpu" else "perf_counter"
    print(f"{tag}  bandwidth {bw / 1e9:.1f} GB/s ({bw_how})")
    print(f"{tag}  floor = bytes / bandwidth; 'model' = bytes the kernels as written move (each op one pass "
          f"through memory; the device code path), 'ideal' = each call reads its input once and writes its "
          f"output once")
    print(f"{tag}  {'stage (' + timer + ', median)':38s} {'time ms':>9s} {'model GB':>9s} {'floor ms':>9s} "
          f"{'reached':>8s} {'ideal GB':>9s} {'floor ms':>9s} {'reached':>8s}")
    out = {}
    for key, label, t in rows:
        m = model[key]
        fm, fi = m["model"] / bw, m["ideal"] / bw
        out[key] = {"seconds": t, "model_bytes": m["model"], "ideal_bytes": m["ideal"],
                    "floor_model_s": fm, "floor_ideal_s": fi}
        print(f"{tag}  {label[:38]:38s} {t * 1e3:9.2f} {m['model'] / 1e9:9.3f} {fm * 1e3:9.3f} "
              f"{fm / t * 100:7.1f}% {m['ideal'] / 1e9:9.3f} {fi * 1e3:9.3f} {fi / t * 100:7.1f}%")
    c = out["chain"]
    rtf = seconds / c["seconds"]
    line = (f"{tag}  chain ({passes} loudness pass{'es' if passes != 1 else ''}): {c['seconds'] * 1e3:.2f} ms median = {rtf:,.0f}x realtime; "
            f"{c['floor_model_s'] / c['seconds'] * 100:.1f}% of the model floor "
            f"({c['floor_model_s'] * 1e3:.2f} ms, {seconds / c['floor_model_s']:,.0f}x realtime), "
            f"{c['floor_ideal_s'] / c['seconds'] * 100:.1f}% of the ideal floor "
            f"({c['floor_ideal_s'] * 1e3:.2f} ms, {seconds / c['floor_ideal_s']:,.0f}x realtime)")
    print(line)
    if name == "gpu":
        print(f"{tag}  issue 5 targets: >= 20,000x realtime per H100: {'MET' if rtf >= 20000 else 'NOT MET'} "
              f"({rtf:,.0f}x); >= 25% of the bandwidth floor (model): "
              f"{'MET' if c['floor_model_s'] / c['seconds'] >= 0.25 else 'NOT MET'}", flush=True)
    return out


def material(seconds: float, rate: int, flat: bool = False) -> np.ndarray:
    bpm = 120.0
    x = music(seconds, rate, channels=2, seed=1, bpm=bpm, peak_dbfs=-1.0)
    return (x if flat else arrange(x, rate, bpm)).astype(np.float32)


def run(name: str, seconds: float, rate: int, repeat: int, flat: bool = False, bw_mib: int = 0) -> dict:
    xp = backend.module_for(name)
    host = material(seconds, rate, flat)
    x = backend.to_device(host, name)
    drive = xp.float32(10.0 ** (LIMITER_DRIVE_DB / 20.0))
    ir = reverb.synthetic_ir(REVERB.ir, rate, decay_s=REVERB.decay_s, seed=REVERB.seed, channels=2)
    taps = eq.design_eq(EQ, rate).size
    stages = [
        ("eq", f"eq ({taps} taps, linear phase)", lambda: eq.apply_eq(x, rate, EQ)),
        ("reverb", f"reverb (hall, {ir.shape[-1] / rate:.2f} s stereo IR)", lambda: reverb.apply_reverb(x, rate, REVERB)),
        ("oversample", "oversample 4x", lambda: oversample.upsample(x, 4)),
        ("limiter", f"limiter 4x true-peak (+{LIMITER_DRIVE_DB:.0f} dB)", lambda: limiter.limit(x * drive, rate, LIMITER)),
        ("loudness", "loudness measure (I,LRA,M,S,TP4x)", lambda: loudness.measure(x, rate)),
        ("dither", "dither 16-bit TPDF", lambda: dither.quantize(x, DITHER)),
    ]
    gpu = name == "gpu"

    def show(label, r):
        wall = f", wall median {r['wall_median'] * 1000:8.1f}" if gpu else ""
        print(f"  {name:3s}  {label:36s} {r['best'] * 1000:9.1f} ms (median {r['median'] * 1000:8.1f}{wall})  "
              f"{seconds / r['best']:8.1f}x realtime", flush=True)

    rows, timed = [], []
    for key, label, fn in stages:
        r = timeit(fn, xp, repeat)
        rows.append((label, r["best"]))
        timed.append((key, label, r["median"]))
        show(label, r)
    # Timed and shown, outside the chain and its floor table: noise-shaped dither (off in
    # every preset) and the second meter a render runs on each master (pyloudnorm on the
    # host; its arithmetic where the samples are, kernels.pyloudnorm_meter).
    extras = [("dither 16-bit TPDF, Lipshitz shaping", lambda: dither.quantize(x, DITHER_SHAPED)),
              ("second meter (pyloudnorm_meter)", lambda: pyloudnorm_meter.integrated_loudness(x, rate))]
    if not gpu:
        import pyloudnorm

        meter = pyloudnorm.Meter(rate, filter_class="DeMan")
        extras.append(("second meter (pyloudnorm itself)",
                       lambda: meter.integrated_loudness(host.T.astype(np.float64))))
    for label, fn in extras:
        show(label, timeit(fn, xp, repeat))
    r = timeit(lambda: master(x, rate, CHAIN), xp, repeat)
    best, res = r["best"], r["out"]
    label = "WHOLE CHAIN master() -14 LUFS"
    show(label, r)
    timed.append(("chain", f"WHOLE CHAIN master() ({res.passes} pass{'es' if res.passes != 1 else ''})", r["median"]))
    if gpu:  # what the fused RawKernels buy: the same chain on their array paths
        before = backend.RAW_KERNELS
        backend.RAW_KERNELS = False
        try:
            off = timeit(lambda: master(x, rate, CHAIN), xp, repeat)
        finally:
            backend.RAW_KERNELS = before
        show("WHOLE CHAIN, RawKernels off", off)
        print(f"  {name:3s}  RawKernels (FARM_RAW_KERNELS): chain median {r['median'] * 1e3:.2f} ms with, "
              f"{off['median'] * 1e3:.2f} ms without ({off['median'] / r['median']:.2f}x)", flush=True)
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
    del x, host
    bw, how = measure_bandwidth(xp, bw_mib or (1024 if gpu else 256))
    model = bytes_model(seconds, rate, channels=2, eq_taps=taps, ir_len=ir.shape[-1], factor=LIMITER.oversample,
                        passes=res.passes)
    floor = print_floor_table(name, timed, model, bw, how, seconds, res.passes)
    return {"stages": rows, "chain": best, "chain_stage_seconds": st, "bandwidth": bw, "floor": floor,
            "passes": res.passes}


def print_model(seconds: float, rate: int, passes: int) -> None:
    """The bytes model, term by term (``--model``): what RESULTS.md quotes."""
    model = bytes_model(seconds, rate, passes=passes)
    u = 2 * int(round(seconds * rate)) * F32
    print(f"# bytes model: {seconds:.0f} s of {rate} Hz stereo float32 (one copy of the track = {u / 1e6:.1f} MB), "
          f"{passes} loudness passes in the chain")
    for key, m in model.items():
        print(f"\n{key}: model {m['model'] / 1e9:.3f} GB ({m['model'] / u:.1f} track copies), "
              f"ideal {m['ideal'] / 1e9:.3f} GB ({m['ideal'] / u:.1f})")
        if key == "chain":
            groups: dict[str, float] = {}
            for t, b in m["terms"]:
                g = t.split(":")[0]
                groups[g] = groups.get(g, 0.0) + b
            for g, b in groups.items():
                print(f"    {g:52s} {b / 1e6:10.1f} MB")
        else:
            for t, b in m["terms"]:
                print(f"    {t:52s} {b / 1e6:10.1f} MB")


def compare(reference: str, other: str, seconds: float, rate: int, seed: int) -> list[tuple[str, str, float]]:
    """Every stage and the whole chain on two backends from the same input, for the
    issue's "relative error documented per stage": prints, per stage and input
    (the bench material, and white noise at -12 dBFS drawn from ``seed``), the
    largest |other - reference| over the largest |reference|; for the limiter and the
    chain also each backend's 4x and 16x true peak against the ceiling. Returns
    [(input, stage, relative error)]. Dither is compared undithered (the two
    backends draw different noise by design)."""
    rows = []
    noise = (10 ** (-12 / 20) * np.random.default_rng(seed).standard_normal((2, int(seconds * rate)))
             ).astype(np.float32)
    drive = np.float32(10.0 ** (LIMITER_DRIVE_DB / 20.0))
    undithered = DitherParams(bit_depth=16, dither=False)
    stages = [("eq", lambda x: eq.apply_eq(x, rate, EQ)),
              ("reverb", lambda x: reverb.apply_reverb(x, rate, REVERB)),
              ("oversample 4x", lambda x: oversample.upsample(x, 4)),
              ("limiter (+6 dB)", lambda x: limiter.limit(x * drive, rate, LIMITER).audio),
              ("dither 16-bit, undithered", lambda x: dither.quantize(x, undithered)),
              ("chain master()", lambda x: master(x, rate, CHAIN).audio)]
    print(f"# {other} against {reference}, same input: max |difference| / max |{reference}| per stage; "
          f"true peaks of the limited outputs (ceiling {LIMITER.ceiling_dbtp} dBTP, the chain's "
          f"{CHAIN.limiter.ceiling_dbtp} dBTP); noise seed {seed}")
    for label, host in (("music", material(seconds, rate)), ("noise", noise)):
        for stage, fn in stages:
            outs = {}
            for name in (reference, other):
                outs[name] = backend.to_host(fn(backend.to_device(host, name))).astype(np.float64)
            a, b = outs[reference], outs[other]
            err = float(np.abs(b - a).max() / max(np.abs(a).max(), 1e-30)) if a.shape == b.shape else math.inf
            peaks = ""
            if stage.startswith(("limiter", "chain")):
                peaks = "  true peak 4x/16x: " + ", ".join(
                    f"{n} {loudness.true_peak_dbtp(o, 4):.4f}/{loudness.true_peak_dbtp(o, 16):.4f}"
                    for n, o in outs.items())
            print(f"  {label:5s}  {stage:28s} relative error {err:9.2e}{peaks}", flush=True)
            rows.append((label, stage, err))
        m = {n: loudness.measure(backend.to_device(host, n), rate) for n in (reference, other)}
        print(f"  {label:5s}  {'loudness measure':28s} integrated {m[reference].integrated_lufs:.6f} / "
              f"{m[other].integrated_lufs:.6f} LUFS, LRA {m[reference].loudness_range_lu:.4f} / "
              f"{m[other].loudness_range_lu:.4f} LU, true peak {m[reference].true_peak_dbtp:.6f} / "
              f"{m[other].true_peak_dbtp:.6f} dBTP", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=240.0, help="track length in seconds (default 240)")
    ap.add_argument("--rate", type=int, default=48000, help="sample rate in Hz (default 48000)")
    ap.add_argument("--repeat", "--repeats", dest="repeat", type=int, default=3,
                    help="timed runs per stage after one warm-up; the best counts (default 3)")
    ap.add_argument("--gpu-repeat", type=int, default=None,
                    help="timed runs per stage on the GPU (CUDA events, median; default: --repeat)")
    ap.add_argument("--flat", action="store_true", help="the plain synth loop, without section dynamics")
    ap.add_argument("--bandwidth-mib", type=int, default=0,
                    help="size of the bandwidth copy (default: 1024 MiB on the GPU, 256 MiB on the host)")
    ap.add_argument("--model", action="store_true",
                    help="print the bytes model term by term (for --seconds/--rate, --passes) and exit")
    ap.add_argument("--passes", type=int, default=2, help="loudness passes for --model (default 2)")
    ap.add_argument("--backend", default="cpu,gpu" if backend.gpu_available() else "cpu",
                    help="comma-separated backends: cpu, gpu, auto (default: cpu, plus gpu when CuPy sees one)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or (args.gpu_repeat is not None and args.gpu_repeat < 1):
        ap.error("--repeat and --gpu-repeat must be at least 1")
    if args.model:
        print_model(args.seconds, args.rate, args.passes)
        return 0
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
    print("# malloc as on the farm's workers: " + " ".join(
        f"{k}={os.environ.get(k)}" for k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")))
    print(f"# material: {'flat loop' if args.flat else 'arranged'}, {m.integrated_lufs:.1f} LUFS, "
          f"LRA {m.loudness_range_lu:.1f} LU, {m.true_peak_dbtp:.1f} dBTP")
    gpu_repeat = args.gpu_repeat or args.repeat
    print(f"# {args.seconds:.0f} s of {args.rate} Hz stereo float32; best (and median) of {args.repeat} "
          f"(GPU: {gpu_repeat}, CUDA events) after a warm-up; RTF = audio seconds / seconds")
    for name in dict.fromkeys(names):
        run(name, args.seconds, args.rate, gpu_repeat if name == "gpu" else args.repeat, args.flat,
            args.bandwidth_mib)
    if "gpu" in names and "cpu" in names:
        compare("cpu", "gpu", min(args.seconds, 30.0), args.rate, seed=int(time.time()) % 100_000)
    return 0


if __name__ == "__main__":
    from farm.cluster import WORKER_MALLOC_ENV

    if any(os.environ.get(k) != v for k, v in WORKER_MALLOC_ENV.items()):
        # glibc reads these at start: run again as a farm worker runs (farm.cluster.WORKER_MALLOC_ENV)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **WORKER_MALLOC_ENV})
    sys.exit(main())
