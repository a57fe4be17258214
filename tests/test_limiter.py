"""True-peak limiter (kernels.limiter): the ceiling holds at 4x and 16x on hard
material, under-ceiling input is bit-transparent, the attack stays inside the
lookahead and is smooth, the release has the designed time constant, channels
are linked, and the scan-based gain computer equals a float64 sequential one."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import backend, limiter
from kernels.limiter import gain_curve, limit, peak_envelope
from kernels.oversample import upsample
from kernels.params import LimiterParams
from signals import db_to_amp, isp_tone, music, sine, square

ROUNDING = 1e-6  # relative slack for float32 rounding of the measurement itself


def _true_peak(y, factor: int) -> float:
    """Linear true peak the way a meter sees it: max |upsample(y, factor)|."""
    return float(np.max(np.abs(backend.to_host(upsample(y, factor)))))


def _assert_under_ceiling(y, ceiling_dbtp: float) -> None:
    ceiling = db_to_amp(ceiling_dbtp)
    for factor in (4, 16):
        peak = _true_peak(y, factor)
        assert peak <= ceiling * (1 + ROUNDING), (
            f"{factor}x true peak {20 * math.log10(peak):.6f} dBTP over the {ceiling_dbtp} dBTP ceiling")


def _impulses(seconds, rate, channels, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = 1e-3 * rng.standard_normal((channels, n))
    idx = rng.choice(n, size=12, replace=False)
    x[:, idx] = rng.choice([-4.0, 4.0], size=(channels, 12)) * rng.uniform(0.3, 1.0, 12)
    x[:, idx[0] + 1] = -x[:, idx[0]]  # a full-scale doublet: a big inter-sample peak
    return x


def _dc_step(seconds, rate, channels):
    n = int(seconds * rate)
    x = np.zeros((channels, n))
    x[:, n // 3:] = 2.0  # +6 dB DC switched on (and off at the end): Gibbs ringing both sides
    x[:, 2 * n // 3:] = -1.5
    return x


MATERIAL = {
    "square": lambda s, r, c: square(1000.0, s, r, level_dbfs=6.0, channels=c),
    "isp_tone": lambda s, r, c: isp_tone(s, r, c),
    "impulses": lambda s, r, c: _impulses(s, r, c),
    "dc_step": _dc_step,
    "music+20dB": lambda s, r, c: music(s, r, c, seed=4) * db_to_amp(20.0),
}


@pytest.mark.parametrize("material", sorted(MATERIAL))
@pytest.mark.parametrize("rate,channels,ceiling_dbtp", [(44100, 1, -0.1), (48000, 2, -1.0), (96000, 2, -6.0)])
def test_ceiling_holds_on_hard_material(xp, material, rate, channels, ceiling_dbtp):
    x = xp.asarray(MATERIAL[material](0.2, rate, channels), dtype=xp.float32)
    res = limit(x, rate, LimiterParams(ceiling_dbtp=ceiling_dbtp))
    assert res.audio.shape == x.shape and res.audio.dtype == x.dtype
    _assert_under_ceiling(res.audio, ceiling_dbtp)
    assert res.max_gain_reduction_db > 0.0
    assert res.true_peak_dbtp <= ceiling_dbtp


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 16), gain_db=st.floats(0.0, 20.0), rate=st.sampled_from([44100, 48000, 96000]),
       channels=st.sampled_from([1, 2]), ceiling_dbtp=st.floats(-6.0, -0.1),
       lookahead_ms=st.floats(0.1, 10.0), release_ms=st.floats(1.0, 1000.0),
       oversample=st.sampled_from([4, 8, 16]))
def test_property_ceiling_holds_on_music(xp, seed, gain_db, rate, channels, ceiling_dbtp, lookahead_ms,
                                         release_ms, oversample):
    x = xp.asarray(music(0.25, rate, channels, seed=seed) * db_to_amp(gain_db), dtype=xp.float32)
    params = LimiterParams(ceiling_dbtp=ceiling_dbtp, lookahead_ms=lookahead_ms, release_ms=release_ms,
                           oversample=oversample)
    res = limit(x, rate, params)
    _assert_under_ceiling(res.audio, ceiling_dbtp)
    # audio is exactly input times the reported gain, the same for every channel
    np.testing.assert_array_equal(backend.to_host(res.audio), backend.to_host(x * res.gain[None, :]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_under_ceiling_input_is_bit_transparent(xp, dtype):
    x = xp.asarray(music(1.0, 48000, 2, seed=3) * db_to_amp(-3.0), dtype=dtype)  # ~ -4 dBTP
    res = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    np.testing.assert_array_equal(backend.to_host(res.audio), backend.to_host(x))
    assert res.audio.dtype == dtype
    assert bool(backend.to_host(xp.all(res.gain == 1.0)))
    assert res.max_gain_reduction_db == 0.0 and res.corrections == 0 and res.trim_db == 0.0


def test_bright_input_just_under_the_ceiling_is_transparent(xp):
    """The detection's curvature term (which over-reads bright crests) only
    applies to points already over the ceiling: a 15 kHz tone 0.05 dB under
    it is not touched."""
    x = sine(15000.0, 0.2, 48000, level_dbfs=-1.05, phase=0.3)
    fade = np.hanning(960)  # 10 ms fades: an abrupt start would ring over the ceiling
    x[:, :480] *= fade[:480]
    x[:, -480:] *= fade[480:]
    x = xp.asarray(x, dtype=xp.float32)
    assert 20 * math.log10(_true_peak(x, 16)) < -1.04
    res = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    np.testing.assert_array_equal(backend.to_host(res.audio), backend.to_host(x))
    assert res.max_gain_reduction_db == 0.0


def test_bypass_returns_the_input(xp):
    x = xp.asarray(square(1000.0, 0.1, level_dbfs=6.0), dtype=xp.float32)
    res = limit(x, 48000, LimiterParams(bypass=True))
    assert res.audio is x and res.max_gain_reduction_db == 0.0


@pytest.mark.parametrize("release_ms", [30.0, 200.0])
def test_release_has_the_designed_time_constant(xp, release_ms):
    """Gain reduction decays exponentially in dB: 6 dB -> 6/e dB takes release_ms."""
    rate, ceiling_dbtp = 48000, -1.0
    n = int(1.5 * rate)
    x = np.zeros((2, n))
    width = int(0.002 * rate)  # a smooth 2 ms bump, 8 dB over the ceiling
    x[:, rate // 10:rate // 10 + width] = db_to_amp(ceiling_dbtp + 8.0) * np.hanning(width)
    res = limit(xp.asarray(x), rate, LimiterParams(ceiling_dbtp=ceiling_dbtp, release_ms=release_ms))
    gr_db = -20 * np.log10(backend.to_host(res.gain))
    assert gr_db.max() == pytest.approx(8.0, abs=0.05)
    start = np.flatnonzero(gr_db >= 6.0)[-1]
    stop = start + np.flatnonzero(gr_db[start:] <= 6.0 / math.e)[0]
    assert (stop - start) / rate * 1000.0 == pytest.approx(release_ms, rel=0.05)


@pytest.mark.parametrize("lookahead_ms", [1.0, 5.0])
def test_attack_stays_inside_the_lookahead_and_is_smooth(xp, lookahead_ms):
    rate, ceiling_dbtp = 48000, -1.0
    n = rate // 2
    x = np.zeros((2, n))
    burst = sine(1000.0, 0.01, rate, level_dbfs=ceiling_dbtp + 6.0, channels=2)
    x[:, rate // 10:rate // 10 + burst.shape[1]] = burst
    x = xp.asarray(x, dtype=xp.float32)
    res = limit(x, rate, LimiterParams(ceiling_dbtp=ceiling_dbtp, lookahead_ms=lookahead_ms))
    _assert_under_ceiling(res.audio, ceiling_dbtp)
    g = backend.to_host(res.gain).astype(np.float64)
    lookahead = round(lookahead_ms * rate / 1000)
    # first (16x-)oversampled point over the working ceiling, in base samples
    working = db_to_amp(ceiling_dbtp) * (1 - limiter.MARGIN)
    first_over = np.flatnonzero(np.abs(backend.to_host(upsample(x, 16))).max(axis=0) > working)[0] // 16
    first_drop = np.flatnonzero(g < 1.0)[0]
    assert first_over - lookahead <= first_drop <= first_over
    # smooth: no step larger than the triangular ramp allows (a hard limiter
    # would step by the whole reduction, here ~0.5)
    depth = 1.0 - g.min()
    assert np.abs(np.diff(g)).max() <= 3.0 * depth / (lookahead + 2)


def test_channels_are_linked(xp):
    rate = 48000
    left = square(500.0, 0.2, rate, level_dbfs=3.0, channels=1)[0]
    right = sine(300.0, 0.2, rate, level_dbfs=-20.0, channels=1)[0]
    x = xp.asarray(np.stack([left, right]), dtype=xp.float32)
    res = limit(x, rate, LimiterParams(ceiling_dbtp=-1.0))
    assert res.gain.shape == (x.shape[1],)
    out, gain = backend.to_host(res.audio), backend.to_host(res.gain)
    np.testing.assert_array_equal(out, backend.to_host(x) * gain[None, :])
    assert gain.min() < db_to_amp(-3.0)  # the quiet right channel is turned down with the left


@pytest.mark.parametrize("n", [1, 2, 65, 1001])
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_matches_input_shape_dtype_and_length(xp, n, channels, dtype):
    rng = np.random.default_rng(n)
    x = xp.asarray(3.0 * rng.standard_normal((channels, n)), dtype=dtype)
    res = limit(x, 44100, LimiterParams(ceiling_dbtp=-2.0))
    assert res.audio.shape == x.shape and res.audio.dtype == dtype
    assert res.gain.shape == (n,) and res.gain.dtype == dtype
    _assert_under_ceiling(res.audio, -2.0)


def _reference_gain_curve(g_req, lookahead, release):
    """The limiter's gain computer as plain float64 loops."""
    n, w = len(g_req), lookahead + 1
    padded = np.concatenate([g_req, np.ones(w - 1)])
    g1 = np.array([padded[i:i + w].min() for i in range(n)])
    m1 = (w + 1) // 2
    m2 = w + 1 - m1
    tri = np.convolve(np.ones(m1), np.ones(m2)) / (m1 * m2)  # w taps, sum 1
    ext = np.concatenate([np.full(w - 1, g1[0]), g1])
    g2 = np.minimum([np.dot(tri, ext[i:i + w][::-1]) for i in range(n)], g_req)
    r, d, out = math.exp(-1.0 / release), 0.0, np.empty(n)
    for i, v in enumerate(-20 * np.log10(g2)):
        d = max(v, r * d)
        out[i] = d
    g = np.where(out < limiter.SNAP_DB, 1.0, 10 ** (-out / 20))
    return np.minimum(g, g2)


@pytest.mark.parametrize("chunk", [None, 1, 50, 701])
@pytest.mark.parametrize("lookahead,release", [(1, 5.0), (8, 300.0), (37, 80.0)])
def test_gain_curve_equals_sequential_reference(xp, monkeypatch, lookahead, release, chunk):
    """Scan-based release, log-step hold and running-sum ramp, whole or in
    chunks (the seams carry context and the release state), equal plain loops."""
    if chunk is not None:
        monkeypatch.setattr(limiter, "GAIN_CHUNK_CPU", chunk)
        monkeypatch.setattr(limiter, "GAIN_CHUNK_GPU", chunk)
    rng = np.random.default_rng(lookahead)
    g_req = np.ones(3000)
    for start in rng.choice(2900, 25):  # dips of random depth and width
        g_req[start:start + rng.integers(1, 60)] = np.minimum(g_req[start], rng.uniform(0.05, 1.0))
    g = backend.to_host(gain_curve(xp.asarray(g_req), lookahead, release))
    want = _reference_gain_curve(g_req, lookahead, release)
    np.testing.assert_allclose(g, want, rtol=0, atol=1e-9)
    assert np.all(g <= g_req)


def test_peak_envelope_is_the_per_sample_max_of_upsample(xp):
    x = xp.asarray(music(0.3, 48000, 2, seed=5) * 3.0, dtype=xp.float32)
    for factors in [(4,), (8,), (4, 16)]:
        env = backend.to_host(peak_envelope(x, factors))
        want = np.max([np.abs(backend.to_host(upsample(x, f))).reshape(2, -1, f).max(axis=(0, 2))
                       for f in factors], axis=0)
        np.testing.assert_allclose(env, want, rtol=0, atol=2e-6 * want.max())
    # with the curvature term: |y| + k|second difference| over the interleaved points
    y = backend.to_host(upsample(x, 4)).astype(np.float64)
    padded = np.pad(y, [(0, 0), (1, 1)])
    bound = np.abs(y) + limiter.CURVATURE * np.abs(padded[:, :-2] - 2 * y + padded[:, 2:])
    want = bound.reshape(2, -1, 4).max(axis=(0, 2))
    env = backend.to_host(peak_envelope(x, (4,), curvature=limiter.CURVATURE))
    np.testing.assert_allclose(env, want, rtol=0, atol=4e-6 * want.max())


def test_peak_envelope_chunks_join_seamlessly(xp, monkeypatch):
    x = xp.asarray(music(0.2, 48000, 2, seed=6) * 3.0, dtype=xp.float32)
    whole = backend.to_host(peak_envelope(x, (4,)))
    monkeypatch.setattr(limiter, "CHUNK_CPU", 1000)
    monkeypatch.setattr(limiter, "CHUNK_GPU", 1000)
    np.testing.assert_allclose(backend.to_host(peak_envelope(x, (4,))), whole, rtol=0, atol=2e-6 * whole.max())
    curved = backend.to_host(peak_envelope(x, (4,), curvature=0.2))
    monkeypatch.setattr(limiter, "CHUNK_CPU", 1 << 18)
    monkeypatch.setattr(limiter, "CHUNK_GPU", 1 << 18)
    np.testing.assert_allclose(backend.to_host(peak_envelope(x, (4,), curvature=0.2)), curved,
                               rtol=0, atol=2e-6 * curved.max())


def test_curvature_bound_covers_sinusoids_between_points(xp):
    """The detection envelope (4x points + curvature bound) is >= the 16x peak
    of any sinusoid up to the oversampler's passband edge, whatever its phase."""
    rate = 48000
    rng = np.random.default_rng(8)
    for freq in [100.0, 3000.0, 9000.0, 15000.0, 19000.0, 21600.0]:
        x = xp.asarray(sine(freq, 0.05, rate, level_dbfs=-3.0, channels=1, phase=rng.uniform(0, 6.3)))
        est = backend.to_host(peak_envelope(x, (4,), curvature=limiter.CURVATURE))[200:-200]
        fine = backend.to_host(peak_envelope(x, (16,)))[200:-200]
        assert est.max() >= fine.max() * (1 - 1e-9)


def test_a_correction_measures_again_only_where_the_applied_gain_changed(xp, monkeypatch):
    """A correction's step curve can read 1 - 1e-16 over unit-gain stretches (the ramp's
    running sums on a device are parallel scans, whose rounding differs by position):
    the samples whose float32 gain is unchanged are not measured again, and the result
    is the same as with exact ones."""
    monkeypatch.setattr(limiter, "CURVATURE", 0.0)  # the check then has overs to correct
    x = xp.asarray(0.25 * square(3000.0, 0.4, 48000, level_dbfs=6.0), dtype=xp.float32)
    x[:, 9000:9600] *= 8.0  # one loud stretch: the overs, and so the corrections, are local
    seen = {"exact": [], "fuzzy": []}
    real_remeasure, real_curve = limiter._remeasure, limiter.gain_curve
    run = "exact"

    def remeasure(env, out, changed, factors):
        seen[run].append(int(changed.sum()))
        return real_remeasure(env, out, changed, factors)

    monkeypatch.setattr(limiter, "_remeasure", remeasure)
    exact = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    run = "fuzzy"
    monkeypatch.setattr(limiter, "gain_curve", lambda *a: real_curve(*a) * (1.0 - 2e-16))
    fuzzy = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    assert exact.corrections >= 1 and seen["exact"] == seen["fuzzy"], seen
    # local (lookahead and release around the loud stretch); `step < 1` marked every sample
    assert all(0 < k < 0.6 * x.shape[-1] for k in seen["exact"]), seen
    assert backend.to_host(fuzzy.audio).tobytes() == backend.to_host(exact.audio).tobytes()


def test_final_check_corrects_and_trims(xp, monkeypatch):
    """Plain 4x detection misses 16x peaks of full-band material; the check
    catches them (corrections), and with no corrections allowed the global
    trim does."""
    monkeypatch.setattr(limiter, "CURVATURE", 0.0)
    x = xp.asarray(square(3000.0, 0.2, 48000, level_dbfs=6.0), dtype=xp.float32)
    res = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    assert res.corrections >= 1 and res.trim_db == 0.0
    _assert_under_ceiling(res.audio, -1.0)
    monkeypatch.setattr(limiter, "MAX_CORRECTIONS", 0)
    res = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    assert res.corrections == 0 and res.trim_db > 0.0
    _assert_under_ceiling(res.audio, -1.0)


def test_reported_numbers(xp):
    x = xp.asarray(music(0.5, 48000, 2, seed=7) * db_to_amp(10.0), dtype=xp.float32)
    res = limit(x, 48000, LimiterParams(ceiling_dbtp=-1.0))
    gain = backend.to_host(res.gain).astype(np.float64)
    assert res.max_gain_reduction_db == pytest.approx(-20 * np.log10(gain.min()), abs=1e-6)
    tp16 = 20 * math.log10(_true_peak(res.audio, 16))
    assert res.true_peak_dbtp == pytest.approx(tp16, abs=1e-4)
    assert -1.001 <= res.true_peak_dbtp <= -1.0


def test_bad_input_is_refused_with_a_fix(xp):
    with pytest.raises(ValueError, match="channel axis"):
        limit(xp.zeros(100, dtype=xp.float32), 48000, LimiterParams())
    with pytest.raises(TypeError, match="float32"):
        limit(xp.zeros((2, 100), dtype=xp.int16), 48000, LimiterParams())
    bad = np.zeros((2, 100), dtype=np.float32)
    bad[0, 50] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        limit(xp.asarray(bad), 48000, LimiterParams())
    empty = limit(xp.zeros((2, 0), dtype=xp.float32), 48000, LimiterParams())
    assert empty.audio.shape == (2, 0)


def test_unchecked_then_check_equals_checked(xp):
    """limit(check=False) + check() is limit(): the loudness loop's cheap passes lose nothing."""
    x = xp.asarray((music(6.0, 48000, 2, seed=11) * 4.0).astype(np.float32))
    p = LimiterParams(ceiling_dbtp=-1.0)
    full = limit(x, 48000, p)
    rough = limit(x, 48000, p, check=False)
    assert rough.true_peak_dbtp is None and rough.max_gain_reduction_db > 6.0
    done = limiter.check(x, rough, 48000, p)
    assert np.array_equal(backend.to_host(done.audio), backend.to_host(full.audio))
    assert done.true_peak_dbtp == full.true_peak_dbtp and done.corrections == full.corrections
    _assert_under_ceiling(done.audio, -1.0)


def test_remeasure_equals_a_whole_track_measurement(xp):
    """The correction pass measures only the chunks it changed; the envelope it
    keeps must equal measuring the whole corrected output again."""
    n = 3 * limiter.CHUNK_CPU + 1234
    rng = np.random.default_rng(3)
    x = xp.asarray(rng.uniform(-0.5, 0.5, (2, n)).astype(np.float32))
    env = peak_envelope(x, (4, 16))
    changed = np.zeros(n, dtype=bool)
    for at in (10, limiter.CHUNK_CPU - 3, 2 * limiter.CHUNK_CPU + 7, n - 2):  # chunk edges and ends
        changed[max(0, at - 5):at + 5] = True
    y = backend.to_host(x).copy()
    y[:, changed] *= 0.5
    y = xp.asarray(y)
    limiter._remeasure(env, y, xp.asarray(changed), (4, 16))
    full = peak_envelope(y, (4, 16))
    np.testing.assert_allclose(backend.to_host(env), backend.to_host(full), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_device_curvature_kernel_source_equals_the_reference_on_the_cpu(factor):
    """kernels.limiter.CURVED_PAIR_CUDA (the device's one-pass detection pair),
    compiled for the CPU (tests/cuda_host.py) with the device's float rules and fed
    the same views: the reference's bytes, for chunks inside and at the end of the
    signal, 1, 2 and 6 channels, a NaN sample."""
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel source for the host")
    from kernels.oversample import phase_bank

    rng = np.random.default_rng(factor)
    bank = np.asarray(phase_bank((factor,)), dtype=np.float32)
    for channels in (1, 2, 6):
        x = (0.5 * rng.standard_normal((channels, 5000))).astype(np.float32)
        x[0, 3210] = np.nan if channels == 6 else x[0, 3210]
        n = x.shape[-1]
        for s, e in ((0, 1500), (1500, 4000), (4000, n)):
            core, nxt, ph = limiter.pair_views(x, 0, s, e, n, bank)
            want = limiter._curved_pair(np, core, nxt, ph, factor, limiter.CURVATURE)
            got = np.empty(e - s, dtype=np.float32), np.empty(e - s, dtype=np.float32)
            work, args = limiter.curved_pair_args(core, nxt, ph, factor, limiter.CURVATURE, *got)
            assert work == e - s
            cuda_host.run(limiter.CURVED_PAIR_CUDA, "farm_curved_pair", args)
            for g, w in zip(got, want):
                assert g.tobytes() == w.tobytes(), (channels, s, e)


@pytest.mark.gpu
def test_device_curvature_kernel_equals_the_reference_on_the_same_views(launches):
    """On a GPU: the kernel against the reference array operations run on the host
    over the same (device-computed) views: the same bytes; and detection_pair on the
    device close to the host's (the FFTs differ)."""
    import cupy

    from kernels.oversample import phase_bank

    x = music(3.0, 48000, 2).astype(np.float32)
    dev = cupy.asarray(x)
    n = x.shape[-1]
    bank = cupy.asarray(phase_bank((4,)), dtype=cupy.float32)
    for s, e in ((0, 50_000), (50_000, n)):
        views = limiter.pair_views(dev, 0, s, e, n, bank)
        launches.clear()
        got = limiter._curved_pair(cupy, *views, 4, limiter.CURVATURE)
        assert launches == ["farm_curved_pair"]
        want = limiter._curved_pair(np, *(cupy.asnumpy(v) for v in views), 4, limiter.CURVATURE)
        for g, w in zip(got, want):
            assert cupy.asnumpy(g).tobytes() == w.tobytes()
    for g, w in zip(limiter.detection_pair(dev, 4, limiter.CURVATURE), limiter.detection_pair(x, 4, limiter.CURVATURE)):
        np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-5, atol=1e-6)


def test_device_gain_computer_kernel_sources_equal_the_array_path_on_the_cpu():
    """kernels.limiter.GAIN_CUDA (the gain computer's elementwise steps as single
    passes on a device), compiled for the CPU (tests/cuda_host.py) against the
    array operations they replace: required_gain to the bit; the dB steps to the
    last bit or two (log and exp are the host libm's here, numpy's own there: on a
    device both sides use CUDA's), with unity gain exact and the min never above."""
    cuda_host = pytest.importorskip("cuda_host")
    if cuda_host.compiler() is None:
        pytest.skip("no g++ to compile the kernel source for the host")
    rng = np.random.default_rng(5)
    n = 20_000
    env = np.abs(rng.standard_normal(n)).astype(np.float32)
    env[100:200] = 0.0
    g = np.empty(n)
    cuda_host.run(limiter.GAIN_CUDA, "farm_required_gain", limiter.required_gain_args(env, 0.891, g))
    assert g.tobytes() == limiter.required_gain(env, 0.891).tobytes()

    g_req = limiter.required_gain(env, 0.891)
    g2 = np.minimum(1.0, g_req * rng.uniform(0.98, 1.02, n))  # a ramp's output: around g_req
    g2[:50] = 1.0
    want_g2 = np.minimum(g2, g_req)
    want_d = np.log(want_g2) * -limiter._DB_PER_NEPER
    got_g2, got_d = g2.copy(), np.empty(n)
    cuda_host.run(limiter.GAIN_CUDA, "farm_gain_to_db", limiter.to_db_args(got_g2, g_req, got_d))
    assert got_g2.tobytes() == want_g2.tobytes()
    np.testing.assert_allclose(got_d, want_d, rtol=4e-16, atol=0)
    unity = want_g2 == 1.0
    assert unity.sum() > 50 and np.all(got_d[unity] == 0.0)  # unity gain: exactly no reduction

    d = want_d.copy()
    d[300:400] = 1e-7  # under SNAP_DB: back to exactly unity, then the min with g2
    snap = d < limiter.SNAP_DB
    want = np.minimum(np.maximum(np.exp(d * (-1.0 / limiter._DB_PER_NEPER)), snap), want_g2)
    got = want_g2.copy()
    cuda_host.run(limiter.GAIN_CUDA, "farm_gain_from_db", limiter.from_db_args(d, got))
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)
    assert np.all(got <= want_g2) and np.array_equal(got[300:400], want_g2[300:400])
