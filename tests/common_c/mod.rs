//! Building C and C++ programs against the library of this test run, for the tests that compile
//! programs with the system compilers (`tests/c_api.rs`, `tests/executor_examples.rs`).
//!
//! Where the libraries come from: before it builds any integration test, cargo builds the
//! library target with all its crate types (`staticlib`, `cdylib`, `rlib`) in one rustc
//! invocation, into the `deps` directory that also holds the test's executable, e.g.
//! `target/release/deps/libnormkit.a` for `cargo test --release` (no hash in the name). Cargo
//! copies them up to `target/release/` only for `cargo build`, so [`library_dir`] looks in the
//! test's own directory first and falls back to the parent. No nested cargo call is needed (it
//! would wait forever on the build lock held by the running `cargo test`).
//!
//! `CC` and `CXX` choose the compilers (default `cc` and `c++`), see [`compiler`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// The file that records the system libraries the static library needs, as rustc prints them
/// (`--print native-static-libs`): one line of linker flags, read by every script, the
/// pkg-config and CMake files and these tests. `tests/c_api.rs` checks it against rustc.
pub const STATIC_LIBS_FILE: &str = "packaging/static-libs.txt";

/// The linker flags of [`STATIC_LIBS_FILE`], in order.
pub fn native_libs() -> Vec<String> {
    let path = root().join(STATIC_LIBS_FILE);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Every program is compiled with these: any warning fails the test.
pub const WARNINGS: &[&str] = &["-Wall", "-Wextra", "-Werror"];

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding the `libnormkit.a` and `libnormkit.so` built for this test run.
pub fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("the test executable has a directory");
    let candidates = [
        deps.to_path_buf(),
        deps.parent().unwrap_or(deps).to_path_buf(),
    ];
    for dir in &candidates {
        if dir.join("libnormkit.a").is_file() {
            return dir.clone();
        }
    }
    panic!(
        "libnormkit.a not found in {candidates:?}: is `staticlib` still among the crate types of \
         [lib] in Cargo.toml?"
    );
}

/// A fresh directory for the build products of one test: `<CARGO_TARGET_TMPDIR>/<group>/<name>`.
pub fn out_dir(group: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    std::fs::create_dir_all(&dir).expect("create the output directory");
    dir
}

/// The compiler named by the environment variable `var` (`CC`, `CXX`), else `default`.
pub fn compiler(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Runs a command and panics with its output unless it succeeds; returns its stdout.
pub fn run(mut cmd: Command, what: &str) -> String {
    // cargo puts `target/<profile>` on LD_LIBRARY_PATH, which beats a program's RUNPATH: a stale
    // `libnormkit.so` left there by an older `cargo build` would be loaded instead of the one
    // built for this test run, which the programs name with `-Wl,-rpath`.
    let output = cmd
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{cmd:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    if !stderr.is_empty() {
        eprintln!("{what}: stderr:\n{stderr}");
    }
    stdout
}

/// The linker arguments for the static library: its path, then [`native_libs`].
pub fn static_link() -> Vec<String> {
    let mut link = vec![library_dir().join("libnormkit.a").display().to_string()];
    link.extend(native_libs());
    link
}
