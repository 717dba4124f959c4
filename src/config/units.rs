//! Human-readable durations (`500ms`, `30s`, `5m`, `1h`, `1h30m`) and sizes
//! (`256KiB`, `1MiB`, `1000`, `10kB`). Pure parsing, no IO.
//!
//! Hand-written on purpose (weighed against `humantime` and `bytesize`): those
//! accept more than a config should (`humantime`: `ns`, `days`, `months`,
//! `years`, spaces between parts; `bytesize`: fractions and any letter case)
//! and report failures as their own text, where [`UnitError`] names the value,
//! the unit and the units allowed here (the fixtures in `tests/config/invalid/`
//! pin those messages).

use std::time::Duration;

/// Why a duration or size string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Empty string.
    #[error("empty value")]
    Empty,
    /// A number without a unit where a unit is required (only `0` may omit it).
    #[error("`{0}` needs a unit, e.g. `{0}s` or `{0}ms`")]
    MissingUnit(String),
    /// An unknown unit suffix.
    #[error("`{value}`: unknown unit `{unit}` (use {allowed})")]
    UnknownUnit {
        /// The whole value.
        value: String,
        /// The offending unit.
        unit: String,
        /// The units that are accepted.
        allowed: &'static str,
    },
    /// Not a number where one was expected.
    #[error("`{0}` is not a valid {1}")]
    Invalid(String, &'static str),
    /// The value does not fit.
    #[error("`{0}` is too large")]
    Overflow(String),
}

const DURATION_UNITS: &str = "ms, s, m, h";
const SIZE_UNITS: &str = "B, KiB, MiB, GiB, kB, MB, GB";

/// Parses a duration: one or more `<integer><unit>` parts (`ms`, `s`, `m`, `h`),
/// e.g. `500ms`, `30s`, `1h30m`. A bare `0` means zero.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(UnitError::Invalid(
                s.to_string(),
                "duration (e.g. 30s, 500ms, 5m)",
            ));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(if after.is_empty() {
                UnitError::MissingUnit(s.to_string())
            } else {
                UnitError::Invalid(s.to_string(), "duration (e.g. 30s, 500ms, 5m)")
            });
        }
        let n: u128 = num
            .parse()
            .map_err(|_| UnitError::Overflow(s.to_string()))?;
        let millis_per: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(UnitError::UnknownUnit {
                    value: s.to_string(),
                    unit: unit.to_string(),
                    allowed: DURATION_UNITS,
                });
            }
        };
        total = n
            .checked_mul(millis_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| UnitError::Overflow(s.to_string()))?;
        rest = after;
    }
    let millis = u64::try_from(total).map_err(|_| UnitError::Overflow(s.to_string()))?;
    Ok(Duration::from_millis(millis))
}

/// Parses a size in bytes: a plain integer (`1000`) or an integer with a unit
/// (`256KiB`, `1MiB`, `2GiB`, or decimal `10kB`, `5MB`, `1GB`; `B` for bytes).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(UnitError::Invalid(
            s.to_string(),
            "size (e.g. 256KiB, 1MiB, 1000)",
        ));
    }
    let (num, unit) = s.split_at(digits);
    let unit = unit.trim_start();
    let n: u64 = num
        .parse()
        .map_err(|_| UnitError::Overflow(s.to_string()))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(UnitError::UnknownUnit {
                value: s.to_string(),
                unit: unit.to_string(),
                allowed: SIZE_UNITS,
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::Overflow(s.to_string()))
}

/// Formats a duration the way the config accepts it back (`1h30m`, `500ms`, `0`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0".to_string();
    }
    let mut out = String::new();
    for (unit, per) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= per {
            out.push_str(&format!("{}{unit}", ms / per));
            ms %= per;
        }
    }
    out
}

/// Formats a byte size compactly (`256KiB`, `1MiB`, `1000B`).
pub fn format_size(bytes: u64) -> String {
    for (unit, per) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= per && bytes.is_multiple_of(per) {
            return format!("{}{unit}", bytes / per);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("18h12m15s"), Ok(Duration::from_secs(65535)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("30"),
            Err(UnitError::MissingUnit("30".into()))
        );
        assert!(matches!(
            parse_duration("3d"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(parse_duration("s"), Err(UnitError::Invalid(..))));
        assert!(matches!(
            parse_duration("1.5s"),
            Err(UnitError::Invalid(..))
        ));
        assert!(matches!(parse_duration(""), Err(UnitError::Empty)));
        assert!(matches!(
            parse_duration("99999999999999999999999h"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("10kB"), Ok(10_000));
        assert_eq!(parse_size("7 B"), Ok(7));
        assert!(matches!(
            parse_size("1TB"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(parse_size("MiB"), Err(UnitError::Invalid(..))));
        assert!(matches!(
            parse_size("99999999999GiB"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["1h30m", "500ms", "30s", "18h12m15s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap_or_default()), s);
        }
        assert_eq!(format_size(256 * 1024), "256KiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
