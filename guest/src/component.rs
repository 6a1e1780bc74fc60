//! The component's side of the WIT world: the generated bindings, the `Guest` impl, and the
//! few loops that call imports (publish with retries, the input loop with its delivery
//! retries). The decisions they follow (metadata, requests, retry policies) are plain Rust.

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::metadata::{self, Config, NoteLevel, Protocol, Qos, Secret, Transport};
use crate::request;
use crate::retry;
use crate::window::Window;

#[expect(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue is unsafe by nature"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "mqtt-binding",
        // Records passed to imports borrow their strings and bytes, so the component
        // copies nothing to build an event or the connect options.
        ownership: Borrowing { duplicate_if_necessary: true },
    });

    use super::Component;
    export!(Component with_types_in crate::component::bindings);
}

use bindings::exports::mqtt_binding::binding::binding::{
    Error, Guest, InvokeRequest, InvokeResponse,
};
use bindings::mqtt_binding::binding::broker::{self, ConnectOptions, Connection, PublishOptions};
use bindings::mqtt_binding::binding::delivery::{
    self, DeliveryError, Event, GivenUp, Pending, Waited,
};
use bindings::mqtt_binding::binding::logging::{self, Level};
use bindings::mqtt_binding::binding::types::Payload;
use bindings::mqtt_binding::binding::{lifecycle, types};

/// How long `connect` waits for CONNACK, and each publish for its acknowledgement.
const CONNECT_TIMEOUT_MS: u32 = 10_000;
const PUBLISH_TIMEOUT_MS: u32 = 10_000;
/// How long `subscribe` waits for SUBACK, and how long to wait before trying again.
const SUBSCRIBE_TIMEOUT_MS: u32 = 10_000;
const SUBSCRIBE_RETRY_MS: u32 = 1_000;
/// How long one `next-messages` call waits; the loop simply asks again.
const NEXT_MESSAGES_WAIT_MS: u32 = 60_000;
/// Most messages taken from the host at once: enough to save most calls under load, few
/// enough that a batch in hand stays small.
const NEXT_MESSAGES_MAX: u32 = 64;

/// What `init` set up: the validated config and the open connection.
struct Binding {
    config: Config,
    connection: Connection,
}

thread_local! {
    static BINDING: RefCell<Option<Binding>> = const { RefCell::new(None) };
}

struct Component;

impl Guest for Component {
    fn init(app_id: String, metadata: Vec<(String, String)>, first: bool) -> Result<(), Error> {
        let config = metadata::parse(&app_id, &metadata)
            .map_err(|e| Error::InvalidMetadata(e.to_string()))?;
        let connection = if first {
            for note in &config.notes {
                let level = match note.level {
                    NoteLevel::Debug => Level::Debug,
                    NoteLevel::Warn => Level::Warn,
                };
                logging::log(level, &note.message);
            }
            Connection::connect(connect_options(&config)).map_err(connect_error)?
        } else {
            Connection::join().map_err(Error::Broker)?
        };
        BINDING.with_borrow_mut(|binding| *binding = Some(Binding { config, connection }));
        Ok(())
    }

    fn operations() -> Vec<String> {
        request::OPERATIONS
            .iter()
            .map(|op| op.to_string())
            .collect()
    }

    fn invoke(request: InvokeRequest) -> Result<InvokeResponse, Error> {
        BINDING.with_borrow(|binding| {
            let binding = binding.as_ref().ok_or(Error::NotInitialized)?;
            request::check_operation(&request.operation)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
            let publish = request::publish(&binding.config, &request.metadata)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
            publish_with_retries(&binding.connection, &publish, &request.data)?;
            Ok(InvokeResponse {
                data: None,
                metadata: Vec::new(),
            })
        })
    }

    fn read() -> Result<(), Error> {
        BINDING.with_borrow(|binding| read_messages(binding.as_ref().ok_or(Error::NotInitialized)?))
    }
}

/// The input loop: subscribe, then deliver each message in the order the broker sent them,
/// one at a time, until the host closes the connection for shutdown.
fn read_messages(binding: &Binding) -> Result<(), Error> {
    let connection = &binding.connection;
    let topic = &binding.config.topic;
    loop {
        match connection.subscribe(topic, wit_qos(binding.config.qos), SUBSCRIBE_TIMEOUT_MS) {
            Ok(()) => break,
            Err(broker::Error::Closed) => return Ok(()),
            Err(error) if is_retryable(&error) => {
                logging::log(
                    Level::Warn,
                    &format!("subscribing to {topic:?} failed, retrying: {error:?}"),
                );
                if !lifecycle::sleep(SUBSCRIBE_RETRY_MS) {
                    return Ok(());
                }
            }
            Err(error) => return Err(Error::Broker(error)),
        }
    }
    logging::log(Level::Info, &format!("subscribed to {topic:?}"));
    if binding.config.concurrency > 1 {
        return read_concurrently(binding, usize::from(binding.config.concurrency));
    }
    loop {
        let messages = match connection.next_messages(NEXT_MESSAGES_MAX, NEXT_MESSAGES_WAIT_MS) {
            Ok(messages) => messages,
            Err(broker::Error::Closed) => return Ok(()),
            Err(error) => return Err(Error::Broker(error)),
        };
        for message in messages {
            // The rest of the batch stays unacknowledged, as if never taken.
            if deliver(binding, message) == Settled::Stopped {
                return Ok(());
            }
        }
    }
}

/// How the delivery of one message ended.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Delivered (or dead-lettered) and acknowledged.
    Acknowledged,
    /// Left unacknowledged for the broker to send again.
    Unacknowledged,
    /// Shutdown came before the application accepted it; unacknowledged.
    Stopped,
}

/// Delivers one message under the binding's retry policy, answers it if it is an MQTT 5
/// request and the application gave an answer, then acknowledges it or leaves it for the
/// broker to redeliver.
fn deliver(binding: &Binding, message: broker::Message) -> Settled {
    let topic = &message.topic;
    let entries = event_metadata(&message);
    let metadata: Vec<(&str, &str)> = entries
        .iter()
        .map(|(name, value)| (name.as_ref(), value.as_ref()))
        .collect();
    let mut attempt: u32 = 1;
    let reason = loop {
        let event = Event {
            data: &message.payload,
            metadata: &metadata,
            attempt,
        };
        let reason = match delivery::deliver(event) {
            Ok(answer) => {
                if !respond(binding, &message, answer) {
                    return Settled::Unacknowledged;
                }
                return acknowledge(&binding.connection, message.id, message.qos, topic);
            }
            Err(DeliveryError::Failed(reason)) => reason,
            Err(DeliveryError::Stopped) => return Settled::Stopped,
        };
        let Some(wait) = retry_after(binding, topic, attempt, &reason) else {
            break reason;
        };
        if !sleep(wait) {
            logging::log(
                Level::Info,
                &format!("shutting down: the message on {topic:?} stays unacknowledged"),
            );
            return Settled::Stopped;
        }
        attempt += 1;
    };
    if give_up(binding, &message, attempt, &reason) {
        acknowledge(&binding.connection, message.id, message.qos, topic)
    } else {
        Settled::Unacknowledged
    }
}

/// How long to wait before delivering a message on `topic` again after its delivery
/// number `failures` failed with `reason` (logged), or `None` when the retries are spent.
fn retry_after(binding: &Binding, topic: &str, failures: u32, reason: &str) -> Option<Duration> {
    let wait = binding
        .config
        .delivery_backoff
        .after_failure(u64::from(failures))?;
    logging::log(
        Level::Warn,
        &format!(
            "delivery of a message on {topic:?} failed (attempt {failures}), retrying in {wait:?}: {reason}"
        ),
    );
    Some(wait)
}

/// A message the application did not accept in `failures` deliveries, the last failing
/// with `reason`: moved to the dead-letter topic if there is one, else left for the broker
/// to send again. `true` when it is to be acknowledged (the dead-letter topic has it).
fn give_up(binding: &Binding, message: &broker::Message, failures: u32, reason: &str) -> bool {
    let topic = &message.topic;
    let Some(dead_letter) = &binding.config.dead_letter_topic else {
        logging::log(
            Level::Error,
            &format!(
                "delivery of a message on {topic:?} failed {failures} times, last: {reason}; it stays unacknowledged, so a persistent session redelivers it on the next connection"
            ),
        );
        delivery::gave_up(GivenUp::LeftUnacknowledged);
        return false;
    };
    // Published at QoS 1 at least, so the broker has confirmed it before the original is
    // acknowledged: the message is never in neither place. Its MQTT 5 properties go along.
    let publish = request::Publish {
        topic: dead_letter.clone(),
        qos: binding.config.qos.max(Qos::AtLeastOnce),
        retain: false,
        properties: properties_of(&message.properties),
    };
    match publish_with_retries(&binding.connection, &publish, &message.payload) {
        Ok(()) => {
            logging::log(
                Level::Warn,
                &format!(
                    "delivery of a message on {topic:?} failed {failures} times, last: {reason}; moved to the dead-letter topic {dead_letter:?}"
                ),
            );
            delivery::gave_up(GivenUp::DeadLettered);
            true
        }
        Err(error) => {
            logging::log(
                Level::Error,
                &format!(
                    "delivery of a message on {topic:?} failed {failures} times and publishing it to the dead-letter topic {dead_letter:?} failed too ({error:?}); it stays unacknowledged"
                ),
            );
            delivery::gave_up(GivenUp::LeftUnacknowledged);
            false
        }
    }
}

/// One message of a concurrent input binding, from its first delivery until it is settled.
struct Flight {
    message: broker::Message,
    metadata: Vec<(String, String)>,
    attempt: u32,
    state: FlightState,
}

enum FlightState {
    Delivering(Pending),
    /// Failed; delivered again at this time.
    RetryAt(Instant),
}

impl Flight {
    fn start(message: broker::Message, attempt: u32, metadata: Vec<(String, String)>) -> Self {
        let pending = start_delivery(&message, &metadata, attempt);
        Self {
            message,
            metadata,
            attempt,
            state: FlightState::Delivering(pending),
        }
    }
}

fn start_delivery(
    message: &broker::Message,
    metadata: &[(String, String)],
    attempt: u32,
) -> Pending {
    let metadata: Vec<(&str, &str)> = metadata
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    delivery::start(Event {
        data: &message.payload,
        metadata: &metadata,
        attempt,
    })
}

/// The input loop with up to `concurrency` messages in delivery at once. Each message keeps
/// its own retries; acknowledgements still leave in arrival order (see `window`), so a
/// message is acknowledged only once it and every earlier one are settled. On shutdown the
/// settled front is acknowledged and the rest is left for the broker to send again.
fn read_concurrently(binding: &Binding, concurrency: usize) -> Result<(), Error> {
    let connection = &binding.connection;
    let mut window = Window::default();
    let mut flights: Vec<Flight> = Vec::new();
    let mut taken: std::collections::VecDeque<broker::Message> = Default::default();
    // What acknowledging each message in the window takes: its QoS, and its topic for the log.
    let mut settling = std::collections::HashMap::new();
    loop {
        // Start deliveries while there is room.
        while window.len() < concurrency {
            if taken.is_empty() {
                // Block for the next message only when nothing else is under way.
                let wait = if window.is_empty() {
                    NEXT_MESSAGES_WAIT_MS
                } else {
                    0
                };
                let max = u32::try_from(concurrency - window.len()).unwrap_or(NEXT_MESSAGES_MAX);
                match connection.next_messages(max.min(NEXT_MESSAGES_MAX), wait) {
                    Ok(messages) => taken.extend(messages),
                    Err(broker::Error::Closed) => return Ok(()),
                    Err(error) => return Err(Error::Broker(error)),
                }
            }
            let Some(message) = taken.pop_front() else {
                break;
            };
            window.push(message.id);
            settling.insert(message.id, (message.qos, message.topic.clone()));
            let metadata = event_metadata(&message)
                .into_iter()
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            flights.push(Flight::start(message, 1, metadata));
        }
        if window.is_empty() {
            continue;
        }
        let now = Instant::now();
        let next_retry = flights
            .iter()
            .filter_map(|flight| match &flight.state {
                FlightState::RetryAt(at) => Some(*at),
                FlightState::Delivering(_) => None,
            })
            .min();
        let timeout_ms = next_retry.map_or(NEXT_MESSAGES_WAIT_MS, |at| {
            u32::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u32::MAX)
        });
        let (positions, delivering): (Vec<usize>, Vec<&Pending>) = flights
            .iter()
            .enumerate()
            .filter_map(|(position, flight)| match &flight.state {
                FlightState::Delivering(pending) => Some((position, pending)),
                FlightState::RetryAt(_) => None,
            })
            .unzip();
        let room = window.len() < concurrency && taken.is_empty();
        let waited = Pending::wait_any(&delivering, room.then_some(connection), timeout_ms);
        let mut stopping = false;
        match waited {
            Waited::Answered((index, outcome)) => {
                let position = positions[index as usize];
                match outcome {
                    Ok(answer) => {
                        let flight = flights.swap_remove(position);
                        let acknowledge = respond(binding, &flight.message, answer);
                        window.settle(flight.message.id, acknowledge);
                    }
                    Err(DeliveryError::Failed(reason)) => {
                        let flight = &mut flights[position];
                        let failures = flight.attempt;
                        match retry_after(binding, &flight.message.topic, failures, &reason) {
                            Some(wait) => {
                                flight.state = FlightState::RetryAt(Instant::now() + wait);
                            }
                            None => {
                                let flight = flights.swap_remove(position);
                                let acknowledge =
                                    give_up(binding, &flight.message, failures, &reason);
                                window.settle(flight.message.id, acknowledge);
                            }
                        }
                    }
                    Err(DeliveryError::Stopped) => stopping = true,
                }
            }
            Waited::MessageWaiting => {}
            Waited::TimedOut => {
                let now = Instant::now();
                for flight in &mut flights {
                    if matches!(&flight.state, FlightState::RetryAt(at) if *at <= now) {
                        flight.attempt += 1;
                        let pending =
                            start_delivery(&flight.message, &flight.metadata, flight.attempt);
                        flight.state = FlightState::Delivering(pending);
                    }
                }
            }
            Waited::Stopped => stopping = true,
        }
        for (id, settled) in window.release() {
            let Some((qos, topic)) = settling.remove(&id) else {
                continue;
            };
            if settled {
                acknowledge(connection, id, qos, &topic);
            }
        }
        if stopping {
            let topic = &binding.config.topic;
            logging::log(
                Level::Info,
                &format!(
                    "shutting down: {} messages on {topic:?} in delivery or waiting stay unacknowledged",
                    window.len()
                ),
            );
            return Ok(());
        }
    }
}

/// The event metadata of a message: `topic`, `retained`, `qos`, `duplicate`, and at MQTT 5
/// the properties it carries (docs/BEHAVIOUR.md, "Input binding").
fn event_metadata(message: &broker::Message) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    // Borrowed where it can be: an MQTT 3.1.1 message costs no allocation per entry.
    let mut metadata: Vec<(Cow<'_, str>, Cow<'_, str>)> = vec![
        ("topic".into(), message.topic.as_str().into()),
        ("retained".into(), bool_text(message.retained).into()),
        ("qos".into(), qos_text(message.qos).into()),
        ("duplicate".into(), bool_text(message.duplicate).into()),
    ];
    let properties = &message.properties;
    if let Some(content_type) = &properties.content_type {
        metadata.push((request::field::CONTENT_TYPE.into(), content_type.into()));
    }
    if let Some(response_topic) = &properties.response_topic {
        metadata.push((request::field::RESPONSE_TOPIC.into(), response_topic.into()));
    }
    if let Some(data) = &properties.correlation_data {
        metadata.push(match std::str::from_utf8(data) {
            Ok(text) => (request::field::CORRELATION_DATA.into(), text.into()),
            Err(_) => (
                request::field::CORRELATION_DATA_BASE64.into(),
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .into(),
            ),
        });
    }
    if let Some(expiry) = properties.expiry_secs {
        metadata.push((MESSAGE_EXPIRY_INTERVAL.into(), expiry.to_string().into()));
    }
    for (name, value) in &properties.user_properties {
        // W3C Trace Context over MQTT: the trace goes on to the application as its own
        // header, as well as the user property it is.
        if name == request::field::TRACEPARENT || name == request::field::TRACESTATE {
            metadata.push((name.into(), value.into()));
        }
        let prefixed = format!("{}{name}", request::field::USER_PROPERTY_PREFIX);
        metadata.push((prefixed.into(), value.into()));
    }
    metadata
}

/// Event metadata name of a received message's remaining expiry, in seconds.
const MESSAGE_EXPIRY_INTERVAL: &str = "messageExpiryInterval";

/// Answers an MQTT 5 request: when the message names a response topic and the application
/// answered with data, publishes that data there with the request's correlation data.
/// `false` when that publish failed, so that the request stays unacknowledged and the broker
/// sends it again.
fn respond(binding: &Binding, message: &broker::Message, answer: Option<Payload>) -> bool {
    let Some(response_topic) = &message.properties.response_topic else {
        return true;
    };
    let Some(answer) = answer else {
        logging::log(
            Level::Debug,
            &format!(
                "the application answered the request on {:?} without data; no response published to {response_topic:?}",
                message.topic
            ),
        );
        return true;
    };
    let publish = request::Publish {
        topic: response_topic.clone(),
        qos: binding.config.qos.max(Qos::AtLeastOnce),
        retain: false,
        properties: request::Properties {
            correlation_data: message.properties.correlation_data.clone(),
            ..request::Properties::default()
        },
    };
    match publish_with_retries(&binding.connection, &publish, &answer) {
        Ok(()) => true,
        Err(error) => {
            logging::log(
                Level::Error,
                &format!(
                    "publishing the application's response to {response_topic:?} failed ({error:?}); the request on {:?} stays unacknowledged, for the broker to send again",
                    message.topic
                ),
            );
            false
        }
    }
}

fn properties_of(properties: &types::PropertiesResult) -> request::Properties {
    request::Properties {
        expiry_secs: properties.expiry_secs,
        content_type: properties.content_type.clone(),
        response_topic: properties.response_topic.clone(),
        correlation_data: properties.correlation_data.clone(),
        user_properties: properties.user_properties.clone(),
    }
}

fn acknowledge(connection: &Connection, id: u64, qos: types::Qos, topic: &str) -> Settled {
    // QoS 0 has nothing to acknowledge; skipping the call saves a boundary crossing per message.
    if qos == types::Qos::AtMostOnce {
        return Settled::Acknowledged;
    }
    match connection.ack(id) {
        Ok(()) => Settled::Acknowledged,
        Err(error) => {
            // The broker sends it again on the next connection; nothing is lost.
            logging::log(
                Level::Warn,
                &format!("acknowledging a message on {topic:?} failed: {error:?}"),
            );
            Settled::Unacknowledged
        }
    }
}

fn qos_text(qos: types::Qos) -> &'static str {
    match qos {
        types::Qos::AtMostOnce => "0",
        types::Qos::AtLeastOnce => "1",
        types::Qos::ExactlyOnce => "2",
    }
}

fn bool_text(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// Publishes under the output policy: retryable failures are retried (`retry::PUBLISH`),
/// terminal ones are returned at once.
fn publish_with_retries(
    connection: &Connection,
    publish: &request::Publish,
    payload: &Payload,
) -> Result<(), Error> {
    let properties = &publish.properties;
    let user_properties: Vec<(&str, &str)> = properties
        .user_properties
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let mut failures = 0;
    loop {
        let options = PublishOptions {
            qos: wit_qos(publish.qos),
            retain: publish.retain,
            properties: types::PropertiesParam {
                expiry_secs: properties.expiry_secs,
                content_type: properties.content_type.as_deref(),
                response_topic: properties.response_topic.as_deref(),
                correlation_data: properties.correlation_data.as_deref(),
                user_properties: &user_properties,
                utf8_payload: false,
            },
            timeout_ms: PUBLISH_TIMEOUT_MS,
        };
        let outcome = connection.publish(&publish.topic, payload, options);
        let error = match outcome {
            Ok(()) => return Ok(()),
            Err(error) if is_retryable(&error) => error,
            Err(error) => return Err(Error::Broker(error)),
        };
        failures += 1;
        let Some(wait) = retry::PUBLISH.after_failure(failures) else {
            return Err(Error::Broker(error));
        };
        logging::log(
            Level::Warn,
            &format!(
                "publish to {:?} failed (attempt {failures}), retrying: {error:?}",
                publish.topic
            ),
        );
        if !sleep(wait) {
            return Err(Error::Broker(broker::Error::Closed));
        }
    }
}

/// Waits `wait` through the host, which ends the wait early on shutdown (`false`).
fn sleep(wait: Duration) -> bool {
    lifecycle::sleep(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX))
}

/// The WIT's rule: `unreachable` and `timeout` may succeed if retried, and a publish that
/// failed with either was not sent, so retrying it makes no second copy; nor does one the
/// broker refused with a retryable reason code (quota exceeded, say). `unconfirmed` is not
/// retried: the broker may already have the message.
fn is_retryable(error: &broker::Error) -> bool {
    match error {
        broker::Error::Unreachable(_) | broker::Error::Timeout(_) => true,
        broker::Error::Rejected(rejection) => rejection.retryable,
        _ => false,
    }
}

fn connect_options<'a>(config: &'a Config) -> ConnectOptions<'a> {
    let broker = &config.broker;
    // TLS material with a plain URL was already warned about; the host does not see it.
    let tls = broker.transport.is_tls();
    let tls_only = |value: Option<&'a str>| value.filter(|_| tls);
    ConnectOptions {
        transport: match broker.transport {
            Transport::Tcp => broker::Transport::Tcp,
            Transport::Tls => broker::Transport::Tls,
            Transport::Ws => broker::Transport::Ws,
            Transport::Wss => broker::Transport::Wss,
        },
        host: &broker.host,
        port: broker.port,
        path: &broker.path,
        protocol_version: match config.protocol {
            Protocol::V311 => broker::ProtocolVersion::Mqtt311,
            Protocol::V5 => broker::ProtocolVersion::Mqtt5,
        },
        client_id: &config.client_id,
        username: broker.username.as_deref(),
        password: broker.password.as_ref().map(Secret::expose),
        clean_session: config.clean_session,
        session_expiry_secs: config.session_expiry_secs,
        keep_alive_secs: config.keep_alive_secs,
        ca_cert: tls_only(config.tls.ca_cert.as_deref()),
        client_cert: tls_only(config.tls.client_cert.as_deref()),
        client_key: tls_only(config.tls.client_key.as_ref().map(Secret::expose)),
        connect_timeout_ms: CONNECT_TIMEOUT_MS,
    }
}

/// A connect option the host refused is a metadata problem: name the metadata field.
fn connect_error(error: broker::Error) -> Error {
    match error {
        broker::Error::InvalidOption(option) => {
            let field = match option.field.as_str() {
                "ca-cert" => metadata::field::CA_CERT,
                "client-cert" => metadata::field::CLIENT_CERT,
                "client-key" => metadata::field::CLIENT_KEY,
                "client-id" => metadata::field::CONSUMER_ID,
                _ => metadata::field::URL,
            };
            Error::InvalidMetadata(format!("metadata field {field:?}: {}", option.reason))
        }
        other => Error::Broker(other),
    }
}

fn wit_qos(qos: Qos) -> types::Qos {
    match qos {
        Qos::AtMostOnce => types::Qos::AtMostOnce,
        Qos::AtLeastOnce => types::Qos::AtLeastOnce,
        Qos::ExactlyOnce => types::Qos::ExactlyOnce,
    }
}
