//! The optional `$SYS/broker/...` tree (retained, QoS 0), as Mosquitto names it.

use std::time::Duration;

use super::stats::BrokerStats;
use crate::protocol::{Message, QoS};

/// The `$SYS` messages for the current counters.
pub(crate) fn messages(stats: &BrokerStats, uptime: Duration) -> Vec<Message> {
    let entries: [(&str, String); 9] = [
        ("version", format!("mqbridge {}", env!("CARGO_PKG_VERSION"))),
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("clients/connected", stats.clients_connected.to_string()),
        ("messages/received", stats.msgs_in.to_string()),
        ("messages/sent", stats.msgs_out.to_string()),
        ("bytes/received", stats.bytes_in.to_string()),
        ("bytes/sent", stats.bytes_out.to_string()),
        ("subscriptions/count", stats.subscriptions.to_string()),
        ("retained messages/count", stats.retained.to_string()),
    ];
    entries
        .into_iter()
        .map(|(k, v)| Message::new(format!("$SYS/broker/{k}"), v, QoS::AtMostOnce, true))
        .collect()
}
