"""Delivery extras: lossy copies checked as shipped, and the BWF ``bext`` chunk.

**Copies** (``[output] copies = ["ogg", "opus", "mp3"]``): once the master
is validated and under its final name, :func:`make_copies` writes each
lossy copy beside it with the same stem (``01 - Artist - Title.opus``). A
copy is encoded from the master's samples (read back from the published
file block by block, so a two-hour programme costs a few blocks of memory,
not the programme), at the rate the codec takes (:func:`farm.audio.copy_rate`:
Opus always 48 kHz, MP3 at most 48 kHz, converted with the farm's one
resampler, :class:`kernels.resample.ResampleStream`).

*Check the file you actually ship*: every copy is decoded again and
measured (BS.1770-4 loudness, 4x true peak, with
:class:`kernels.loudness.LoudnessMeter`, also block by block). Lossy codecs
drop and smear components, and the reconstructed waveform commonly peaks
higher than the master did: a master limited to -1 dBTP can decode at
-0.5 dBTP or over 0 dBTP at low bitrates. If the decoded copy is over the
delivery ceiling (``[delivery] max_true_peak_dbtp``), the copy (only the
copy) is re-limited from the master's samples with the limiter's ceiling
lowered by the overshoot plus :data:`MARGIN_DB` (cumulatively, per
attempt), encoded and measured again, up to :data:`MAX_ATTEMPTS` encodes.
A copy that still overshoots, or would need the ceiling lowered by more
than :data:`MAX_CEILING_DROP_DB`, fails with its reason; the master is
delivered either way. A copy is written to a temporary name and renamed
only when it passed and its tags read back.

The decoded copy's loudness is reported, not held to the master's
tolerance (a re-limited copy of a dense master is quieter by about the
ceiling's drop: that is the price of not clipping), and each copy is tagged
like the master (:func:`farm.tags.write_tags`) with the loudness *of the
decoded copy*, so players normalise what they actually play: ``REPLAYGAIN_TRACK_GAIN``/``_PEAK`` in Ogg
Vorbis and MP3 (ID3 TXXX), ``R128_TRACK_GAIN`` (RFC 7845, Q7.8 relative to
-23 LUFS) in Opus, plus the ``FARM_*`` measurements.

**BWF** (``[output] bwf = true``): :func:`add_bwf` puts an EBU Tech 3285
version 2 ``bext`` chunk with the delivered file's measured loudness into a
WAV or RF64 master before it is published, and reads it back as a check.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from dataclasses import dataclass, field
from typing import Any

from kernels.loudness import LoudnessMeter
from kernels.params import LimiterParams

from . import audio, tags
from .records import STATUS_FAILED, RenderTask, TrackResult

MAX_ATTEMPTS = 4  # encodes per copy: the plain one, then up to 3 re-limited ones
MARGIN_DB = 0.1  # below the measured overshoot, per re-limit (times the attempt number)
MAX_CEILING_DROP_DB = 3.0  # past this the copy would sound different from the master: fail it instead
COPY_BLOCK = 1 << 16  # frames per block when encoding and measuring copies
DURATION_SLACK_S = 0.005  # a copy may differ from the master's length by this much (codec framing)
ORIGINATOR = "mastering-farm"


@dataclass
class CopyResult:
    """One delivery copy, as the TrackResult's ``copies`` list holds it (:meth:`to_dict`)."""

    format: str
    path: str | None  # the final path; None when the copy failed
    status: str = "ok"
    reason: str = ""
    sample_rate: int | None = None
    channels: int | None = None
    quality: float | None = None
    integrated_lufs: float | None = None  # of the decoded copy
    true_peak_dbtp: float | None = None  # of the decoded copy (4x), the shipped attempt's
    loudness_range_lu: float | None = None
    attempts: int = 0
    ceiling_dbtp: float | None = None  # the lowered limiter ceiling of the shipped copy; None: not re-limited
    true_peaks_dbtp: list = field(default_factory=list)  # decoded true peak of every attempt
    bytes: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _r(v, nd=2):
    return None if v is None else round(float(v), nd)


def copy_path(master_path: str, fmt: str) -> str:
    """The copy's final path: the master's, with the copy format's extension."""
    return os.path.splitext(master_path)[0] + audio.copy_extension(fmt)


def _master_blocks(path: str, block: int):
    """A pass over the published master: float32 (channels, k) blocks (the PCM values exactly)."""
    return audio.BlockReader(path, block).blocks()


def _encode(tmp: str, master: str, fmt: str, rate: int, out_rate: int, channels: int, frames: int,
            quality: float, limiter: LimiterParams | None, block: int) -> None:
    """One attempt: the master's blocks -> (resample) -> (limit at ``limiter``) -> the copy encoder."""
    from kernels.limiter_stream import LimiterStream
    from kernels.resample import ResampleStream

    rs = ResampleStream(rate, out_rate, channels, frames) if out_rate != rate else None
    n = -(-frames * out_rate // rate) if rs else frames
    lim = LimiterStream(limiter, out_rate, channels, n) if limiter is not None else None
    with audio.CopyWriter(tmp, out_rate, channels, fmt, quality) as w:
        def out(y):
            if lim is not None:
                y = lim.push(y)
            w.write(y)

        for b in _master_blocks(master, block):
            out(rs.push(b) if rs else b)
        if rs is not None:
            out(rs.finish())
        if lim is not None:
            w.write(lim.finish())


def _measure(path: str, block: int):
    """(LoudnessStats, frames, rate, channels) of ``path`` decoded block by block."""
    r = audio.BlockReader(path, block)
    m = LoudnessMeter(r.sample_rate, r.channels)
    for b in r.blocks():
        m.push(b)
    return m.result(), r.frames_read, r.sample_rate, r.channels


def _base_limiter(task: RenderTask) -> LimiterParams:
    lim = task.chain.limiter
    return dataclasses.replace(lim, bypass=False) if lim.bypass else lim


def make_copy(task: RenderTask, master: str, fmt: str, rate: int, channels: int, frames: int,
              block: int = COPY_BLOCK) -> CopyResult:
    """Write, check and publish one copy of the published ``master`` (see the module)."""
    t0 = time.perf_counter()
    src, final = task.track.source, copy_path(master, fmt)
    quality = task.output.copy_quality
    ceiling = task.delivery.max_true_peak_dbtp
    res = CopyResult(format=fmt, path=None, quality=quality, channels=channels)

    def failed(why: str) -> CopyResult:
        res.status, res.reason, res.path = STATUS_FAILED, f"{src}: {fmt} copy {final}: {why}", None
        res.seconds = round(time.perf_counter() - t0, 4)
        return res

    missing = audio.copy_encoder_missing(fmt)  # the worker's libsndfile may not be the client's
    if missing is not None:
        return failed(missing)
    out_rate = audio.copy_rate(fmt, rate)
    res.sample_rate = out_rate
    base = _base_limiter(task)
    lim: LimiterParams | None = None  # the first encode is of the master as it is
    want = round(frames * out_rate / rate)
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            res.attempts = attempt
            with audio.atomic_output(final) as tmp:
                _encode(tmp, master, fmt, rate, out_rate, channels, frames, quality, lim, block)
                stats, got, got_rate, got_ch = _measure(tmp, block)
                tp = stats.true_peak_dbtp
                res.true_peaks_dbtp.append(_r(tp, 3))
                res.true_peak_dbtp, res.integrated_lufs = _r(tp), _r(stats.integrated_lufs)
                res.loudness_range_lu = _r(stats.loudness_range_lu)
                res.ceiling_dbtp = None if lim is None else _r(lim.ceiling_dbtp, 3)
                if tp is not None and tp > ceiling:
                    over = tp - ceiling
                    now = base.ceiling_dbtp if lim is None else lim.ceiling_dbtp
                    lowered = now - over - MARGIN_DB * attempt
                    if attempt == MAX_ATTEMPTS:
                        return failed(f"decodes at {tp:.2f} dBTP, over the {ceiling} dBTP ceiling after "
                                      f"{attempt} encodes (limiter ceiling lowered to {now:.2f} dBTP); "
                                      "raise copy_quality or leave this format out")
                    if base.ceiling_dbtp - lowered > MAX_CEILING_DROP_DB:
                        return failed(f"decodes at {tp:.2f} dBTP, over the {ceiling} dBTP ceiling; keeping it "
                                      f"under would take the limiter ceiling to {lowered:.2f} dBTP, more than "
                                      f"{MAX_CEILING_DROP_DB} dB under the master's: raise copy_quality")
                    lim = dataclasses.replace(base, ceiling_dbtp=max(-30.0, lowered))
                    continue  # the temporary copy is removed; encode again from the master
                problems = []
                if got_rate != out_rate or got_ch != channels:
                    problems.append(f"decodes as {got_ch} ch at {got_rate} Hz, expected {channels} ch at "
                                    f"{out_rate} Hz")
                if abs(got - want) > max(1, DURATION_SLACK_S * out_rate):
                    problems.append(f"decodes to {got} frames, expected {want}")
                # Loudness is reported (and tagged for players), not held to the master's tolerance:
                # a re-limited copy of a dense master is quieter by about the ceiling's drop.
                lufs = stats.integrated_lufs
                loud = {"integrated_lufs": lufs, "true_peak_dbtp": tp, "loudness_range_lu": stats.loudness_range_lu}
                tags.write_tags(tmp, task.track.tags, loudness=loud)
                back = tags.read_tags(tmp)
                missing_tags = [k for k, v in task.track.tags.items() if v and back.get(k) != v]
                if missing_tags:
                    problems.append(f"tags did not read back: {', '.join(missing_tags)}")
                if problems:
                    return failed("; ".join(problems) + " (not written)")
                res.bytes = os.path.getsize(tmp)
                audio.commit(tmp, final)
                res.path = final
                res.seconds = round(time.perf_counter() - t0, 4)
                return res
    except audio.AudioError as e:  # tags.TagError is one too
        return failed(str(e))
    except MemoryError:
        return failed("out of memory while encoding")
    except OSError as e:
        return failed(f"cannot write ({e})")
    raise AssertionError("unreachable")


def make_copies(task: RenderTask, result: TrackResult, timings: dict | None = None) -> TrackResult:
    """The preset's copies of a published master (``result.ok``); ``result`` with
    ``copies`` (one :class:`CopyResult` dict each) and ``checks["copy_<fmt>"]``.

    A copy that fails makes the track's result failed with the copy's reason
    (the master stays delivered: ``output`` is kept), so the run's exit status
    says a deliverable is missing and the next run renders the track again."""
    fmts = tuple(task.output.copies)
    if not fmts or not result.ok or not result.output:
        return result
    t = time.perf_counter()
    head = audio.BlockReader(result.output, COPY_BLOCK)
    block = max(COPY_BLOCK, min(1 << 20, int(timings.get("streamed_block_frames", 0)) if timings else 0))
    done = [make_copy(task, result.output, f, head.sample_rate, head.channels, head.frames, block) for f in fmts]
    checks = {**result.checks, **{f"copy_{c.format}": c.status == "ok" for c in done}}
    out = dataclasses.replace(result, copies=[c.to_dict() for c in done], checks=checks)
    if timings is not None:
        timings["copies"] = round(time.perf_counter() - t, 4)
        if "total" in timings:
            timings["total"] = round(timings["total"] + timings["copies"], 4)
    bad = [c for c in done if c.status != "ok"]
    if bad:
        why = "; ".join(c.reason.removeprefix(f"{task.track.source}: ") for c in bad)
        out = dataclasses.replace(out, status=STATUS_FAILED,
                                  reason=f"{task.track.source}: {why} (the master {result.output} was delivered)")
    return out


# ---------------------------------------------------------------- BWF bext

def _description(track_tags: dict) -> str:
    parts = [track_tags.get("artist"), track_tags.get("title")]
    return " - ".join(p for p in parts if p)


def _coding_history(after: dict) -> str:
    """EBU R 98 style: A=PCM,F=<rate>,W=<bits>,M=<mode>,T=<text>."""
    ch = after.get("channels")
    mode = {1: "mono", 2: "stereo"}.get(ch)
    fields = ["A=PCM", f"F={after.get('sample_rate')}", f"W={after.get('bit_depth')}"]
    if mode:
        fields.append(f"M={mode}")
    fields.append(f"T={ORIGINATOR}")
    return ",".join(fields) + "\r\n"


def add_bwf(task: RenderTask, tmp: str, after: dict, checks: dict, problems: list,
            now: dt.datetime | None = None) -> None:
    """For ``[output] bwf = true`` and a WAV master: write the ``bext`` chunk
    into the temporary master ``tmp`` with the loudness measured on the
    re-decoded master (``after``), read it back, and record ``checks["bwf"]``
    (a mismatch or a write error is a problem: the master is not published)."""
    if not task.output.bwf or task.output.format != "wav":
        return
    now = now or dt.datetime.now()
    try:
        tags.write_bext(tmp, after, description=_description(task.track.tags), originator=ORIGINATOR,
                        date=now.strftime("%Y-%m-%d"), time=now.strftime("%H:%M:%S"),
                        coding_history=_coding_history(after))
        back = tags.read_bext(tmp) or {}
    except tags.TagError as e:
        checks["bwf"] = False
        problems.append(str(e))
        return
    wrong = [name for key, name in tags.BEXT_LOUDNESS
             if after.get(key) is not None and back.get(name) != round(float(after[key]) * 100) / 100]
    checks["bwf"] = back.get("version") == tags.BEXT_VERSION and not wrong
    if not checks["bwf"]:
        problems.append(f"bext chunk did not read back: {', '.join(wrong) or 'version'}")


__all__ = ["CopyResult", "MAX_ATTEMPTS", "MARGIN_DB", "add_bwf", "copy_path", "make_copies", "make_copy"]
