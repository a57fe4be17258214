"""Jobs: which catalog, which preset, where to write; turned into render tasks.

A job file (TOML; relative paths resolve against the job file's folder)::

    catalog = "example/catalog.csv"     # required: CSV or JSON catalog
    preset = "streaming"                # required: a preset name or a .toml path; several
                                        #   (["streaming", "ebu-r128"] or "streaming,ebu-r128"): one
                                        #   deliverable each, in a subfolder named after its preset
    output_dir = "masters"              # required: where masters, reports and the journal go
    backend = "auto"                    # "auto" | "cpu" | "gpu"
    scheduler = "tcp://10.0.0.5:8786"   # optional: an existing Dask scheduler
    memory_budget_mb = 8192             # optional: host memory (MiB) per worker process for its renders;
                                        #   a longer programme is rendered streamed (default: the worker's)
    gpu_memory_budget_mb = 40960        # optional: device memory (MiB) per GPU for its renders
                                        #   (default: 80% of the device's); longer programmes stream
    album_mode = true                   # optional: an album's tracks keep their loudness differences,
                                        #   its loudest track meets the target (farm.album)
    description = "..."                 # optional, free text

    [output]                            # optional: how this job writes files
    format = "wav"                      # flac | wav | aiff
    bit_depth = 24                      # 16 | 24 (omit: keep the input's)
    sample_rate = 48000                 # (omit: keep the input's)
    naming = "{track_number:02d} - {title}"

    [overrides]                         # optional: changes to the job's preset
    loudness = { target_lufs = -16.0 }
    limiter = { release_ms = 200.0 }

The flag form ``farm render catalog.csv --preset streaming -o out/`` builds
the same :class:`Job` with :func:`job_from_flags`.

How a track's settings are merged (later wins):

1. the job's preset, with the job's ``[overrides]``;
2. *or*, for a row whose ``preset`` column names another preset, that preset
   as it is: the job's ``[overrides]`` were written against the job's preset
   and are not applied to a different one;
3. the job's ``[output]`` table, on every track, whichever preset: format,
   depth, rate and naming are how *this job* writes its files;
4. the row's ``target_lufs`` (loudness target and delivery target).

Everything is validated when the job is loaded: the job file, the preset
and overrides, the whole catalog, every track's merged settings, and the
output names (a master may never overwrite an input file). All problems come
in one :class:`~farm.errors.ConfigError`. A missing or unreadable *audio*
file is not among them: that track fails alone at render time
(:meth:`Job.missing_sources` lists such rows up front).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from . import catalog as _catalog
from . import naming
from .budget import check_budget_mb
from .errors import ConfigError, Problems, did_you_mean, display_path
from .presets import Preset, load_preset, with_output
from .records import RenderTask, TrackSpec

BACKENDS = ("auto", "cpu", "gpu")
_JOB_KEYS = {"catalog": "str", "preset": "str", "output_dir": "str", "backend": "str", "scheduler": "str",
             "description": "str", "memory_budget_mb": "int", "gpu_memory_budget_mb": "int",
             "album_mode": "bool", "output": "table",
             "overrides": "table"}
_REQUIRED = ("catalog", "preset", "output_dir")


@dataclass(frozen=True)
class Job:
    """A validated job: every track with the settings it renders with."""

    catalog: str  # absolute path of the catalog file
    tracks: tuple[TrackSpec, ...]
    preset: Preset  # the job's preset with its [overrides] and [output] applied
    output_dir: str  # absolute
    backend: str = "auto"
    scheduler: str | None = None
    path: str | None = None  # the job file; None for the flag form
    output: Mapping[str, Any] = field(default_factory=dict)  # the job's [output] table (applies to every track)
    description: str = ""
    origin: str = field(default="command line", repr=False, compare=False)  # for messages
    # catalog rows set aside for their own metadata problems (keep_going=True): they fail alone
    rejected: tuple[_catalog.RejectedRow, ...] = ()
    memory_budget_mb: int | None = None  # MiB per worker process; None: each worker's default
    gpu_memory_budget_mb: int | None = None  # MiB per GPU; None: a share of each device's memory
    album_mode: bool = False  # tracks of an album keep their loudness differences (farm.album)
    # ``--preset a,b,c``: every track mastered for each of these (``preset`` is the first),
    # each deliverable into a subfolder named after its preset; () for one preset
    deliverables: tuple[Preset, ...] = ()

    @property
    def presets(self) -> tuple[Preset, ...]:
        """The presets every track is mastered for (one unless ``--preset a,b,c``)."""
        return self.deliverables or (self.preset,)

    def with_memory_budget(self, memory_budget_mb: int | None, origin: str = "--memory-budget-mb") -> "Job":
        """This job with another memory budget (``None`` keeps the job's); ConfigError naming
        ``origin`` for a value out of range."""
        return self._with_budget("memory_budget_mb", memory_budget_mb, origin)

    def with_gpu_memory_budget(self, mb: int | None, origin: str = "--gpu-memory-budget-mb") -> "Job":
        """This job with another per-GPU budget (``None`` keeps the job's)."""
        return self._with_budget("gpu_memory_budget_mb", mb, origin)

    def _with_budget(self, name: str, value: int | None, origin: str) -> "Job":
        if value is None:
            return self
        problems = Problems()
        checked = _check_budget(value, origin, problems)
        problems.raise_if_any()
        return dataclasses.replace(self, **{name: checked})

    def with_album_mode(self, album_mode: bool | None) -> "Job":
        """This job with album mode on or off (``None`` keeps the job's)."""
        return self if album_mode is None else dataclasses.replace(self, album_mode=bool(album_mode))

    def tasks(self) -> list[RenderTask]:
        """One :class:`~farm.records.RenderTask` per catalog row, in catalog order.

        Raises ConfigError listing every track whose merged settings are
        invalid (cannot happen for a Job made by :func:`load_job` or
        :func:`job_from_flags`, which call this to validate).
        """
        problems = Problems()
        cat_dir = os.path.dirname(self.catalog)
        cat_display = display_path(self.catalog)
        out_origin = f"{self.origin} [output]"
        by_preset: dict[str, Preset] = {}
        settled: list[tuple[TrackSpec, Preset]] = []
        for t in self.tracks:
            where = f"{cat_display} row {t.row}"
            try:
                if t.preset is None:
                    chosen = list(self.presets)
                else:
                    if t.preset not in by_preset:
                        base = load_preset(t.preset, base_dir=cat_dir, origin=f"{where}, field 'preset'")
                        by_preset[t.preset] = with_output(base, self.output, out_origin)
                    chosen = [by_preset[t.preset]]
                if t.target_lufs is not None:
                    chosen = [p.with_target(t.target_lufs, origin=f"{where}, field 'target_lufs'") for p in chosen]
            except ConfigError as e:
                problems.extend(e)
                continue
            settled.extend((t, p) for p in chosen)
        problems.raise_if_any()

        # several deliverables: one subfolder each, named after the preset
        folders = [os.path.join(self.output_dir, naming.sanitize(p.name)) if self.deliverables else self.output_dir
                   for _, p in settled]
        paths: list[str] = [""] * len(settled)
        for folder in dict.fromkeys(folders):
            idx = [i for i, f in enumerate(folders) if f == folder]
            for i, out in zip(idx, naming.assign_paths([(settled[i][0], settled[i][1].output) for i in idx],
                                                       folder)):
                paths[i] = out
        inputs = {os.path.normcase(os.path.realpath(t.source)): t.row for t in self.tracks}
        dirs = tuple(dict.fromkeys(d for d in (os.path.dirname(self.path) if self.path else None, cat_dir)
                                   if d))
        tasks = []
        for (t, p), out in zip(settled, paths):
            hit = inputs.get(os.path.normcase(os.path.realpath(out)))
            if hit is not None:
                problems.add(f"{cat_display} row {t.row}: its master {out} would overwrite the input of row {hit}; "
                             "write to an output folder that holds no input files")
                continue
            ir_dirs = tuple(dict.fromkeys(((os.path.dirname(p.path),) if p.path else ()) + dirs))
            tasks.append(RenderTask(track=t, chain=p.chain, output=p.output, delivery=p.delivery, out_path=out,
                                    preset=p.name, backend=self.backend, ir_search_dirs=ir_dirs,
                                    memory_budget_mb=self.memory_budget_mb,
                                    gpu_memory_budget_mb=self.gpu_memory_budget_mb))
        problems.raise_if_any()
        return tasks

    def titles(self) -> dict[int, str]:
        """Catalog row -> title, for the report's and the summary's title column."""
        return {t.row: t.tags.get("title", "") for t in self.tracks}

    def missing_sources(self) -> dict[int, str]:
        """Row -> reason for tracks whose audio file is missing or unreadable (they will fail alone)."""
        return _catalog.check_sources(self.tracks)


def _check_backend(value: Any, where: str, problems: Problems) -> str:
    if value not in BACKENDS:
        problems.add(f"{where} backend: {value!r} is not a backend; allowed: {', '.join(BACKENDS)}")
        return "auto"
    return value


def _check_budget(value: Any, where: str, problems: Problems) -> int | None:
    if value is None:
        return None
    try:
        return check_budget_mb(value, where)
    except ValueError as e:
        problems.add(str(e))
        return None


def _check_scheduler(value: Any, where: str, problems: Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        problems.add(f"{where} scheduler: {value!r} is not a scheduler address; write e.g. "
                     "'tcp://10.0.0.5:8786' (or leave it out for the embedded local cluster)")
        return None
    return value.strip()


def _assemble(*, catalog_path: str | None, preset_ref: str | None, output_dir: str | None, base_dir: str,
              origin: str,
              output: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None, backend: Any,
              scheduler: Any, path: str | None, description: str, require_files: bool,
              problems: Problems, keep_going: bool = False, memory_budget_mb: Any = None,
              album_mode: Any = False, gpu_memory_budget_mb: Any = None) -> Job:
    """Load preset and catalog, collecting their problems with the job's own; build and validate the Job."""
    preset = None
    deliverables: list[Preset] = []
    if preset_ref is not None:
        refs = [r.strip() for r in preset_ref.split(",")]
        if not all(refs):
            problems.add(f"{origin} preset: {preset_ref!r} has an empty name; list presets as 'a,b,c'")
        elif len(set(refs)) != len(refs):
            problems.add(f"{origin} preset: {preset_ref!r} names a preset twice")
        for ref in refs if all(refs) else ():
            try:
                p = load_preset(ref, base_dir=base_dir, origin=f"{origin} preset")
                p = p.with_overrides(overrides, origin=f"{origin} [overrides]", base_dir=base_dir)
                deliverables.append(with_output(p, output, f"{origin} [output]"))
            except ConfigError as e:
                problems.extend(e)
        names = [p.name for p in deliverables]
        if len(set(names)) != len(names):
            problems.add(f"{origin} preset: {preset_ref!r} gives two deliverables the same name "
                         f"({', '.join(names)}); each gets a subfolder named after its preset")
        preset = deliverables[0] if deliverables else None
    tracks: list[TrackSpec] = []
    rejected: list[_catalog.RejectedRow] | None = [] if keep_going else None
    if catalog_path is not None:
        try:
            tracks = _catalog.load_catalog(catalog_path, require_files=require_files, rejected=rejected)
        except ConfigError as e:
            problems.extend(e)
    backend = _check_backend(backend, origin, problems)
    scheduler = _check_scheduler(scheduler, origin, problems)
    where_budget = f"{origin} memory_budget_mb" if path else "--memory-budget-mb"
    memory_budget_mb = _check_budget(memory_budget_mb, where_budget, problems)
    gpu_memory_budget_mb = _check_budget(gpu_memory_budget_mb, f"{origin} gpu_memory_budget_mb" if path
                                         else "--gpu-memory-budget-mb", problems)
    out_dir = ""
    if output_dir is not None:
        out_dir = os.path.abspath(os.path.join(base_dir, os.path.expanduser(output_dir)))
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            problems.add(f"{origin} output_dir: {display_path(out_dir)} exists and is not a folder")
    problems.raise_if_any()
    assert preset is not None and catalog_path is not None
    job = Job(catalog=os.path.abspath(catalog_path), tracks=tuple(tracks), preset=preset, output_dir=out_dir,
              backend=backend, scheduler=scheduler, path=path, output=dict(output or {}),
              description=description, origin=origin, rejected=tuple(rejected or ()),
              memory_budget_mb=memory_budget_mb, album_mode=album_mode is True,
              gpu_memory_budget_mb=gpu_memory_budget_mb,
              deliverables=tuple(deliverables) if len(deliverables) > 1 else ())
    job.tasks()  # validates every track's merged settings and output name
    return job


def load_job(path: str | os.PathLike, *, require_files: bool = False, keep_going: bool = False) -> Job:
    """Read and validate a job file (TOML); every problem comes in one ConfigError.

    ``keep_going``: catalog rows with problems of their own go to
    :attr:`Job.rejected` (to fail alone) instead of into the ConfigError.
    """
    path = os.path.abspath(os.fspath(path))
    where = display_path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: job file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML ({e})") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read the job file ({e.strerror or e})") from None
    problems = Problems()
    if isinstance(data.get("preset"), list) and data["preset"] and all(isinstance(v, str) for v in data["preset"]):
        data["preset"] = ",".join(data["preset"])  # preset = ["streaming", "ebu-r128"]: one deliverable each
    for key, value in data.items():
        kind = _JOB_KEYS.get(key)
        if kind is None:
            problems.add(f"{where}: unknown key {key!r}{did_you_mean(key, _JOB_KEYS)}; allowed: "
                         f"{', '.join(k for k, v in _JOB_KEYS.items() if v != 'table')} and tables [output], "
                         "[overrides]")
        elif key == "output" and isinstance(value, str):
            problems.add(f"{where}: 'output' is the [output] table (format, bit_depth, sample_rate, naming); "
                         f"write the folder as output_dir = {value!r}")
        elif kind == "table" and not isinstance(value, Mapping):
            problems.add(f"{where}: {key!r} must be a table [{key}], got {value!r}")
        elif kind == "str" and not isinstance(value, str):
            problems.add(f"{where} {key}: must be text, got {value!r}")
        elif kind == "bool" and not isinstance(value, bool):
            problems.add(f"{where} {key}: must be true or false, got {value!r}")
    for key in _REQUIRED:
        if key not in data:
            problems.add(f"{where}: {key!r} is required ({_REQUIRED_HELP[key]})")

    def text(key: str) -> str | None:  # a value that is present and valid, else None (already reported)
        v = data.get(key)
        return v if isinstance(v, str) else None

    def table(key: str) -> Mapping[str, Any] | None:
        v = data.get(key)
        return v if isinstance(v, Mapping) else None

    base = os.path.dirname(path)
    cat = text("catalog")
    cat = None if cat is None else os.path.join(base, os.path.expanduser(cat))
    return _assemble(catalog_path=cat, preset_ref=text("preset"), output_dir=text("output_dir"), base_dir=base,
                     origin=where, output=table("output"), overrides=table("overrides"),
                     backend=text("backend") or "auto", scheduler=text("scheduler"), path=path,
                     description=text("description") or "", require_files=require_files, problems=problems,
                     keep_going=keep_going, memory_budget_mb=data.get("memory_budget_mb"),
                     album_mode=data.get("album_mode", False),
                     gpu_memory_budget_mb=data.get("gpu_memory_budget_mb"))


_REQUIRED_HELP = {
    "catalog": "the CSV or JSON catalog, relative to the job file",
    "preset": "a preset name such as 'streaming', or a .toml path",
    "output_dir": "the folder the masters are written to, relative to the job file",
}


def job_from_flags(catalog: str | os.PathLike, preset: str, output_dir: str | os.PathLike, *,
                   format: str | None = None, bit_depth: int | None = None, sample_rate: int | None = None,
                   naming: str | None = None, target_lufs: float | None = None,
                   overrides: Mapping[str, Any] | None = None, backend: str = "auto",
                   scheduler: str | None = None, require_files: bool = False, keep_going: bool = False,
                   memory_budget_mb: int | None = None, album_mode: bool = False) -> Job:
    """The :class:`Job` for ``farm render CATALOG --preset P -o DIR [...]``.

    Relative paths resolve against the working folder. ``format``,
    ``bit_depth``, ``sample_rate`` and ``naming`` form the job's ``[output]``
    table; ``target_lufs`` overrides the preset's loudness target;
    ``overrides`` are preset-table overrides as in a job's ``[overrides]``;
    ``memory_budget_mb`` as a job file's (``--memory-budget-mb``); ``album_mode``
    as a job file's (``--album-mode``, see :mod:`farm.album`).
    """
    output = {k: v for k, v in (("format", format), ("bit_depth", bit_depth), ("sample_rate", sample_rate),
                                ("naming", naming)) if v is not None}
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (overrides or {}).items()}
    if target_lufs is not None:
        lo = merged.setdefault("loudness", {})
        if isinstance(lo, dict):
            lo["target_lufs"] = target_lufs
    return _assemble(catalog_path=os.path.abspath(os.fspath(catalog)), preset_ref=preset,
                     output_dir=os.fspath(output_dir), base_dir=os.getcwd(), origin="command line",
                     output=output, overrides=merged, backend=backend, scheduler=scheduler, path=None,
                     description="", require_files=require_files, problems=Problems(), keep_going=keep_going,
                     memory_budget_mb=memory_budget_mb, album_mode=album_mode)
