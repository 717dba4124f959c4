//! The per-pipe disk spool (store-and-forward).
//!
//! Each pipe in `delivery: spool` mode has one keyspace `spool.<pipe>` in the
//! [`Store`]. The records one dispatcher turn took for the pipe are written
//! as one *block* ([`record::Block`], each record with its own CRC), keyed by
//! the big-endian sequence number of its first record (so key order is
//! arrival order): under load one store write carries many messages. The
//! acknowledged cursor lives in the `spool-meta` keyspace.
//!
//! An acknowledgement moves the cursor in memory only; the blocks it passed
//! are deleted, and the cursor saved, lazily: in one write batch (one
//! tombstone per block, the cursor, a hand-over of the journal to the
//! operating system) once [`SAVE_EVERY`] records are acknowledged, and by
//! the pipe's acker within [`SAVE_AFTER`] of an unsaved acknowledgement.
//! After a crash the spool resumes at the *saved* cursor: the records
//! acknowledged since it was saved are sent again, bounded by those two
//! numbers (see `docs/delivery.md`, the duplicate window). The byte bounds
//! count live records only, so an acknowledgement makes room at once.
//!
//! [`book`] is the pure bookkeeping; this module does the disk side, keeps a
//! bounded cache of the newest records so a spool that keeps up never reads
//! back from disk, and enforces the byte bounds (`spool.max_bytes` per pipe,
//! `storage.max_bytes` over every spool in the store).

pub(crate) mod book;
pub(crate) mod record;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::{Keyspace, Store, StoreError};

pub use crate::metrics::spool::{SpoolReport, SpoolRow, StoreRow};

pub use book::{Book, SpoolSeq};
pub use record::{Record, RecordError};

/// Prefix of a spool's keyspace name; the pipe's name follows.
pub const KEYSPACE_PREFIX: &str = "spool.";
/// The keyspace holding every spool's acknowledged cursor (key: pipe name).
pub const META_KEYSPACE: &str = "spool-meta";
/// The newest records are kept in memory as well as on disk, per spool, up
/// to this many encoded bytes (and [`CACHE_RECORDS`], and
/// [`STORE_CACHE_BYTES`] over every spool of the store): a spool that keeps
/// up, or a burst that fits, is forwarded from this cache; older records of
/// a backlog are read back from disk.
const CACHE_BYTES: u64 = 8 << 20;
/// See [`CACHE_BYTES`]: the bound over all the spools of a store, so many
/// pipes do not multiply the memory a burst takes.
const STORE_CACHE_BYTES: u64 = 32 << 20;
/// See [`CACHE_BYTES`].
const CACHE_RECORDS: usize = 65_536;
/// Acknowledged records deleted (and the cursor saved) in one batch: at most
/// this many acknowledged records are sent again after a crash, beyond the
/// window in flight.
pub const SAVE_EVERY: u64 = 256;
/// How long the acker lets an acknowledgement stay unsaved before it saves
/// the cursor ([`Spool::save`]) whatever the count.
pub const SAVE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// The sequence numbers a recovery accepts between blocks, over the whole
/// spool (blocks follow each other; a gap is only a block found damaged
/// and removed at an earlier start). Every number from the cursor to the
/// head takes a slot in memory, so a damaged key far ahead must not.
const MAX_GAPS: u64 = 1 << 20;

/// What a full spool does with the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Take nothing more (the pipe withholds the source's acknowledgements,
    /// so the source keeps the backlog).
    #[default]
    Block,
    /// Drop the oldest records until the new one fits (counted as dropped
    /// `spool_full`).
    DropOldest,
}

/// Why a spool operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The store failed (I/O error, disk full at the OS level).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipe's name cannot name a keyspace.
    #[error("pipe name `{0}` cannot name a spool")]
    Name(String),
}

impl From<fjall::Error> for SpoolError {
    fn from(e: fjall::Error) -> Self {
        SpoolError::Store(e.into())
    }
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written with this sequence number, after dropping `dropped` old
    /// records to make room.
    Written {
        /// The record's sequence number.
        seq: SpoolSeq,
        /// Old records dropped for it (`drop_oldest`).
        dropped: u64,
    },
    /// Full and `block`: nothing written; try again after acks.
    Full,
    /// Larger than the bound itself, or full with nothing left to drop:
    /// the message is dropped (counted as `spool_full`).
    Refused {
        /// Old records dropped before giving up.
        dropped: u64,
    },
}

/// What [`Spool::ack_many`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Records written and not acknowledged.
    pub depth: u64,
    /// Whether acknowledgements wait to be saved ([`Spool::save`]).
    pub unsaved: bool,
}

/// A spool's numbers, for metrics, `/spool.json` and `mqbridge spool`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpoolSnapshot {
    /// Records written and not acknowledged by the destination.
    pub depth: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Age of the oldest one, in seconds (0 when empty).
    pub oldest_age_seconds: f64,
    /// The pipe's bound (`spool.max_bytes`, else `storage.max_bytes`).
    pub max_bytes: u64,
    /// Records found intact at open.
    pub recovered: u64,
    /// Records found damaged (at open or on read) and skipped.
    pub damaged: u64,
}

/// The milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug)]
struct State {
    book: Book,
    /// `spool.max_bytes`; `None`: only `storage.max_bytes`.
    max_bytes: Option<u64>,
    when_full: WhenFull,
    /// The newest records, contiguous by sequence number, ending at the
    /// head (the oldest are evicted past [`CACHE_BYTES`] or
    /// [`CACHE_RECORDS`]).
    cache: VecDeque<(SpoolSeq, Record, u64)>,
    /// Encoded bytes of the records in `cache`.
    cache_bytes: u64,
    /// The records after the last one read from disk in the same block
    /// (a backlog read back decodes each block once).
    readahead: VecDeque<(SpoolSeq, Record)>,
    /// Every block on disk that holds a record at or past `saved`: its
    /// first sequence number and how many records it holds, in order.
    blocks: VecDeque<(SpoolSeq, u64)>,
    /// [`CACHE_RECORDS`] (smaller in tests).
    cache_records: usize,
    /// [`STORE_CACHE_BYTES`] (smaller in tests).
    store_cache_bytes: u64,
    /// The cursor as last written to the store (`<= book.cursor()`): the
    /// records from it to the book's cursor are acknowledged and still on
    /// disk until the next save.
    saved: SpoolSeq,
    /// [`SAVE_EVERY`] (smaller in tests).
    save_every: u64,
}

impl State {
    /// The block holding `seq`, if one does.
    fn block_of(&self, seq: SpoolSeq) -> Option<SpoolSeq> {
        let ix = self.blocks.partition_point(|(first, _)| *first <= seq);
        let (first, count) = *self.blocks.get(ix.checked_sub(1)?)?;
        (seq < first + count).then_some(first)
    }
}

/// One pipe's spool. Shared by the pipe's producer side (the dispatcher) and
/// its worker; the std `Mutex` is held for bookkeeping and the store's short
/// synchronous calls, never across an `.await`.
pub struct Spool {
    name: String,
    store: Store,
    ks: Keyspace,
    meta: Keyspace,
    /// Bytes of every spool in the store (for `storage.max_bytes`).
    total: Arc<AtomicU64>,
    state: Mutex<State>,
    recovered: AtomicU64,
    damaged: AtomicU64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.store
            .cached()
            .fetch_sub(st.cache_bytes, Ordering::Relaxed);
    }
}

/// A block being written ([`Spool::writer`]); holds the spool's lock.
pub struct SpoolWriter<'a> {
    spool: &'a Spool,
    st: MutexGuard<'a, State>,
    block: record::Block,
    /// The records taken, with their sequence numbers and encoded sizes.
    records: Vec<(SpoolSeq, Record, u64)>,
}

impl SpoolWriter<'_> {
    /// Takes `rec` into the block, making room first as the spool's
    /// `when_full` says (a drop is saved at once). `Full` and `Refused`
    /// take nothing.
    pub fn append(&mut self, rec: Record) -> Result<Appended, SpoolError> {
        let spool = self.spool;
        let bytes = record::encode(&rec);
        let n = bytes.len() as u64;
        let mut dropped = 0;
        while !spool.fits(&self.st, n) {
            if self.st.when_full == WhenFull::Block {
                return Ok(if n > spool.bound(&self.st) {
                    Appended::Refused { dropped }
                } else {
                    Appended::Full
                });
            }
            if !spool.drop_one(&mut self.st)? {
                return Ok(Appended::Refused { dropped });
            }
            dropped += 1;
        }
        let seq = self.st.book.append(n, rec.received_ms);
        spool.total.fetch_add(n, Ordering::Relaxed);
        self.block.push(&bytes);
        self.records.push((seq, rec, n));
        Ok(Appended::Written { seq, dropped })
    }

    /// Writes the block (one store write). On an error nothing taken is in
    /// the spool: their sources must not be acknowledged. (A writer dropped
    /// without a commit takes nothing either.)
    pub fn commit(mut self) -> Result<(), SpoolError> {
        let records = std::mem::take(&mut self.records);
        let Some(&(first, _, _)) = records.first() else {
            return Ok(());
        };
        let spool = self.spool;
        let block = std::mem::take(&mut self.block);
        let st = &mut self.st;
        let count = u64::from(block.len());
        // Through the store: no `write` on the forwarding thread; the
        // durability request before any acknowledgement hands it over.
        if let Err(err) = spool.store.insert(&spool.ks, &key(first), block.finish()) {
            spool.forget(st, first);
            return Err(err.into());
        }
        st.blocks.push_back((first, count));
        // The cache stays one contiguous run ending at the head: every new
        // record goes in, the oldest go out past the bounds (disk serves
        // what is older than the cache).
        for (seq, rec, n) in records {
            if st.cache.back().is_some_and(|(s, _, _)| *s + 1 != seq) {
                spool.clear_cache(st);
            }
            st.cache.push_back((seq, rec, n));
            st.cache_bytes += n;
            spool.store.cached().fetch_add(n, Ordering::Relaxed);
        }
        spool.trim_cache(st);
        Ok(())
    }
}

impl Drop for SpoolWriter<'_> {
    fn drop(&mut self) {
        if let Some(&(first, _, _)) = self.records.first() {
            self.spool.forget(&mut self.st, first);
        }
    }
}

/// The keyspace name of `pipe`'s spool.
pub fn keyspace_name(pipe: &str) -> String {
    format!("{KEYSPACE_PREFIX}{pipe}")
}

/// The pipe names of every spool in `store` (running or orphaned).
pub fn spool_names(store: &Store) -> Vec<String> {
    store
        .keyspace_names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(KEYSPACE_PREFIX).map(str::to_owned))
        .collect()
}

/// Deletes `pipe`'s spool and its cursor (`mqbridge spool --drop`).
/// Returns whether there was one.
pub fn drop_spool(store: &Store, pipe: &str) -> Result<bool, SpoolError> {
    let name = keyspace_name(pipe);
    if !store.db().keyspace_exists(&name) {
        return Ok(false);
    }
    let ks = store.keyspace(&name)?;
    store.db().delete_keyspace(ks)?;
    store.keyspace(META_KEYSPACE)?.remove(pipe.as_bytes())?;
    store.sync_now()?;
    Ok(true)
}

fn key(seq: SpoolSeq) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<SpoolSeq> {
    Some(SpoolSeq::from_be_bytes(key.try_into().ok()?))
}

impl Spool {
    /// Opens (creating) `pipe`'s spool and recovers it: resumes at the
    /// persisted cursor, registers every intact record after it, deletes
    /// (and counts) damaged ones.
    pub fn open(
        store: &Store,
        pipe: &str,
        max_bytes: Option<u64>,
        when_full: WhenFull,
        total: Arc<AtomicU64>,
    ) -> Result<Spool, SpoolError> {
        let name = keyspace_name(pipe);
        if name.len() > 255 {
            return Err(SpoolError::Name(pipe.to_owned()));
        }
        let ks = store.keyspace(&name)?;
        let meta = store.keyspace(META_KEYSPACE)?;
        let cursor = meta
            .get(pipe.as_bytes())?
            .and_then(|v| seq_of(&v))
            .unwrap_or(0);
        let mut book = Book::new(cursor);
        let (mut recovered, mut damaged) = (0u64, 0u64);
        let mut blocks = VecDeque::new();
        let mut gaps = MAX_GAPS;
        let mut bad = Vec::new();
        for guard in ks.iter() {
            let (k, v) = guard.into_inner()?;
            let (Some(first), Ok((count, entries))) = (seq_of(&k), record::decode_value(&v)) else {
                damaged += 1;
                bad.push(k);
                continue;
            };
            let end = first.saturating_add(count);
            // Sequence numbers are dense (blocks follow each other), so a key
            // far past the records before it is damage, not a record.
            let gap = first.saturating_sub(book.head().max(cursor));
            if gap > gaps {
                damaged += 1;
                bad.push(k);
                continue;
            }
            gaps -= gap;
            if end <= cursor {
                // Acknowledged before the crash (its delete was not saved).
                bad.push(k);
                continue;
            }
            let mut live = false;
            for (seq, (len, entry)) in (first..).zip(&entries) {
                match entry {
                    _ if seq < cursor => {}
                    Ok(rec) => {
                        book.recover(seq, *len, rec.received_ms);
                        recovered += 1;
                        live = true;
                    }
                    Err(_) => damaged += 1,
                }
            }
            // Records a damaged length hid: known to exist, lost.
            damaged += end - (first + entries.len() as u64).max(cursor).min(end);
            // Sequence numbers are never issued twice, even damaged ones.
            book.extend_to(end);
            if live {
                blocks.push_back((first, count));
            } else {
                bad.push(k);
            }
        }
        for k in bad {
            ks.remove(k)?;
        }
        total.fetch_add(book.bytes(), Ordering::Relaxed);
        if recovered > 0 || damaged > 0 {
            tracing::info!(pipe = %pipe, recovered, damaged, cursor, "spool recovered");
        }
        if damaged > 0 {
            tracing::warn!(pipe = %pipe, damaged, "spool: damaged records skipped at open");
        }
        Ok(Spool {
            name: pipe.to_owned(),
            store: store.clone(),
            ks,
            meta,
            total,
            state: Mutex::new(State {
                book,
                max_bytes,
                when_full,
                cache: VecDeque::new(),
                cache_bytes: 0,
                readahead: VecDeque::new(),
                blocks,
                cache_records: CACHE_RECORDS,
                store_cache_bytes: STORE_CACHE_BYTES,
                saved: cursor,
                save_every: SAVE_EVERY,
            }),
            recovered: AtomicU64::new(recovered),
            damaged: AtomicU64::new(damaged),
        })
    }

    /// Takes the oldest cached record out of the cache.
    fn pop_cached(&self, st: &mut State) -> Option<Record> {
        let (_, rec, n) = st.cache.pop_front()?;
        st.cache_bytes -= n;
        self.store.cached().fetch_sub(n, Ordering::Relaxed);
        Some(rec)
    }

    fn clear_cache(&self, st: &mut State) {
        st.cache.clear();
        self.store
            .cached()
            .fetch_sub(std::mem::take(&mut st.cache_bytes), Ordering::Relaxed);
    }

    /// Forgets the records from `first` to the head (a block that was not
    /// written): they are the newest, so the next write reuses their
    /// numbers and no gap is left behind.
    fn forget(&self, st: &mut State, first: SpoolSeq) {
        let before = st.book.bytes();
        st.book.truncate(first);
        self.sub_total(before - st.book.bytes());
    }

    /// Evicts the oldest cached records while the cache passes its bounds
    /// (its own, or the store's over every spool).
    fn trim_cache(&self, st: &mut State) {
        while st.cache_bytes > CACHE_BYTES
            || st.cache.len() > st.cache_records
            || (st.cache_bytes > 0
                && self.store.cached().load(Ordering::Relaxed) > st.store_cache_bytes)
        {
            if self.pop_cached(st).is_none() {
                break;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Poisoned only if a thread panicked mid-operation; the book is
        // still consistent with what reached the store.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pipe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Saves after every `n` acknowledged records instead of [`SAVE_EVERY`].
    #[cfg(test)]
    fn set_save_every(&self, n: u64) {
        self.lock().save_every = n.max(1);
    }

    /// Caches at most `n` records instead of [`CACHE_RECORDS`].
    #[cfg(test)]
    fn set_cache_records(&self, n: usize) {
        self.lock().cache_records = n;
    }

    /// Bounds the store's caches by `n` bytes instead of
    /// [`STORE_CACHE_BYTES`] (for this spool's evictions).
    #[cfg(test)]
    fn set_store_cache_bytes(&self, n: u64) {
        self.lock().store_cache_bytes = n;
    }

    /// Changes the bound and the full policy (a reload).
    pub fn set_limits(&self, max_bytes: Option<u64>, when_full: WhenFull) {
        let mut st = self.lock();
        st.max_bytes = max_bytes;
        st.when_full = when_full;
    }

    fn sub_total(&self, n: u64) {
        let _ = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(n))
            });
    }

    /// The pipe's byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.bound(&self.lock())
    }

    fn bound(&self, st: &State) -> u64 {
        st.max_bytes.unwrap_or(u64::MAX).min(self.store.max_bytes())
    }

    fn fits(&self, st: &State, n: u64) -> bool {
        st.book.bytes() + n <= self.bound(st)
            && self.total.load(Ordering::Relaxed) + n <= self.store.max_bytes()
    }

    /// Writes `rec` as a block of its own (not yet durable: await
    /// [`Store::durable`] before acknowledging its source).
    pub fn append(&self, rec: &Record) -> Result<Appended, SpoolError> {
        let mut w = self.writer();
        let outcome = w.append(rec.clone())?;
        w.commit()?;
        Ok(outcome)
    }

    /// Starts a block: [`SpoolWriter::append`] the records, then
    /// [`SpoolWriter::commit`] them in one store write. The spool is locked
    /// until then.
    pub fn writer(&self) -> SpoolWriter<'_> {
        SpoolWriter {
            spool: self,
            st: self.lock(),
            block: record::Block::new(),
            records: Vec::new(),
        }
    }

    /// Drops the oldest live record; false when there is none. The drop is
    /// saved at once (a full spool is about disk space).
    fn drop_one(&self, st: &mut State) -> Result<bool, SpoolError> {
        let before = st.book.bytes();
        // The oldest live record is the cursor's: dropping it moves the
        // cursor past it, so the save deletes it.
        if st.book.drop_oldest().is_none() {
            return Ok(false);
        }
        self.sub_total(before - st.book.bytes());
        self.save_locked(st)?;
        Ok(true)
    }

    /// Deletes the acknowledged records not yet deleted and saves the cursor,
    /// in one batch, then hands the journal to the operating system (so a
    /// crash of the process keeps it). Returns whether there was anything to
    /// save.
    pub fn save(&self) -> Result<bool, SpoolError> {
        let mut st = self.lock();
        self.save_locked(&mut st)
    }

    fn save_locked(&self, st: &mut State) -> Result<bool, SpoolError> {
        let cursor = st.book.cursor();
        if cursor <= st.saved {
            return Ok(false);
        }
        let mut batch = self.store.db().batch();
        while let Some(&(first, count)) = st.blocks.front()
            && first + count <= cursor
        {
            batch.remove(&self.ks, key(first));
            st.blocks.pop_front();
        }
        batch.insert(&self.meta, self.name.as_bytes(), key(cursor));
        batch.commit()?;
        st.saved = cursor;
        self.store.db().persist(fjall::PersistMode::Buffer)?;
        Ok(true)
    }

    /// Whether acknowledgements wait to be saved ([`Spool::save`]).
    pub fn unsaved(&self) -> bool {
        let st = self.lock();
        st.book.cursor() > st.saved
    }

    /// The next record to send, in order (from the cache, else from disk);
    /// `None` when everything live was handed out. A damaged record is
    /// skipped, counted and deleted.
    pub fn next(&self) -> Result<Option<(SpoolSeq, Record)>, SpoolError> {
        let mut st = self.lock();
        loop {
            let Some(seq) = st.book.next_to_send() else {
                return Ok(None);
            };
            while st.cache.front().is_some_and(|(s, _, _)| *s < seq) {
                self.pop_cached(&mut st);
            }
            if st.cache.front().is_some_and(|(s, _, _)| *s == seq)
                && let Some(rec) = self.pop_cached(&mut st)
            {
                return Ok(Some((seq, rec)));
            }
            while st.readahead.front().is_some_and(|(s, _)| *s < seq) {
                st.readahead.pop_front();
            }
            if st.readahead.front().is_some_and(|(s, _)| *s == seq)
                && let Some((_, rec)) = st.readahead.pop_front()
            {
                return Ok(Some((seq, rec)));
            }
            match self.read(&mut st, seq)? {
                Ok(rec) => return Ok(Some((seq, rec))),
                Err(err) => {
                    self.damaged.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) =
                        crate::metrics::ratelimit::allow(&format!("spool-damaged:{}", self.name))
                    {
                        tracing::warn!(pipe = %self.name, seq, error = %err, suppressed, "spool: damaged record skipped");
                    }
                    self.ack_locked(&mut st, &[seq])?;
                }
            }
        }
    }

    /// Reads `seq`'s block from disk: returns `seq`'s record and keeps the
    /// ones after it for the next calls.
    fn read(
        &self,
        st: &mut State,
        seq: SpoolSeq,
    ) -> Result<Result<Record, RecordError>, SpoolError> {
        let Some(first) = st.block_of(seq) else {
            return Ok(Err(RecordError::Truncated));
        };
        let Some(value) = self.ks.get(key(first))? else {
            return Ok(Err(RecordError::Truncated));
        };
        let (_, entries) = match record::decode_value(&value) {
            Ok(decoded) => decoded,
            Err(err) => return Ok(Err(err)),
        };
        let mut wanted = Err(RecordError::Truncated);
        st.readahead.clear();
        for (s, (_, entry)) in (first..).zip(entries) {
            if s == seq {
                wanted = entry;
            } else if s > seq
                && let Ok(rec) = entry
            {
                st.readahead.push_back((s, rec));
            }
        }
        Ok(wanted)
    }

    /// The acknowledged cursor as saved: every record below it is deleted
    /// and never sent again, even after a crash. The batch that saved it was
    /// written before it moved (under the same lock), so what a caller
    /// writes after reading it lands in the store's journal after that batch.
    pub fn cursor(&self) -> SpoolSeq {
        self.lock().saved
    }

    /// Records written and not acknowledged.
    pub fn depth(&self) -> u64 {
        self.lock().book.depth()
    }

    /// Whether a record waits to be sent.
    pub fn has_unsent(&self) -> bool {
        self.lock().book.has_unsent()
    }

    /// Records waiting to be sent.
    pub fn unsent(&self) -> u64 {
        self.lock().book.unsent()
    }

    /// Sends everything unacknowledged again, from the oldest (a new
    /// instance of the pipe after a reload). Returns how many.
    pub fn rewind(&self) -> u64 {
        let mut st = self.lock();
        st.book.rewind();
        self.clear_cache(&mut st);
        st.readahead.clear();
        st.book.unsent()
    }

    /// The destination acknowledged `seq` (or the pipe gave it up).
    pub fn ack(&self, seq: SpoolSeq) -> Result<(), SpoolError> {
        let mut st = self.lock();
        self.ack_locked(&mut st, &[seq])
    }

    /// The destination acknowledged each of `seqs`. The cursor moves in
    /// memory; the records it passed are deleted and the cursor saved once
    /// [`SAVE_EVERY`] wait (else by [`Spool::save`]).
    pub fn ack_many(&self, seqs: &[SpoolSeq]) -> Result<Acked, SpoolError> {
        let mut st = self.lock();
        self.ack_locked(&mut st, seqs)?;
        Ok(Acked {
            depth: st.book.depth(),
            unsaved: st.book.cursor() > st.saved,
        })
    }

    fn ack_locked(&self, st: &mut State, seqs: &[SpoolSeq]) -> Result<(), SpoolError> {
        let before = st.book.bytes();
        for &seq in seqs {
            st.book.ack(seq);
        }
        self.sub_total(before - st.book.bytes());
        if st.book.cursor() - st.saved >= st.save_every {
            self.save_locked(st)?;
        }
        Ok(())
    }

    /// The spool's numbers at `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> SpoolSnapshot {
        let st = self.lock();
        SpoolSnapshot {
            depth: st.book.depth(),
            bytes: st.book.bytes(),
            oldest_age_seconds: st.book.oldest_age_ms(now_ms) as f64 / 1000.0,
            max_bytes: self.bound(&st),
            recovered: self.recovered.load(Ordering::Relaxed),
            damaged: self.damaged.load(Ordering::Relaxed),
        }
    }

    /// Bytes the spool's keyspace takes on disk (tables; the shared
    /// journal is counted store-wide).
    pub fn disk_bytes(&self) -> u64 {
        self.ks.disk_space()
    }

    /// The spool as the status endpoints show it.
    pub fn row(&self, orphaned: bool, now_ms: u64) -> SpoolRow {
        let s = self.snapshot(now_ms);
        SpoolRow {
            pipe: self.name.clone(),
            orphaned,
            depth: s.depth,
            bytes: s.bytes,
            max_bytes: s.max_bytes,
            oldest_age_seconds: s.oldest_age_seconds,
            disk_bytes: self.disk_bytes(),
            recovered: s.recovered,
            damaged: s.damaged,
        }
    }
}

/// The spools of a running bridge, shared with the observability layer.
/// The std `Mutex` is held only to copy the list.
#[derive(Debug, Clone, Default)]
pub struct SpoolBoard(Arc<Mutex<Vec<BoardEntry>>>);

/// A spool and whether a running pipe uses it.
type BoardEntry = (Arc<Spool>, bool);

impl SpoolBoard {
    /// Replaces the list: each spool with whether a running pipe uses it.
    pub fn set(&self, spools: Vec<(Arc<Spool>, bool)>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = spools;
    }

    /// Every spool's row at `now_ms`, by pipe name.
    pub fn rows(&self, now_ms: u64) -> Vec<SpoolRow> {
        let spools = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut rows: Vec<SpoolRow> = spools
            .iter()
            .map(|(s, used)| s.row(!used, now_ms))
            .collect();
        rows.sort_by(|a, b| a.pipe.cmp(&b.pipe));
        rows
    }
}

/// The store's disk use and the free space of its file system.
pub fn store_row(store: &Store) -> StoreRow {
    StoreRow {
        used_bytes: store.db().disk_space().unwrap_or(0),
        free_bytes: fs4::available_space(store.dir()).unwrap_or(0),
    }
}

/// Reads every spool from a store no bridge runs on (the `mqbridge spool`
/// view when no bridge answers): opening recovers each spool read-only in
/// effect (damaged records found are deleted, as a start would).
pub fn inspect(store: &Store) -> Result<SpoolReport, SpoolError> {
    let total = Arc::new(AtomicU64::new(0));
    let mut spools = Vec::new();
    for name in spool_names(store) {
        let spool = Spool::open(store, &name, None, WhenFull::Block, total.clone())?;
        spools.push(spool.row(false, now_ms()));
    }
    Ok(SpoolReport {
        spools,
        store: store_row(store),
    })
}

#[cfg(test)]
mod tests;
