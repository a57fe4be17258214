#!/usr/bin/env bash
# launch.sh: start the farm's Dask scheduler or workers with the real dask CLIs.
#
#   launch.sh scheduler [--host 127.0.0.1] [--port 8786] [--dashboard-port 8787 | --no-dashboard]
#                       [--tls DIR] [--scheduler-file FILE] [-- EXTRA dask scheduler ARGS]
#   launch.sh workers ADDRESS [--gpus auto|N] [--device I] [--cpu N] [--nthreads T]
#                       [--host IP] [--name NAME] [--dask-cuda] [--tls DIR] [-- EXTRA dask worker ARGS]
#   launch.sh print ...  (either form: print the command(s) instead of running them)
#
# scheduler  binds to 127.0.0.1 (and its dashboard/health port to the same host)
#            unless --host says otherwise, e.g. --host 0.0.0.0 or the node's cluster IP.
# workers    ADDRESS is the scheduler: tcp://host:8786, or tls://host:8786 with --tls.
#   --device I   one GPU worker pinned to CUDA device I (what farm-worker@I.service runs)
#   --gpus auto  one GPU worker per visible GPU (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`);
#                CPU workers when there is none. --gpus N: the first N visible GPUs.
#   --dask-cuda  with GPUs: `dask cuda worker` (dask-cuda must be installed) instead of
#                one `dask worker` per GPU
#   --cpu N      N single-threaded CPU worker processes (one per core is right)
#   --nthreads T threads per GPU worker (default: min(4, cores per GPU)); CPU workers use 1
# Each GPU worker advertises the Dask resource GPU=1 and sees its own device as
# device 0 (CUDA_VISIBLE_DEVICES rotated, as dask-cuda does); FARM_FFT_WORKERS is
# set so that processes x threads x FFT threads stays near the core count, and the
# workers' glibc malloc is tuned as the embedded cluster's (farm/cluster.py
# WORKER_MALLOC_ENV: one arena, big arrays reused from the heap, ~30% faster chains).
#
# --tls DIR uses DIR/ca.pem and DIR/<role>.pem + DIR/<role>-key.pem (deploy/make-certs.sh).
# Environment: FARM_VENV (a virtualenv whose bin/dask is used; default: dask on PATH),
# FARM_TLS_DIR (default for --tls), FARM_SCHEDULER (default ADDRESS for workers).
#
# One scheduler or one worker command is exec'd, so a supervisor (systemd, a
# container runtime) sees the dask process itself. Only `workers` with several
# GPUs and without --dask-cuda starts several `dask worker` processes: then this
# script stays as their parent, forwards SIGTERM/SIGINT and exits when any exits.
# Needs bash >= 4.4 (mapfile, wait -n, empty arrays under set -u).
set -euo pipefail

prog=$(basename "$0")
die() { echo "$prog: $*" >&2; exit 2; }
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

if [[ -n "${FARM_VENV:-}" ]]; then
    DASK=${DASK:-$FARM_VENV/bin/dask}
    PYTHON=${PYTHON:-$FARM_VENV/bin/python}
else
    DASK=${DASK:-dask}
    PYTHON=${PYTHON:-python3}
fi

dry=0
if [[ "${1:-}" == print ]]; then dry=1; shift; fi
[[ $# -ge 1 ]] || usage
mode=$1; shift

run_exec() {  # run_exec ENV... -- CMD...: exec (or print) one command
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    if [[ $dry == 1 ]]; then
        printf '%s ' ${envs[@]+"${envs[@]}"} "$@"; echo; exit 0
    fi
    if [[ ${#envs[@]} -gt 0 ]]; then export "${envs[@]}"; fi
    exec "$@"
}

tls_args() {  # tls_args DIR ROLE
    local dir=$1 role=$2 f
    for f in ca.pem "$role.pem" "$role-key.pem"; do
        [[ -r "$dir/$f" ]] || die "--tls $dir: cannot read $dir/$f (make it with deploy/make-certs.sh $dir)"
    done
    printf '%s\n' --tls-ca-file "$dir/ca.pem" --tls-cert "$dir/$role.pem" --tls-key "$dir/$role-key.pem"
}

# = farm.cluster.WORKER_MALLOC_ENV (tests/test_deploy.py checks they agree); exported before the
# nanny spawns its worker, whose pre-spawn environment takes these over Dask's own default
malloc_env=(MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824)

# nproc honours OMP_NUM_THREADS (which Dask sets to 1 in its workers): count the CPUs this process may use
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN || echo 1)

case "$mode" in
scheduler)
    host=127.0.0.1 port=8786 dash_port=8787 dashboard=1 tls=${FARM_TLS_DIR:-} sched_file="" extra=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --host) host=${2:?--host needs a value}; shift 2 ;;
            --port) port=${2:?--port needs a value}; shift 2 ;;
            --dashboard-port) dash_port=${2:?--dashboard-port needs a value}; shift 2 ;;
            --no-dashboard) dashboard=0; shift ;;
            --tls) tls=${2:?--tls needs a directory}; shift 2 ;;
            --scheduler-file) sched_file=${2:?--scheduler-file needs a path}; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            -h|--help) usage ;;
            *) die "scheduler: unknown option $1 (pass dask's own options after --)" ;;
        esac
    done
    args=(scheduler --host "$host" --port "$port")
    # The HTTP server (dashboard, /health, /metrics) runs even with --no-dashboard:
    # bind it to the same host, never to every interface.
    args+=(--dashboard-address "$host:$dash_port")
    [[ $dashboard == 1 ]] || args+=(--no-dashboard)
    if [[ -n "$tls" ]]; then
        mapfile -t t < <(tls_args "$tls" scheduler)
        [[ ${#t[@]} -eq 6 ]] || exit 2
        args+=(--protocol tls "${t[@]}")
    fi
    [[ -z "$sched_file" ]] || args+=(--scheduler-file "$sched_file")
    run_exec -- "$DASK" "${args[@]}" ${extra[@]+"${extra[@]}"}
    ;;

workers)
    address=${FARM_SCHEDULER:-}
    if [[ $# -gt 0 && $1 != -* ]]; then address=$1; shift; fi
    [[ -n "$address" ]] || die "workers: give the scheduler ADDRESS (tcp://host:8786 or tls://host:8786) or set FARM_SCHEDULER"
    gpus=auto device="" cpu="" nthreads="" host="" name="" dask_cuda=0 tls=${FARM_TLS_DIR:-} extra=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --gpus) gpus=${2:?--gpus needs auto or a number}; shift 2 ;;
            --device) device=${2:?--device needs a CUDA device index}; shift 2 ;;
            --cpu) cpu=${2:?--cpu needs a number of workers}; shift 2 ;;
            --nthreads) nthreads=${2:?--nthreads needs a number}; shift 2 ;;
            --host) host=${2:?--host needs an address}; shift 2 ;;
            --name) name=${2:?--name needs a value}; shift 2 ;;
            --dask-cuda) dask_cuda=1; shift ;;
            --tls) tls=${2:?--tls needs a directory}; shift 2 ;;
            --) shift; extra=("$@"); break ;;
            -h|--help) usage ;;
            *) die "workers: unknown option $1 (pass dask's own options after --)" ;;
        esac
    done
    [[ $gpus == auto || $gpus =~ ^[0-9]+$ ]] || die "--gpus must be auto or a number, not $gpus"
    [[ -z "$cpu" || $cpu =~ ^[1-9][0-9]*$ ]] || die "--cpu must be a positive number, not $cpu"
    [[ -z "$nthreads" || $nthreads =~ ^[1-9][0-9]*$ ]] || die "--nthreads must be a positive number"
    [[ -z "$device" || $device =~ ^[0-9]+$ || $device =~ ^GPU- || $device =~ ^MIG- ]] \
        || die "--device must be a CUDA device index or UUID, not $device"

    common=()
    # --host also binds each worker's HTTP server (dashboard, /health), which would
    # otherwise listen on every interface.
    [[ -z "$host" ]] || common+=(--host "$host" --dashboard-address "$host:0")
    if [[ -n "$tls" ]]; then
        [[ $address == tls://* ]] || die "--tls needs a tls:// scheduler address, not $address"
        mapfile -t t < <(tls_args "$tls" worker)
        [[ ${#t[@]} -eq 6 ]] || exit 2
        common+=(--protocol tls "${t[@]}")
    elif [[ $address == tls://* ]]; then
        die "$address is a TLS scheduler: give --tls DIR (or FARM_TLS_DIR)"
    fi

    # The GPUs this worker set may use.
    visible=()
    if [[ -n "$device" ]]; then
        visible=("$device")
    elif [[ -z "$cpu" && $gpus != 0 ]]; then
        if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
            IFS=, read -r -a visible <<<"${CUDA_VISIBLE_DEVICES// /}"
        elif command -v nvidia-smi >/dev/null 2>&1; then
            n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
            for ((i = 0; i < n; i++)); do visible+=("$i"); done
        fi
        if [[ $gpus != auto ]]; then
            [[ ${#visible[@]} -ge $gpus ]] || die "--gpus $gpus: only ${#visible[@]} GPU(s) visible"
            visible=("${visible[@]:0:$gpus}")
        fi
    fi

    if [[ ${#visible[@]} -eq 0 ]]; then
        # CPU workers: one single-threaded process per core (tracks are independent).
        n=${cpu:-$cores}
        fft=$(( cores / n )); (( fft >= 1 )) || fft=1
        args=(worker "$address" --nworkers "$n" --nthreads 1 --memory-limit auto "${common[@]}")
        [[ -z "$name" ]] || args+=(--name "$name")
        run_exec "FARM_FFT_WORKERS=${FARM_FFT_WORKERS:-$fft}" "${malloc_env[@]}" -- "$DASK" "${args[@]}" \
            ${extra[@]+"${extra[@]}"}
    fi

    ngpu=${#visible[@]}
    if [[ -z "$nthreads" ]]; then
        nthreads=$(( cores / ngpu )); (( nthreads <= 4 )) || nthreads=4; (( nthreads >= 1 )) || nthreads=1
    fi
    fft=$(( cores / (ngpu * nthreads) )); (( fft >= 1 )) || fft=1
    all=$(IFS=,; echo "${visible[*]}")
    host_name=$(hostname -s 2>/dev/null || echo worker)

    if [[ $dask_cuda == 1 ]]; then
        "$PYTHON" -c 'import dask_cuda' 2>/dev/null \
            || die "--dask-cuda: dask-cuda is not installed in $PYTHON (pip install dask-cuda), or leave out --dask-cuda"
        # dask-cuda starts one process per visible GPU and pins each itself.
        args=(cuda worker "$address" --nthreads "$nthreads" --resources GPU=1 "${common[@]}")
        [[ -z "$name" ]] || args+=(--name "$name")
        run_exec "CUDA_VISIBLE_DEVICES=$all" "FARM_FFT_WORKERS=${FARM_FFT_WORKERS:-$fft}" "${malloc_env[@]}" -- \
            "$DASK" "${args[@]}" ${extra[@]+"${extra[@]}"}
    fi

    rotated() {  # the visible list with device $1 first
        local i out=() k
        for ((i = 0; i < ngpu; i++)); do [[ ${visible[$i]} == "$1" ]] && k=$i; done
        for ((i = 0; i < ngpu; i++)); do out+=("${visible[$(( (k + i) % ngpu ))]}"); done
        (IFS=,; echo "${out[*]}")
    }
    gpu_cmd() {  # the env and argv of the worker pinned to device $1
        local wname=${name:-$host_name-gpu}
        [[ -n "$device" ]] && rot=$device || rot=$(rotated "$1")
        cmd=(env "CUDA_VISIBLE_DEVICES=$rot" "FARM_FFT_WORKERS=${FARM_FFT_WORKERS:-$fft}" "${malloc_env[@]}"
             "$DASK" worker "$address" --nthreads "$nthreads" --resources GPU=1 --name "$wname-$1"
             "${common[@]}" ${extra[@]+"${extra[@]}"})
    }

    if [[ $ngpu -eq 1 ]]; then
        gpu_cmd "${visible[0]}"
        run_exec -- "${cmd[@]}"
    fi
    # Several GPUs, one `dask worker` each; this shell supervises them.
    pids=()
    for d in "${visible[@]}"; do
        gpu_cmd "$d"
        if [[ $dry == 1 ]]; then printf '%s ' "${cmd[@]}"; echo; continue; fi
        "${cmd[@]}" &
        pids+=($!)
    done
    [[ $dry == 0 ]] || exit 0
    stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
    trap 'stop; wait; exit 143' TERM INT
    set +e
    wait -n; rc=$?  # the first worker to exit (bash >= 4.3)
    echo "$prog: a GPU worker exited with status $rc; stopping the others" >&2
    stop; wait
    exit "$rc"
    ;;

-h|--help) usage ;;
*) die "unknown mode '$mode': use scheduler or workers (see --help)" ;;
esac
