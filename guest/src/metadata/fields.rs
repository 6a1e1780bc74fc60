//! Metadata names and single values: names matched ignoring case (a name given twice is
//! refused), and the parsers of one field's value each, which name the field and what was
//! expected when they refuse it.

use std::time::Duration;

use super::{MAX_CONCURRENCY, MetadataError, Protocol, Qos, field, same_name};
use crate::retry::Retries;

/// Metadata after name matching: the value for each known name, if given.
pub(super) struct Fields<'a> {
    entries: Vec<(&'a str, String)>,
}

impl<'a> Fields<'a> {
    /// Matches names case-insensitively and refuses a name given twice, in any case.
    pub(super) fn new(metadata: &'a [(String, String)]) -> Result<Self, MetadataError> {
        let mut entries: Vec<(&str, String)> = Vec::with_capacity(metadata.len());
        for (name, value) in metadata {
            if let Some((earlier, _)) = entries.iter().find(|(seen, _)| same_name(seen, name)) {
                let problem = if *earlier == name.as_str() {
                    "given twice; give it once".to_string()
                } else {
                    format!(
                        "given twice, as {earlier:?} and {name:?} (names ignore case); give it once"
                    )
                };
                return Err(MetadataError::new(name, problem));
            }
            entries.push((name.as_str(), value.clone()));
        }
        Ok(Self { entries })
    }

    /// Takes the value of a field, so that what is left at the end is unknown.
    pub(super) fn take(&mut self, field: &str) -> Option<String> {
        let at = self
            .entries
            .iter()
            .position(|(name, _)| same_name(name, field))?;
        Some(self.entries.swap_remove(at).1)
    }

    /// A field that must be present and not blank.
    pub(super) fn require(&mut self, field: &str) -> Result<String, MetadataError> {
        match self.take(field) {
            Some(value) if !value.trim().is_empty() => Ok(value),
            Some(_) => Err(MetadataError::new(field, "is empty; it is required")),
            None => Err(MetadataError::new(field, "is missing; it is required")),
        }
    }

    /// A field whose blank value means "not given", as Dapr treats empty metadata.
    pub(super) fn optional(&mut self, field: &str) -> Option<String> {
        self.take(field).filter(|value| !value.trim().is_empty())
    }

    /// A boolean field, `default` when not given.
    pub(super) fn optional_bool(
        &mut self,
        field: &str,
        default: bool,
    ) -> Result<bool, MetadataError> {
        self.optional(field)
            .map_or(Ok(default), |value| parse_bool(field, &value))
    }

    /// The names not taken.
    pub(super) fn into_names(self) -> impl Iterator<Item = &'a str> {
        self.entries.into_iter().map(|(name, _)| name)
    }
}

/// Parses `0`, `1` or `2`.
pub fn parse_qos(field: &str, value: &str) -> Result<Qos, MetadataError> {
    match value.trim() {
        "0" => Ok(Qos::AtMostOnce),
        "1" => Ok(Qos::AtLeastOnce),
        "2" => Ok(Qos::ExactlyOnce),
        _ => Err(MetadataError::expected(field, "0, 1 or 2", value)),
    }
}

/// Parses a boolean the way Dapr users write them, but refuses anything else (Go's binding
/// silently reads an unknown word as false).
pub fn parse_bool(field: &str, value: &str) -> Result<bool, MetadataError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(MetadataError::expected(
            field,
            "a boolean (true/false, 1/0, yes/no, on/off, t/f, y/n)",
            value,
        )),
    }
}

pub(super) fn parse_retries(value: &str) -> Result<Retries, MetadataError> {
    let n: i64 = value.trim().parse().map_err(|_| {
        MetadataError::expected(
            field::BACK_OFF_MAX_RETRIES,
            "an integer (0 or more retries, or -1 to retry until success)",
            value,
        )
    })?;
    Ok(u64::try_from(n).map_or(Retries::Forever, Retries::Limited))
}

/// Parses a duration such as `5s`, `200ms` or `1m30s`.
pub(super) fn parse_interval(value: &str) -> Result<Duration, MetadataError> {
    let interval = humantime::parse_duration(value.trim()).map_err(|_| {
        MetadataError::expected(
            field::BACK_OFF_INTERVAL,
            "a duration such as 5s, 200ms or 1m30s",
            value,
        )
    })?;
    // The wait is passed to the host in milliseconds as a u32 (about 49 days).
    if interval > Duration::from_millis(u64::from(u32::MAX)) {
        return Err(MetadataError::expected(
            field::BACK_OFF_INTERVAL,
            "a duration of at most 49 days",
            value,
        ));
    }
    Ok(interval)
}

/// Parses how many messages may be in delivery at once.
pub(super) fn parse_concurrency(value: &str) -> Result<u16, MetadataError> {
    let expected = format!("a whole number from 1 to {MAX_CONCURRENCY}");
    match value.trim().parse::<u16>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(MetadataError::expected(
            field::CONCURRENCY,
            &expected,
            value,
        )),
    }
}

/// Parses `3.1.1` or `5` (and the spellings people use for them).
pub(super) fn parse_protocol(value: &str) -> Result<Protocol, MetadataError> {
    match value.trim() {
        "3.1.1" | "311" | "4" => Ok(Protocol::V311),
        "5" | "5.0" => Ok(Protocol::V5),
        _ => Err(MetadataError::expected(
            field::PROTOCOL_VERSION,
            "\"3.1.1\" or \"5\"",
            value,
        )),
    }
}

/// Parses whole seconds from `min` to 4294967295 (what MQTT 5 carries): `3600`, or a
/// duration such as `1h`.
pub fn parse_seconds(field: &str, value: &str, min: u32) -> Result<u32, MetadataError> {
    let expected = format!("whole seconds from {min} to 4294967295, such as 3600, 3600s or 1h");
    let trimmed = value.trim();
    let secs = match trimmed.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => {
            let duration = humantime::parse_duration(trimmed)
                .map_err(|_| MetadataError::expected(field, &expected, value))?;
            if duration.subsec_nanos() != 0 {
                return Err(MetadataError::expected(field, &expected, value));
            }
            duration.as_secs()
        }
    };
    match u32::try_from(secs) {
        Ok(secs) if secs >= min => Ok(secs),
        _ => Err(MetadataError::expected(field, &expected, value)),
    }
}

/// The error for an MQTT 5 field given to a binding that speaks MQTT 3.1.1.
pub fn needs_mqtt5(field: &str) -> MetadataError {
    MetadataError::new(
        field,
        format!(
            "is an MQTT 5 feature; set the metadata field {:?} to \"5\" to use it",
            field::PROTOCOL_VERSION
        ),
    )
}

/// Parses a keep-alive: whole seconds (`30`) or a duration (`30s`, `1m`), 1 s to 65535 s.
pub(super) fn parse_keep_alive(value: &str) -> Result<u16, MetadataError> {
    const EXPECTED: &str = "a keep-alive of 1 to 65535 whole seconds, such as 30, 30s or 1m";
    let trimmed = value.trim();
    let secs = match trimmed.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => {
            let duration = humantime::parse_duration(trimmed)
                .map_err(|_| MetadataError::expected(field::KEEP_ALIVE, EXPECTED, value))?;
            if duration.subsec_nanos() != 0 {
                return Err(MetadataError::expected(field::KEEP_ALIVE, EXPECTED, value));
            }
            duration.as_secs()
        }
    };
    match u16::try_from(secs) {
        Ok(secs) if secs >= 1 => Ok(secs),
        _ => Err(MetadataError::expected(field::KEEP_ALIVE, EXPECTED, value)),
    }
}

#[cfg(test)]
mod tests {
    use crate::metadata::test_support::*;
    use crate::metadata::*;

    #[test]
    fn qos_accepts_only_0_1_2() {
        for (value, qos) in [
            ("0", Qos::AtMostOnce),
            ("1", Qos::AtLeastOnce),
            (" 2 ", Qos::ExactlyOnce),
        ] {
            assert_eq!(parse("a", &with(&[("qos", value)])).expect(value).qos, qos);
        }
        for value in ["7", "-1", "1.0", "one"] {
            assert_eq!(
                error_of(&with(&[("qos", value)])),
                format!(r#"metadata field "qos": expected 0, 1 or 2, got {value:?}"#)
            );
        }
    }

    #[test]
    fn booleans_accept_the_usual_words_and_refuse_others() {
        for (value, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("On", true),
            ("t", true),
            ("Y", true),
            ("false", false),
            ("0", false),
            ("NO", false),
            ("off", false),
            ("F", false),
            ("n", false),
        ] {
            let config =
                parse("a", &with(&[("retain", value), ("cleanSession", value)])).expect(value);
            assert_eq!(
                (config.retain, config.clean_session),
                (expected, expected),
                "{value}"
            );
        }
        assert_eq!(
            error_of(&with(&[("retain", "maybe")])),
            r#"metadata field "retain": expected a boolean (true/false, 1/0, yes/no, on/off, t/f, y/n), got "maybe""#
        );
        assert_eq!(
            error_of(&with(&[("cleanSession", "2")])),
            r#"metadata field "cleanSession": expected a boolean (true/false, 1/0, yes/no, on/off, t/f, y/n), got "2""#
        );
    }

    #[test]
    fn back_off_max_retries_takes_integers_negative_means_forever() {
        for (value, retries) in [
            ("0", Retries::Limited(0)),
            ("3", Retries::Limited(3)),
            ("-1", Retries::Forever),
            ("-5", Retries::Forever),
        ] {
            assert_eq!(
                parse("a", &with(&[("backOffMaxRetries", value)]))
                    .expect(value)
                    .delivery_backoff
                    .retries,
                retries
            );
        }
        assert_eq!(
            error_of(&with(&[("backOffMaxRetries", "three")])),
            r#"metadata field "backOffMaxRetries": expected an integer (0 or more retries, or -1 to retry until success), got "three""#
        );
    }

    #[test]
    fn back_off_interval_takes_durations() {
        for (value, expected) in [
            ("5s", 5_000),
            ("200ms", 200),
            ("1m30s", 90_000),
            ("0s", 0),
            (" 2s ", 2_000),
            ("1.5s", 1_500),
        ] {
            let interval = parse("a", &with(&[("backOffInterval", value)]))
                .expect(value)
                .delivery_backoff
                .interval;
            assert_eq!(interval, Duration::from_millis(expected), "{value}");
        }
        for value in ["5", "fast", "-1s"] {
            assert_eq!(
                error_of(&with(&[("backOffInterval", value)])),
                format!(
                    r#"metadata field "backOffInterval": expected a duration such as 5s, 200ms or 1m30s, got {value:?}"#
                )
            );
        }
        assert_eq!(
            error_of(&with(&[("backOffInterval", "100days")])),
            r#"metadata field "backOffInterval": expected a duration of at most 49 days, got "100days""#
        );
    }

    #[test]
    fn keep_alive_defaults_to_30s_and_takes_seconds_or_durations() {
        let keep_alive =
            |pairs: &[(&str, &str)]| parse("a", &with(pairs)).map(|c| c.keep_alive_secs);
        assert_eq!(keep_alive(&[]), Ok(30));
        assert_eq!(keep_alive(&[("keepAlive", "1")]), Ok(1));
        assert_eq!(keep_alive(&[("keepAlive", "65535")]), Ok(65535));
        assert_eq!(keep_alive(&[("keepAlive", "2m")]), Ok(120));
        assert_eq!(keep_alive(&[("KEEPALIVE", " 45s ")]), Ok(45));
    }

    #[test]
    fn keep_alive_out_of_range_or_fractional_is_refused() {
        for value in ["0", "65536", "1.5s", "500ms", "-1", "soon"] {
            assert_eq!(
                error_of(&with(&[("keepAlive", value)])),
                format!(
                    r#"metadata field "keepAlive": expected a keep-alive of 1 to 65535 whole seconds, such as 30, 30s or 1m, got {value:?}"#
                ),
            );
        }
    }

    #[test]
    fn concurrency_is_a_small_whole_number() {
        let config = parse("app", &with(&[("concurrency", "16")])).expect("valid");
        assert_eq!(config.concurrency, 16);
        for bad in ["0", "-1", "257", "many", "1.5"] {
            assert_eq!(
                error_of(&with(&[("concurrency", bad)])),
                format!(
                    r#"metadata field "concurrency": expected a whole number from 1 to 256, got "{bad}""#
                )
            );
        }
    }
}
