//! The handshake budget: a socket from `accept` until its CONNECT is accepted
//! (the transport's handshake — none for TCP, TLS, … — then the CONNECT read
//! and the credential check) is *pending*. Pending sockets are bounded on
//! their own, apart from `max_connections`, so sockets that never send
//! CONNECT cannot keep a device that does out:
//!
//! - at most `max_pending_per_ip` per source (an IPv4 address, or an IPv6
//!   /64, which one host usually owns whole); more from that source are
//!   closed at once;
//! - at most `max_pending_handshakes` in all; at that point a new socket
//!   closes the *oldest* pending one, so an attacker has to open sockets
//!   faster than a device completes its handshake to keep it out;
//! - each has `handshake_timeout` to get through.
//!
//! [`PendingSet`] is the pure bookkeeping; [`Budget`] shares it between the
//! accept loop and the connection tasks; a [`Handshake`] is one socket's
//! place in it, freed on drop.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stats::{Counters, RefuseReason};

/// The key pending sockets are counted under: the IPv4 address (also when
/// mapped into IPv6), or the /64 prefix of an IPv6 address.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// The outcome of [`PendingSet::admit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit<V> {
    /// Admitted under `id`; `evicted` is the oldest pending entry's value,
    /// removed to make room (the total was full).
    Admitted {
        /// The new entry's id (for [`PendingSet::finish`]).
        id: u64,
        /// The value of the entry that had to go.
        evicted: Option<V>,
    },
    /// The source already has `max_per_ip` pending: refused.
    PerIpFull,
}

/// Pending entries by age and by source, each carrying a value `V` (the
/// socket's eviction token in [`Budget`]).
#[derive(Debug)]
pub(crate) struct PendingSet<V> {
    max_total: usize,
    max_per_ip: usize,
    next_id: u64,
    /// Ids grow with admission time, so the first entry is the oldest.
    by_age: BTreeMap<u64, (IpAddr, V)>,
    per_ip: HashMap<IpAddr, usize>,
}

impl<V> PendingSet<V> {
    /// An empty set; limits below 1 are taken as 1.
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Self {
        PendingSet {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            next_id: 0,
            by_age: BTreeMap::new(),
            per_ip: HashMap::new(),
        }
    }

    /// Admits one pending socket from `ip` (already a [`source_key`]).
    pub(crate) fn admit(&mut self, ip: IpAddr, value: V) -> Admit<V> {
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Admit::PerIpFull;
        }
        let evicted = if self.by_age.len() >= self.max_total {
            self.by_age.pop_first().map(|(_, (old_ip, v))| {
                self.release(old_ip);
                v
            })
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_age.insert(id, (ip, value));
        *self.per_ip.entry(ip).or_insert(0) += 1;
        Admit::Admitted { id, evicted }
    }

    /// Ends entry `id` (handshake done, failed or evicted); no-op if gone.
    pub(crate) fn finish(&mut self, id: u64) {
        if let Some((ip, _)) = self.by_age.remove(&id) {
            self.release(ip);
        }
    }

    fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Entries pending now.
    pub(crate) fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Sources with at least one pending entry.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.per_ip.len()
    }
}

/// Why a handshake was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// `handshake_timeout` passed.
    Timeout,
    /// Closed to make room for a newer socket (`max_pending_handshakes`).
    Evicted,
    /// The broker is shutting down.
    Shutdown,
}

impl Cut {
    /// The refusal to count, if any (a shutdown is nobody's fault).
    pub(crate) fn refuse_reason(self) -> Option<RefuseReason> {
        match self {
            Cut::Timeout => Some(RefuseReason::Timeout),
            Cut::Evicted => Some(RefuseReason::HandshakeLimit),
            Cut::Shutdown => None,
        }
    }
}

/// The socket's source is at `max_pending_per_ip`: close the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceFull;

/// The pending set of one broker (all its listeners), shared by its tasks.
#[derive(Debug)]
pub(crate) struct Budget {
    /// A std mutex: every section is a few map operations, never an `.await`.
    set: Mutex<PendingSet<CancellationToken>>,
    timeout: Duration,
    /// Its `handshakes_pending` gauge follows the set's size.
    counters: Arc<Counters>,
}

/// One pending socket's place in the [`Budget`]; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Handshake {
    budget: Arc<Budget>,
    id: u64,
    evicted: CancellationToken,
    deadline: Instant,
    shutdown: CancellationToken,
}

impl Budget {
    /// A budget of `max_total` pending sockets, `max_per_ip` per source,
    /// each given `timeout`.
    pub(crate) fn new(
        max_total: usize,
        max_per_ip: usize,
        timeout: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        Budget {
            set: Mutex::new(PendingSet::new(max_total, max_per_ip)),
            timeout,
            counters,
        }
    }

    /// Admits a socket from `ip` accepted now. `Ok((h, true))`: admitted,
    /// and the oldest pending socket was told to close to make room.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        shutdown: &CancellationToken,
    ) -> Result<(Handshake, bool), SourceFull> {
        let evicted = CancellationToken::new();
        let admitted = {
            let mut set = self.lock();
            let admitted = set.admit(source_key(ip), evicted.clone());
            self.count(&set);
            admitted
        };
        match admitted {
            Admit::PerIpFull => Err(SourceFull),
            Admit::Admitted { id, evicted: old } => {
                let made_room = old.map(|t| t.cancel()).is_some();
                let handshake = Handshake {
                    budget: self.clone(),
                    id,
                    evicted,
                    deadline: Instant::now() + self.timeout,
                    shutdown: shutdown.clone(),
                };
                Ok((handshake, made_room))
            }
        }
    }

    /// Sockets pending now.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.lock().len()
    }

    fn count(&self, set: &PendingSet<CancellationToken>) {
        self.counters
            .handshakes_pending
            .store(set.len() as u64, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingSet<CancellationToken>> {
        // The set stays consistent even if a holder panicked: each
        // operation is complete before it returns.
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Handshake {
    /// Runs one step of the handshake (a transport handshake, the CONNECT
    /// read, the credential check) within what is left of the deadline,
    /// unless the socket is evicted or the broker shuts down first.
    pub(crate) async fn bound<F: Future>(&self, step: F) -> Result<F::Output, Cut> {
        tokio::select! {
            // Cancel safety: every branch drops `step` unfinished, which
            // ends the handshake (the socket is closed by the caller).
            _ = self.shutdown.cancelled() => Err(Cut::Shutdown),
            _ = self.evicted.cancelled() => Err(Cut::Evicted),
            r = tokio::time::timeout_at(self.deadline, step) => r.map_err(|_| Cut::Timeout),
        }
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut set = self.budget.lock();
        set.finish(self.id);
        self.budget.count(&set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn id(a: Admit<u32>) -> (u64, Option<u32>) {
        match a {
            Admit::Admitted { id, evicted } => (id, evicted),
            Admit::PerIpFull => panic!("refused"),
        }
    }

    #[test]
    fn per_ip_cap_refuses_only_that_source() {
        let mut s = PendingSet::new(10, 2);
        id(s.admit(ip("10.0.0.1"), 1));
        let (second, _) = id(s.admit(ip("10.0.0.1"), 2));
        assert_eq!(s.admit(ip("10.0.0.1"), 3), Admit::PerIpFull);
        id(s.admit(ip("10.0.0.2"), 4));
        s.finish(second);
        id(s.admit(ip("10.0.0.1"), 5));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn full_set_evicts_the_oldest() {
        let mut s = PendingSet::new(3, 3);
        let (a, _) = id(s.admit(ip("10.0.0.1"), 1));
        id(s.admit(ip("10.0.0.2"), 2));
        id(s.admit(ip("10.0.0.3"), 3));
        assert_eq!(id(s.admit(ip("10.0.0.4"), 4)).1, Some(1));
        assert_eq!(s.len(), 3);
        // The evicted entry's source has room again; finishing it later is a no-op.
        s.finish(a);
        assert_eq!(s.len(), 3);
        assert_eq!(id(s.admit(ip("10.0.0.1"), 5)).1, Some(2));
    }

    #[test]
    fn finishing_everything_leaves_nothing_behind() {
        let mut s = PendingSet::new(100, 100);
        let ids: Vec<u64> = (0..50u32)
            .map(|i| id(s.admit(ip(&format!("10.0.{}.1", i % 7)), i)).0)
            .collect();
        for i in ids {
            s.finish(i);
            s.finish(i);
        }
        assert_eq!((s.len(), s.sources()), (0, 0));
    }

    #[test]
    fn sources_group_ipv4_mapped_and_ipv6_slash_64() {
        assert_eq!(source_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:bbbb::9")),
            source_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(source_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        let mut s = PendingSet::new(10, 1);
        id(s.admit(source_key(ip("2001:db8::1")), 1));
        assert_eq!(s.admit(source_key(ip("2001:db8::2")), 2), Admit::PerIpFull);
    }

    #[tokio::test(start_paused = true)]
    async fn handshake_is_bounded_by_timeout_eviction_and_shutdown() {
        let counters = Arc::new(Counters::default());
        let budget = Arc::new(Budget::new(1, 5, Duration::from_secs(5), counters.clone()));
        let shutdown = CancellationToken::new();
        let (first, made_room) = budget.admit(ip("127.0.0.1"), &shutdown).unwrap();
        assert!(!made_room);
        assert_eq!(first.bound(async { 7 }).await, Ok(7));
        let (second, made_room) = budget.admit(ip("127.0.0.2"), &shutdown).unwrap();
        assert!(made_room);
        assert_eq!(
            first.bound(std::future::pending::<()>()).await,
            Err(Cut::Evicted)
        );
        drop(first);
        assert_eq!(
            budget.pending(),
            1,
            "dropping the evicted one frees nothing twice"
        );
        assert_eq!(
            second.bound(std::future::pending::<()>()).await,
            Err(Cut::Timeout)
        );
        assert_eq!(counters.snapshot().handshakes_pending, 1);
        drop(second);
        assert_eq!(budget.pending(), 0);
        assert_eq!(counters.snapshot().handshakes_pending, 0);
        let (third, _) = budget.admit(ip("127.0.0.1"), &shutdown).unwrap();
        shutdown.cancel();
        assert_eq!(
            third.bound(std::future::pending::<()>()).await,
            Err(Cut::Shutdown)
        );
    }
}
