#!/bin/sh
# Wait until the 1-minute load average is below LIMIT (default 0.6), polling
# every 30 s for at most MAX seconds (default 600); then print the load
# average the benchmark starts at. Exit 1 (after printing it) if it never got quiet.
#   bench/wait_quiet.sh [LIMIT] [MAX]  &&  .venv/bin/python bench/kernels.py
limit=${1:-0.6}
max=${2:-600}
waited=0
while :; do
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    one=${load%% *}
    if awk -v a="$one" -v b="$limit" 'BEGIN { exit !(a < b) }'; then
        echo "loadavg at start: $load (after waiting ${waited} s)"
        exit 0
    fi
    if [ "$waited" -ge "$max" ]; then
        echo "loadavg at start: $load (NOT quiet: still >= $limit after waiting ${waited} s)"
        exit 1
    fi
    sleep 30
    waited=$((waited + 30))
done
