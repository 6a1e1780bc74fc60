//! The exports, each a conversion and one call into [`mqtt_binding_broker::Connection`].
//!
//! The connection runs on a tokio current-thread runtime that lives as long as the
//! instance. A component runs only while it is called, so the connection task (reading
//! the socket, keep-alive, resends) makes progress inside the plug's calls: the binding's
//! input loop is always waiting in `next-messages` or `wait-message` when idle, and a
//! publish waits in `publish` for its acknowledgement. tokio rather than a sans-I/O core
//! polled through `wasi:io/poll`: the same code then runs natively and here, with the same
//! unit tests, and tokio's wasm32-wasip2 networking is `wasi:sockets` underneath.

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use mqtt_binding_broker::{
    BrokerError, BrokerSettings, ConnectOptions, Connection as Link, Field, MessageProperties,
    ProtocolVersion, PublishRequest, QoS, Server, Transport,
};

#[expect(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue is unsafe by nature"
)]
mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../../wit/portable"],
        world: "mqtt-binding:portable/broker-plug",
        // The interfaces of `binding.wit` are another package: generate them here too.
        generate_all,
    });

    use super::Plug;
    export!(Plug with_types_in crate::component::bindings);
}

use bindings::exports::mqtt_binding::binding::broker::{
    self, ConnectOptions as WitConnectOptions, Error, GuestConnection, Message, PublishOptions,
};
use bindings::exports::mqtt_binding::binding::types::{
    self, GuestPayload, Payload as PayloadHandle, PayloadBorrow, Properties, Qos,
};
use bindings::exports::mqtt_binding::portable::plug::{self, Waiting};

/// The component: its exports are implemented on this type.
struct Plug;

thread_local! {
    /// The runtime every call runs on; its tasks (the connection's) live between calls.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("the plug cannot start its runtime: {error}"));
    /// The binding's connection, once `connect` opened it: what `join` hands out.
    static OPEN: RefCell<Option<Link>> = const { RefCell::new(None) };
}

/// Runs a future to completion on the plug's runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// Message bytes held by the plug, and for a received message what delivering it takes.
pub struct Payload {
    bytes: Bytes,
    received: Option<Received>,
}

/// A received message, without its payload (the [`Payload`]'s bytes).
struct Received(mqtt_binding_broker::Message);

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            received: None,
        }
    }
}

impl GuestPayload for Payload {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn received(&self) -> Option<types::Received> {
        self.received
            .as_ref()
            .map(|Received(message)| types::Received {
                topic: message.topic.clone(),
                properties: wit_properties(message.properties.clone()),
            })
    }
}

impl types::Guest for Plug {
    type Payload = Payload;
}

/// A handle to the binding's connection.
pub struct Connection(Link);

impl broker::Guest for Plug {
    type Connection = Connection;
}

impl GuestConnection for Connection {
    fn connect(options: WitConnectOptions) -> Result<broker::Connection, Error> {
        if let Some(open) = OPEN.with_borrow(|open| open.clone().filter(Link::is_open)) {
            return Ok(broker::Connection::new(Connection(open)));
        }
        let link = block_on(Link::connect(
            connect_options(options),
            &BrokerSettings::default(),
        ))
        .map_err(to_wit)?;
        OPEN.with_borrow_mut(|open| *open = Some(link.clone()));
        Ok(broker::Connection::new(Connection(link)))
    }

    fn join() -> Result<broker::Connection, Error> {
        match OPEN.with_borrow(|open| open.clone().filter(Link::is_open)) {
            Some(open) => Ok(broker::Connection::new(Connection(open))),
            None => Err(Error::Closed),
        }
    }

    fn publish(
        &self,
        topic: String,
        payload: PayloadBorrow<'_>,
        options: PublishOptions,
    ) -> Result<(), Error> {
        let request = PublishRequest {
            topic,
            payload: payload.get::<Payload>().bytes.clone(),
            qos: qos(options.qos),
            retain: options.retain,
            properties: properties(options.properties),
        };
        block_on(self.0.publish(request, millis(options.timeout_ms))).map_err(to_wit)
    }

    fn subscribe(&self, filter: String, level: Qos, timeout_ms: u32) -> Result<(), Error> {
        block_on(self.0.subscribe(filter, qos(level), millis(timeout_ms))).map_err(to_wit)
    }

    fn shared_subscriptions_available(&self) -> bool {
        self.0.shared_subscriptions_available()
    }

    fn next_messages(&self, max: u32, timeout_ms: u32) -> Result<Vec<Message>, Error> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let messages = block_on(self.0.next_messages(max, millis(timeout_ms))).map_err(to_wit)?;
        Ok(messages
            .into_iter()
            .map(|mut m| {
                let bytes = std::mem::take(&mut m.payload);
                let (id, qos, retained, duplicate) = (m.id, wit_qos(m.qos), m.retain, m.duplicate);
                let request = m.properties.response_topic.is_some();
                Message {
                    id,
                    payload: PayloadHandle::new(Payload {
                        bytes,
                        received: Some(Received(m)),
                    }),
                    qos,
                    retained,
                    duplicate,
                    request,
                }
            })
            .collect())
    }

    fn ack(&self, id: u64) -> Result<(), Error> {
        block_on(self.0.ack(id)).map_err(to_wit)
    }

    fn max_payload_bytes(&self) -> u32 {
        self.0.max_payload_bytes()
    }
}

impl plug::Guest for Plug {
    fn make_payload(bytes: Vec<u8>) -> PayloadHandle {
        PayloadHandle::new(Payload::from(Bytes::from(bytes)))
    }

    fn payload_bytes(payload: PayloadBorrow<'_>) -> Vec<u8> {
        payload.get::<Payload>().bytes.to_vec()
    }

    fn message_metadata(message: PayloadBorrow<'_>) -> Vec<(String, String)> {
        match &message.get::<Payload>().received {
            Some(Received(message)) => message
                .event_metadata()
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
            None => Vec::new(),
        }
    }

    fn acknowledge(message: PayloadBorrow<'_>) -> Result<(), String> {
        let Some(received) = &message.get::<Payload>().received else {
            return Err("not a received message's payload".into());
        };
        let Some(open) = OPEN.with_borrow(Clone::clone) else {
            return Err(BrokerError::Closed.to_string());
        };
        block_on(open.ack(received.0.id)).map_err(|error| error.to_string())
    }

    fn wait_message(connection: broker::ConnectionBorrow<'_>, timeout_ms: u32) -> Waiting {
        let link = &connection.get::<Connection>().0;
        if !link.is_open() {
            return Waiting::Closed;
        }
        let waited = block_on(tokio::time::timeout(
            millis(timeout_ms),
            link.message_waiting(),
        ));
        match waited {
            Err(_) => Waiting::TimedOut,
            Ok(()) if link.is_open() => Waiting::Message,
            Ok(()) => Waiting::Closed,
        }
    }

    fn stop() {
        if let Some(open) = OPEN.with_borrow(Clone::clone) {
            open.stop_reading();
        }
    }

    fn close() {
        if let Some(open) = OPEN.with_borrow_mut(Option::take) {
            block_on(open.disconnect());
        }
    }
}

fn connect_options(options: WitConnectOptions) -> ConnectOptions {
    ConnectOptions {
        transport: match options.transport {
            broker::Transport::Tcp => Transport::Tcp,
            broker::Transport::Tls => Transport::Tls,
            broker::Transport::Ws => Transport::Ws,
            broker::Transport::Wss => Transport::Wss,
        },
        host: options.host,
        port: options.port,
        path: options.path,
        failover: options
            .failover
            .into_iter()
            .map(|server| Server {
                host: server.host,
                port: server.port,
                path: server.path,
            })
            .collect(),
        protocol: match options.protocol_version {
            broker::ProtocolVersion::Mqtt311 => ProtocolVersion::V311,
            broker::ProtocolVersion::Mqtt5 => ProtocolVersion::V5,
        },
        client_id: options.client_id,
        username: options.username,
        password: options.password,
        clean_session: options.clean_session,
        session_expiry: options.session_expiry_secs,
        keep_alive: Duration::from_secs(u64::from(options.keep_alive_secs)),
        ca_cert: options.ca_cert,
        client_cert: options.client_cert,
        client_key: options.client_key,
        connect_timeout: millis(options.connect_timeout_ms),
    }
}

fn to_wit(error: BrokerError) -> Error {
    match error {
        BrokerError::InvalidOption { field, reason } => {
            Error::InvalidOption(broker::InvalidOption {
                field: match field {
                    Field::Host => broker::ConnectField::Host,
                    Field::Path => broker::ConnectField::Path,
                    Field::ClientId => broker::ConnectField::ClientId,
                    Field::CaCert => broker::ConnectField::CaCert,
                    Field::ClientCert => broker::ConnectField::ClientCert,
                    Field::ClientKey => broker::ConnectField::ClientKey,
                },
                reason,
            })
        }
        BrokerError::Unreachable(s) => Error::Unreachable(s),
        BrokerError::Tls(s) => Error::Tls(s),
        BrokerError::NotAuthorized(s) => Error::NotAuthorized(s),
        BrokerError::Timeout(s) => Error::Timeout(s),
        BrokerError::Unconfirmed(s) => Error::Unconfirmed(s),
        BrokerError::TooLarge(s) => Error::TooLarge(s),
        BrokerError::Closed => Error::Closed,
        BrokerError::Other(s) => Error::Other(s),
        BrokerError::Rejected(rejection) => Error::Rejected(broker::Rejection {
            reason_code: rejection.code,
            reason: rejection.reason,
            retryable: rejection.retryable,
        }),
    }
}

fn qos(qos: Qos) -> QoS {
    match qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn wit_qos(qos: QoS) -> Qos {
    match qos {
        QoS::AtMostOnce => Qos::AtMostOnce,
        QoS::AtLeastOnce => Qos::AtLeastOnce,
        QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

fn properties(properties: Properties) -> MessageProperties {
    MessageProperties {
        expiry: properties.expiry_secs,
        content_type: properties.content_type,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation_data.map(Into::into),
        user_properties: properties.user_properties,
        utf8_payload: properties.utf8_payload,
    }
}

fn wit_properties(properties: MessageProperties) -> Properties {
    Properties {
        expiry_secs: properties.expiry,
        content_type: properties.content_type,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation_data.map(|data| data.to_vec()),
        user_properties: properties.user_properties,
        utf8_payload: properties.utf8_payload,
    }
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}
