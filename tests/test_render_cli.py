"""`farm render` / `farm demo` / `farm presets` end to end, through the real CLI.

Every render here runs the console script ``.venv/bin/farm`` as a subprocess
(so argument parsing, exit codes, stdout/stderr are the real ones) on real
audio made with :func:`farm.synth.music`, and every master is checked with
independent tools: pyloudnorm and ``kernels.loudness`` for loudness and true
peak, ffprobe and metaflac for tags, soundfile for the container.

Renders use either a real ``dask scheduler`` with two ``dask worker``
processes on 127.0.0.1 (module fixture ``cluster``; the tests marked
``integration``) or the embedded LocalCluster with ``--workers 1`` (resume,
demo). Config errors run :func:`farm.cli.main` in-process: they exit before
any cluster starts.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from dask_procs import DaskProcs
from farm.cli import main as farm_main
from farm.synth import music
from kernels import loudness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FARM = os.path.join(os.path.dirname(sys.executable), "farm")
FFPROBE, METAFLAC = shutil.which("ffprobe"), shutil.which("metaflac")
JOURNAL_FILES = (".farm-journal.sqlite", ".farm-journal.sqlite-wal", ".farm-journal.sqlite-shm")
REPORTS = ("report.json", "report.csv", "report.html", "report")  # report/: plot data and PNGs
CLI_TIMEOUT_S = 300

# The five built-in presets as the issue specifies them: target LUFS, tolerance LU,
# max true peak dBTP, and what they write (format, bit depth, rate; None = the input's).
PRESETS = {
    "streaming": dict(target=-14.0, tol=1.0, tp=-1.0, format="flac", depth=None, rate=None),
    "apple-music": dict(target=-16.0, tol=1.0, tp=-1.0, format="flac", depth=24, rate=None),
    "ebu-r128": dict(target=-23.0, tol=0.5, tp=-1.0, format="wav", depth=24, rate=48000),
    "atsc-a85": dict(target=-24.0, tol=2.0, tp=-2.0, format="wav", depth=24, rate=48000),
    "master": dict(target=-14.0, tol=1.0, tp=-1.0, format="flac", depth=None, rate=None),
}
EXTENSIONS = {"flac": ".flac", "wav": ".wav", "aiff": ".aiff"}
SUBTYPE_DEPTH = {"PCM_16": 16, "PCM_24": 24}


# ---------------------------------------------------------------- running the CLI

def _env() -> dict[str, str]:
    """The environment of every process we start: this checkout first on the path
    (workers and the CLI import farm/kernels from it), no user preset folders."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env.pop("FARM_PRESET_PATH", None)
    return env


@dataclass
class Run:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # shown by failing asserts
        return f"exit {self.code}\n--- stdout\n{self.out[-4000:]}\n--- stderr\n{self.err[-4000:]}"


def farm(*args: str, cwd, timeout: float = CLI_TIMEOUT_S) -> Run:
    """Run the ``farm`` console script in ``cwd``."""
    p = subprocess.run([FARM, *map(str, args)], cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(p.returncode, p.stdout, p.stderr)


def counts(run: Run) -> tuple[int, int]:
    """(rendered, unchanged) from the summary's last line."""
    m = re.search(r"\((\d+) rendered, (\d+) unchanged since the last run", run.out)
    assert m, run
    return int(m.group(1)), int(m.group(2))


class _Procs(DaskProcs):
    def _env(self) -> dict[str, str]:
        env = super()._env()  # tests/ on the path
        env["PYTHONPATH"] = os.pathsep.join((REPO, env["PYTHONPATH"]))
        return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real scheduler and two single-threaded workers ("w1", "w2") on 127.0.0.1."""
    with _Procs(str(tmp_path_factory.mktemp("dask")), timeout_s=60.0) as procs:
        procs.start_scheduler()
        procs.start_worker("w1", nthreads=1)
        procs.start_worker("w2", nthreads=1)
        procs.wait_for_workers(2)
        yield procs


def render_keys_by_worker(address: str) -> dict[str, set[str]]:
    """Worker name -> keys of the render tasks that worker has executed (from its
    own state-machine log), asked of the workers themselves."""
    from distributed import Client

    def executed(dask_worker):  # nested: pickled by value, the workers need not import this module
        return sorted({e[0] for e in dask_worker.state.log  # transitions: (key, start, finish, final, ...)
                       if len(e) > 3 and str(e[0]).startswith("render_track-") and e[1] == "executing"
                       and e[3] == "memory"})

    with Client(address, timeout=30, set_as_default=False) as client:
        names = {addr: str(w["name"]) for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        return {names[addr]: set(keys) for addr, keys in client.run(executed).items()}


# ---------------------------------------------------------------- audio and catalogs

@dataclass(frozen=True)
class Source:
    """One input file: how to synthesise it, and the catalog row that names it."""

    file: str
    seconds: float
    rate: int
    channels: int
    subtype: str
    peak_dbfs: float = -1.0
    hot: bool = False  # a loud, clipped mix (well above any target)
    cells: tuple[tuple[str, str], ...] = ()  # catalog cells besides File


def write_audio(path, seconds: float, rate: int, channels: int = 2, subtype: str = "PCM_16", *,
                peak_dbfs: float = -1.0, hot: bool = False, seed: int = 0) -> None:
    x = music(seconds, rate, channels=channels, seed=seed, peak_dbfs=0.0 if hot else peak_dbfs)
    if hot:  # drive it into a soft clipper: a brick-walled, ~-7 LUFS mix
        x = np.tanh(4.0 * x) * 10 ** (-0.2 / 20)
    sf.write(str(path), np.ascontiguousarray(x.T), rate, subtype=subtype)


def write_catalog(path, rows: list[dict[str, str]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree(root) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def stamp(path) -> tuple[int, int]:
    """(inode, mtime_ns): changes whenever a render replaces the file (temp file + rename)."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------- reading what a run wrote

def read_reports(out_dir) -> tuple[dict, list[dict[str, str]]]:
    with open(os.path.join(out_dir, "report.json"), encoding="utf-8") as f:
        doc = json.load(f)
    with open(os.path.join(out_dir, "report.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return doc, rows


def check_reports_agree(doc: dict, rows: list[dict[str, str]], n_rows: int) -> None:
    """Both reports list every catalog row once, in order, with the same verdict and reason."""
    assert [t["row"] for t in doc["tracks"]] == list(range(1, n_rows + 1))
    assert [int(r["row"]) for r in rows] == list(range(1, n_rows + 1))
    for t, r in zip(doc["tracks"], rows):
        assert t["verdict"] == r["verdict"] == ("pass" if t["status"] == "ok" else "FAIL"), (t, r)
        assert r["reason"].removeprefix("'") == t["reason"]  # a leading ' only guards against formulas
        assert r["source"] == t["source"] and r["output"] == (t["output"] or "")
    passed = sum(t["verdict"] == "pass" for t in doc["tracks"])
    assert doc["totals"]["tracks"] == n_rows and doc["totals"]["passed"] == passed
    assert doc["totals"]["failed"] == n_rows - passed


def masters_in(out_dir) -> set[str]:
    """Every file in ``out_dir`` except the reports and the journal."""
    return {n for n in os.listdir(out_dir) if n not in REPORTS + JOURNAL_FILES}


def measure(path) -> dict:
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    x = np.ascontiguousarray(data.T)
    return {
        "rate": rate, "channels": x.shape[0], "subtype": sf.info(str(path)).subtype,
        "format": sf.info(str(path)).format, "frames": x.shape[1],
        "ours": loudness.integrated_loudness(x, rate),
        "pyloudnorm": pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(data),
        "tp4": loudness.true_peak_dbtp(x, 4), "tp16": loudness.true_peak_dbtp(x, 16),
    }


# Where each catalog field shows up in ffprobe's format tags (lower-cased): Vorbis
# comments in FLAC, ID3v2.4 frames in WAV/AIFF (ISRC is TSRC, the label TPUB).
_FFPROBE_NAMES = {
    "title": ("title",), "artist": ("artist",), "album": ("album",), "album_artist": ("album_artist",),
    "date": ("date",), "genre": ("genre",), "isrc": ("isrc", "tsrc"), "composer": ("composer",),
    "label": ("label", "publisher", "organization"), "copyright": ("copyright",),
}


def _numbers(raw: dict[str, str], fields) -> dict[str, str]:
    out = {}
    for field, (num, total) in fields:
        n = raw.get(num)
        if n is not None:
            out[field] = n if "/" in n or not raw.get(total) else f"{n}/{raw[total]}"
    return out


def ffprobe_tags(path) -> dict[str, str]:
    """The catalog fields as ffprobe (libavformat) reads them from ``path``."""
    p = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "format_tags", "-of", "json", str(path)],
                       capture_output=True, text=True, check=True, timeout=60)
    raw = {k.lower(): v for k, v in json.loads(p.stdout).get("format", {}).get("tags", {}).items()}
    out = {f: next(raw[n] for n in names if n in raw) for f, names in _FFPROBE_NAMES.items()
           if any(n in raw for n in names)}
    out.update(_numbers(raw, (("track_number", ("track", "tracktotal")), ("disc_number", ("disc", "disctotal")))))
    return out


def metaflac_tags(path) -> dict[str, str]:
    """The catalog fields as metaflac reads the FLAC's Vorbis comments."""
    p = subprocess.run([METAFLAC, "--export-tags-to=-", str(path)], capture_output=True, text=True, check=True,
                       timeout=60)
    raw: dict[str, str] = {}
    for line in p.stdout.splitlines():
        name, _, value = line.partition("=")
        raw.setdefault(name.upper(), value)
    names = {"title": "TITLE", "artist": "ARTIST", "album": "ALBUM", "album_artist": "ALBUMARTIST",
             "date": "DATE", "genre": "GENRE", "isrc": "ISRC", "composer": "COMPOSER", "label": "LABEL",
             "copyright": "COPYRIGHT"}
    out = {f: raw[n] for f, n in names.items() if n in raw}
    out.update(_numbers(raw, (("track_number", ("TRACKNUMBER", "TRACKTOTAL")),
                              ("disc_number", ("DISCNUMBER", "DISCTOTAL")))))
    return out


# ---------------------------------------------------------------- 1. a catalog on external workers

ARTIST, ALBUM = "Ærøskøbing Ensemble", "Harbour Lights"
COMMON = (("Artist", ARTIST), ("Album", ALBUM), ("Album Artist", ARTIST), ("Genre", "Electronic"),
          ("Composer", "F. Arm"), ("Publisher", "Synthetic Records"), ("Copyright", "(C) 2024 Synthetic Records"),
          ("Disc", "1/1"))
GOOD = (
    Source("01_opening.wav", 5.0, 48000, 2, "PCM_24",
           cells=(("Title", "Opening Lights"), ("ISRC", "gb-xy1-24-00001"), ("Track", "1/6"), ("Year", "2024"))),
    Source("02_quiet.flac", 4.0, 44100, 1, "PCM_16", peak_dbfs=-26.0,  # ~ -40 LUFS: +26 dB into the limiter
           cells=(("Title", "Quiet Harbour"), ("ISRC", "GBXY12400002"), ("Track", "02/6"),
                  ("Year", "2024-03-15"))),
    Source("03_hot.aiff", 6.0, 44100, 2, "PCM_16", hot=True,
           cells=(("Title", "Hot Wire"), ("ISRC", "gbxy1-24-00003"), ("Track", "3"), ("Year", "2024"))),
    Source("04_mono.wav", 3.0, 44100, 1, "PCM_24",
           cells=(("Title", "Paper Planes — Intro"), ("ISRC", "GB-XY1-24-00004"), ("Track", "4/6"),
                  ("Year", "2024"), ("Target LUFS", "-16"))),
    Source("05_broadcast.flac", 3.5, 44100, 2, "PCM_16", peak_dbfs=-6.0,
           cells=(("Title", "Broadcast Cut"), ("ISRC", "GB-XY1-24-00005"), ("Track", "5/6"), ("Year", "2024"),
                  ("Preset", "ebu-r128"))),
    Source("06_coda.aiff", 8.0, 48000, 2, "PCM_24", peak_dbfs=-3.0,
           cells=(("Title", "Coda"), ("ISRC", "GB-XY1-24-00006"), ("Track", "6/6"), ("Year", "2024"))),
)
# The tags each master must carry: the catalog's values as the catalog normalises them.
GOOD_TAGS = [
    {"title": dict(s.cells)["Title"], "artist": ARTIST, "album": ALBUM, "album_artist": ARTIST,
     "genre": "Electronic", "composer": "F. Arm", "label": "Synthetic Records",
     "copyright": "(C) 2024 Synthetic Records", "disc_number": "1/1",
     "isrc": f"GBXY1240000{i}", "date": dict(s.cells)["Year"],
     "track_number": {1: "1/6", 2: "2/6", 3: "3", 4: "4/6", 5: "5/6", 6: "6/6"}[i]}
    for i, s in enumerate(GOOD, start=1)
]


@pytest.fixture(scope="module")
def good_catalog(tmp_path_factory):
    """The six-track catalog (inputs in their own folder) and the inputs' sha256."""
    root = tmp_path_factory.mktemp("good")
    (root / "audio").mkdir()
    rows = []
    for i, s in enumerate(GOOD, start=1):
        write_audio(root / "audio" / s.file, s.seconds, s.rate, s.channels, s.subtype, peak_dbfs=s.peak_dbfs,
                    hot=s.hot, seed=100 + i)
        rows.append({"File": f"audio/{s.file}", **dict(COMMON), **dict(s.cells)})
    write_catalog(root / "catalog.csv", rows)
    hashes = {s.file: sha256(root / "audio" / s.file) for s in GOOD}
    return root, hashes


def expected(i: int, job_preset: str, output: dict, target_override: float | None = None) -> dict:
    """What row ``i`` (1-based) of GOOD must come out as in a job with ``job_preset``,
    the job's ``[output]`` table and an ``[overrides]`` loudness target."""
    s = GOOD[i - 1]
    cells = dict(s.cells)
    own = cells.get("Preset")
    p = PRESETS[own or job_preset]
    target = p["target"] if own or target_override is None else target_override
    if "Target LUFS" in cells:
        target = float(cells["Target LUFS"])
    return {"target": target, "tol": p["tol"], "tp": p["tp"], "format": output.get("format", p["format"]),
            "depth": output.get("bit_depth") or p["depth"] or SUBTYPE_DEPTH[s.subtype],
            "rate": output.get("sample_rate") or p["rate"] or s.rate, "channels": s.channels,
            "seconds": s.seconds}


def check_master(path: str, want: dict, tags: dict) -> None:
    assert os.path.isfile(path), path
    m = measure(path)
    where = f"{os.path.basename(path)}: {m}"
    assert path.endswith(EXTENSIONS[want["format"]]) and m["format"] == want["format"].upper(), where
    assert (m["rate"], m["channels"], SUBTYPE_DEPTH[m["subtype"]]) == (want["rate"], want["channels"],
                                                                          want["depth"]), where
    assert abs(m["frames"] - want["seconds"] * want["rate"]) <= 1, where
    for meter in ("ours", "pyloudnorm"):
        assert abs(m[meter] - want["target"]) <= want["tol"], where
    assert m["tp4"] <= want["tp"] and m["tp16"] <= want["tp"], where
    if FFPROBE:
        assert ffprobe_tags(path) == tags, where
    if METAFLAC and want["format"] == "flac":
        assert metaflac_tags(path) == tags, where


def check_cluster_run(doc: dict, cluster: _Procs, keys: dict[str, set[str]]) -> None:
    """report.json names the external scheduler and its two workers, and both
    workers executed render tasks of this run, one per catalog row."""
    info = doc["job"]["cluster"]
    assert info["embedded"] is False and info["address"] == cluster.address
    assert info["n_workers"] == 2 and sorted(w["name"] for w in info["workers"]) == ["w1", "w2"]
    assert doc["job"]["rendered"] == len(GOOD) and doc["job"]["skipped"] == 0
    assert set(keys) == {"w1", "w2"} and all(keys.values()), keys  # both workers rendered tracks
    rows = sorted(int(re.search(r"-row(\d+)-", k).group(1)) for ks in keys.values() for k in ks)
    assert rows == list(range(1, len(GOOD) + 1)), keys  # each row once, no task elsewhere
    # ... and each track's record names the worker that rendered it
    by_row = {int(re.search(r"-row(\d+)-", k).group(1)): w for w, ks in keys.items() for k in ks}
    for t in doc["tracks"]:
        assert t["worker"].split()[0] == by_row[t["row"]], (t["row"], t["worker"])


def _new_keys(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    return {w: after[w] - before.get(w, set()) for w in after}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_flag_and_job_forms_render_a_catalog_on_external_workers(cluster, good_catalog, tmp_path):
    root, hashes = good_catalog

    # The flag form: streaming for the catalog, row 5 asks for ebu-r128 (its own WAV 48 kHz 24-bit).
    before = render_keys_by_worker(cluster.address)
    run = farm("render", root / "catalog.csv", "--preset", "streaming", "-o", tmp_path / "flag",
               "--scheduler", cluster.address, "--no-progress", cwd=tmp_path)
    assert run.code == 0, run
    assert counts(run) == (len(GOOD), 0), run
    assert f"Dask scheduler {cluster.address}: 2 workers" in run.err, run
    doc, rows = read_reports(tmp_path / "flag")
    check_reports_agree(doc, rows, len(GOOD))
    check_cluster_run(doc, cluster, _new_keys(before, render_keys_by_worker(cluster.address)))
    assert doc["job"]["preset"] == "streaming" and doc["job"]["scheduler"] == cluster.address
    for i, t in enumerate(doc["tracks"], start=1):
        want = expected(i, "streaming", {})
        assert t["verdict"] == "pass" and t["reason"] == "", t
        assert t["preset"] == (dict(GOOD[i - 1].cells).get("Preset") or "streaming")
        assert t["source"] == str(root / "audio" / GOOD[i - 1].file)
        # The default naming, '{track_number:02d} - {artist} - {title}', in the output folder itself.
        title = dict(GOOD[i - 1].cells)["Title"]
        assert t["output"] == str(tmp_path / "flag" / f"{i:02d} - {ARTIST} - {title}{EXTENSIONS[want['format']]}")
        check_master(t["output"], want, GOOD_TAGS[i - 1])
    assert masters_in(tmp_path / "flag") == {os.path.basename(t["output"]) for t in doc["tracks"]}

    # The job-file form: scheduler, [output] and [overrides] from the file; paths relative to it.
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    (job_dir / "album.toml").write_text(
        f'catalog = "{os.path.relpath(root / "catalog.csv", job_dir)}"\n'
        'preset = "streaming"\n'
        'output_dir = "../job-out"\n'
        f'scheduler = "{cluster.address}"\n'
        'description = "the album for the listening room"\n'
        "[output]\n"
        'format = "aiff"\n'
        "bit_depth = 24\n"
        'naming = "{track_number:02d}. {title}"\n'
        "[overrides]\n"
        "loudness = { target_lufs = -15.0 }\n", encoding="utf-8")
    before = render_keys_by_worker(cluster.address)
    run = farm("render", "jobs/album.toml", "--no-progress", cwd=tmp_path)
    assert run.code == 0, run
    assert counts(run) == (len(GOOD), 0), run
    doc, rows = read_reports(tmp_path / "job-out")
    check_reports_agree(doc, rows, len(GOOD))
    check_cluster_run(doc, cluster, _new_keys(before, render_keys_by_worker(cluster.address)))
    assert doc["job"]["job"] == str(job_dir / "album.toml")
    output = {"format": "aiff", "bit_depth": 24}
    for i, t in enumerate(doc["tracks"], start=1):
        assert t["verdict"] == "pass", t
        # [overrides] apply to the job's preset only: row 4 keeps its own -16, row 5 its ebu-r128 -23.
        want = expected(i, "streaming", output, target_override=-15.0)
        assert t["output"] == str(tmp_path / "job-out" / f"{i:02d}. {dict(GOOD[i - 1].cells)['Title']}.aiff")
        check_master(t["output"], want, GOOD_TAGS[i - 1])
        # the worker's checksum of the master, in the report and (as the client recorded it) the journal
        assert t["output_hash"] == "sha256:" + sha256(t["output"])
    from farm.journal import Journal

    with Journal(str(tmp_path / "job-out")) as journal:
        recorded = {e.output: e.output_hash for e in journal.entries()}
    assert recorded == {t["output"]: t["output_hash"] for t in doc["tracks"]}
    assert len(masters_in(tmp_path / "job-out")) == len(GOOD)

    # Nothing ever touched the inputs.
    assert {s.file: sha256(root / "audio" / s.file) for s in GOOD} == hashes
    assert sorted(os.listdir(root / "audio")) == sorted(s.file for s in GOOD)


# ---------------------------------------------------------------- 2. resume

@pytest.mark.integration
@pytest.mark.timeout(600)
def test_rerun_renders_only_what_changed(tmp_path):
    sources = [("a.wav", 48000, 2, "PCM_24"), ("b.flac", 44100, 1, "PCM_16"), ("c.aiff", 44100, 2, "PCM_16")]
    for i, (name, rate, ch, subtype) in enumerate(sources, start=1):
        write_audio(tmp_path / name, 3.0, rate, ch, subtype, seed=i)
    rows = [{"file": name, "title": f"Track {i}", "artist": "Resume", "track": str(i), "target_lufs": ""}
            for i, (name, *_) in enumerate(sources, start=1)]
    write_catalog(tmp_path / "catalog.csv", rows)
    out = tmp_path / "out"
    args = ("render", "catalog.csv", "--preset", "streaming", "-o", "out", "--workers", "1", "--no-progress")

    def render(*extra: str) -> tuple[Run, dict]:
        run = farm(*args, *extra, cwd=tmp_path)
        assert run.code == 0, run
        doc, csv_rows = read_reports(out)
        check_reports_agree(doc, csv_rows, len(rows))
        assert all(t["verdict"] == "pass" for t in doc["tracks"]), doc["tracks"]
        assert (doc["job"]["rendered"], doc["job"]["skipped"]) == counts(run)
        # each row reported with its own file and title, whether rendered now or earlier
        assert [os.path.basename(t["source"]) for t in doc["tracks"]] == [r["file"] for r in rows]
        assert [r["title"] for r in csv_rows] == [r["title"] for r in rows]
        return run, doc

    def stamps() -> list[tuple[int, int]]:
        return [stamp(out / n) for n in names]

    def rerendered(before: list, after: list) -> list[int]:
        return [i + 1 for i, (b, a) in enumerate(zip(before, after)) if b != a]

    run, doc = render()
    assert counts(run) == (3, 0)
    names = [os.path.basename(t["output"]) for t in doc["tracks"]]
    assert masters_in(out) == set(names)

    s0 = stamps()
    run, doc = render()
    assert counts(run) == (0, 3) and doc["job"]["cluster"] is None  # no cluster was even started
    assert stamps() == s0
    assert [t["output"] for t in doc["tracks"]] == [str(out / n) for n in names]  # the earlier results

    rows[1]["target_lufs"] = "-16"  # one row's settings
    write_catalog(tmp_path / "catalog.csv", rows)
    run, doc = render()
    s1 = stamps()
    assert counts(run) == (1, 2) and rerendered(s0, s1) == [2]
    assert abs(measure(out / names[1])["ours"] - -16.0) <= 1.0

    write_audio(tmp_path / "c.aiff", 3.0, 44100, 2, "PCM_16", seed=99)  # one input's audio
    run, doc = render()
    s2 = stamps()
    assert counts(run) == (1, 2) and rerendered(s1, s2) == [3]

    os.unlink(out / names[0])  # one master
    run, doc = render()
    s3 = stamps()
    assert counts(run) == (1, 2) and rerendered(s2, s3) == [1]

    run, doc = render("--force")
    s4 = stamps()
    assert counts(run) == (3, 0) and rerendered(s3, s4) == [1, 2, 3]
    assert masters_in(out) == set(names)

    # A row inserted at the top (rows renumber, nothing else changes): only it renders, and
    # the others' earlier results are reported under their new rows (they were mislabelled
    # by their old row numbers, and the last one dropped, before farm/pipeline.py's fix).
    write_audio(tmp_path / "d.wav", 3.0, 48000, 2, "PCM_16", seed=4)
    rows.insert(0, {"file": "d.wav", "title": "Bonus", "artist": "Resume", "track": "4", "target_lufs": ""})
    write_catalog(tmp_path / "catalog.csv", rows)
    run, doc = render()
    assert counts(run) == (1, 3) and stamps() == s4
    assert [t["output"] for t in doc["tracks"][1:]] == [str(out / n) for n in names]
    assert masters_in(out) == set(names) | {os.path.basename(doc["tracks"][0]["output"])}


# ---------------------------------------------------------------- 3. bad rows and bad files

def _truncated_wav(path) -> None:
    """A WAV whose header declares twice the frames the file holds (a copy cut short)."""
    write_audio(path, 2.0, 44100, 2, "PCM_16", seed=7)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(44 + (size - 44) // 2)


@pytest.fixture
def messy_catalog(tmp_path):
    """Rows 1 and 10 are fine; every other row has one problem of its own."""
    (tmp_path / "in").mkdir()
    d = tmp_path / "in"
    write_audio(d / "good.wav", 3.0, 44100, 2, "PCM_24", seed=1)
    write_audio(d / "good2.flac", 3.0, 48000, 1, "PCM_16", seed=2)
    for i, name in enumerate(("isrc.wav", "date.wav", "preset.wav"), start=3):
        write_audio(d / name, 2.0, 44100, 2, "PCM_16", seed=i)
    (d / "corrupt.wav").write_bytes(np.random.default_rng(8).bytes(8192))
    _truncated_wav(d / "truncated.wav")
    sf.write(str(d / "silent.wav"), np.zeros((2 * 44100, 2)), 44100, subtype="PCM_16")
    rows = [
        {"file": "in/good.wav", "title": "Good", "isrc": "GB-XY1-24-00001", "date": "2024"},
        {"file": "in/isrc.wav", "title": "Bad ISRC", "isrc": "GB-XY1-2X-0001", "date": "2024"},
        {"file": "in/date.wav", "title": "Bad Date", "date": "2024-02-30"},
        {"file": "in/preset.wav", "title": "Bad Preset", "preset": "loud-af"},
        {"file": "in/good.wav", "title": "Duplicate"},
        {"file": "in/missing.wav", "title": "Missing"},
        {"file": "in/corrupt.wav", "title": "Corrupt"},
        {"file": "in/truncated.wav", "title": "Truncated"},
        {"file": "in/silent.wav", "title": "Silent"},
        {"file": "in/good2.flac", "title": "Good Two", "isrc": "gbxy12400010"},
    ]
    write_catalog(tmp_path / "catalog.csv", rows)
    return tmp_path, [r["file"] for r in rows]


# row -> words its reason must hold (besides naming the file); metadata rows also name row and field
MESSY_REASONS = {
    2: ("catalog.csv row 2", "field 'isrc'", "'GB-XY1-2X-0001' is not an ISRC"),
    3: ("catalog.csv row 3", "field 'date'", "not a calendar date"),
    4: ("catalog.csv row 4", "field 'preset'", "unknown preset 'loud-af'"),
    5: ("catalog.csv row 5", "field 'file'", "is already row 1"),
    6: ("no such file",),
    7: ("cannot decode",),
    8: ("truncated",),
    9: ("silent",),
}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bad_rows_and_bad_files_fail_alone_and_strict_stops_first(cluster, messy_catalog):
    root, files = messy_catalog
    inputs = tree(root / "in")
    run = farm("render", "catalog.csv", "--preset", "streaming", "-o", "out", "--scheduler", cluster.address,
               "--no-progress", cwd=root)
    assert run.code == 3, run
    assert counts(run) == (6, 0), run  # 2 good + 4 bad files; the 4 bad rows never reach the cluster
    assert "4 rows set aside" in run.out, run
    for row in (2, 3, 4, 5):  # listed up front
        assert re.search(rf"catalog\.csv row {row} .*\(this row will not render\)", run.err), run
    assert re.search(r"row 6: .*missing\.wav: no such file \(this track will fail\)", run.err), run

    doc, rows = read_reports(root / "out")
    check_reports_agree(doc, rows, 10)
    by_row = {t["row"]: t for t in doc["tracks"]}
    for row in (1, 10):
        assert by_row[row]["verdict"] == "pass", by_row[row]
    for row, words in MESSY_REASONS.items():
        t = by_row[row]
        assert t["verdict"] == "FAIL" and t["status"] == "failed" and t["output"] is None, t
        assert t["source"] == str(root / files[row - 1])
        assert all(w in t["reason"] for w in words), t["reason"]
    # Render-time failures name the audio file itself first.
    for row in (6, 7, 8, 9):
        assert by_row[row]["reason"].startswith(by_row[row]["source"] + ": "), by_row[row]["reason"]

    # Only the two good masters were written, and no temporary file is left anywhere.
    assert masters_in(root / "out") == {os.path.basename(by_row[1]["output"]),
                                        os.path.basename(by_row[10]["output"])}
    assert not [p for p in tree(root) if ".partial" in p]
    assert tree(root / "in") == inputs

    # --strict: every metadata problem listed at once, nothing rendered, no output folder made.
    run = farm("render", "catalog.csv", "--preset", "streaming", "-o", "strict-out", "--strict",
               "--scheduler", cluster.address, "--no-progress", cwd=root)
    assert run.code == 2, run
    assert "4 problems" in run.err and "nothing was rendered" in run.err, run
    for words in (MESSY_REASONS[r] for r in (2, 3, 4, 5)):
        assert all(w in run.err for w in words), run
    assert run.out == "" and not (root / "strict-out").exists()


# ---------------------------------------------------------------- 4. names from metadata stay inside

def _csv_reads_nul() -> bool:
    """Python 3.11+ reads NUL inside a CSV cell; 3.10 refuses the whole file."""
    try:
        return list(csv.reader(io.StringIO("a\0b\n"))) == [["a\0b"]]
    except csv.Error:
        return False


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_output_names_from_metadata_never_leave_the_output_folder(cluster, tmp_path):
    work = tmp_path / "label" / "job"
    (work / "in").mkdir(parents=True)
    escape = tmp_path / "escape"
    escape.mkdir()
    # (artist, title): the naming pattern below glues them together unseparated.
    hostile = [
        ("", "../../evil"), ("", "/etc/passwd"), ("", f"{escape}/abs"), ("", "a/b\\c"), ("", ".."),
        ("", "CON"), ("../..", "/joined"), ("", ".hidden"), ("", "bidi\u202eflac.exe"), ("", "a_b_c"),
        ("", "x" * 150 + "/../" * 30), ("", "   "), ("..", ".."),
    ]
    rejected = ["line\nbreak"] + (["nul\0byte"] if _csv_reads_nul() else [])
    rows = []
    for i, (artist, title) in enumerate(hostile + [("", t) for t in rejected], start=1):
        write_audio(work / "in" / f"t{i:02d}.wav", 1.0, 44100, 1, "PCM_16", seed=i)
        rows.append({"file": f"in/t{i:02d}.wav", "artist": artist, "title": title})
    write_catalog(work / "catalog.csv", rows)
    before = tree(tmp_path)
    passwd = os.stat("/etc/passwd")

    run = farm("render", "catalog.csv", "--preset", "streaming", "-o", "out", "--naming", "{artist}{title}",
               "--scheduler", cluster.address, "--no-progress", cwd=work)
    assert run.code == (3 if rejected else 0), run
    doc, _ = read_reports(work / "out")
    failed = {t["row"]: t["reason"] for t in doc["tracks"] if t["verdict"] != "pass"}
    assert sorted(failed) == list(range(len(hostile) + 1, len(rows) + 1)), failed
    assert all("control character" in r for r in failed.values()), failed

    out_dir = os.path.realpath(work / "out")
    outputs = [t["output"] for t in doc["tracks"] if t["verdict"] == "pass"]
    assert len(set(outputs)) == len(hostile)  # every name distinct ('a/b\\c' and 'a_b_c' do not collide)
    for o in outputs:
        real = os.path.realpath(o)
        name = os.path.basename(real)
        assert os.path.dirname(real) == out_dir and os.path.isfile(real), o
        assert not name.startswith(".") and not re.search(r"[/\\\x00-\x1f\u202e]", name), name
        assert len(name.encode()) <= 255 and name.endswith(".flac"), name
        assert name.split(".")[0].upper() not in ("CON", "PRN", "AUX", "NUL"), name
    assert masters_in(work / "out") == {os.path.basename(o) for o in outputs}

    # Nothing was written anywhere else: every other file under tmp_path is as it was, the
    # escape folder is empty, /etc untouched.
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(os.path.join("label", "job", "out") + os.sep)} \
        == before
    assert os.listdir(escape) == []
    assert not os.path.exists("/etc/passwd.flac")
    assert (os.stat("/etc/passwd").st_mtime_ns, os.stat("/etc/passwd").st_size) == (passwd.st_mtime_ns,
                                                                                    passwd.st_size)


# ---------------------------------------------------------------- 5. config errors and presets

def test_job_file_with_unknown_key_and_bad_preset_exits_2_naming_both(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_audio(tmp_path / "a.wav", 1.0, 44100, 1, "PCM_16")
    write_catalog(tmp_path / "catalog.csv", [{"file": "a.wav", "title": "A"}])
    (tmp_path / "job.toml").write_text('catalog = "catalog.csv"\npreset = "streeming"\noutput_dir = "out"\n'
                                       'ouput_dir = "typo"\n', encoding="utf-8")
    assert farm_main(["render", "job.toml", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "job.toml: unknown key 'ouput_dir' (did you mean 'output_dir'?)" in err, err
    assert "job.toml preset: unknown preset 'streeming' (did you mean 'streaming'?)" in err, err
    assert "nothing was rendered" in err and not (tmp_path / "out").exists()


def test_flag_form_needs_a_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_catalog(tmp_path / "catalog.csv", [{"file": "a.wav", "title": "A"}])
    assert farm_main(["render", "catalog.csv", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert "catalog.csv: rendering a catalog needs --preset" in err, err
    assert not (tmp_path / "out").exists()


def test_presets_lists_the_five_with_their_targets(monkeypatch, capsys):
    monkeypatch.delenv("FARM_PRESET_PATH", raising=False)
    assert farm_main(["presets"]) == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^([a-z0-9-]+): ", out, flags=re.M)
    assert listed == sorted(PRESETS)
    for block in re.split(r"\n(?=[a-z0-9-]+: )", out.strip()):
        p = PRESETS[block.split(":", 1)[0]]
        assert f"target {p['target']:g} LUFS +/-{p['tol']:g} LU, true peak <= {p['tp']:g} dBTP" in block, block


def test_presets_json_from_the_console_script(tmp_path):
    run = farm("presets", "--json", cwd=tmp_path, timeout=60)
    assert run.code == 0, run
    docs = [json.loads(line) for line in run.out.splitlines()]
    assert {d["name"]: (d["target_lufs"], d["tolerance_lu"], d["max_true_peak_dbtp"]) for d in docs} == \
        {n: (p["target"], p["tol"], p["tp"]) for n, p in PRESETS.items()}


# ---------------------------------------------------------------- 6. the demo

@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_masters_six_tracks(tmp_path):
    run = farm("demo", "-o", tmp_path / "demo", "--workers", "1", "--no-progress", cwd=tmp_path, timeout=850)
    assert run.code == 0, run
    out = tmp_path / "demo" / "masters"
    doc, rows = read_reports(out)
    check_reports_agree(doc, rows, 6)
    assert all(t["verdict"] == "pass" for t in doc["tracks"]) and doc["job"]["preset"] == "master"
    assert len(masters_in(out)) == 6 and all(n.endswith(".flac") for n in masters_in(out))
    assert counts(run) == (6, 0)
