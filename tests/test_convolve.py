"""fftconvolve (overlap-save and single-FFT paths) and convolve_mimo against
direct float64 convolution and scipy.signal.fftconvolve, on every backend."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from conftest import tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import backend, convolve
from kernels.convolve import block_size, convolve_mimo, fftconvolve

MODES = ("full", "same", "valid")


def _direct(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """Float64 direct convolution of every row of ``a`` with ``b`` (1-D)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64)
    return np.stack([scipy.signal.convolve(row, b, mode=mode, method="direct") for row in a])


def _close(got, want, dtype):
    got = backend.to_host(got)
    assert got.shape == want.shape
    scale = max(np.max(np.abs(want)), 1e-30)
    err = np.max(np.abs(got - want)) / scale if want.size else 0.0
    assert err <= tol(np.dtype(dtype), f32=1e-5, f64=1e-10), f"relative error {err:.3g}"


def _signals(n, m, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((channels, n)), rng.standard_normal(m)


# Lengths that hit: filter longer than the signal, one-sample inputs, odd/even,
# exact multiples of a hop, and (with the default block sizes) overlap-save.
LENGTHS = [(1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (100, 1), (1, 100), (513, 512), (512, 513),
           (1000, 4000), (4096, 4096), (20000, 7), (40000, 1000), (40001, 999), (33333, 4097)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,m", LENGTHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_direct(xp, n, m, mode, dtype):
    a, b = _signals(n, m)
    a, b = a.astype(dtype), b.astype(dtype)
    got = fftconvolve(xp.asarray(a), xp.asarray(b), mode)
    assert got.dtype == dtype
    _close(got, _direct(a, b, mode), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,m", [(1, 1), (5, 3), (3, 5), (257, 31), (1000, 64), (64, 1000), (999, 1),
                                 (2, 700), (4097, 129)])
@pytest.mark.parametrize("min_block", [1, 64, 300])
def test_overlap_save_small_blocks(xp, monkeypatch, n, m, mode, min_block):
    """Tiny blocks force overlap-save with many frames on short inputs."""
    monkeypatch.setattr(convolve, "MIN_BLOCK", min_block)
    monkeypatch.setattr(convolve, "BLOCK_FACTOR", 2)
    monkeypatch.setattr(convolve, "MIN_FRAMES", 1)
    a, b = _signals(n, m)
    _close(fftconvolve(xp.asarray(a), xp.asarray(b), mode), _direct(a, b, mode), np.float64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3000), m=st.integers(1, 3000), mode=st.sampled_from(MODES),
       min_block=st.sampled_from([1, 16, 100, 4096]), frames=st.sampled_from([1, 4]),
       seed=st.integers(0, 2 ** 16))
def test_property_random_lengths(xp, n, m, mode, min_block, frames, seed):
    a, b = _signals(n, m, channels=1, seed=seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convolve, "MIN_BLOCK", min_block)
        mp.setattr(convolve, "MIN_FRAMES", frames)
        got = fftconvolve(xp.asarray(a), xp.asarray(b), mode)
    _close(got, scipy.signal.fftconvolve(a, b[None, :], mode=mode, axes=-1), np.float64)


def test_overlap_save_used_for_long_signals():
    """A 4-minute track with 8k and 144k taps goes through overlap-save with
    fast FFT sizes >= 2M - 1; a filter longer than the signal does not."""
    n = 240 * 48000
    for m in (8191, 144000):
        size = block_size(n, m)
        assert size is not None and size >= 4 * m
        assert size == backend.FFT.next_fast_len(size)
    assert block_size(1000, 144000) is None
    assert block_size(144000, 144000) is None


def test_large_float32_track_against_scipy(xp):
    """A stereo float32 signal with a long filter: overlap-save over many frames
    stays within float32 tolerance of scipy's float64 single FFT."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 600_000)).astype(np.float32)
    b = (rng.standard_normal(10_000) * np.exp(-np.arange(10_000) / 2000)).astype(np.float32)
    assert block_size(a.shape[-1], b.size) is not None
    want = scipy.signal.fftconvolve(a.astype(np.float64), b.astype(np.float64)[None, :])
    _close(fftconvolve(xp.asarray(a), xp.asarray(b)), want, np.float32)


@pytest.mark.parametrize("n", [300, 50_000])
def test_broadcasting(xp, n):
    rng = np.random.default_rng(1)
    # (C, 1, N) * (K, M) -> (C, K, N+M-1): every channel with a bank of filters
    a = rng.standard_normal((2, 1, n))
    b = rng.standard_normal((3, 65))
    got = backend.to_host(fftconvolve(xp.asarray(a), xp.asarray(b)))
    assert got.shape == (2, 3, n + 64)
    for c in range(2):
        for k in range(3):
            _close(got[c, k][None], _direct(a[c, 0], b[k], "full"), np.float64)
    # mono filter on every channel, and (1, N) with a stereo filter pair
    _close(fftconvolve(xp.asarray(a[:, 0]), xp.asarray(b[0])), _direct(a[:, 0], b[0], "full"), np.float64)
    got = backend.to_host(fftconvolve(xp.asarray(a[0]), xp.asarray(b[:2])))
    want = np.concatenate([_direct(a[0, 0], b[k], "full") for k in range(2)])
    _close(got, want, np.float64)


def test_mixed_dtypes_give_float64(xp):
    a = xp.asarray(np.ones((2, 10), np.float32))
    assert fftconvolve(a, xp.asarray(np.ones(3))).dtype == np.float64
    assert fftconvolve(a, xp.asarray(np.ones(3, np.float32))).dtype == np.float32


def test_input_errors(xp):
    a = xp.asarray(np.ones((2, 10)))
    with pytest.raises(ValueError, match="mode"):
        fftconvolve(a, a, "circular")
    with pytest.raises(ValueError, match="non-empty"):
        fftconvolve(a, xp.asarray(np.ones(0)))
    with pytest.raises(TypeError, match="real"):
        fftconvolve(a, xp.asarray(np.ones(3, complex)))


def _mimo_reference(x, h):
    c_out, c_in, _ = h.shape
    return np.stack([sum(_direct(x[i], h[o, i], "full")[0] for i in range(c_in)) for o in range(c_out)])


@pytest.mark.parametrize("n,m", [(1, 1), (50, 400), (4000, 33), (60_000, 2000), (60_001, 1)])
@pytest.mark.parametrize("c_out,c_in", [(2, 2), (1, 2), (3, 2), (2, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mimo_matches_direct(xp, n, m, c_out, c_in, dtype):
    rng = np.random.default_rng(n + m)
    x = rng.standard_normal((c_in, n)).astype(dtype)
    h = rng.standard_normal((c_out, c_in, m)).astype(dtype)
    got = convolve_mimo(xp.asarray(x), xp.asarray(h))
    assert got.dtype == dtype
    _close(got, _mimo_reference(x.astype(np.float64), h.astype(np.float64)), dtype)


def test_mimo_identity_and_swap(xp):
    """h = identity passes channels through; the anti-diagonal swaps them."""
    x = np.random.default_rng(2).standard_normal((2, 30_000))
    eye = np.zeros((2, 2, 1))
    eye[0, 0, 0] = eye[1, 1, 0] = 1.0
    _close(convolve_mimo(xp.asarray(x), xp.asarray(eye)), x, np.float64)
    _close(convolve_mimo(xp.asarray(x), xp.asarray(eye[::-1].copy())), x[::-1], np.float64)


def test_mimo_shape_errors(xp):
    with pytest.raises(ValueError, match="C_in"):
        convolve_mimo(xp.asarray(np.ones((2, 10))), xp.asarray(np.ones((2, 3, 5))))
    with pytest.raises(ValueError, match="C_in"):
        convolve_mimo(xp.asarray(np.ones((2, 10))), xp.asarray(np.ones((2, 5))))


@pytest.mark.parametrize("n, m", [(200_000, 65), (3000, 65), (40, 65), (100_000, 2001)])
def test_frames_view_is_the_full_convolution(xp, n, m):
    """fftconvolve_frames: flat sample k of the (..., frames, hop) view is full-convolution
    sample k, the same values as fftconvolve bit for bit (overlap-save, one FFT, and a
    signal shorter than the filter)."""
    rng = np.random.default_rng(n + m)
    x = xp.asarray(rng.standard_normal((2, 1, n)).astype(np.float32))
    bank = xp.asarray(rng.standard_normal((3, m)).astype(np.float32))
    frames = convolve.fftconvolve_frames(x, bank)
    full = n + m - 1
    assert frames.shape[:2] == (2, 3) and frames.shape[-2] * frames.shape[-1] >= full
    flat = backend.to_host(frames).reshape(2, 3, -1)[..., :full]
    want = backend.to_host(fftconvolve(x, bank))
    if xp is np:
        np.testing.assert_array_equal(flat, want)
    else:
        np.testing.assert_allclose(flat, want, rtol=0, atol=1e-5 * np.abs(want).max())
