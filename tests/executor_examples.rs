//! The executor examples of `examples/executors` (an OpenMP executor in C, a `std::thread` pool
//! in C++17, a serial executor in C) are compiled with warnings as errors, linked with the static
//! library built for this test run, and run. Each program runs a few large calls (batch norm in
//! both layouts, layer norm forward and backward, group norm, dropout) on its executor context
//! and on a context with two threads of its own, and exits non-zero unless every status is
//! `NK_OK`, every output is bitwise the same on both contexts and its `parallel_for` was called;
//! the thread pool also shares its context between two host threads at once.
//!
//! OpenMP is required, not optional: a compiler without it fails the test (CI installs gcc,
//! whose `-fopenmp` brings libgomp). Compilers and the library: see `tests/common_c/mod.rs`.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]
#![cfg(target_os = "linux")]

mod common_c;

use common_c::{WARNINGS, compiler, out_dir, root, run, static_link};
use std::process::Command;

/// Compiles `examples/executors/<file>` with `cc`, `flags` and the static library, runs it and
/// checks its summary line; returns its stdout.
fn build_and_run(file: &str, cc: &str, flags: &[&str]) -> String {
    let source = root().join("examples/executors").join(file);
    let exe = out_dir("executor_examples", "bin").join(file.replace('.', "_"));
    let mut cmd = Command::new(cc);
    cmd.args(flags)
        .args(WARNINGS)
        .arg("-O2")
        .arg("-I")
        .arg(root().join("include"))
        .arg(&source)
        .args(static_link())
        .arg("-o")
        .arg(&exe);
    run(cmd, &format!("compiling examples/executors/{file}"));
    let out = run(Command::new(&exe), &format!("the executor example {file}"));
    println!("{file}: {out}");
    assert!(
        out.contains(": outputs bitwise equal to a 2-thread context; parallel_for called "),
        "unexpected output of {file}: {out}"
    );
    out
}

#[test]
fn serial_executor_example_matches_a_context_with_threads() {
    build_and_run("serial.c", &compiler("CC", "cc"), &["-std=c11"]);
}

#[test]
fn openmp_executor_example_matches_a_context_with_threads() {
    let cc = compiler("CC", "cc");
    // A clear failure, before the example's own errors, if the compiler has no OpenMP.
    let dir = out_dir("executor_examples", "openmp-probe");
    let probe = dir.join("probe.c");
    std::fs::write(
        &probe,
        "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n",
    )
    .unwrap();
    let output = Command::new(&cc)
        .args(["-fopenmp", "-o"])
        .arg(dir.join("probe"))
        .arg(&probe)
        .output()
        .unwrap_or_else(|e| panic!("cannot start the C compiler `{cc}`: {e}"));
    assert!(
        output.status.success(),
        "the C compiler `{cc}` cannot build an OpenMP program (-fopenmp, <omp.h>, libgomp); this \
         test requires OpenMP: install gcc or set CC to a compiler with OpenMP support.\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    build_and_run("openmp.c", &cc, &["-std=c11", "-fopenmp"]);
}

#[test]
fn thread_pool_executor_example_matches_a_context_with_threads() {
    let out = build_and_run(
        "thread_pool.cpp",
        &compiler("CXX", "c++"),
        &["-std=c++17", "-pthread"],
    );
    assert!(
        out.contains("two host threads sharing the context: runs bitwise equal to a run alone"),
        "unexpected output: {out}"
    );
}
