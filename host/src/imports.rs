//! The host's side of the component's imports (`types`, `broker`, `delivery`, `lifecycle`;
//! `logging` is `guest_log`'s), implemented on [`HostView`], and the one mapping between
//! host errors and the WIT's `broker.error`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::Resource;

use crate::broker::{
    ConnectOptions, Connection, MessageProperties, ProtocolVersion, PublishRequest, Server,
    Transport,
};
use crate::error::{BrokerError, Field, Rejection};
use crate::generated::mqtt_binding::binding::{broker, delivery, lifecycle, types};
use crate::handler::{Event, EventHandler, Metadata};
use crate::host_state::{BindingHost, HostView};
use crate::payload::{Payload, Received};
use crate::pending::{Pending, Refused};

/// The one mapping from host errors to the guest's `broker.error`.
fn to_wit(error: BrokerError) -> broker::Error {
    match error {
        BrokerError::InvalidOption { field, reason } => {
            broker::Error::InvalidOption(broker::InvalidOption {
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
        BrokerError::Unreachable(s) => broker::Error::Unreachable(s),
        BrokerError::Tls(s) => broker::Error::Tls(s),
        BrokerError::NotAuthorized(s) => broker::Error::NotAuthorized(s),
        BrokerError::Timeout(s) => broker::Error::Timeout(s),
        BrokerError::Unconfirmed(s) => broker::Error::Unconfirmed(s),
        BrokerError::TooLarge(s) => broker::Error::TooLarge(s),
        BrokerError::Closed => broker::Error::Closed,
        BrokerError::Other(s) => broker::Error::Other(s),
        BrokerError::Rejected(rejection) => broker::Error::Rejected(broker::Rejection {
            reason_code: rejection.code,
            reason: rejection.reason,
            retryable: rejection.retryable,
        }),
    }
}

/// The reverse, for errors the guest hands back through its exports.
pub(crate) fn from_wit(error: broker::Error) -> BrokerError {
    match error {
        broker::Error::InvalidOption(o) => BrokerError::InvalidOption {
            field: match o.field {
                broker::ConnectField::Host => Field::Host,
                broker::ConnectField::Path => Field::Path,
                broker::ConnectField::ClientId => Field::ClientId,
                broker::ConnectField::CaCert => Field::CaCert,
                broker::ConnectField::ClientCert => Field::ClientCert,
                broker::ConnectField::ClientKey => Field::ClientKey,
            },
            reason: o.reason,
        },
        broker::Error::Unreachable(s) => BrokerError::Unreachable(s),
        broker::Error::Tls(s) => BrokerError::Tls(s),
        broker::Error::NotAuthorized(s) => BrokerError::NotAuthorized(s),
        broker::Error::Timeout(s) => BrokerError::Timeout(s),
        broker::Error::Unconfirmed(s) => BrokerError::Unconfirmed(s),
        broker::Error::TooLarge(s) => BrokerError::TooLarge(s),
        broker::Error::Closed => BrokerError::Closed,
        broker::Error::Other(s) => BrokerError::Other(s),
        broker::Error::Rejected(rejection) => BrokerError::Rejected(Rejection {
            code: rejection.reason_code,
            reason: rejection.reason,
            retryable: rejection.retryable,
        }),
    }
}

fn qos(qos: types::Qos) -> crate::broker::QoS {
    match qos {
        types::Qos::AtMostOnce => crate::broker::QoS::AtMostOnce,
        types::Qos::AtLeastOnce => crate::broker::QoS::AtLeastOnce,
        types::Qos::ExactlyOnce => crate::broker::QoS::ExactlyOnce,
    }
}

fn wit_qos(qos: crate::broker::QoS) -> types::Qos {
    match qos {
        crate::broker::QoS::AtMostOnce => types::Qos::AtMostOnce,
        crate::broker::QoS::AtLeastOnce => types::Qos::AtLeastOnce,
        crate::broker::QoS::ExactlyOnce => types::Qos::ExactlyOnce,
    }
}

fn from_wit_properties(properties: types::Properties) -> MessageProperties {
    MessageProperties {
        expiry: properties.expiry_secs,
        content_type: properties.content_type,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation_data.map(Into::into),
        user_properties: properties.user_properties,
        utf8_payload: properties.utf8_payload,
    }
}

fn wit_properties(properties: MessageProperties) -> types::Properties {
    types::Properties {
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

impl types::Host for HostView<'_> {}

impl types::HostPayload for HostView<'_> {
    async fn len(&mut self, payload: Resource<Payload>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&payload)?.bytes.len() as u64)
    }

    async fn received(
        &mut self,
        payload: Resource<Payload>,
    ) -> wasmtime::Result<Option<types::Received>> {
        Ok(self.table.get(&payload)?.received.as_ref().map(|received| {
            let message = received.message();
            types::Received {
                topic: message.topic.clone(),
                properties: wit_properties(message.properties.clone()),
            }
        }))
    }

    async fn drop(&mut self, payload: Resource<Payload>) -> wasmtime::Result<()> {
        self.table.delete(payload)?;
        Ok(())
    }
}

impl broker::Host for HostView<'_> {}

impl broker::HostConnection for HostView<'_> {
    async fn connect(
        &mut self,
        options: broker::ConnectOptions,
    ) -> wasmtime::Result<Result<Resource<Connection>, broker::Error>> {
        let options = ConnectOptions {
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
        };
        match self.host.connection.open(options).await {
            Ok(connection) => Ok(Ok(self.table.push(connection)?)),
            Err(error) => Ok(Err(to_wit(error))),
        }
    }

    async fn join(&mut self) -> wasmtime::Result<Result<Resource<Connection>, broker::Error>> {
        match self.host.connection.join().await {
            Ok(connection) => Ok(Ok(self.table.push(connection)?)),
            Err(error) => Ok(Err(to_wit(error))),
        }
    }

    async fn publish(
        &mut self,
        connection: Resource<Connection>,
        topic: String,
        payload: Resource<Payload>,
        options: broker::PublishOptions,
    ) -> wasmtime::Result<Result<(), broker::Error>> {
        let payload = self.table.get(&payload)?.bytes.clone();
        let connection = self.table.get(&connection)?;
        let request = PublishRequest {
            topic,
            payload,
            qos: qos(options.qos),
            retain: options.retain,
            properties: from_wit_properties(options.properties),
        };
        let outcome = connection
            .publish(request, millis(options.timeout_ms))
            .await;
        Ok(outcome.map_err(to_wit))
    }

    async fn subscribe(
        &mut self,
        connection: Resource<Connection>,
        filter: String,
        level: types::Qos,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), broker::Error>> {
        let connection = self.table.get(&connection)?;
        Ok(connection
            .subscribe(filter, qos(level), millis(timeout_ms))
            .await
            .map_err(to_wit))
    }

    async fn shared_subscriptions_available(
        &mut self,
        connection: Resource<Connection>,
    ) -> wasmtime::Result<bool> {
        Ok(self
            .table
            .get(&connection)?
            .shared_subscriptions_available())
    }

    async fn next_messages(
        &mut self,
        connection: Resource<Connection>,
        max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<Vec<broker::Message>, broker::Error>> {
        let connection = self.table.get(&connection)?;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let next = tokio::select! {
            next = connection.next_messages(max, millis(timeout_ms)) => next,
            () = self.host.shutdown.cancelled() => Err(BrokerError::Closed),
        };
        let messages = match next {
            Ok(messages) => messages,
            Err(error) => return Ok(Err(to_wit(error))),
        };
        let mut handed = Vec::with_capacity(messages.len());
        for m in messages {
            let (id, qos, retained, duplicate) = (m.id, m.qos, m.retain, m.duplicate);
            let request = m.properties.response_topic.is_some();
            handed.push(broker::Message {
                id,
                payload: self.table.push(Payload::received(m))?,
                qos: wit_qos(qos),
                retained,
                duplicate,
                request,
            });
        }
        Ok(Ok(handed))
    }

    async fn ack(
        &mut self,
        connection: Resource<Connection>,
        id: u64,
    ) -> wasmtime::Result<Result<(), broker::Error>> {
        let connection = self.table.get(&connection)?;
        Ok(connection.ack(id).await.map_err(to_wit))
    }

    async fn max_payload_bytes(
        &mut self,
        connection: Resource<Connection>,
    ) -> wasmtime::Result<u32> {
        Ok(self.table.get(&connection)?.max_payload_bytes())
    }

    /// The binding owns the connection (see [`BindingHost::connection`]); a guest's handle
    /// going away does not close it.
    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl delivery::Host for HostView<'_> {
    async fn deliver(
        &mut self,
        event: delivery::Event,
    ) -> wasmtime::Result<Result<Option<Resource<Payload>>, delivery::DeliveryError>> {
        let outcome = self
            .deliver_once(&event.message, event.attempt, event.ack)
            .await?;
        Ok(match outcome {
            Ok(Some(answer)) => Ok(Some(self.table.push(Payload::from(Bytes::from(answer)))?)),
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        })
    }

    async fn deliver_each(
        &mut self,
        events: Vec<delivery::HandedEvent>,
    ) -> wasmtime::Result<(u32, Option<delivery::Refusal>)> {
        let mut accepted = 0;
        let mut events = events.into_iter();
        while let Some(event) = events.next() {
            // An answer is dropped: these messages have no response to publish.
            if let Err(error) = self.deliver_once(&event.message, 1, event.ack).await? {
                let rest = std::iter::once(event.message)
                    .chain(events.map(|event| event.message))
                    .collect();
                return Ok((accepted, Some(delivery::Refusal { error, rest })));
            }
            self.table.delete(event.message)?;
            accepted += 1;
        }
        Ok((accepted, None))
    }

    async fn start(&mut self, event: delivery::Event) -> wasmtime::Result<Resource<Pending>> {
        let pending = match self.handler_to_deliver() {
            Ok(_) if event.ack => Pending::answered(Err(Refused::Failed(
                "`start` does not acknowledge (`ack` is for `deliver`): acknowledge with `ack` once the message is settled".into(),
            ))),
            Ok(handler) => match self.event_for_app(&event.message, event.attempt)? {
                Ok((event, _)) => Pending::start(handler, event, self.host.shutdown.clone()),
                Err(refused) => Pending::answered(Err(refused)),
            },
            Err(refused) => Pending::answered(Err(refused)),
        };
        Ok(self.table.push(pending)?)
    }

    async fn gave_up(&mut self, how: delivery::GivenUp) -> wasmtime::Result<()> {
        let counter = match how {
            delivery::GivenUp::DeadLettered => &self.host.faults.dead_lettered,
            delivery::GivenUp::LeftUnacknowledged => &self.host.faults.left_unacknowledged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl delivery::HostPending for HostView<'_> {
    async fn wait_any(
        &mut self,
        deliveries: Vec<Resource<Pending>>,
        connection: Option<Resource<Connection>>,
        timeout_ms: u32,
    ) -> wasmtime::Result<delivery::Waited> {
        let mut waiting = Vec::with_capacity(deliveries.len());
        for (index, pending) in deliveries.iter().enumerate() {
            if let Some(answer) = self.table.get_mut(pending)?.take() {
                waiting.push((index, answer));
            }
        }
        let connection = match connection {
            Some(connection) => Some(self.table.get(&connection)?.clone()),
            None => None,
        };
        let shutdown = self.host.shutdown.clone();
        // The first of: an answer (its position in `waiting`), or another reason to return.
        let first = {
            let answered = async {
                if waiting.is_empty() {
                    std::future::pending().await
                } else {
                    let answers = waiting.iter_mut().map(|(_, answer)| answer);
                    let (outcome, position, _) = futures_util::future::select_all(answers).await;
                    (position, outcome)
                }
            };
            let arrived = async {
                match &connection {
                    Some(connection) => connection.message_waiting().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                (position, outcome) = answered => Ok((position, outcome)),
                () = shutdown.cancelled() => Err(delivery::Waited::Stopped),
                () = arrived => Err(delivery::Waited::MessageWaiting),
                () = tokio::time::sleep(millis(timeout_ms)) => Err(delivery::Waited::TimedOut),
            }
        };
        let (position, outcome) = match first {
            Ok(answered) => answered,
            Err(waited) => return self.put_back(&deliveries, waiting, None, waited),
        };
        let index = u32::try_from(waiting[position].0).unwrap_or(u32::MAX);
        let outcome = match outcome {
            Ok(Ok(Some(answer))) => Ok(Some(self.table.push(Payload::from(Bytes::from(answer)))?)),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(refused)) => Err(refused.into()),
            Err(_) => Err(delivery::DeliveryError::Failed(
                "the delivery ended without an answer".into(),
            )),
        };
        self.put_back(
            &deliveries,
            waiting,
            Some(position),
            delivery::Waited::Answered((index, outcome)),
        )
    }

    async fn drop(&mut self, pending: Resource<Pending>) -> wasmtime::Result<()> {
        self.table.delete(pending)?;
        Ok(())
    }
}

impl From<Refused> for delivery::DeliveryError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Failed(why) => Self::Failed(why),
            Refused::Stopped => Self::Stopped,
        }
    }
}

impl HostView<'_> {
    /// The application to hand a new event to, unless there is none or shutdown began
    /// (nothing new is delivered then; a delivery under way may finish).
    fn handler_to_deliver(&self) -> Result<Arc<dyn EventHandler>, Refused> {
        let Some(handler) = self.host.handler.clone() else {
            return Err(Refused::Failed(
                "this host has no application to deliver events to".into(),
            ));
        };
        if self.host.shutdown.is_cancelled() {
            return Err(Refused::Stopped);
        }
        Ok(handler)
    }

    /// The event for the application, from the received message behind `event.message`
    /// (its bytes shared, its metadata made when it arrived), counted as a retry when it is
    /// not the first delivery of its message.
    fn event_for_app(
        &mut self,
        message: &Resource<Payload>,
        attempt: u32,
    ) -> wasmtime::Result<Result<(Event, Arc<Received>), Refused>> {
        let payload = self.table.get(message)?;
        let Some(received) = payload.received.clone() else {
            return Ok(Err(Refused::Failed(
                "an event's `message` must be a payload from `next-messages`".into(),
            )));
        };
        if attempt > 1 {
            self.host
                .faults
                .delivery_retries
                .fetch_add(1, Ordering::Relaxed);
        }
        let app_event = Event {
            data: payload.bytes.clone(),
            metadata: Metadata::of(received.clone()),
            attempt,
        };
        Ok(Ok((app_event, received)))
    }

    /// Delivers the message behind `message` to the application and waits for its answer
    /// (or shutdown); once it is accepted, acknowledges it when `ack` says so. What
    /// `deliver` and `deliver-each` do for each event.
    async fn deliver_once(
        &mut self,
        message: &Resource<Payload>,
        attempt: u32,
        ack: bool,
    ) -> wasmtime::Result<Result<crate::Answer, delivery::DeliveryError>> {
        let handler = match self.handler_to_deliver() {
            Ok(handler) => handler,
            Err(refused) => return Ok(Err(refused.into())),
        };
        let (event, received) = match self.event_for_app(message, attempt)? {
            Ok(prepared) => prepared,
            Err(refused) => return Ok(Err(refused.into())),
        };
        let outcome = tokio::select! {
            biased;
            outcome = handler.deliver(event) => outcome.map_err(delivery::DeliveryError::Failed),
            () = self.host.shutdown.cancelled() => Err(delivery::DeliveryError::Stopped),
        };
        if ack && outcome.is_ok() {
            acknowledge(self.host, &received).await;
        }
        Ok(outcome)
    }

    /// Gives the answers that did not come back to their deliveries (all but `spent`), and
    /// returns `waited`.
    fn put_back(
        &mut self,
        deliveries: &[Resource<Pending>],
        waiting: Vec<(
            usize,
            tokio::sync::oneshot::Receiver<crate::pending::Outcome>,
        )>,
        spent: Option<usize>,
        waited: delivery::Waited,
    ) -> wasmtime::Result<delivery::Waited> {
        for (position, (index, answer)) in waiting.into_iter().enumerate() {
            if Some(position) != spent {
                self.table.get_mut(&deliveries[index])?.put_back(answer);
            }
        }
        Ok(waited)
    }
}

/// Acknowledges a delivered message for `deliver` (its `ack`). A failure is logged: the
/// broker sends the message again on its next connection, so nothing is lost.
async fn acknowledge(host: &BindingHost, received: &Received) {
    if received.qos() == crate::broker::QoS::AtMostOnce {
        return;
    }
    let acknowledged = match host.connection.current().await {
        Some(connection) => connection.ack(received.id()).await,
        None => Err(BrokerError::Closed),
    };
    if let Err(error) = acknowledged {
        tracing::warn!(
            binding = %host.name,
            %error,
            "acknowledging a delivered message failed; the broker sends it again on its next connection"
        );
    }
}

impl lifecycle::Host for HostView<'_> {
    async fn sleep(&mut self, duration_ms: u32) -> wasmtime::Result<bool> {
        Ok(tokio::select! {
            () = tokio::time::sleep(millis(duration_ms)) => true,
            () = self.host.shutdown.cancelled() => false,
        })
    }
}
