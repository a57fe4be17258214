"""The dynamics wired into the chain: stage order, bypass transparency, the master
preset's gentle multiband (about 1 dB of gain reduction on typical material),
the preset tables' validation, and streamed == whole with every new stage on."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from farm import demo, presets, synth
from farm.errors import ConfigError
from kernels import dynamics, eq, reverb
from kernels.chain import master, shared_stages
from kernels.params import (ChainParams, CompressorParams, EQBand, EQParams, MultibandParams, ReverbParams,
                            SaturationParams)
from test_render import write_audio  # noqa: F401  (fixture helpers shared with the render tests)
from test_stream_render import assert_same_master, programme, render_whole_and_streamed

RATE = 48000


def demo_material(index: int = 0, seconds: float = 24.0) -> np.ndarray:
    """A demo catalog track as `farm demo` writes it (music with an arrangement's dynamics)."""
    t = demo.DEMO_TRACKS[index]
    x = synth.music(seconds, RATE, seed=2026 + index + 1, bpm=t.bpm, peak_dbfs=t.peak_dbfs)
    return demo.arrange(x, RATE, t.bpm).astype(np.float32)


def test_defaults_bypass_every_new_stage_and_order_is_fixed():
    c = ChainParams()
    assert c.multiband.bypass and c.compressor.bypass and c.saturation.bypass and c.match.bypass
    on = dataclasses.replace(c, eq=EQParams((EQBand("bell", 300.0, -1.0),)), multiband=MultibandParams(bypass=False),
                             compressor=CompressorParams(bypass=False), saturation=SaturationParams(bypass=False),
                             reverb=ReverbParams())
    assert [s.name for s in shared_stages(on).stages] == ["eq", "multiband", "compressor", "saturation", "reverb"]
    assert [s.name for s in shared_stages(c).stages] == []
    with pytest.raises(ValueError, match="no match filter"):
        shared_stages(dataclasses.replace(c, match=dataclasses.replace(c.match, reference="r.wav", bypass=False)))


def test_every_stage_bypassed_is_bit_transparent():
    x = synth.music(2.0, RATE, seed=1).astype(np.float32)
    res = master(x, RATE, ChainParams.bypassed())
    assert res.audio is x
    # the new stages bypassed leave an EQ + reverb chain exactly as it was
    p = ChainParams(eq=EQParams((EQBand("high_shelf", 8000.0, 2.0),)), reverb=ReverbParams(wet_db=-30.0))
    p = dataclasses.replace(p, loudness=dataclasses.replace(p.loudness, target_lufs=None, bypass=True),
                            limiter=dataclasses.replace(p.limiter, bypass=True),
                            dither=dataclasses.replace(p.dither, bypass=True))
    want = reverb.apply_reverb(eq.apply_eq(x, RATE, p.eq), RATE, p.reverb)
    assert np.array_equal(master(x, RATE, p).audio, want)


def test_shared_stages_equal_the_kernels_in_order():
    x = synth.music(1.5, RATE, seed=2).astype(np.float32)
    mb = MultibandParams((150.0, 2000.0), detection="rms", bypass=False)
    co = CompressorParams(threshold_db=-18.0, ratio=2.0, bypass=False)
    sa = SaturationParams(drive_db=3.0, mix=0.5, oversample=4, bypass=False)
    p = dataclasses.replace(ChainParams.bypassed(), multiband=mb, compressor=co, saturation=sa)
    want = dynamics.saturate(dynamics.compress(dynamics.compress_multiband(x, RATE, mb).audio, RATE, co).audio,
                             RATE, sa)
    got = master(x, RATE, p)
    assert np.array_equal(got.audio, want)
    assert set(got.stage_seconds) == {"multiband", "compressor", "saturation"}


@pytest.mark.parametrize("index", [0, 4])  # "Opening Lights" (-1 dBFS peak), "Long Way Home" (-3 dBFS)
def test_master_preset_multiband_reduces_about_one_db(index):
    p = presets.load_preset("master").chain
    assert not p.multiband.bypass and p.saturation.bypass and p.compressor.bypass
    y = eq.apply_eq(demo_material(index), RATE, p.eq)
    r = dynamics.compress_multiband(y, RATE, p.multiband)
    gr = r.gain_reduction_db
    per_band = gr.mean(axis=1)
    energy_gr = 10.0 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum(r.audio.astype(np.float64) ** 2))
    print(f"track {index}: mean GR per band {np.round(per_band, 2)} dB, energy-weighted {energy_gr:.2f} dB, "
          f"max {gr.max():.2f} dB")
    assert 0.5 <= energy_gr <= 1.5  # what the ear gets: ~1 dB
    assert 0.2 <= per_band.mean() <= 1.5 and per_band.max() <= 1.5
    assert gr.max() <= 3.0  # never more than ~3 dB on any band at any time


def write(tmp_path, text: str) -> str:
    path = tmp_path / "dyn.toml"
    path.write_text("[loudness]\ntarget_lufs = -14\n" + text)
    return str(path)


def test_preset_tables_parse(tmp_path):
    p = presets.load_preset(write(tmp_path, """
        [multiband]
        crossovers_hz = [200, 2000]
        detection = "rms"
        bands = [{threshold_db = -20, ratio = 2}, {threshold_db = -24}, {threshold_db = -30, makeup_db = 1}]
        [compressor]
        threshold_db = -12
        ratio = 1.5
        [saturation]
        drive_db = 2
        mix = 0.3
        oversample = 4
    """)).chain
    assert p.multiband.crossovers_hz == (200.0, 2000.0) and len(p.multiband.bands) == 3
    assert p.multiband.bands[0].ratio == 2.0 and p.multiband.bands[2].makeup_db == 1.0 and not p.multiband.bypass
    assert not p.compressor.bypass and p.compressor.ratio == 1.5
    assert not p.saturation.bypass and p.saturation.mix == 0.3
    off = presets.load_preset(write(tmp_path, "[compressor]\nbypass = true\n")).chain
    assert off.compressor.bypass and off.multiband.bypass and off.saturation.bypass
    assert "multiband" in presets.load_preset("master").summary()["stages"]


def test_preset_tables_reject_bad_values_naming_file_and_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        presets.load_preset(write(tmp_path, """
            [multiband]
            crossovers_hz = [120, "1k"]
            detection = "loud"
            bands = [{threshold_db = -20, ratio = 0.5}, {treshold_db = -20}]
            [compressor]
            attack = 10
            [saturation]
            drive_db = 20
            oversample = 8
        """))
    text = str(e.value)
    assert "dyn.toml [multiband] crossovers_hz: must be an array of numbers" in text
    assert "dyn.toml [multiband.bands[2]]: unknown key 'treshold_db' (did you mean 'threshold_db'?)" in text
    assert "dyn.toml [compressor]: unknown key 'attack' (did you mean 'attack_ms'?)" in text
    with pytest.raises(ConfigError) as e:
        presets.load_preset(write(tmp_path, """
            [multiband]
            detection = "loud"
            bands = [{threshold_db = -20, ratio = 0.5}]
            [saturation]
            drive_db = 20
            oversample = 8
        """))
    text = str(e.value)
    assert "dyn.toml [multiband] bands[1]: compressor band ratio must be between 1" in text
    assert "dyn.toml [saturation]: saturation drive_db must be at most 15 dB with oversample = 8" in text
    with pytest.raises(ConfigError) as e:
        presets.load_preset(write(tmp_path, '[multiband]\ndetection = "loud"\nbands = [{threshold_db = -20}]\n'))
    text = str(e.value)
    assert "dyn.toml [multiband]: multiband bands must be 4 compressor bands" in text
    with pytest.raises(ConfigError) as e:
        presets.load_preset(write(tmp_path, '[multiband]\ndetection = "loud"\n'))
    assert "dyn.toml [multiband]: multiband detection must be one of ('peak', 'rms')" in str(e.value)


def test_streamed_equals_whole_with_every_dynamics_stage(tmp_path, monkeypatch):
    """The master preset plus the broadband compressor and saturation, streamed over block edges."""
    x = programme(14.0, RATE, seed=9)
    ov = {"compressor": {"threshold_db": -20.0, "ratio": 1.5, "detection": "rms"},
          "saturation": {"drive_db": 3.0, "mix": 0.4, "oversample": 4}}
    task, whole, kept, streamed = render_whole_and_streamed(tmp_path, monkeypatch, x, RATE, "dyn.wav", "master",
                                                            overrides=ov)
    assert not task.chain.compressor.bypass and not task.chain.saturation.bypass
    assert_same_master(whole, kept, streamed)
