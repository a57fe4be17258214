"""One render, many deliverables: ``--preset a,b,c``.

Every track is mastered for each preset into a subfolder named after it; the
deliverables of one input travel to a worker as one RenderGroup (decoded and
its shared stages run once), and each is journaled, validated and reported
on its own.
"""
from __future__ import annotations

import json
import os

import pytest
import soundfile as sf

from farm.errors import ConfigError
from farm.job import job_from_flags, load_job
from farm.pipeline import _units
from farm.records import RenderGroup
from test_render_cli import cluster, farm, write_audio, write_catalog  # noqa: F401 (cluster: a fixture)


def _catalog(tmp_path, n=2, seconds=3.0):
    rows = []
    for i in range(n):
        write_audio(tmp_path / f"t{i}.wav", seconds, 48000, subtype="PCM_24", peak_dbfs=-4.0 - 4 * i, seed=i)
        rows.append({"file": f"t{i}.wav", "title": f"Track {i}", "artist": "Band", "track_number": str(i + 1)})
    write_catalog(tmp_path / "catalog.csv", rows)
    return tmp_path / "catalog.csv"


def test_each_preset_gets_a_subfolder_and_a_task_per_track(tmp_path):
    cat = _catalog(tmp_path)
    job = job_from_flags(cat, "streaming, ebu-r128", tmp_path / "out")
    assert [p.name for p in job.presets] == ["streaming", "ebu-r128"]
    tasks = job.tasks()
    assert [(t.track.row, t.preset) for t in tasks] == [(1, "streaming"), (1, "ebu-r128"),
                                                        (2, "streaming"), (2, "ebu-r128")]
    for t in tasks:
        assert os.path.dirname(t.out_path) == str(tmp_path / "out" / t.preset)
    assert tasks[1].out_path.endswith(".wav") and tasks[0].out_path.endswith(".flac")  # each preset's format
    units = _units(tasks)
    assert len(units) == 2 and all(isinstance(u, RenderGroup) for u in units)
    assert units[0].track == tasks[0].track and units[0].preset == "streaming,ebu-r128"
    assert _units(tasks[:1]) == tasks[:1]
    single = job_from_flags(cat, "streaming", tmp_path / "out").tasks()
    assert os.path.dirname(single[0].out_path) == str(tmp_path / "out")  # one preset: no subfolder


def test_bad_preset_lists_are_refused_with_their_reason(tmp_path):
    cat = _catalog(tmp_path, n=1)
    with pytest.raises(ConfigError, match="names a preset twice"):
        job_from_flags(cat, "streaming,streaming", tmp_path / "out")
    with pytest.raises(ConfigError, match="empty name"):
        job_from_flags(cat, "streaming,,ebu-r128", tmp_path / "out")
    with pytest.raises(ConfigError, match="nope"):
        job_from_flags(cat, "streaming,nope", tmp_path / "out")
    (tmp_path / "job.toml").write_text('catalog = "catalog.csv"\npreset = ["streaming", "apple-music"]\n'
                                       'output_dir = "out"\n')
    assert [p.name for p in load_job(tmp_path / "job.toml").presets] == ["streaming", "apple-music"]


@pytest.mark.integration
def test_render_many_deliverables_on_external_workers(cluster, tmp_path):  # noqa: F811
    _catalog(tmp_path)
    run = farm("render", "catalog.csv", "--preset", "streaming,ebu-r128", "-o", "out",
               "--scheduler", cluster.address, "--no-progress", cwd=tmp_path)
    assert run.code == 0, run
    with open(tmp_path / "out" / "report.json", encoding="utf-8") as f:
        doc = json.load(f)
    tracks = doc["tracks"]
    assert [(t["row"], t["preset"]) for t in tracks] == [(1, "streaming"), (1, "ebu-r128"),
                                                         (2, "streaming"), (2, "ebu-r128")]
    for t in tracks:
        target = -14.0 if t["preset"] == "streaming" else -23.0
        assert t["status"] == "ok" and t["result"]["integrated_lufs"] == pytest.approx(target, abs=0.15)
        assert os.path.dirname(t["output"]) == str(tmp_path / "out" / t["preset"])
        info = sf.info(t["output"])
        assert info.format == ("FLAC" if t["preset"] == "streaming" else "WAV")
        if t["preset"] == "ebu-r128":
            assert info.samplerate == 48000 and info.subtype == "PCM_24"
    masters = [n for n in os.listdir(tmp_path / "out" / "streaming") if os.path.isfile(tmp_path / "out" / "streaming" / n)]
    assert sorted(masters) == ["01 - Band - Track 0.flac", "02 - Band - Track 1.flac"]
    again = farm("render", "catalog.csv", "--preset", "streaming,ebu-r128", "-o", "out",
                 "--scheduler", cluster.address, "--no-progress", cwd=tmp_path)
    assert again.code == 0 and "(0 rendered, 4 unchanged" in again.out, again


def test_a_group_decodes_once_and_shares_the_shared_stages(tmp_path):
    """Two deliverables with the same EQ/dynamics/reverb but other targets and formats:
    the second reuses the first's shared output, and both equal lone renders bit for bit."""
    from farm.presets import BUILTIN_DIR
    from farm.render import render_track

    cat = _catalog(tmp_path, n=1, seconds=4.0)
    with open(os.path.join(BUILTIN_DIR, "master.toml"), encoding="utf-8") as f:
        text = f.read()
    text = text.replace('name = "master"', 'name = "master-loud"').replace("target_lufs = -14.0",
                                                                           "target_lufs = -11.0")
    text = text.replace('format = "flac"', 'format = "wav"')
    (tmp_path / "master-loud.toml").write_text(text, encoding="utf-8")
    job = job_from_flags(cat, f"master,{tmp_path / 'master-loud.toml'}", tmp_path / "out")
    (unit,) = _units(job.tasks())
    first, second = render_track(unit)
    assert first.status == second.status == "ok", (first.reason, second.reason)
    assert "chain_shared_stages_reused" in second.timings and "chain_eq" not in second.timings
    assert "decode" in first.timings and "decode" not in second.timings
    assert second.result["integrated_lufs"] == pytest.approx(-11.0, abs=0.15)
    for member, grouped in zip(unit.tasks, (first, second)):
        a, _ = sf.read(grouped.output, dtype="int32")
        os.replace(grouped.output, grouped.output + ".grouped")
        alone = render_track(member)
        b, _ = sf.read(alone.output, dtype="int32")
        assert (a == b).all()
