#!/usr/bin/env bash
# Issue 5's GPU checks in one call of the device tool, and their preparation here.
#
#   bench/gpu_run.sh prepare     HERE, before the call: download the wheels the device image lacks
#                                (dask, distributed, soundfile, pyloudnorm, mutagen, bokeh and their
#                                missing needs) for its Python 3.12 / x86-64 manylinux into .whl/
#                                (git-ignored, carried), and check that every requirement of every
#                                wheel is either carried or in the image.
#   bash bench/gpu_run.sh        ON THE DEVICE (the `run` tool, carry [".whl"], timeout_s 560):
#                                install .whl into /tmp/site, then, each step under its own time
#                                limit inside one overall budget:
#                                  1. env: nvidia-smi, python/cupy/numpy/scipy versions
#                                  2. bench/kernels.py --backend cpu,gpu  (CUDA events, bytes model)
#                                  3. bench/render.py --backend gpu       (end to end vs codec floor)
#                                  4. pytest -m gpu -q                    (every gpu-marked test)
#                                  5. only after failures: the failed tests with FARM_RAW_KERNELS=0
#                                  6. bench/short.py --backend gpu        (fixed device cost per track,
#                                                                          thread scaling: batching?)
#                                  7. if time is left: bench/render.py of short tracks (4 worker processes
#                                     on the GPU), then of 2-min tracks, each with a thread per core
#                                logs under $OUT, a summary printed last (the device tool brings back
#                                8 files at most: 7 logs and summary.txt, which opens with env.txt's
#                                lines; the junit XML stays in $WORK)
#   bench/gpu_run.sh --cpu-only  HERE: the same steps with no GPU (backend cpu, short audio,
#                                pytest -m gpu only collects and skips), logs under $OUT or a temp
#                                dir: proves the script's plumbing before device time is spent.
#
# Environment: PY (python, default python3; --cpu-only prefers .venv/bin/python), OUT (log folder),
# BUDGET_S (whole script, default 480 s: with the machine's start it leaves part of the 15-minute
# device allowance for a rerun), KERNELS_ARGS / RENDER_ARGS / SHORT_ARGS / RENDER_SHORT_ARGS /
# RENDER_THREADS_ARGS / PYTEST_ARGS (extra arguments), WHEELS (wheel folder, default .whl).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${WHEELS:-.whl}

# What the device image lacks (see /work/.library/device/KINDS.md, "Python packages already there",
# read 2026-11-17), pinned to the versions this repo's .venv runs.
CARRIED=(dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0
         tornado==6.6.1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pyloudnorm==0.2.0 mutagen==1.48.1
         bokeh==3.9.2 xyzservices==2026.9.1)
# Present in the device image (KINDS.md list), so not carried: carrying a second version of these
# would shadow the image's (numpy, scipy and cupy must stay the image's own).
IMAGE_HAS="click cloudpickle fsspec packaging pyyaml toolz jinja2 msgpack psutil sortedcontainers urllib3
numpy scipy pandas pillow contourpy narwhals typing-extensions markupsafe importlib-metadata zipp
numba llvmlite"

prepare() {
    local py=${PY:-.venv/bin/python}
    [ -x "$py" ] || py=python3
    mkdir -p "$WHEELS"
    local plats=() n
    for n in 28 27 17; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
    plats+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    for n in 24 31 34 35; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plats[@]}" -d "$WHEELS" "${CARRIED[@]}" || { echo "prepare: pip download failed" >&2; return 1; }
    # one version of each distribution, every requirement carried or in the image
    "$py" - "$WHEELS" "$IMAGE_HAS" <<'EOF' || return 1
import re, sys, zipfile, pathlib
folder, image = pathlib.Path(sys.argv[1]), set(sys.argv[2].split())
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have, reqs = {}, {}
for w in sorted(folder.glob("*.whl")):
    name = norm(w.name.split("-")[0])
    have.setdefault(name, []).append(w.name)
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                spec = line.split(":", 1)[1].strip()
                marker = spec.split(";", 1)[1] if ";" in spec else ""
                if "python_version < \"3.12\"" in marker or "python_version < '3.12'" in marker:
                    continue  # the device runs Python 3.12
                if "sys_platform == \"win32\"" in marker or "platform_system == \"Windows\"" in marker:
                    continue
                reqs.setdefault(norm(re.split(r"[ ;<>=!~\[(]", spec, 1)[0]), set()).add(name)
bad = [f"two versions of {n}: {v}" for n, v in have.items() if len(v) > 1]
bad += [f"{r} (needed by {', '.join(sorted(by))}) is neither carried nor in the image"
        for r, by in sorted(reqs.items()) if r not in have and r not in {norm(i) for i in image}]
total = sum(w.stat().st_size for w in folder.glob("*.whl"))
print(f"prepare: {len(have)} wheels, {total / 2**20:.1f} MiB in {folder}/ (carry limit 64 MiB with the tree)")
for b in bad:
    print(f"prepare: PROBLEM: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
    echo "prepare: ready. When a device is lent: run(command='bash bench/gpu_run.sh', carry=['.whl'], timeout_s=560)"
}

if [ "${1:-}" = "prepare" ]; then
    prepare
    exit $?
fi

CPU_ONLY=0
[ "${1:-}" = "--cpu-only" ] && CPU_ONLY=1
if [ $CPU_ONLY = 1 ]; then
    PY=${PY:-$ROOT/.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    OUT=${OUT:-$(mktemp -d /tmp/gpu-run-dry.XXXXXX)}
    BACKENDS=cpu
    KERNELS_DEFAULT="--seconds 20 --repeat 1"
    RENDER_DEFAULT="--backend cpu --tracks 2 --seconds 20"
    SHORT_DEFAULT="--backend cpu --lengths 1,5 --repeat 1 --thread-seconds 2 --tracks 4 --threads 1,2 --batch 3"
    RENDER_SHORT_DEFAULT="--backend cpu --tracks 4 --seconds 3"
    RENDER_THREADS_DEFAULT="--backend cpu --tracks 2 --seconds 10"
else
    PY=${PY:-python3}
    OUT=${OUT:-$ROOT/gpu-run-out}
    BACKENDS=gpu,cpu  # the GPU's figures first: a step cut short by its time limit still has them
    KERNELS_DEFAULT="--repeat 1 --gpu-repeat 10"
    RENDER_DEFAULT="--backend gpu"
    SHORT_DEFAULT="--backend gpu --lengths 1,5,30,240 --repeat 3 --thread-seconds 10 --tracks 64"
    RENDER_SHORT_DEFAULT="--backend gpu --tracks 48 --seconds 10"
    RENDER_THREADS_DEFAULT="--backend gpu --tracks 16 --seconds 120"
fi
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-run-work.XXXXXX)  # files that need not come back
BUDGET_S=${BUDGET_S:-480}
START=$(date +%s)
export PYTHONUNBUFFERED=1

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME CAP_S LOG RESERVE_S CMD...: run CMD under min(CAP_S, what is left of the budget minus
# RESERVE_S kept for the later steps), output to LOG (and the terminal); records "NAME rc=.. Ns" in STEPS.
STEPS=()
step() {
    local name=$1 cap=$2 log=$3 reserve=$4
    shift 4
    local lim t0 rc
    lim=$(( $(left) - reserve ))
    [ "$lim" -gt "$cap" ] && lim=$cap
    if [ "$lim" -lt 20 ]; then
        echo "== $name: skipped, only $(left) s of the ${BUDGET_S} s budget left" | tee -a "$log"
        STEPS+=("$name skipped - -")
        return
    fi
    echo "== $name (limit ${lim} s): $*" | tee -a "$log"
    t0=$(date +%s)
    set -o pipefail
    timeout -k 10 "$lim" "$@" 2>&1 | tee -a "$log"
    rc=$?
    set +o pipefail
    [ $rc = 124 ] && echo "== $name: TIMED OUT after ${lim} s" | tee -a "$log"
    STEPS+=("$name rc=$rc $(( $(date +%s) - t0 ))s $(basename "$log")")
}

# ---- 0. wheels the image lacks (device only; here the .venv has them)
if [ $CPU_ONLY = 0 ]; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$WHEELS"/*.whl || { echo "wheel install failed" >&2; exit 3; }
        export PYTHONPATH=/tmp/site:$ROOT
    else
        echo "no wheels in $WHEELS/: run 'bench/gpu_run.sh prepare' here and carry [\"$WHEELS\"]" >&2
        exit 3
    fi
else
    export PYTHONPATH=$ROOT
fi

# ---- 1. environment
{
    date -u
    git rev-parse --short HEAD 2>/dev/null || true
    nproc
    nvidia-smi -L 2>&1 || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw \
        --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for m in ("numpy", "scipy", "numba", "cupy", "dask", "distributed", "soundfile", "pyloudnorm", "mutagen", "bokeh",
          "pytest"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '?')} {getattr(mod, '__file__', '')}")
    except Exception as e:
        print(f"{m} MISSING: {type(e).__name__}: {e}")
from kernels import backend
print("kernels.backend.gpu_available():", backend.gpu_available(), "FFT workers:", backend.cpu_workers())
EOF
} >"$WORK/env.txt" 2>&1
cat "$WORK/env.txt"
if [ $CPU_ONLY = 0 ] && ! grep -q "gpu_available(): True" "$WORK/env.txt"; then
    echo "CuPy sees no GPU (env.txt above): the GPU steps would fail; stopping" >&2
    exit 4
fi

# ---- 2-4. (caps: kernels 180 s, render 150 s, pytest what is left but 100 s for short.py and the
# short-track render; the reserves keep later steps alive)
# shellcheck disable=SC2086
step kernels 180 "$OUT/kernels.log" 280 "$PY" bench/kernels.py --backend $BACKENDS ${KERNELS_ARGS:-$KERNELS_DEFAULT}
# shellcheck disable=SC2086
step render 150 "$OUT/render.log" 180 "$PY" bench/render.py --workdir /tmp/farm-bench-render ${RENDER_ARGS:-$RENDER_DEFAULT}
XDIST=""
[ $CPU_ONLY = 0 ] && "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
# shellcheck disable=SC2086
step pytest-gpu 600 "$OUT/pytest-gpu.log" 100 "$PY" -m pytest -m gpu -q -rfE -p no:cacheprovider --timeout 120 \
    --junitxml "$WORK/pytest-gpu.xml" $XDIST ${PYTEST_ARGS:-}

# ---- 5. only if gpu tests failed: those again with our RawKernels off (FARM_RAW_KERNELS=0), which
# tells a failure of a fused kernel (none has run on a GPU before) from one of the rest
if [ -s "$WORK/pytest-gpu.xml" ] && grep -q -E "<(failure|error)" "$WORK/pytest-gpu.xml"; then
    mapfile -t FAILED < <("$PY" - "$WORK/pytest-gpu.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

for case in ET.parse(sys.argv[1]).iter("testcase"):
    if (case.find("failure") is not None or case.find("error") is not None) and case.get("classname"):
        print(case.get("classname").replace(".", "/") + ".py::" + case.get("name"))
EOF
)
    [ ${#FAILED[@]} -gt 0 ] && step pytest-gpu-nokernels 120 "$OUT/pytest-nokernels.log" 100 env FARM_RAW_KERNELS=0 "$PY" -m pytest -q -rfE \
        -p no:cacheprovider --timeout 120 "${FAILED[@]:0:60}"
fi

# ---- 6. the device's cost per track besides the track's length, and how threads share it: whether
# short tracks need batching on the device (or more worker processes per GPU) to keep up with the codecs
# shellcheck disable=SC2086
step short 60 "$OUT/short.log" 40 "$PY" bench/short.py ${SHORT_ARGS:-$SHORT_DEFAULT}

# ---- 7. if time is left: the node with a thread per core on its GPU worker (the default is
# min(4, cores per GPU)); with the meters on the device a GPU worker's host does ~0.2-0.4 s per
# 4-min track besides the codecs (bench/host.py), so more threads may keep more cores busy
NTHREADS=$(nproc 2>/dev/null || echo 4)
[ $CPU_ONLY = 1 ] && NTHREADS=2
# shellcheck disable=SC2086
# short tracks with 4 worker processes sharing the GPU, a thread per core in all: short.py's thread
# table shows what one process's threads reach; four interpreters dispatch to the device side by side
SHORT_PROCS=4
[ $CPU_ONLY = 1 ] && SHORT_PROCS=2
step render-short 90 "$OUT/render-short.log" 0 "$PY" bench/render.py --workdir /tmp/farm-bench-render-s \
    --workers "$SHORT_PROCS" --threads-per-worker $(( (NTHREADS + SHORT_PROCS - 1) / SHORT_PROCS )) \
    ${RENDER_SHORT_ARGS:-$RENDER_SHORT_DEFAULT}
# shellcheck disable=SC2086
step render-all-cores 120 "$OUT/render-threads.log" 0 "$PY" bench/render.py --workdir /tmp/farm-bench-render-t \
    --threads-per-worker "$NTHREADS" ${RENDER_THREADS_ARGS:-$RENDER_THREADS_DEFAULT}

# ---- summary: the lines a reader needs, last in the output (the tool returns its tail)
{
    cat "$WORK/env.txt"
    echo "================ SUMMARY ($(( $(date +%s) - START )) s of the ${BUDGET_S} s budget; logs in $OUT)"
    printf '  %s\n' "${STEPS[@]}"
    grep -h "^# GPU" "$OUT/kernels.log" 2>/dev/null
    grep -h -E "^  (cpu|gpu)  (WHOLE CHAIN master\(\) -14|chain \(best run\)|RawKernels)" "$OUT/kernels.log" 2>/dev/null
    # the backends against each other, stage by stage (the issue's relative error per stage)
    grep -h -E "^# gpu against cpu|^  (music|noise)  " "$OUT/kernels.log" 2>/dev/null
    # the floor table (the GPU's where there is one): its bandwidth line and the rows after it
    tbl=gpu
    grep -q "^  gpu  bandwidth " "$OUT/kernels.log" 2>/dev/null || tbl=cpu
    awk -v p="  $tbl  " 'index($0, p "bandwidth ") == 1 {on = 1} on && index($0, p) != 1 {on = 0} on' \
        "$OUT/kernels.log" 2>/dev/null
    grep -h -E "^  (cpu|gpu)  (FIXED COST|BATCHED CHAIN|SHORT TRACKS)" "$OUT/short.log" 2>/dev/null
    for f in render.log render-short.log render-threads.log; do
        [ -s "$OUT/$f" ] || continue
        echo "  ($f)"
        grep -h -E "^  (RESULT|codec floor \(decode\+encode\)|farm render --preset [^:]*x |render / floor)" "$OUT/$f"
    done
    grep -h -E "^(FAILED|ERROR) " "$OUT/pytest-gpu.log" 2>/dev/null | head -20
    grep -h -E "[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran" "$OUT/pytest-gpu.log" 2>/dev/null | tail -1
    if [ -s "$OUT/pytest-nokernels.log" ]; then
        echo "  the failed gpu tests again with FARM_RAW_KERNELS=0 (passing here = a RawKernel's fault):"
        grep -h -E "[0-9]+ (passed|failed|skipped|errors?)|no tests ran" "$OUT/pytest-nokernels.log" | tail -1
    fi
} | tee "$OUT/summary.txt"
