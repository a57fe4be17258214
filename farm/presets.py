"""Delivery presets: TOML files in ``jobs/presets/`` that build a whole chain.

A preset is data. Its tables map one-to-one onto :mod:`kernels.params` and
:mod:`farm.records`::

    name = "streaming"                 # defaults to the file's stem
    description = "..."
    source = "where the numbers come from"

    [eq]          bands = [{kind = "high_pass", freq_hz = 28, slope_db_per_oct = 12}, ...], taps, bypass
    [match]       reference, max_gain_db, smoothing_octaves, min_freq_hz, max_freq_hz, loudness, bypass
    [multiband]   crossovers_hz = [120, 1000, 6000], detection, rms_ms, bypass,
                  bands = [{threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db}, ...] (one per band)
    [compressor]  threshold_db, ratio, knee_db, attack_ms, release_ms, makeup_db, detection, rms_ms, bypass
    [saturation]  drive_db, mix, oversample, bypass
    [reverb]      ir, decay_s, predelay_ms, wet_db, dry_db, tail, fade_ms, seed, bypass
    [loudness]    target_lufs, tolerance_lu, max_gain_reduction_db, max_passes, bypass
    [limiter]     ceiling_dbtp, lookahead_ms, release_ms, oversample, bypass
    [dither]      dither, noise_shaping, seed, bypass      (the bit depth is [output] bit_depth)
    [output]      format, bit_depth, sample_rate, naming   (omitted depth/rate: keep the input's)
                  copies = ["ogg", "opus", "mp3"], copy_quality (0.1..1), bwf (bext chunk in WAV masters)
    [delivery]    tolerance_lu, max_true_peak_dbtp         (the target is [loudness] target_lufs)

What an absent table means:

* ``[eq]``, ``[match]``, ``[multiband]``, ``[compressor]``, ``[saturation]``
  and ``[reverb]`` (colour) are bypassed unless the preset has them (a table
  that is present is on unless it says ``bypass = true``). Shared stages run
  EQ -> match -> multiband -> compressor -> saturation -> reverb.
* ``[match] reference`` (a reference master) resolves like the reverb's
  ``ir`` path (against the preset's folder) but is only opened by the render:
  a missing reference fails its tracks, not the job. With ``loudness = true``
  (default) the track's loudness target becomes the reference's integrated
  loudness, unless the catalog row sets ``target_lufs``.
* ``[loudness]``, ``[limiter]`` and ``[dither]`` (delivery) are on with their
  defaults: every delivery preset limits, and dither is what turns the float
  chain into clean 16/24-bit PCM (without it the encoder would truncate).
  ``[loudness]`` must state ``target_lufs`` (or ``bypass = true``).
* The limiter ceiling and the delivery's ``max_true_peak_dbtp`` default to
  each other (-1 dBTP if neither is given); a ceiling above the delivery
  maximum is refused, since every track would fail its check.
* The chain's landing tolerance (``[loudness] tolerance_lu``, default 0.1 LU)
  must be within the delivery tolerance and defaults to the smaller of the two.

Loudness targets are met by a static gain plus the true-peak limiter (see
:mod:`kernels.chain`), never by dynamic normalisation.

Names resolve in the folders of ``$FARM_PRESET_PATH`` (``os.pathsep``
separated, first wins) and then the built-in ``jobs/presets/``; anything with
a path separator or a ``.toml`` suffix is read as a file. A relative reverb
``ir`` path resolves against the preset's folder (overrides: against the
folder of the file the override came from).

Every problem (unknown table or key, wrong type, out-of-range value, unknown
preset) is a :class:`~farm.errors.ConfigError` naming the file, the table and
the key, and saying what is allowed; all problems of a file come at once.
"""
from __future__ import annotations

import copy
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from kernels.params import (REVERB_TYPES, ChainParams, CompressorBand, CompressorParams, DitherParams, EQBand,
                            EQParams, LimiterParams, LoudnessParams, MatchParams, MultibandParams, ReverbParams,
                            SaturationParams)

from . import naming
from .errors import ConfigError, Problems, did_you_mean, display_path
from . import audio
from .records import COPY_FORMATS, OUTPUT_FORMATS, DeliverySpec, OutputSpec



def _builtin_dir() -> Path:
    """The built-in presets: ``jobs/presets`` of a source checkout (and editable
    installs), else the copy a wheel installs under ``<prefix>/share/mastering-farm/presets``
    (pyproject ``[tool.setuptools.data-files]``), e.g. in the worker image."""
    checkout = Path(__file__).resolve().parent.parent / "jobs" / "presets"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "mastering-farm" / "presets"


BUILTIN_DIR = _builtin_dir()
PRESET_PATH_ENV = "FARM_PRESET_PATH"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SAMPLE_RATE_RANGE = (8000, 384000)

# key -> expected type, per table. "float" accepts TOML ints too; bools are never numbers.
_TOP = {"name": "str", "description": "str", "source": "str"}
_TABLES: dict[str, dict[str, str]] = {
    "eq": {"bands": "bands", "taps": "int", "bypass": "bool"},
    "match": {"reference": "str", "max_gain_db": "float", "smoothing_octaves": "float", "min_freq_hz": "float",
              "max_freq_hz": "float", "loudness": "bool", "bypass": "bool"},
    "multiband": {"crossovers_hz": "floats", "bands": "bands", "detection": "str", "rms_ms": "float",
                  "bypass": "bool"},
    "compressor": {"threshold_db": "float", "ratio": "float", "knee_db": "float", "attack_ms": "float",
                   "release_ms": "float", "makeup_db": "float", "detection": "str", "rms_ms": "float",
                   "bypass": "bool"},
    "saturation": {"drive_db": "float", "mix": "float", "oversample": "int", "bypass": "bool"},
    "reverb": {"ir": "str", "decay_s": "float", "predelay_ms": "float", "wet_db": "float", "dry_db": "float",
               "tail": "str", "fade_ms": "float", "seed": "int", "bypass": "bool"},
    "loudness": {"target_lufs": "float", "tolerance_lu": "float", "max_gain_reduction_db": "float",
                 "max_passes": "int", "bypass": "bool"},
    "limiter": {"ceiling_dbtp": "float", "lookahead_ms": "float", "release_ms": "float", "oversample": "int",
                "bypass": "bool"},
    "dither": {"dither": "bool", "noise_shaping": "str", "seed": "int", "bypass": "bool"},
    "output": {"format": "str", "bit_depth": "int", "sample_rate": "int", "naming": "str", "copies": "strs",
               "copy_quality": "float", "bwf": "bool"},
    "delivery": {"tolerance_lu": "float", "max_true_peak_dbtp": "float"},
}
_BAND = {"kind": "str", "freq_hz": "float", "gain_db": "float", "q": "float", "slope_db_per_oct": "float"}
_COMP_BAND = {"threshold_db": "float", "ratio": "float", "knee_db": "float", "attack_ms": "float",
              "release_ms": "float", "makeup_db": "float"}
_COLOUR = ("eq", "match", "multiband", "compressor", "saturation", "reverb")  # bypassed unless present
_HINTS = {("dither", "bit_depth"): "set the bit depth with [output] bit_depth",
          ("delivery", "target_lufs"): "the delivery target is [loudness] target_lufs"}
_TYPE_WORDS = {"str": "text", "float": "a number", "int": "an integer", "bool": "true or false",
               "bands": "an array of band tables", "floats": "an array of numbers",
               "strs": "an array of text"}


@dataclass(frozen=True)
class Preset:
    """A validated preset: the chain, how to write, what the result must meet."""

    name: str
    description: str
    source: str
    chain: ChainParams
    output: OutputSpec
    delivery: DeliverySpec
    path: str | None = None  # the TOML file (None for a preset built in code)
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    where: str = field(default="", repr=False, compare=False, hash=False)  # for messages

    def with_overrides(self, overrides: Mapping[str, Any] | None, origin: str | None = None,
                       base_dir: str | None = None) -> "Preset":
        """A copy with ``overrides`` deep-merged into its tables and revalidated.

        ``{"loudness": {"target_lufs": -16}}`` changes one key; tables merge
        key by key, values (including the ``bands`` array) replace. ``origin``
        names where the overrides came from for messages (e.g.
        ``"job.toml [overrides]"``); relative reverb IR paths in them resolve
        against ``base_dir``.
        """
        if not overrides:
            return self
        origin = origin or f"overrides for preset {self.name!r}"
        problems = Problems()
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{origin}: must be a table of preset tables, got {type(overrides).__name__}")
        for key, value in overrides.items():
            if key in _TOP:
                problems.add(f"{origin}: {key!r} cannot be overridden; override tables: {', '.join(_TABLES)}")
            elif key not in _TABLES:
                problems.add(f"{origin}: unknown table [{key}]{did_you_mean(key, _TABLES)}; "
                             f"allowed: {', '.join(_TABLES)}")
            elif not isinstance(value, Mapping):
                problems.add(f"{origin}: {key!r} must be a table like {{{key} = {{...}}}}, "
                             f"got {type(value).__name__}")
            else:
                _check_table(problems, origin, key, value)
        problems.raise_if_any()
        merged = _merge(self.data, overrides)
        if base_dir is not None:
            ir = overrides.get("reverb", {}).get("ir")
            if isinstance(ir, str) and ir not in REVERB_TYPES and not os.path.isabs(ir):
                merged["reverb"]["ir"] = os.path.join(base_dir, os.path.expanduser(ir))
            ref = overrides.get("match", {}).get("reference")
            if isinstance(ref, str) and ref and not os.path.isabs(os.path.expanduser(ref)):
                merged["match"]["reference"] = os.path.join(base_dir, os.path.expanduser(ref))
        return _build(merged, where=f"{origin} (on preset {self.name!r} from {self.where})", path=self.path,
                      default_name=self.name, base_dir=os.path.dirname(self.path) if self.path else None)

    def with_target(self, target_lufs: float, origin: str | None = None) -> "Preset":
        """Shorthand for overriding ``[loudness] target_lufs`` (and with it the delivery target)."""
        if self.chain.loudness.bypass:
            raise ConfigError(f"{origin or 'target_lufs'}: preset {self.name!r} has loudness bypassed, so a "
                              "loudness target cannot apply; choose a preset with a [loudness] table")
        return self.with_overrides({"loudness": {"target_lufs": target_lufs}}, origin=origin)

    def summary(self) -> dict[str, Any]:
        """The facts `farm presets` shows, as plain values."""
        c, o, d = self.chain, self.output, self.delivery
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "target_lufs": d.target_lufs, "tolerance_lu": d.tolerance_lu,
            "max_true_peak_dbtp": d.max_true_peak_dbtp,
            "ceiling_dbtp": None if c.limiter.bypass else c.limiter.ceiling_dbtp,
            "stages": [s for s in ("eq", "match", "multiband", "compressor", "saturation", "reverb", "loudness",
                                   "limiter", "dither")
                       if not getattr(c, s).bypass],
            "format": o.format, "bit_depth": o.bit_depth, "sample_rate": o.sample_rate, "naming": o.naming,
            "path": self.path,
        }


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- finding presets

def search_dirs() -> list[Path]:
    """Where preset names resolve, first wins: $FARM_PRESET_PATH folders, then the built-ins."""
    extra = [Path(p) for p in os.environ.get(PRESET_PATH_ENV, "").split(os.pathsep) if p]
    return extra + [BUILTIN_DIR]


def available() -> dict[str, Path]:
    """Preset name -> file, for every preset a name can reach (sorted by name)."""
    found: dict[str, Path] = {}
    for d in search_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return dict(sorted(found.items()))


def preset_names() -> list[str]:
    """The names ``--preset`` accepts (for help texts and error messages)."""
    return list(available())


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or os.sep in name_or_path


def resolve(name_or_path: str | os.PathLike, base_dir: str | None = None, origin: str = "preset") -> Path:
    """The file a preset name or path refers to; ConfigError listing the presets if none.

    Paths (anything with a separator or ending ``.toml``) resolve against
    ``base_dir`` (the file that named them), names against :func:`search_dirs`.
    """
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or _is_path(s):
        p = Path(os.path.expanduser(s))
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        if not p.is_file():
            what = "is not a file" if p.exists() else "does not exist"
            raise ConfigError(f"{origin}: preset file {display_path(p)} {what}; "
                              f"built-in presets: {', '.join(preset_names())}")
        return p
    names = available()
    if s in names:
        return names[s]
    raise ConfigError(f"{origin}: unknown preset {s!r}{did_you_mean(s, names)}; available: "
                      f"{', '.join(names) or '(none found)'} (or a path to a .toml preset file)")


def load_preset(name_or_path: str | os.PathLike, base_dir: str | None = None, origin: str = "preset") -> Preset:
    """Load and validate a preset by name or path (see :func:`resolve`)."""
    return _load_file(str(resolve(name_or_path, base_dir, origin).resolve()))


@lru_cache(maxsize=64)
def _load_cached(path: str, content: bytes, cwd: str) -> Preset:
    # Keyed on the content (and the folder messages are relative to): an edited file is re-read.
    where = display_path(path)
    try:
        data = tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML ({e})") from None
    return _build(data, where=where, path=path, default_name=Path(path).stem, base_dir=os.path.dirname(path))


def _load_file(path: str) -> Preset:
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise ConfigError(f"{display_path(path)}: cannot read ({e.strerror or e})") from None
    return _load_cached(path, content, os.getcwd())


def list_presets() -> list[Preset]:
    """Every preset a name can reach, sorted by name (for `farm presets`).

    A broken preset file raises one ConfigError listing all broken files.
    """
    problems, out = Problems(), []
    for _name, path in available().items():
        try:
            out.append(_load_file(str(path.resolve())))
        except ConfigError as e:
            problems.extend(e)
    problems.raise_if_any()
    return out


# ---------------------------------------------------------------- validation

def _type_ok(kind: str, v: Any) -> bool:
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "bands":
        return isinstance(v, list)
    if kind == "floats":
        return isinstance(v, list) and all(_type_ok("float", e) for e in v)
    if kind == "strs":
        return isinstance(v, list) and all(isinstance(e, str) for e in v)
    raise AssertionError(kind)


def _check_keys(problems: Problems, where: str, table: str, given: Mapping[str, Any],
                schema: Mapping[str, str]) -> None:
    for key, value in given.items():
        if key not in schema:
            hint = _HINTS.get((table.split(".")[0], key))
            problems.add(f"{where} [{table}]: unknown key {key!r}{did_you_mean(key, schema)}; "
                         + (f"{hint}; " if hint else "") + f"allowed: {', '.join(schema)}")
        elif not _type_ok(schema[key], value):
            what = "a finite number" if schema[key] == "float" and isinstance(value, float) else \
                _TYPE_WORDS[schema[key]]
            problems.add(f"{where} [{table}] {key}: must be {what}, got {value!r}")


# The tables with a `bands` array: each band's schema and an example for the message.
_BAND_TABLES = {
    "eq": (_BAND, "{kind = \"bell\", freq_hz = 300, gain_db = -1.5, q = 1.0}"),
    "multiband": (_COMP_BAND, "{threshold_db = -24, ratio = 1.5, knee_db = 6, attack_ms = 20, release_ms = 200}"),
}


def _check_table(problems: Problems, where: str, table: str, value: Mapping[str, Any]) -> None:
    _check_keys(problems, where, table, value, _TABLES[table])
    if table in _BAND_TABLES and isinstance(value.get("bands"), list):
        schema, example = _BAND_TABLES[table]
        for i, band in enumerate(value["bands"], start=1):
            if not isinstance(band, Mapping):
                problems.add(f"{where} [{table}] bands[{i}]: must be a table like {example}")
                continue
            _check_keys(problems, where, f"{table}.bands[{i}]", band, schema)


def _params(problems: Problems, label: str, cls, kwargs: dict) -> Any:
    """``cls(**kwargs)``, or None with the ValueError of its ``__post_init__`` recorded under ``label``."""
    try:
        return cls(**kwargs)
    except ValueError as e:  # the message names the field and what is allowed
        problems.add(f"{label}: {e}")
    return None


def _build(data: Mapping[str, Any], *, where: str, path: str | None, default_name: str,
           base_dir: str | None) -> Preset:
    problems = Problems()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a preset must be a TOML document of tables")
    for key, value in data.items():
        if key in _TOP:
            if not isinstance(value, str):
                problems.add(f"{where}: {key!r} must be text, got {value!r}")
        elif key in _TABLES:
            if not isinstance(value, Mapping):
                problems.add(f"{where}: {key!r} must be a table [{key}], got {value!r}")
            else:
                _check_table(problems, where, key, value)
        else:
            problems.add(f"{where}: unknown key or table {key!r}{did_you_mean(key, [*_TOP, *_TABLES])}; "
                         f"allowed: {', '.join(_TOP)} and tables {', '.join(f'[{t}]' for t in _TABLES)}")
    problems.raise_if_any()  # shapes and types first: the rest relies on them

    name = data.get("name", default_name)
    if not NAME_RE.match(name):
        problems.add(f"{where}: name {name!r} must be lower-case letters, digits, '-' or '_'")
    t = {k: dict(data.get(k, {})) for k in _TABLES}

    # EQ and reverb: bypassed unless present.
    eq = t["eq"]
    bands = []
    for i, b in enumerate(eq.pop("bands", []), start=1):
        missing = [k for k in ("kind", "freq_hz") if k not in b]
        if missing:
            problems.add(f"{where} [eq] bands[{i}]: {' and '.join(map(repr, missing))} required, e.g. "
                         "{kind = \"bell\", freq_hz = 300, gain_db = -1.5, q = 1.0}")
            continue
        bands.append(_params(problems, f"{where} [eq] bands[{i}]", EQBand, dict(b)))
    eq_p = _params(problems, f"{where} [eq]", EQParams, {"bands": tuple(b for b in bands if b is not None),
                                                     "bypass": eq.pop("bypass", "eq" not in data), **eq})
    rv = t["reverb"]
    ir = rv.get("ir")
    if isinstance(ir, str) and ir and ir not in REVERB_TYPES:
        ir_path = os.path.expanduser(ir)
        if not os.path.isabs(ir_path) and base_dir is not None:
            ir_path = os.path.join(base_dir, ir_path)
        if not os.path.isfile(ir_path):
            problems.add(f"{where} [reverb] ir: {ir!r} is neither a built-in space ({', '.join(REVERB_TYPES)}) "
                         f"nor an existing impulse-response file ({display_path(ir_path)})")
        rv["ir"] = os.path.abspath(ir_path)
    rv_bypass = rv.pop("bypass", "reverb" not in data)
    rv_p = _params(problems, f"{where} [reverb]", ReverbParams, {"bypass": rv_bypass, **rv})

    # Reference match and dynamics: bypassed unless present.
    ma = t["match"]
    ref = ma.get("reference")
    if isinstance(ref, str) and ref:
        ref_path = os.path.expanduser(ref)
        if not os.path.isabs(ref_path) and base_dir is not None:
            ref_path = os.path.join(base_dir, ref_path)
        ma["reference"] = os.path.abspath(ref_path)  # opened by the render: a missing file fails its tracks
    elif "reference" in ma:
        problems.add(f"{where} [match] reference: must be a path to a reference audio file, got {ref!r}")
        ma.pop("reference")
    ma_bypass = ma.pop("bypass", "match" not in data)
    if not ma_bypass and "reference" not in ma:
        problems.add(f"{where} [match] reference: required (the reference master to match, e.g. "
                     "reference = \"refs/album-master.wav\"), or set bypass = true")
        ma_bypass = True
    ma_p = _params(problems, f"{where} [match]", MatchParams, {"bypass": ma_bypass, **ma})

    mb = t["multiband"]
    mb_bands = None
    if "bands" in mb:
        mb_bands = []
        for i, b in enumerate(mb.pop("bands"), start=1):
            mb_bands.append(_params(problems, f"{where} [multiband] bands[{i}]", CompressorBand, dict(b)))
    if mb_bands is not None and any(b is None for b in mb_bands):
        mb_p = None
    else:
        mb_kw = {"bypass": mb.pop("bypass", "multiband" not in data), **mb}
        if mb_bands is not None:
            mb_kw["bands"] = tuple(mb_bands)
        if "crossovers_hz" in mb_kw:
            mb_kw["crossovers_hz"] = tuple(mb_kw["crossovers_hz"])
        mb_p = _params(problems, f"{where} [multiband]", MultibandParams, mb_kw)
    co = t["compressor"]
    co_p = _params(problems, f"{where} [compressor]", CompressorParams,
                   {"bypass": co.pop("bypass", "compressor" not in data), **co})
    sa = t["saturation"]
    sa_p = _params(problems, f"{where} [saturation]", SaturationParams,
                   {"bypass": sa.pop("bypass", "saturation" not in data), **sa})

    # Delivery stages: on unless bypassed.
    lo, lim, dl = t["loudness"], t["limiter"], t["delivery"]
    lo_bypass = lo.get("bypass", False)
    if not lo_bypass and "target_lufs" not in lo:
        problems.add(f"{where} [loudness] target_lufs: required (the integrated loudness to deliver, e.g. -14), "
                     "or set bypass = true")
    if lo_bypass:
        lo.setdefault("target_lufs", None)
    d_tol = dl.get("tolerance_lu", DeliverySpec.tolerance_lu)
    if "tolerance_lu" in lo and lo["tolerance_lu"] > d_tol:
        problems.add(f"{where} [loudness] tolerance_lu: {lo['tolerance_lu']} LU is wider than the delivery "
                     f"tolerance ([delivery] tolerance_lu = {d_tol} LU); it must be at most that")
    lo.setdefault("tolerance_lu", max(0.01, min(LoudnessParams.tolerance_lu, d_tol)))
    lo_p = _params(problems, f"{where} [loudness]", LoudnessParams, lo)

    max_tp = dl.get("max_true_peak_dbtp", lim.get("ceiling_dbtp", LimiterParams.ceiling_dbtp))
    lim.setdefault("ceiling_dbtp", min(max_tp, 0.0))
    if not lim.get("bypass", False) and lim["ceiling_dbtp"] > max_tp:
        problems.add(f"{where} [limiter] ceiling_dbtp: {lim['ceiling_dbtp']} dBTP is above the delivery maximum "
                     f"([delivery] max_true_peak_dbtp = {max_tp} dBTP); every track would fail: set it at or below")
    lim_p = _params(problems, f"{where} [limiter]", LimiterParams, lim)
    di_p = _params(problems, f"{where} [dither]", DitherParams, t["dither"])

    out = t["output"]
    fmt = out.get("format", OutputSpec.format)
    if fmt not in OUTPUT_FORMATS:
        problems.add(f"{where} [output] format: {fmt!r} is not a format the farm writes; "
                     f"allowed: {', '.join(OUTPUT_FORMATS)}{did_you_mean(fmt, OUTPUT_FORMATS)}")
    bd = out.get("bit_depth")
    if bd is not None and bd not in (16, 24):
        problems.add(f"{where} [output] bit_depth: must be 16 or 24 (or omitted to keep the input's), got {bd!r}")
    sr = out.get("sample_rate")
    if sr is not None and not SAMPLE_RATE_RANGE[0] <= sr <= SAMPLE_RATE_RANGE[1]:
        problems.add(f"{where} [output] sample_rate: must be {SAMPLE_RATE_RANGE[0]} to {SAMPLE_RATE_RANGE[1]} Hz "
                     f"(or omitted to keep the input's), got {sr!r}")
    pattern = out.get("naming", OutputSpec.naming)
    try:
        naming.check_pattern(pattern)
    except ValueError as e:
        problems.add(f"{where} [output] naming: {e}")
    copies = tuple(out.get("copies", ()))
    for c in copies:
        if c not in COPY_FORMATS:
            problems.add(f"{where} [output] copies: {c!r} is not a delivery copy format; allowed: "
                         f"{', '.join(COPY_FORMATS)}{did_you_mean(c, COPY_FORMATS)}")
        elif (missing := audio.copy_encoder_missing(c)) is not None:  # asked of this libsndfile, up front
            problems.add(f"{where} [output] copies: {c!r} cannot be written: {missing}; remove it from copies")
    if len(set(copies)) != len(copies):
        problems.add(f"{where} [output] copies: each format once, got {list(copies)}")
    quality = out.get("copy_quality", OutputSpec.copy_quality)
    if not 0.1 <= quality <= 1.0:
        problems.add(f"{where} [output] copy_quality: must be between 0.1 (smallest files) and 1.0 (best), "
                     f"got {quality!r}")
    output = OutputSpec(format=fmt, bit_depth=bd, sample_rate=sr, naming=pattern, copies=copies,
                        copy_quality=float(quality), bwf=bool(out.get("bwf", False)))

    if d_tol is not None and not 0.01 <= d_tol <= 10.0:
        problems.add(f"{where} [delivery] tolerance_lu: must be between 0.01 and 10 LU, got {d_tol!r}")
    if not -30.0 <= max_tp <= 0.0:
        problems.add(f"{where} [delivery] max_true_peak_dbtp: must be between -30 and 0 dBTP, got {max_tp!r}")
    problems.raise_if_any()

    chain = ChainParams(eq=eq_p, reverb=rv_p, loudness=lo_p, limiter=lim_p, dither=di_p, multiband=mb_p,
                        compressor=co_p, saturation=sa_p, match=ma_p)
    target = None if lo_p.bypass else lo_p.target_lufs
    delivery = DeliverySpec(target_lufs=target, tolerance_lu=d_tol, max_true_peak_dbtp=max_tp)
    return Preset(name=name, description=data.get("description", ""), source=data.get("source", ""),
                  chain=chain, output=output, delivery=delivery, path=path,
                  data=copy.deepcopy(dict(data)), where=where)


def with_output(preset: Preset, output: Mapping[str, Any] | None, origin: str) -> Preset:
    """``preset`` with an ``[output]`` table (format, bit_depth, sample_rate, naming) merged in."""
    return preset.with_overrides({"output": dict(output)}, origin=origin) if output else preset


__all__ = ["BUILTIN_DIR", "PRESET_PATH_ENV", "Preset", "available", "list_presets", "load_preset",
           "preset_names", "resolve", "search_dirs", "with_output"]
