//! The output binding's requests: which operation, and where and how to publish once the
//! per-request metadata has overridden the component's. Pure functions.

use std::fmt;

use crate::metadata::{self, Config, Qos};
use crate::topic;

/// The operations of the output binding.
pub const OPERATIONS: [&str; 1] = ["create"];

/// One publish, fully decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: Qos,
    pub retain: bool,
}

/// A request this binding cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(String);

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RequestError {}

/// Checks that `operation` is one this binding supports.
pub fn check_operation(operation: &str) -> Result<(), RequestError> {
    if OPERATIONS.contains(&operation) {
        return Ok(());
    }
    Err(RequestError(format!(
        "operation {operation:?} is not supported; supported operations: {}",
        OPERATIONS.join(", ")
    )))
}

/// Decides a publish from the component's config and the request's metadata: `topic`
/// (empty means the component's), `retain` and `qos` override; other names are ignored, as
/// Dapr passes request metadata through to every binding.
pub fn publish(config: &Config, request: &[(String, String)]) -> Result<Publish, RequestError> {
    let get = |name: &str| metadata::lookup(request, name).filter(|value| !value.trim().is_empty());
    let invalid = |e: metadata::MetadataError| RequestError(format!("request {e}"));

    let topic = match get("topic") {
        Some(topic) => {
            topic::check_name(topic).map_err(|why| {
                RequestError(format!(
                    "request metadata field \"topic\": expected a topic to publish to: {why}"
                ))
            })?;
            topic.to_string()
        }
        None => {
            topic::check_name(&config.topic).map_err(|why| {
                RequestError(format!(
                    "the component's topic {:?} cannot be published to ({why}); give the request metadata field \"topic\"",
                    config.topic
                ))
            })?;
            config.topic.clone()
        }
    };
    let retain = get("retain").map_or(Ok(config.retain), |v| metadata::parse_bool("retain", v));
    let qos = get("qos").map_or(Ok(config.qos), |v| metadata::parse_qos("qos", v));
    Ok(Publish {
        topic,
        qos: qos.map_err(invalid)?,
        retain: retain.map_err(invalid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(topic: &str) -> Config {
        let metadata = [("url", "tcp://h"), ("topic", topic), ("qos", "1")]
            .map(|(n, v)| (n.to_string(), v.to_string()));
        metadata::parse("app", &metadata).expect("valid config")
    }

    fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_create_is_supported() {
        assert_eq!(check_operation("create"), Ok(()));
        assert_eq!(
            check_operation("delete").map_err(|e| e.to_string()),
            Err(r#"operation "delete" is not supported; supported operations: create"#.into())
        );
    }

    #[test]
    fn defaults_come_from_the_component() {
        assert_eq!(
            publish(&config("orders"), &[]),
            Ok(Publish {
                topic: "orders".into(),
                qos: Qos::AtLeastOnce,
                retain: false
            })
        );
    }

    #[test]
    fn request_metadata_overrides_topic_retain_and_qos() {
        assert_eq!(
            publish(
                &config("orders"),
                &md(&[("Topic", "other/x"), ("retain", "true"), ("qos", "2")])
            ),
            Ok(Publish {
                topic: "other/x".into(),
                qos: Qos::ExactlyOnce,
                retain: true
            })
        );
    }

    #[test]
    fn empty_request_topic_means_the_components() {
        assert_eq!(
            publish(&config("orders"), &md(&[("topic", "")])).map(|p| p.topic),
            Ok("orders".into())
        );
    }

    #[test]
    fn wildcards_cannot_be_published_to() {
        assert_eq!(
            publish(&config("orders"), &md(&[("topic", "a/+")])).map_err(|e| e.to_string()),
            Err(r#"request metadata field "topic": expected a topic to publish to: a topic to publish to must not contain + or #"#.into())
        );
        assert_eq!(
            publish(&config("orders/#"), &[]).map_err(|e| e.to_string()),
            Err(r#"the component's topic "orders/#" cannot be published to (a topic to publish to must not contain + or #); give the request metadata field "topic""#.into())
        );
        assert_eq!(
            publish(&config("orders/#"), &md(&[("topic", "orders/1")])).map(|p| p.topic),
            Ok("orders/1".into())
        );
    }

    #[test]
    fn bad_overrides_name_the_field() {
        assert_eq!(
            publish(&config("t"), &md(&[("retain", "sometimes")])).map_err(|e| e.to_string()),
            Err(r#"request metadata field "retain": expected a boolean (true/false, 1/0, yes/no, on/off, t/f, y/n), got "sometimes""#.into())
        );
        assert_eq!(
            publish(&config("t"), &md(&[("qos", "3")])).map_err(|e| e.to_string()),
            Err(r#"request metadata field "qos": expected 0, 1 or 2, got "3""#.into())
        );
    }
}
