#!/usr/bin/env bash
# Checks that the release library calls no vector intrinsic out of line (x86-64 only).
#
# Each kernel is compiled for its ISA by instantiating it inside a `#[target_feature]` function
# (`simd::dispatch`, `F32Vec::run_apart`), where the backends' `#[inline(always)]` methods become
# single instructions. Code that is not inlined into such a function is compiled without those
# features: a closure's body (`std::array::from_fn(|j| V::read(..))`, `|v| acc.add(v)`), or a
# generic `#[inline(never)]` helper. The intrinsics it calls then stay functions, a call per
# vector: correct results, several times slower, and no test notices. Such a call leaves the
# intrinsic's body in the library as a function of its own (`core::core_arch::...`), which this
# script looks for. A kernel taking a closure over scalars or slices is fine; one taking a
# closure over vectors is what it catches.
#
# Usage: benches/inlined.sh   (builds the release library if needed; needs nm from binutils)
# Honours CARGO_TARGET_DIR (default target/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ "$(uname -m)" != x86_64 ]; then
    echo "inlined.sh: skipped (the check is for the x86-64 backends)"
    exit 0
fi
cargo build --release --lib --quiet
lib="${CARGO_TARGET_DIR:-target}/release/libnormkit.a"
# Defined text symbols of the intrinsics (nm prints a line per object file; some object files
# of the standard library in the archive have none).
found="$(nm -C --defined-only "$lib" 2>/dev/null |
    awk '$2 ~ /^[tTwW]$/ && $3 ~ /^core::core_arch::/ {print $3}' | sort -u)"
if [ -n "$found" ]; then
    echo "inlined.sh FAILED: vector intrinsics compiled out of line (called from code without" >&2
    echo "the kernel's target features: a closure or an #[inline(never)] helper over vectors):" >&2
    printf '  %s\n' $found >&2
    echo "find the callers with: objdump -dC $lib | grep -B40 'call.*core_arch'" >&2
    exit 1
fi
echo "inlined.sh: no vector intrinsic out of line in $lib"
