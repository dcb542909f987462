//! The peer comparison's report (`benches/peers/report.py`, Python standard library only for the
//! tables) on made-up measurements: medians over rounds, GB/s, the copy ratio, a column per peer
//! (several oneDNN releases among them) with its ratio, the best peer, the accuracy table and the
//! list of missed targets. Skipped with a message where no `python3` is installed.

use std::path::PathBuf;
use std::process::Command;

fn line(workload: &str, lib: &str, threads: u32, ns: f64, bytes: f64) -> String {
    format!(
        "{{\"workload\": \"{workload}\", \"lib\": \"{lib}\", \"threads\": {threads}, \
         \"ns\": {ns}, \"bytes\": {bytes}}}\n"
    )
}

#[test]
fn report_tables_and_targets() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let dir = std::env::temp_dir().join(format!("normkit-peers-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.jsonl");
    let markdown = dir.join("out.md");
    let readme = dir.join("README.md");
    let mut text = String::from(
        "{\"meta\": \"onednn\", \"version\": \"9.9.9\"}\nnot json\n\
         {\"meta\": \"onednn-3.13\", \"version\": \"3.13.2\"}\n",
    );
    // Three rounds: the report takes the median (2 ms for normkit, 1.6 ms for the copy).
    for ns in [2.0e6, 1.9e6, 9.0e6] {
        text += &line("big_fwd", "normkit", 2, ns, 80.0e6);
    }
    for ns in [1.6e6, 1.7e6, 1.5e6] {
        text += &line("big_fwd", "copy", 2, ns, 80.0e6);
    }
    text += &line("big_fwd", "onednn", 2, 3.0e6, 80.0e6);
    text += &line("big_fwd", "pytorch", 2, 3.0e6, 80.0e6);
    text += &line("big_fwd", "onnxruntime", 2, 2.2e6, 80.0e6);
    text += &line("big_fwd", "onednn-3.13", 2, 2.5e6, 80.0e6);
    text += &line("tiny_x", "normkit", 2, 400.0, 512.0);
    text += &line("tiny_x", "pytorch", 2, 4000.0, 512.0);
    text += "{\"workload\": \"accuracy_y\", \"lib\": \"normkit\", \"max_err\": 2e-07}\n";
    text += "{\"workload\": \"accuracy_y\", \"lib\": \"pytorch\", \"max_err\": 1e-07}\n";
    text += "{\"workload\": \"accuracy_y\", \"lib\": \"onnxruntime\", \"max_err\": 5e-07}\n";
    std::fs::write(&raw, text).unwrap();
    std::fs::write(
        &readme,
        "before\n<!-- peers-table:begin -->\nold\n<!-- peers-table:end -->\nafter\n",
    )
    .unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/report.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&raw)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--readme")
        .arg(&readme)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(&markdown).unwrap();
    let expect = [
        // Columns: each peer in family order, oneDNN releases in version order.
        "| workload | normkit | GB/s | of copy | oneDNN | oneDNN 3.13 | PyTorch | ONNX Runtime | \
         best peer | vs best | copy |",
        // 80 MB in 2 ms = 40 GB/s; copy 1.6 ms = 80% of copy; each peer's time over normkit's;
        // the fastest peer is ONNX Runtime at 2.2 ms.
        "| big_fwd | 2.00 ms | 40.0 | 80% | 3.00 ms (1.50x) | 2.50 ms (1.25x) | 3.00 ms (1.50x) | \
         2.20 ms (1.10x) | ONNX Runtime | 1.10x | 1.60 ms |",
        "| tiny_x | 400 ns | - | - | n/a | n/a | 4000 ns (10.00x) | n/a | PyTorch | 10.00x | - |",
        "| check | normkit | PyTorch | ONNX Runtime |",
        "| accuracy_y | 2.0e-07 | 1.0e-07 | 5.0e-07 |",
        "- big_fwd: 1.50x PyTorch (target 2x; the target needs 1.50 ms, less than a copy of \
         the same bytes (1.60 ms))",
        "- big_fwd: 1.10x ONNX Runtime (target 1.2x)",
        "- accuracy_y: normkit error 2.0e-07 > PyTorch 1.0e-07",
        "oneDNN 9.9.9, oneDNN 3.13.2",
        "3 round(s)",
    ];
    for e in expect {
        assert!(md.contains(e), "missing {e:?} in:\n{md}");
    }
    // 1.5x oneDNN and 1.25x oneDNN 3.13 meet the 1.2x target, a less accurate peer is no miss,
    // and a tiny call has no copy target.
    assert!(!md.contains("big_fwd: 1.50x oneDNN"), "{md}");
    assert!(!md.contains("big_fwd: 1.25x oneDNN 3.13"), "{md}");
    assert!(!md.contains("> ONNX Runtime"), "{md}");
    assert!(!md.contains("tiny_x:"), "{md}");
    let readme_text = std::fs::read_to_string(&readme).unwrap();
    assert!(readme_text.starts_with("before\n<!-- peers-table:begin -->\n"));
    assert!(readme_text.ends_with("<!-- peers-table:end -->\nafter\n"));
    assert!(readme_text.contains("| big_fwd | 2.00 ms |") && !readme_text.contains("old"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A RESULTS.md with text around its table section keeps that text, and `--headline` puts only
/// the chosen workloads, at 2 threads, into the README's table.
#[test]
fn report_keeps_surrounding_text_and_picks_headline_rows() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let dir = std::env::temp_dir().join(format!("normkit-peers-headline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.jsonl");
    let mut text = String::new();
    for w in ["first_fwd", "second_fwd"] {
        text += &line(w, "normkit", 2, 2.0e6, 80.0e6);
        text += &line(w, "normkit", 1, 4.0e6, 80.0e6);
        text += &line(w, "copy", 2, 1.6e6, 80.0e6);
        text += &line(w, "pytorch", 2, 3.0e6, 80.0e6);
    }
    std::fs::write(&raw, text).unwrap();
    let markdown = dir.join("RESULTS.md");
    let readme = dir.join("README.md");
    let section = "<!-- peers-table:begin -->\nold\n<!-- peers-table:end -->\n";
    std::fs::write(
        &markdown,
        format!("# kept title\n\n{section}\n## kept after\n"),
    )
    .unwrap();
    std::fs::write(&readme, format!("intro\n{section}outro\n")).unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/report.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&raw)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--readme")
        .arg(&readme)
        .arg("--headline")
        .arg("second_fwd,not_measured")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(
        md.starts_with("# kept title\n\n<!-- peers-table:begin -->\n"),
        "{md}"
    );
    assert!(
        md.ends_with("<!-- peers-table:end -->\n\n## kept after\n"),
        "{md}"
    );
    assert!(!md.contains("old"), "{md}");
    // Both workloads, at both thread counts.
    assert!(md.contains("| first_fwd | 2.00 ms |") && md.contains("| second_fwd | 4.00 ms |"));
    let readme_text = std::fs::read_to_string(&readme).unwrap();
    assert!(readme_text.starts_with("intro\n<!-- peers-table:begin -->\n"));
    assert!(readme_text.ends_with("<!-- peers-table:end -->\noutro\n"));
    // 80 MB in 2 ms = 40 GB/s; the copy's 1.6 ms is 80%; the best peer, PyTorch, is 1.5x.
    assert!(
        readme_text.contains("| second_fwd | 2.00 ms | 40.0 | 80% | PyTorch | 1.50x |"),
        "{readme_text}"
    );
    assert!(!readme_text.contains("first_fwd"), "{readme_text}");
    assert!(!readme_text.contains("4.00 ms"), "{readme_text}");
    std::fs::remove_dir_all(&dir).ok();
}
