//! Remote client ids: the default, and the warnings for ids that would change
//! between restarts (each change starts a new persistent session on the
//! broker and strands the backlog queued under the old one).

use std::cell::RefCell;
use std::sync::LazyLock;

use regex::Regex;

use super::env::substitute;

/// Environment variables whose value changes when a container or pod is
/// replaced (Docker sets `HOSTNAME` to the container id; Kubernetes to the
/// pod name, which for a Deployment carries random suffixes).
pub const HOST_VARS: &[&str] = &[
    "HOSTNAME",
    "HOST",
    "COMPUTERNAME",
    "POD_NAME",
    "POD_UID",
    "POD_IP",
    "CONTAINER_ID",
];

/// The default client id: `mqbridge-<config stem>-<broker>`, from stable
/// inputs only (the config file name and the broker name), reduced to
/// characters safe in a client id and a topic level.
pub fn default_client_id(stem: &str, broker: &str) -> String {
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let stem = if stem.is_empty() { "config" } else { &stem };
    format!("mqbridge-{stem}-{broker}")
}

/// The `${VAR}` names in `raw` (the text as written) that are host-derived
/// ([`HOST_VARS`]).
pub fn host_variables(raw: &str) -> Vec<String> {
    let seen = RefCell::new(Vec::new());
    let _ = substitute(raw, &|name| {
        seen.borrow_mut().push(name.to_string());
        Some(String::new())
    });
    seen.into_inner()
        .into_iter()
        .filter(|n| HOST_VARS.iter().any(|h| h.eq_ignore_ascii_case(n)))
        .collect()
}

/// Kubernetes' name-suffix alphabet (no vowels, no look-alike digits).
const K8S: &str = "[bcdfghjklmnpqrstvwxz2456789]";

static CONTAINER_ID: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(^|[-_.])([0-9a-f]{64}|[0-9a-f]{12})($|[-_.])").ok());
static UUID: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").ok()
});
static POD_NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(&format!(r"-{K8S}{{5,10}}-{K8S}{{5}}$")).ok());

/// Why `id` (after substitution) looks like it changes between restarts, if it does.
pub fn unstable_look(id: &str) -> Option<&'static str> {
    let hit = |re: &LazyLock<Option<Regex>>| re.as_ref().is_some_and(|r| r.is_match(id));
    if hit(&UUID) {
        Some("it contains a UUID")
    } else if hit(&CONTAINER_ID) {
        Some("it contains what looks like a container id (12 or 64 hex digits)")
    } else if hit(&POD_NAME) {
        Some("it ends like a Kubernetes Deployment pod name (`-<hash>-<random>`)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_uses_only_the_config_name_and_the_broker() {
        assert_eq!(
            default_client_id("bridges", "cloud"),
            "mqbridge-bridges-cloud"
        );
        assert_eq!(default_client_id("my conf+1", "c"), "mqbridge-my-conf-1-c");
        assert_eq!(default_client_id("", "c"), "mqbridge-config-c");
    }

    #[test]
    fn host_derived_variables_are_found() {
        assert_eq!(host_variables("bridge-${HOSTNAME}"), ["HOSTNAME"]);
        assert_eq!(host_variables("b-${POD_NAME:-x}-${SITE}"), ["POD_NAME"]);
        assert!(host_variables("bridge-${SITE_ID}").is_empty());
        assert!(host_variables("plain").is_empty());
    }

    #[test]
    fn unstable_looking_ids() {
        for id in [
            "mqbridge-3f2a9c1b7d4e",
            "bridge-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "b-123e4567-e89b-12d3-a456-426614174000",
            "mqbridge-7d9f8b6c5-x2k4q",
        ] {
            assert!(unstable_look(id).is_some(), "{id}");
        }
        for id in [
            "plant-7-bridge",
            "mqbridge-bridges-cloud",
            "edge-gateway-01",
            "mqbridge-statefulset-0",
            "site-cafe",
        ] {
            assert_eq!(unstable_look(id), None, "{id}");
        }
    }
}
