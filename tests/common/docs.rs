//! Reading the Markdown docs: `README.md` and `docs/*.md`.

use std::path::{Path, PathBuf};

pub use super::prometheus::repo;

/// `README.md` and every `docs/*.md`, sorted.
pub fn doc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files.insert(0, repo().join("README.md"));
    files
}

/// The text of `docs/<name>`.
pub fn doc(name: &str) -> String {
    let path: &Path = &repo().join("docs").join(name);
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(1-based line number, line)` of every line outside fenced code blocks
/// (the fence lines themselves excluded).
pub fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// A fenced code block: its info string (`yaml`, `sh`, …), the line its
/// opening fence is on, its text, and the last non-blank line before it.
#[derive(Debug)]
pub struct Block {
    pub lang: String,
    pub line: usize,
    pub text: String,
    pub before: String,
}

/// Every fenced code block of `text`, in order.
pub fn code_blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut before = String::new();
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                open = Some(Block {
                    lang: info.trim().to_owned(),
                    line: i + 1,
                    text: String::new(),
                    before: std::mem::take(&mut before),
                });
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {
                if !line.trim().is_empty() {
                    before = line.to_owned();
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    out
}
