//! Shared subscriptions (`$share/{group}/{filter}`, spec 4.8.2): the share
//! groups, the trie of their filters, one copy per group of each matching
//! message, and the redelivery of a leaving member's unacknowledged
//! messages. Version-agnostic: a member is a session, whatever protocol
//! version it speaks.
//!
//! Distribution policy, per message and group: round robin over the
//! members, taking the first in turn that (1) is connected, may read the
//! topic and has room (its QoS 1/2 queue is not full); failing that (2) is
//! connected and may read it (its queue's overflow policy then applies);
//! failing that (3) may read it (a persistent member that is away: the
//! message waits in its session). A session removed (a clean session's
//! disconnect, a persistent one's expiry or clean takeover) hands the QoS 1/2
//! messages it had not acknowledged receiving, and those still queued, to
//! another member of the group. A persistent member that disconnects keeps
//! them, as Mosquitto does: they are sent again when it comes back.

use super::*;
use crate::broker::stats::DropReason;
use crate::protocol::expiry::{Expiry, Remaining};
use crate::protocol::shared::{self as share, Group};
use crate::topic::matches;
use routing::may_read;

type GroupId = u64;

/// One share group: a share name with one filter.
#[derive(Debug)]
struct ShareGroup {
    /// `$share/{group}/{filter}` as subscribed: the key in the members'
    /// [`Session::subscriptions`], where each member's granted QoS is.
    subscribed: String,
    /// The filter after the share name.
    filter: String,
    members: Group<SessionId>,
}

/// Every share group of the broker.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Filter (after the share name) → the groups with that filter.
    trie: FilterTrie<GroupId>,
    groups: HashMap<GroupId, ShareGroup>,
    /// `$share/{group}/{filter}` → its group.
    by_subscribed: HashMap<String, GroupId>,
    next: GroupId,
}

impl Shared {
    /// Adds `sid` to the group of `filter` when it is a shared subscription
    /// (false: it is not, the caller puts it in the main trie).
    pub(super) fn join(&mut self, filter: &str, sid: SessionId) -> bool {
        let Ok(Some(parsed)) = share::parse(filter) else {
            return false;
        };
        let gid = match self.by_subscribed.get(filter) {
            Some(&gid) => gid,
            None => {
                let gid = self.next;
                self.next += 1;
                self.trie.insert(parsed.filter, gid);
                self.by_subscribed.insert(filter.to_owned(), gid);
                self.groups.insert(
                    gid,
                    ShareGroup {
                        subscribed: filter.to_owned(),
                        filter: parsed.filter.to_owned(),
                        members: Group::new(),
                    },
                );
                gid
            }
        };
        if let Some(group) = self.groups.get_mut(&gid) {
            group.members.join(sid);
        }
        true
    }

    /// Removes `sid` from the group of `filter` (the group goes with its
    /// last member); false when `filter` is not a shared subscription.
    pub(super) fn leave(&mut self, filter: &str, sid: SessionId) -> bool {
        if !share::is_shared(filter) {
            return false;
        }
        let Some(&gid) = self.by_subscribed.get(filter) else {
            return true;
        };
        let Some(group) = self.groups.get_mut(&gid) else {
            return true;
        };
        group.members.leave(&sid);
        if group.members.is_empty() {
            self.trie.remove(&group.filter, |g| *g == gid);
            self.by_subscribed.remove(filter);
            self.groups.remove(&gid);
        }
        true
    }

    /// Nodes of the share groups' trie.
    pub(super) fn node_count(&self) -> usize {
        self.trie.node_count()
    }

    /// The limit a network client's new shared subscription to `filter`
    /// would break, if any (see `routing::subscription_limit`): trie nodes
    /// count the main trie's `main_nodes` and the groups' trie.
    pub(super) fn limit(
        &self,
        limits: &Limits,
        session: &Session,
        filter: &str,
        main_nodes: usize,
    ) -> Option<SubRefuseReason> {
        let Ok(Some(parsed)) = share::parse(filter) else {
            return None;
        };
        if matches!(session.origin, Origin::Local) || session.subscriptions.contains_key(filter) {
            return None;
        }
        if session.subscriptions.len() >= limits.max_subscriptions_per_client {
            return Some(SubRefuseReason::SubscriptionsPerClient);
        }
        let after = main_nodes + self.trie.node_count() + self.trie.nodes_needed(parsed.filter);
        (after > limits.max_trie_nodes).then_some(SubRefuseReason::TrieNodes)
    }
}

/// Whether a subscription to `filter` is accepted as far as shared
/// subscriptions go: not one, or a valid one ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
pub(super) fn valid(filter: &str) -> bool {
    share::parse(filter).is_ok()
}

/// Whether `filter` is a shared subscription (valid or not).
pub(super) fn is_shared(filter: &str) -> bool {
    share::is_shared(filter)
}

/// Whether `filter` gets retained messages on subscribe: never for a shared
/// subscription (MQTT 5 3.8.4; Mosquitto does the same for 3.1.1).
pub(super) fn sends_retained(filter: &str) -> bool {
    !share::is_shared(filter)
}

impl Router {
    /// One copy of `message` to one member of each share group matching its
    /// topic; true when a copy was stored (see [`Router::route`]).
    pub(super) fn route_shared(&mut self, message: &Message, now: Instant) -> bool {
        if self.shared.groups.is_empty() {
            return false;
        }
        let mut gids = Vec::new();
        self.shared
            .trie
            .for_each_match(&message.topic, |_, &gid| gids.push(gid));
        gids.sort_unstable();
        gids.dedup();
        let mut stored = false;
        for gid in gids {
            stored |= self.deliver_shared(gid, message.clone(), None, now) == Some(true);
        }
        stored
    }

    /// Whether a QoS 1/2 message on `topic` would overflow a local link
    /// session's queue through a share group: a matching group has no
    /// connected member with room, and one of its members is a full link
    /// session (the publisher is then held back, see [`Router::link_full`]).
    pub(super) fn shared_link_full(&self, topic: &str) -> bool {
        let (sessions, limits) = (&self.sessions, &*self.limits);
        let room = |sid: &SessionId| {
            sessions
                .get(sid)
                .is_some_and(|s| s.conn.is_some() && !s.would_drop(limits))
        };
        let full_link = |sid: &SessionId| {
            sessions
                .get(sid)
                .is_some_and(|s| s.is_link() && s.would_drop(limits))
        };
        self.any_group(topic, |g| {
            !g.members.members().iter().any(room) && g.members.members().iter().any(full_link)
        })
    }

    /// Whether a matching share group of `topic` has a member whose session
    /// is stored (a QoS 1/2 copy may go to the store, see
    /// [`Router::store_full_for`]).
    pub(super) fn shared_stores(&self, topic: &str) -> bool {
        let sessions = &self.sessions;
        self.any_group(topic, |g| {
            g.members.members().iter().any(|sid| {
                sessions.get(sid).is_some_and(|s| {
                    s.stored.is_some()
                        && s.subscriptions
                            .get(&g.subscribed)
                            .is_some_and(|sub| sub.options.qos != QoS::AtMostOnce)
                })
            })
        })
    }

    /// Whether `pred` holds for a share group whose filter matches `topic`.
    fn any_group(&self, topic: &str, pred: impl Fn(&ShareGroup) -> bool) -> bool {
        if self.shared.groups.is_empty() {
            return false;
        }
        let mut hit = false;
        self.shared.trie.for_each_match(topic, |_, gid| {
            hit = hit || self.shared.groups.get(gid).is_some_and(&pred);
        });
        hit
    }

    /// Delivers `message` to the member of group `gid` the policy picks
    /// (never `except`): whether the copy was stored, `None` when no member
    /// could take it.
    fn deliver_shared(
        &mut self,
        gid: GroupId,
        mut message: Message,
        except: Option<SessionId>,
        now: Instant,
    ) -> Option<bool> {
        let group = self.shared.groups.get_mut(&gid)?;
        let (sessions, security, limits) = (&self.sessions, &*self.security, &*self.limits);
        let readable = |sid: &SessionId| {
            Some(*sid) != except
                && sessions
                    .get(sid)
                    .is_some_and(|s| may_read(security, s, &message.topic))
        };
        let connected =
            |sid: &SessionId| readable(sid) && sessions.get(sid).is_some_and(|s| s.conn.is_some());
        let room = |sid: &SessionId| {
            connected(sid) && sessions.get(sid).is_some_and(|s| !s.would_drop(limits))
        };
        let picked = group
            .members
            .pick(room)
            .or_else(|| group.members.pick(connected))
            .or_else(|| group.members.pick(readable));
        let session = self.sessions.get_mut(&picked?)?;
        let sub = *session.subscriptions.get(&group.subscribed)?;
        message.qos = message.qos.min(sub.options.qos);
        message.retain = message.retain && sub.options.retain_as_published;
        message.dup = false;
        super::routing::set_subscription_ids(&mut message, sub.id.into_iter().collect());
        Some(session.deliver(
            message,
            &self.limits,
            &self.counters,
            &mut self.journal,
            now,
        ))
    }

    /// Session `s` (`sid`) is being removed and has left its groups: its
    /// QoS 1/2 messages not yet received by its client, and its queued
    /// ones, that match one of its shared subscriptions go to another member
    /// of that group (counted when one took it).
    pub(super) fn redeliver_shared(&mut self, sid: SessionId, s: &mut Session) {
        let groups: Vec<(GroupId, String)> = s
            .subscriptions
            .keys()
            .filter_map(|f| self.shared.by_subscribed.get(f))
            .filter_map(|gid| {
                self.shared
                    .groups
                    .get(gid)
                    .map(|g| (*gid, g.filter.clone()))
            })
            .collect();
        if groups.is_empty() {
            return;
        }
        let Some(flows) = s.flows_mut() else {
            return;
        };
        let mut orphans: Vec<(Message, Option<Expiry>)> = flows
            .outgoing
            .drain_unreceived()
            .into_iter()
            .map(|(m, token)| (m, token.expiry))
            .collect();
        self.counters
            .queued
            .fetch_sub(flows.queue.len() as u64, Relaxed);
        orphans.extend(flows.queue.drain(..).map(|q| (q.message, q.expiry)));
        let mut handed = 0;
        let now = Instant::now();
        for (mut message, expiry) in orphans {
            // The expiry keeps counting: the next member gets what is left,
            // or nothing [MQTT-3.3.2-5, MQTT-3.3.2-6].
            match expiry.map(|e| e.remaining(now)) {
                Some(Remaining::Expired) => {
                    self.counters.dropped(DropReason::Expired, 1);
                    continue;
                }
                Some(Remaining::Seconds(left)) => {
                    if let Some(p) = message.properties.as_mut() {
                        p.message_expiry_interval = Some(left);
                    }
                }
                None => {}
            }
            let Some(gid) = groups
                .iter()
                .find(|(_, filter)| matches(filter, &message.topic))
                .map(|(gid, _)| *gid)
            else {
                continue;
            };
            if self.deliver_shared(gid, message, Some(sid), now).is_some() {
                handed += 1;
            }
        }
        if handed > 0 {
            self.counters.shared_redelivered.fetch_add(handed, Relaxed);
            debug!(broker = %self.name, client_id = %s.client_id, handed, "shared subscription member gone: unacknowledged messages handed to other members");
        }
    }
}
