#!/usr/bin/env bash
# normkit against oneDNN (two releases), ONNX Runtime and PyTorch (CPU) on the same workloads,
# same machine, same threads.
#
#   benches/peers/run.sh [--rounds R] [--budget MS] [--threads "1 2"] [--filter SUBSTRING]
#                        [--no-readme]
#
# Installs its peers into private virtual environments under target/peers (or
# $NORMKIT_PEERS_DIR), one prefix per oneDNN so their headers and libraries never mix:
#   venv           PyTorch, ONNX Runtime and the onnx package (models), numpy, matplotlib;
#   onednn-3.2     oneDNN 3.2 with GNU OpenMP (PyPI onednn-cpu-gomp, onednn-devel-cpu-gomp:
#                  the newest release built on OpenMP there);
#   onednn-3.13    oneDNN 3.13, the newest release on PyPI (onednn, onednn-devel), built on the
#                  SYCL runtime with TBB threads: it finds the CPU as a SYCL device through the
#                  OpenCL CPU runtime its package brings (OCL_ICD_FILENAMES points there), and
#                  tbb-devel gives the header that caps TBB's threads.
# Nothing here is needed by the normal build or tests. Builds libnormkit.a, compiles native.cpp
# twice: against oneDNN 3.2 (normkit + oneDNN + copy in one process) and against oneDNN 3.13
# (--onednn-only: oneDNN alone, so normkit and the copy are measured once). Then runs R rounds;
# each round runs, for each thread count, both native builds, torch_bench.py and ort_bench.py one
# after the other, so the libraries are measured interleaved over the whole run. report.py takes
# the median of the rounds' medians and rewrites the tables of benches/peers/RESULTS.md, the plot
# benches/peers/throughput.png, and the headline table of README.md (the workloads of $headline
# below; unless --no-readme). report.py rewrites only the text between the peers-table markers.
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
headline+=",ln_fwd_8192x768,rms_fwd_8192x768,rms_fwd_8192x4096,gn_fwd_nchw_8x256x32x32_g32"
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

# install DIR PACKAGE==VERSION...: a virtual environment at DIR holding exactly these pins
# (reinstalled when the list changes).
install() {
    local dir=$1
    shift
    if ! [ -f "$dir/.installed" ] || [ "$(cat "$dir/.installed")" != "$*" ]; then
        echo "==> installing $* into $dir"
        python3 -m venv "$dir"
        "$dir/bin/pip" install -q --upgrade pip
        "$dir/bin/pip" install -q "$@"
        echo "$*" >"$dir/.installed"
    fi
}

venv=$work/venv
dnnl_old=$work/onednn-3.2
dnnl_new=$work/onednn-3.13
install "$venv" torch==2.15.0 onnxruntime==1.32.0 onnx==1.23.2 numpy matplotlib
install "$dnnl_old" onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
install "$dnnl_new" onednn==2026.1.0 onednn-devel==2026.1.0 tbb-devel==2023.2.0

echo "==> building normkit and the native harness"
(cd "$root" && cargo build --release --lib -q)
# native BINARY PREFIX [LIBS...]: native.cpp against the oneDNN installed at PREFIX; the rpath
# (not runpath) lets that oneDNN find its own dependencies in PREFIX too.
native() {
    local out=$1 prefix=$2
    shift 2
    # shellcheck disable=SC2046 # packaging/static-libs.txt is a list of flags
    c++ -O2 -std=c++17 -fopenmp "$here/native.cpp" -I "$root/include" -I "$prefix/include" \
        -L "$prefix/lib" -Wl,--disable-new-dtags,-rpath,"$prefix/lib" -ldnnl "$@" \
        "$root/target/release/libnormkit.a" $(cat "$root/packaging/static-libs.txt") -o "$out"
}
native "$work/native" "$dnnl_old"
native "$work/native-onednn-3.13" "$dnnl_new" -ltbb

raw=$work/raw.jsonl
: >"$raw"
# count LABEL: passes the JSON lines through to raw.jsonl and says how many there were.
count() {
    tee -a "$raw" | { grep -c . || true; } | sed "s/^/    $1 lines: /"
}
for round in $(seq "$rounds"); do
    for t in $threads; do
        echo "==> round $round/$rounds, $t thread(s)"
        "$work/native" "$t" "$budget" "$filter" | count "normkit + oneDNN 3.2 + copy"
        # The SYCL runtime of oneDNN 3.13 sees the CPU only through its package's OpenCL driver.
        OCL_ICD_FILENAMES=$dnnl_new/lib/libintelocl.so \
            "$work/native-onednn-3.13" "$t" "$budget" "$filter" --onednn-only | count "oneDNN 3.13"
        "$venv/bin/python" "$here/torch_bench.py" "$t" "$budget" "$filter" | count "PyTorch"
        "$venv/bin/python" "$here/ort_bench.py" "$t" "$budget" "$filter" | count "ONNX Runtime"
    done
done

args=("$raw" --markdown "$here/RESULTS.md" --plot "$here/throughput.png")
[ "$readme" = 1 ] && args+=(--readme "$root/README.md" --headline "$headline")
"$venv/bin/python" "$here/report.py" "${args[@]}"
