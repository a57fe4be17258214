"""Host<->device moves and the per-thread CUDA streams a GPU worker's threads use
(kernels.backend): on the CPU they are identities; on a GPU (tests marked ``gpu``)
the pinned staging copies return the same bits and each thread gets its own stream."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from kernels import backend
from kernels.chain import master
from kernels.params import ChainParams, LimiterParams, LoudnessParams
from signals import music

RATE = 48000


def test_cpu_moves_are_identities_and_no_stream():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    with backend.track_stream("cpu") as s:
        assert s is None
        assert backend.to_device(x, "cpu") is x and backend.to_host(x) is x


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 7), (2, 1 << 19), (6, 300_001)])
def test_gpu_round_trip_through_pinned_staging_is_exact(shape):
    import cupy

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    with backend.track_stream("gpu"):
        dev = backend.to_device(x, "gpu")
        y = rng.standard_normal(shape).astype(np.float32)
        dev2 = backend.to_device(y[:, ::-1], "gpu")  # a second upload at once, non-contiguous
        assert isinstance(dev, cupy.ndarray)
        np.testing.assert_array_equal(backend.to_host(dev), x)
        np.testing.assert_array_equal(backend.to_host(dev2), y[:, ::-1])
        np.testing.assert_array_equal(backend.to_host(dev[:, ::3]), x[:, ::3])
        # an array already on the device stays where it is; "cpu" brings it home
        assert backend.to_device(dev, "gpu") is dev
        np.testing.assert_array_equal(backend.to_device(dev, "cpu"), x)


@pytest.mark.gpu
def test_gpu_threads_get_their_own_streams_and_concurrent_chains_equal_sequential():
    import cupy

    chain = ChainParams(loudness=LoudnessParams(target_lufs=-14.0), limiter=LimiterParams(ceiling_dbtp=-1.0))
    tracks = [music(20.0, RATE, 2, seed=s).astype(np.float32) for s in (1, 2, 3)]

    def run(x):
        with backend.track_stream("gpu") as s:
            assert s is not None and s.ptr != 0 and cupy.cuda.get_current_stream().ptr == s.ptr  # not the null stream
            res = master(backend.to_device(x, "gpu"), RATE, chain)
            return s, backend.to_host(res.audio)

    alone = [run(x)[1] for x in tracks]
    got, streams = [None] * len(tracks), [None] * len(tracks)

    def worker(i):
        streams[i], got[i] = run(tracks[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(tracks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({s.ptr for s in streams}) == len(tracks)  # one stream per thread
    for a, b in zip(alone, got):
        np.testing.assert_array_equal(a, b)


def test_abs_max_reduces_over_the_axes_and_keeps_nan(xp):
    """backend.abs_max (a fused reduction on the device) is numpy's |x|.max(axis)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 5, 40)).astype(np.float32)
    for axis in ((0, 1), 1, (0, 1, 2, 3)):
        got = backend.to_host(backend.abs_max(xp.asarray(x), axis))
        np.testing.assert_array_equal(got, np.abs(x).max(axis=axis))
    x[1, 2, 3, 4] = np.nan
    got = backend.to_host(backend.abs_max(xp.asarray(x), (0, 1)))
    assert np.isnan(got[3, 4]) and np.isfinite(np.delete(got.reshape(-1), 3 * 40 + 4)).all()


def test_raw_kernels_are_device_only_and_can_be_turned_off():
    """backend.raw_kernels: never on NumPy; FARM_RAW_KERNELS=0 turns them off (read at import)."""
    assert backend.raw_kernels(np) is False
    code = "from kernels import backend; print(backend.RAW_KERNELS)"
    for value, want in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "FARM_RAW_KERNELS": value}).stdout.strip()
        assert out == want


@pytest.mark.gpu
def test_gpu_chain_with_and_without_raw_kernels_agree(monkeypatch, launches):
    """On a GPU: master() through the RawKernels and through their array paths."""
    import cupy

    x = cupy.asarray(music(6.0, RATE, 2).astype(np.float32))
    params = ChainParams(loudness=LoudnessParams(target_lufs=-14.0), limiter=LimiterParams(ceiling_dbtp=-1.0))
    fused = master(x, RATE, params)
    assert {"farm_curved_pair", "farm_required_gain", "farm_gain_to_db", "farm_k_frames"} <= set(launches)
    launches.clear()
    monkeypatch.setattr(backend, "RAW_KERNELS", False)
    arrays = master(x, RATE, params)
    assert launches == []
    assert fused.passes == arrays.passes
    assert abs(fused.integrated_lufs - arrays.integrated_lufs) < 1e-6 and fused.true_peak_dbtp <= -1.0
    np.testing.assert_allclose(cupy.asnumpy(fused.audio), cupy.asnumpy(arrays.audio), atol=2e-7)


def test_stage_clock_sums_spans_per_name_on_the_host():
    import time

    clock = backend.StageClock(np)
    for name, pause in (("a", 0.02), ("b", 0.01), ("a", 0.02)):
        t0 = clock.mark()
        time.sleep(pause)
        clock.add(name, t0)
    s = clock.seconds()
    assert set(s) == {"a", "b"} and s["a"] >= 0.04 and 0.01 <= s["b"] < s["a"]


@pytest.mark.gpu
def test_gpu_stage_seconds_are_the_streams_time_per_stage():
    """master() on a GPU times its stages with CUDA events (no synchronisation per stage):
    every stage is counted, each span is positive, and together they fit in the wall time."""
    import time

    import cupy

    x = cupy.asarray(music(6.0, RATE, 2).astype(np.float32))
    params = ChainParams(loudness=LoudnessParams(target_lufs=-14.0), limiter=LimiterParams(ceiling_dbtp=-1.0))
    with backend.track_stream("gpu"):
        master(x, RATE, params)  # plans, pools, compiled kernels
        t0 = time.perf_counter()
        res = master(x, RATE, params)
        backend.to_host(res.audio)
        wall = time.perf_counter() - t0
    st = res.stage_seconds
    assert {"loudness", "limiter", "dither", "true_peak"} <= set(st)
    assert all(v > 0 for v in st.values()) and sum(st.values()) <= wall


def test_stage_clock_reads_device_events_once_at_the_end():
    """The device branch's bookkeeping, with a stand-in for CuPy's event API (``cuda.Event``:
    ``record``/``synchronize``; ``cuda.get_elapsed_time(start, end)`` in ms) since no device
    is here: spans are end minus start per name, and only the last event is waited for."""
    import types

    ticks, waited = iter(range(0, 1000, 10)), []

    class Event:
        def record(self):
            self.t = next(ticks)  # ms on the "stream": 0, 10, 20, ...

        def synchronize(self):
            waited.append(self.t)

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda a, b: float(b.t - a.t)))
    clock = backend.StageClock(fake)
    a0 = clock.mark()            # 0
    clock.add("eq", a0)          # 10
    b0 = clock.mark()            # 20
    clock.add("limiter", b0)     # 30
    c0 = clock.mark()            # 40
    clock.add("eq", c0)          # 50
    assert waited == []          # nothing waited for while the stages were queued
    assert clock.seconds() == {"eq": 0.02, "limiter": 0.01}
    assert waited == [50]
