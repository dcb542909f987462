#!/usr/bin/env bash
# Fuzzing: builds every cargo-fuzz target (libFuzzer, AddressSanitizer, nightly Rust), replays
# the committed regression inputs (fuzz/regressions/<target>/) so that old crashes stay fixed,
# then fuzzes each target, up to FUZZ_JOBS targets at a time (default: the number of cores, at
# most 4). Installs the nightly toolchain and cargo-fuzz when missing. Exits non-zero on any
# crash or finding and prints where the input that triggers it was written.
#
# Two modes:
# - gate (the default, what CI runs): each target runs FUZZ_RUNS executions (default per target,
#   about a minute each) from the fixed seed FUZZ_SEED, starting from the regression inputs
#   alone in a fresh corpus, so that the same code gets the same verdict.
# - explore (FUZZ_MODE=explore): each target runs FUZZ_SECONDS seconds (default 600) from a
#   fresh random seed and keeps its growing corpus in fuzz/corpus/<target>/ (not committed).
#   Copy what it finds (fuzz/artifacts/<target>/) into fuzz/regressions/<target>/ once fixed.
#
# Each mode runs the kernels on the CPU's own ISAs (the targets' contexts pick the best, AVX2 and
# the portable backend); on x86-64 without AVX-512 it then (unless FUZZ_EMULATED=0) rebuilds them
# with `--cfg normkit_emulate_avx512`, where 16 emulated lanes stand in for AVX2, so that the code
# paths of AVX-512 are fuzzed on CPUs without it (half the executions in the gate).
#
# Run from anywhere: fuzz/run-ci.sh            FUZZ_MODE=explore fuzz/run-ci.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
# The nightly toolchain (fuzzing, Miri), pinned so that the same commit is fuzzed the same way
# on every run (coverage instrumentation, and so libFuzzer's path from a fixed seed, change with
# the compiler); NIGHTLY overrides it.
nightly="${NIGHTLY:-nightly-2026-10-29}"
mode="${FUZZ_MODE:-gate}"
seconds="${FUZZ_SECONDS:-600}"
seed="${FUZZ_SEED:-1}"
case "$mode" in
gate | explore) ;;
*)
    echo "FUZZ_MODE must be gate or explore, not $mode" >&2
    exit 2
    ;;
esac
cores="$(nproc 2>/dev/null || echo 2)"
jobs="${FUZZ_JOBS:-$((cores < 4 ? cores : 4))}"
start=$SECONDS

step() {
    echo
    echo "==> $* ($((SECONDS - start)) s)"
}

step "nightly toolchain and cargo-fuzz"
if ! command -v rustup >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! rustup run "$nightly" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$nightly" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
rustup run "$nightly" rustc --version
cargo fuzz --version

targets=()
while IFS= read -r t; do
    targets+=("$t")
done < <(cargo +"$nightly" fuzz list)
echo "targets: ${targets[*]}"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# Prints the crash inputs libFuzzer reported in a log, and the command that replays them.
report_crash() {
    local t="$1" log="$2"
    echo "FAILED: $t ($pass)"
    # What failed (a panic's message and place, or the sanitizer's report), then the end.
    grep -m 1 -A 30 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)|overflowed its stack" "$log" || true
    echo "[...]"
    tail -n 30 "$log"
    grep -o "Test unit written to .*" "$log" | sed 's/^Test unit written to /crash input: /' || true
    echo "replay: (cd fuzz && ${RUSTFLAGS:+RUSTFLAGS=\"$RUSTFLAGS\" }cargo +$nightly fuzz run $t <crash input>)"
}

# Executions per target in the gate: about a minute each on a 2-core x86-64 machine under
# AddressSanitizer, two targets at a time (the targets differ in speed); divided by `$divisor`.
gate_runs() {
    if [ -n "${FUZZ_RUNS:-}" ]; then
        echo "$FUZZ_RUNS"
        return
    fi
    local runs
    case "$1" in
    batchnorm_ffi) runs=60000 ;;
    dropout_ffi) runs=40000 ;;
    groupnorm_ffi) runs=30000 ;;
    half_ffi) runs=35000 ;;
    layernorm_ffi) runs=80000 ;;
    rows_ffi) runs=50000 ;;
    *) runs=50000 ;;
    esac
    echo $((runs / divisor))
}

fuzz_one() {
    local t="$1"
    mkdir -p "artifacts/$t"
    # New inputs go to the first directory; the regression inputs seed the run.
    local seeds=()
    [ -d "regressions/$t" ] && seeds=("$PWD/regressions/$t")
    local corpus limits
    if [ "$mode" = gate ]; then
        corpus="$logs/corpus-$pass-$t"
        limits=(-seed="$seed" -runs="$(gate_runs "$t")")
    else
        corpus="$PWD/corpus/$t"
        limits=(-max_total_time="$seconds")
    fi
    mkdir -p "$corpus"
    cargo +"$nightly" fuzz run "$t" "$corpus" "${seeds[@]}" -- \
        "${limits[@]}" -print_final_stats=1 -len_control=0 -max_len=4096 \
        >"$logs/$pass-$t.log" 2>&1
}

# One pass: build, replay the regression inputs, fuzz every target. Sets `failed` on a finding.
run_pass() {
    step "$pass: build (AddressSanitizer)"
    cargo +"$nightly" fuzz build

    step "$pass: regression inputs"
    local t
    for t in "${targets[@]}"; do
        local dir="regressions/$t"
        if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
            local log="$logs/$pass-$t.regressions.log"
            # Files (not a directory) as arguments: libFuzzer runs each once and exits.
            if cargo +"$nightly" fuzz run "$t" "$PWD/$dir"/* >"$log" 2>&1; then
                echo "$t: $(ls "$dir" | wc -l) regression inputs pass"
            else
                report_crash "$t" "$log"
                grep -o "Running: .*" "$log" | tail -n 1 | sed 's/^Running: /failing regression input: /' || true
                failed=1
            fi
        else
            echo "$t: no regression inputs"
        fi
    done
    [ "$failed" -eq 0 ] || return 0

    if [ "$mode" = gate ]; then
        step "$pass: fuzz each target from seed $seed, a fixed number of executions ($jobs at a time)"
    else
        step "$pass: fuzz each target for $seconds s from a random seed ($jobs at a time)"
    fi
    local pids=() names=() i
    for t in "${targets[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
            sleep 1
        done
        fuzz_one "$t" &
        pids+=("$!")
        names+=("$t")
    done
    for i in "${!pids[@]}"; do
        t="${names[$i]}"
        local log="$logs/$pass-$t.log"
        if wait "${pids[$i]}"; then
            runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
            took="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo '?')"
            echo "$t: ok, $runs executions in $took s"
        else
            report_crash "$t" "$log"
            failed=1
        fi
    done
}

failed=0
pass="native ISA"
divisor=1
run_pass
# The features the AVX-512 backend needs (see src/simd/mod.rs): where the CPU has them, the native
# pass already ran the 16-lane code paths (and AVX2 and the portable backend, through the
# targets' contexts), and the emulated pass would run the same code again.
avx512=1
for f in avx512f avx512bw avx512dq avx512vl; do
    grep -qw "$f" /proc/cpuinfo 2>/dev/null || avx512=0
done
if [ "$failed" -eq 0 ] && [ "$avx512" -eq 1 ] && [ "${FUZZ_EMULATED:-1}" != 0 ]; then
    step "16 emulated lanes: skipped, the native pass ran AVX-512 itself"
elif [ "$failed" -eq 0 ] && [ "$(uname -m)" = x86_64 ] && [ "${FUZZ_EMULATED:-1}" != 0 ]; then
    pass="16 emulated lanes"
    divisor=2
    export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--cfg normkit_emulate_avx512"
    run_pass
fi

step "done in $((SECONDS - start)) s"
exit "$failed"
