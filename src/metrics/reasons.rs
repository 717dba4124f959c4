//! The fixed label values of the remote `reason` labels (pipe drop reasons
//! are [`crate::pipe::stats::DropReason`]).

/// Why a remote connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DisconnectReason {
    /// Socket error, TCP connect refused, or the peer closed the connection.
    Io,
    /// No traffic within the keepalive allowance (PINGRESP missing).
    KeepaliveTimeout,
    /// The broker refused the CONNECT (CONNACK return code ≠ 0).
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
