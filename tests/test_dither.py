"""Dither/quantize: values on the PCM grid, TPDF error statistics, noise-shaped spectrum."""
import numpy as np
import pytest
import scipy.signal

from kernels import backend
from kernels.dither import LIPSHITZ_44K, lsb, max_error_lsb, quantize
from kernels.params import DitherParams
from signals import music, sine


@pytest.mark.parametrize("bits", [16, 24])
def test_values_lie_on_the_pcm_grid_and_in_range(xp, bits):
    x = xp.asarray(music(1.0, seed=3) * 1.2, dtype=xp.float32)  # some samples clip
    q = backend.to_host(quantize(x, DitherParams(bit_depth=bits)))
    codes = q.astype(np.float64) * 2.0 ** (bits - 1)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(codes, np.round(codes))
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1


def test_bypass_and_float_output_return_input_unchanged(xp):
    x = xp.asarray(music(0.5), dtype=xp.float32)
    assert quantize(x, DitherParams(bit_depth=16, bypass=True)) is x
    assert quantize(x, DitherParams(bit_depth=None)) is x


def test_tpdf_error_is_unbiased_with_the_right_power(xp):
    # a very quiet sine: without dither the error would be signal-correlated
    x = xp.asarray(sine(997.0, 2.0, level_dbfs=-90.0), dtype=xp.float32)
    q = backend.to_host(quantize(x, DitherParams(bit_depth=16)))
    err = (q.astype(np.float64) - backend.to_host(x)) / lsb(16)
    # TPDF (variance 1/6) + rounding (1/12) = 1/4 LSB^2
    assert abs(err.mean()) < 0.01
    assert err.var() == pytest.approx(0.25, rel=0.03)
    assert np.abs(err).max() <= max_error_lsb(DitherParams(bit_depth=16)) + 1e-9
    # the error is uncorrelated with the signal
    xs = backend.to_host(x)[0]
    assert abs(np.corrcoef(err[0], xs)[0, 1]) < 0.02


def test_undithered_rounding_is_plain_rounding(xp):
    x = xp.asarray(music(0.2, seed=1), dtype=xp.float32)
    q = backend.to_host(quantize(x, DitherParams(bit_depth=16, dither=False)))
    ref = np.clip(np.rint(backend.to_host(x).astype(np.float64) * 32768), -32768, 32767) / 32768
    np.testing.assert_array_equal(q, ref.astype(np.float32))


def test_noise_shaping_moves_error_power_to_high_frequencies(xp):
    rate = 44100
    x = xp.asarray(sine(1000.0, 3.0, rate=rate, level_dbfs=-40.0), dtype=xp.float32)
    flat = backend.to_host(quantize(x, DitherParams(bit_depth=16)))
    shaped = backend.to_host(quantize(x, DitherParams(bit_depth=16, noise_shaping="lipshitz")))
    xs = backend.to_host(x).astype(np.float64)
    f, p_flat = scipy.signal.welch((flat - xs)[0], fs=rate, nperseg=4096)
    _, p_shaped = scipy.signal.welch((shaped - xs)[0], fs=rate, nperseg=4096)
    mid = (f > 2000) & (f < 5000)  # where the ear is most sensitive
    top = f > 18000
    assert 10 * np.log10(p_shaped[mid].mean() / p_flat[mid].mean()) < -6.0
    assert 10 * np.log10(p_shaped[top].mean() / p_flat[top].mean()) > 10.0
    # and it follows the designed noise transfer function 1 - sum h z^-(k+1)
    _, ntf = scipy.signal.freqz(np.r_[1.0, -np.asarray(LIPSHITZ_44K)], worN=f, fs=rate)
    band = (f > 500) & (f < 20000)
    measured = 10 * np.log10(p_shaped[band] / p_flat[band])
    designed = 20 * np.log10(np.abs(ntf[band]))
    assert np.median(np.abs(measured - designed)) < 1.0


def test_dither_is_deterministic_for_a_seed(xp):
    x = xp.asarray(music(0.3), dtype=xp.float32)
    a = backend.to_host(quantize(x, DitherParams(bit_depth=16, seed=7)))
    b = backend.to_host(quantize(x, DitherParams(bit_depth=16, seed=7)))
    c = backend.to_host(quantize(x, DitherParams(bit_depth=16, seed=8)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dither", [True, False])
@pytest.mark.parametrize("bits", [16, 24])
def test_compiled_noise_shaping_equals_the_vectorised_loop_bit_for_bit(monkeypatch, dither, bits):
    """The host's compiled feedback loop (kernels.dither._shaped_host) against the
    vectorised loop the device runs, on NumPy: partial last chunks, 1 and 6 channels,
    digital silence and samples past full scale (the clip)."""
    from kernels import dither as dither_mod

    rng = np.random.default_rng(bits)
    p = DitherParams(bit_depth=bits, noise_shaping="lipshitz", dither=dither, seed=7)
    cases = [music(1.3, 44100, 2).astype(np.float32),
             (0.3 * rng.standard_normal((6, 3 * dither_mod.SHAPING_CHUNK + 17))).astype(np.float32),
             np.zeros((1, 5000), dtype=np.float32),
             np.array([[1.5, -1.5, 0.99999, -1.0, 1e-9] * 900], dtype=np.float32)]
    for x in cases:
        compiled = quantize(x, p)
        monkeypatch.setattr(dither_mod, "HOST_COMPILED", False)
        vectorised = quantize(x, p)
        monkeypatch.setattr(dither_mod, "HOST_COMPILED", True)
        assert compiled.dtype == vectorised.dtype == np.float32
        assert compiled.tobytes() == vectorised.tobytes()


def test_device_noise_shaping_kernel_source_equals_the_host_loop_on_the_cpu():
    """kernels.dither.SHAPING_CUDA, the device's kernel, compiled for the CPU
    (tests/cuda_host.py) with the device's float rules: the same bytes as the
    compiled host loop, with and without dither, for partial chunks and clipping."""
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel source for the host")
    from kernels import dither as dither_mod

    rng = np.random.default_rng(11)
    x = (0.4 * rng.standard_normal((3, 2 * dither_mod.SHAPING_CHUNK + 999))).astype(np.float32)
    x[1, :50] = 1.7  # past full scale: the clip
    scale = 2.0 ** 15
    for d in (None, rng.random(x.shape) - rng.random(x.shape)):
        want = dither_mod._shaped_host(x, d, scale)
        out = np.empty(x.shape, dtype=np.float32)
        work, args = dither_mod.shaping_args(x.astype(np.float64), d, scale, out)
        assert work == 3 * 3
        cuda_host.run(dither_mod.SHAPING_CUDA, "farm_lipshitz_shape", args)
        assert out.tobytes() == want.tobytes()


@pytest.mark.gpu
def test_device_noise_shaping_equals_the_host_for_the_same_noise():
    """On a GPU: the kernel against the host loop, fed the same TPDF noise."""
    import cupy

    from kernels import dither as dither_mod

    rng = np.random.default_rng(12)
    x = (0.4 * rng.standard_normal((2, 5 * dither_mod.SHAPING_CHUNK + 3))).astype(np.float32)
    d = rng.random(x.shape) - rng.random(x.shape)
    for noise in (None, d):
        want = dither_mod._shaped_host(x, noise, 2.0 ** 15)
        got = dither_mod._shaped_device(cupy.asarray(x), None if noise is None else cupy.asarray(noise), 2.0 ** 15)
        assert cupy.asnumpy(got).tobytes() == want.tobytes()


@pytest.mark.parametrize("bits", [16, 24])
def test_device_flat_tpdf_kernel_source_equals_the_array_path_on_the_cpu(bits):
    """kernels.dither.FLAT_CUDA (flat TPDF quantization in one pass on a device),
    compiled for the CPU (tests/cuda_host.py) on a block in the middle of a track
    (row-strided views), with and without dither, samples past full scale: the
    array path's (flat_block) bytes."""
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel source for the host")
    from kernels import dither as dither_mod

    rng = np.random.default_rng(bits)
    x = (0.5 * rng.standard_normal((2, 10_000))).astype(np.float32)
    x[0, 3000:3010] = [1.5, -1.5, 1.0, -1.0, 0.99999994, 3e-8, -3e-8, 0.5, 2.0, -2.0]
    scale = 2.0 ** (bits - 1)
    s, e = 2500, 7500
    for dithered in (True, False):
        r1 = rng.random((2, e - s)) if dithered else None
        r2 = rng.random((2, e - s)) if dithered else None
        want = dither_mod.flat_block(np, x[:, s:e], r1, r2, scale).astype(np.float32)
        out = np.zeros(x.shape, dtype=np.float32)
        work, args = dither_mod.flat_args(x[:, s:e], r1, r2, scale, out[:, s:e])
        cuda_host.run(dither_mod.FLAT_CUDA, "farm_tpdf_quantize", args)
        assert work == 2 * (e - s)
        assert out[:, s:e].tobytes() == want.tobytes() and not out[:, :s].any() and not out[:, e:].any()


@pytest.mark.gpu
def test_device_flat_tpdf_kernel_equals_the_array_path_on_the_device(launches):
    """On a GPU: float32 input takes the kernel, float64 input (the same values) the
    array path; the same draws, so the same bytes."""
    import cupy

    x = cupy.asarray(music(3.0, 48000, 2).astype(np.float32))
    for p in (DitherParams(bit_depth=16), DitherParams(bit_depth=24, dither=False)):
        launches.clear()
        fused = quantize(x, p)
        assert launches and set(launches) == {"farm_tpdf_quantize"}
        arrays = quantize(x.astype(cupy.float64), p)
        assert cupy.asnumpy(fused).tobytes() == cupy.asnumpy(arrays).tobytes()
