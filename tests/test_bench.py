"""bench/kernels.py and bench/host.py on the CPU (a few seconds of audio) and bench/gpu_run.sh's syntax.

The GPU half of the benchmark (CUDA events, the device-copy bandwidth) runs
only where CuPy sees a GPU; these tests keep its shared code path (timing,
bytes model, floor table) working where none is.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_script(name: str):
    """bench/NAME.py as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _bench_script("kernels")


def test_bytes_model_counts_every_stage(bench):
    seconds, rate = 240.0, 48000
    track = 2 * int(seconds * rate) * 4  # one float32 stereo copy
    m = bench.bytes_model(seconds, rate, passes=2)
    assert set(m) == {"eq", "reverb", "oversample", "limiter", "loudness", "dither", "chain"}
    for key, v in m.items():
        assert v["model"] >= v["ideal"] > 0, key
        assert sum(b for _, b in v["terms"]) == pytest.approx(v["model"])
    assert m["eq"]["ideal"] == 2 * track and m["loudness"]["ideal"] == track
    assert m["oversample"]["ideal"] == 5 * track  # read x, write 4x
    # the overlap-save EQ moves the track a dozen times or so (pad, frame, 2 FFTs, multiply, crop)
    assert 6 * track < m["eq"]["model"] < 20 * track
    # one more loudness pass costs one more unchecked limiter and measurement
    m3 = bench.bytes_model(seconds, rate, passes=3)
    assert m3["chain"]["model"] > m["chain"]["model"] and m3["chain"]["ideal"] == m["chain"]["ideal"] + 5 * track
    # short tracks take the single-FFT path of the reverb and the unchunked K-weighting
    short = bench.bytes_model(2.0, rate, passes=1)
    assert all(v["model"] > 0 for v in short.values())


def test_kernels_bench_prints_the_floor_table_on_the_cpu(bench, capsys):
    assert bench.main(["--seconds", "6", "--repeat", "1", "--backend", "cpu", "--bandwidth-mib", "16"]) == 0
    out = capsys.readouterr().out
    assert "WHOLE CHAIN master() -14 LUFS" in out
    assert "Lipshitz shaping" in out and "second meter (pyloudnorm_meter)" in out  # the extra rows
    assert "cpu  bandwidth" in out and "GB/s" in out
    header = next(line for line in out.splitlines() if "model GB" in line)
    assert "floor ms" in header and "reached" in header and "ideal GB" in header
    rows = [line for line in out.splitlines() if line.startswith("  cpu  ") and line.rstrip().endswith("%")]
    assert len(rows) == 7  # six stages and the chain
    assert "x realtime" in out.splitlines()[-1] and "of the model floor" in out.splitlines()[-1]


def test_model_only_mode(bench, capsys):
    assert bench.main(["--model", "--seconds", "240"]) == 0
    out = capsys.readouterr().out
    assert "one copy of the track = 92.2 MB" in out
    assert "limiter: model" in out and "chain: model" in out


def test_gpu_run_script_parses():
    subprocess.run(["bash", "-n", os.path.join(REPO, "bench", "gpu_run.sh")], check=True)


def test_host_bench_prints_both_workers_bounds(capsys):
    mod = _bench_script("host")
    assert mod.main(["--seconds", "3", "--repeat", "1", "--format", "wav"]) == 0
    out = capsys.readouterr().out
    lines = {w: next(line for line in out.splitlines() if line.strip().startswith(f"{w} worker:")) for w in ("CPU", "GPU")}
    bound = {w: float(line.split("at most")[1].split("%")[0]) for w, line in lines.items()}
    assert 0 < bound["CPU"] < bound["GPU"] < 100  # the device takes the meters off the GPU worker's host
    assert "second meter (pyloudnorm)" in out and "no (device)" in out


def test_backend_comparison_runs_every_stage(bench, capsys):
    """bench.compare's plumbing, host against host (the GPU run compares cpu and gpu):
    every stage on both inputs, identical outputs, the true peaks printed."""
    rows = bench.compare("cpu", "cpu", 3.0, 48000, seed=7)
    out = capsys.readouterr().out
    assert {(label, stage) for label, stage, _ in rows} >= {("music", "chain master()"), ("noise", "limiter (+6 dB)")}
    assert len(rows) == 12 and all(err == 0.0 for _, _, err in rows)
    assert "true peak 4x/16x" in out and "noise seed 7" in out and "loudness measure" in out


@pytest.fixture(scope="module")
def short_bench():
    return _bench_script("short")


def test_short_fit_recovers_a_line(short_bench):
    rows = [(s, 0.012 + 0.003 * s, 0.0) for s in (1.0, 5.0, 30.0)]
    fixed, per_second = short_bench.fit(rows)
    assert fixed == pytest.approx(0.012) and per_second == pytest.approx(0.003)


def test_short_bench_prints_the_fixed_cost_and_the_thread_table(short_bench, capsys):
    assert short_bench.main(["--backend", "cpu", "--lengths", "1,3", "--repeat", "1", "--thread-seconds", "1",
                             "--tracks", "3", "--threads", "1,2", "--batch", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    per_track = [line.split() for line in out if line.startswith("  ") and len(line.split()) == 4
                 and line.split()[0] in ("1.0", "3.0")]
    assert [r[0] for r in per_track] == ["1.0", "3.0"]
    assert float(per_track[1][1]) > float(per_track[0][1]) > 0  # longer audio, longer wall
    fixed = next(line for line in out if "FIXED COST per track" in line)
    assert fixed.startswith("  cpu  ") and "ms per audio second" in fixed
    threads = [line.split() for line in out if len(line.split()) == 6 and line.split()[0] in ("1", "2")]
    assert [t[0] for t in threads] == ["1", "2"] and float(threads[0][4]) == 1.0  # speedup against itself
    batched = next(line for line in out if "BATCHED CHAIN" in line)
    assert batched.startswith("  cpu  BATCHED CHAIN (2 x 1 s, one thread):") and "per track batched" in batched
    verdict = out[-1]
    assert verdict.startswith("  cpu  SHORT TRACKS (1 s): chain and meters at best") and "% of the node's codec rate" in verdict
