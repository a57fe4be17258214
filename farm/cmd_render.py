"""``farm render``: a job file, or a catalog with flags, into validated masters.

::

    farm render JOB.toml [--scheduler ADDR] [--force]
    farm render CATALOG.csv --preset streaming -o masters/ [--format wav --bit-depth 24 ...]

Everything the user wrote (job, preset, overrides, catalog) is validated
before anything renders. Problems of the files themselves stop the run
(exit 2). A catalog row with problems of its own (a bad ISRC, an unknown
preset, ...) is listed up front and fails alone while the rest render,
unless ``--strict`` asks to stop on any problem. Exit status: 0 when every
row passed, 3 when any failed, 2 for a configuration that cannot run.
"""
from __future__ import annotations

import os
import sys

from .errors import ConfigError


def add_parser(subparsers, parents=()):
    p = subparsers.add_parser(
        "render", parents=list(parents),
        help="master a catalog: a job file, or a catalog with --preset and -o",
        description="Master every track of a catalog on a Dask cluster (embedded by default): EQ, reverb, "
                    "loudness target by static gain plus true-peak limiter, dither, encode, tag, then "
                    "re-decode and validate each master. Writes the masters, report.json, report.csv and a "
                    "journal into the output folder; a rerun renders only new, changed or failed tracks.")
    p.add_argument("source", metavar="JOB_OR_CATALOG",
                   help="a job file (.toml), or a catalog (.csv/.json) used with --preset and -o")
    p.add_argument("--preset", help="preset name (see `farm presets`) or .toml path (catalog form)")
    p.add_argument("-o", "--output-dir", help="folder for masters and reports (catalog form)")
    p.add_argument("--format", choices=("flac", "wav", "aiff"), help="output container (catalog form)")
    p.add_argument("--bit-depth", type=int, choices=(16, 24), help="output bit depth (default: the input's)")
    p.add_argument("--sample-rate", type=int, help="output sample rate in Hz (default: the input's)")
    p.add_argument("--naming", help="output file-name pattern, e.g. '{track_number:02d} - {title}'")
    p.add_argument("--target-lufs", type=float, help="override the preset's integrated loudness target (LUFS)")
    p.add_argument("--strict", action="store_true",
                   help="stop before rendering if any catalog row has a problem (default: those rows fail alone)")
    p.add_argument("--album-mode", action="store_true", default=None,
                   help="tracks sharing an album keep their loudness differences; the album's loudest track "
                        "meets the target (default: the job file's album_mode, else off)")
    add_run_options(p)
    p.set_defaults(handler=run)
    return p


def add_run_options(p) -> None:
    """Where and how a job runs: the options `farm render` and `farm demo` share
    (read by :func:`render_and_summarise`)."""
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786) instead of the embedded cluster")
    tls = p.add_argument_group("TLS", "for a tls:// --scheduler (mutual TLS; deploy/make-certs.sh makes the files). "
                               "Default: Dask's configuration, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
                               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")
    tls.add_argument("--tls-ca-file", metavar="PEM", help="the CA certificate that signed the scheduler's certificate")
    tls.add_argument("--tls-cert", metavar="PEM", help="this client's certificate (may hold the key too)")
    tls.add_argument("--tls-key", metavar="PEM", help="this client's private key")
    p.add_argument("--backend", choices=("auto", "cpu", "gpu"),
                   help="auto (GPU when CuPy sees one), cpu or gpu (default: the job's, else auto)")
    p.add_argument("--workers", type=int, metavar="N", help="embedded cluster: number of worker processes")
    p.add_argument("--threads-per-worker", type=int, metavar="N", help="embedded cluster: threads per worker")
    p.add_argument("--memory-budget-mb", type=int, metavar="MIB",
                   help="host memory each worker process may give its renders (its threads share it); a "
                        "programme whose whole-file render would not fit is rendered streamed, in blocks "
                        "(default: the job file's memory_budget_mb, else 60%% of each worker's Dask memory limit)")
    p.add_argument("--gpu-memory-budget-mb", type=int, metavar="MIB",
                   help="device memory per GPU for its renders; a programme whose whole-file chain would not "
                        "fit is streamed (default: the job file's gpu_memory_budget_mb, else 80%% of the device's)")
    p.add_argument("--batch-short", choices=("auto", "on", "off"), default="auto",
                   help="master tracks up to 60 s with one chain in batches of up to 8, one pass over the device "
                        "for all (auto: on GPU workers only, where it saves the device's fixed cost per track; "
                        "on CPU workers a batch costs more than it saves)")
    p.add_argument("--force", action="store_true", help="render every track again, ignoring the journal")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_CATALOG_ONLY = ("preset", "output_dir", "format", "bit_depth", "sample_rate", "naming", "target_lufs")


def load(args):
    """The Job the arguments describe (raises ConfigError listing every problem)."""
    from .job import job_from_flags, load_job

    keep_going = not args.strict
    if args.source.lower().endswith(".toml"):
        given = [f"--{k.replace('_', '-')}" for k in _CATALOG_ONLY if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{args.source}: a job file sets the preset, output folder and output format "
                              f"itself; {', '.join(given)} only go with a catalog (or edit the job file)")
        return load_job(args.source, keep_going=keep_going)
    missing = [flag for flag, v in (("--preset", args.preset), ("-o/--output-dir", args.output_dir)) if not v]
    if missing:
        raise ConfigError(f"{args.source}: rendering a catalog needs {' and '.join(missing)} "
                          "(or pass a job file ending in .toml)")
    return job_from_flags(args.source, args.preset, args.output_dir, format=args.format, bit_depth=args.bit_depth,
                          sample_rate=args.sample_rate, naming=args.naming, target_lufs=args.target_lufs,
                          keep_going=keep_going)


def run(args, stdout=None, stderr=None) -> int:
    from .cli import ExitStatus

    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        job = load(args)
    except ConfigError as e:
        print(f"farm render: {e}", file=err)
        print("farm render: nothing was rendered; fix the above and run again", file=err)
        return ExitStatus.USAGE
    return render_and_summarise(job, args, out, err)


def tls_security(args, scheduler: str | None):
    """The client's ``distributed.security.Security`` from --tls-ca-file/--tls-cert/--tls-key,
    or ``None`` (Dask's own TLS configuration) when none of them is given."""
    ca, cert, key = args.tls_ca_file, args.tls_cert, args.tls_key
    if not (ca or cert or key):
        return None
    if not scheduler:
        raise ConfigError("--tls-ca-file/--tls-cert/--tls-key are for a tls:// --scheduler; the embedded "
                          "cluster listens on 127.0.0.1 only")
    if not scheduler.startswith("tls://"):
        raise ConfigError(f"--tls-ca-file/--tls-cert/--tls-key were given but the scheduler {scheduler} is not "
                          "a tls:// address")
    missing = [flag for flag, v in (("--tls-ca-file", ca), ("--tls-cert", cert)) if not v]
    if missing:
        raise ConfigError(f"TLS needs {' and '.join(missing)} too (and --tls-key unless the certificate file "
                          "holds the key)")
    unreadable = [p for p in (ca, cert, key) if p and not os.access(p, os.R_OK)]
    if unreadable:
        raise ConfigError(f"cannot read {', '.join(unreadable)}")
    from distributed.security import Security

    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def render_and_summarise(job, args, out, err) -> int:
    """Render ``job``, print problems up front and the summary table after; return the exit status."""
    from .catalog import check_sources
    from .cli import ExitStatus
    from .cluster import ClusterError
    from .pipeline import render_job
    from .report import summary_table

    try:  # the flags override the job file's memory_budget_mb and album_mode, as --backend does its backend
        job = job.with_memory_budget(getattr(args, "memory_budget_mb", None))
        job = job.with_album_mode(getattr(args, "album_mode", None))
        job = job.with_gpu_memory_budget(getattr(args, "gpu_memory_budget_mb", None))
    except ConfigError as e:
        print(f"farm render: {e}", file=err)
        return ExitStatus.USAGE
    for r in job.rejected:
        for line in r.problems:
            print(f"farm render: {line} (this row will not render)", file=err)
    for row, reason in sorted(check_sources(job.tracks).items()):
        print(f"farm render: row {row}: {reason} (this track will fail)", file=err)
    try:
        security = tls_security(args, args.scheduler or job.scheduler)
    except ConfigError as e:
        print(f"farm render: {e}", file=err)
        return ExitStatus.USAGE
    try:
        outcome = render_job(job, force=args.force, scheduler=args.scheduler, security=security,
                             backend=args.backend, n_workers=args.workers,
                             threads_per_worker=args.threads_per_worker, progress=not args.no_progress,
                             batch_short={"auto": None, "on": True, "off": False}[args.batch_short],
                             log=lambda line: print(f"farm render: {line}", file=err, flush=True))
    except ClusterError as e:
        print(f"farm render: {e}", file=err)
        return ExitStatus.USAGE
    print(summary_table(outcome.results, titles=job.titles()), file=out)
    took = f" in {outcome.wall_s:.1f} s" if outcome.rendered else ""
    rel = os.path.relpath(job.output_dir)
    print(f"masters and reports in {job.output_dir if rel.startswith('..') else rel}{took} "
          f"({outcome.rendered} rendered, {outcome.skipped} unchanged since the last run"
          + (f", {outcome.rejected} rows set aside" if outcome.rejected else "") + ")", file=out)
    return ExitStatus.SUCCESS if outcome.exit_code == 0 else ExitStatus.INPUT_ERROR
