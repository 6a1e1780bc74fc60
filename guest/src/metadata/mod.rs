//! The component's metadata: from Dapr's name/value pairs to a validated [`Config`].
//!
//! Pure functions, no I/O: secrets are already resolved by the host, and logging is left to
//! the caller through [`Config::notes`]. The rules are those of docs/BEHAVIOUR.md,
//! "Metadata fields". The broker URL is `url`'s, the TLS material `tls`'s, and the names
//! and single values `fields`'s; this module puts them together.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::retry::{Backoff, Retries};
use crate::topic;

mod fields;
mod tls;
mod url;

use fields::Fields;
pub use fields::{needs_mqtt5, parse_bool, parse_qos, parse_seconds};
/// Metadata names this component reads, in their documented spelling. Names match
/// case-insensitively.
pub mod field {
    pub const URL: &str = "url";
    pub const TOPIC: &str = "topic";
    pub const SHARED_SUBSCRIPTION_GROUP: &str = "sharedSubscriptionGroup";
    pub const CONSUMER_ID: &str = "consumerID";
    pub const QOS: &str = "qos";
    pub const RETAIN: &str = "retain";
    pub const CLEAN_SESSION: &str = "cleanSession";
    pub const CA_CERT: &str = "caCert";
    pub const CLIENT_CERT: &str = "clientCert";
    pub const CLIENT_KEY: &str = "clientKey";
    pub const BACK_OFF_MAX_RETRIES: &str = "backOffMaxRetries";
    pub const BACK_OFF_INTERVAL: &str = "backOffInterval";
    pub const DEAD_LETTER_TOPIC: &str = "deadLetterTopic";
    pub const KEEP_ALIVE: &str = "keepAlive";
    pub const PROTOCOL_VERSION: &str = "protocolVersion";
    pub const SESSION_EXPIRY_INTERVAL: &str = "sessionExpiryInterval";
    pub const TTL_IN_SECONDS: &str = "ttlInSeconds";
    pub const CONCURRENCY: &str = "concurrency";
}

/// Names that belong to the host (Dapr's runtime reads them, not the component).
const HOST_FIELDS: [&str; 2] = ["direction", "route"];

/// Dapr's `{uuid}` tag: each occurrence becomes a fresh random UUIDv4.
const UUID_TAG: &str = "{uuid}";
/// Dapr's `{podName}` tag: the replica's pod name (see [`Replica`]).
const POD_NAME_TAG: &str = "{podName}";

/// The wait between delivery attempts of the input binding (docs/BEHAVIOUR.md, "Input
/// binding").
const DEFAULT_BACK_OFF_INTERVAL: Duration = Duration::from_secs(5);

/// MQTT keep-alive: how often the client makes itself heard when idle (docs/BEHAVIOUR.md,
/// "Connection"). MQTT carries it in whole seconds, 1 to 65535 (0, "never", is refused: a
/// dead connection would then go unnoticed while idle).
const DEFAULT_KEEP_ALIVE_SECS: u16 = 30;

/// The most messages in delivery at once. A broker holds no more unacknowledged QoS 1/2
/// messages for a client than its in-flight window (mosquitto: 20 by default), and each
/// delivery in flight is a handle the host counts against the component's limit.
pub const MAX_CONCURRENCY: u16 = 256;

/// A validated binding configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub broker: Broker,
    /// The subscription filter (see [`Config::subscription`]), and the default publish topic.
    pub topic: String,
    /// The shared subscription group the input side joins (`sharedSubscriptionGroup`), so
    /// that replicas share the stream instead of each receiving all of it.
    pub share_group: Option<String>,
    /// MQTT client ID, used exactly as given.
    pub client_id: String,
    pub qos: Qos,
    pub retain: bool,
    pub clean_session: bool,
    /// MQTT keep-alive, in seconds (1 to 65535).
    pub keep_alive_secs: u16,
    pub protocol: Protocol,
    /// MQTT 5: how long the broker keeps the session after a disconnect, in seconds
    /// (`u32::MAX`: never expires); `None` ends it with the connection.
    pub session_expiry_secs: Option<u32>,
    /// MQTT 5: the message expiry of every publish unless a request says otherwise.
    pub ttl_secs: Option<u32>,
    pub tls: Tls,
    /// Retry policy for failed deliveries of the input binding.
    pub delivery_backoff: Backoff,
    /// Where a message goes when its deliveries are exhausted, instead of staying
    /// unacknowledged.
    pub dead_letter_topic: Option<String>,
    /// Input: how many messages may be in delivery at once (1 to [`MAX_CONCURRENCY`]).
    pub concurrency: u16,
    /// Things worth logging that did not stop the parse (unknown names, ignored fields).
    pub notes: Vec<Note>,
}

impl Config {
    /// What the input side subscribes to: `topic`, or `$share/GROUP/topic` in a share group.
    pub fn subscription(&self) -> Cow<'_, str> {
        match &self.share_group {
            Some(group) => Cow::Owned(topic::shared(group, &self.topic)),
            None => Cow::Borrowed(&self.topic),
        }
    }
}

/// Where the broker is and who we are to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// The WebSocket endpoint's path and query (`/` when the URL has none); empty for TCP
    /// and TLS.
    pub path: String,
    /// The other brokers of a `url` list, in order, reached the same way.
    pub failover: Vec<Server>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// Another broker of a failover list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// As [`Broker::path`].
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    /// Whether TLS carries the connection, so that the TLS fields apply.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// The schemes that mean this transport, for an error.
    fn family(self) -> &'static str {
        match self {
            Transport::Tcp => "plain MQTT (tcp://, mqtt://)",
            Transport::Tls => "MQTT over TLS (ssl://, mqtts://, tls://, tcps://)",
            Transport::Ws => "WebSockets (ws://)",
            Transport::Wss => "WebSockets over TLS (wss://)",
        }
    }
}

/// The MQTT version the binding speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

/// PEM material for TLS, checked to hold what it claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<Secret>,
}

/// A value that must never be printed: its `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A log line the parse wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub level: NoteLevel,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteLevel {
    Debug,
    Warn,
}

/// A metadata field that is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError {
    field: String,
    problem: String,
}

impl MetadataError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    /// `expected X, got "V"`: only for values that are not secret.
    pub(crate) fn expected(field: &str, expected: &str, got: &str) -> Self {
        Self::new(field, format!("expected {expected}, got {got:?}"))
    }

    /// A topic to publish to that is not one (see `topic::check_name`).
    pub(crate) fn expected_topic(field: &str, why: &str) -> Self {
        Self::new(field, format!("expected a topic to publish to: {why}"))
    }

    /// Two fields that say the same thing in two ways, both given.
    pub(crate) fn given_both(field: &str, other: &str) -> Self {
        Self::new(field, format!("given with {other:?}; give one of them"))
    }

    /// The documented name of the field at fault.
    pub fn field(&self) -> &str {
        &self.field
    }
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata field {:?}: {}", self.field, self.problem)
    }
}

impl std::error::Error for MetadataError {}

/// Whether two metadata names are the same name: Dapr matches them ignoring ASCII case.
/// The one rule for every lookup in the component.
pub fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The value of the first entry called `name` (see [`same_name`]).
pub fn lookup<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(key, _)| same_name(key, name))
        .map(|(_, value)| value.as_str())
}

/// Replaces each `{uuid}` in `value` with a fresh random UUIDv4.
pub fn expand_uuids(value: &str) -> String {
    if !value.contains(UUID_TAG) {
        return value.to_string();
    }
    let mut parts = value.split(UUID_TAG);
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        out.push_str(&uuid::Uuid::new_v4().to_string());
        out.push_str(part);
    }
    out
}

/// Who the binding runs as: what the tags in metadata values stand for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replica<'a> {
    /// The default client ID; empty when the host has none.
    pub app_id: &'a str,
    /// `{podName}`: the pod's name, which Dapr takes from `POD_NAME` (Kubernetes sets it
    /// through the downward API); `None` when it is not set.
    pub pod_name: Option<&'a str>,
}

/// Replaces each `{podName}` in field `name`'s `value` with `pod_name`; refused when there
/// is none, as Dapr does, since replicas would otherwise share one client ID.
fn expand_pod_name(
    name: &str,
    value: &str,
    pod_name: Option<&str>,
) -> Result<String, MetadataError> {
    if !value.contains(POD_NAME_TAG) {
        return Ok(value.to_string());
    }
    match pod_name {
        Some(pod_name) if !pod_name.is_empty() => Ok(value.replace(POD_NAME_TAG, pod_name)),
        _ => Err(MetadataError::new(
            name,
            "uses {podName}, but the pod name is not known: set the POD_NAME environment variable (on Kubernetes, from the downward API's metadata.name)",
        )),
    }
}

/// Parses and validates the binding's metadata. `app_id` is the default client ID; it may
/// be empty when the host has none. No pod name is known (see [`parse_as`]).
pub fn parse(app_id: &str, metadata: &[(String, String)]) -> Result<Config, MetadataError> {
    parse_as(
        Replica {
            app_id,
            pod_name: None,
        },
        metadata,
    )
}

/// Parses and validates the binding's metadata for `replica`.
pub fn parse_as(
    replica: Replica<'_>,
    metadata: &[(String, String)],
) -> Result<Config, MetadataError> {
    let app_id = replica.app_id;
    let expanded = metadata
        .iter()
        .map(|(name, value)| {
            let value = expand_pod_name(name, value, replica.pod_name)?;
            Ok((name.clone(), expand_uuids(&value)))
        })
        .collect::<Result<Vec<_>, MetadataError>>()?;
    let mut fields = Fields::new(&expanded)?;
    let mut notes = Vec::new();

    let broker = url::parse_urls(&fields.require(field::URL)?)?;
    let topic = parse_topic(&mut fields)?;
    let share_group = parse_share_group(&mut fields, &topic)?;
    let client_id = parse_client_id(&mut fields, app_id)?;
    let qos = match fields.optional(field::QOS) {
        Some(value) => parse_qos(field::QOS, &value)?,
        None => Qos::AtMostOnce,
    };
    let retain = fields.optional_bool(field::RETAIN, false)?;
    let clean_session = fields.optional_bool(field::CLEAN_SESSION, true)?;
    let keep_alive_secs = match fields.optional(field::KEEP_ALIVE) {
        Some(value) => fields::parse_keep_alive(&value)?,
        None => DEFAULT_KEEP_ALIVE_SECS,
    };
    let protocol = match fields.optional(field::PROTOCOL_VERSION) {
        Some(value) => fields::parse_protocol(&value)?,
        None => Protocol::V311,
    };
    let session_expiry_secs = parse_session_expiry(&mut fields, protocol, clean_session)?;
    let ttl_secs = parse_ttl(&mut fields, protocol, &mut notes)?;
    let tls = tls::parse_tls(&mut fields)?;
    if !broker.transport.is_tls()
        && (tls.ca_cert.is_some() || tls.client_cert.is_some() || tls.client_key.is_some())
    {
        notes.push(Note {
            level: NoteLevel::Warn,
            message: "caCert, clientCert or clientKey is set but the url is not a TLS url (ssl://, mqtts://, tls://, tcps://, wss://); they are ignored".into(),
        });
    }
    let delivery_backoff = parse_delivery_backoff(&mut fields)?;
    let dead_letter_topic = parse_dead_letter_topic(&mut fields)?;
    let concurrency = match fields.optional(field::CONCURRENCY) {
        Some(value) => fields::parse_concurrency(&value)?,
        None => 1,
    };
    notes.extend(unused(fields));

    Ok(Config {
        broker,
        topic,
        share_group,
        client_id,
        qos,
        retain,
        clean_session,
        keep_alive_secs,
        protocol,
        session_expiry_secs,
        ttl_secs,
        tls,
        delivery_backoff,
        dead_letter_topic,
        concurrency,
        notes,
    })
}

fn parse_topic(fields: &mut Fields<'_>) -> Result<String, MetadataError> {
    let topic = fields.require(field::TOPIC)?;
    topic::check_filter(&topic).map_err(|why| {
        MetadataError::new(
            field::TOPIC,
            format!("expected a valid MQTT topic filter: {why}"),
        )
    })?;
    Ok(topic)
}

/// `sharedSubscriptionGroup`: a share name, for a `topic` that is not a shared subscription
/// already.
fn parse_share_group(
    fields: &mut Fields<'_>,
    topic: &str,
) -> Result<Option<String>, MetadataError> {
    let Some(group) = fields.optional(field::SHARED_SUBSCRIPTION_GROUP) else {
        return Ok(None);
    };
    topic::check_share_name(&group).map_err(|why| {
        MetadataError::new(
            field::SHARED_SUBSCRIPTION_GROUP,
            format!("expected a share name: it {why}"),
        )
    })?;
    if topic::is_shared(topic) {
        return Err(MetadataError::new(
            field::SHARED_SUBSCRIPTION_GROUP,
            format!(
                "given with a {:?} that is a shared subscription already ({topic:?}); name the group in one of them",
                field::TOPIC
            ),
        ));
    }
    topic::check_filter(&topic::shared(&group, topic)).map_err(|why| {
        MetadataError::new(
            field::SHARED_SUBSCRIPTION_GROUP,
            format!(
                "expected a group that makes a valid shared subscription of {:?}: {why}",
                field::TOPIC
            ),
        )
    })?;
    Ok(Some(group))
}

/// `consumerID`, or the app ID when it is not given.
fn parse_client_id(fields: &mut Fields<'_>, app_id: &str) -> Result<String, MetadataError> {
    let client_id = match fields.optional(field::CONSUMER_ID) {
        Some(id) => id,
        None if !app_id.is_empty() => expand_uuids(app_id),
        None => {
            return Err(MetadataError::new(
                field::CONSUMER_ID,
                "is missing and the host gave no app ID to default to; set it (\"{uuid}\" gives a random one)",
            ));
        }
    };
    if client_id.len() > 65_535 {
        return Err(MetadataError::new(
            field::CONSUMER_ID,
            format!("is {} bytes long, MQTT allows 65535", client_id.len()),
        ));
    }
    Ok(client_id)
}

/// MQTT 5's session expiry: as given, or for ever for a persistent session (as MQTT 3.1.1
/// keeps one).
fn parse_session_expiry(
    fields: &mut Fields<'_>,
    protocol: Protocol,
    clean_session: bool,
) -> Result<Option<u32>, MetadataError> {
    let session_expiry = fields
        .optional(field::SESSION_EXPIRY_INTERVAL)
        .map(|value| parse_seconds(field::SESSION_EXPIRY_INTERVAL, &value, 0))
        .transpose()?;
    Ok(match (protocol, session_expiry) {
        (Protocol::V311, Some(_)) => return Err(needs_mqtt5(field::SESSION_EXPIRY_INTERVAL)),
        (Protocol::V311, None) => None,
        (Protocol::V5, Some(secs)) => Some(secs),
        (Protocol::V5, None) if !clean_session => Some(u32::MAX),
        (Protocol::V5, None) => None,
    })
}

/// The message expiry of every publish; noted and ignored at MQTT 3.1.1, as Dapr's binding
/// does.
fn parse_ttl(
    fields: &mut Fields<'_>,
    protocol: Protocol,
    notes: &mut Vec<Note>,
) -> Result<Option<u32>, MetadataError> {
    let ttl_secs = fields
        .optional(field::TTL_IN_SECONDS)
        .map(|value| parse_seconds(field::TTL_IN_SECONDS, &value, 1))
        .transpose()?;
    if ttl_secs.is_some() && protocol == Protocol::V311 {
        notes.push(Note {
            level: NoteLevel::Warn,
            message: format!(
                "metadata field {:?} is ignored: MQTT 3.1.1 has no message expiry (as in Dapr's binding); set {:?} to \"5\" to use it",
                field::TTL_IN_SECONDS,
                field::PROTOCOL_VERSION
            ),
        });
    }
    Ok(ttl_secs)
}

fn parse_delivery_backoff(fields: &mut Fields<'_>) -> Result<Backoff, MetadataError> {
    let retries = match fields.optional(field::BACK_OFF_MAX_RETRIES) {
        Some(value) => fields::parse_retries(&value)?,
        None => Retries::Limited(0),
    };
    let interval = match fields.optional(field::BACK_OFF_INTERVAL) {
        Some(value) => fields::parse_interval(&value)?,
        None => DEFAULT_BACK_OFF_INTERVAL,
    };
    Ok(Backoff { retries, interval })
}

fn parse_dead_letter_topic(fields: &mut Fields<'_>) -> Result<Option<String>, MetadataError> {
    let dead_letter_topic = fields.optional(field::DEAD_LETTER_TOPIC);
    if let Some(dead_letter) = &dead_letter_topic {
        topic::check_name(dead_letter).map_err(|why| {
            MetadataError::new(
                field::DEAD_LETTER_TOPIC,
                format!("expected a topic to publish to: {why}"),
            )
        })?;
    }
    Ok(dead_letter_topic)
}

/// A note for each field left over, but the host's own.
fn unused(mut fields: Fields<'_>) -> Vec<Note> {
    for host_field in HOST_FIELDS {
        fields.take(host_field);
    }
    fields
        .into_names()
        .map(|name| Note {
            level: NoteLevel::Debug,
            message: format!("metadata field {name:?} is not used by this binding; ignored"),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    pub const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

    pub fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    pub fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut m = md(&[("url", "tcp://localhost:1883"), ("topic", "orders")]);
        m.extend(md(extra));
        m
    }

    pub fn error_of(metadata: &[(String, String)]) -> String {
        match parse("app", metadata) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::test_support::*;

    #[test]
    fn minimal_metadata_takes_spec_defaults() {
        let config = parse("my-app", &with(&[])).expect("valid");
        assert_eq!(
            config.broker,
            Broker {
                transport: Transport::Tcp,
                host: "localhost".into(),
                port: 1883,
                path: String::new(),
                failover: Vec::new(),
                username: None,
                password: None
            }
        );
        assert_eq!(config.protocol, Protocol::V311);
        assert_eq!(config.session_expiry_secs, None);
        assert_eq!(config.ttl_secs, None);
        assert_eq!(config.concurrency, 1);
        assert_eq!(config.topic, "orders");
        assert_eq!(config.client_id, "my-app");
        assert_eq!(config.qos, Qos::AtMostOnce);
        assert!(!config.retain);
        assert!(config.clean_session);
        assert_eq!(config.tls, Tls::default());
        assert_eq!(config.delivery_backoff.retries, Retries::Limited(0));
        assert_eq!(config.delivery_backoff.interval, Duration::from_secs(5));
        assert!(config.notes.is_empty(), "{:?}", config.notes);
    }

    #[test]
    fn names_match_case_insensitively() {
        let config = parse(
            "app",
            &md(&[
                ("URL", "tcp://h"),
                ("Topic", "t"),
                ("QOS", "2"),
                ("backoffMaxRetries", "3"),
                ("CONSUMERid", "c"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.qos, Qos::ExactlyOnce);
        assert_eq!(config.delivery_backoff.retries, Retries::Limited(3));
        assert_eq!(config.client_id, "c");
    }

    #[test]
    fn names_differing_only_in_case_are_refused() {
        assert_eq!(
            error_of(&with(&[("qos", "1"), ("QoS", "2")])),
            r#"metadata field "QoS": given twice, as "qos" and "QoS" (names ignore case); give it once"#
        );
        assert_eq!(
            error_of(&with(&[("qos", "1"), ("qos", "1")])),
            r#"metadata field "qos": given twice; give it once"#
        );
    }

    #[test]
    fn topic_is_required_and_must_be_a_valid_filter() {
        assert_eq!(
            error_of(&md(&[("url", "tcp://h")])),
            r#"metadata field "topic": is missing; it is required"#
        );
        assert_eq!(
            error_of(&md(&[("url", "tcp://h"), ("topic", "a/#/b")])),
            r#"metadata field "topic": expected a valid MQTT topic filter: # must be a whole level and the last one"#
        );
        assert_eq!(
            error_of(&md(&[("url", "tcp://h"), ("topic", "a+")])),
            r#"metadata field "topic": expected a valid MQTT topic filter: + must be a whole level"#
        );
        let config = parse("a", &md(&[("url", "tcp://h"), ("topic", "$share/g/a/+")])).expect("ok");
        assert_eq!(config.topic, "$share/g/a/+");
        assert_eq!(config.subscription(), "$share/g/a/+");
    }

    #[test]
    fn a_share_group_makes_the_subscription_shared_and_is_checked() {
        let config = parse(
            "a",
            &md(&[
                ("url", "tcp://h"),
                ("topic", "orders/#"),
                ("sharedSubscriptionGroup", "workers"),
            ]),
        )
        .expect("ok");
        assert_eq!(config.share_group.as_deref(), Some("workers"));
        assert_eq!(config.subscription(), "$share/workers/orders/#");
        // Output publishes to the topic itself.
        assert_eq!(config.topic, "orders/#");
        let plain = parse(
            "a",
            &md(&[
                ("url", "tcp://h"),
                ("topic", "orders"),
                ("sharedSubscriptionGroup", " "),
            ]),
        )
        .expect("ok");
        assert_eq!(
            (plain.share_group.as_deref(), &*plain.subscription()),
            (None, "orders")
        );

        assert_eq!(
            error_of(&md(&[
                ("url", "tcp://h"),
                ("topic", "a"),
                ("sharedSubscriptionGroup", "a/b")
            ])),
            r#"metadata field "sharedSubscriptionGroup": expected a share name: it must not contain /, + or #; got "a/b""#
        );
        assert_eq!(
            error_of(&md(&[
                ("url", "tcp://h"),
                ("topic", "a"),
                ("sharedSubscriptionGroup", "g#")
            ])),
            r#"metadata field "sharedSubscriptionGroup": expected a share name: it must not contain /, + or #; got "g#""#
        );
        assert_eq!(
            error_of(&md(&[
                ("url", "tcp://h"),
                ("topic", "$share/g/a"),
                ("SharedSubscriptionGroup", "g")
            ])),
            r#"metadata field "sharedSubscriptionGroup": given with a "topic" that is a shared subscription already ("$share/g/a"); name the group in one of them"#
        );
        let long = "g".repeat(65_530);
        assert_eq!(
            error_of(&md(&[
                ("url", "tcp://h"),
                ("topic", "orders"),
                ("sharedSubscriptionGroup", &long)
            ])),
            r#"metadata field "sharedSubscriptionGroup": expected a group that makes a valid shared subscription of "topic": it is 65544 bytes long, MQTT allows 65535"#
        );
    }

    #[test]
    fn pod_name_is_the_replicas_and_is_required_where_used() {
        let metadata = md(&[
            ("url", "tcp://h"),
            ("topic", "t"),
            ("consumerID", "orders-{podName}"),
        ]);
        let replica = |pod_name| Replica {
            app_id: "orders",
            pod_name,
        };
        let config = parse_as(replica(Some("orders-7c9f-x2")), &metadata).expect("ok");
        assert_eq!(config.client_id, "orders-orders-7c9f-x2");
        for missing in [None, Some("")] {
            assert_eq!(
                parse_as(replica(missing), &metadata).map_err(|error| error.to_string()),
                Err(r#"metadata field "consumerID": uses {podName}, but the pod name is not known: set the POD_NAME environment variable (on Kubernetes, from the downward API's metadata.name)"#.into())
            );
        }
        let both = md(&[
            ("url", "tcp://h"),
            ("topic", "t"),
            ("consumerID", "{podName}-{uuid}"),
        ]);
        let config = parse_as(replica(Some("p")), &both).expect("ok");
        assert!(
            config.client_id.starts_with("p-") && config.client_id.len() == 2 + 36,
            "{}",
            config.client_id
        );
        // Without the tag the pod name is not needed.
        assert!(parse_as(replica(None), &md(&[("url", "tcp://h"), ("topic", "t")])).is_ok());
    }

    #[test]
    fn consumer_id_defaults_to_app_id_and_expands_uuid() {
        assert_eq!(parse("app-1", &with(&[])).expect("ok").client_id, "app-1");
        assert_eq!(
            parse("app-1", &with(&[("consumerID", "")]))
                .expect("ok")
                .client_id,
            "app-1"
        );
        let id = parse("app", &with(&[("consumerID", "svc-{uuid}")]))
            .expect("ok")
            .client_id;
        let uuid = id.strip_prefix("svc-").expect("prefix kept");
        assert_eq!(
            uuid::Uuid::parse_str(uuid).map(|u| u.get_version_num()),
            Ok(4),
            "{id}"
        );
        match parse("", &with(&[])) {
            Err(e) => assert_eq!(
                e.to_string(),
                r#"metadata field "consumerID": is missing and the host gave no app ID to default to; set it ("{uuid}" gives a random one)"#
            ),
            Ok(config) => panic!("expected an error, got {config:?}"),
        }
    }

    #[test]
    fn each_uuid_tag_is_a_different_uuid() {
        let value = expand_uuids("{uuid}/{uuid}");
        let (a, b) = value.split_once('/').expect("two parts");
        assert_ne!(a, b);
        assert!(
            uuid::Uuid::parse_str(a).is_ok() && uuid::Uuid::parse_str(b).is_ok(),
            "{value}"
        );
        assert_eq!(expand_uuids("plain"), "plain");
    }

    #[test]
    fn dead_letter_topic_must_be_publishable() {
        let config = parse("a", &with(&[("deadLetterTopic", "dlq/orders")])).expect("valid");
        assert_eq!(config.dead_letter_topic.as_deref(), Some("dlq/orders"));
        assert_eq!(
            parse("a", &with(&[])).expect("valid").dead_letter_topic,
            None
        );
        assert_eq!(
            error_of(&with(&[("deadLetterTopic", "dlq/#")])),
            r#"metadata field "deadLetterTopic": expected a topic to publish to: a topic to publish to must not contain + or #"#
        );
    }

    #[test]
    fn unknown_names_are_noted_and_host_names_are_not() {
        let config = parse(
            "a",
            &with(&[("direction", "input"), ("route", "/x"), ("colour", "red")]),
        )
        .expect("valid");
        assert_eq!(
            config.notes,
            vec![Note {
                level: NoteLevel::Debug,
                message: r#"metadata field "colour" is not used by this binding; ignored"#.into()
            }]
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(
            "a",
            &md(&[
                ("url", "ssl://u:hunter2@h"),
                ("topic", "t"),
                ("clientCert", CERT),
                ("clientKey", KEY),
            ]),
        )
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("MIGHAgEA"),
            "{debug}"
        );
    }

    #[test]
    fn mqtt5_fields_are_read_and_checked() {
        let config = parse(
            "app",
            &with(&[
                ("protocolVersion", "5"),
                ("cleanSession", "false"),
                ("ttlInSeconds", "1m"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.protocol, Protocol::V5);
        assert_eq!(
            config.session_expiry_secs,
            Some(u32::MAX),
            "kept, as 3.1.1 does"
        );
        assert_eq!(config.ttl_secs, Some(60));
        let config = parse(
            "app",
            &with(&[("protocolVersion", "5"), ("sessionExpiryInterval", "3600")]),
        )
        .expect("valid");
        assert_eq!(config.session_expiry_secs, Some(3600));
        let config = parse("app", &with(&[("protocolVersion", "5")])).expect("valid");
        assert_eq!(
            config.session_expiry_secs, None,
            "clean session: ends with the connection"
        );
        for (metadata, error) in [
            (
                vec![("protocolVersion", "3")],
                r#"metadata field "protocolVersion": expected "3.1.1" or "5", got "3""#,
            ),
            (
                vec![("sessionExpiryInterval", "60")],
                r#"metadata field "sessionExpiryInterval": is an MQTT 5 feature; set the metadata field "protocolVersion" to "5" to use it"#,
            ),
            (
                vec![("protocolVersion", "5"), ("sessionExpiryInterval", "-1")],
                r#"metadata field "sessionExpiryInterval": expected whole seconds from 0 to 4294967295, such as 3600, 3600s or 1h, got "-1""#,
            ),
            (
                vec![
                    ("protocolVersion", "5"),
                    ("sessionExpiryInterval", "4294967296"),
                ],
                r#"metadata field "sessionExpiryInterval": expected whole seconds from 0 to 4294967295, such as 3600, 3600s or 1h, got "4294967296""#,
            ),
            (
                vec![("protocolVersion", "5"), ("ttlInSeconds", "0")],
                r#"metadata field "ttlInSeconds": expected whole seconds from 1 to 4294967295, such as 3600, 3600s or 1h, got "0""#,
            ),
            (
                vec![("ttlInSeconds", "soon")],
                r#"metadata field "ttlInSeconds": expected whole seconds from 1 to 4294967295, such as 3600, 3600s or 1h, got "soon""#,
            ),
        ] {
            assert_eq!(error_of(&with(&metadata)), error);
        }
        let config = parse("app", &with(&[("ttlInSeconds", "10")])).expect("valid at 3.1.1");
        assert!(
            config
                .notes
                .iter()
                .any(|n| n.level == NoteLevel::Warn && n.message.contains("ttlInSeconds")),
            "ignored with a warning: {:?}",
            config.notes
        );
    }
}
