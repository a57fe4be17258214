"""``farm presets``: the delivery presets a job can name, with their targets and sources."""
from __future__ import annotations

import json
import sys

from .errors import ConfigError


def add_parser(subparsers, parents=()):
    p = subparsers.add_parser(
        "presets", parents=list(parents), help="list the presets (loudness target, true-peak ceiling, source)",
        description="List every preset a job can name: the built-in ones in jobs/presets and any in "
                    "$FARM_PRESET_PATH, with loudness target, tolerance, true-peak ceiling, the chain's "
                    "active stages, and where the numbers come from.")
    p.add_argument("names", nargs="*", metavar="NAME", help="show only these presets")
    p.add_argument("--json", action="store_true", help="print one JSON object per preset")
    p.set_defaults(handler=run)
    return p


def _num(v, unit: str) -> str:
    return "-" if v is None else f"{v:g} {unit}"


def run(args, stdout=None, stderr=None) -> int:
    from .cli import ExitStatus
    from .presets import list_presets, load_preset

    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        presets = [load_preset(n) for n in args.names] if args.names else list_presets()
    except ConfigError as e:
        print(f"farm presets: {e}", file=err)
        return ExitStatus.USAGE
    for p in presets:
        s = p.summary()
        if args.json:
            print(json.dumps(s, allow_nan=False), file=out)
            continue
        print(f"{s['name']}: {s['description']}", file=out)
        tol = "" if s["target_lufs"] is None else f" +/-{s['tolerance_lu']:g} LU"
        print(f"    target {_num(s['target_lufs'], 'LUFS')}{tol}, true peak <= {s['max_true_peak_dbtp']:g} dBTP, "
              f"chain: {' -> '.join(s['stages']) or 'none'}; writes {s['format']}"
              f" {s['bit_depth'] or 'native'}-bit, {s['sample_rate'] or 'native'} Hz", file=out)
        print(f"    source: {s['source']}", file=out)
        if s["path"]:
            print(f"    file: {s['path']}", file=out)
    return ExitStatus.SUCCESS
