//! What the binding's policy asks of its host, in plain Rust: the WIT imports (the broker
//! connection, `delivery`, `lifecycle`, `logging`) as one trait, and the values they carry.
//! `component` implements it over the generated bindings; the unit tests of `input` and
//! `output` implement it with a scripted host, so the policy runs natively.

use std::fmt;
use std::time::{Duration, Instant};

use crate::metadata::{Qos, field};
use crate::request::{Properties, Publish};

/// The imports, for one binding's connection. `Payload` is the host's handle to a message's
/// bytes (passed back and forth, never copied); `Pending` a delivery started with `start`.
pub trait Host {
    type Payload;
    type Pending;

    fn subscribe(&self, filter: &str, qos: Qos, timeout_ms: u32) -> Result<(), BrokerError>;
    /// Up to `max` messages, waiting at most `timeout_ms` for the first.
    fn next_messages(
        &self,
        max: u32,
        timeout_ms: u32,
    ) -> Result<Vec<Message<Self::Payload>>, BrokerError>;
    fn ack(&self, id: u64) -> Result<(), BrokerError>;
    /// The topic and properties of the message whose payload this is (from
    /// `next_messages`); empty for any other payload, which the policy never asks about.
    fn received(&self, payload: &Self::Payload) -> Received;
    fn publish(
        &self,
        publish: &Publish,
        payload: &Self::Payload,
        timeout_ms: u32,
    ) -> Result<(), BrokerError>;
    /// Delivers one event and waits for the application's answer.
    fn deliver(&self, event: Event<'_, Self::Payload>) -> Answer<Self::Payload>;
    /// Delivers each of `events` (a payload, and whether to acknowledge it on acceptance) in
    /// order, on its first attempt, until the application does not accept one; the host
    /// releases the payloads of those it accepted. Any answer is dropped.
    fn deliver_each(&self, events: Vec<(Self::Payload, bool)>) -> Delivered<Self::Payload>;
    /// Starts a delivery; `wait_any` gives its answer.
    fn start(&self, event: Event<'_, Self::Payload>) -> Self::Pending;
    /// Waits at most `timeout_ms` for one of `deliveries` to be answered, for a message to
    /// arrive (when `watch_connection`), or for shutdown.
    fn wait_any(
        &self,
        deliveries: &[&Self::Pending],
        watch_connection: bool,
        timeout_ms: u32,
    ) -> Waited<Self::Payload>;
    fn gave_up(&self, how: GivenUp);
    /// Waits `wait`; `false` when shutdown ended the wait early.
    fn sleep(&self, wait: Duration) -> bool;
    fn now(&self) -> Instant;
    fn log(&self, level: Level, message: &str);
}

/// A message received on the subscription. Its topic and properties are asked of the host
/// when needed ([`Host::received`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<P> {
    /// The host's handle for `ack`.
    pub id: u64,
    pub payload: P,
    pub qos: Qos,
    pub retained: bool,
    pub duplicate: bool,
    /// An MQTT 5 request: its properties name a response topic.
    pub request: bool,
}

/// What the host tells of a received message on request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// The topic it was published to.
    pub topic: String,
    /// MQTT 5 properties; empty at MQTT 3.1.1.
    pub properties: Properties,
}

impl<P> Message<P> {
    /// The message without its payload, and the payload.
    pub fn split(self) -> (Message<()>, P) {
        let Self {
            id,
            payload,
            qos,
            retained,
            duplicate,
            request,
        } = self;
        let rest = Message {
            id,
            payload: (),
            qos,
            retained,
            duplicate,
            request,
        };
        (rest, payload)
    }
}

impl Message<()> {
    /// The message with `payload` put back.
    pub fn with<P>(self, payload: P) -> Message<P> {
        Message {
            id: self.id,
            payload,
            qos: self.qos,
            retained: self.retained,
            duplicate: self.duplicate,
            request: self.request,
        }
    }
}

/// What `deliver_each` did: how many events it delivered and the application accepted,
/// from the first; and when one was not accepted, why, with the payloads not delivered
/// given back (that one first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered<P> {
    pub accepted: usize,
    pub refused: Option<(DeliveryError, Vec<P>)>,
}

/// One delivery of a message to the application. The host gives the application the
/// message's bytes and its metadata (topic, flags, MQTT 5 properties), made once when it
/// arrived.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a, P> {
    /// The message's payload, as `next_messages` handed it.
    pub message: &'a P,
    /// 1 for the first delivery, 2 for the first retry.
    pub attempt: u32,
    /// `deliver` only: the host acknowledges the message once the application accepted it.
    pub ack: bool,
}

/// The application's answer: accepted (with the data it answered, if any), or not.
pub type Answer<P> = Result<Option<P>, DeliveryError>;

/// Why a delivery was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// The application did not accept it; the text says why.
    Failed(String),
    /// The binding is shutting down.
    Stopped,
}

/// What `wait_any` saw first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited<P> {
    /// The delivery at this index of the list was answered.
    Answered(usize, Answer<P>),
    MessageWaiting,
    TimedOut,
    Stopped,
}

/// How a message the application never accepted was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenUp {
    DeadLettered,
    LeftUnacknowledged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Why a broker operation failed: the WIT `broker.error`, case for case (its comments
/// say what each case means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    InvalidOption { field: ConnectField, reason: String },
    Unreachable(String),
    Tls(String),
    NotAuthorized(String),
    Timeout(String),
    Unconfirmed(String),
    TooLarge(String),
    Rejected(Rejection),
    Closed,
    Other(String),
}

/// The connect option a host refused (the WIT `connect-field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectField {
    Host,
    Path,
    ClientId,
    CaCert,
    ClientCert,
    ClientKey,
}

impl ConnectField {
    /// The metadata field the option was made from.
    pub fn metadata_field(self) -> &'static str {
        match self {
            Self::Host | Self::Path => field::URL,
            Self::ClientId => field::CONSUMER_ID,
            Self::CaCert => field::CA_CERT,
            Self::ClientCert => field::CLIENT_CERT,
            Self::ClientKey => field::CLIENT_KEY,
        }
    }
}

/// A reason code with which the broker refused a request (MQTT 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason_code: u8,
    pub reason: String,
    pub retryable: bool,
}

impl BrokerError {
    /// The WIT's rule: `unreachable` and `timeout` may succeed if retried, and a publish
    /// that failed with either was not sent, so retrying it makes no second copy; nor does
    /// one the broker refused with a retryable reason code (quota exceeded, say).
    /// `unconfirmed` is not retried: the broker may already have the message.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Timeout(_) => true,
            Self::Rejected(rejection) => rejection.retryable,
            _ => false,
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidOption { field, reason } => {
                write!(f, "invalid connect option {field:?}: {reason}")
            }
            Self::Unreachable(text) => write!(f, "broker unreachable: {text}"),
            Self::Tls(text) => write!(f, "TLS: {text}"),
            Self::NotAuthorized(text) => write!(f, "not authorized: {text}"),
            Self::Timeout(text) => write!(f, "timed out: {text}"),
            Self::Unconfirmed(text) => write!(f, "unconfirmed: {text}"),
            Self::TooLarge(text) => write!(f, "too large: {text}"),
            Self::Rejected(rejection) => write!(
                f,
                "the broker refused it with reason code {:#04x} ({})",
                rejection.reason_code, rejection.reason
            ),
            Self::Closed => f.write_str("the connection is closed for shutdown"),
            Self::Other(text) => f.write_str(text),
        }
    }
}
