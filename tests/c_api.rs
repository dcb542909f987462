//! The C API as a C program sees it: the programs of `tests/c` (`batchnorm_api.c`,
//! `dropout_api.c`, `rows_api.c`, ...) are compiled by the system C compiler against the
//! committed `include/normkit.h` and linked with the library cargo built for this test run, then
//! run; together they check every function of the header against their own naive loops, and each
//! exits non-zero on any failed check. The same files are also built as C++ (the header must work
//! there too) and linked against the shared library.
//!
//! How the programs find the library built for this test run, and `CC` / `CXX`: see
//! `tests/common_c/mod.rs`.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]
#![cfg(target_os = "linux")]

mod common_c;

use common_c::{
    STATIC_LIBS_FILE, WARNINGS, compiler, library_dir, native_libs, root, run, static_link,
};
use std::path::PathBuf;
use std::process::Command;

/// The C programs: every `tests/c/*.c`, by name, in order.
fn programs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/c"))
        .expect("tests/c")
        .filter_map(|entry| {
            let path = entry.expect("tests/c entry").path();
            (path.extension()? == "c").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    assert!(names.len() >= 2, "found only {names:?} in tests/c");
    names
}

fn program_source(program: &str) -> PathBuf {
    root().join(format!("tests/c/{program}.c"))
}

/// A fresh directory for this test's build products.
fn out_dir(name: &str) -> PathBuf {
    common_c::out_dir("c_api", name)
}

/// Compiles each C program with `cc` (`lang` None) or as C++ (`lang` Some("c++")), links it with
/// `link` and runs it; returns their stdout, one after the other.
fn build_and_run(name: &str, cc: &str, std: &str, lang: Option<&str>, link: &[String]) -> String {
    programs()
        .iter()
        .map(|program| build_and_run_one(program, name, cc, std, lang, link))
        .collect()
}

fn build_and_run_one(
    program: &str,
    name: &str,
    cc: &str,
    std: &str,
    lang: Option<&str>,
    link: &[String],
) -> String {
    let exe = out_dir(name).join(program);
    let mut cmd = Command::new(cc);
    cmd.arg(std)
        .args(WARNINGS)
        .arg("-O2")
        .arg("-I")
        .arg(root().join("include"));
    if let Some(lang) = lang {
        cmd.args(["-x", lang]);
    }
    cmd.arg(program_source(program));
    if lang.is_some() {
        cmd.args(["-x", "none"]);
    }
    cmd.args(link).arg("-o").arg(&exe);
    run(cmd, &format!("compiling tests/c/{program}.c ({name})"));
    let stdout = run(
        Command::new(&exe),
        &format!("the C API test program {program} ({name})"),
    );
    println!("{name}: {program}: {stdout}");
    stdout
}

/// What rustc prints for `--print native-static-libs` when it links normkit into a static
/// library: the system libraries a C program that links `libnormkit.a` needs.
///
/// Not by a nested `cargo rustc --crate-type staticlib`, which would wait forever on the build
/// lock of this `cargo test`, or build the crate once more in a target directory of its own:
/// rustc links a one-line static library, `extern crate normkit;`, against the rlib and the
/// dependencies cargo built for this test run. The native libraries rustc lists are those of the
/// crate graph (normkit, its dependencies, the standard library), the same as for
/// `libnormkit.a`, which is that graph in one archive.
fn rustc_native_static_libs() -> Vec<String> {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("the test executable has a directory");
    // The rlib cargo built for this run: `libnormkit.rlib` (no hash in the name, as the library
    // is also a cdylib); should others lie beside it, the newest.
    let rlib = std::fs::read_dir(deps)
        .expect("the deps directory")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let ours = name == "libnormkit.rlib"
                || (name.starts_with("libnormkit-") && name.ends_with(".rlib"));
            ours.then_some(path)
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no libnormkit.rlib in {}", deps.display()));
    let dir = out_dir("native-static-libs");
    let source = dir.join("probe.rs");
    std::fs::write(&source, "extern crate normkit;\n").unwrap();
    let mut cmd = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string()));
    cmd.args(["--edition", "2021", "--crate-type", "staticlib"])
        .args([
            "--crate-name",
            "normkit_probe",
            "--print",
            "native-static-libs",
        ])
        .arg("-L")
        .arg(format!("dependency={}", deps.display()))
        .arg("--extern")
        .arg(format!("normkit={}", rlib.display()))
        .arg("-o")
        .arg(dir.join("libnormkit_probe.a"))
        .arg(&source)
        .env_remove("LD_LIBRARY_PATH");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{stderr}",
        output.status
    );
    let line = stderr
        .lines()
        .find_map(|line| {
            line.split_once("native-static-libs: ")
                .map(|(_, libs)| libs)
        })
        .unwrap_or_else(|| panic!("no native-static-libs line in rustc's output:\n{stderr}"));
    line.split_whitespace().map(String::from).collect()
}

/// The system libraries recorded in `packaging/static-libs.txt`, which every build script, the
/// pkg-config and CMake files and these tests link with, are exactly what rustc prints for this
/// crate graph and toolchain (same libraries, same order).
#[test]
fn recorded_static_libs_are_what_rustc_prints() {
    let recorded = native_libs();
    let printed = rustc_native_static_libs();
    assert_eq!(
        recorded,
        printed,
        "{STATIC_LIBS_FILE} lists {:?} but rustc prints `{}` for the static library: write \
         rustc's line into {STATIC_LIBS_FILE}",
        recorded.join(" "),
        printed.join(" ")
    );
}

#[test]
fn c_program_passes_against_the_static_library() {
    let out = build_and_run(
        "c-static",
        &compiler("CC", "cc"),
        "-std=c11",
        None,
        &static_link(),
    );
    assert!(out.contains(" 0 failed"), "unexpected output: {out}");
}

#[test]
fn cpp_program_passes_against_the_static_library() {
    let out = build_and_run(
        "cpp-static",
        &compiler("CXX", "c++"),
        "-std=c++11",
        Some("c++"),
        &static_link(),
    );
    assert!(out.contains(" 0 failed"), "unexpected output: {out}");
}

#[test]
fn c_program_passes_against_the_shared_library() {
    let dir = library_dir();
    assert!(
        dir.join("libnormkit.so").is_file(),
        "libnormkit.so missing next to libnormkit.a in {dir:?}: is `cdylib` still among the crate \
         types?"
    );
    let link = vec![
        format!("-L{}", dir.display()),
        format!("-Wl,-rpath,{}", dir.display()),
        "-lnormkit".to_string(),
        "-lpthread".to_string(),
        "-lm".to_string(),
    ];
    let out = build_and_run("c-shared", &compiler("CC", "cc"), "-std=c11", None, &link);
    assert!(out.contains(" 0 failed"), "unexpected output: {out}");
}

/// The C programs built with AddressSanitizer and UndefinedBehaviorSanitizer (any report is
/// fatal) against the static library: out-of-bounds accesses, use after free, leaks and
/// undefined behaviour on the C side of every call, and any heap misuse the library would
/// cause through the C allocator.
#[test]
fn c_program_passes_under_address_and_undefined_behaviour_sanitizers() {
    let mut link: Vec<String> = [
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    link.extend(static_link());
    let out = build_and_run(
        "c-sanitized",
        &compiler("CC", "cc"),
        "-std=c11",
        None,
        &link,
    );
    assert!(out.contains(" 0 failed"), "unexpected output: {out}");
}

/// Names `nk_...` directly followed by `(` in `text`: the functions a header declares or a C
/// file calls. A C macro that pastes a suffix parameter onto a name (`nk_layernorm_forward##SUF(`)
/// calls both half-precision twins: the C programs instantiate such macros for `_bf16` and `_f16`.
fn called_names(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("nk_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if starts_word && bytes.get(end) == Some(&b'(') {
            names.push(text[start..end].to_string());
        } else if starts_word && text[end..].starts_with("##") {
            let suffix = text[end + 2..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if text.as_bytes().get(end + 2 + suffix) == Some(&b'(') {
                let name = text[start..end].trim_end_matches('_');
                for twin in ["bf16", "f16"] {
                    names.push(format!("{name}_{twin}"));
                }
            }
        }
        i = end.max(start + 3);
    }
    names.sort();
    names.dedup();
    names
}

/// The C programs must call every function the committed header declares, so that a function
/// added to the C API without a C-side test shows up here.
#[test]
fn c_program_calls_every_function_of_the_header() {
    let header = std::fs::read_to_string(root().join("include/normkit.h")).unwrap();
    let declared = called_names(&header);
    assert!(
        declared.len() >= 12,
        "found only {declared:?} in the header"
    );
    let mut called = Vec::new();
    for program in &programs() {
        called.extend(called_names(
            &std::fs::read_to_string(program_source(program)).unwrap(),
        ));
    }
    let missing: Vec<&String> = declared.iter().filter(|n| !called.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "no program of tests/c calls {missing:?}, declared in include/normkit.h"
    );
}

/// Compiles the C block of the Markdown file `doc` (relative to the repository) with a `main`
/// that calls `calls` (without warnings, against the static library), runs it and returns what
/// it printed.
fn run_doc_example(doc: &str, calls: &str, name: &str) -> String {
    let text = std::fs::read_to_string(root().join(doc)).unwrap();
    let example = text
        .split("```c\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|code| code.contains("int main(") && code.contains(calls))
        .unwrap_or_else(|| panic!("{doc} has a C block with a main function calling {calls}"));
    let dir = out_dir(&format!("docs-{name}"));
    let source = dir.join(format!("{name}.c"));
    std::fs::write(&source, example).unwrap();
    let exe = dir.join(name);
    let mut cmd = Command::new(compiler("CC", "cc"));
    cmd.arg("-std=c11")
        .args(WARNINGS)
        .arg("-I")
        .arg(root().join("include"))
        .arg(&source)
        .args(static_link())
        .arg("-o")
        .arg(&exe);
    run(cmd, &format!("compiling the {doc} {name} example"));
    run(Command::new(&exe), &format!("the {doc} {name} example"))
}

/// The DropConnect example of docs/dropout.md (the C block with a `main` that calls
/// `nk_dropout_forward`) compiles without warnings and runs successfully against the static
/// library, printing one line per step.
#[test]
fn docs_dropconnect_example_compiles_and_runs() {
    let out = run_doc_example("docs/dropout.md", "nk_dropout_forward", "dropconnect");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "unexpected output: {out}");
    for (step, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("DropConnect step {step}: ")),
            "unexpected output: {out}"
        );
    }
}

/// The transformer-block example of docs/row-norms.md (the C block with a `main` that calls
/// `nk_rmsnorm_forward_rows`: bf16 activations added to an f32 residual stream in place, the RMS
/// norm quantized to int8 per token) compiles without warnings and runs successfully against the
/// static library; it checks its own results (exit status 1 otherwise) and prints one line per
/// token.
#[test]
fn docs_transformer_block_example_compiles_and_runs() {
    let out = run_doc_example(
        "docs/row-norms.md",
        "nk_rmsnorm_forward_rows",
        "transformer_block",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "unexpected output: {out}");
    for (token, line) in lines.iter().enumerate() {
        let scale: f32 = line
            .strip_prefix(&format!("token {token}: residual updated, int8 scale "))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output: {out}"));
        assert!(scale > 0.0 && scale.is_finite(), "unexpected output: {out}");
    }
}

/// The C example of README.md (its first C block with a `main`) compiles without warnings and
/// runs successfully against the static library.
#[test]
fn readme_example_compiles_and_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let example = readme
        .split("```c\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|code| code.contains("int main("))
        .expect("README.md has a C block with a main function");
    let dir = out_dir("readme");
    let source = dir.join("example.c");
    std::fs::write(&source, example).unwrap();
    let exe = dir.join("example");
    let mut cmd = Command::new(compiler("CC", "cc"));
    cmd.arg("-std=c11")
        .args(WARNINGS)
        .arg("-I")
        .arg(root().join("include"))
        .arg(&source)
        .args(static_link())
        .arg("-o")
        .arg(&exe);
    run(cmd, "compiling the README example");
    let out = run(Command::new(&exe), "the README example");
    assert!(out.starts_with("channel 0: "), "unexpected output: {out}");
}
