"""Oversampling: >= 80 dB stopband, exact pass-through of input samples, time alignment."""
import numpy as np
import pytest
import scipy.signal

from kernels import backend
from kernels.oversample import design, upsample
from signals import music, sine


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_filter_has_80_db_stopband_and_flat_passband(factor):
    h = design(factor)
    f, resp = scipy.signal.freqz(h, worN=1 << 15, fs=factor)  # frequency in units of the input rate
    mag = 20 * np.log10(np.abs(resp) / factor + 1e-300)
    assert mag[f >= 0.55].max() <= -80.0
    assert np.abs(mag[f <= 0.45]).max() <= 0.01
    np.testing.assert_allclose(h, h[::-1])  # linear phase


@pytest.mark.parametrize("factor", [4, 16])
def test_input_samples_pass_through_and_output_is_aligned(xp, factor):
    x = xp.asarray(music(0.5, seed=2), dtype=xp.float32)
    y = upsample(x, factor)
    assert y.shape == (2, x.shape[1] * factor) and y.dtype == xp.float32
    np.testing.assert_allclose(backend.to_host(y[:, ::factor]), backend.to_host(x), atol=2e-6)


def test_matches_ideal_bandlimited_interpolation_of_a_sine(xp):
    rate, f0 = 48000, 5000.0
    x = xp.asarray(sine(f0, 0.2, rate, level_dbfs=-6.0, phase=0.3), dtype=xp.float64)
    y = backend.to_host(upsample(x, 4))[0]
    t = np.arange(y.size) / (4 * rate)
    ideal = 10 ** (-6 / 20) * np.sin(2 * np.pi * f0 * t + 0.3)
    core = slice(4 * 200, -4 * 200)  # away from the edges, where the signal starts and stops
    assert np.abs(y[core] - ideal[core]).max() < 10 ** (-80 / 20)


def test_finds_the_inter_sample_peak_of_an_fs_over_4_tone(xp):
    rate = 48000
    # samples at +-0.7071 full scale, the waveform between them reaches 1.0
    x = xp.asarray(sine(rate / 4, 0.1, rate, level_dbfs=0.0, phase=np.pi / 4), dtype=xp.float64)
    assert float(backend.to_host(xp.abs(x).max())) == pytest.approx(np.sqrt(0.5), rel=1e-9)
    peak = float(backend.to_host(xp.abs(upsample(x, 4)[:, 400:-400]).max()))
    assert peak == pytest.approx(1.0, abs=1e-3)


def test_factor_one_is_identity_and_bad_factor_is_refused(xp):
    x = xp.asarray(music(0.1), dtype=xp.float32)
    assert upsample(x, 1) is x
    with pytest.raises(ValueError, match="1, 2, 4, 8 or 16"):
        design(3)


@pytest.mark.parametrize("factor", [4, 16])
def test_peak_gain_bounds_how_far_a_perturbation_moves_the_true_peak(factor):
    """|e| <= eps per sample moves every interpolated value by <= eps * peak_gain,
    and the worst-case pattern (eps * sign of the phase's taps) reaches it."""
    from kernels.oversample import HALF_TAPS, _bank, peak_gain

    g = peak_gain(factor)
    assert 2.0 < g < 4.0
    eps = 1e-3
    rng = np.random.default_rng(5)
    e = eps * rng.uniform(-1, 1, (1, 4000))
    assert np.abs(upsample(e, factor)).max() <= eps * g * (1 + 1e-9)
    bank = _bank(factor)
    p = int(np.argmax(np.abs(bank).sum(axis=1)))
    worst = np.zeros((1, 2 * HALF_TAPS + 1 + 200))
    # out[factor*n + p] = sum_k bank[p, k] * x[n + HALF_TAPS - k]
    n = 100
    for k in range(2 * HALF_TAPS + 1):
        worst[0, n + HALF_TAPS - k] = eps * np.sign(bank[p, k])
    assert np.abs(upsample(worst, factor)[0, factor * n + p]) == pytest.approx(eps * g, rel=1e-9)


@pytest.mark.parametrize("factor", [1, 4, 16])
@pytest.mark.parametrize("n", [5, 1000, 300_001])
def test_true_peak_equals_the_peak_of_the_whole_upsampled_signal(xp, factor, n):
    """Chunked, phase-0-free peak == max |upsample(x)| (chunk edges included)."""
    from kernels.oversample import PEAK_CHUNK_CPU, true_peak

    rng = np.random.default_rng(n)
    x = rng.uniform(-0.5, 0.5, (2, n))
    # a full-scale inter-sample-peak burst straddling the first chunk edge
    k = min(n - 4, PEAK_CHUNK_CPU - 2)
    x[:, max(0, k):k + 4] = [0.9, 0.9, -0.9, -0.9][: min(4, n - max(0, k))]
    x = xp.asarray(x.astype(np.float32))
    want = float(np.abs(backend.to_host(upsample(x, factor))).max())
    got = float(backend.to_host(true_peak(x, factor)))
    assert got == pytest.approx(want, rel=2e-6)
