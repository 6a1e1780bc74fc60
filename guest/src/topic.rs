//! MQTT topic names and topic filters (MQTT 3.1.1 section 4.7): what may be published to and
//! what may be subscribed to. Pure string rules; the callers say which metadata field a
//! failure belongs to.

/// MQTT strings are length-prefixed with two bytes (section 1.5.3).
const MAX_TOPIC_BYTES: usize = 65_535;

/// The prefix of a shared subscription, `$share/<group>/<filter>` (MQTT 5 section 4.8.2,
/// also understood by mosquitto for 3.1.1 clients).
const SHARE_PREFIX: &str = "$share/";

/// Checks a topic filter for SUBSCRIBE. Returns what is wrong, phrased to follow
/// "expected a valid topic filter: ".
pub fn check_filter(filter: &str) -> Result<(), String> {
    check_common(filter)?;
    let filter = match filter.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            let (group, inner) = rest
                .split_once('/')
                .ok_or("a shared subscription needs $share/<group>/<filter>")?;
            check_share_name(group)
                .map_err(|why| format!("the share group of $share/<group>/<filter> {why}"))?;
            if inner.is_empty() {
                return Err("the filter of $share/<group>/<filter> is empty".into());
            }
            inner
        }
        None => filter,
    };
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("# must be a whole level and the last one".into());
        }
        if level.contains('+') && level != "+" {
            return Err("+ must be a whole level".into());
        }
    }
    Ok(())
}

/// Checks the group of a shared subscription (MQTT 5 section 4.8.2, "ShareName"). Returns
/// what is wrong, phrased to follow the group's name.
pub fn check_share_name(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("is empty".into());
    }
    if group.contains(['/', '+', '#']) {
        return Err(format!("must not contain /, + or #; got {group:?}"));
    }
    Ok(())
}

/// Whether `filter` is a shared subscription already (`$share/<group>/<filter>`).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARE_PREFIX)
}

/// The shared subscription of `group` to `filter`.
pub fn shared(group: &str, filter: &str) -> String {
    format!("{SHARE_PREFIX}{group}/{filter}")
}

/// Checks a topic name for PUBLISH: a filter's rules, and no wildcards at all.
pub fn check_name(topic: &str) -> Result<(), String> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err("a topic to publish to must not contain + or #".into());
    }
    if topic.starts_with(SHARE_PREFIX) {
        return Err("$share/ is a subscription prefix, not a topic to publish to".into());
    }
    Ok(())
}

fn check_common(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("it is empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "it is {} bytes long, MQTT allows {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    // Section 4.7.3: topic names and filters must not include the null character.
    if topic.contains('\0') {
        return Err("it contains the null character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_filters_pass() {
        for filter in [
            "a",
            "a/b",
            "/a",
            "a/",
            "#",
            "+",
            "a/+/c",
            "a/#",
            "+/+",
            "$share/g/a/#",
            "$share/g/+",
            "$SYS/#",
            "a b/c",
        ] {
            assert_eq!(check_filter(filter), Ok(()), "{filter}");
        }
    }

    #[test]
    fn invalid_filters_say_why() {
        for (filter, why) in [
            ("", "it is empty"),
            ("a/#/b", "# must be a whole level and the last one"),
            ("a#", "# must be a whole level and the last one"),
            ("a+", "+ must be a whole level"),
            ("a/b+/c", "+ must be a whole level"),
            ("a\0b", "it contains the null character"),
            (
                "$share/g",
                "a shared subscription needs $share/<group>/<filter>",
            ),
            (
                "$share//a",
                "the share group of $share/<group>/<filter> is empty",
            ),
            (
                "$share/g+/a",
                "the share group of $share/<group>/<filter> must not contain /, + or #; got \"g+\"",
            ),
            (
                "$share/g/",
                "the filter of $share/<group>/<filter> is empty",
            ),
            ("$share/g/a/#/b", "# must be a whole level and the last one"),
        ] {
            assert_eq!(check_filter(filter), Err(why.to_string()), "{filter:?}");
        }
    }

    #[test]
    fn filter_at_length_limit_passes_one_over_fails() {
        assert_eq!(check_filter(&"a".repeat(MAX_TOPIC_BYTES)), Ok(()));
        assert_eq!(
            check_filter(&"a".repeat(MAX_TOPIC_BYTES + 1)),
            Err("it is 65536 bytes long, MQTT allows 65535".to_string())
        );
    }

    #[test]
    fn share_names_are_one_level_without_wildcards() {
        assert_eq!(check_share_name("replicas"), Ok(()));
        assert_eq!(check_share_name("order-workers.1"), Ok(()));
        assert_eq!(check_share_name(""), Err("is empty".into()));
        for group in ["a/b", "a+", "#"] {
            assert_eq!(
                check_share_name(group),
                Err(format!("must not contain /, + or #; got {group:?}")),
                "{group}"
            );
        }
        assert_eq!(shared("g", "orders/#"), "$share/g/orders/#");
        assert_eq!(check_filter(&shared("g", "orders/#")), Ok(()));
        assert!(is_shared("$share/g/a") && !is_shared("share/g/a") && !is_shared("$SYS/#"));
    }

    #[test]
    fn topic_names_refuse_wildcards_and_share() {
        assert_eq!(check_name("a/b"), Ok(()));
        assert_eq!(
            check_name("a/+"),
            Err("a topic to publish to must not contain + or #".into())
        );
        assert_eq!(
            check_name("#"),
            Err("a topic to publish to must not contain + or #".into())
        );
        assert_eq!(
            check_name("$share/g/a"),
            Err("$share/ is a subscription prefix, not a topic to publish to".into())
        );
        assert_eq!(check_name(""), Err("it is empty".into()));
    }
}
