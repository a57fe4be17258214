"""farm.render.render_track, end to end on real files.

Every test writes real audio with soundfile, builds its tasks the way the
farm does (a catalog CSV + a preset through :func:`farm.job.job_from_flags`),
renders, and then inspects what is on disk with readers that are not the
render's own: soundfile for the samples, pyloudnorm (DeMan filters) and
kernels.loudness for loudness, 4x and 16x oversampled true peak, mutagen
(farm.tags) and independently ffprobe / metaflac for tags and format.

Bad inputs must each fail alone, with a reason that names the file and says
what is wrong, and leave nothing behind: no master, no ``.partial`` file,
an older file at the output path untouched, the input byte-identical.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import pyloudnorm
import pytest
import scipy.signal
import soundfile as sf

from farm import synth
from farm.job import job_from_flags
from farm.plots import REPORT_DIR
from farm.records import STATUS_FAILED, STATUS_OK, RenderTask, TrackResult
from farm.render import render_track
from kernels import loudness as meter

FFPROBE = shutil.which("ffprobe")
METAFLAC = shutil.which("metaflac")

# Our meter aims the chain within 0.1 LU of the target; measured on the
# delivered file by two meters, the master must be within this.
LANDING_LU = 0.15

# A catalog row as a label writes it, and what the farm must normalise it to.
CATALOG_TAGS = {
    "title": "Señal Ω", "artist": "The Testers", "album": "Render Suite", "album_artist": "The Testers",
    "year": "2024", "genre": "Electronic", "isrc": "us-ab1-24-00007", "track_number": "03/12",
    "disc_number": "1", "composer": "Ana Müller", "label": "Farm Records", "copyright": "℗ 2024 Farm Records",
}
EXPECTED_TAGS = {
    "title": "Señal Ω", "artist": "The Testers", "album": "Render Suite", "album_artist": "The Testers",
    "date": "2024", "genre": "Electronic", "isrc": "USAB12400007", "track_number": "3/12",
    "disc_number": "1", "composer": "Ana Müller", "label": "Farm Records", "copyright": "℗ 2024 Farm Records",
}


# ---------------------------------------------------------------- helpers

def write_audio(path, x: np.ndarray, rate: int, subtype: str) -> str:
    """Write float (channels, samples) audio; the container comes from the extension."""
    path = str(path)
    sf.write(path, np.ascontiguousarray(x.T), rate, subtype=subtype)
    return path


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sha256(path: str) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


def write_catalog(folder, rows: list[dict]) -> str:
    path = os.path.join(str(folder), "catalog.csv")
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def tasks_for(folder, rows: list[dict], preset: str = "streaming", out: str = "out", **flags) -> list[RenderTask]:
    """Tasks for a catalog of ``rows`` in ``folder``, built as `farm render` builds them."""
    cat = write_catalog(folder, rows)
    return job_from_flags(cat, preset, os.path.join(str(folder), out), **flags).tasks()


def one_task(folder, filename: str, preset: str = "streaming", tags: dict | None = None, **flags) -> RenderTask:
    row = {"file": filename, **(tags if tags is not None else {"title": os.path.splitext(filename)[0]})}
    (task,) = tasks_for(folder, [row], preset, **flags)
    return task


def folder_listing(folder: str) -> list[str]:
    """Every name in ``folder`` (hidden ones included) but the report's folder (the
    plot data the worker writes beside the masters, farm.plots.REPORT_DIR: it has
    tests of its own in test_plots.py); [] if it does not exist."""
    return sorted(n for n in os.listdir(folder) if n != REPORT_DIR) if os.path.isdir(folder) else []


def read_master(path: str) -> tuple[np.ndarray, int]:
    data, rate = sf.read(path, dtype="float64", always_2d=True)
    return data.T, rate


def pyloudnorm_lufs(x: np.ndarray, rate: int) -> float:
    """pyloudnorm's integrated loudness (DeMan filters); a 5.1 file goes in
    without its LFE (channel 4 in WAV order), which BS.1770 leaves out and
    pyloudnorm, at most 5 channels L R C Ls Rs, cannot take."""
    if x.shape[0] == 6:
        x = x[[0, 1, 2, 4, 5]]
    assert x.shape[0] <= 5
    return pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(x.T)


def ffprobe(path: str) -> dict:
    cmd = [FFPROBE, "-v", "error", "-show_format", "-show_streams", "-print_format", "json", path]
    return json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8"))


def ffprobe_tags(doc: dict) -> dict[str, str]:
    found: dict[str, str] = {}
    for stream in doc.get("streams", []):
        found.update({k.lower(): v for k, v in stream.get("tags", {}).items()})
    found.update({k.lower(): v for k, v in doc.get("format", {}).get("tags", {}).items()})
    return found


def assert_failed_cleanly(task: RenderTask, r: TrackResult, *words: str) -> None:
    """A failed record naming the input and saying ``words``; nothing written, nothing left over."""
    assert r.status == STATUS_FAILED and not r.ok, r
    assert r.output is None
    assert task.track.source in r.reason, r.reason
    for w in words:
        assert w.lower() in r.reason.lower(), (w, r.reason)
    assert not os.path.exists(task.out_path)
    out_dir = os.path.dirname(task.out_path)
    assert folder_listing(out_dir) == []  # no master and no .partial temporary
    json.dumps(r.to_dict())


# ---------------------------------------------------------------- good tracks

@dataclass(frozen=True)
class Case:
    id: str
    ext: str  # input container
    subtype: str
    rate: int
    channels: int
    peak_dbfs: float  # input level: quiet mixes need gain (and limiting), hot ones less
    preset: str = "streaming"
    flags: dict = field(default_factory=dict)  # job_from_flags output options
    out_format: str = "flac"
    out_subtype: str = "PCM_24"
    out_rate: int | None = None  # None: the input's
    seconds: float = 4.0
    lossy: bool = False


GOOD = [
    Case("wav24-48k-stereo", "wav", "PCM_24", 48000, 2, -12.0),
    Case("flac16-44k-stereo", "flac", "PCM_16", 44100, 2, -1.0, out_subtype="PCM_16"),
    # apple-music asks for 24-bit whatever the input: 16 in, 24 out
    Case("aiff16-44k-mono-apple", "aiff", "PCM_16", 44100, 1, -6.0, preset="apple-music",
         flags={"format": "aiff"}, out_format="aiff"),
    Case("ogg-48k-stereo-to-wav", "ogg", "VORBIS", 48000, 2, -3.0, flags={"format": "wav"}, out_format="wav",
         lossy=True),
    Case("mp3-44k-stereo", "mp3", "MPEG_LAYER_III", 44100, 2, -9.0, lossy=True),
    Case("wav24-48k-5.1-ebu", "wav", "PCM_24", 48000, 6, -10.0, preset="ebu-r128", out_format="wav"),
    Case("float-wav-48k-mono", "wav", "FLOAT", 48000, 1, -2.0, flags={"format": "wav"}, out_format="wav"),
    # the job converts: 24-bit 44.1k in, 16-bit 48k out
    Case("flac24-44k-to-16bit-48k", "flac", "PCM_24", 44100, 2, -8.0,
         flags={"bit_depth": 16, "sample_rate": 48000}, out_subtype="PCM_16", out_rate=48000),
    # atsc-a85 fixes WAV 48 kHz 24-bit and a -2 dBTP ceiling: 16-bit 44.1k in
    Case("flac16-44k-atsc", "flac", "PCM_16", 44100, 2, -4.0, preset="atsc-a85", out_format="wav",
         out_rate=48000),
    # the master preset: linear-phase EQ and a plate (tail trimmed) before loudness
    Case("wav24-48k-master-to-aiff", "wav", "PCM_24", 48000, 2, -7.0, preset="master",
         flags={"format": "aiff"}, out_format="aiff"),
]


@dataclass
class Rendered:
    case: Case
    task: RenderTask
    result: TrackResult
    source_audio: np.ndarray  # the input as decoded (channels, samples), float64
    source_hash_before: str
    source_hash_after: str
    source_mtime_before: int
    source_mtime_after: int
    out_listing: list[str]


@pytest.fixture(scope="module", params=GOOD, ids=[c.id for c in GOOD])
def rendered(request, tmp_path_factory) -> Rendered:
    """One render per good case (shared by the tests below, which only read)."""
    c: Case = request.param
    folder = tmp_path_factory.mktemp(c.id)
    x = synth.music(c.seconds, c.rate, c.channels, seed=len(c.id), bpm=118.0, peak_dbfs=c.peak_dbfs)
    name = f"in.{c.ext}"
    src = write_audio(folder / name, x, c.rate, c.subtype)
    task = one_task(folder, name, c.preset, tags=CATALOG_TAGS, **c.flags)
    assert task.track.source == src
    h0, m0 = sha256(src), os.stat(src).st_mtime_ns
    result = render_track(task)
    src_audio, _ = read_master(src)
    return Rendered(c, task, result, src_audio, h0, sha256(src), m0, os.stat(src).st_mtime_ns,
                    folder_listing(os.path.dirname(task.out_path)))


def test_good_track_renders_ok_to_its_output_path(rendered):
    r, task = rendered.result, rendered.task
    assert r.status == STATUS_OK and r.ok, r.reason
    assert r.reason == ""
    assert r.output == task.out_path and os.path.isfile(task.out_path)
    assert task.out_path.endswith("." + rendered.case.out_format)
    assert os.path.basename(task.out_path) == f"03 - The Testers - Señal Ω.{rendered.case.out_format}"
    assert r.preset == rendered.case.preset and r.source == task.track.source and r.row == 1
    assert r.checks and all(r.checks.values()), r.checks
    assert {"loudness", "true_peak", "duration", "format", "tags"} <= set(r.checks)


def test_only_the_master_is_left_in_the_output_folder(rendered):
    # no .partial (or any other temporary) file survives a successful render
    assert rendered.out_listing == [os.path.basename(rendered.task.out_path)]


def test_input_is_byte_identical_after_the_render(rendered):
    assert rendered.source_hash_after == rendered.source_hash_before
    assert rendered.source_mtime_after == rendered.source_mtime_before


def test_format_depth_rate_and_length(rendered):
    c, path = rendered.case, rendered.task.out_path
    info = sf.info(path)
    assert info.format == {"flac": "FLAC", "wav": "WAV", "aiff": "AIFF"}[c.out_format]
    assert info.subtype == c.out_subtype
    out_rate = c.out_rate or c.rate
    assert info.samplerate == out_rate
    assert info.channels == c.channels
    n_in = rendered.source_audio.shape[1]  # decoded input frames (lossy: as the decoder gives them)
    if not c.lossy:
        assert n_in == round(c.seconds * c.rate)
    if out_rate == c.rate:
        assert info.frames == n_in
    else:  # same duration at the new rate, to the sample
        assert abs(info.frames - n_in * out_rate / c.rate) < 1.0
    res = rendered.result.result
    assert res["sample_rate"] == out_rate and res["channels"] == c.channels
    assert res["bit_depth"] == int(c.out_subtype[-2:]) and res["format"] == c.out_format
    assert res["duration_s"] == pytest.approx(info.frames / out_rate, abs=1e-3)


def test_samples_sit_on_the_pcm_grid(rendered):
    # dithered and quantized to the delivered depth: every sample is an integer number of LSBs
    x, _ = read_master(rendered.task.out_path)
    depth = int(rendered.case.out_subtype[-2:])
    scaled = x * 2.0 ** (depth - 1)
    np.testing.assert_array_equal(scaled, np.round(scaled))


def test_loudness_lands_on_the_target_by_two_meters(rendered):
    task, r = rendered.task, rendered.result
    target = task.delivery.target_lufs
    assert target == {"streaming": -14.0, "apple-music": -16.0, "ebu-r128": -23.0, "atsc-a85": -24.0,
                      "master": -14.0}[rendered.case.preset]
    x, rate = read_master(task.out_path)
    ours = meter.integrated_loudness(x, rate)
    theirs = pyloudnorm_lufs(x, rate)
    assert abs(ours - target) <= LANDING_LU, ours
    assert abs(theirs - target) <= LANDING_LU, theirs
    assert abs(ours - target) <= task.delivery.tolerance_lu
    # the record reports what is in the file
    assert r.result["integrated_lufs"] == pytest.approx(ours, abs=0.006)
    assert r.input["integrated_lufs"] == pytest.approx(meter.integrated_loudness(rendered.source_audio,
                                                                                 rendered.case.rate), abs=0.05)


def test_true_peak_is_under_the_ceiling_at_4x_and_16x(rendered):
    task = rendered.task
    x, _ = read_master(task.out_path)
    ceiling = task.delivery.max_true_peak_dbtp
    assert ceiling == task.chain.limiter.ceiling_dbtp == (-2.0 if rendered.case.preset == "atsc-a85" else -1.0)
    tp4, tp16 = meter.true_peak_dbtp(x, 4), meter.true_peak_dbtp(x, 16)
    assert tp4 <= ceiling and tp16 <= ceiling, (tp4, tp16)
    assert rendered.result.result["true_peak_dbtp"] == pytest.approx(tp4, abs=0.006)


def test_the_master_is_the_track_with_its_channels_in_order(rendered):
    """Not just any audio at the right level: each output channel follows its own input channel."""
    c = rendered.case
    y, rate = read_master(rendered.task.out_path)
    x = rendered.source_audio
    if rate != c.rate:  # resample the input independently of the farm
        g = math.gcd(rate, c.rate)
        x = scipy.signal.resample_poly(x, rate // g, c.rate // g, axis=-1)
    n = min(x.shape[1], y.shape[1])
    corr = np.corrcoef(np.concatenate([y[:, :n], x[:, :n]]))[: c.channels, c.channels:]
    floor = 0.9 if c.preset == "master" or c.peak_dbfs <= -10 else 0.95  # EQ + plate, or deep limiting
    for ch in range(c.channels):
        assert corr[ch, ch] > floor, corr
        assert int(np.argmax(corr[ch])) == ch, corr


def test_tags_read_back_with_mutagen(rendered):
    from farm import tags

    path = rendered.task.out_path
    assert tags.read_tags(path) == EXPECTED_TAGS
    loud = tags.read_loudness(path)
    x, rate = read_master(path)
    assert float(loud["FARM_INTEGRATED_LUFS"]) == pytest.approx(meter.integrated_loudness(x, rate), abs=0.11)
    assert float(loud["FARM_TRUE_PEAK_DBTP"]) <= rendered.task.delivery.max_true_peak_dbtp
    gain = float(loud["REPLAYGAIN_TRACK_GAIN"].removesuffix(" dB"))
    assert gain == pytest.approx(-18.0 - float(loud["FARM_INTEGRATED_LUFS"]), abs=0.011)


def test_ffprobe_reads_the_tags_and_format(rendered):
    if FFPROBE is None:
        pytest.skip("ffprobe not installed")
    c, path = rendered.case, rendered.task.out_path
    doc = ffprobe(path)
    found = ffprobe_tags(doc)
    common = {"title": "Señal Ω", "artist": "The Testers", "album": "Render Suite", "album_artist": "The Testers",
              "date": "2024", "genre": "Electronic", "composer": "Ana Müller", "copyright": "℗ 2024 Farm Records"}
    if c.out_format == "flac":  # Vorbis comments
        expected = {**common, "isrc": "USAB12400007", "track": "3", "tracktotal": "12", "disc": "1",
                    "label": "Farm Records"}
    else:  # ID3v2.4 in a WAV 'id3 ' / AIFF 'ID3 ' chunk
        expected = {**common, "tsrc": "USAB12400007", "track": "3/12", "disc": "1", "publisher": "Farm Records"}
    assert {k: found.get(k) for k in expected} == expected
    (stream,) = doc["streams"]
    assert int(stream["sample_rate"]) == (c.out_rate or c.rate)
    assert stream["channels"] == c.channels
    bits = int(stream.get("bits_per_raw_sample") or 0) or int(stream.get("bits_per_sample") or 0)
    assert bits == int(c.out_subtype[-2:])
    assert float(doc["format"]["duration"]) == pytest.approx(rendered.result.result["duration_s"], abs=2e-3)


def test_metaflac_reads_the_vorbis_comments_and_streaminfo(rendered):
    c, path = rendered.case, rendered.task.out_path
    if c.out_format != "flac":
        pytest.skip("not a FLAC master")
    if METAFLAC is None:
        pytest.skip("metaflac not installed")
    out = subprocess.run([METAFLAC, "--export-tags-to=-", path], capture_output=True, check=True).stdout
    lines = set(out.decode("utf-8").splitlines())
    assert {"TITLE=Señal Ω", "ARTIST=The Testers", "ALBUM=Render Suite", "ALBUMARTIST=The Testers",
            "DATE=2024", "ISRC=USAB12400007", "TRACKNUMBER=3", "TRACKTOTAL=12", "DISCNUMBER=1",
            "LABEL=Farm Records", "ORGANIZATION=Farm Records", "COMPOSER=Ana Müller"} <= lines
    assert any(line.startswith("REPLAYGAIN_TRACK_GAIN=") for line in lines)
    info = subprocess.run([METAFLAC, "--show-sample-rate", "--show-channels", "--show-bps", "--show-total-samples",
                           path], capture_output=True, check=True, text=True).stdout.split()
    assert [int(v) for v in info] == [c.out_rate or c.rate, c.channels, int(c.out_subtype[-2:]),
                                      sf.info(path).frames]


def test_result_round_trips_through_dict_and_json(rendered):
    assert_plain_json(rendered.result)


def assert_plain_json(r: TrackResult) -> None:
    d = r.to_dict()

    def walk(v, where="result"):  # json.dumps alone would let np.float64 (a float subclass) through
        assert type(v) in (dict, list, str, int, float, bool, type(None)), (where, type(v))
        if isinstance(v, dict):
            for k, item in v.items():
                assert type(k) is str, (where, k)
                walk(item, f"{where}.{k}")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, f"{where}[{i}]")

    walk(d)
    assert TrackResult.from_dict(d) == r
    back = TrackResult.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert back == r and back.to_dict() == d and back.ok == r.ok


# ---------------------------------------------------------------- per-track target

def test_catalog_target_lufs_overrides_the_preset_target(tmp_path):
    write_audio(tmp_path / "a.wav", synth.music(3.0, 48000, 2, seed=3, peak_dbfs=-3.0), 48000, "PCM_24")
    (task,) = tasks_for(tmp_path, [{"file": "a.wav", "title": "A", "target_lufs": "-18.5"}], "streaming")
    r = render_track(task)
    assert r.ok, r.reason
    x, rate = read_master(task.out_path)
    assert abs(meter.integrated_loudness(x, rate) + 18.5) <= LANDING_LU
    assert abs(pyloudnorm_lufs(x, rate) + 18.5) <= LANDING_LU


# ---------------------------------------------------------------- bad inputs

def _music(seconds=3.0, rate=48000, channels=2, seed=7):
    return synth.music(seconds, rate, channels, seed=seed, peak_dbfs=-3.0)


def _missing(folder):
    return "missing.wav"


def _random_bytes(folder):
    (folder / "random.wav").write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    return "random.wav"


def _truncated_wav(folder):
    p = folder / "cut.wav"
    write_audio(p, _music(), 48000, "PCM_24")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "cut.wav"


def _truncated_flac(folder):
    p = folder / "cut.flac"
    write_audio(p, _music(), 48000, "PCM_16")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "cut.flac"


def _empty(folder):
    (folder / "empty.wav").write_bytes(b"")
    return "empty.wav"


def _silence(folder):
    write_audio(folder / "silence.wav", np.zeros((2, 3 * 48000)), 48000, "PCM_24")
    return "silence.wav"


def _near_silence(folder):
    # music 75 dB down: about -89 LUFS, every block under the -70 LUFS absolute gate (but not digital zero)
    write_audio(folder / "hiss.wav", _music() * 10 ** (-75 / 20), 48000, "FLOAT")
    return "hiss.wav"


def _too_short(folder):
    write_audio(folder / "blip.flac", _music(0.3), 48000, "PCM_24")
    return "blip.flac"


def _nan(folder):
    x = _music()
    x[1, 5000:5010] = np.nan
    write_audio(folder / "nan.wav", x, 48000, "FLOAT")
    return "nan.wav"


def _ten_channels(folder):
    write_audio(folder / "ten.wav", _music(2.0, channels=10), 48000, "PCM_24")
    return "ten.wav"


BAD = {
    "missing": (_missing, ["no such file"]),
    "random-bytes": (_random_bytes, ["cannot decode"]),
    "truncated-wav": (_truncated_wav, ["truncated", "144000 frames"]),
    "truncated-flac": (_truncated_flac, ["cannot decode", "truncated"]),
    "empty": (_empty, ["empty", "0 bytes"]),
    "digital-silence": (_silence, ["silent", "-70 LUFS"]),
    "near-silence": (_near_silence, ["silent", "-70 LUFS"]),
    "too-short": (_too_short, ["300 ms", "400 ms"]),
    "nan": (_nan, ["NaN"]),
    "ten-channels": (_ten_channels, ["10 channels"]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_fails_alone_and_writes_nothing(tmp_path, kind):
    make, words = BAD[kind]
    name = make(tmp_path)
    task = one_task(tmp_path, name)
    src = task.track.source
    h0 = sha256(src) if os.path.exists(src) else None
    r = render_track(task)
    assert_failed_cleanly(task, r, *words)
    assert "internal error" not in r.reason
    assert (sha256(src) if os.path.exists(src) else None) == h0
    assert_plain_json(r)


def test_one_bad_track_does_not_stop_the_others(tmp_path):
    write_audio(tmp_path / "good.flac", _music(seed=1), 48000, "PCM_24")
    _nan(tmp_path)
    write_audio(tmp_path / "good2.wav", _music(seed=2), 48000, "PCM_16")
    rows = [{"file": "good.flac", "title": "One"}, {"file": "nan.wav", "title": "Two"},
            {"file": "good2.wav", "title": "Three"}]
    results = [render_track(t) for t in tasks_for(tmp_path, rows)]
    assert [r.status for r in results] == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert folder_listing(str(tmp_path / "out")) == ["One.flac", "Three.flac"]


def test_unreachable_target_fails_with_the_chains_reason_and_writes_nothing(tmp_path):
    # a dynamic mix (crest ~15 dB) pushed to -5 LUFS needs far more than 1 dB of limiting
    write_audio(tmp_path / "dyn.wav", synth.music(4.0, 48000, 2, seed=5, peak_dbfs=-1.0), 48000, "PCM_24")
    task = one_task(tmp_path, "dyn.wav", target_lufs=-5.0,
                    overrides={"loudness": {"max_gain_reduction_db": 1.0}})
    assert task.chain.loudness.target_lufs == -5.0 and task.chain.loudness.max_gain_reduction_db == 1.0
    r = render_track(task)
    assert_failed_cleanly(task, r, "target -5.0 LUFS needs more than 1.0 dB of limiting", "no master written")
    assert r.max_gain_reduction_db is not None and r.max_gain_reduction_db > 1.0
    assert r.result["integrated_lufs"] < -5.0 - task.chain.loudness.tolerance_lu  # measured, then refused
    assert_plain_json(r)


# ---------------------------------------------------------------- existing outputs and inputs

def test_older_file_at_the_output_path_survives_failures_and_is_replaced_by_a_good_master(tmp_path):
    src = write_audio(tmp_path / "song.wav", np.zeros((2, 3 * 48000)), 48000, "PCM_24")  # silent: fails early
    task = one_task(tmp_path, "song.wav")
    os.makedirs(os.path.dirname(task.out_path))
    junk = b"an older master that must not be touched by a failed render" * 50
    with open(task.out_path, "wb") as f:
        f.write(junk)
    junk_stat = os.stat(task.out_path)

    r = render_track(task)
    assert not r.ok and "silent" in r.reason
    assert read_bytes(task.out_path) == junk
    assert os.stat(task.out_path).st_mtime_ns == junk_stat.st_mtime_ns
    assert folder_listing(os.path.dirname(task.out_path)) == [os.path.basename(task.out_path)]

    # a failure after the master was encoded and tagged (under its temporary name) leaves it too
    write_audio(src, synth.music(4.0, 48000, 2, seed=5, peak_dbfs=-1.0), 48000, "PCM_24")
    hot = one_task(tmp_path, "song.wav", target_lufs=-5.0, overrides={"loudness": {"max_gain_reduction_db": 1.0}})
    assert hot.out_path == task.out_path
    r = render_track(hot)
    assert not r.ok and "no master written" in r.reason and "encode" in r.timings
    assert read_bytes(task.out_path) == junk
    assert folder_listing(os.path.dirname(task.out_path)) == [os.path.basename(task.out_path)]

    # a good render replaces it with a complete, valid master
    r = render_track(task)
    assert r.ok, r.reason
    assert read_bytes(task.out_path) != junk
    x, rate = read_master(task.out_path)
    assert rate == 48000 and x.shape == (2, 4 * 48000)
    assert abs(meter.integrated_loudness(x, rate) + 14.0) <= LANDING_LU
    assert folder_listing(os.path.dirname(task.out_path)) == [os.path.basename(task.out_path)]


def test_a_task_whose_output_is_its_own_input_is_refused(tmp_path):
    # farm.job refuses such a job; a task built by hand must not destroy the input either
    src = write_audio(tmp_path / "take.flac", _music(), 48000, "PCM_24")
    task = dataclasses.replace(one_task(tmp_path, "take.flac"), out_path=src)
    h0 = sha256(src)
    r = render_track(task)
    assert not r.ok and src in r.reason and "input file itself" in r.reason
    assert sha256(src) == h0
    assert folder_listing(str(tmp_path)) == ["catalog.csv", "take.flac"]


def test_masters_written_beside_the_inputs_leave_them_alone(tmp_path):
    a = write_audio(tmp_path / "a.flac", _music(seed=1), 48000, "PCM_24")
    b = write_audio(tmp_path / "b.wav", _music(seed=2), 48000, "PCM_16")
    hashes = {p: sha256(p) for p in (a, b)}
    tasks = tasks_for(tmp_path, [{"file": "a.flac", "title": "a master"}, {"file": "b.wav", "title": "b master"}],
                      out=".")
    results = [render_track(t) for t in tasks]
    assert all(r.ok for r in results), [r.reason for r in results]
    assert {p: sha256(p) for p in (a, b)} == hashes
    assert folder_listing(str(tmp_path)) == ["a master.flac", "a.flac", "b master.flac", "b.wav", "catalog.csv"]


def test_an_unwritable_output_path_is_a_failed_record(tmp_path):
    write_audio(tmp_path / "a.wav", _music(), 48000, "PCM_24")
    (tmp_path / "blocker").write_bytes(b"a file where the output folder should be")
    task = one_task(tmp_path, "a.wav")
    task = dataclasses.replace(task, out_path=str(tmp_path / "blocker" / "a.flac"))
    r = render_track(task)
    assert not r.ok and r.output is None
    assert task.track.source in r.reason and task.out_path in r.reason and "cannot write" in r.reason
    assert "internal error" not in r.reason
    assert (tmp_path / "blocker").read_bytes() == b"a file where the output folder should be"


# ---------------------------------------------------------------- user impulse responses

def _ir(path, channels: int, rate: int = 44100, seconds: float = 0.6) -> str:
    n = int(seconds * rate)
    rng = np.random.default_rng(11)
    h = rng.standard_normal((channels, n)) * np.exp(-np.arange(n) / rate * 9.0) * 0.3
    return write_audio(path, h, rate, "FLOAT")


def _reverb(ir: str) -> dict:
    return {"reverb": {"ir": ir, "wet_db": -20.0, "bypass": False}}


def test_user_impulse_response_at_another_rate_renders(tmp_path):
    src = write_audio(tmp_path / "t.wav", _music(4.0, seed=2), 48000, "PCM_24")
    ir = _ir(tmp_path / "room-44k.wav", 2)
    wet = one_task(tmp_path, "t.wav", overrides=_reverb(ir))
    assert wet.chain.reverb.ir == ir and not wet.chain.reverb.bypass and wet.chain.reverb.wet_db == -20.0
    h_ir = sha256(ir)
    r = render_track(wet)
    assert r.ok, r.reason
    assert sha256(ir) == h_ir
    y, rate = read_master(wet.out_path)
    assert rate == 48000 and y.shape == (2, 4 * 48000)  # tail trimmed: same length
    assert abs(meter.integrated_loudness(y, rate) + 14.0) <= LANDING_LU
    assert meter.true_peak_dbtp(y, 16) <= -1.0

    # the reverb really is in it: the same track without it differs by about the wet level
    dry_task = one_task(tmp_path, "t.wav", out="dry")
    assert render_track(dry_task).ok
    d, _ = read_master(dry_task.out_path)
    rel_db = 10 * np.log10(np.mean((y - d) ** 2) / np.mean(d ** 2))
    assert -32.0 < rel_db < -10.0, rel_db
    assert os.path.exists(src)


def test_mono_impulse_response_fits_a_5_1_track(tmp_path):
    write_audio(tmp_path / "s.wav", _music(3.0, channels=6, seed=4), 48000, "PCM_24")
    ir = _ir(tmp_path / "mono-ir.wav", 1)
    task = one_task(tmp_path, "s.wav", overrides=_reverb(ir))
    r = render_track(task)
    assert r.ok, r.reason
    assert sf.info(task.out_path).channels == 6


def test_missing_impulse_response_fails_naming_the_ir(tmp_path):
    write_audio(tmp_path / "t.wav", _music(), 48000, "PCM_24")
    ir = _ir(tmp_path / "gone.wav", 2)
    task = one_task(tmp_path, "t.wav", overrides=_reverb(ir))  # the IR exists when the job is loaded ...
    os.remove(ir)  # ... and is gone when the worker renders
    r = render_track(task)
    assert_failed_cleanly(task, r, "impulse response", ir, "no such file")


@pytest.mark.parametrize("kind", ["three-channel", "silent"])
def test_unusable_impulse_response_fails_naming_the_ir(tmp_path, kind):
    write_audio(tmp_path / "t.wav", _music(), 48000, "PCM_24")
    if kind == "silent":
        ir = write_audio(tmp_path / "ir.wav", np.zeros((1, 4410)), 44100, "FLOAT")
        words = ["silent"]
    else:
        ir = _ir(tmp_path / "ir.wav", 3)
        words = ["does not fit a 2-channel track"]
    task = one_task(tmp_path, "t.wav", overrides=_reverb(ir))
    r = render_track(task)
    assert_failed_cleanly(task, r, "impulse response", ir, *words)
    assert "internal error" not in r.reason


def test_every_delivery_is_cross_checked_by_the_second_meter(rendered):
    """The render's own pyloudnorm cross-check ran (5.1 without its LFE) and agreed."""
    r = rendered.result
    assert r.checks.get("loudness_cross_check") is True, r.checks
    assert abs(r.result["pyloudnorm_lufs"] - r.result["integrated_lufs"]) <= 0.2


def test_the_result_carries_the_masters_checksum(rendered):
    """The worker hashes the master it publishes; the journal records that instead of re-reading it."""
    r = rendered.result
    assert r.output_hash == "sha256:" + sha256(r.output)
