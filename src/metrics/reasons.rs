//! The fixed label values of every `reason` label.

/// Why a pipe dropped a message on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Matched an exclusion filter.
    Excluded,
    /// Payload larger than the pipe's (or destination's) maximum.
    Oversize,
    /// The bounded QoS 0 queue was full (drop-oldest or drop-newest policy).
    QueueFull,
    /// Recognised as our own message coming back (runtime loop protection).
    Loop,
    /// Over the pipe's rate limit.
    RateLimited,
    /// Refused by the destination's ACL.
    Acl,
    /// Remapping produced no valid destination topic.
    NoRoute,
}

impl DropReason {
    /// Every variant, in label order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Excluded,
        DropReason::Oversize,
        DropReason::QueueFull,
        DropReason::Loop,
        DropReason::RateLimited,
        DropReason::Acl,
        DropReason::NoRoute,
    ];

    /// The `reason` label value.
    pub fn as_label(self) -> &'static str {
        match self {
            DropReason::Excluded => "excluded",
            DropReason::Oversize => "oversize",
            DropReason::QueueFull => "queue_full",
            DropReason::Loop => "loop",
            DropReason::RateLimited => "rate_limited",
            DropReason::Acl => "acl",
            DropReason::NoRoute => "no_route",
        }
    }
}

/// Why a remote connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DisconnectReason {
    /// Socket error or the peer closed the connection.
    Io,
    /// No traffic within the keepalive allowance (PINGRESP missing).
    KeepaliveTimeout,
    /// CONNACK refused or the handshake timed out.
    Refused,
    /// The peer sent something that violates the protocol.
    Protocol,
    /// TLS handshake or certificate failure.
    Tls,
    /// We asked for it: stall watchdog, reload, failback or shutdown.
    Requested,
    /// Anything not classified above.
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
