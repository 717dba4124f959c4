//! Every relative link and `#anchor` in `README.md` and `docs/*.md` resolves:
//! the file (or directory) exists, and the anchor is a heading of the target
//! file, spelt as GitHub derives it.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::docs::{doc_files, prose_lines, repo};

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and
/// `_` removed, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`,
/// `-2`, … as on GitHub).
fn anchors(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut a = base.clone();
        let mut n = 0;
        while out.contains(&a) {
            n += 1;
            a = format!("{base}-{n}");
        }
        out.insert(a);
    }
    out
}

/// `(line number, target)` of every inline link `[text](target)` outside
/// code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let code_span = regex::Regex::new(r"`[^`]*`").expect("regex");
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("regex");
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        // A code span inside link text (`[`x`](x)`) leaves `[](x)`, still a link.
        let line = code_span.replace_all(line, "");
        out.extend(link.captures_iter(&line).map(|c| (n, c[1].to_owned())));
    }
    out
}

/// What is wrong with `target`, linked from `from`, if anything.
fn check(from: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file: PathBuf = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().unwrap_or(Path::new("")).join(path)
    };
    let root = repo().canonicalize().expect("repo root");
    let Ok(real) = file.canonicalize() else {
        return Some(format!("{} does not exist", file.display()));
    };
    if !real.starts_with(&root) {
        return Some(format!("{} is outside the repository", file.display()));
    }
    let anchor = anchor?;
    if real.extension().is_none_or(|e| e != "md") {
        return Some(format!("#{anchor} on a file that is not Markdown"));
    }
    let text = std::fs::read_to_string(&real).expect("read link target");
    (!anchors(&text).contains(anchor))
        .then(|| format!("{} has no heading with anchor #{anchor}", real.display()))
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Remote brokers: TLS, failover, backoff"),
        "remote-brokers-tls-failover-backoff"
    );
    assert_eq!(slug("`type: builtin`"), "type-builtin");
    assert_eq!(
        slug("Bridge: mqbridge against Mosquitto's bridge"),
        "bridge-mqbridge-against-mosquittos-bridge"
    );
    assert_eq!(slug("Files in `deploy/`"), "files-in-deploy");
    let a = anchors("# A\n```sh\n# not a heading\n```\n## A\n#nope\n");
    assert_eq!(a, HashSet::from(["a".to_owned(), "a-1".to_owned()]));
}

#[test]
fn the_checker_finds_broken_links_and_anchors() {
    let readme = repo().join("README.md");
    assert_eq!(check(&readme, "docs/configuration.md#values"), None);
    assert_eq!(check(&readme, "#quick-start"), None);
    assert_eq!(check(&readme, "https://example.com/x#y"), None);
    assert!(check(&readme, "docs/nothing.md").is_some());
    assert!(check(&readme, "docs/configuration.md#no-such-heading").is_some());
    assert!(check(&readme, "#no-such-heading").is_some());
    assert!(check(&readme, "../outside").is_some());
    let found = links("[a](x.md) `[b](y.md)` [`c`](z/) and\n```\n[d](w.md)\n```\n");
    assert_eq!(
        found,
        [(1, "x.md".to_owned()), (1, "z/".to_owned())],
        "links outside code only"
    );
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let files = doc_files();
    assert!(files.len() >= 9, "README.md and the docs/ files: {files:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read doc");
        for (line, target) in links(&text) {
            checked += 1;
            if let Some(why) = check(file, &target) {
                broken.push(format!("{}:{line}: ({target}): {why}", file.display()));
            }
        }
    }
    assert!(checked >= 50, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_docs_page() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let linked: HashSet<String> = links(&readme).into_iter().map(|(_, t)| t).collect();
    for file in doc_files() {
        let rel = file
            .strip_prefix(repo())
            .expect("under the repo")
            .display()
            .to_string();
        if rel != "README.md" {
            assert!(
                linked
                    .iter()
                    .any(|t| t.split('#').next() == Some(rel.as_str())),
                "README.md does not link {rel}"
            );
        }
    }
}
