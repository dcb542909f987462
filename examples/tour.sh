#!/bin/sh
# Builds the static library (release), compiles examples/tour.c against it, and runs it.
# Usage: examples/tour.sh [auto|portable|avx2|avx512]   (default: the best ISA of this CPU)
# Needs cargo and a C compiler (CC, default cc).
set -eu
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --lib
# The system libraries libnormkit.a needs (checked against rustc by tests/c_api.rs).
native_libs=$(cat packaging/static-libs.txt)
# shellcheck disable=SC2086 # native_libs is a list of flags
"${CC:-cc}" -O2 -std=c11 -Wall -Wextra -Iinclude examples/tour.c "$target/release/libnormkit.a" \
    $native_libs -o "$target/release/tour"
exec "$target/release/tour" "$@"
