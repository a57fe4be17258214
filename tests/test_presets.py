"""Presets: the built-in delivery targets, the schema, and messages that say how to fix a file."""
from __future__ import annotations

import textwrap

import pytest

from farm import presets
from farm.errors import ConfigError
from farm.presets import load_preset

# name -> (target LUFS, delivery tolerance LU, max true peak dBTP, format, bit depth, sample rate)
EXPECTED = {
    "streaming": (-14.0, 1.0, -1.0, "flac", None, None),
    "apple-music": (-16.0, 1.0, -1.0, "flac", 24, None),
    "ebu-r128": (-23.0, 0.5, -1.0, "wav", 24, 48000),
    "atsc-a85": (-24.0, 2.0, -2.0, "wav", 24, 48000),
    "master": (-14.0, 1.0, -1.0, "flac", None, None),
}


def write(tmp_path, text, name="custom.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def problems(exc_info) -> list[str]:
    return exc_info.value.problems


def test_list_presets_has_the_delivery_targets():
    listed = presets.list_presets()
    assert [p.name for p in listed] == sorted(EXPECTED)
    assert presets.preset_names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_values_and_sources(name):
    p = load_preset(name)
    target, tol, tp, fmt, depth, rate = EXPECTED[name]
    assert p.name == name and p.path.endswith(f"{name}.toml")
    assert p.description and len(p.source) > 30  # each file says where its numbers come from
    assert p.chain.loudness.target_lufs == target == p.delivery.target_lufs
    assert p.delivery.tolerance_lu == tol and p.delivery.max_true_peak_dbtp == tp
    # Every delivery preset limits, at or under its delivery ceiling, and lands inside its tolerance.
    assert not p.chain.limiter.bypass and p.chain.limiter.ceiling_dbtp <= tp
    assert not p.chain.loudness.bypass and p.chain.loudness.tolerance_lu <= tol
    assert not p.chain.dither.bypass
    assert (p.output.format, p.output.bit_depth, p.output.sample_rate) == (fmt, depth, rate)


@pytest.mark.parametrize("name", ["streaming", "apple-music", "ebu-r128", "atsc-a85"])
def test_delivery_presets_do_not_colour_the_sound(name):
    c = load_preset(name).chain
    assert c.eq.bypass and c.reverb.bypass


def test_master_is_a_gentle_chain():
    c = load_preset("master").chain
    assert not c.eq.bypass and not c.reverb.bypass
    kinds = {b.kind: b for b in c.eq.bands}
    assert 25 <= kinds["high_pass"].freq_hz <= 30
    assert 150 <= kinds["bell"].freq_hz <= 500 and -2 <= kinds["bell"].gain_db < 0
    assert kinds["high_shelf"].freq_hz >= 8000 and 0 < kinds["high_shelf"].gain_db <= 2
    assert c.reverb.ir == "plate" and -30 <= c.reverb.wet_db <= -26
    assert c.loudness.target_lufs == -14.0 and c.limiter.ceiling_dbtp == -1.0


def test_sources_name_the_standards():
    assert "R 128" in load_preset("ebu-r128").source
    assert "A/85" in load_preset("atsc-a85").source
    assert "Spotify" in load_preset("streaming").source
    assert "Apple" in load_preset("apple-music").source


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError) as e:
        load_preset("strem")
    msg = str(e.value)
    assert "unknown preset 'strem'" in msg and "did you mean 'streaming'" in msg
    assert all(n in msg for n in EXPECTED)


def test_defaults_for_absent_tables(tmp_path):
    p = load_preset(write(tmp_path, """
        [loudness]
        target_lufs = -18
        [delivery]
        max_true_peak_dbtp = -1.5
    """))
    assert p.name == "custom" and p.chain.eq.bypass and p.chain.reverb.bypass
    assert not p.chain.limiter.bypass and p.chain.limiter.ceiling_dbtp == -1.5  # follows the delivery
    assert not p.chain.dither.bypass
    assert p.delivery.target_lufs == -18 and p.delivery.tolerance_lu == 1.0
    assert p.output.format == "flac" and p.output.bit_depth is None


def test_tight_delivery_tolerance_tightens_the_chain(tmp_path):
    p = load_preset(write(tmp_path, """
        [loudness]
        target_lufs = -23
        [delivery]
        tolerance_lu = 0.05
    """))
    assert p.chain.loudness.tolerance_lu == 0.05


def test_unknown_keys_and_tables_name_file_table_key_and_allowed(tmp_path):
    path = write(tmp_path, """
        name = "custom"
        colour = "warm"
        [loudness]
        target_lufs = -14
        taget = -14
        [limiter]
        celing_dbtp = -1
        [dither]
        bit_depth = 16
        [eq]
        bands = [{kind = "bell", freq_hz = 300, gain = -1}]
        [compresser]
        ratio = 2
    """)
    with pytest.raises(ConfigError) as e:
        load_preset(path)
    ps = problems(e)
    assert len(ps) == 6
    assert all("custom.toml" in p for p in ps)
    joined = "\n".join(ps)
    assert "[loudness]: unknown key 'taget'" in joined and "allowed: target_lufs, tolerance_lu" in joined
    assert "[limiter]: unknown key 'celing_dbtp' (did you mean 'ceiling_dbtp'?)" in joined
    assert "[dither]: unknown key 'bit_depth'" in joined and "[output] bit_depth" in joined
    assert "[eq.bands[1]]: unknown key 'gain' (did you mean 'gain_db'?)" in joined
    assert "unknown key or table 'compresser' (did you mean 'compressor'?)" in joined and "unknown key or table 'colour'" in joined


def test_wrong_types_and_values_name_file_and_field(tmp_path):
    path = write(tmp_path, """
        [loudness]
        target_lufs = "-14"
        [limiter]
        ceiling_dbtp = 3.0
        oversample = true
        [reverb]
        wet_db = nan
        [output]
        format = "mp3"
        bit_depth = 32
        naming = "{album}/{title}"
    """)
    with pytest.raises(ConfigError) as e:
        load_preset(path)
    joined = "\n".join(problems(e))
    assert "custom.toml [loudness] target_lufs: must be a number, got '-14'" in joined
    assert "custom.toml [limiter] oversample: must be an integer, got True" in joined
    assert "custom.toml [reverb] wet_db: must be a finite number" in joined
    # Types are reported first; fix them and the value checks follow.
    path = write(tmp_path, """
        [loudness]
        target_lufs = 5
        [limiter]
        ceiling_dbtp = 3.0
        [output]
        format = "mp3"
        bit_depth = 32
        sample_rate = 1000
        naming = "{album}/{title}"
        [eq]
        bands = [{kind = "notch", freq_hz = 300}, {kind = "bell"}]
    """)
    with pytest.raises(ConfigError) as e:
        load_preset(path)
    joined = "\n".join(problems(e))
    assert "custom.toml [loudness]: loudness target_lufs must be between -70 and 0 LUFS, got 5" in joined
    assert "custom.toml [limiter]: limiter ceiling_dbtp must be between -30 and 0 dBTP" in joined
    assert "[output] format: 'mp3' is not a format the farm writes; allowed: flac, wav, aiff" in joined
    assert "[output] bit_depth: must be 16 or 24" in joined
    assert "[output] sample_rate: must be 8000 to 384000 Hz" in joined
    assert "[output] naming: naming pattern '{album}/{title}' contains a path separator" in joined
    assert "[eq] bands[1]: eq band kind must be one of" in joined
    assert "[eq] bands[2]: 'freq_hz' required" in joined


def test_loudness_target_is_required_unless_bypassed(tmp_path):
    with pytest.raises(ConfigError, match=r"\[loudness\] target_lufs: required"):
        load_preset(write(tmp_path, "[limiter]\nceiling_dbtp = -1\n"))
    p = load_preset(write(tmp_path, "[loudness]\nbypass = true\n"))
    assert p.chain.loudness.bypass and p.delivery.target_lufs is None


def test_ceiling_above_delivery_maximum_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\[limiter\] ceiling_dbtp: -0.5 dBTP is above the delivery maximum"):
        load_preset(write(tmp_path, """
            [loudness]
            target_lufs = -14
            [limiter]
            ceiling_dbtp = -0.5
            [delivery]
            max_true_peak_dbtp = -1.0
        """))


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="custom.toml: not valid TOML"):
        load_preset(write(tmp_path, "[loudness\n"))


def test_missing_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(str(tmp_path / "nope.toml"))


def test_reverb_ir_file_resolves_against_the_preset_folder(tmp_path):
    (tmp_path / "irs").mkdir()
    (tmp_path / "irs" / "hall.wav").write_bytes(b"RIFF")
    p = load_preset(write(tmp_path, """
        [reverb]
        ir = "irs/hall.wav"
        [loudness]
        target_lufs = -14
    """))
    assert p.chain.reverb.ir == str(tmp_path / "irs" / "hall.wav") and not p.chain.reverb.bypass
    with pytest.raises(ConfigError, match=r"\[reverb\] ir: 'irs/missing.wav' is neither a built-in space"):
        load_preset(write(tmp_path, "[reverb]\nir = 'irs/missing.wav'\n[loudness]\ntarget_lufs = -14\n"))


def test_preset_path_env_adds_and_shadows(tmp_path, monkeypatch):
    write(tmp_path, "description = 'mine'\n[loudness]\ntarget_lufs = -10\n", name="streaming.toml")
    write(tmp_path, "[loudness]\ntarget_lufs = -12\n", name="club.toml")
    monkeypatch.setenv(presets.PRESET_PATH_ENV, str(tmp_path))
    assert "club" in presets.preset_names()
    assert load_preset("streaming").description == "mine"
    assert load_preset("club").delivery.target_lufs == -12


def test_with_overrides_deep_merges_and_revalidates():
    base = load_preset("master")
    p = base.with_overrides({"loudness": {"target_lufs": -16}, "reverb": {"wet_db": -30}})
    assert p.chain.loudness.target_lufs == -16 == p.delivery.target_lufs
    assert p.chain.reverb.wet_db == -30 and p.chain.reverb.ir == "plate"  # the rest of the table kept
    assert p.chain.eq == base.chain.eq and p.name == "master"
    assert base.chain.loudness.target_lufs == -14  # the original is untouched
    q = base.with_overrides({"eq": {"bands": [{"kind": "high_pass", "freq_hz": 40}]}})
    assert len(q.chain.eq.bands) == 1  # arrays replace
    assert base.with_overrides({}) is base


def test_override_errors_name_their_origin():
    base = load_preset("streaming")
    with pytest.raises(ConfigError) as e:
        base.with_overrides({"limiter": {"celing_dbtp": -2}, "compresor": {}, "name": "x"},
                            origin="job.toml [overrides]")
    joined = "\n".join(problems(e))
    assert "job.toml [overrides] [limiter]: unknown key 'celing_dbtp' (did you mean 'ceiling_dbtp'?)" in joined
    assert "unknown table [compresor]" in joined and "'name' cannot be overridden" in joined
    with pytest.raises(ConfigError, match=r"job.toml \[overrides\].*loudness target_lufs must be between"):
        base.with_overrides({"loudness": {"target_lufs": 3}}, origin="job.toml [overrides]")


def test_with_target_on_a_preset_without_loudness(tmp_path):
    p = load_preset(write(tmp_path, "[loudness]\nbypass = true\n"))
    with pytest.raises(ConfigError, match="loudness bypassed"):
        p.with_target(-14, origin="catalog.csv row 2, field 'target_lufs'")


def test_summary_for_the_cli():
    s = load_preset("ebu-r128").summary()
    assert s["target_lufs"] == -23 and s["tolerance_lu"] == 0.5 and s["sample_rate"] == 48000
    assert s["stages"] == ["loudness", "limiter", "dither"]


def test_all_builtin_names_match_their_files():
    for name, path in presets.available().items():
        assert load_preset(path).name == name == path.stem


def test_builtin_presets_travel_with_non_editable_installs():
    """pyproject's data-files ship every jobs/presets/*.toml to where farm.presets
    looks when there is no checkout (share/mastering-farm/presets)."""
    import glob
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).resolve().parent.parent
    with open(root / "pyproject.toml", "rb") as f:
        data_files = tomllib.load(f)["tool"]["setuptools"]["data-files"]
    shipped = {Path(p).name for pattern in data_files["share/mastering-farm/presets"]
               for p in glob.glob(str(root / pattern))}
    assert shipped == {p.name for p in (root / "jobs" / "presets").glob("*.toml")}
    assert {"streaming.toml", "apple-music.toml", "ebu-r128.toml", "atsc-a85.toml", "master.toml"} <= shipped
