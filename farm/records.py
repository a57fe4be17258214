"""The small records that travel between the client and the workers.

A task carries paths and parameters, never audio: the worker reads its input
and writes its output itself, and only a :class:`TrackResult` (measurements,
verdict, reason, timings) comes back. Everything here is plain data that
pickles cheaply and serialises to JSON for the report and the journal.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from kernels.params import ChainParams

# Metadata fields a catalog row may carry, in report order (normalised names).
TAG_FIELDS = (
    "title", "artist", "album", "album_artist", "date", "genre", "isrc",
    "track_number", "disc_number", "composer", "label", "copyright",
)

OUTPUT_FORMATS = ("flac", "wav", "aiff")
# Lossy delivery copies written beside the master (see farm.delivery): Ogg Vorbis, Ogg Opus, MP3.
COPY_FORMATS = ("ogg", "opus", "mp3")
STATUS_OK, STATUS_FAILED = "ok", "failed"


@dataclass(frozen=True)
class OutputSpec:
    """How masters are written: container, bit depth and rate (``None`` = keep
    the input's), and the file-name pattern (``str.format`` fields from
    :data:`TAG_FIELDS` plus ``row`` and ``stem``; sanitised so it can never
    leave the output folder).

    ``copies``: lossy delivery copies (names from :data:`COPY_FORMATS`)
    written beside the master with its stem, tags and loudness tags, each
    re-decoded and true-peak checked (:mod:`farm.delivery`);
    ``copy_quality`` 0.1 (smallest) .. 1.0 (best), libsndfile's VBR
    quality / bitrate knob (``compression_level = 1 - quality``).
    ``bwf``: a WAV (or RF64) master carries an EBU Tech 3285 v2 ``bext``
    chunk with its measured loudness (ignored for FLAC/AIFF masters)."""

    format: str = "flac"
    bit_depth: int | None = None
    sample_rate: int | None = None
    naming: str = "{track_number:02d} - {artist} - {title}"
    copies: tuple[str, ...] = ()
    copy_quality: float = 0.5
    bwf: bool = False


@dataclass(frozen=True)
class DeliverySpec:
    """What the delivered file must meet, checked on the re-decoded output."""

    target_lufs: float | None = -14.0
    tolerance_lu: float = 1.0
    max_true_peak_dbtp: float = -1.0


@dataclass(frozen=True)
class TrackSpec:
    """One validated catalog row."""

    row: int  # 1-based data row in the catalog (header not counted), for messages
    source: str  # absolute path of the input file
    tags: dict[str, str] = field(default_factory=dict)  # keys from TAG_FIELDS, normalised
    preset: str | None = None  # per-track preset override
    target_lufs: float | None = None  # per-track loudness override
    reference: str | None = None  # per-track reference master for matching (absolute path), see kernels.match


@dataclass(frozen=True)
class RenderTask:
    """Everything a worker needs to master one track."""

    track: TrackSpec
    chain: ChainParams
    output: OutputSpec
    delivery: DeliverySpec
    out_path: str  # final absolute path; written as a temporary name, then renamed
    preset: str = ""
    backend: str = "auto"  # "auto" | "cpu" | "gpu"
    ir_search_dirs: tuple[str, ...] = ()  # where relative impulse-response paths resolve
    # Host memory (MiB) the worker process may give its renders (job memory_budget_mb or
    # --memory-budget-mb); None: the worker's own default. See farm.budget.resolve_budget_mb.
    memory_budget_mb: int | None = None
    # Device memory (MiB) per GPU for its renders (job gpu_memory_budget_mb or
    # --gpu-memory-budget-mb); None: a share of the device's memory. See farm.budget.gpu_budget_mb.
    gpu_memory_budget_mb: int | None = None

    def user_file(self, path: str) -> str:
        """A file the job names (a reverb IR, a match reference): an absolute path as
        it is, a relative one in the first of ``ir_search_dirs`` that holds it."""
        if not os.path.isabs(path):
            for d in self.ir_search_dirs:
                if os.path.exists(os.path.join(d, path)):
                    return os.path.join(d, path)
        return path


class _Unit:
    """Several RenderTasks in one Dask task; the first speaks for the unit (the
    runner's task key, the GPU resource it asks for)."""

    tasks: tuple[RenderTask, ...]

    @property
    def track(self) -> TrackSpec:
        return self.tasks[0].track

    @property
    def backend(self) -> str:
        return self.tasks[0].backend


@dataclass(frozen=True)
class RenderGroup(_Unit):
    """One input mastered for several deliverables in one Dask task (``--preset a,b,c``):
    the input is decoded and measured once, and the shared stages run once for every
    member with the same shared settings; each member is then a RenderTask of its own
    (its own target stages, output, journal entry and result)."""

    tasks: tuple[RenderTask, ...]

    @property
    def preset(self) -> str:
        return ",".join(t.preset for t in self.tasks)


@dataclass(frozen=True)
class RenderBatch(_Unit):
    """Several short tracks with one chain in one Dask task on a GPU worker
    (:func:`farm.pipeline.batches`): each is decoded, measured, encoded,
    tagged and validated on its own and fails or passes alone, and those that
    fit together (rate, channels, chain) are mastered in one pass over the
    device (:func:`kernels.batch.master_batch`), so the device's fixed cost per
    track is paid once per batch."""

    tasks: tuple[RenderTask, ...]

    @property
    def preset(self) -> str:
        return self.tasks[0].preset


@dataclass
class TrackResult:
    """What comes back for one track: never an exception, always a record."""

    row: int
    source: str
    status: str  # STATUS_OK or STATUS_FAILED
    reason: str = ""  # why it failed (names the file); "" when ok
    output: str | None = None
    preset: str = ""
    input: dict[str, Any] = field(default_factory=dict)  # measurements of the decoded input
    result: dict[str, Any] = field(default_factory=dict)  # measurements of the re-decoded output
    gain_db: float | None = None  # static gain applied before the limiter
    max_gain_reduction_db: float | None = None  # deepest limiter gain reduction
    checks: dict[str, bool] = field(default_factory=dict)  # per delivery check: passed?
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    worker: str = ""
    backend: str = ""
    # "sha256:<hex>" of the master, taken by the worker just before its rename: the
    # client's journal records it instead of reading every master back (at scale the
    # client's hashing is the first bottleneck, see deploy/SCALING.md); also a
    # delivery checksum in report.json.
    output_hash: str | None = None
    # The report's plot series for this track (farm.plots: short-term loudness, spectrum,
    # gain reduction, true-peak markers of input and master), written by the worker:
    # a path relative to the master's folder ("report/data/<master name>.json": the output
    # folder, or its per-preset subfolder), None when there is none (the input could not be
    # decoded). Only the path travels, never the series.
    plot_data: str | None = None
    # One dict per lossy delivery copy (farm.delivery.CopyResult.to_dict): format, path,
    # status, reason, sample_rate, true_peak_dbtp / integrated_lufs of the re-decoded
    # copy, attempts, ceiling_dbtp (the lowered limiter ceiling, None if not re-limited).
    copies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrackResult":
        return cls(**d)
