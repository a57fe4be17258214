#!/usr/bin/env python3
"""The farm's workers as Slurm or PBS jobs, with dask-jobqueue.

::

    pip install dask-jobqueue                     # into the farm's virtualenv
    # 1. print the scheduler address, keep the cluster up; render from another shell:
    python deploy/hpc/jobqueue_cluster.py --system slurm --jobs 4 --queue gpu --account proj123
    farm render /shared/catalog.csv --preset streaming -o /shared/out --scheduler tcp://10.1.2.3:41234
    # 2. or render here, on the cluster it starts, and stop it afterwards:
    python deploy/hpc/jobqueue_cluster.py --system pbs --jobs 2 --render /shared/job.toml

Each batch job is one Dask worker with one GPU: ``--gres=gpu:1`` (Slurm) or
``ngpus=1`` in the select statement (PBS Pro) asks the batch system for it,
and ``--resources GPU=1`` makes the worker advertise it, so the farm's render
tasks go there. The scheduler runs in this process on the login/submit node
(``--interface`` picks the network the compute nodes reach it on). Inputs and
outputs must be on a filesystem every compute node mounts under the same path
(the farm reads and writes local paths; fsspec URLs such as ``s3://`` are not
supported yet). ``--cpu`` asks for CPU-only workers instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _jobqueue():
    try:
        import dask_jobqueue
    except ImportError:
        sys.exit("jobqueue_cluster.py: dask-jobqueue is not installed; install it into the farm's virtualenv "
                 "with `pip install dask-jobqueue` (the farm itself does not need it)")
    return dask_jobqueue


def make_cluster(args):
    """A SLURMCluster or PBSCluster of GPU (or CPU) workers, not yet scaled."""
    jq = _jobqueue()
    gpu = not args.cpu
    worker_args = ["--resources", "GPU=1"] if gpu else []
    # One worker process per job with `cores` threads (dask-jobqueue: threads = cores / processes),
    # so each thread's FFTs run single-threaded and the job's cores are not oversubscribed.
    from farm.cluster import WORKER_MALLOC_ENV  # glibc malloc tuned as on every farm worker

    env = ["export FARM_FFT_WORKERS=1"] + [f"export {k}={v}" for k, v in WORKER_MALLOC_ENV.items()]
    python = os.path.join(args.venv, "bin", "python") if args.venv else sys.executable
    common = dict(
        cores=args.cores,               # CPU cores reserved per job
        processes=1,                    # one worker process per job (= per GPU)
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        job_script_prologue=env,
        worker_extra_args=worker_args,
        python=python,              # the farm's virtualenv on the compute nodes (same path there)
    )
    if args.system == "slurm":
        extra = ["--gres=gpu:1"] if gpu else []
        cluster = jq.SLURMCluster(job_extra_directives=extra + list(args.directive), **common)
    else:
        # PBS Pro: the GPU goes into the select statement; Torque uses -l nodes=1:ppn=N:gpus=1.
        resource_spec = f"select=1:ncpus={args.cores}:mem={args.memory.replace(' ', '')}" + (":ngpus=1" if gpu else "")
        cluster = jq.PBSCluster(resource_spec=resource_spec, job_extra_directives=list(args.directive), **common)
    return cluster


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=("slurm", "pbs"), default="slurm")
    p.add_argument("--jobs", type=int, default=2, help="batch jobs = workers = GPUs (default 2)")
    p.add_argument("--cpu", action="store_true", help="CPU-only workers (no --gres, no GPU resource)")
    p.add_argument("--cores", type=int, default=4,
                   help="cores per job = worker threads = tracks in flight per GPU (default 4)")
    p.add_argument("--memory", default="32GB", help="memory per job (default 32GB)")
    p.add_argument("--walltime", default="04:00:00")
    p.add_argument("--queue", help="partition (Slurm) or queue (PBS)")
    p.add_argument("--account", help="account / project to charge")
    p.add_argument("--interface", help="network interface the compute nodes reach this node on, e.g. ib0")
    p.add_argument("--local-directory", default=os.environ.get("TMPDIR", "/tmp"),
                   help="worker scratch on the compute nodes")
    p.add_argument("--log-directory", default="dask-jobqueue-logs")
    p.add_argument("--venv", default=os.environ.get("VIRTUAL_ENV"),
                   help="the farm's virtualenv, at the same path on the compute nodes (default: this Python's)")
    p.add_argument("--directive", action="append", default=[],
                   help="extra #SBATCH/#PBS directive, repeatable (e.g. --directive=--constraint=h100)")
    p.add_argument("--render", metavar="JOB_OR_CATALOG",
                   help="render this job file (or catalog, with --preset and -o) on the cluster, then stop it")
    p.add_argument("--preset")
    p.add_argument("-o", "--output-dir")
    p.add_argument("--print-job-script", action="store_true", help="print the batch script and exit")
    p.add_argument("--wait-workers", type=int, default=1, help="workers to wait for before rendering (default 1)")
    args = p.parse_args(argv)

    with make_cluster(args) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        address = cluster.scheduler_address
        if not args.render:
            print(address, flush=True)
            print(f"render with: farm render ... --scheduler {address}\n"
                  f"dashboard: {cluster.dashboard_link}\nCtrl-C stops the cluster and cancels its jobs",
                  file=sys.stderr, flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0

        from distributed import Client

        from farm.cmd_render import load
        from farm.pipeline import render_job

        ns = argparse.Namespace(source=args.render, preset=args.preset, output_dir=args.output_dir, format=None,
                                bit_depth=None, sample_rate=None, naming=None, target_lufs=None, strict=False)
        job = load(ns)
        with Client(cluster) as client:
            client.wait_for_workers(args.wait_workers, timeout=3600)
        outcome = render_job(job, scheduler=address, log=lambda line: print(f"farm: {line}", file=sys.stderr))
        print(f"{outcome.rendered} rendered, {len(outcome.failed)} failed; reports in {job.output_dir}")
        return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
