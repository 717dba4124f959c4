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
    assert_eq!(ks.iter().count(), 0, "every acknowledged key deleted");
    assert_eq!(sp.snapshot(now_ms()).bytes, 0);
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
