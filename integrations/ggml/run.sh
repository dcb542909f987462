#!/usr/bin/env bash
# normkit inside ggml (the tensor library under llama.cpp): fetches ggml's source (from the
# llama-cpp-python source distribution on PyPI, pinned below), builds its CPU backend (CMake,
# static, native ISA) and libnormkit.a (cargo build --release), builds the C programs against
# both, and runs them. Everything goes to target/ggml/ (under CARGO_TARGET_DIR if set); ggml's
# code is never part of this repository.
#
# Usage: integrations/ggml/run.sh check [small|full]
#            normkit's ggml ops against ggml's and float64 (small: a few rows of each model
#            shape, for CI; full: the whole shapes). Without network or python3, prints
#            "skipped: ..." and exits 0.
#        integrations/ggml/run.sh bench
#            the full check, then the benchmark at 1 and 2 ggml threads; the report goes to
#            the terminal and to target/ggml/report.md.
# Needs cargo, a C and a C++ compiler, CMake, python3 (to fetch).
set -euo pipefail

# The llama-cpp-python release whose sdist carries ggml (vendor/llama.cpp/ggml: ggml 0.25.3).
pinned=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-target}
case "$target" in
/*) ;;
*) target="$root/$target" ;;
esac
work="$target/ggml"
mode=${1:-check}
size=${2:-small}
case "$mode" in
check) [ "$size" = small ] || [ "$size" = full ] || {
    echo "usage: $0 check [small|full] | bench" >&2
    exit 2
} ;;
bench) ;;
*)
    echo "usage: $0 check [small|full] | bench" >&2
    exit 2
    ;;
esac

# The check skips (exit 0) when the source cannot be fetched; the benchmark fails.
unavailable() {
    if [ "$mode" = check ]; then
        echo "skipped: $*"
        exit 0
    fi
    echo "error: $*" >&2
    exit 1
}

src="$work/src/ggml"
marker="$src/.llama-cpp-python-$pinned"
if ! [ -f "$marker" ]; then
    python=$(command -v python3 || true)
    [ -n "$python" ] || unavailable "python3 not found; it fetches ggml's source from the package index"
    sdist="$work/download/llama_cpp_python-$pinned.tar.gz"
    if ! [ -f "$sdist" ]; then
        echo "fetching ggml: llama-cpp-python==$pinned (source distribution) from the package index"
        mkdir -p "$work/download"
        # The file itself, found on the index's simple page and checked against the pinned
        # digest. Not `pip download`: for a source distribution it builds the package's build
        # dependencies from source first, which takes many minutes.
        if ! timeout --foreground 300 "$python" "$here/fetch_sdist.py" llama-cpp-python "$pinned" \
            "$sha256" "$sdist" >"$work/download/fetch.log" 2>&1; then
            tail -n 5 "$work/download/fetch.log"
            unavailable "could not fetch llama-cpp-python==$pinned from the package index (no network?); see $work/download/fetch.log"
        fi
    fi
    rm -rf "$work/src"
    mkdir -p "$work/src"
    tar -xzf "$sdist" -C "$work/src" --strip-components=3 "llama_cpp_python-$pinned/vendor/llama.cpp/ggml"
    # The sdist lacks ggml.pc.in, which ggml's CMakeLists configures.
    : >"$src/ggml.pc.in"
    : >"$marker"
fi

jobs=$(nproc 2>/dev/null || echo 2)
build="$work/build"
if ! [ -f "$build/src/libggml-cpu.a" ] || ! [ -f "$build/src/libggml-base.a" ]; then
    echo "building ggml (CPU backend, static, -march=native)"
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=OFF \
        -DBUILD_SHARED_LIBS=OFF -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF -DGGML_CCACHE=OFF \
        >"$work/cmake.log" 2>&1 || {
        tail -n 20 "$work/cmake.log"
        exit 1
    }
    cmake --build "$build" -j "$jobs" --target ggml-cpu ggml-base >"$work/build.log" 2>&1 || {
        tail -n 30 "$work/build.log"
        exit 1
    }
fi

echo "building libnormkit.a (cargo build --release)"
cargo build --release --lib

# The system libraries libnormkit.a needs (checked against rustc by tests/c_api.rs).
native_libs=$(cat "$root/packaging/static-libs.txt")
cflags="-O2 -std=c11 -Wall -Wextra -I$root/include -I$src/include -I$here"
bin="$work/bin"
mkdir -p "$bin"
for program in check bench; do
    # shellcheck disable=SC2086 # cflags and native_libs are lists of flags
    "${CC:-cc}" $cflags -c "$here/$program.c" -o "$bin/$program.o"
done
# shellcheck disable=SC2086
"${CC:-cc}" $cflags -c "$here/normkit_ggml.c" -o "$bin/normkit_ggml.o"
for program in check bench; do
    # ggml's CPU backend is partly C++: link with the C++ driver.
    # shellcheck disable=SC2086
    "${CXX:-c++}" "$bin/$program.o" "$bin/normkit_ggml.o" "$build/src/libggml-cpu.a" \
        "$build/src/libggml-base.a" "$target/release/libnormkit.a" $native_libs -o "$bin/$program"
done

if [ "$mode" = check ]; then
    exec "$bin/check" "$size"
fi
{
    echo "# normkit in ggml: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //') ($jobs logical cores)"
    echo "ggml: from llama-cpp-python $pinned, built with -march=native, ggml's own thread pools."
    echo "Load average before the run: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
    echo
    echo '```'
    "$bin/check" full
    echo '```'
    echo
    "$bin/bench"
} | tee "$work/report.md"
exit "${PIPESTATUS[0]}"
