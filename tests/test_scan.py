"""Parallel scans (kernels.scan) against the plain sequential float64 loop,
on every backend: affine-min/max recursions with varying or constant
coefficients, batched, any length, and the one-pole smoother."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import backend, scan

# Relative to max(1, |reference|): float32 compositions round in a different
# order than the loop; float64 agrees to rounding.
TOL = {np.float32: 2e-6, np.float64: 1e-12}

SIZES = st.one_of(st.sampled_from([1, 2, 3, 4, 63, 64, 65, 128, 255, 256, 1000, 1024, 4097]),
                  st.integers(1, 2500))


def _err(got, want) -> float:
    got = backend.to_host(got).astype(np.float64)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want)))) if want.size else 0.0


def _inputs(rng, shape, dtype, a_kind, b_kind):
    t = rng.standard_normal(shape).astype(dtype)
    if a_kind == "array":
        a = rng.uniform(0.0, 1.0, shape).astype(dtype)
        a[..., rng.random(shape[-1]) < 0.05] = 0.0  # a = 0 resets the state
    else:
        a = float(rng.choice([0.0, 0.5, 0.999, 1.0]))
    b = rng.standard_normal(shape).astype(dtype) if b_kind == "array" else float(rng.choice([0.0, -0.25, 0.1]))
    return t, a, b


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=SIZES, lead=st.sampled_from([(), (1,), (2,), (2, 3)]), dtype=st.sampled_from([np.float32, np.float64]),
       a_kind=st.sampled_from(["array", "const"]), b_kind=st.sampled_from(["array", "const"]),
       op=st.sampled_from(["min", "max"]), y0_kind=st.sampled_from(["zero", "scalar", "array"]),
       block=st.sampled_from([2, 4, 64]), sequential=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_affine_scan_matches_sequential_reference(xp, n, lead, dtype, a_kind, b_kind, op, y0_kind, block,
                                                  sequential, seed):
    """Both algorithms: the parallel scan (the device's, run on NumPy too when
    ``sequential`` is False) and the host's compiled loop."""
    rng = np.random.default_rng(seed)
    shape = lead + (n,)
    t, a, b = _inputs(rng, shape, dtype, a_kind, b_kind)
    y0 = {"zero": 0.0, "scalar": 0.7, "array": rng.standard_normal(lead).astype(dtype)}[y0_kind]
    dev = (lambda v: v if isinstance(v, float) else xp.asarray(v))
    fn = scan.affine_min_scan if op == "min" else scan.affine_max_scan
    with _method(block, sequential):  # small blocks recurse on short inputs too
        got = fn(dev(t), dev(a), dev(b), dev(y0))
    assert got.dtype == dtype and tuple(got.shape) == shape
    want = scan.reference(t, a, b, y0, op)
    assert _err(got, want) <= TOL[dtype]
    if sequential and xp is np and dtype == np.float64:  # the compiled loop is the reference's arithmetic
        assert np.array_equal(got, want)


@contextlib.contextmanager
def _method(block: int, sequential: bool):
    old = scan.BLOCK, scan.HOST_SEQUENTIAL
    scan.BLOCK, scan.HOST_SEQUENTIAL = block, sequential
    try:
        yield
    finally:
        scan.BLOCK, scan.HOST_SEQUENTIAL = old


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=SIZES, dtype=st.sampled_from([np.float32, np.float64]), varying=st.booleans(),
       block=st.sampled_from([2, 8, 64]), sequential=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_one_pole_matches_sequential_reference(xp, n, dtype, varying, block, sequential, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n)).astype(dtype)
    a = rng.uniform(0.9, 0.9999, (2, n)).astype(dtype) if varying else float(rng.uniform(0.9, 0.99999))
    with _method(block, sequential):
        got = scan.one_pole(xp.asarray(x), a if isinstance(a, float) else xp.asarray(a), y0=0.3)
    want = scan.reference(None, a, (1.0 - np.asarray(a, dtype=np.float64)) * x, 0.3)
    assert got.dtype == dtype
    assert _err(got, want) <= TOL[dtype]


def test_max_form_is_the_min_form_mirrored(xp):
    rng = np.random.default_rng(1)
    t, a, b = rng.standard_normal(3000), rng.uniform(0, 1, 3000), rng.standard_normal(3000)
    hi = backend.to_host(scan.affine_max_scan(xp.asarray(t), xp.asarray(a), xp.asarray(b), 0.2))
    lo = backend.to_host(scan.affine_min_scan(xp.asarray(-t), xp.asarray(a), xp.asarray(-b), -0.2))
    np.testing.assert_allclose(hi, -lo, rtol=0, atol=1e-12)


def test_peak_hold_with_exponential_decay(xp):
    """The limiter's release: d = max(target, r*d) decays by e in tau samples."""
    tau = 480.0
    t = np.zeros(5000)
    t[100] = 6.0
    d = backend.to_host(scan.affine_max_scan(xp.asarray(t), math.exp(-1 / tau)))
    assert d[99] == 0.0 and d[100] == 6.0
    np.testing.assert_allclose(d[100:], 6.0 * np.exp(-np.arange(4900) / tau), rtol=1e-12)


def test_long_input_float32_stays_accurate(xp):
    """A million samples through several recursion levels keeps float32 accuracy."""
    rng = np.random.default_rng(2)
    n = 1 << 20
    t = np.abs(rng.standard_normal(n)).astype(np.float32) * (rng.random(n) < 0.001)
    r = math.exp(-1 / 4800.0)
    got = backend.to_host(scan.affine_max_scan(xp.asarray(t), r))
    # exact answer by a float64 cumulative max in the log domain (host NumPy only)
    k = np.arange(n)
    with np.errstate(divide="ignore"):
        want = np.exp(np.maximum.accumulate(np.log(t.astype(np.float64)) - k * math.log(r)) + k * math.log(r))
    assert np.max(np.abs(got - want)) <= 2e-6 * np.max(want)


def test_empty_and_bad_input(xp):
    assert scan.affine_min_scan(xp.zeros((2, 0)), 0.5).shape == (2, 0)
    with pytest.raises(ValueError, match="0-d"):
        scan.affine_min_scan(xp.asarray(1.0), 0.5)
    with pytest.raises(ValueError, match="array"):
        scan.linear_scan(0.5, 0.5)
    with pytest.raises(ValueError, match="op must be"):
        scan.reference(np.zeros(3), 0.5, op="sum")


def test_host_scans_are_the_sequential_loop_and_chunks_join_exactly():
    """The host path (the compiled loop) does the reference loop's float64 operations:
    equal to it to the bit, and consecutive calls carrying y0 equal one call."""
    import numpy as np

    from kernels.scan import one_pole, reference

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5000))
    a = 0.995
    whole = one_pole(x, a, np.array([0.5, -1.0, 0.0]))
    ref = reference(None, a, x * (1.0 - a), np.array([0.5, -1.0, 0.0]))
    assert np.array_equal(whole, ref)
    first = one_pole(x[:, :1234], a, np.array([0.5, -1.0, 0.0]))
    second = one_pole(x[:, 1234:], a, first[:, -1])
    assert np.array_equal(np.concatenate([first, second], axis=1), whole)
    assert one_pole(x.astype(np.float32), a).dtype == np.float32
    # the release form the limiter and the multiband use, split at an arbitrary sample
    t = np.abs(rng.standard_normal((2, 7000)))
    b = t * 0.01
    whole = scan.affine_max_scan(t, 0.99, b, 0.25)
    assert np.array_equal(whole, reference(t, 0.99, b, 0.25, "max"))
    head = scan.affine_max_scan(t[:, :2999], 0.99, b[:, :2999], 0.25)
    tail = scan.affine_max_scan(t[:, 2999:], 0.99, b[:, 2999:], head[:, -1])
    assert np.array_equal(np.concatenate([head, tail], axis=1), whole)


def test_host_sosfilt_is_scipys_to_the_bit():
    """scan.sosfilt (the host's K-weighting) equals scipy.signal.sosfilt bit for bit:
    float32 and float64 input, several rows, the K-weighting and a random stable cascade."""
    import scipy.signal

    from kernels.loudness import k_weighting_sos

    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 20000))
    cascades = [k_weighting_sos(48000), k_weighting_sos(44100), scipy.signal.butter(6, 0.2, output="sos")]
    for sos in cascades:
        for v in (x, x.astype(np.float32), x[0]):
            want = scipy.signal.sosfilt(sos, v.astype(np.float64), axis=-1)
            got = scan.sosfilt(sos, v)
            assert got.dtype == np.float64 and got.shape == v.shape
            assert np.array_equal(got, want)
    assert scan.sosfilt(cascades[0], np.zeros((2, 0))).shape == (2, 0)


# --------------------------------------------------------------------------- the device's blocked scan


def _cpu_launch():
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel source for the host")
    return lambda source, name, work, args: cuda_host.run(source, name, args)


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("a", [0.0, 0.37, 0.9995, 1.0])
@pytest.mark.parametrize("b_kind", ["zero", "const", "array"])
def test_blocked_scan_kernels_are_the_sequential_loop_given_each_blocks_state(op, a, b_kind):
    """SCAN_CUDA's two kernels compiled for the CPU (tests/cuda_host.py): fed each
    block's true entering state (the reference's value before the block), the fix-up
    gives the sequential reference to the bit: the pick commutes with every rounded
    step. 3 rows, a length that is no multiple of the block."""
    launch = _cpu_launch()
    rng = np.random.default_rng(int(a * 1000) + len(b_kind))
    rows, n, k = 3, 5 * scan.SEQ_BLOCK + 77, scan.SEQ_BLOCK
    t = rng.standard_normal((rows, n)) * 3.0
    b = {"zero": 0.0, "const": 0.25, "array": rng.standard_normal((rows, n))}[b_kind]
    y0 = rng.standard_normal(rows)
    want = scan.reference(t, a, b, y0, op)
    nb = -(-n // k)
    b_array = not isinstance(b, float)
    common = (b if b_array else t, np.int32(b_array), np.float64(0.0 if b_array else b), np.float64(a),
              np.int32(op == "max"), np.int64(rows), np.int64(n), np.int64(k))
    local, local_end, affine_end = np.empty((rows, n)), np.empty((rows, nb)), np.empty((rows, nb))
    launch(scan.SCAN_CUDA, "farm_scan_local", rows * nb, (t,) + common + (local, local_end, affine_end))
    y_in = np.concatenate([y0[:, None], want[:, k - 1:n - 1:k]], axis=1)[:, :nb]
    out = np.empty((rows, n))
    launch(scan.SCAN_CUDA, "farm_scan_fix", rows * nb, (local,) + common + (np.ascontiguousarray(y_in), out))
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("b_kind", ["zero", "array"])
def test_blocked_scan_joins_its_blocks_to_float64_rounding(b_kind, cpu_device_dispatch):
    """The public scan dispatched as on a device (kernels compiled for the CPU): the
    limiter's release (max, a close to 1, b = 0, t >= 0) and the compressor's (b an
    array) go through blocked_scan, the block summaries through the public scan
    again; against the sequential reference, over two levels of blocks."""
    rng = np.random.default_rng(3)
    n = scan.SEQ_BLOCK ** 2 + 999  # the summaries are long enough to be blocked again
    t = np.maximum(0.0, rng.standard_normal((1, n)) * 4.0) * (rng.random((1, n)) < 0.01)
    a = math.exp(-1.0 / 2400.0)
    b = 0.0 if b_kind == "zero" else t * (1.0 - a)
    want = scan.reference(t, a, b, 1.5, "max")
    got = scan.affine_max_scan(t, a, b, 1.5)  # NumPy through the device's dispatch, kernels on the CPU
    assert cpu_device_dispatch.count("farm_scan_local") == 2  # the track's blocks, then the summaries' blocks
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(got >= t)  # never under the target: the release only holds gain reduction longer


@pytest.mark.gpu
def test_device_scans_take_the_blocked_kernels_and_agree_with_the_host(launches):
    """On a GPU: a float64 scan with a constant coefficient runs blocked_scan; the
    limiter's release against the host's sequential loop."""
    import cupy

    rng = np.random.default_rng(4)
    t = np.maximum(0.0, rng.standard_normal((2, 300_001)) * 4.0) * (rng.random((2, 300_001)) < 0.01)
    a = math.exp(-1.0 / 2400.0)
    got = cupy.asnumpy(scan.affine_max_scan(cupy.asarray(t), a, 0.0, 0.5))
    assert launches[:2] == ["farm_scan_local", "farm_scan_local"] and launches[-1] == "farm_scan_fix"
    np.testing.assert_allclose(got, scan.affine_max_scan(t, a, 0.0, 0.5), rtol=1e-12, atol=1e-12)
