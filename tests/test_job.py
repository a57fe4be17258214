"""Jobs: a job file and the flag form build the same tasks; every problem is reported before rendering."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from farm.errors import ConfigError
from farm.job import Job, job_from_flags, load_job
from farm.presets import load_preset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audio").mkdir()
    for name in ("a.wav", "b.flac", "c.aiff"):
        (tmp_path / "audio" / name).write_bytes(b"stub")
    (tmp_path / "catalog.csv").write_text(
        "file,title,artist,track,preset,target_lufs\n"
        "audio/a.wav,Song A,Band,1,,\n"
        "audio/b.flac,Song B,Band,2,,-16\n"
        "audio/c.aiff,Song C,Band,3,ebu-r128,\n", encoding="utf-8")
    return tmp_path


def write_job(folder: Path, text: str, name="job.toml") -> Path:
    p = folder / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


JOB = """
    catalog = "catalog.csv"
    preset = "streaming"
    output_dir = "out"
    backend = "cpu"
    [output]
    format = "wav"
    naming = "{track_number:02d} {title}"
    [overrides]
    limiter = { release_ms = 200.0 }
"""


def test_job_file_builds_one_task_per_row_with_merged_settings(work):
    job = load_job(write_job(work, JOB))
    a, b, c = job.tasks()
    assert isinstance(job, Job) and job.output_dir == str(work / "out") and job.catalog == str(work / "catalog.csv")
    # Row 1: job preset + job overrides + job [output].
    assert a.preset == "streaming" and a.chain.limiter.release_ms == 200.0 and a.backend == "cpu"
    assert a.chain.loudness.target_lufs == -14 and a.delivery.target_lufs == -14
    assert a.output.format == "wav" and a.out_path == str(work / "out" / "01 Song A.wav")
    # Row 2: its own target moves both the chain and the delivery check.
    assert b.chain.loudness.target_lufs == -16 == b.delivery.target_lufs and b.track.target_lufs == -16
    # Row 3: its own preset as it is (the job's overrides were written for the job's preset) ...
    ebu = load_preset("ebu-r128")
    assert c.preset == "ebu-r128" and c.chain.limiter.release_ms == ebu.chain.limiter.release_ms
    assert c.delivery == ebu.delivery and c.output.sample_rate == 48000 and c.output.bit_depth == 24
    # ... but the job's [output] applies to every file the job writes.
    assert c.output.format == "wav" and c.out_path == str(work / "out" / "03 Song C.wav")
    assert str(work) in a.ir_search_dirs


def test_flag_form_builds_the_same_tasks(work):
    from_file = load_job(write_job(work, JOB)).tasks()
    from_flags = job_from_flags("catalog.csv", "streaming", "out", format="wav", naming="{track_number:02d} {title}",
                                overrides={"limiter": {"release_ms": 200.0}}, backend="cpu").tasks()
    strip = [(t.track, t.chain, t.output, t.delivery, t.out_path, t.preset, t.backend) for t in from_file]
    assert strip == [(t.track, t.chain, t.output, t.delivery, t.out_path, t.preset, t.backend) for t in from_flags]


def test_flag_target_overrides_the_job_preset(work):
    job = job_from_flags(work / "catalog.csv", "streaming", work / "out", target_lufs=-18)
    a, b, c = job.tasks()
    assert a.delivery.target_lufs == -18 and b.delivery.target_lufs == -16 and c.delivery.target_lufs == -23


def test_every_problem_of_job_preset_and_catalog_at_once(work):
    (work / "catalog.csv").write_text("file,isrc,preset\naudio/a.wav,nope,\naudio/b.flac,,strem\n", encoding="utf-8")
    job = write_job(work, """
        catalog = "catalog.csv"
        preset = "streaming"
        output_dir = "out"
        backend = "tpu"
        schedular = "tcp://x:1"
        [output]
        format = "mp3"
        [overrides]
        limiter = { celing_dbtp = -2 }
    """)
    with pytest.raises(ConfigError) as e:
        load_job(job)
    ps = e.value.problems
    joined = "\n".join(ps)
    assert "job.toml: unknown key 'schedular' (did you mean 'scheduler'?)" in joined
    assert "job.toml backend: 'tpu' is not a backend; allowed: auto, cpu, gpu" in joined
    assert "job.toml [overrides] [limiter]: unknown key 'celing_dbtp'" in joined
    assert "catalog.csv row 1 (line 2), field 'isrc': 'nope' is not an ISRC" in joined
    assert "catalog.csv row 2 (line 3), field 'preset': unknown preset 'strem'" in joined
    assert len(ps) == 5, ps  # the [output] problem shows once the overrides are fixed


def test_output_table_problem(work):
    with pytest.raises(ConfigError, match=r"job.toml \[output\].*\[output\] format: 'mp3' is not a format"):
        load_job(write_job(work, 'catalog = "catalog.csv"\npreset = "streaming"\noutput_dir = "out"\n'
                                 '[output]\nformat = "mp3"\n'))


def test_required_keys_and_output_spelling(work):
    with pytest.raises(ConfigError) as e:
        load_job(write_job(work, 'output = "out"\n'))
    joined = "\n".join(e.value.problems)
    assert "'output' is the [output] table" in joined and "output_dir = 'out'" in joined
    for key in ("catalog", "preset", "output_dir"):
        assert f"'{key}' is required" in joined


def test_job_file_problems(work):
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(work / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(write_job(work, "catalog = \n"))
    with pytest.raises(ConfigError, match="catalog not found"):
        load_job(write_job(work, 'catalog = "nope.csv"\npreset = "streaming"\noutput_dir = "out"\n'))
    with pytest.raises(ConfigError, match="scheduler: 'tcp:// x' is not a scheduler address"):
        job_from_flags("catalog.csv", "streaming", "out", scheduler="tcp:// x")


def test_target_on_a_preset_without_loudness_is_a_row_error(work):
    (work / "raw.toml").write_text("[loudness]\nbypass = true\n", encoding="utf-8")
    (work / "catalog.csv").write_text("file,target_lufs\naudio/a.wav,-14\naudio/b.flac,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        job_from_flags("catalog.csv", "raw.toml", "out")
    (msg,) = e.value.problems
    assert msg.startswith("catalog.csv row 1, field 'target_lufs': preset 'raw' has loudness bypassed")


def test_masters_never_overwrite_inputs(work):
    (work / "catalog.csv").write_text("file,title\naudio/a.wav,b\naudio/b.flac,x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        job_from_flags("catalog.csv", "streaming", "audio", naming="{title}")
    (msg,) = e.value.problems
    assert "catalog.csv row 1: its master" in msg and "would overwrite the input of row 2" in msg


def test_output_dir_that_is_a_file(work):
    (work / "out").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        job_from_flags("catalog.csv", "streaming", "out")


def test_duplicate_names_get_numbered(work):
    (work / "catalog.csv").write_text("file,title\naudio/a.wav,Same\naudio/b.flac,Same\n", encoding="utf-8")
    a, b = job_from_flags("catalog.csv", "streaming", "out", naming="{title}").tasks()
    assert [os.path.basename(t.out_path) for t in (a, b)] == ["Same.flac", "Same (2).flac"]


def test_missing_audio_is_known_up_front(work):
    os.unlink(work / "audio" / "b.flac")
    job = job_from_flags("catalog.csv", "streaming", "out")
    assert len(job.tasks()) == 3  # it still renders, and fails alone
    assert list(job.missing_sources()) == [2]
    with pytest.raises(ConfigError, match="no such file"):
        job_from_flags("catalog.csv", "streaming", "out", require_files=True)


def test_the_example_job_loads():
    job = load_job(REPO / "jobs" / "example-job.toml")
    tasks = job.tasks()
    assert len(tasks) == 6 and job.preset.name == "streaming"
    assert {t.preset for t in tasks} == {"streaming", "master"}
    assert tasks[1].delivery.target_lufs == -16  # the quiet ballad's own target
    assert all(os.path.dirname(t.out_path) == job.output_dir for t in tasks)
    assert tasks[0].track.tags["isrc"] == "XXS1N2600001"
