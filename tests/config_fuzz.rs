//! The config compiler is fed hostile input: mutated versions of every shipped
//! config must produce a plan or errors, never a panic.

use mqbridge::config::{self, LoadOptions};
use proptest::prelude::*;

fn seeds() -> Vec<String> {
    let mut files = vec!["bridges.yaml".to_string()];
    for dir in ["examples", "tests/config/valid", "tests/config/invalid"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    files.push(p.display().to_string());
                }
            }
        }
    }
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// One edit: (kind, position, length, inserted text).
fn edit() -> impl Strategy<Value = (u8, usize, usize, String)> {
    (
        0u8..4,
        any::<usize>(),
        0usize..12,
        "[a-z0-9#+/${}:\\-\\[\\] \n'\"&*!|>]{0,12}",
    )
}

fn apply(text: &str, (kind, pos, len, ins): &(u8, usize, usize, String)) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let at = if n == 0 { 0 } else { pos % (n + 1) };
    let end = (at + len).min(n);
    let mut out: Vec<char> = Vec::with_capacity(n + ins.len());
    match kind {
        0 => {
            // delete a range
            out.extend(&chars[..at]);
            out.extend(&chars[end..]);
        }
        1 => {
            // insert text
            out.extend(&chars[..at]);
            out.extend(ins.chars());
            out.extend(&chars[at..]);
        }
        2 => {
            // replace a range
            out.extend(&chars[..at]);
            out.extend(ins.chars());
            out.extend(&chars[end..]);
        }
        _ => {
            // duplicate a range (duplicate keys, repeated list items)
            out.extend(&chars[..end]);
            out.extend(&chars[at..]);
        }
    }
    out.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compile_never_panics_on_mutated_configs(seed in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let seeds = seeds();
        prop_assume!(!seeds.is_empty());
        let mut text = seed.get(&seeds).clone();
        for e in &edits {
            text = apply(&text, e);
        }
        let vars = |name: &str| if name.len().is_multiple_of(2) { Some(format!("v-{name}")) } else { None };
        let opts = LoadOptions { vars: &vars };
        match config::load_str_with(&text, "tests/config/fuzz.yaml", &opts) {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.errors.is_empty()),
        }
    }
}
