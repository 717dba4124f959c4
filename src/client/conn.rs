//! One live connection to a remote broker (the framed stream, the write
//! timeout, the QoS 0 completions awaiting a flush) and the plain pieces
//! the connection task and its serve loop share.

use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout};

use super::durable::Write;
use super::session::Output;
use super::transport::BoxStream;
use super::wire::Wire;
use super::{ClientError, Endpoint, Stage};
use crate::link::{LinkError, PublishDone};
use crate::protocol::quickack::AckHint;
use crate::protocol::reason::ReasonCode;
use crate::protocol::version::{AnyCodecError, ProtocolVersion};
use crate::protocol::{
    Framed, Keepalive, Message, MessageProperties, QoS, SubscribeOptions, packet_name,
    publish_from_message,
};
use crate::store::{Keyspace, Store, StoreError};

/// Write timeout when keepalive is off (with keepalive: 1.5 × keepalive).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed to send DISCONNECT on a graceful close.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Completion of an outgoing publish: the caller's oneshot, or nothing for
/// our own messages (birth).
#[derive(Debug)]
pub(crate) enum Done {
    /// A pipe waits for this.
    Caller(PublishDone),
    /// Internal publish (birth message); nobody waits.
    Internal,
}

impl Done {
    pub(crate) fn complete(self, result: Result<(), LinkError>) {
        if let Done::Caller(tx) = self {
            // The caller may have stopped waiting; that is fine.
            let _ = tx.send(result);
        }
    }
}

/// Maps a codec error on `ep` to a client error naming the endpoint.
pub(crate) fn codec_error(ep: &Endpoint, e: AnyCodecError) -> ClientError {
    use crate::protocol::CodecError;
    match e {
        AnyCodecError::V3(CodecError::Closed) => ClientError::Closed { endpoint: ep.url() },
        AnyCodecError::V3(CodecError::Io(source)) => ClientError::Io {
            endpoint: ep.url(),
            source,
        },
        other => ClientError::Protocol {
            endpoint: ep.url(),
            reason: other.to_string(),
        },
    }
}

/// "Now" for the pure state machines, on tokio's clock (so paused-time tests
/// drive them too).
pub(crate) fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// One live connection: the framed stream and what waits for its flush.
pub(crate) struct Conn {
    pub(super) framed: Framed<BoxStream>,
    /// The connection's version: how the session's packets go out.
    pub(super) wire: Wire,
    pub(super) endpoint: Endpoint,
    /// QoS 0 completions, resolved once their PUBLISH is flushed.
    pub(crate) written: Vec<Done>,
    /// Bounds a write (see [`Conn::write_timeout`]).
    pub(super) keepalive: Keepalive,
    pub(super) metrics: Option<crate::metrics::RemoteBrokerMetrics>,
    /// Packets held back until the stored QoS 2 flows are durable.
    pub(super) gate: Gate,
    /// The broker broke the protocol: the reason code of the DISCONNECT
    /// sent (on MQTT 5) before the connection is dropped.
    pub(super) violation: Option<ReasonCode>,
    /// Set when a QoS 1/2 PUBLISH came in: the stream then asks for quick
    /// TCP acknowledgements while such reads are sparse (see
    /// [`crate::protocol::quickack`]).
    pub(super) owed: AckHint,
}

/// Where stored QoS 2 flows are written, and the packets that wait for it
/// (see [`super::durable`]): a packet that must not reach the wire before a
/// record is durable waits here, and so does everything sent after it
/// (order is kept). The serve loop runs one `Store::durable` at a time.
#[derive(Default)]
pub(crate) struct Gate {
    /// The store and the broker's keyspace of flows (`None`: not kept).
    pub(crate) keyspace: Option<(Store, Keyspace)>,
    /// Written before the sync in progress started: go out when it ends.
    pub(crate) waiting: Vec<Held>,
    /// Queued since: need the next sync.
    pub(crate) next: Vec<Held>,
    /// A write failed: the connection ends (the flows are written again and
    /// resent on the next one).
    pub(crate) failed: Option<StoreError>,
}

impl Gate {
    fn is_closed(&self) -> bool {
        !self.waiting.is_empty() || !self.next.is_empty()
    }

    /// The next sync to wait for, if packets wait for one and none runs:
    /// what waited so far goes out once it resolves.
    pub(crate) fn start_sync(&mut self) -> Option<Sync> {
        if !self.waiting.is_empty() || self.next.is_empty() {
            return None;
        }
        let (store, _) = self.keyspace.as_ref()?;
        self.waiting = std::mem::take(&mut self.next);
        let store = store.clone();
        Some(Box::pin(async move { store.durable().await }))
    }
}

/// A packet the gate holds, with what MQTT 5 sends along with it (a
/// PUBLISH's properties, a SUBSCRIBE's options).
pub(crate) struct Held {
    packet: Packet,
    properties: Option<MessageProperties>,
    options: Vec<SubscribeOptions>,
}

impl Held {
    fn new(
        packet: &Packet,
        properties: Option<&MessageProperties>,
        options: &[SubscribeOptions],
    ) -> Held {
        Held {
            packet: packet.clone(),
            properties: properties.cloned(),
            options: options.to_vec(),
        }
    }
}

/// A running `Store::durable`.
pub(crate) type Sync =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// Awaits the sync if one runs; pending forever otherwise.
pub(crate) async fn sync_done(sync: &mut Option<Sync>) -> Result<(), StoreError> {
    match sync {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}

impl Conn {
    pub(super) fn new(
        framed: Framed<BoxStream>,
        wire: Wire,
        endpoint: Endpoint,
        keepalive: Keepalive,
        metrics: Option<crate::metrics::RemoteBrokerMetrics>,
        owed: AckHint,
    ) -> Self {
        Conn {
            framed,
            wire,
            endpoint,
            written: Vec::new(),
            keepalive,
            metrics,
            gate: Gate::default(),
            violation: None,
            owed,
        }
    }

    /// A graceful end: one more (bounded) wait for the store, so what the
    /// gate holds — acknowledgements towards a source included — goes out
    /// before DISCONNECT. Without it (or if the wait fails) it is dropped:
    /// the flows are resent on the next connection.
    pub(super) async fn settle_gate(&mut self) {
        if !self.gate.is_closed() || self.gate.failed.is_some() {
            return;
        }
        let Some((store, _)) = &self.gate.keyspace else {
            return;
        };
        let store = store.clone();
        if let Ok(Ok(())) = timeout(DISCONNECT_TIMEOUT, store.durable()).await {
            let mut held = std::mem::take(&mut self.gate.waiting);
            held.append(&mut self.gate.next);
            for h in &held {
                self.queue_held(h);
            }
        }
    }

    /// The sync the gate waited for has resolved: what it held goes out.
    pub(crate) fn release_gate(&mut self) {
        let waiting = std::mem::take(&mut self.gate.waiting);
        for h in &waiting {
            self.queue_held(h);
        }
    }

    /// Queues a packet for the next flush. An encoding error concerns only
    /// that packet (checked before it got here), so it is logged, not fatal.
    pub(crate) fn queue(&mut self, packet: &Packet) {
        self.queue_with(packet, None, &[]);
    }

    /// Queues a packet of the session: as it is on 3.1/3.1.1, through the
    /// [`Wire`] (with the PUBLISH's properties or the SUBSCRIBE's options)
    /// on MQTT 5.
    /// Queues a packet of the session, or holds it behind the gate's
    /// packets while they wait for the store (order is kept).
    fn hold_or_queue(
        &mut self,
        packet: &Packet,
        properties: Option<&MessageProperties>,
        options: &[SubscribeOptions],
    ) {
        if self.gate.is_closed() {
            self.gate.next.push(Held::new(packet, properties, options));
        } else {
            self.queue_with(packet, properties, options);
        }
    }

    /// Queues what the gate held.
    fn queue_held(&mut self, h: &Held) {
        self.queue_with(&h.packet, h.properties.as_ref(), &h.options);
    }

    fn queue_with(
        &mut self,
        packet: &Packet,
        properties: Option<&MessageProperties>,
        options: &[SubscribeOptions],
    ) {
        let queued = if self.wire.version() != ProtocolVersion::V5 {
            self.framed.queue_v3(packet)
        } else {
            let p = match packet {
                Packet::Publish(p) => self.wire.publish(p, properties),
                Packet::Subscribe(s) => self.wire.subscribe(s, options),
                other => self.wire.packet(other),
            };
            self.framed.queue(&p)
        };
        if let Err(e) = queued {
            crate::warn_limited!(format!("cannot-encode:{}", self.endpoint), endpoint = %self.endpoint, packet = packet_name(packet), error = %e, "cannot encode packet");
        } else if let (Packet::Publish(p), Some(m)) = (packet, &self.metrics) {
            m.message_out(p.payload.len());
        }
    }

    pub(super) fn write_timeout(&self) -> Duration {
        if self.keepalive.is_enabled() {
            self.keepalive.dead_after()
        } else {
            WRITE_TIMEOUT
        }
    }

    /// Writes out what is queued (bounded in time: a peer that stops reading
    /// is a dead link too) and completes the flushed QoS 0 publishes. True
    /// when something was written.
    pub(super) async fn flush(&mut self) -> Result<bool, ClientError> {
        let wrote = self.framed.pending_write() > 0;
        if wrote {
            // Usually the stream takes it all at once: then no timer is
            // armed. If it cannot, the timed flush continues: `Framed::flush`
            // is cancel safe (what was written is gone from the buffer).
            let at_once = self.framed.flush().now_or_never();
            match at_once {
                Some(done) => done.map_err(|e| codec_error(&self.endpoint, e))?,
                None => timeout(self.write_timeout(), self.framed.flush())
                    .await
                    .map_err(|_| ClientError::Timeout {
                        endpoint: self.endpoint.url(),
                        stage: Stage::Write,
                    })?
                    .map_err(|e| codec_error(&self.endpoint, e))?,
            }
        }
        for done in self.written.drain(..) {
            done.complete(Ok(()));
        }
        Ok(wrote)
    }

    /// The broker broke the protocol ([`Conn::violation`]): on MQTT 5 a
    /// DISCONNECT with the reason code goes after what is queued, then the
    /// stream is closed, within [`DISCONNECT_TIMEOUT`]. On 3.1.1 the
    /// stream is just closed (no DISCONNECT from a client means an error,
    /// and the broker publishes our will).
    pub(super) async fn close_after_violation(&mut self) {
        let Some(code) = self.violation.take() else {
            return;
        };
        if self.wire.version() == ProtocolVersion::V5 {
            let packet = self.wire.disconnect(code);
            let _ = self.framed.queue(&packet);
        }
        let _ = timeout(DISCONNECT_TIMEOUT, async {
            let _ = self.framed.flush().await;
            let _ = self.framed.get_mut().shutdown().await;
        })
        .await;
    }

    /// DISCONNECT, then close the stream. On 3.1.1 the broker drops our
    /// will on DISCONNECT, so the will itself (the `offline` status) is
    /// published first, at QoS 0 and outside the session state: the broker
    /// handles it before the DISCONNECT, and it is never resent on a later
    /// connection. On MQTT 5 the DISCONNECT says 0x04 (disconnect with will
    /// message) instead and the broker publishes the will itself; without a
    /// will it says 0x00 (normal).
    pub(super) async fn disconnect(&mut self, will: Option<&Message>) {
        if self.wire.version() == ProtocolVersion::V5 {
            let code = match will {
                Some(_) => ReasonCode::DisconnectWithWill,
                None => ReasonCode::Success,
            };
            let packet = self.wire.disconnect(code);
            let _ = self.framed.queue(&packet);
        } else {
            if let Some(will) = will {
                let mut m = will.clone();
                m.qos = QoS::AtMostOnce;
                self.queue(&Packet::Publish(publish_from_message(&m, 0, false)));
            }
            self.queue(&Packet::Disconnect);
        }
        let _ = timeout(DISCONNECT_TIMEOUT, async {
            let _ = self.framed.flush().await;
            let _ = self.framed.get_mut().shutdown().await;
        })
        .await;
        for done in self.written.drain(..) {
            done.complete(Ok(()));
        }
    }
}

/// The session's outputs on a live connection: packets are queued for the
/// next flush, QoS 0 completions wait for it.
impl Output<Done> for Conn {
    fn send(&mut self, packet: &Packet) {
        self.hold_or_queue(packet, None, &[]);
    }

    fn persist(&mut self, write: Write) {
        let Some((store, ks)) = &self.gate.keyspace else {
            return;
        };
        // Made durable by the gate's sync before the packets it holds go out.
        let result = match write {
            Write::Put(k, v) => store.insert(ks, &k, v),
            Write::Delete(k) => store.remove(ks, &k),
        };
        if let Err(e) = result {
            self.gate.failed.get_or_insert(e);
        }
    }

    fn send_when_durable(&mut self, packet: &Packet, properties: Option<&MessageProperties>) {
        if self.gate.keyspace.is_some() {
            self.gate.next.push(Held::new(packet, properties, &[]));
        } else {
            self.hold_or_queue(packet, properties, &[]);
        }
    }

    fn send_publish(&mut self, packet: &Packet, properties: Option<&MessageProperties>) {
        self.hold_or_queue(packet, properties, &[]);
    }

    fn send_subscribe(&mut self, packet: &Packet, options: &[SubscribeOptions]) {
        self.hold_or_queue(packet, None, options);
    }

    fn complete_after_flush(&mut self, done: Done) {
        self.written.push(done);
    }

    fn complete(&mut self, done: Done, result: Result<(), LinkError>) {
        done.complete(result);
    }
}
