"""farm.budget (the estimates, block sizes, machine default) and the memory budget's way
from the job file / --memory-budget-mb into every RenderTask."""
from __future__ import annotations

import textwrap

import pytest

from farm import budget
from farm.budget import MiB
from farm.cli import main as farm_main
from farm.errors import ConfigError
from farm.job import job_from_flags, load_job
from kernels.stream import BLOCK_QUANTUM

GiB = 1 << 30
TWO_HOURS_96K = 2 * 3600 * 96000


# ---------------------------------------------------------------- estimates

def test_whole_file_estimate_is_linear_in_samples_with_the_measured_slope():
    one = budget.whole_file_bytes(48000 * 60, 2)
    two = budget.whole_file_bytes(48000 * 120, 2)
    assert two - one == 48000 * 60 * 2 * budget.WHOLE_FILE_BYTES_PER_SAMPLE
    assert budget.WHOLE_FILE_BYTES_PER_SAMPLE >= 61  # measured ~61 B per sample per channel (see farm/budget.py)
    # the programme: two hours of 96 kHz stereo, 5.5 GB as float32, ~82 GiB to render whole
    assert 80 * GiB < budget.whole_file_bytes(TWO_HOURS_96K, 2) < 100 * GiB


def test_should_stream_only_what_does_not_fit():
    song = 4 * 60 * 48000
    assert not budget.should_stream(song, 2, 2048)  # a 4-minute song renders whole in 2 GiB
    assert budget.should_stream(TWO_HOURS_96K, 2, 8192)
    assert budget.should_stream(TWO_HOURS_96K, 2, 32 * 1024)
    n = budget.whole_file_bytes(song, 2)
    assert budget.should_stream(song, 2, n // MiB) and not budget.should_stream(song, 2, -(-n // MiB))


@pytest.mark.parametrize("mb", [budget.MIN_BUDGET_MB, 512, 1024, 2048, 8192, 65536])
@pytest.mark.parametrize("channels,rate", [(1, 44100), (2, 48000), (2, 96000), (6, 48000), (8, 192000)])
def test_block_frames_is_whole_quanta_and_fits_the_budget(mb, channels, rate):
    n = budget.block_frames(mb, channels, rate)
    assert n % BLOCK_QUANTUM == 0 and n >= BLOCK_QUANTUM
    assert n <= -(-int(budget.MAX_BLOCK_SECONDS * rate) // BLOCK_QUANTUM) * BLOCK_QUANTUM
    used = budget.stream_overhead_bytes(channels, rate) + n * channels * budget.STREAM_BYTES_PER_SAMPLE
    assert n == BLOCK_QUANTUM or used <= mb * MiB  # more than one quantum only when it fits


def test_block_frames_grows_with_the_budget_and_shrinks_with_channels():
    assert budget.block_frames(256, 8, 192000) == BLOCK_QUANTUM  # too little room: still one quantum
    assert budget.block_frames(512, 2, 96000) < budget.block_frames(1024, 2, 96000)
    assert budget.block_frames(1024, 8, 96000) < budget.block_frames(1024, 2, 96000)
    big = budget.block_frames(64 * 1024, 2, 96000)  # capped near MAX_BLOCK_SECONDS
    assert big == -(-int(budget.MAX_BLOCK_SECONDS * 96000) // BLOCK_QUANTUM) * BLOCK_QUANTUM


def test_default_budget_is_a_share_of_memory_per_worker_capped_and_floored():
    assert budget.default_memory_budget_mb(1, total_bytes=16 * GiB) == 8 * 1024
    assert budget.default_memory_budget_mb(4, total_bytes=16 * GiB) == 2 * 1024
    assert budget.default_memory_budget_mb(1, total_bytes=1024 * GiB) == budget.MAX_DEFAULT_BUDGET_MB
    assert budget.default_memory_budget_mb(64, total_bytes=4 * GiB) == budget.MIN_BUDGET_MB
    assert budget.default_memory_budget_mb(0, total_bytes=4 * GiB) == 2 * 1024  # 0 workers read as 1
    total = budget.total_memory_bytes()
    assert 256 * MiB < total < 1 << 50
    assert budget.default_memory_budget_mb(2) == max(budget.MIN_BUDGET_MB,
                                                     min(budget.MAX_DEFAULT_BUDGET_MB, total // 2 // 2 // MiB))


def test_resolve_shares_the_worker_budget_between_its_threads():
    assert budget.resolve_budget_mb(8192, threads=4) == 2048
    assert budget.resolve_budget_mb(8192, threads=1) == 8192
    assert budget.resolve_budget_mb(300, threads=8) == budget.MIN_BUDGET_MB
    # outside a Dask worker: one thread, the machine default
    assert budget.resolve_budget_mb(None) == budget.worker_budget_mb() == budget.default_memory_budget_mb(1)


def test_a_worker_default_is_a_share_of_its_dask_memory_limit():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, memory_limit=4 * GiB,
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        own, per_track, given = client.submit(
            lambda: (budget.worker_budget_mb(), budget.resolve_budget_mb(None), budget.resolve_budget_mb(3000)),
            pure=False).result()
    assert own == int(4 * GiB * budget.WORKER_LIMIT_FRACTION) // MiB
    assert per_track == own // 2 and given == 1500


def test_check_budget_messages():
    assert budget.check_budget_mb(4096, "x") == 4096
    for bad, why in ((100, "must be 256 to"), (True, "must be a whole"), (2.5, "must be a whole"), ("8G", "must be a whole")):
        with pytest.raises(ValueError, match=f"^job.toml memory_budget_mb: {why}"):
            budget.check_budget_mb(bad, "job.toml memory_budget_mb")


# ---------------------------------------------------------------- job, flags, tasks

@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"stub")
    (tmp_path / "b.wav").write_bytes(b"stub")
    (tmp_path / "catalog.csv").write_text("file,title,artist\na.wav,A,X\nb.wav,B,X\n", encoding="utf-8")
    return tmp_path


def _job_file(folder, extra=""):
    p = folder / "job.toml"
    p.write_text(textwrap.dedent(f"""
        catalog = "catalog.csv"
        preset = "streaming"
        output_dir = "out"
        {extra}
    """), encoding="utf-8")
    return p


def test_job_file_budget_reaches_every_task(work):
    job = load_job(_job_file(work, "memory_budget_mb = 6144"))
    assert job.memory_budget_mb == 6144
    assert [t.memory_budget_mb for t in job.tasks()] == [6144, 6144]
    assert [t.memory_budget_mb for t in load_job(_job_file(work)).tasks()] == [None, None]  # worker default


@pytest.mark.parametrize("value,why", [("100", "must be 256 to"), ('"8 GB"', "must be a whole number of MiB"),
                                       ("8192.0", "must be a whole number"), ("true", "must be a whole number")])
def test_a_bad_job_budget_names_file_and_field(work, value, why):
    with pytest.raises(ConfigError) as e:
        load_job(_job_file(work, f"memory_budget_mb = {value}"))
    assert f"job.toml memory_budget_mb: {why}" in str(e.value)


def test_unknown_job_key_lists_memory_budget_among_the_allowed(work):
    with pytest.raises(ConfigError, match="allowed: .*memory_budget_mb"):
        load_job(_job_file(work, "memory_budget = 8192"))


def test_flag_form_and_override(work):
    job = job_from_flags("catalog.csv", "streaming", "out", memory_budget_mb=2048)
    assert {t.memory_budget_mb for t in job.tasks()} == {2048}
    with pytest.raises(ConfigError, match="--memory-budget-mb: must be 256 to"):
        job_from_flags("catalog.csv", "streaming", "out", memory_budget_mb=10)
    over = load_job(_job_file(work, "memory_budget_mb = 6144")).with_memory_budget(1024)
    assert {t.memory_budget_mb for t in over.tasks()} == {1024}
    assert over.with_memory_budget(None) is over
    with pytest.raises(ConfigError, match="--memory-budget-mb: must be 256 to"):
        over.with_memory_budget(0)


def _capture_render_job(monkeypatch):
    from farm import pipeline

    seen = {}

    def fake_render_job(job, **kw):
        seen["tasks"] = job.tasks()
        return pipeline.RunOutcome(results=[], rendered=0, skipped=0, rejected=0)

    monkeypatch.setattr(pipeline, "render_job", fake_render_job)
    return seen


def test_cli_flag_reaches_the_tasks_and_overrides_the_job_file(work, monkeypatch, capsys):
    seen = _capture_render_job(monkeypatch)
    assert farm_main(["render", "catalog.csv", "--preset", "streaming", "-o", "out", "--memory-budget-mb", "3072",
                      "--no-progress"]) == 0
    assert {t.memory_budget_mb for t in seen["tasks"]} == {3072}
    _job_file(work, "memory_budget_mb = 6144")
    assert farm_main(["render", "job.toml", "--no-progress"]) == 0
    assert {t.memory_budget_mb for t in seen["tasks"]} == {6144}
    assert farm_main(["render", "job.toml", "--memory-budget-mb", "1024", "--no-progress"]) == 0
    assert {t.memory_budget_mb for t in seen["tasks"]} == {1024}


def test_cli_flag_out_of_range_exits_2_before_rendering(work, monkeypatch, capsys):
    seen = _capture_render_job(monkeypatch)
    assert farm_main(["render", "catalog.csv", "--preset", "streaming", "-o", "out", "--memory-budget-mb", "64",
                      "--no-progress"]) == 2
    assert "--memory-budget-mb: must be 256 to" in capsys.readouterr().err and not seen


def test_demo_takes_the_flag_too(tmp_path, monkeypatch):
    import argparse

    from farm import demo

    p = argparse.ArgumentParser()
    demo.add_parser(p.add_subparsers())
    assert p.parse_args(["demo", "--memory-budget-mb", "2048"]).memory_budget_mb == 2048


def test_gpu_budget_from_the_job_or_the_device():
    from farm import budget

    assert budget.gpu_budget_mb(8192, threads=4) == 2048
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except ImportError:
        has_cupy = False
    if not has_cupy:
        assert budget.gpu_budget_mb(None, threads=1) is None  # no device: no device budget
    assert not budget.device_should_stream(10 ** 9, 2, None)
    frames = 2 * 3600 * 96000  # two hours at 96 kHz stereo: 66 GB of device working set
    assert budget.device_should_stream(frames, 2, 40 * 1024)
    assert not budget.device_should_stream(4 * 60 * 48000, 2, 40 * 1024)  # a song fits an H100 share


def test_gpu_budget_travels_from_job_file_and_flag_to_the_task(tmp_path):
    import soundfile as sf

    from farm.errors import ConfigError
    from farm.job import load_job

    import numpy as np

    sf.write(str(tmp_path / "a.wav"), np.zeros((48000, 2), dtype=np.float32) + 0.1, 48000)
    (tmp_path / "c.csv").write_text("file,title\na.wav,A\n")
    (tmp_path / "job.toml").write_text('catalog = "c.csv"\npreset = "streaming"\noutput_dir = "out"\n'
                                       "gpu_memory_budget_mb = 4096\n")
    job = load_job(tmp_path / "job.toml")
    assert job.tasks()[0].gpu_memory_budget_mb == 4096
    assert job.with_gpu_memory_budget(1024).tasks()[0].gpu_memory_budget_mb == 1024
    (tmp_path / "job.toml").write_text('catalog = "c.csv"\npreset = "streaming"\noutput_dir = "out"\n'
                                       'gpu_memory_budget_mb = "lots"\n')
    with pytest.raises(ConfigError, match="gpu_memory_budget_mb"):
        load_job(tmp_path / "job.toml")
