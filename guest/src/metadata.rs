//! The component's metadata: from Dapr's name/value pairs to a validated [`Config`].
//!
//! Pure functions, no I/O: secrets are already resolved by the host, and logging is left to
//! the caller through [`Config::notes`]. The rules are those of docs/BEHAVIOUR.md,
//! "Metadata fields".

use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::retry::{Backoff, Retries};
use crate::topic;

/// Metadata names this component reads, in their documented spelling. Names match
/// case-insensitively.
pub mod field {
    pub const URL: &str = "url";
    pub const TOPIC: &str = "topic";
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
    /// The subscription filter, and the default publish topic.
    pub topic: String,
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

/// Where the broker is and who we are to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// The WebSocket endpoint's path and query (`/` when the URL has none); empty for TCP
    /// and TLS.
    pub path: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
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

/// Metadata after name matching: the value for each known name, if given.
struct Fields<'a> {
    entries: Vec<(&'a str, String)>,
}

impl<'a> Fields<'a> {
    /// Matches names case-insensitively and refuses a name given twice, in any case.
    fn new(metadata: &'a [(String, String)]) -> Result<Self, MetadataError> {
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
    fn take(&mut self, field: &str) -> Option<String> {
        let at = self
            .entries
            .iter()
            .position(|(name, _)| same_name(name, field))?;
        Some(self.entries.swap_remove(at).1)
    }

    /// A field that must be present and not blank.
    fn require(&mut self, field: &str) -> Result<String, MetadataError> {
        match self.take(field) {
            Some(value) if !value.trim().is_empty() => Ok(value),
            Some(_) => Err(MetadataError::new(field, "is empty; it is required")),
            None => Err(MetadataError::new(field, "is missing; it is required")),
        }
    }

    /// A field whose blank value means "not given", as Dapr treats empty metadata.
    fn optional(&mut self, field: &str) -> Option<String> {
        self.take(field).filter(|value| !value.trim().is_empty())
    }
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

/// Parses and validates the binding's metadata. `app_id` is the default client ID; it may
/// be empty when the host has none.
pub fn parse(app_id: &str, metadata: &[(String, String)]) -> Result<Config, MetadataError> {
    let expanded: Vec<(String, String)> = metadata
        .iter()
        .map(|(name, value)| (name.clone(), expand_uuids(value)))
        .collect();
    let mut fields = Fields::new(&expanded)?;
    let mut notes = Vec::new();

    let broker = parse_url(&fields.require(field::URL)?)?;

    let topic = fields.require(field::TOPIC)?;
    topic::check_filter(&topic).map_err(|why| {
        MetadataError::new(
            field::TOPIC,
            format!("expected a valid MQTT topic filter: {why}"),
        )
    })?;

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

    let qos = match fields.optional(field::QOS) {
        Some(value) => parse_qos(field::QOS, &value)?,
        None => Qos::AtMostOnce,
    };
    let retain = parse_optional_bool(&mut fields, field::RETAIN, false)?;
    let clean_session = parse_optional_bool(&mut fields, field::CLEAN_SESSION, true)?;
    let keep_alive_secs = match fields.optional(field::KEEP_ALIVE) {
        Some(value) => parse_keep_alive(&value)?,
        None => DEFAULT_KEEP_ALIVE_SECS,
    };
    let protocol = match fields.optional(field::PROTOCOL_VERSION) {
        Some(value) => parse_protocol(&value)?,
        None => Protocol::V311,
    };
    let session_expiry = fields
        .optional(field::SESSION_EXPIRY_INTERVAL)
        .map(|value| parse_seconds(field::SESSION_EXPIRY_INTERVAL, &value, 0))
        .transpose()?;
    let session_expiry_secs = match (protocol, session_expiry) {
        (Protocol::V311, Some(_)) => {
            return Err(needs_mqtt5(field::SESSION_EXPIRY_INTERVAL));
        }
        (Protocol::V311, None) => None,
        (Protocol::V5, Some(secs)) => Some(secs),
        // As MQTT 3.1.1 keeps a persistent session: for ever.
        (Protocol::V5, None) if !clean_session => Some(u32::MAX),
        (Protocol::V5, None) => None,
    };
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
    let tls = parse_tls(&mut fields)?;
    if !broker.transport.is_tls()
        && (tls.ca_cert.is_some() || tls.client_cert.is_some() || tls.client_key.is_some())
    {
        notes.push(Note {
            level: NoteLevel::Warn,
            message: "caCert, clientCert or clientKey is set but the url is not a TLS url (ssl://, mqtts://, tls://, tcps://, wss://); they are ignored".into(),
        });
    }

    let max_retries = match fields.optional(field::BACK_OFF_MAX_RETRIES) {
        Some(value) => parse_retries(&value)?,
        None => Retries::Limited(0),
    };
    let interval = match fields.optional(field::BACK_OFF_INTERVAL) {
        Some(value) => parse_interval(&value)?,
        None => DEFAULT_BACK_OFF_INTERVAL,
    };
    let delivery_backoff = Backoff {
        retries: max_retries,
        interval,
    };
    let dead_letter_topic = fields.optional(field::DEAD_LETTER_TOPIC);
    if let Some(dead_letter) = &dead_letter_topic {
        topic::check_name(dead_letter).map_err(|why| {
            MetadataError::new(
                field::DEAD_LETTER_TOPIC,
                format!("expected a topic to publish to: {why}"),
            )
        })?;
    }

    let concurrency = match fields.optional(field::CONCURRENCY) {
        Some(value) => parse_concurrency(&value)?,
        None => 1,
    };

    for host_field in HOST_FIELDS {
        fields.take(host_field);
    }
    for (name, _) in &fields.entries {
        notes.push(Note {
            level: NoteLevel::Debug,
            message: format!("metadata field {name:?} is not used by this binding; ignored"),
        });
    }

    Ok(Config {
        broker,
        topic,
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

fn parse_optional_bool(
    fields: &mut Fields<'_>,
    field: &str,
    default: bool,
) -> Result<bool, MetadataError> {
    fields
        .optional(field)
        .map_or(Ok(default), |value| parse_bool(field, &value))
}

fn parse_retries(value: &str) -> Result<Retries, MetadataError> {
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
fn parse_interval(value: &str) -> Result<Duration, MetadataError> {
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
fn parse_concurrency(value: &str) -> Result<u16, MetadataError> {
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
fn parse_protocol(value: &str) -> Result<Protocol, MetadataError> {
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
fn parse_keep_alive(value: &str) -> Result<u16, MetadataError> {
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

/// Parses the broker URL: scheme, host, port (with the scheme's default), credentials.
fn parse_url(value: &str) -> Result<Broker, MetadataError> {
    const SCHEMES: &str = "tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://";
    let invalid = |why: String| MetadataError::new(field::URL, why);
    // The value may hold a password, so no error below echoes it whole.
    let url = url::Url::parse(value.trim()).map_err(|e| {
        invalid(format!(
            "expected a URL such as tcp://host:1883 ({SCHEMES}): {e}"
        ))
    })?;
    let (transport, default_port) = match url.scheme() {
        "tcp" | "mqtt" => (Transport::Tcp, 1883),
        "ssl" | "mqtts" | "tls" | "tcps" => (Transport::Tls, 8883),
        "ws" => (Transport::Ws, 80),
        "wss" => (Transport::Wss, 443),
        other => {
            return Err(invalid(format!(
                "expected a scheme of {SCHEMES}, got \"{other}://\""
            )));
        }
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) if !host.to_string().is_empty() => host.to_string(),
        _ => {
            return Err(invalid(
                "expected a host name, as in tcp://host:1883; there is none".into(),
            ));
        }
    };
    let port = match url.port() {
        Some(0) => return Err(invalid("port 0 is not a port a broker listens on".into())),
        Some(port) => port,
        None => default_port,
    };
    let websocket = matches!(transport, Transport::Ws | Transport::Wss);
    if url.fragment().is_some()
        || (!websocket && (!matches!(url.path(), "" | "/") || url.query().is_some()))
    {
        let allowed = if websocket {
            "fragment"
        } else {
            "path, query or fragment"
        };
        return Err(invalid(format!(
            "expected no {allowed} after {}://host:port",
            url.scheme()
        )));
    }
    // The WebSocket endpoint, as the URL writes it (percent-encoding kept).
    let path = match (websocket, url.query()) {
        (false, _) => String::new(),
        (true, None) => url.path().to_string(),
        (true, Some(query)) => format!("{}?{query}", url.path()),
    };
    let decode = |part: &str, what: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| {
                invalid(format!(
                    "the {what} is not valid UTF-8 once percent-decoded"
                ))
            })
    };
    let username = match url.username() {
        "" => None,
        user => Some(decode(user, "user name")?),
    };
    let password = url
        .password()
        .map(|p| decode(p, "password").map(Secret))
        .transpose()?;
    Ok(Broker {
        transport,
        host,
        port,
        path,
        username,
        password,
    })
}

fn parse_tls(fields: &mut Fields<'_>) -> Result<Tls, MetadataError> {
    let ca_cert = fields.optional(field::CA_CERT);
    let client_cert = fields.optional(field::CLIENT_CERT);
    let client_key = fields.optional(field::CLIENT_KEY);
    if let Some(ca) = &ca_cert {
        check_certificates(field::CA_CERT, ca)?;
    }
    match (&client_cert, &client_key) {
        (Some(_), None) => {
            return Err(MetadataError::new(
                field::CLIENT_CERT,
                "is set without \"clientKey\"; give both or neither",
            ));
        }
        (None, Some(_)) => {
            return Err(MetadataError::new(
                field::CLIENT_KEY,
                "is set without \"clientCert\"; give both or neither",
            ));
        }
        (Some(cert), Some(key)) => {
            check_certificates(field::CLIENT_CERT, cert)?;
            // The key's own text never goes into the error.
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                MetadataError::new(
                    field::CLIENT_KEY,
                    "expected a PEM private key (PKCS#1 \"RSA PRIVATE KEY\", PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"); none could be read",
                )
            })?;
        }
        (None, None) => {}
    }
    Ok(Tls {
        ca_cert,
        client_cert,
        client_key: client_key.map(Secret),
    })
}

/// Checks that `pem` holds at least one certificate and nothing unreadable.
fn check_certificates(field: &str, pem: &str) -> Result<(), MetadataError> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|_| {
            MetadataError::new(
                field,
                format!("expected PEM certificates; certificate {} is not valid PEM (bad framing or base64)", count + 1),
            )
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(MetadataError::new(
            field,
            "expected at least one PEM certificate (-----BEGIN CERTIFICATE-----); found none",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

    fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut m = md(&[("url", "tcp://localhost:1883"), ("topic", "orders")]);
        m.extend(md(extra));
        m
    }

    fn error_of(metadata: &[(String, String)]) -> String {
        match parse("app", metadata) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

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
    fn url_schemes_and_default_ports() {
        for (url, transport, port) in [
            ("tcp://h", Transport::Tcp, 1883),
            ("mqtt://h", Transport::Tcp, 1883),
            ("ssl://h", Transport::Tls, 8883),
            ("mqtts://h", Transport::Tls, 8883),
            ("tls://h", Transport::Tls, 8883),
            ("tcps://h", Transport::Tls, 8883),
            ("TCP://h:1884/", Transport::Tcp, 1884),
            ("ssl://h:9999", Transport::Tls, 9999),
        ] {
            let broker = parse("a", &md(&[("url", url), ("topic", "t")]))
                .expect(url)
                .broker;
            assert_eq!((broker.transport, broker.port), (transport, port), "{url}");
        }
    }

    #[test]
    fn url_hosts_keep_their_form() {
        for (url, host) in [
            ("tcp://127.0.0.1:1883", "127.0.0.1"),
            ("tcp://[::1]:1883", "::1"),
            ("tcp://Broker.Example.com", "Broker.Example.com"),
        ] {
            let broker = parse("a", &md(&[("url", url), ("topic", "t")]))
                .expect(url)
                .broker;
            assert_eq!(broker.host, host, "{url}");
        }
    }

    #[test]
    fn url_credentials_are_percent_decoded() {
        let broker = parse(
            "a",
            &md(&[("url", "tcp://us%40er:p%3Ass@h:1"), ("topic", "t")]),
        )
        .expect("valid")
        .broker;
        assert_eq!(broker.username.as_deref(), Some("us@er"));
        assert_eq!(broker.password.as_ref().map(Secret::expose), Some("p:ss"));
        let broker = parse("a", &md(&[("url", "tcp://user@h"), ("topic", "t")]))
            .expect("valid")
            .broker;
        assert_eq!(
            (broker.username.as_deref(), broker.password),
            (Some("user"), None)
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        let cases = [
            ("", r#"metadata field "url": is empty; it is required"#),
            (
                "localhost:1883",
                r#"metadata field "url": expected a scheme of tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://, got "localhost://""#,
            ),
            (
                "http://h",
                r#"metadata field "url": expected a scheme of tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://, got "http://""#,
            ),
            (
                "ws://h/mqtt#top",
                r#"metadata field "url": expected no fragment after ws://host:port"#,
            ),
            (
                "tcp://",
                r#"metadata field "url": expected a host name, as in tcp://host:1883; there is none"#,
            ),
            (
                "tcp://u:secret@h:99999",
                r#"metadata field "url": expected a URL such as tcp://host:1883 (tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://): invalid port number"#,
            ),
            (
                "tcp://h:0",
                r#"metadata field "url": port 0 is not a port a broker listens on"#,
            ),
            (
                "tcp://u:secret@h/path",
                r#"metadata field "url": expected no path, query or fragment after tcp://host:port"#,
            ),
            (
                "no url at all",
                r#"metadata field "url": expected a URL such as tcp://host:1883 (tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://): relative URL without a base"#,
            ),
        ];
        for (url, expected) in cases {
            let error = error_of(&md(&[("url", url), ("topic", "t")]));
            assert_eq!(error, expected, "{url:?}");
            assert!(!error.contains("secret"), "{error}");
        }
        assert_eq!(
            error_of(&md(&[("topic", "t")])),
            r#"metadata field "url": is missing; it is required"#
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
    }

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
    fn tls_material_must_parse_and_come_in_pairs() {
        let tls = parse(
            "a",
            &md(&[
                ("url", "ssl://h"),
                ("topic", "t"),
                ("caCert", CERT),
                ("clientCert", CERT),
                ("clientKey", KEY),
            ]),
        )
        .expect("valid")
        .tls;
        assert_eq!(tls.ca_cert.as_deref(), Some(CERT));
        assert_eq!(tls.client_key.as_ref().map(Secret::expose), Some(KEY));

        assert_eq!(
            error_of(&with(&[("caCert", "not a pem")])),
            r#"metadata field "caCert": expected at least one PEM certificate (-----BEGIN CERTIFICATE-----); found none"#
        );
        assert_eq!(
            error_of(&with(&[(
                "caCert",
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            )])),
            r#"metadata field "caCert": expected PEM certificates; certificate 1 is not valid PEM (bad framing or base64)"#
        );
        assert_eq!(
            error_of(&with(&[("clientCert", CERT)])),
            r#"metadata field "clientCert": is set without "clientKey"; give both or neither"#
        );
        assert_eq!(
            error_of(&with(&[("clientKey", KEY)])),
            r#"metadata field "clientKey": is set without "clientCert"; give both or neither"#
        );
        let bad_key = "-----BEGIN PRIVATE KEY-----\nsecret!!\n-----END PRIVATE KEY-----\n";
        let error = error_of(&with(&[("clientCert", CERT), ("clientKey", bad_key)]));
        assert_eq!(
            error,
            r#"metadata field "clientKey": expected a PEM private key (PKCS#1 "RSA PRIVATE KEY", PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY"); none could be read"#
        );
        assert!(!error.contains("secret"));
    }

    #[test]
    fn tls_material_with_plain_url_is_a_warning() {
        let config = parse("a", &with(&[("caCert", CERT)])).expect("valid");
        assert_eq!(config.notes.len(), 1, "{:?}", config.notes);
        assert_eq!(config.notes[0].level, NoteLevel::Warn);
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
    fn websocket_urls_keep_their_path_and_take_the_web_ports() {
        let config = parse("app", &md(&[("url", "ws://h/mqtt"), ("topic", "t")])).expect("valid");
        assert_eq!(
            (
                config.broker.transport,
                config.broker.port,
                config.broker.path.as_str()
            ),
            (Transport::Ws, 80, "/mqtt")
        );
        let config = parse(
            "app",
            &md(&[("url", "wss://u:p@h:8443/a/b%20c?x=1"), ("topic", "t")]),
        )
        .expect("valid");
        assert_eq!(
            (
                config.broker.transport,
                config.broker.port,
                config.broker.path.as_str()
            ),
            (Transport::Wss, 8443, "/a/b%20c?x=1")
        );
        let config = parse("app", &md(&[("url", "wss://h"), ("topic", "t")])).expect("valid");
        assert_eq!(
            (config.broker.port, config.broker.path.as_str()),
            (443, "/")
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
