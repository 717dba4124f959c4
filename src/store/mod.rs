//! The local store: one embedded database in `storage.dir` for every pipe's
//! spool and the built-in brokers' persistent state.
//!
//! The engine is [`fjall`] (a log-structured key-value store: a checksummed
//! journal that recovers to its last whole batch after a crash, keyspaces
//! written atomically together, deleted ranges given back by compaction).
//! This module adds what the bridge needs on top: the `storage.fsync` policy
//! and *group commit* — [`Store::durable`] resolves once a journal sync that
//! started after the call has finished, so many writers share one `fsync`.
//!
//! Writes themselves are synchronous and short (they append to the journal's
//! buffer); callers on the runtime may call them directly. Only the sync
//! blocks, and it runs on the store's own thread — without holding the
//! engine's journal lock ([`JournalSync`]), so writes go on while it waits
//! for the disk.

pub(crate) mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{FsyncPolicy, StoragePlan};

pub use fjall::{Keyspace, KeyspaceCreateOptions, OwnedWriteBatch};

/// Why the store could not be opened or a write could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {dir}: {reason}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// Another process has the store open (a running bridge, or a
    /// `mqbridge spool` reading it).
    #[error(
        "the store in {dir} is in use by another process (a running bridge, or `mqbridge spool` reading it)"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The database could not be opened (damaged beyond its journal's tail,
    /// unreadable).
    #[error("cannot open the store in {dir}: {reason}")]
    Open {
        /// The directory.
        dir: PathBuf,
        /// The engine's reason.
        reason: String,
    },
    /// A read, write or sync failed (e.g. disk full, I/O error).
    #[error("store I/O failed: {0}")]
    Io(String),
    /// The store was closed (the process is stopping).
    #[error("store closed")]
    Closed,
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Samples of the journal syncs, for the metrics layer to read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncSample {
    /// Syncs done since open.
    pub syncs: u64,
    /// How long the last sync took.
    pub last: Duration,
}

/// A handle to the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("fsync", &self.inner.fsync)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: fjall::Database,
    dir: PathBuf,
    fsync: FsyncPolicy,
    max_bytes: u64,
    /// Bytes counted against `max_bytes`: every spool's records and the
    /// built-in brokers' stored messages.
    used: Arc<AtomicU64>,
    /// Bytes of records the spools keep in memory beside the store (their
    /// caches), over every spool of this store.
    cached: AtomicU64,
    sync: Arc<Syncer>,
    /// The sync thread; joined on drop of the last handle.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.sync.close();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        // A last sync for what `never`/interval left in the buffer.
        let _ = self.db.persist(fjall::PersistMode::SyncAll);
    }
}

impl Store {
    /// Opens (creating if needed) the store described by `plan`. Recovery of
    /// the journal happens here: a torn last batch is dropped.
    pub fn open(plan: &StoragePlan) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&plan.dir).map_err(|e| StoreError::CreateDir {
            dir: plan.dir.clone(),
            reason: e.to_string(),
        })?;
        let db = fjall::Database::builder(&plan.dir)
            .manual_journal_persist(true)
            // The journal is the write path of every QoS 1/2 message: spent
            // on LZ4 (fjall's default for values of 4 KiB and more, as a
            // spool's blocks are) its CPU is taken from forwarding, while a
            // sequential journal at these rates is far from disk bound.
            // Tables keep fjall's block compression.
            .journal_compression(fjall::CompressionType::None)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StoreError::Locked {
                    dir: plan.dir.clone(),
                },
                e => StoreError::Open {
                    dir: plan.dir.clone(),
                    reason: e.to_string(),
                },
            })?;
        let sync = Arc::new(Syncer::new());
        let thread = {
            let (db, sync, fsync) = (db.clone(), sync.clone(), plan.fsync);
            let journal = JournalSync::new(&plan.dir);
            std::thread::Builder::new()
                .name("mqbridge-store-sync".into())
                .spawn(move || sync.run(&db, journal, fsync))
                .map_err(|e| StoreError::Open {
                    dir: plan.dir.clone(),
                    reason: format!("cannot start the sync thread: {e}"),
                })?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                dir: plan.dir.clone(),
                fsync: plan.fsync,
                max_bytes: plan.max_bytes,
                used: Arc::new(AtomicU64::new(0)),
                cached: AtomicU64::new(0),
                sync,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// [`Store::open`], waiting up to `wait` while another process holds
    /// the store (a `mqbridge spool` reads it for a moment: a bridge
    /// starting meanwhile waits instead of failing).
    pub async fn open_waiting(plan: &StoragePlan, wait: Duration) -> Result<Store, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Store::open(plan) {
                Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configured fsync policy.
    pub fn fsync(&self) -> FsyncPolicy {
        self.inner.fsync
    }

    /// `storage.max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// The bytes counted against `storage.max_bytes` (spool records and
    /// brokers' stored messages), shared by every writer of this store.
    pub fn used(&self) -> &Arc<AtomicU64> {
        &self.inner.used
    }

    /// The bytes every spool of this store keeps in its cache in memory.
    pub fn cached(&self) -> &AtomicU64 {
        &self.inner.cached
    }

    /// Whether `n` more bytes would pass `storage.max_bytes`.
    pub fn would_overflow(&self, n: u64) -> bool {
        self.inner.used.load(Ordering::Relaxed).saturating_add(n) > self.inner.max_bytes
    }

    /// The underlying database (for batches across keyspaces).
    pub fn db(&self) -> &fjall::Database {
        &self.inner.db
    }

    /// Writes `key → value` into `ks` for the next [`Store::durable`]. Not
    /// `Keyspace::insert`: that hands the journal to the OS (a `write` under
    /// the journal's lock, on the caller's thread — the forwarding thread)
    /// on every call unless the keyspace was created with manual
    /// persistence, a setting stored with each keyspace; a batch follows
    /// the database's (manual) setting, and the next durability request
    /// hands the journal over.
    pub fn insert(&self, ks: &Keyspace, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let mut batch = self.inner.db.batch();
        batch.insert(ks, key, value);
        Ok(batch.commit()?)
    }

    /// Deletes `key` from `ks`, as [`Store::insert`] writes.
    pub fn remove(&self, ks: &Keyspace, key: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.inner.db.batch();
        batch.remove(ks, key);
        Ok(batch.commit()?)
    }

    /// Opens (creating if needed) the keyspace `name`.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, StoreError> {
        Ok(self
            .inner
            .db
            .keyspace(name, KeyspaceCreateOptions::default)?)
    }

    /// The names of the keyspaces that exist (e.g. to find orphaned spools).
    pub fn keyspace_names(&self) -> Vec<String> {
        self.inner
            .db
            .list_keyspace_names()
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// Resolves once everything written before the call is as durable as
    /// the fsync policy promises: with `batch`, on disk (one sync serves
    /// every caller waiting at the time: group commit); with an interval or
    /// `never`, handed to the operating system at once (a process crash
    /// loses nothing, a power loss may).
    pub async fn durable(&self) -> Result<(), StoreError> {
        match self.inner.fsync {
            FsyncPolicy::Batch => {
                let (ticket, mut done) = self.inner.sync.request();
                let outcome = done
                    .wait_for(|d| d.through >= ticket || d.closed)
                    .await
                    .map_err(|_| StoreError::Closed)?;
                if outcome.through < ticket {
                    return Err(StoreError::Closed);
                }
                match &outcome.failed {
                    Some((through, err)) if *through >= ticket => Err(StoreError::Io(err.clone())),
                    _ => Ok(()),
                }
            }
            // Handed to the OS (a write, no fsync): a crash of this
            // process then loses nothing; a power loss may.
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                Ok(self.inner.db.persist(fjall::PersistMode::Buffer)?)
            }
        }
    }

    /// Syncs the journal now, on the caller's thread (blocking).
    pub fn sync_now(&self) -> Result<(), StoreError> {
        Ok(self.inner.db.persist(fjall::PersistMode::SyncAll)?)
    }

    /// Syncs done and the last one's duration.
    pub fn sync_sample(&self) -> SyncSample {
        *self
            .inner
            .sync
            .sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the sync thread has finished.
#[derive(Debug, Clone, Default)]
struct Done {
    /// Every ticket up to this one is on disk.
    through: u64,
    /// The last failed sync: tickets up to `.0` failed with `.1`.
    failed: Option<(u64, String)>,
    /// The thread stopped.
    closed: bool,
}

/// Group commit: callers take increasing tickets; the thread syncs once for
/// every ticket taken before the sync started.
struct Syncer {
    /// (last ticket handed out, closing)
    requested: Mutex<(u64, bool)>,
    wake: Condvar,
    done: watch::Sender<Done>,
    sample: Mutex<SyncSample>,
}

impl Syncer {
    fn new() -> Self {
        Syncer {
            requested: Mutex::new((0, false)),
            wake: Condvar::new(),
            done: watch::channel(Done::default()).0,
            sample: Mutex::new(SyncSample::default()),
        }
    }

    fn request(&self) -> (u64, watch::Receiver<Done>) {
        // Subscribe before taking the ticket so the completion is not missed.
        let rx = self.done.subscribe();
        let mut r = self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        r.0 += 1;
        let ticket = r.0;
        drop(r);
        self.wake.notify_one();
        (ticket, rx)
    }

    fn close(&self) {
        self.requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = true;
        self.wake.notify_one();
    }

    /// The sync thread: for `batch`, syncs whenever tickets are waiting; for
    /// an interval, syncs on that period; for `never`, only waits to close.
    fn run(&self, db: &fjall::Database, mut journal: JournalSync, policy: FsyncPolicy) {
        let period = match policy {
            FsyncPolicy::Interval(d) => Some(d),
            FsyncPolicy::Batch | FsyncPolicy::Never => None,
        };
        loop {
            let target = {
                let mut r = self
                    .requested
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let through = self.done.borrow().through;
                loop {
                    if r.1 {
                        self.done.send_modify(|d| d.closed = true);
                        return;
                    }
                    if r.0 > through {
                        break;
                    }
                    match period {
                        Some(p) => {
                            let (guard, timeout) = self
                                .wake
                                .wait_timeout(r, p)
                                .unwrap_or_else(PoisonError::into_inner);
                            r = guard;
                            if timeout.timed_out() {
                                break;
                            }
                        }
                        None => {
                            r = self.wake.wait(r).unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
                r.0
            };
            if matches!(policy, FsyncPolicy::Never) && target == self.done.borrow().through {
                continue;
            }
            let started = Instant::now();
            let result = journal.sync(db);
            {
                let mut s = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
                s.syncs += 1;
                s.last = started.elapsed();
            }
            self.done.send_modify(|d| {
                if let Err(e) = &result {
                    d.failed = Some((target, e.clone()));
                }
                d.through = d.through.max(target);
            });
        }
    }
}

/// Makes the engine's journal durable without holding its lock for the
/// `fsync`: fjall's own `persist(SyncAll)` syncs under the journal writer's
/// mutex, so every write on the runtime (a spool append, a session record)
/// waited for the disk (measured: QoS 1 p50 at 5,000 msg/s 5.9 ms with
/// `fsync: batch` against 0.9 ms with `never`). Here the engine only hands
/// its buffer to the OS under the lock (`PersistMode::Buffer`, a `write`),
/// and the `fsync` goes through our own handle on the active journal file.
/// Sound because fsync works on the file, not the handle, and because the
/// engine syncs a journal itself before it rotates to the next one: what
/// the buffer flush wrote is on disk once either the rotation's sync or
/// ours has returned. Where the active journal cannot be found (a layout
/// this code does not know), the engine's own sync is used.
struct JournalSync {
    dir: PathBuf,
    /// The active journal (the highest-numbered `N.jnl`) and our handle on it.
    open: Option<(u64, std::fs::File)>,
}

impl JournalSync {
    fn new(dir: &Path) -> Self {
        JournalSync {
            dir: dir.to_path_buf(),
            open: None,
        }
    }

    /// The number of the newest journal file in the data directory.
    fn active(&self) -> Option<u64> {
        std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok()
            })
            .max()
    }

    /// Makes everything written before the call durable.
    fn sync(&mut self, db: &fjall::Database) -> Result<(), String> {
        db.persist(fjall::PersistMode::Buffer)
            .map_err(|e| e.to_string())?;
        match self.active_file() {
            // fjall preallocates its journal, so the file's size rarely
            // changes: `fdatasync` skips the inode's times (and still
            // writes the size when it did change).
            Some(file) => file.sync_data().map_err(|e| e.to_string()),
            // A layout this code does not know: the engine's own sync.
            None => db
                .persist(fjall::PersistMode::SyncAll)
                .map_err(|e| e.to_string()),
        }
    }

    /// Our handle on the active journal, opened again when it changed. The
    /// directory is listed only when the journal after ours appeared (one
    /// `stat` per sync instead of a listing).
    fn active_file(&mut self) -> Option<&std::fs::File> {
        if let Some((id, _)) = &self.open
            && !self.dir.join(format!("{}.jnl", id + 1)).exists()
        {
            return self.open.as_ref().map(|(_, file)| file);
        }
        let id = self.active()?;
        if self.open.as_ref().is_none_or(|(open, _)| *open != id) {
            let path = self.dir.join(format!("{id}.jnl"));
            self.open = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .ok()
                .map(|file| (id, file));
        }
        self.open.as_ref().map(|(_, file)| file)
    }
}

#[cfg(test)]
/// Whether any journal file in `dir` holds `needle` (read from disk,
/// not from the engine's buffers).
pub(crate) fn journal_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .any(|p| {
            std::fs::read(&p)
                .expect("read journal")
                .windows(needle.len())
                .any(|w| w == needle)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path, fsync: FsyncPolicy) -> StoragePlan {
        StoragePlan {
            dir: dir.to_path_buf(),
            fsync,
            max_bytes: 1 << 20,
        }
    }

    /// `Store::insert`/`remove` leave the journal with the engine until a
    /// durability request (no `write` on the caller's thread), whatever
    /// the policy; the request hands it to the OS, and a reopen finds it.
    #[tokio::test]
    async fn writes_reach_the_journal_file_with_the_durability_request() {
        for fsync in [FsyncPolicy::Batch, FsyncPolicy::Never] {
            let dir = tempfile::tempdir().expect("tempdir");
            {
                let store = Store::open(&plan(dir.path(), fsync)).expect("open");
                let ks = store.keyspace("t").expect("keyspace");
                store
                    .insert(&ks, b"put-key-5e1", b"put-value-5e1".to_vec())
                    .expect("insert");
                store.remove(&ks, b"removed-key-9c2").expect("remove");
                for needle in [&b"put-value-5e1"[..], b"removed-key-9c2"] {
                    assert!(
                        !journal_holds(dir.path(), needle),
                        "{fsync:?}: written at once"
                    );
                }
                store.durable().await.expect("durable");
                for needle in [&b"put-value-5e1"[..], b"removed-key-9c2"] {
                    assert!(
                        journal_holds(dir.path(), needle),
                        "{fsync:?}: durable without it"
                    );
                }
            }
            let store = Store::open(&plan(dir.path(), fsync)).expect("reopen");
            let ks = store.keyspace("t").expect("keyspace");
            assert_eq!(
                ks.get(b"put-key-5e1").expect("get").as_deref(),
                Some(&b"put-value-5e1"[..])
            );
        }
    }

    #[tokio::test]
    async fn written_and_made_durable_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(&plan(dir.path(), FsyncPolicy::Batch)).expect("open");
            let ks = store.keyspace("t").expect("keyspace");
            ks.insert(1u64.to_be_bytes(), b"one").expect("insert");
            store.durable().await.expect("durable");
            assert!(store.sync_sample().syncs >= 1);
        }
        let store = Store::open(&plan(dir.path(), FsyncPolicy::Batch)).expect("reopen");
        let ks = store.keyspace("t").expect("keyspace");
        assert_eq!(
            ks.get(1u64.to_be_bytes()).expect("get").as_deref(),
            Some(&b"one"[..])
        );
        assert!(store.keyspace_names().iter().any(|n| n == "t"));
    }

    /// The sync goes through our own handle on the engine's active journal:
    /// if an engine upgrade moves or renames its journal, this fails rather
    /// than the store quietly falling back to syncing under the lock.
    #[test]
    fn the_sync_finds_the_engines_active_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&plan(dir.path(), FsyncPolicy::Never)).expect("open");
        let ks = store.keyspace("t").expect("keyspace");
        ks.insert(1u64.to_be_bytes(), b"one").expect("insert");
        let mut journal = JournalSync::new(dir.path());
        assert_eq!(journal.active(), Some(0), "journal 0.jnl in the data dir");
        journal.sync(&store.inner.db).expect("sync");
        assert!(
            matches!(journal.open, Some((0, _))),
            "synced through our handle on 0.jnl"
        );
        // Kept while no newer journal appears; followed once one does.
        journal.sync(&store.inner.db).expect("sync again");
        assert!(matches!(journal.open, Some((0, _))));
        std::fs::write(dir.path().join("1.jnl"), b"").expect("a newer journal");
        journal
            .sync(&store.inner.db)
            .expect("sync after a rotation");
        assert!(
            matches!(journal.open, Some((1, _))),
            "follows the engine to 1.jnl"
        );
    }

    #[tokio::test]
    async fn many_waiters_share_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&plan(dir.path(), FsyncPolicy::Batch)).expect("open");
        let ks = store.keyspace("t").expect("keyspace");
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            ks.insert(i.to_be_bytes(), b"x").expect("insert");
            let s = store.clone();
            tasks.push(tokio::spawn(async move { s.durable().await }));
        }
        for t in tasks {
            t.await.expect("join").expect("durable");
        }
        let syncs = store.sync_sample().syncs;
        assert!((1..=200).contains(&syncs), "{syncs} syncs");
    }

    #[tokio::test]
    async fn interval_and_never_do_not_wait() {
        for policy in [
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(5)),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(&plan(dir.path(), policy)).expect("open");
            store.durable().await.expect("durable");
        }
    }

    #[test]
    fn a_second_process_cannot_open_a_locked_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = Store::open(&plan(dir.path(), FsyncPolicy::Batch)).expect("open");
        match Store::open(&plan(dir.path(), FsyncPolicy::Batch)) {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("expected a lock error, got {other:?}"),
        }
    }

    /// A bridge starting while `mqbridge spool` reads the store waits for
    /// it instead of failing; a store held longer than the wait is an error.
    #[tokio::test]
    async fn opening_waits_for_a_short_lived_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let holder = Store::open(&plan(dir.path(), FsyncPolicy::Batch)).expect("open");
        let p = plan(dir.path(), FsyncPolicy::Batch);
        match Store::open_waiting(&p, Duration::from_millis(150)).await {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("expected a lock error, got {other:?}"),
        }
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(holder);
        });
        let store = Store::open_waiting(&p, Duration::from_secs(10)).await;
        assert!(store.is_ok(), "{store:?}");
        release.await.expect("release");
    }
}
