#!/usr/bin/env bash
# The "engine situation": normkit called in a process whose OpenMP team (T threads) runs a short
# parallel region before every call, through (a) a context with its own threads, (b) an OpenMP
# executor context, against (c) normkit alone in a process that never runs an OpenMP region.
#
#   benches/executor/run.sh [--passes P] [--rounds R] [--target-ms MS] [--filter SUBSTRING]
#
# Defaults: 2 passes x 3 rounds, 400 ms per measurement: about 2.5 minutes on a quiet machine,
# after the build (48 measurements a round, 6 rounds).
# NK_BENCH_QUICK=1: 1 pass x 2 rounds, 20 ms (a smoke test of a few seconds).
# Each pass runs, workload by workload, `engine alone` (c) then `engine omp` (a, b, copy), R
# rounds each, each in a fresh process; the table takes the median of all rounds' medians.
# Honours CARGO_TARGET_DIR (default target/); the program and raw results go to
# $CARGO_TARGET_DIR/executor-bench/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$root/$target ;; esac
out=$target/executor-bench
if [ "${NK_BENCH_QUICK:-0}" = 1 ]; then passes=1 rounds=2 ms=20; else passes=2 rounds=3 ms=400; fi
filter=""
while [ $# -gt 0 ]; do
    case "$1" in
        --passes) passes=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --target-ms) ms=$2; shift 2 ;;
        --filter) filter=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

# OpenMP's default wait policy (threads spin for a while after a region) is the point.
for v in OMP_WAIT_POLICY GOMP_SPINCOUNT; do
    if [ -n "${!v+x}" ]; then echo "note: unsetting $v=${!v} (the default is measured)"; unset "$v"; fi
done

echo "==> building libnormkit.a and the program"
cargo build --release --lib -q
mkdir -p "$out"
# shellcheck disable=SC2046 # packaging/static-libs.txt is a list of flags
cc -std=c11 -O2 -fopenmp -I include "$here/engine.c" "$target/release/libnormkit.a" \
    $(cat packaging/static-libs.txt) -o "$out/engine"

echo "==> machine"
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) logical cores"
has="" lacks=""
flags=$(grep -m1 '^flags' /proc/cpuinfo)
for f in avx2 fma avx512f avx512bw avx512dq avx512vl; do
    case " $flags " in *" $f "*) has="$has $f" ;; *) lacks="$lacks $f" ;; esac
done
echo "- ISA flags present:${has:- none}; absent:${lacks:- none}"
echo "- load average: $(cut -d' ' -f1-3 /proc/loadavg); $(cc --version | head -1)"
awk '$1 > 0.5 { print "warning: the machine is busy (1-minute load " $1 "); an OpenMP team waits" \
    " for a preempted thread at every join, so timings at T=2 will be noise" }' /proc/loadavg
echo "- environment: $(env | grep -E '^(OMP_|GOMP_|KMP_|NK_|RAYON_)' | tr '\n' ' ')"
echo "- passes $passes x rounds $rounds, ${ms} ms per measurement"

raw=$out/raw.jsonl
: >"$raw"
# Each workload runs in processes of its own: in a process that has run the others first, a
# workload's timings carry their traces (memory placement, cache state), which differ between
# the two processes and were seen to cost the later workloads up to 40% in one of them.
workloads="bn_train_nchw bn_train_nhwc bn_infer_nchw layernorm groupnorm dropout"
for p in $(seq "$passes"); do
    echo "==> pass $p/$passes: per workload, (c) alone, then (a), (b), copy in the OpenMP process"
    for w in $workloads; do
        case $w in *"$filter"*) ;; *) continue ;; esac
        "$out/engine" alone "$rounds" "$ms" "$w" >>"$raw"
        "$out/engine" omp "$rounds" "$ms" "$w" >>"$raw"
    done
done
echo
python3 "$here/report.py" "$raw"
