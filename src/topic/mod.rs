//! Topic engine: name and filter validation (MQTT 3.1.1/5.0 §4.7), matching
//! with wildcard captures, a filter trie for fast lookups, and remapping
//! rules. Pure and synchronous; knows nothing of pipes or brokers.

mod filter;
mod remap;
mod trie;

pub use filter::{
    Captures, MAX_TOPIC_LEN, TopicError, captures, matches, validate_filter, validate_topic_name,
};
pub use remap::{Remap, RemapError, RemapRule};
pub use trie::FilterTrie;
