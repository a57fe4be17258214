"""Album mode: an album's tracks keep their loudness differences, its loudest meets the target.

The integration test runs `farm render --album-mode` on real scheduler and
worker processes: three tracks of one album mixed at different levels, one
single, one album track that cannot be decoded. The masters' loudness
differences must equal the inputs' within 0.1 LU (two meters: ours in the
report, pyloudnorm on the delivered files), the loudest album track must sit
on the target, the single on the target too, and every true peak under the
ceiling.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import soundfile as sf

from farm import album
from farm.errors import ConfigError
from farm.job import job_from_flags, load_job
from test_render_cli import cluster, farm, write_audio, write_catalog  # noqa: F401 (cluster: a fixture)


def _tasks(tmp_path, rows):
    for r in rows:
        write_audio(tmp_path / r["file"], 3.0, 48000, peak_dbfs=-3.0, seed=len(r["file"]))
    write_catalog(tmp_path / "c.csv", rows)
    return job_from_flags(tmp_path / "c.csv", "streaming", tmp_path / "out").tasks()


def test_album_targets_keep_distances_and_leave_singles(tmp_path):
    rows = [{"file": "a.wav", "title": "A", "artist": "X", "album": "One"},
            {"file": "b.wav", "title": "B", "artist": "X", "album": " one "},  # same album, other spelling
            {"file": "c.wav", "title": "C", "artist": "X", "album": "One"},
            {"file": "s.wav", "title": "S", "artist": "X"},
            {"file": "d.wav", "title": "D", "artist": "Y", "album": "One"}]  # another artist's album
    tasks = _tasks(tmp_path, rows)
    src = {t.track.tags["title"]: t.track.source for t in tasks}
    loud = {src["A"]: -20.0, src["B"]: -12.5, src["C"]: None, src["S"]: -9.0, src["D"]: -30.0}
    out, summary = album.album_targets(tasks, loud)
    by = {t.track.tags["title"]: t for t in out}
    assert by["B"].track.target_lufs == -14.0 and by["A"].track.target_lufs == pytest.approx(-21.5)
    assert by["A"].chain.loudness.tolerance_lu == album.ALBUM_TOLERANCE_LU
    assert by["C"] == tasks[2] and by["S"] == tasks[3]  # unmeasurable and single: untouched
    assert by["D"].track.target_lufs == -14.0  # alone in its album: it is its loudest
    assert summary["x - one"]["rows"] == [1, 2] and summary["x - one"]["loudest_input_lufs"] == -12.5


def test_input_loudness_streams_and_says_none_for_bad_files(tmp_path):
    write_audio(tmp_path / "a.wav", 2.0, 44100, peak_dbfs=-6.0)
    x, rate = sf.read(tmp_path / "a.wav", always_2d=True)
    from kernels.loudness import integrated_loudness

    assert album.input_loudness(str(tmp_path / "a.wav")) == pytest.approx(
        integrated_loudness(x.T.astype(np.float32), rate), abs=1e-9)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    assert album.input_loudness(str(tmp_path / "bad.wav")) is None
    assert album.input_loudness(str(tmp_path / "missing.wav")) is None


def test_job_file_album_mode_must_be_a_boolean(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0, 48000)
    write_catalog(tmp_path / "c.csv", [{"file": "a.wav", "title": "A"}])
    (tmp_path / "job.toml").write_text('catalog = "c.csv"\npreset = "streaming"\noutput_dir = "out"\n'
                                       'album_mode = "yes"\n')
    with pytest.raises(ConfigError, match="album_mode: must be true or false"):
        load_job(tmp_path / "job.toml")
    (tmp_path / "job.toml").write_text('catalog = "c.csv"\npreset = "streaming"\noutput_dir = "out"\n'
                                       'album_mode = true\n')
    job = load_job(tmp_path / "job.toml")
    assert job.album_mode and not job.with_album_mode(False).album_mode


@pytest.mark.integration
def test_album_render_keeps_inter_track_differences(cluster, tmp_path):  # noqa: F811
    import pyloudnorm

    rows = []
    for i, peak in enumerate((-1.0, -7.0, -13.0)):
        write_audio(tmp_path / f"t{i}.wav", 12.0, 48000, subtype="PCM_24", peak_dbfs=peak, seed=i)
        rows.append({"file": f"t{i}.wav", "title": f"Track {i}", "artist": "Band", "album": "Record",
                     "track_number": str(i + 1)})
    write_audio(tmp_path / "single.wav", 12.0, 48000, subtype="PCM_24", peak_dbfs=-9.0, seed=7)
    rows.append({"file": "single.wav", "title": "Single", "artist": "Band"})
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    rows.append({"file": "broken.wav", "title": "Broken", "artist": "Band", "album": "Record"})
    write_catalog(tmp_path / "catalog.csv", rows)
    run = farm("render", "catalog.csv", "--preset", "streaming", "-o", "out", "--album-mode",
               "--scheduler", cluster.address, "--no-progress", cwd=tmp_path)
    assert run.code == 3, run  # the broken track fails alone
    assert "album band - record: 3 tracks" in run.err
    with open(tmp_path / "out" / "report.json", encoding="utf-8") as f:
        doc = json.load(f)
    t = {r["row"]: r for r in doc["tracks"]}
    assert t[5]["status"] == "failed" and "broken.wav" in t[5]["reason"]
    assert all(t[r]["status"] == "ok" for r in (1, 2, 3, 4)), [t[r]["reason"] for r in (1, 2, 3, 4)]
    inp = [t[r]["input"]["integrated_lufs"] for r in (1, 2, 3)]
    out = [t[r]["result"]["integrated_lufs"] for r in (1, 2, 3)]
    assert inp[0] > inp[1] + 4 > inp[2] + 8  # really different levels
    assert out[0] == pytest.approx(-14.0, abs=0.06)  # the loudest album track meets the target
    for i in (1, 2):
        assert (out[0] - out[i]) == pytest.approx(inp[0] - inp[i], abs=0.1)
    assert t[4]["result"]["integrated_lufs"] == pytest.approx(-14.0, abs=0.15)  # the single: its own target
    assert all(t[r]["result"]["true_peak_dbtp"] <= -1.0 for r in (1, 2, 3, 4))
    assert doc["job"]["albums"]["band - record"]["tracks"] == 3
    # the second meter agrees on the delivered files' differences
    pln = []
    for r in (1, 2, 3):
        x, rate = sf.read(t[r]["output"], always_2d=True)
        pln.append(pyloudnorm.Meter(rate).integrated_loudness(x))
    for i in (1, 2):
        assert (pln[0] - pln[i]) == pytest.approx(inp[0] - inp[i], abs=0.15)
    # a rerun measures again, sets the same targets, and renders nothing
    again = farm("render", "catalog.csv", "--preset", "streaming", "-o", "out", "--album-mode",
                 "--scheduler", cluster.address, "--no-progress", cwd=tmp_path)
    assert again.code == 3 and "(1 rendered, 4 unchanged" in again.out, again
