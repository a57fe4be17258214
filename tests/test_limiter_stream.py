"""The streamed limiter equals the whole-signal limiter to the bit.

Small detection and gain chunks (monkeypatched) make short signals span
dozens of chunks, so every block/chunk alignment is exercised quickly.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import limiter, limiter_stream, stream
from kernels.limiter_stream import CheckStream, LimiterStream
from kernels.params import LimiterParams
from signals import square

RATE = 48000
PARAMS = LimiterParams(ceiling_dbtp=-1.0, lookahead_ms=2.0, release_ms=50.0)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(limiter, "CHUNK_CPU", 1024)
    monkeypatch.setattr(limiter, "GAIN_CHUNK_CPU", 1536)


def programme(n=40_000, seed=0, channels=2):
    """Noise in loud and quiet sections, with a transient on a detection chunk edge."""
    rng = np.random.default_rng(seed)
    loud = 1.0 + 3.0 * ((np.arange(n) // 7000) % 2)
    x = 0.25 * rng.standard_normal((channels, n)) * loud
    edge = min(5 * 1024, n - 1)
    x[:, edge - 1] = 4.0
    x[:, edge] = -4.0
    return x.astype(np.float32)


def streamed(x, blocks, params=PARAMS):
    gains = []
    ls = LimiterStream(params, RATE, x.shape[0], x.shape[-1], gain_sink=gains.append)
    out = stream.run(ls, stream.split(x, blocks))
    return out, np.concatenate(gains) if gains else np.zeros(0, np.float32), ls


def checked(x, gain, blocks, params=PARAMS, trim=1.0):
    cs = CheckStream(params, RATE, x.shape[0], x.shape[-1], trim=trim)
    parts = [cs.push(a, g[0]) for a, g in zip(stream.split(x, blocks), stream.split(gain[None], blocks))]
    parts.append(cs.finish())
    return np.concatenate(parts, axis=-1), cs


@pytest.mark.parametrize("blocks", [1000, 4096, 7, [1, 2, 3, 5000, 17, 30000], 10 ** 6])
def test_unchecked_pass_is_bit_identical(blocks):
    x = programme()
    whole = limiter.limit(x, RATE, PARAMS, check=False)
    out, gain, ls = streamed(x, blocks)
    assert out.dtype == whole.audio.dtype and out.shape == whole.audio.shape
    assert np.array_equal(out, whole.audio)
    assert np.array_equal(gain, whole.gain)
    assert ls.max_gain_reduction_db == whole.max_gain_reduction_db > 6.0


@pytest.mark.parametrize("gain_db", [-3.0, 4.5])
def test_static_gain_trial_is_bit_identical(gain_db):
    """The loudness loop's trial: blocks of x before the static gain, the stream
    detecting on them and applying the gain, equal limit(x, gain_db=...) to the bit,
    which shares one Detection of x between gains."""
    x = programme(seed=5)
    detection = limiter.Detection(x, PARAMS.oversample)
    whole = limiter.limit(x, RATE, PARAMS, check=False, gain_db=gain_db, detection=detection)
    pair = detection.pair()
    assert limiter.limit(x, RATE, PARAMS, check=False, gain_db=0.0, detection=detection).gain.shape == x.shape[1:]
    assert detection.pair() is pair  # computed once for both gains
    gains = []
    ls = LimiterStream(PARAMS, RATE, 2, x.shape[-1], gain_sink=gains.append, gain_db=gain_db)
    out = stream.run(ls, stream.split(x, [1, 999, 5000, 30]))
    assert np.array_equal(out, whole.audio) and np.array_equal(np.concatenate(gains), whole.gain)
    # and the limited signal is the gained input times the gain
    assert np.array_equal(whole.audio, limiter.apply_gain(x, gain_db) * whole.gain)
    with pytest.raises(ValueError, match="another signal"):
        limiter.limit(x.copy(), RATE, PARAMS, check=False, detection=detection)


def test_mono_and_six_channels():
    for channels in (1, 6):
        x = programme(n=9000, seed=channels, channels=channels)
        whole = limiter.limit(x, RATE, PARAMS, check=False)
        out, gain, _ = streamed(x, 999)
        assert np.array_equal(out, whole.audio) and np.array_equal(gain, whole.gain)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6000), min_size=1, max_size=12))
def test_any_block_split(sizes):
    x = programme(n=12_000, seed=3)
    whole = limiter.limit(x, RATE, PARAMS, check=False)
    out, gain, _ = streamed(x, sizes)
    assert np.array_equal(out, whole.audio) and np.array_equal(gain, whole.gain)


@pytest.mark.parametrize("blocks", [1000, 6000, [3, 20000, 1]])
def test_check_is_bit_identical(blocks):
    x = programme()
    first = limiter.limit(x, RATE, PARAMS, check=False)
    whole = limiter.check(x, first, RATE, PARAMS)
    out, cs = checked(x, first.gain, blocks)
    assert np.array_equal(out, whole.audio)
    assert cs.trim is None
    assert cs.true_peak_dbtp == whole.true_peak_dbtp <= -1.0
    assert cs.max_gain_reduction_db == whole.max_gain_reduction_db
    assert cs.corrections == whole.corrections


def test_check_corrections_and_trim_match(monkeypatch):
    """Full-band material with plain 4x detection needs the check's corrections
    (the streamed cascade must redo them exactly); with no corrections
    allowed, the stream asks for the whole-signal trim and the rerun equals it."""
    monkeypatch.setattr(limiter, "CURVATURE", 0.0)
    x = np.asarray(square(3000.0, 0.4, RATE, level_dbfs=6.0), dtype=np.float32)
    first = limiter.limit(x, RATE, PARAMS, check=False)
    whole = limiter.check(x, first, RATE, PARAMS)
    assert whole.corrections >= 1 and whole.trim_db == 0.0
    out, cs = checked(x, first.gain, 2500)
    assert np.array_equal(out, whole.audio)
    assert (cs.corrections, cs.trim, cs.true_peak_dbtp) == (whole.corrections, None, whole.true_peak_dbtp)

    for mod in (limiter, limiter_stream):
        monkeypatch.setattr(mod, "MAX_CORRECTIONS", 0)
    whole = limiter.check(x, first, RATE, PARAMS)
    assert whole.trim_db > 0.0
    _, cs = checked(x, first.gain, 2500)
    assert cs.trim is not None and -20 * np.log10(cs.trim) == pytest.approx(whole.trim_db, abs=1e-12)
    out, again = checked(x, first.gain, 2500, trim=cs.trim)
    assert np.array_equal(out, whole.audio)
    assert again.trim is None and again.true_peak_dbtp == pytest.approx(whole.true_peak_dbtp, abs=1e-9)


def test_quiet_input_passes_untouched():
    x = (0.1 * np.random.default_rng(5).standard_normal((2, 20_000))).astype(np.float32)
    out, gain, ls = streamed(x, 3000)
    assert np.array_equal(out, x) and np.all(gain == 1.0) and ls.max_gain_reduction_db == 0.0
    out, cs = checked(x, gain, 3000)
    assert np.array_equal(out, x) and cs.corrections == 0


def test_bypass_and_wrong_lengths():
    x = programme(n=5000)
    out, gain, _ = streamed(x, 700, LimiterParams(bypass=True))
    assert np.array_equal(out, x) and np.all(gain == 1.0)
    ls = LimiterStream(PARAMS, RATE, 2, 4000)
    with pytest.raises(ValueError, match="more than its 4000"):
        ls.push(x)
    ls = LimiterStream(PARAMS, RATE, 2, 6000)
    ls.push(x)
    with pytest.raises(ValueError, match="after 5000 of its 6000"):
        ls.finish()
    with pytest.raises(ValueError, match=r"expected \(2, samples\)"):
        LimiterStream(PARAMS, RATE, 2, 6000).push(x[:1])


def test_memory_stays_bounded():
    """Both streams hold a few chunks whatever the signal's length, never the signal."""
    x = programme(n=200_000)
    first = limiter.limit(x, RATE, PARAMS, check=False)
    ls = LimiterStream(PARAMS, RATE, 2, x.shape[-1])
    cs = CheckStream(PARAMS, RATE, 2, x.shape[-1])
    held_ls, held_cs = [], []
    for b, g in zip(stream.split(x, 5000), stream.split(first.gain[None], 5000)):
        ls.push(b)
        cs.push(b, g[0])
        held_ls.append(ls.x.data.shape[-1] + ls.det.env.end - ls.det.env.start + ls.gains.out.data.size)
        bufs = [cs.x, cs.gain0, cs.out0, cs.det0.env] + [b for c in cs.stages for b in (c.step.out, c.gain, c.env)]
        held_cs.append(sum(b.data.shape[-1] for b in bufs))
    assert max(held_ls) < 3 * (5000 + 2 * 1536)
    assert max(held_cs) < 20 * (5000 + 2 * 1536)


def test_reduction_trace_in_pieces_equals_whole():
    from kernels.chain import ReductionTrace

    g = np.linspace(1.0, 0.5, 100_003).astype(np.float32)
    g[50_000] = 0.1
    whole = ReductionTrace(RATE)
    whole.push(g)
    pieces = ReductionTrace(RATE)
    for b in stream.split(g[None], [1, 4799, 4800, 7, 33333]):
        pieces.push(b[0])
    a, b = whole.result(), pieces.result()
    assert a.shape == (-(-g.size // 4800),) and np.array_equal(a, b)
    assert a[50_000 // 4800] == pytest.approx(20.0, abs=1e-5)
    assert a[0] == pytest.approx(-20 * np.log10(g[:4800].min()), abs=1e-5)
