//! The documentation's relative links lead somewhere: every `[text](target)` of the README,
//! ARCHITECTURE.md, CHANGELOG.md, docs/*.md and benches/peers/RESULTS.md names a file or
//! directory of the repository, and a `#fragment` names a heading of the Markdown file it points
//! to (as GitHub derives anchors from headings). Links to other sites are not followed. Also
//! checks that the README still shows its two commands.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked, relative to the repository.
fn documents() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "CHANGELOG.md",
        "benches/peers/RESULTS.md",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("a docs directory")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The lines of `text` outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence {
            lines.push(line);
        }
    }
    lines
}

/// `line` without its inline code spans (whose brackets are not links).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

/// The targets of the inline links and images of `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            // A title ("...") may follow the target after a space.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// The anchors GitHub gives the headings of `text`: lower case, punctuation other than `-` and
/// `_` dropped, spaces as `-`, and `-1`, `-2`, ... after repeated headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose_lines(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// Problems with the link `target` of the document `doc` (both relative to the repository).
fn check_link(doc: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".to_string());
    }
    if is_external(target) {
        return None;
    }
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        root().join(doc)
    } else if let Some(absolute) = path.strip_prefix('/') {
        root().join(absolute)
    } else {
        root().join(doc.parent().unwrap()).join(path)
    };
    if !file.exists() {
        return Some(format!("{target}: no file {}", file.display()));
    }
    if let Some(fragment) = fragment
        && file.extension().is_some_and(|ext| ext == "md")
        && !anchors(&std::fs::read_to_string(&file).unwrap()).contains(fragment)
    {
        return Some(format!("{target}: no heading #{fragment}"));
    }
    None
}

#[test]
fn relative_links_resolve() {
    let mut problems = Vec::new();
    let mut count = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(root().join(&doc))
            .unwrap_or_else(|e| panic!("reading {}: {e}", doc.display()));
        for target in link_targets(&text) {
            count += 1;
            if let Some(problem) = check_link(&doc, &target) {
                problems.push(format!("{}: {problem}", doc.display()));
            }
        }
    }
    assert!(count >= 20, "found only {count} links");
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn readme_shows_the_two_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for command in ["examples/tour.sh", "cargo test --release"] {
        assert!(readme.contains(command), "README.md lacks `{command}`");
    }
}

/// The parsing above on a small document: code blocks and code spans hold no links, anchors
/// follow GitHub's rule.
#[test]
fn link_and_anchor_parsing() {
    let text = "# A title: with (punctuation)\n\nSee [`x.md`](x.md#a-b) and ![p](p.png \"t\").\n\
                `[not](a link)`\n```\n[no](link)\n# not a heading\n```\n## A title: with (punctuation)\n";
    assert_eq!(link_targets(text), ["x.md#a-b", "p.png"]);
    let found = anchors(text);
    assert!(found.contains("a-title-with-punctuation"), "{found:?}");
    assert!(found.contains("a-title-with-punctuation-1"), "{found:?}");
    assert_eq!(found.len(), 2, "{found:?}");
}
