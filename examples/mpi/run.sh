#!/usr/bin/env bash
# Builds the library and examples/mpi/sync_batchnorm.c with Open MPI's mpicc, then runs it on
# 4 ranks (oversubscribing small machines). Needs Open MPI (Debian: libopenmpi-dev openmpi-bin).
# Usage: examples/mpi/run.sh [ranks]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ranks="${1:-4}"
out="$root/target/examples"
mkdir -p "$out"

(cd "$root" && cargo build --release --lib)
# shellcheck disable=SC2046 # packaging/static-libs.txt is a list of flags
mpicc -std=c11 -O2 -Wall -Wextra -Werror -I"$root/include" "$root/examples/mpi/sync_batchnorm.c" \
    "$root/target/release/libnormkit.a" $(cat "$root/packaging/static-libs.txt") \
    -o "$out/sync_batchnorm"

args=(--oversubscribe)
if [ "$(id -u)" -eq 0 ]; then
    args+=(--allow-run-as-root)
fi
mpirun "${args[@]}" -np "$ranks" "$out/sync_batchnorm"
