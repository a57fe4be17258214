"""`farm measure` (farm.measure, farm.cli): files in, a table or JSON lines out."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from farm import cli
from farm.cli import ExitStatus
from farm.measure import STAT_KEYS, measure_file
from kernels import backend
from kernels import loudness
from signals import music, sine

JSON_KEYS = {"file", *STAT_KEYS, "sample_rate", "channels", "duration_s"}


def write(path, x, rate=48000, subtype=None):
    sf.write(str(path), np.ascontiguousarray(np.asarray(x).T), rate, subtype=subtype)
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {
        "tone": write(tmp_path / "tone.wav", sine(1000.0, 5.0, 48000, -23.0), subtype="PCM_24"),
        "music": write(tmp_path / "music.flac", music(4.0, 44100, seed=4), 44100, "PCM_16"),
        "silence": write(tmp_path / "silence.wav", np.zeros((2, 48000)), subtype="FLOAT"),
        "corrupt": str(_corrupt(tmp_path / "corrupt.wav")),
        "missing": str(tmp_path / "missing.flac"),
    }


def _corrupt(path):
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    return path


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def json_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_json_lines_have_the_documented_keys_and_values(capsys, files):
    rc, out, err = run(capsys, "measure", "--json", files["tone"], files["music"], files["silence"])
    assert rc == ExitStatus.SUCCESS and err == ""
    tone, mus, silence = json_lines(out)
    assert set(tone) == set(mus) == set(silence) == JSON_KEYS
    assert tone["file"] == files["tone"] and tone["sample_rate"] == 48000 and tone["channels"] == 2
    assert tone["duration_s"] == pytest.approx(5.0)
    for k in ("integrated_lufs", "max_momentary_lufs", "max_short_term_lufs", "true_peak_dbtp", "sample_peak_dbfs"):
        assert tone[k] == pytest.approx(-23.0, abs=0.1), k
    assert tone["loudness_range_lu"] == pytest.approx(0.0, abs=0.1)
    assert mus["sample_rate"] == 44100 and mus["integrated_lufs"] is not None
    # silence: the standard defines no value, so every measurement is null
    assert all(silence[k] is None for k in STAT_KEYS) and "null" in out and "NaN" not in out


def test_json_matches_the_python_api(capsys, files):
    rc, out, _ = run(capsys, "measure", "--json", "--true-peak-factor", "16", files["music"])
    assert rc == 0
    (line,) = json_lines(out)
    api = measure_file(files["music"], true_peak_factor=16, backend="cpu")
    assert line == api.to_dict()
    audio, rate = sf.read(files["music"], dtype="float32", always_2d=True)
    direct = loudness.measure(audio.T, rate, true_peak_factor=16)
    assert line["integrated_lufs"] == pytest.approx(direct.integrated_lufs, abs=1e-3)
    assert line["true_peak_dbtp"] == pytest.approx(direct.true_peak_dbtp, abs=1e-3)


def test_table_is_readable(capsys, files):
    rc, out, _ = run(capsys, "measure", files["tone"], files["silence"])
    assert rc == 0
    header, tone, silence = out.splitlines()
    assert "LUFS" in header and "dBTP" in header and header.rstrip().endswith("file")
    assert tone.endswith(files["tone"]) and "-22.99" in tone and "48000" in tone
    assert silence.split()[:6] == ["-"] * 6


def test_undecodable_files_are_named_and_the_rest_still_measured(capsys, files):
    rc, out, err = run(capsys, "measure", files["corrupt"], files["tone"], files["missing"])
    assert rc == ExitStatus.INPUT_ERROR
    assert files["tone"] in out  # measured despite the failures around it
    assert f"{files['corrupt']}: cannot decode" in err and f"{files['missing']}: no such file" in err
    rc, out, err = run(capsys, "measure", "--json", files["corrupt"], files["tone"])
    assert rc == ExitStatus.INPUT_ERROR
    bad, good = json_lines(out)
    assert bad["file"] == files["corrupt"] and "cannot decode" in bad["error"]
    assert good["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)


def test_formats_layouts_and_short_files(capsys, tmp_path):
    six = np.concatenate([sine(1000.0, 3.0, 48000, lvl, 1) for lvl in (-28, -28, -24, -60, -30, -30)])
    paths = [
        write(tmp_path / "mono.aiff", sine(1000.0, 3.0, 48000, -20.0, 1), subtype="PCM_16"),
        write(tmp_path / "five_one.wav", six, subtype="PCM_24"),
        write(tmp_path / "ten.wav", sine(1000.0, 1.0, 48000, -30.0, 10), subtype="FLOAT"),
        write(tmp_path / "short.flac", sine(1000.0, 0.2, 48000, -6.0), subtype="PCM_24"),
    ]
    rc, out, _ = run(capsys, "measure", "--json", *paths)
    assert rc == 0
    mono, five_one, ten, short = json_lines(out)
    assert mono["channels"] == 1 and mono["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)  # mono: 3 dB under stereo
    assert five_one["channels"] == 6 and five_one["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)
    assert ten["channels"] == 10 and ten["integrated_lufs"] is not None  # no channel limit
    assert short["integrated_lufs"] is None and short["max_momentary_lufs"] is None
    assert short["sample_peak_dbfs"] == pytest.approx(-6.0, abs=0.01) and short["true_peak_dbtp"] is not None


def test_unmeasurable_sample_rate_is_an_error_naming_the_file(capsys, tmp_path):
    path = write(tmp_path / "phone.wav", sine(440.0, 1.0, 4000, -20.0), rate=4000)
    rc, _, err = run(capsys, "measure", path)
    assert rc == ExitStatus.INPUT_ERROR and path in err and "sample_rate" in err


def test_usage_errors_and_help(capsys):
    assert run(capsys, "measure")[0] == ExitStatus.USAGE
    assert run(capsys, "measure", "--true-peak-factor", "3", "x.wav")[0] == ExitStatus.USAGE
    assert run(capsys, "frobnicate")[0] == ExitStatus.USAGE
    rc, out, _ = run(capsys, "--help")
    assert rc == ExitStatus.SUCCESS and "measure" in out


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_says_how_to_fix_it(capsys, files):
    rc, _, err = run(capsys, "measure", "--backend", "gpu", files["tone"])
    assert rc == ExitStatus.USAGE and "backend 'cpu'" in err


def test_unexpected_errors_are_one_line_unless_traceback(capsys, files, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(loudness, "measure", boom)
    rc, _, err = run(capsys, "measure", files["tone"])
    assert rc == ExitStatus.ERROR and "RuntimeError: kaboom" in err and "--traceback" in err
    with pytest.raises(RuntimeError, match="kaboom"):
        cli.main(["--traceback", "measure", files["tone"]])
    with pytest.raises(RuntimeError, match="kaboom"):
        cli.main(["measure", "--traceback", files["tone"]])


@pytest.mark.integration
def test_console_script(files):
    exe = os.path.join(os.path.dirname(sys.executable), "farm")
    if not os.path.exists(exe):
        pytest.skip("the farm console script is not installed in this environment")
    p = subprocess.run([exe, "measure", "--json", files["tone"], files["missing"]],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.INPUT_ERROR
    tone, missing = json_lines(p.stdout)
    assert tone["integrated_lufs"] == pytest.approx(-23.0, abs=0.1)
    assert missing["file"] == files["missing"] and "no such file" in p.stderr
