"""The device's code path of whole kernels and the chain, run on the CPU.

No GPU is lent to CI and to most sessions. The RawKernels' arithmetic is held to
the array paths kernel by kernel elsewhere (tests/cuda_host.py); here NumPy takes
the device's dispatch end to end (the ``cpu_device_dispatch`` fixture: every
RawKernel compiled for the CPU, the device's parallel scans and chunked
K-weighting), so the conditions that pick each kernel, the arguments and buffers
built for it and what the callers do with its output run inside ``master()``,
``loudness.measure``, ``dither.quantize`` and the second meter, and are held to
the host path's results.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from farm.presets import load_preset
from kernels import dither, loudness, pyloudnorm_meter
from kernels.chain import master
from kernels.params import DitherParams
from signals import music

RATE = 48000
LSB16 = 2.0 ** -15


TARGET_LUFS = -8.0  # loud enough that the limiter works on this music (at -14 it has nothing to do)


def _preset_chain(name: str, bit_depth: int | None):
    chain = load_preset(name).chain
    return dataclasses.replace(chain, dither=dataclasses.replace(chain.dither, bit_depth=bit_depth,
                                                                 bypass=bit_depth is None),
                               loudness=dataclasses.replace(chain.loudness, target_lufs=TARGET_LUFS))


@pytest.fixture(scope="module")
def track():
    return music(8.0, RATE, 2).astype(np.float32)


@pytest.mark.parametrize("preset", ["master", "streaming"])
def test_master_through_the_device_dispatch_equals_the_host_path(preset, track, request):
    chain = _preset_chain(preset, None)  # the float master: no dither noise between the paths
    host = master(track, RATE, chain)
    launched = request.getfixturevalue("cpu_device_dispatch")
    dev = master(track, RATE, chain)
    assert {"farm_curved_pair", "farm_required_gain", "farm_gain_to_db", "farm_gain_from_db", "farm_k_frames",
            "farm_k_power", "farm_scan_local", "farm_scan_fix"} <= set(launched)
    assert host.max_gain_reduction_db > 3.0  # the limiter's gain path ran
    assert (dev.passes, dev.reached, dev.reason) == (host.passes, host.reached, host.reason)
    assert abs(dev.integrated_lufs - host.integrated_lufs) < 1e-9
    assert dev.gain_db == pytest.approx(host.gain_db, abs=1e-9)
    assert dev.true_peak_dbtp <= chain.limiter.ceiling_dbtp and host.true_peak_dbtp <= chain.limiter.ceiling_dbtp
    # the same FFTs on both sides: what is left is the scans' and the K-weighting chunks' float64
    # rounding (<= 1e-12), under float32's; measured equal to the bit (2026-12-02)
    np.testing.assert_allclose(dev.audio, host.audio, rtol=0, atol=1e-6)


def test_quantized_master_through_the_device_dispatch(track, request):
    """16-bit flat TPDF through the device's fused kernel (the same draws as the host's
    blocks): on the PCM grid, the quantized true peak under the ceiling, and the host's
    master's samples (measured equal to the bit; a sample at a rounding boundary may move
    one LSB)."""
    chain = _preset_chain("master", 16)
    host = master(track, RATE, chain)
    launched = request.getfixturevalue("cpu_device_dispatch")
    res = master(track, RATE, chain)
    assert "farm_tpdf_quantize" in launched
    q = res.audio.astype(np.float64) / LSB16
    assert np.array_equal(q, np.round(q))
    assert res.true_peak_dbtp <= chain.limiter.ceiling_dbtp
    diff = np.abs(res.audio - host.audio)
    assert diff.max() <= LSB16 and np.mean(diff > 0) < 1e-4


def test_noise_shaped_dither_through_the_device_kernel_equals_the_host_loop(track, request):
    """Lipshitz shaping: the device kernel given the same draws as the host's compiled loop."""
    params = DitherParams(bit_depth=16, noise_shaping="lipshitz", seed=5)
    x = track * np.float32(0.5)
    want = dither.quantize(x, params)
    launched = request.getfixturevalue("cpu_device_dispatch")
    got = dither.quantize(x, params)
    assert "farm_lipshitz_shape" in launched
    np.testing.assert_array_equal(got, want)


def test_meters_through_the_device_dispatch(track, request):
    host = loudness.measure(track, RATE)
    second_host = pyloudnorm_meter.integrated_loudness(track, RATE)
    launched = request.getfixturevalue("cpu_device_dispatch")
    dev = loudness.measure(track, RATE)
    second = pyloudnorm_meter.integrated_loudness(track, RATE)
    assert "farm_k_frames" in launched
    for field in ("integrated_lufs", "loudness_range_lu", "max_momentary_lufs", "max_short_term_lufs",
                  "true_peak_dbtp", "sample_peak_dbfs"):
        assert abs(getattr(dev, field) - getattr(host, field)) < 1e-6, field
    assert abs(second - second_host) < 1e-9
