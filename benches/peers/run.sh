#!/usr/bin/env bash
# normkit against oneDNN and PyTorch (CPU) on the same workloads, same machine, same threads.
#
#   benches/peers/run.sh [--rounds R] [--budget MS] [--threads "1 2"] [--filter SUBSTRING]
#                        [--no-readme]
#
# Installs its peers into a private virtual environment (target/peers/venv, or
# $NORMKIT_PEERS_DIR/venv): oneDNN 3.2 with GNU OpenMP (PyPI onednn-cpu-gomp and
# onednn-devel-cpu-gomp) and PyTorch from PyPI. Nothing here is needed by the normal build or
# tests. Builds libnormkit.a, compiles native.cpp (normkit + oneDNN + copy in one process), then
# runs R rounds; each round runs, for each thread count, native.cpp and torch_bench.py one after
# the other, so the libraries are measured interleaved over the whole run. report.py takes the
# median of the rounds' medians and rewrites the tables of benches/peers/RESULTS.md (between its
# peers-table markers; the text around them is kept), the plot benches/peers/throughput.png, and
# the headline table of README.md (the workloads of $headline below; unless --no-readme).
# Raw results: target/peers/raw.jsonl.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${NORMKIT_PEERS_DIR:-$root/target/peers}
rounds=3
budget=400
threads="1 2"
filter=""
readme=1
# The README's headline table: a few workloads of each family, at 2 threads.
headline="tiny_ln_1x768,bn_train_nchw_32x64x56x56,bn_infer_nchw_32x64x56x56"
headline+=",bn_train_nhwc_32x64x56x56,bn_train_nc_4096x1024,bn_bwd_nchw_32x64x56x56"
headline+=",ln_fwd_8192x768,rms_fwd_8192x4096,gn_fwd_nchw_8x256x32x32_g32"
headline+=",in_fwd_nchw_8x64x64x64,dropout_p0.1_16777216_fwd"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --filter) filter=$2; shift 2 ;;
        --no-readme) readme=0; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

mkdir -p "$work"
venv=$work/venv
pins=(onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 torch==2.15.0 numpy matplotlib)
if ! [ -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "${pins[*]}" ]; then
    echo "==> installing oneDNN and PyTorch into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "${pins[@]}"
    echo "${pins[*]}" >"$venv/.installed"
fi

echo "==> building normkit and the native harness"
(cd "$root" && cargo build --release --lib -q)
# shellcheck disable=SC2046 # packaging/static-libs.txt is a list of flags
c++ -O2 -std=c++17 -fopenmp "$here/native.cpp" -I "$root/include" -I "$venv/include" \
    -L "$venv/lib" -Wl,-rpath,"$venv/lib" -ldnnl "$root/target/release/libnormkit.a" \
    $(cat "$root/packaging/static-libs.txt") -o "$work/native"

raw=$work/raw.jsonl
: >"$raw"
for round in $(seq "$rounds"); do
    for t in $threads; do
        echo "==> round $round/$rounds, $t thread(s)"
        "$work/native" "$t" "$budget" "$filter" | tee -a "$raw" | grep -c . | sed 's/^/    native lines: /'
        "$venv/bin/python" "$here/torch_bench.py" "$t" "$budget" "$filter" | tee -a "$raw" |
            grep -c . | sed 's/^/    pytorch lines: /'
    done
done

args=("$raw" --markdown "$here/RESULTS.md" --plot "$here/throughput.png")
[ "$readme" = 1 ] && args+=(--readme "$root/README.md" --headline "$headline")
"$venv/bin/python" "$here/report.py" "${args[@]}"
