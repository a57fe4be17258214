"""Short tracks rendered as a RenderBatch (farm.render.render_batch, farm.pipeline.batches).

On a GPU cluster the farm masters short tracks with one chain together
(kernels.batch); here the same code runs on the CPU. Each member must come out
as it does alone: bad inputs fail alone with their own reasons, the masters
match the one-by-one render, every record is journaled under its own input.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from farm import synth
from farm.job import job_from_flags
from farm.pipeline import BATCH_TRACKS, batches, render_job
from farm.records import STATUS_FAILED, STATUS_OK, RenderBatch
from farm.render import render_track
from test_render import tasks_for, write_audio, write_catalog

RATE = 48000


def _write(folder, name: str, seconds: float, level: float = 1.0, seed: int = 0, rate: int = RATE) -> str:
    x = synth.music(seconds, rate, 2, seed=seed, peak_dbfs=-1.0) * level
    write_audio(folder / name, x, rate, "PCM_24")
    return name


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    names = [_write(folder, "a.wav", 3.0, 1.0, 1), _write(folder, "b.wav", 5.5, 0.3, 2),
             _write(folder, "c.wav", 2.2, 0.7, 3)]
    (folder / "broken.wav").write_bytes(b"RIFF" + os.urandom(3000))
    write_audio(folder / "silent.wav", np.zeros((2, 3 * RATE)), RATE, "PCM_24")
    rows = [{"file": n, "title": n} for n in ["a.wav", "broken.wav", "b.wav", "silent.wav", "c.wav"]]
    return folder, rows, names


def test_batch_render_fails_bad_members_alone_and_matches_one_by_one(catalog):
    folder, rows, _ = catalog
    together = render_track(RenderBatch(tuple(tasks_for(folder, rows, "master", out="together"))))
    alone = [render_track(t) for t in tasks_for(folder, rows, "master", out="alone")]
    assert [r.status for r in together] == [STATUS_OK, STATUS_FAILED, STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert [r.status for r in alone] == [r.status for r in together]
    for t, a in zip(together, alone):
        assert t.row == a.row and t.source == a.source
        if t.status == STATUS_FAILED:
            assert t.reason == a.reason and t.reason.startswith(t.source)
            continue
        assert t.backend == "cpu (batch of 3)" and a.backend == "cpu"
        x, _ = sf.read(t.output, dtype="float64")
        y, _ = sf.read(a.output, dtype="float64")
        assert x.shape == y.shape
        assert np.max(np.abs(x - y)) <= 4 * 2.0 ** -23  # float32 rounding of the batch's FFTs, then 24-bit
        assert abs(t.result["integrated_lufs"] - a.result["integrated_lufs"]) <= 0.01
        assert t.result["true_peak_dbtp"] <= -1.0 and t.checks == a.checks and all(t.checks.values())


def test_members_that_do_not_fit_together_are_mastered_alone(tmp_path):
    """Another rate (the master keeps the input's) cannot share a batch: it is mastered
    alone inside the same task; the two at 48 kHz go together."""
    names = [_write(tmp_path, "x.wav", 2.0, seed=4), _write(tmp_path, "y.wav", 2.5, seed=5, rate=44100),
             _write(tmp_path, "z.wav", 3.0, seed=6)]
    results = render_track(RenderBatch(tuple(tasks_for(tmp_path, [{"file": n} for n in names], "streaming"))))
    assert [r.status for r in results] == [STATUS_OK] * 3
    assert [r.backend for r in results] == ["cpu (batch of 2)", "cpu", "cpu (batch of 2)"]


def test_batches_groups_short_lone_tracks_of_one_chain(tmp_path):
    names = [_write(tmp_path, f"s{i}.wav", 1.0 + 0.1 * i, seed=i) for i in range(BATCH_TRACKS + 2)]
    long = _write(tmp_path, "long.wav", 61.0, seed=99)
    rows = [{"file": n} for n in names + [long]]
    units = batches(tasks_for(tmp_path, rows, "streaming") + tasks_for(tmp_path, rows[:2], "master", out="m"))
    groups = [u for u in units if isinstance(u, RenderBatch)]
    lone = [u for u in units if not isinstance(u, RenderBatch)]
    assert sorted(len(g.tasks) for g in groups) == [2, 2, BATCH_TRACKS]  # streaming: 8 + 2; master: 2
    assert [u.track.source for u in lone] == [os.path.join(str(tmp_path), long)]  # over 60 s: alone
    for g in groups:
        assert len({t.preset for t in g.tasks}) == 1
    first = next(g for g in groups if len(g.tasks) == BATCH_TRACKS)
    lengths = [sf.info(t.track.source).duration for t in first.tasks]
    assert lengths == sorted(lengths)  # like lengths together


def test_render_job_batches_short_tracks_and_journals_each(catalog, tmp_path):
    """Through the embedded cluster with batching asked for (a GPU cluster's default):
    every record lands under its own row and input, and a rerun skips them all."""
    folder, rows, _ = catalog
    cat = write_catalog(tmp_path, [{**r, "file": os.path.join(str(folder), r["file"])} for r in rows])
    job = job_from_flags(cat, "streaming", tmp_path / "out", backend="cpu")
    kw = dict(n_workers=1, threads_per_worker=2, dashboard=False, progress=False)
    first = render_job(job, batch_short=True, **kw)
    by_row = {r.row: r for r in first.results}
    assert [by_row[i].status for i in sorted(by_row)] == [STATUS_OK, STATUS_FAILED, STATUS_OK, STATUS_FAILED,
                                                          STATUS_OK]
    assert {by_row[i].backend for i in sorted(by_row) if by_row[i].ok} == {"cpu (batch of 3)"}
    again = render_job(job, batch_short=True, **kw)
    assert again.rendered == 2 and again.skipped == 3  # the failed two are tried again, the rest are done


@pytest.mark.parametrize("flag, want", [(None, None), ("on", True), ("off", False), ("auto", None)])
def test_cli_batch_short_flag_reaches_render_job(catalog, tmp_path, monkeypatch, flag, want):
    from farm import pipeline
    from farm.cli import main

    folder, rows, _ = catalog
    seen = {}

    def fake_render_job(job, **kw):
        seen.update(kw)
        return pipeline.RunOutcome(results=[], rendered=0, skipped=0, rejected=0)

    monkeypatch.setattr(pipeline, "render_job", fake_render_job)
    cat = write_catalog(tmp_path, [{"file": os.path.join(str(folder), "a.wav"), "title": "A"}])
    argv = ["render", cat, "--preset", "streaming", "-o", str(tmp_path / "cli-out"), "--no-progress"]
    assert main(argv + (["--batch-short", flag] if flag else [])) == 0
    assert seen["batch_short"] is want


def test_a_member_with_a_reference_is_matched_as_alone(tmp_path):
    """A member whose row names a reference master is no batch material: it is mastered
    alone inside the batch's task, with its reference (as render_track does)."""
    for i, n in enumerate(["a.wav", "b.wav", "ref.wav"]):
        _write(tmp_path, n, 2.0, seed=20 + i)
    rows = [{"file": "a.wav"}, {"file": "b.wav", "reference": "ref.wav"}]
    alone = [render_track(t) for t in tasks_for(tmp_path, rows, "streaming", out="alone")]
    together = render_track(RenderBatch(tuple(tasks_for(tmp_path, rows, "streaming", out="together"))))
    assert [r.status for r in alone] == [r.status for r in together] == [STATUS_OK, STATUS_OK], \
        [r.reason for r in together]
    assert together[1].gain_db == pytest.approx(alone[1].gain_db, abs=1e-3)
