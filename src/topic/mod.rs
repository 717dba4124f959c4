//! Topic engine: name and filter validation (MQTT 3.1.1/5.0 §4.7), matching
//! with wildcard captures, a filter trie for fast lookups, and remapping
//! rules. Pure and synchronous; knows nothing of pipes or brokers.
//!
//! ```
//! use mqbridge::topic::{FilterTrie, Remap, RemapRule, matches};
//!
//! assert!(matches("site/+/sensor/#", "site/7/sensor"));
//! assert!(!matches("#", "$SYS/uptime"));
//!
//! let mut trie = FilterTrie::new();
//! trie.insert("site/+/sensor/#", "telemetry");
//! trie.insert("fleet/#", "fleet");
//! assert_eq!(trie.matches("site/7/sensor/t"), vec![&"telemetry"]);
//!
//! let remap = Remap::new(vec![
//!     RemapRule::template("site/+/sensor/#", "cloud/{1}/data/{#}").unwrap(),
//!     RemapRule::prefix(Some("fleet/"), Some("vehicles/")),
//! ]);
//! assert_eq!(remap.apply("site/7/sensor/t").unwrap(), "cloud/7/data/t");
//! assert_eq!(remap.apply("site/7/sensor").unwrap(), "cloud/7/data");
//! assert_eq!(remap.apply("fleet/9/gps").unwrap(), "vehicles/9/gps");
//! assert_eq!(remap.apply("other").unwrap(), "other");
//! ```

mod filter;
mod remap;
mod trie;

#[cfg(test)]
mod proptests;

pub use filter::{
    Captures, MAX_TOPIC_LEN, TopicError, captures, level_count, matches, validate_filter,
    validate_topic_name,
};
pub use remap::{Remap, RemapError, RemapRule};
pub use trie::FilterTrie;
