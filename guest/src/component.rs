//! The component's side of the WIT world: the generated bindings, the `Guest` impl, and
//! the adapter from the imports to `host::Host`, over which the policy (`input`, `output`)
//! is written. Conversions between the generated types and the policy's live here too.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::host::{self, Host};
use crate::metadata::{self, Config, NoteLevel, Protocol, Qos, Secret, Transport};
use crate::request;
use crate::{input, output};

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
use bindings::mqtt_binding::binding::delivery::{self, Pending};
use bindings::mqtt_binding::binding::logging::{self, Level};
use bindings::mqtt_binding::binding::types::Payload;
use bindings::mqtt_binding::binding::{lifecycle, types};

/// How long `connect` waits for CONNACK.
const CONNECT_TIMEOUT_MS: u32 = 10_000;

/// The environment variable Dapr's `{podName}` tag reads, the one the host passes in.
const POD_NAME: &str = "POD_NAME";

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
        // The host gives the component `POD_NAME` and nothing else of its environment.
        let pod_name = std::env::var(POD_NAME).ok();
        let replica = metadata::Replica {
            app_id: &app_id,
            pod_name: pod_name.as_deref(),
        };
        let config = metadata::parse_as(replica, &metadata)
            .map_err(|e| Error::InvalidMetadata(e.to_string()))?;
        let connection = if first {
            for note in &config.notes {
                let level = match note.level {
                    NoteLevel::Debug => Level::Debug,
                    NoteLevel::Warn => Level::Warn,
                };
                logging::log(level, &note.message);
            }
            let failover: Vec<broker::Server<'_>> = config
                .broker
                .failover
                .iter()
                .map(|server| broker::Server {
                    host: &server.host,
                    port: server.port,
                    path: &server.path,
                })
                .collect();
            Connection::connect(connect_options(&config, &failover)).map_err(connect_error)?
        } else {
            Connection::join().map_err(Error::Broker)?
        };
        // A group the broker cannot make is refused now rather than when the input side
        // subscribes: every replica would otherwise wait for a stream that never comes.
        if config.share_group.is_some() && !connection.shared_subscriptions_available() {
            return Err(Error::InvalidMetadata(format!(
                "metadata field {:?}: the broker does not take shared subscriptions (its MQTT 5 CONNACK says Shared Subscription Available = 0)",
                metadata::field::SHARED_SUBSCRIPTION_GROUP
            )));
        }
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
            output::publish_with_retries(&Imports(&binding.connection), &publish, &request.data)
                .map_err(|error| Error::Broker(wit_error(error)))?;
            Ok(InvokeResponse {
                data: None,
                metadata: Vec::new(),
            })
        })
    }

    fn read() -> Result<(), Error> {
        BINDING.with_borrow(|binding| {
            let binding = binding.as_ref().ok_or(Error::NotInitialized)?;
            input::read(&Imports(&binding.connection), &binding.config)
                .map_err(|error| Error::Broker(wit_error(error)))
        })
    }
}

/// The imports, for one connection, as the policy sees them.
struct Imports<'a>(&'a Connection);

impl Host for Imports<'_> {
    type Payload = Payload;
    type Pending = Pending;

    fn subscribe(&self, filter: &str, qos: Qos, timeout_ms: u32) -> Result<(), host::BrokerError> {
        self.0
            .subscribe(filter, wit_qos(qos), timeout_ms)
            .map_err(broker_error)
    }

    fn next_messages(
        &self,
        max: u32,
        timeout_ms: u32,
    ) -> Result<Vec<host::Message<Payload>>, host::BrokerError> {
        let messages = self
            .0
            .next_messages(max, timeout_ms)
            .map_err(broker_error)?;
        Ok(messages.into_iter().map(message).collect())
    }

    fn ack(&self, id: u64) -> Result<(), host::BrokerError> {
        self.0.ack(id).map_err(broker_error)
    }

    fn publish(
        &self,
        publish: &request::Publish,
        payload: &Payload,
        timeout_ms: u32,
    ) -> Result<(), host::BrokerError> {
        let properties = &publish.properties;
        let options = PublishOptions {
            qos: wit_qos(publish.qos),
            retain: publish.retain,
            properties: types::PropertiesParam {
                expiry_secs: properties.expiry_secs,
                content_type: properties.content_type.as_deref(),
                response_topic: properties.response_topic.as_deref(),
                correlation_data: properties.correlation_data.as_deref(),
                user_properties: &properties.user_properties,
                utf8_payload: false,
            },
            timeout_ms,
        };
        self.0
            .publish(&publish.topic, payload, options)
            .map_err(broker_error)
    }

    fn deliver(&self, event: host::Event<'_, Payload>) -> host::Answer<Payload> {
        delivery::deliver(wit_event(event)).map_err(delivery_error)
    }

    fn received(&self, payload: &Payload) -> host::Received {
        payload.received().map(received).unwrap_or_default()
    }

    fn deliver_each(&self, events: Vec<(Payload, bool)>) -> host::Delivered<Payload> {
        let events = events
            .into_iter()
            .map(|(message, ack)| delivery::HandedEvent { message, ack })
            .collect::<Vec<_>>();
        let (accepted, refused) = delivery::deliver_each(events);
        host::Delivered {
            accepted: usize::try_from(accepted).unwrap_or(usize::MAX),
            refused: refused.map(|refusal| (delivery_error(refusal.error), refusal.rest)),
        }
    }

    fn start(&self, event: host::Event<'_, Payload>) -> Pending {
        delivery::start(wit_event(event))
    }

    fn wait_any(
        &self,
        deliveries: &[&Pending],
        watch_connection: bool,
        timeout_ms: u32,
    ) -> host::Waited<Payload> {
        let connection = watch_connection.then_some(self.0);
        match Pending::wait_any(deliveries, connection, timeout_ms) {
            delivery::Waited::Answered((index, answer)) => host::Waited::Answered(
                usize::try_from(index).unwrap_or(usize::MAX),
                answer.map_err(delivery_error),
            ),
            delivery::Waited::MessageWaiting => host::Waited::MessageWaiting,
            delivery::Waited::TimedOut => host::Waited::TimedOut,
            delivery::Waited::Stopped => host::Waited::Stopped,
        }
    }

    fn gave_up(&self, how: host::GivenUp) {
        delivery::gave_up(match how {
            host::GivenUp::DeadLettered => delivery::GivenUp::DeadLettered,
            host::GivenUp::LeftUnacknowledged => delivery::GivenUp::LeftUnacknowledged,
        });
    }

    /// Ended early by the host on shutdown.
    fn sleep(&self, wait: Duration) -> bool {
        lifecycle::sleep(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn log(&self, level: host::Level, message: &str) {
        let level = match level {
            host::Level::Debug => Level::Debug,
            host::Level::Info => Level::Info,
            host::Level::Warn => Level::Warn,
            host::Level::Error => Level::Error,
        };
        logging::log(level, message);
    }
}

fn wit_event<'a>(event: host::Event<'a, Payload>) -> delivery::Event<'a> {
    delivery::Event {
        message: event.message,
        attempt: event.attempt,
        ack: event.ack,
    }
}

fn delivery_error(error: delivery::DeliveryError) -> host::DeliveryError {
    match error {
        delivery::DeliveryError::Failed(reason) => host::DeliveryError::Failed(reason),
        delivery::DeliveryError::Stopped => host::DeliveryError::Stopped,
    }
}

fn message(message: broker::Message) -> host::Message<Payload> {
    host::Message {
        id: message.id,
        payload: message.payload,
        qos: match message.qos {
            types::Qos::AtMostOnce => Qos::AtMostOnce,
            types::Qos::AtLeastOnce => Qos::AtLeastOnce,
            types::Qos::ExactlyOnce => Qos::ExactlyOnce,
        },
        retained: message.retained,
        duplicate: message.duplicate,
        request: message.request,
    }
}

fn received(received: types::Received) -> host::Received {
    let properties = received.properties;
    host::Received {
        topic: received.topic,
        properties: request::Properties {
            expiry_secs: properties.expiry_secs,
            content_type: properties.content_type,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data,
            user_properties: properties.user_properties,
        },
    }
}

fn broker_error(error: broker::Error) -> host::BrokerError {
    use host::BrokerError as E;
    match error {
        broker::Error::InvalidOption(option) => E::InvalidOption {
            field: match option.field {
                broker::ConnectField::Host => host::ConnectField::Host,
                broker::ConnectField::Path => host::ConnectField::Path,
                broker::ConnectField::ClientId => host::ConnectField::ClientId,
                broker::ConnectField::CaCert => host::ConnectField::CaCert,
                broker::ConnectField::ClientCert => host::ConnectField::ClientCert,
                broker::ConnectField::ClientKey => host::ConnectField::ClientKey,
            },
            reason: option.reason,
        },
        broker::Error::Unreachable(text) => E::Unreachable(text),
        broker::Error::Tls(text) => E::Tls(text),
        broker::Error::NotAuthorized(text) => E::NotAuthorized(text),
        broker::Error::Timeout(text) => E::Timeout(text),
        broker::Error::Unconfirmed(text) => E::Unconfirmed(text),
        broker::Error::TooLarge(text) => E::TooLarge(text),
        broker::Error::Rejected(rejection) => E::Rejected(host::Rejection {
            reason_code: rejection.reason_code,
            reason: rejection.reason,
            retryable: rejection.retryable,
        }),
        broker::Error::Closed => E::Closed,
        broker::Error::Other(text) => E::Other(text),
    }
}

fn wit_error(error: host::BrokerError) -> broker::Error {
    use host::BrokerError as E;
    match error {
        E::InvalidOption { field, reason } => broker::Error::InvalidOption(broker::InvalidOption {
            field: match field {
                host::ConnectField::Host => broker::ConnectField::Host,
                host::ConnectField::Path => broker::ConnectField::Path,
                host::ConnectField::ClientId => broker::ConnectField::ClientId,
                host::ConnectField::CaCert => broker::ConnectField::CaCert,
                host::ConnectField::ClientCert => broker::ConnectField::ClientCert,
                host::ConnectField::ClientKey => broker::ConnectField::ClientKey,
            },
            reason,
        }),
        E::Unreachable(text) => broker::Error::Unreachable(text),
        E::Tls(text) => broker::Error::Tls(text),
        E::NotAuthorized(text) => broker::Error::NotAuthorized(text),
        E::Timeout(text) => broker::Error::Timeout(text),
        E::Unconfirmed(text) => broker::Error::Unconfirmed(text),
        E::TooLarge(text) => broker::Error::TooLarge(text),
        E::Rejected(rejection) => broker::Error::Rejected(broker::Rejection {
            reason_code: rejection.reason_code,
            reason: rejection.reason,
            retryable: rejection.retryable,
        }),
        E::Closed => broker::Error::Closed,
        E::Other(text) => broker::Error::Other(text),
    }
}

fn connect_options<'a>(
    config: &'a Config,
    failover: &'a [broker::Server<'a>],
) -> ConnectOptions<'a> {
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
        failover,
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
    match broker_error(error) {
        host::BrokerError::InvalidOption { field, reason } => Error::InvalidMetadata(format!(
            "metadata field {:?}: {reason}",
            field.metadata_field()
        )),
        other => Error::Broker(wit_error(other)),
    }
}

fn wit_qos(qos: Qos) -> types::Qos {
    match qos {
        Qos::AtMostOnce => types::Qos::AtMostOnce,
        Qos::AtLeastOnce => types::Qos::AtLeastOnce,
        Qos::ExactlyOnce => types::Qos::ExactlyOnce,
    }
}
