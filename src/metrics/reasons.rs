//! The fixed values of the `reason` labels: why a remote connection ended,
//! and why a pipe dropped a message.

/// Why a remote connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DisconnectReason {
    /// Socket error, TCP connect refused, the peer closed the connection, or
    /// a step (connect, CONNECT/CONNACK, a write) did not finish in time.
    Io,
    /// No traffic within the keepalive allowance (PINGRESP missing).
    KeepaliveTimeout,
    /// The broker refused the CONNECT (CONNACK return code ≠ 0).
    Refused,
    /// The peer sent something that violates the protocol, or refused the
    /// WebSocket upgrade.
    Protocol,
    /// TLS handshake or certificate failure, a TLS handshake that timed
    /// out, or unusable TLS settings.
    Tls,
    /// We asked for it: stall watchdog, reload, failback or shutdown.
    Requested,
    /// Anything not classified above: an MQTT 5 DISCONNECT from the broker
    /// (0x8B server shutting down, 0x9C use another server...) or its quota
    /// running out (0x97).
    Other,
}

impl DisconnectReason {
    /// Every variant, in label order.
    pub const ALL: [DisconnectReason; 7] = [
        DisconnectReason::Io,
        DisconnectReason::KeepaliveTimeout,
        DisconnectReason::Refused,
        DisconnectReason::Protocol,
        DisconnectReason::Tls,
        DisconnectReason::Requested,
        DisconnectReason::Other,
    ];

    /// The `reason` label value.
    pub fn as_label(self) -> &'static str {
        match self {
            DisconnectReason::Io => "io",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::Refused => "refused",
            DisconnectReason::Protocol => "protocol",
            DisconnectReason::Tls => "tls",
            DisconnectReason::Requested => "requested",
            DisconnectReason::Other => "other",
        }
    }
}

/// Why a pipe dropped a message. Each is a low-cardinality metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The topic matched an exclusion filter.
    Excluded,
    /// The payload exceeded the pipe's `max_payload`.
    Oversize,
    /// The bounded QoS 0 queue was full (per its policy).
    QueueFull,
    /// The message was our own copy coming back (run-time loop protection).
    Loop,
    /// The remap produced no valid topic for this message.
    Remap,
    /// The destination refused or can never accept the message (ACL, too large).
    Rejected,
    /// A reload removed or changed the pipe, and it still held the message
    /// when its drain deadline passed (acknowledged upstream, not forwarded).
    Reload,
    /// The pipe's spool was full with `when_full: drop_oldest` (an old
    /// record made room), or a message could never fit its bound.
    SpoolFull,
    /// The message's MQTT 5 expiry interval passed while it was in the
    /// bridge (queued, spooled or waiting for a restart), before it was sent.
    Expired,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Excluded,
        DropReason::Oversize,
        DropReason::QueueFull,
        DropReason::Loop,
        DropReason::Remap,
        DropReason::Rejected,
        DropReason::Reload,
        DropReason::SpoolFull,
        DropReason::Expired,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Excluded => "excluded",
            DropReason::Oversize => "oversize",
            DropReason::QueueFull => "queue_full",
            DropReason::Loop => "loop",
            DropReason::Remap => "remap",
            DropReason::Rejected => "rejected",
            DropReason::Reload => "reload",
            DropReason::SpoolFull => "spool_full",
            DropReason::Expired => "expired",
        }
    }
}
