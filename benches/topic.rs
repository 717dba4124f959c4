//! Topic lookups per second against 10,000 realistic filters.
//!
//! Run: `cargo bench --bench topic`. divan reports `itms/s`: one item is one
//! topic lookup (all matching values visited), on one thread.

use divan::{Bencher, black_box, counter::ItemsCount};
use mqbridge::topic::{FilterTrie, matches};

fn main() {
    let trie = build();
    let topics = topics();
    let matched = topics
        .iter()
        .filter(|t| !trie.matches(t).is_empty())
        .count();
    eprintln!(
        "{} filters; {matched} of {} topics match at least one",
        trie.len(),
        topics.len()
    );
    divan::main();
}

/// 10,000 filters: exact, `+` and `#` ones, as a fleet of sites would have.
fn filters() -> Vec<String> {
    let mut f = Vec::with_capacity(10_000);
    for n in 0..4_000 {
        f.push(format!("site/{n}/sensor/+/temp"));
    }
    for n in 0..3_000 {
        f.push(format!("site/{n}/sensor/{}/humidity", n % 17));
    }
    for n in 0..2_000 {
        f.push(format!("fleet/{n}/#"));
    }
    for n in 0..500 {
        f.push(format!("+/status/{n}"));
    }
    for n in 0..499 {
        f.push(format!("building/{n}/floor/+/room/+/#"));
    }
    f.push("$SYS/broker/#".to_owned());
    assert_eq!(f.len(), 10_000);
    f
}

/// 1,024 topics, about 60% of them matching at least one filter.
fn topics() -> Vec<String> {
    (0..1_024u32)
        .map(|i| {
            let n = i.wrapping_mul(2_654_435_761) % 5_000; // spread, some past the filters
            match i % 8 {
                0 => format!("site/{n}/sensor/{}/temp", i % 13),
                1 => format!("site/{n}/sensor/{}/humidity", n % 17),
                2 => format!("fleet/{n}/gps/lat"),
                3 => format!("fleet/{n}"),
                4 => format!("edge{}/status/{}", i % 7, n % 600),
                5 => format!("building/{}/floor/{}/room/{}/co2", n % 600, i % 9, i % 31),
                6 => format!("site/{n}/camera/{}/frame", i % 5),
                _ => format!("$SYS/broker/clients/{i}"),
            }
        })
        .collect()
}

fn build() -> FilterTrie<u32> {
    let mut trie = FilterTrie::new();
    for (i, f) in filters().iter().enumerate() {
        trie.insert(f, i as u32);
    }
    trie
}

#[divan::bench]
fn trie_lookup(bencher: Bencher) {
    let trie = build();
    let topics = topics();
    bencher.counter(ItemsCount::new(topics.len())).bench(|| {
        let mut hits = 0u32;
        for t in &topics {
            trie.for_each_match(black_box(t), |_, v| hits = hits.wrapping_add(*v));
        }
        hits
    });
}

#[divan::bench]
fn trie_lookup_vec(bencher: Bencher) {
    let trie = build();
    let topics = topics();
    bencher.counter(ItemsCount::new(topics.len())).bench(|| {
        topics
            .iter()
            .map(|t| trie.matches(black_box(t)).len())
            .sum::<usize>()
    });
}

/// For contrast: checking every filter with `matches`, on 16 topics.
#[divan::bench(sample_count = 20)]
fn linear_scan(bencher: Bencher) {
    let filters = filters();
    let topics: Vec<String> = topics().into_iter().take(16).collect();
    bencher.counter(ItemsCount::new(topics.len())).bench(|| {
        let mut hits = 0usize;
        for t in &topics {
            hits += filters.iter().filter(|f| matches(f, black_box(t))).count();
        }
        hits
    });
}
