//! The output binding's requests: which operation, and where and how to publish once the
//! per-request metadata has overridden the component's. Pure functions.

use std::fmt;

use base64::Engine as _;

use crate::metadata::{self, Config, Protocol, Qos};
use crate::topic;

/// Request metadata names for MQTT 5 properties (docs/BEHAVIOUR.md, "Output binding").
pub mod field {
    pub const TTL_IN_SECONDS: &str = "ttlInSeconds";
    pub const CONTENT_TYPE: &str = "contentType";
    pub const RESPONSE_TOPIC: &str = "responseTopic";
    pub const CORRELATION_DATA: &str = "correlationData";
    pub const CORRELATION_DATA_BASE64: &str = "correlationDataBase64";
    /// `userProperty.NAME`: one user property called NAME (case kept).
    pub const USER_PROPERTY_PREFIX: &str = "userProperty.";
    /// W3C trace context, which a sidecar copies in from the caller's headers.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

/// The operations of the output binding.
pub const OPERATIONS: [&str; 1] = ["create"];

/// One publish, fully decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: Qos,
    pub retain: bool,
    /// MQTT 5 properties; always empty at MQTT 3.1.1.
    pub properties: Properties,
}

/// The MQTT 5 properties of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub expiry_secs: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
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
/// (empty means the component's), `retain` and `qos` override; the MQTT 5 fields of
/// [`field`] set properties (see [`properties`]); other names are ignored, as Dapr passes
/// request metadata through to every binding.
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
        properties: properties(config, request).map_err(invalid)?,
    })
}

/// The MQTT 5 properties a request asks for. `ttlInSeconds` (else the component's) sets the
/// expiry; `contentType`, `responseTopic`, `correlationData` (text) or
/// `correlationDataBase64` (any bytes), and each `userProperty.NAME` set theirs, and are
/// refused at MQTT 3.1.1, where they cannot be sent. `traceparent` and `tracestate`, which
/// a sidecar copies in from its caller, become user properties (W3C Trace Context over
/// MQTT) at MQTT 5 and are left out at 3.1.1, as is `ttlInSeconds` (as in Dapr).
pub fn properties(
    config: &Config,
    request: &[(String, String)],
) -> Result<Properties, metadata::MetadataError> {
    let get = |name: &str| metadata::lookup(request, name).filter(|value| !value.is_empty());
    let expiry_secs = get(field::TTL_IN_SECONDS)
        .map(|value| metadata::parse_seconds(field::TTL_IN_SECONDS, value, 1))
        .transpose()?
        .or(config.ttl_secs);
    let mqtt5 = config.protocol == Protocol::V5;
    let only_mqtt5 = |name: &str| {
        if mqtt5 {
            Ok(())
        } else {
            Err(metadata::needs_mqtt5(name))
        }
    };
    let mut properties = Properties {
        expiry_secs: expiry_secs.filter(|_| mqtt5),
        ..Properties::default()
    };
    if let Some(content_type) = get(field::CONTENT_TYPE) {
        only_mqtt5(field::CONTENT_TYPE)?;
        properties.content_type = Some(content_type.to_string());
    }
    if let Some(response_topic) = get(field::RESPONSE_TOPIC) {
        only_mqtt5(field::RESPONSE_TOPIC)?;
        topic::check_name(response_topic)
            .map_err(|why| metadata::MetadataError::expected_topic(field::RESPONSE_TOPIC, &why))?;
        properties.response_topic = Some(response_topic.to_string());
    }
    match (
        get(field::CORRELATION_DATA),
        get(field::CORRELATION_DATA_BASE64),
    ) {
        (Some(_), Some(_)) => {
            return Err(metadata::MetadataError::given_both(
                field::CORRELATION_DATA,
                field::CORRELATION_DATA_BASE64,
            ));
        }
        (Some(text), None) => {
            only_mqtt5(field::CORRELATION_DATA)?;
            properties.correlation_data = Some(text.as_bytes().to_vec());
        }
        (None, Some(encoded)) => {
            only_mqtt5(field::CORRELATION_DATA_BASE64)?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| {
                    metadata::MetadataError::expected(
                        field::CORRELATION_DATA_BASE64,
                        "standard base64 (RFC 4648, with padding)",
                        encoded,
                    )
                })?;
            properties.correlation_data = Some(bytes);
        }
        (None, None) => {}
    }
    for (name, value) in request {
        let Some(property) = strip_prefix_ignoring_case(name, field::USER_PROPERTY_PREFIX) else {
            continue;
        };
        only_mqtt5(name)?;
        if property.is_empty() {
            return Err(metadata::MetadataError::expected(
                name,
                "a property name after \"userProperty.\"",
                name,
            ));
        }
        properties
            .user_properties
            .push((property.to_string(), value.clone()));
    }
    if mqtt5 {
        for name in [field::TRACEPARENT, field::TRACESTATE] {
            if let Some(value) = get(name) {
                properties
                    .user_properties
                    .push((name.to_string(), value.to_string()));
            }
        }
    }
    Ok(properties)
}

fn strip_prefix_ignoring_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    metadata::same_name(head, prefix).then(|| &name[prefix.len()..])
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
                retain: false,
                properties: Properties::default(),
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
                retain: true,
                properties: Properties::default(),
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

    fn config5(extra: &[(&str, &str)]) -> Config {
        let mut metadata = vec![("url", "tcp://h"), ("topic", "t"), ("protocolVersion", "5")];
        metadata.extend_from_slice(extra);
        let metadata = metadata.map_pairs();
        metadata::parse("app", &metadata).expect("valid config")
    }

    trait MapPairs {
        fn map_pairs(self) -> Vec<(String, String)>;
    }

    impl MapPairs for Vec<(&str, &str)> {
        fn map_pairs(self) -> Vec<(String, String)> {
            self.into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        }
    }

    #[test]
    fn mqtt5_request_fields_become_properties_in_order() {
        let request = md(&[
            ("contentType", "application/json"),
            ("userProperty.region", "eu"),
            ("responseTopic", "replies/1"),
            ("correlationDataBase64", "AP8="),
            ("UserProperty.Region", "us"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("ttlInSeconds", "30"),
            ("some-header", "not a property"),
        ]);
        assert_eq!(
            properties(&config5(&[]), &request).expect("valid"),
            Properties {
                expiry_secs: Some(30),
                content_type: Some("application/json".into()),
                response_topic: Some("replies/1".into()),
                correlation_data: Some(vec![0x00, 0xff]),
                user_properties: vec![
                    ("region".into(), "eu".into()),
                    ("Region".into(), "us".into()),
                    (
                        "traceparent".into(),
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()
                    ),
                ],
            }
        );
        let defaults = properties(&config5(&[("ttlInSeconds", "60")]), &[]).expect("valid");
        assert_eq!(defaults.expiry_secs, Some(60), "the component's ttl");
    }

    #[test]
    fn mqtt5_request_fields_are_refused_at_311_except_ttl_and_trace_context() {
        let at_311 = config("t");
        let quiet = md(&[("ttlInSeconds", "30"), ("traceparent", "00-ab-cd-01")]);
        assert_eq!(properties(&at_311, &quiet), Ok(Properties::default()));
        for name in [
            "contentType",
            "responseTopic",
            "correlationData",
            "userProperty.x",
        ] {
            assert_eq!(
                publish(&at_311, &md(&[(name, "v")])).map_err(|e| e.to_string()),
                Err(format!(
                    r#"request metadata field "{name}": is an MQTT 5 feature; set the metadata field "protocolVersion" to "5" to use it"#
                ))
            );
        }
    }

    #[test]
    fn bad_mqtt5_request_fields_name_the_field() {
        let config = config5(&[]);
        for (request, error) in [
            (
                md(&[("ttlInSeconds", "0")]),
                r#"request metadata field "ttlInSeconds": expected whole seconds from 1 to 4294967295, such as 3600, 3600s or 1h, got "0""#,
            ),
            (
                md(&[("responseTopic", "replies/+")]),
                r#"request metadata field "responseTopic": expected a topic to publish to: a topic to publish to must not contain + or #"#,
            ),
            (
                md(&[("correlationDataBase64", "not base64!")]),
                r#"request metadata field "correlationDataBase64": expected standard base64 (RFC 4648, with padding), got "not base64!""#,
            ),
            (
                md(&[("correlationData", "a"), ("correlationDataBase64", "YQ==")]),
                r#"request metadata field "correlationData": given with "correlationDataBase64"; give one of them"#,
            ),
            (
                md(&[("userProperty.", "v")]),
                r#"request metadata field "userProperty.": expected a property name after "userProperty.", got "userProperty.""#,
            ),
        ] {
            assert_eq!(
                publish(&config, &request).map_err(|e| e.to_string()),
                Err(error.to_string())
            );
        }
    }
}
