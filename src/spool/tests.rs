use super::*;
use crate::config::{FsyncPolicy, StoragePlan};
use crate::protocol::{Message, QoS};

fn store(dir: &std::path::Path, max_bytes: u64) -> Store {
    Store::open(&StoragePlan {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Batch,
        max_bytes,
    })
    .expect("open store")
}

fn rec(i: u32) -> Record {
    Record {
        msg: Message::new(
            format!("t/{i}"),
            i.to_be_bytes().to_vec(),
            QoS::AtLeastOnce,
            false,
        ),
        received_ms: now_ms(),
        visited: 1,
    }
}

fn open(store: &Store, when_full: WhenFull, max: Option<u64>) -> Spool {
    Spool::open(store, "p", max, when_full, Arc::new(AtomicU64::new(0))).expect("open spool")
}

fn written(a: Appended) -> SpoolSeq {
    match a {
        Appended::Written { seq, .. } => seq,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[tokio::test]
async fn unacknowledged_records_survive_a_reopen_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = store(dir.path(), 1 << 30);
        let sp = open(&s, WhenFull::Block, None);
        for i in 0..10 {
            written(sp.append(&rec(i)).expect("append"));
        }
        s.durable().await.expect("durable");
        let sent: Vec<_> = (0..4)
            .map(|_| sp.next().expect("next").expect("some").0)
            .collect();
        assert_eq!(sent, vec![0, 1, 2, 3]);
        // Acks out of order: 0, 1 and 3; the cursor stops before 2.
        for seq in [1, 0, 3] {
            sp.ack(seq).expect("ack");
        }
        assert_eq!(sp.snapshot(now_ms()).depth, 7);
        assert!(sp.save().expect("save"), "the cursor moved to 2");
        s.sync_now().expect("sync");
    }
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let snap = sp.snapshot(now_ms());
    // 3 was acknowledged but sits behind the unacknowledged 2: sent again
    // (a duplicate of the window in flight), never a gap.
    assert_eq!((snap.depth, snap.recovered, snap.damaged), (8, 8, 0));
    let mut got = Vec::new();
    while let Some((seq, r)) = sp.next().expect("next") {
        assert_eq!(r, rec_at(seq, &r));
        got.push(seq);
    }
    assert_eq!(got, (2..10).collect::<Vec<_>>());
    assert_eq!(written(sp.append(&rec(10)).expect("append")), 10);
}

/// A spool write leaves its block in the engine's journal buffer: no
/// `write` on the forwarding thread (measured: one per dispatcher turn,
/// sometimes over 100 µs, when the keyspace's own insert flushed it).
/// The durability request that precedes any acknowledgement to a source
/// hands it to the OS.
#[tokio::test]
async fn a_spool_write_reaches_the_journal_file_with_the_durability_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let marker = b"spool-record-7d1c";
    let mut r = rec(0);
    r.msg.payload = bytes::Bytes::from_static(marker);
    written(sp.append(&r).expect("append"));
    assert!(
        !crate::store::journal_holds(dir.path(), marker),
        "the append wrote the journal itself"
    );
    s.durable().await.expect("durable");
    assert!(
        crate::store::journal_holds(dir.path(), marker),
        "durable without the block on disk"
    );
}

/// The record `seq` was written from (its received time taken from `r`).
fn rec_at(seq: SpoolSeq, r: &Record) -> Record {
    let mut want = rec(u32::try_from(seq).expect("small"));
    want.received_ms = r.received_ms;
    want
}

#[test]
fn acknowledged_records_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    for i in 0..5 {
        sp.append(&rec(i)).expect("append");
    }
    while let Some((seq, _)) = sp.next().expect("next") {
        sp.ack(seq).expect("ack");
    }
    let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
    assert_eq!(sp.snapshot(now_ms()).bytes, 0, "room is made at once");
    assert_eq!((sp.cursor(), ks.iter().count()), (0, 5), "deleted lazily");
    assert!(sp.unsaved());
    assert!(sp.save().expect("save"));
    assert!(!sp.unsaved() && !sp.save().expect("save again"));
    assert_eq!(ks.iter().count(), 0, "every acknowledged key deleted");
    assert_eq!(sp.cursor(), 5);
}

/// Acknowledgements move the cursor in memory; every `save_every` of them
/// the acknowledged records are deleted and the cursor saved in one batch.
/// A crash (no save) between an acknowledgement and its save sends again
/// only the records acknowledged since the last save (fewer than
/// `save_every`), loses nothing, and never reuses a sequence number.
#[test]
fn acknowledgements_are_saved_in_batches_and_a_crash_resends_only_the_unsaved() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = store(dir.path(), 1 << 30);
        let sp = open(&s, WhenFull::Block, None);
        sp.set_save_every(8);
        for i in 0..20 {
            written(sp.append(&rec(i)).expect("append"));
        }
        let sent: Vec<_> =
            std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
        assert_eq!(sent, (0..20).collect::<Vec<_>>());
        let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
        let acked = sp.ack_many(&(0..7).collect::<Vec<_>>()).expect("ack");
        assert_eq!(
            acked,
            Acked {
                depth: 13,
                unsaved: true
            }
        );
        assert_eq!(
            (sp.cursor(), ks.iter().count()),
            (0, 20),
            "7 < 8: nothing written"
        );
        let acked = sp.ack_many(&[7, 8, 9]).expect("ack");
        assert_eq!(
            acked,
            Acked {
                depth: 10,
                unsaved: false
            }
        );
        assert_eq!(
            (sp.cursor(), ks.iter().count()),
            (10, 10),
            "saved: 0..10 deleted"
        );
        sp.ack_many(&[10, 11, 12, 15]).expect("ack");
        assert_eq!(sp.cursor(), 10);
        assert_eq!(sp.snapshot(now_ms()).depth, 6);
        s.sync_now().expect("sync");
        // Dropped without a save: as after kill -9, the store has the
        // cursor 10 and the records from it.
    }
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
    assert_eq!(
        got,
        (10..20).collect::<Vec<_>>(),
        "10..13 and 15 again (acknowledged, unsaved), 13, 14 and 16..20 (never acknowledged)"
    );
    assert_eq!(
        written(sp.append(&rec(20)).expect("append")),
        20,
        "no sequence number reused"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Any interleaving of writes, sends, acknowledgements (in any order),
    /// saves and crashes (reopen without a save): after each reopen every
    /// record not acknowledged is there, in order; what comes back beyond
    /// those is only records acknowledged at or after the saved cursor —
    /// fewer than `save_every` below the in-memory cursor, the rest
    /// acknowledged out of order behind an unacknowledged one; nothing
    /// below the saved cursor comes back; and a new write never reuses a
    /// sequence number.
    #[test]
    fn a_crash_between_ack_and_save_resends_within_the_window(
        ops in proptest::collection::vec((0u8..10, proptest::prelude::any::<proptest::sample::Index>()), 1..120),
        every in 1u64..12,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = store(dir.path(), 1 << 30);
        let mut sp = open(&s, WhenFull::Block, None);
        sp.set_save_every(every);
        // The model: records on disk not acknowledged, and those acknowledged.
        let mut unacked = std::collections::BTreeSet::new();
        let mut acked = std::collections::BTreeSet::new();
        let mut sent = std::collections::BTreeSet::new();
        let mut high = 0u64;
        for (op, ix) in ops {
            match op {
                0..=3 => {
                    let seq = written(sp.append(&rec(0)).expect("append"));
                    proptest::prop_assert!(seq >= high, "sequence number {} reused", seq);
                    high = seq + 1;
                    unacked.insert(seq);
                }
                4 | 5 => {
                    if let Some((seq, _)) = sp.next().expect("next") {
                        sent.insert(seq);
                    }
                }
                6 | 7 => {
                    let out: Vec<u64> = sent.iter().copied().collect();
                    if out.is_empty() { continue; }
                    let seq = out[ix.index(out.len())];
                    sent.remove(&seq);
                    unacked.remove(&seq);
                    acked.insert(seq);
                    sp.ack(seq).expect("ack");
                }
                8 => { sp.save().expect("save"); }
                _ => {
                    let saved = sp.cursor();
                    let memory = {
                        let st = sp.lock();
                        st.book.cursor()
                    };
                    proptest::prop_assert!(memory - saved < every);
                    s.sync_now().expect("sync");
                    drop(sp);
                    drop(s);
                    s = store(dir.path(), 1 << 30);
                    sp = open(&s, WhenFull::Block, None);
                    sp.set_save_every(every);
                    proptest::prop_assert_eq!(sp.cursor(), saved);
                    let back: Vec<u64> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
                    proptest::prop_assert!(back.windows(2).all(|w| w[0] < w[1]), "in order");
                    for seq in &unacked {
                        proptest::prop_assert!(back.contains(seq), "lost {}", seq);
                    }
                    let again: Vec<u64> = back.iter().copied().filter(|s| !unacked.contains(s)).collect();
                    for seq in &again {
                        proptest::prop_assert!(acked.contains(seq) && *seq >= saved, "{} resurrected", seq);
                    }
                    proptest::prop_assert!((again.iter().filter(|s| **s < memory).count() as u64) < every);
                    // What came back is live again (sent once more); the
                    // destination will acknowledge it again.
                    for seq in again {
                        acked.remove(&seq);
                        unacked.insert(seq);
                    }
                    sp.rewind();
                    sent.clear();
                }
            }
        }
    }
}

#[test]
fn a_full_spool_blocks_or_drops_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let one = record::encode(&rec(0)).len() as u64;
    let sp = open(&s, WhenFull::Block, Some(3 * one));
    for i in 0..3 {
        written(sp.append(&rec(i)).expect("append"));
    }
    assert_eq!(sp.append(&rec(3)).expect("append"), Appended::Full);
    sp.next().expect("next");
    sp.ack(0).expect("ack");
    assert_eq!(written(sp.append(&rec(3)).expect("append")), 3);

    sp.set_limits(Some(3 * one), WhenFull::DropOldest);
    assert_eq!(
        sp.append(&rec(4)).expect("append"),
        Appended::Written { seq: 4, dropped: 1 }
    );
    let left: Vec<_> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
    assert_eq!(left, vec![2, 3, 4], "1 was dropped (0 was acknowledged)");
    assert_eq!(
        sp.append(&Record {
            msg: Message::new("big", vec![0u8; 4 * one as usize], QoS::AtLeastOnce, false),
            received_ms: 0,
            visited: 0
        })
        .expect("append"),
        Appended::Refused { dropped: 3 }
    );
}

#[test]
fn the_store_wide_bound_counts_every_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = record::encode(&rec(0)).len() as u64;
    let s = store(dir.path(), 2 * one);
    let total = Arc::new(AtomicU64::new(0));
    let a = Spool::open(&s, "a", None, WhenFull::Block, total.clone()).expect("a");
    let b = Spool::open(&s, "b", None, WhenFull::Block, total.clone()).expect("b");
    written(a.append(&rec(0)).expect("append"));
    written(b.append(&rec(0)).expect("append"));
    assert_eq!(a.append(&rec(1)).expect("append"), Appended::Full);
    b.next().expect("next");
    b.ack(0).expect("ack");
    written(a.append(&rec(1)).expect("append"));
}

#[test]
fn damaged_records_are_counted_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = store(dir.path(), 1 << 30);
        let sp = open(&s, WhenFull::Block, None);
        for i in 0..3 {
            sp.append(&rec(i)).expect("append");
        }
        let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
        let mut bad = record::encode(&rec(1));
        bad[10] ^= 0xff;
        ks.insert(1u64.to_be_bytes(), bad).expect("insert");
        s.sync_now().expect("sync");
    }
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let snap = sp.snapshot(now_ms());
    assert_eq!((snap.recovered, snap.damaged), (2, 1));
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
    assert_eq!(got, vec![0, 2]);

    // Damage found on read (after open) is skipped the same way.
    let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
    written(sp.append(&rec(3)).expect("append"));
    written(sp.append(&rec(4)).expect("append"));
    sp.rewind();
    ks.insert(3u64.to_be_bytes(), b"garbage".to_vec())
        .expect("insert");
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
    assert_eq!(got, vec![0, 2, 4]);
    assert_eq!(sp.snapshot(now_ms()).damaged, 2);
}

#[test]
fn orphaned_spools_are_listed_and_dropped_explicitly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    sp.append(&rec(0)).expect("append");
    drop(sp);
    assert_eq!(spool_names(&s), vec!["p".to_string()]);
    assert_eq!(inspect(&s).expect("inspect").spools[0].depth, 1);
    assert!(drop_spool(&s, "p").expect("drop"));
    assert!(spool_names(&s).is_empty());
    assert!(!drop_spool(&s, "p").expect("drop again"));
}

#[test]
fn the_newest_records_come_from_the_cache_older_ones_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    sp.set_cache_records(3);
    for i in 0..10 {
        written(sp.append(&rec(i)).expect("append"));
    }
    // Damage the disk copies of one old record (evicted from the cache)
    // and one of the newest three (cached): only the old one is skipped,
    // so the cache holds the newest records and disk serves the rest.
    let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
    ks.insert(2u64.to_be_bytes(), b"garbage".to_vec())
        .expect("insert");
    ks.insert(8u64.to_be_bytes(), b"garbage".to_vec())
        .expect("insert");
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next")).collect();
    let seqs: Vec<_> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![0, 1, 3, 4, 5, 6, 7, 8, 9]);
    for (seq, r) in &got {
        assert_eq!(r.msg.topic.as_ref(), format!("t/{seq}"), "record {seq}");
    }
    assert_eq!(sp.snapshot(now_ms()).damaged, 1);

    // A rewind sends everything live again, from disk: the cached copies
    // were handed out.
    sp.rewind();
    let again: Vec<_> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
    assert_eq!(again, vec![0, 1, 3, 4, 5, 6, 7, 9]);
}

/// Appends `n` records starting at `rec(from)` as one block.
fn append_block(sp: &Spool, from: u32, n: u32) -> Vec<SpoolSeq> {
    let mut w = sp.writer();
    let seqs = (from..from + n)
        .map(|i| written(w.append(rec(i)).expect("append")))
        .collect();
    w.commit().expect("commit");
    seqs
}

/// A block is one store entry; it is deleted once the cursor passed all of
/// its records, and after a crash the records of a block the saved cursor
/// cuts through are sent again from the cursor on, none before it.
#[tokio::test]
async fn a_block_is_one_entry_deleted_once_wholly_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = store(dir.path(), 1 << 30);
        let sp = open(&s, WhenFull::Block, None);
        assert_eq!(append_block(&sp, 0, 4), vec![0, 1, 2, 3]);
        assert_eq!(append_block(&sp, 4, 3), vec![4, 5, 6]);
        s.durable().await.expect("durable");
        let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
        assert_eq!(ks.iter().count(), 2, "two blocks, two entries");
        for _ in 0..5 {
            let (seq, _) = sp.next().expect("next").expect("some");
            sp.ack(seq).expect("ack");
        }
        assert!(sp.save().expect("save"));
        assert_eq!(sp.cursor(), 5);
        assert_eq!(
            ks.iter().count(),
            1,
            "the first block is gone, the second is cut"
        );
        s.sync_now().expect("sync");
    }
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let snap = sp.snapshot(now_ms());
    assert_eq!((snap.recovered, snap.damaged, snap.depth), (2, 0, 2));
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next")).collect();
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 6]);
    for (seq, r) in &got {
        assert_eq!(r, &rec_at(*seq, r));
    }
    assert_eq!(
        append_block(&sp, 7, 1),
        vec![7],
        "numbers go on after the block"
    );
}

/// Damage inside a block costs only the records it touches; a cut length
/// loses the rest of that block (counted), never a neighbour, and the
/// numbers of lost records are not issued again.
#[test]
fn damage_inside_a_block_stays_inside_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = store(dir.path(), 1 << 30);
        let sp = open(&s, WhenFull::Block, None);
        append_block(&sp, 0, 3);
        append_block(&sp, 3, 3);
        append_block(&sp, 6, 2);
        let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
        // Block 0: flip a bit in its second record.
        let mut b0 = record::Block::new();
        let mut bad = record::encode(&rec(1));
        bad[10] ^= 0x40;
        for r in [record::encode(&rec(0)), bad, record::encode(&rec(2))] {
            b0.push(&r);
        }
        ks.insert(0u64.to_be_bytes(), b0.finish()).expect("insert");
        // Block 6 (the last): cut inside its second record.
        let mut b6 = record::Block::new();
        b6.push(&record::encode(&rec(6)));
        b6.push(&record::encode(&rec(7)));
        let b6 = b6.finish();
        ks.insert(6u64.to_be_bytes(), b6[..b6.len() - 4].to_vec())
            .expect("insert");
        s.sync_now().expect("sync");
    }
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let snap = sp.snapshot(now_ms());
    assert_eq!((snap.recovered, snap.damaged), (6, 2));
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next").map(|(s, _)| s)).collect();
    assert_eq!(got, vec![0, 2, 3, 4, 5, 6]);
    assert_eq!(append_block(&sp, 8, 1), vec![8], "7 is not issued again");
}

#[test]
fn a_backlog_is_read_back_one_block_at_a_time_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    sp.set_cache_records(2);
    append_block(&sp, 0, 5);
    append_block(&sp, 5, 5);
    let got: Vec<_> = std::iter::from_fn(|| sp.next().expect("next")).collect();
    assert_eq!(got.len(), 10);
    for (i, (seq, r)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(r, &rec_at(*seq, r));
    }
}

/// A key far ahead of the records before it (damage, or a hostile file) is
/// counted and removed, not taken as a record: every sequence number up to
/// it would take memory.
#[test]
fn a_key_far_ahead_is_damage_not_a_gap_to_fill() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = store(dir.path(), 1 << 30);
        let sp = open(&s, WhenFull::Block, None);
        append_block(&sp, 0, 2);
        let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
        let mut far = record::Block::new();
        far.push(&record::encode(&rec(9)));
        ks.insert((1u64 << 40).to_be_bytes(), far.finish())
            .expect("insert");
        s.sync_now().expect("sync");
    }
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    let snap = sp.snapshot(now_ms());
    assert_eq!((snap.recovered, snap.damaged), (2, 1));
    assert_eq!(
        append_block(&sp, 2, 1),
        vec![2],
        "numbering goes on densely"
    );
    let ks = s.keyspace(&keyspace_name("p")).expect("keyspace");
    assert_eq!(ks.iter().count(), 2, "the far key is removed");
}

/// The caches of all the spools of a store share one bound: a spool whose
/// append passes it evicts its own oldest records (they are read back from
/// disk), and a spool that goes gives its share back.
#[test]
fn the_spools_of_a_store_share_one_cache_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let total = Arc::new(AtomicU64::new(0));
    let a = Spool::open(&s, "a", None, WhenFull::Block, total.clone()).expect("open a");
    let b = Spool::open(&s, "b", None, WhenFull::Block, total).expect("open b");
    let n = record::encode(&rec(0)).len() as u64;
    for sp in [&a, &b] {
        sp.set_store_cache_bytes(3 * n);
    }
    append_block(&a, 0, 3);
    assert_eq!(
        s.cached().load(Ordering::Relaxed),
        3 * n,
        "a's three records"
    );
    append_block(&b, 0, 3);
    assert_eq!(
        s.cached().load(Ordering::Relaxed),
        3 * n,
        "b evicted its own records to stay within the store's bound"
    );
    // b's records come from disk, whole and in order.
    let got: Vec<_> = std::iter::from_fn(|| b.next().expect("next")).collect();
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for (seq, r) in &got {
        assert_eq!(r, &rec_at(*seq, r));
    }
    drop(a);
    assert_eq!(
        s.cached().load(Ordering::Relaxed),
        0,
        "a gave its share back"
    );
}

/// A writer dropped without its commit takes nothing: no live record
/// without data, and the numbers are issued again.
#[test]
fn a_writer_dropped_without_a_commit_takes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), 1 << 30);
    let sp = open(&s, WhenFull::Block, None);
    {
        let mut w = sp.writer();
        written(w.append(rec(0)).expect("append"));
        written(w.append(rec(1)).expect("append"));
    }
    let snap = sp.snapshot(now_ms());
    assert_eq!((snap.depth, snap.bytes), (0, 0));
    assert!(sp.next().expect("next").is_none());
    assert_eq!(
        append_block(&sp, 0, 1),
        vec![0],
        "the numbers are issued again"
    );
}
