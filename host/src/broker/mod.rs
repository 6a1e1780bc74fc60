//! One MQTT connection over rumqttc: the client handle, its event-loop task (connect,
//! reconnect with backoff, re-subscribe), and the calls the component makes on it. What it
//! may ask is in `wit/binding.wit` (`broker.connection`); turning WIT values into these calls
//! is left to `imports`, and the bookkeeping that pairs packets with their answers to
//! `tracking`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, Request, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{BrokerError, Field};
use crate::tls;

mod tracking;

pub use tracking::Message;
use tracking::{AckMatcher, Inbox, Settled, Subscriptions};

/// Reconnect backoff (SPEC.md, "Connection"): from 1 s, doubling, up to 60 s.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// How long a clean disconnect may take before the connection is simply dropped.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests queued towards the event loop before `publish` waits for room.
const REQUEST_CHANNEL_CAPACITY: usize = 1024;
/// MQTT fixed header (up to 5 bytes), topic length prefix and packet id, on top of topic and
/// payload: the size rumqttc checks against its outgoing limit.
const PUBLISH_OVERHEAD: usize = 5 + 2 + 65_535 + 2;

/// Host-wide limits and behaviour for broker connections.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Largest payload accepted by `publish`, in bytes.
    pub max_payload_bytes: u32,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            max_payload_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Everything needed to open a connection (the WIT `connect-options`).
pub struct ConnectOptions {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectOptions {
    /// Shows where and who, never the password or the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("clean_session", &self.clean_session)
            .finish_non_exhaustive()
    }
}

/// An open connection. Clones share it; when the last clone is dropped the event loop
/// stops. [`Connection::disconnect`] first sends DISCONNECT.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    // Held for its `Drop`: the event loop ends with the last clone.
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct Shared {
    client: AsyncClient,
    acks: Mutex<AckMatcher>,
    subscriptions: Mutex<Subscriptions>,
    inbox: Mutex<Inbox>,
    /// Woken when the inbox gets a message or the connection closes.
    arrived: tokio::sync::Notify,
    /// Serialises "queue a waiter, then queue the request" so both queues keep one order.
    send_order: tokio::sync::Mutex<()>,
    connected: AtomicBool,
    closing: AtomicBool,
    /// Becomes `true` when the event-loop task has ended, however it ended.
    done: tokio::sync::watch::Sender<bool>,
    /// Counts the subscriptions the broker has accepted (SUBACKs), renewals included.
    subscribed: tokio::sync::watch::Sender<u64>,
    max_payload: usize,
    label: String,
}

/// Aborts the event-loop task when the connection goes away.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connection {
    /// Connects and waits for the broker to accept (CONNACK 0), at most
    /// `options.connect_timeout`.
    pub async fn connect(
        options: ConnectOptions,
        settings: &BrokerSettings,
    ) -> Result<Self, BrokerError> {
        let label = format!("{}@{}:{}", options.client_id, options.host, options.port);
        let connect_timeout = options.connect_timeout;
        let max_payload = settings.max_payload_bytes as usize;
        let mqtt = mqtt_options(options, max_payload)?;
        let (client, mut eventloop) = AsyncClient::new(mqtt, REQUEST_CHANNEL_CAPACITY);
        // MQTT packets are small and latency-bound: do not let Nagle hold them back.
        eventloop.network_options.set_tcp_nodelay(true);
        eventloop
            .network_options
            .set_connection_timeout(connect_timeout.as_secs().max(1));

        let shared = Arc::new(Shared {
            client,
            acks: Mutex::new(AckMatcher::default()),
            subscriptions: Mutex::new(Subscriptions::default()),
            inbox: Mutex::new(Inbox::default()),
            arrived: tokio::sync::Notify::new(),
            send_order: tokio::sync::Mutex::new(()),
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            done: tokio::sync::watch::Sender::new(false),
            subscribed: tokio::sync::watch::Sender::new(0),
            max_payload,
            label,
        });
        let (first_tx, first_rx) = oneshot::channel();
        // The event loop, and with it the inbox, runs from the first CONNACK on: messages of
        // a persistent session that arrive before anyone subscribes are kept, not dropped.
        let task = Arc::new(AbortOnDrop(tokio::spawn(run(
            eventloop,
            shared.clone(),
            first_tx,
        ))));
        let connection = Connection {
            shared,
            _task: task,
        };
        match tokio::time::timeout(connect_timeout, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(connection),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(BrokerError::Other(
                "the connection task ended before connecting".into(),
            )),
            Err(_) => Err(BrokerError::Timeout(format!(
                "no CONNACK from {} within {} ms",
                connection.shared.label,
                connect_timeout.as_millis()
            ))),
        }
    }

    /// Whether the connection can still be used (it is not closed or closing).
    pub fn is_open(&self) -> bool {
        !self.shared.closing.load(Ordering::Acquire) && !*self.shared.done.borrow()
    }

    /// Publishes and waits, at most `timeout`, for what the QoS calls for: at QoS 0 until the
    /// request is queued (it is sent before anything queued later, DISCONNECT included); at
    /// QoS 1 and 2 until the broker's PUBACK or PUBCOMP for this very packet.
    pub async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        if payload.len() > shared.max_payload {
            return Err(BrokerError::TooLarge(format!(
                "payload of {} bytes is over the limit of {} bytes",
                payload.len(),
                shared.max_payload
            )));
        }
        shared.usable()?;
        let deadline = tokio::time::Instant::now() + timeout;
        if qos == QoS::AtMostOnce {
            // Usually queued at once, without suspending the caller: no waiter, no task
            // switch (see docs/BENCHMARKS.md).
            let queued = shared.client.publish(topic, qos, retain, payload);
            return queued_by(deadline, queued).await;
        }
        let (tx, rx) = oneshot::channel();
        let queued = async {
            let _order = shared.send_order.lock().await;
            shared.acks().queued(tx);
            let sent = shared.client.publish(topic, qos, retain, payload).await;
            if sent.is_err() {
                shared.acks().unqueued();
            }
            sent
        };
        queued_by(deadline, queued).await?;
        answered_by(deadline, rx, "acknowledgement from the broker", timeout).await
    }

    /// Subscribes and waits for the SUBACK, at most `timeout`. The subscription is renewed
    /// after every reconnect, whatever this call returns.
    pub async fn subscribe(
        &self,
        filter: String,
        qos: QoS,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut subscriptions = shared.subscriptions();
            subscriptions.record(&filter, qos);
            if !shared.connected.load(Ordering::Acquire) {
                return Err(BrokerError::Unreachable(format!(
                    "not connected to {}; the subscription is made when it reconnects",
                    shared.label
                )));
            }
            // Under the same lock as the event loop's re-subscriptions, so that the order of
            // waiters is the order of requests.
            subscriptions.expect(Some(tx));
            if let Err(error) = shared.client.try_subscribe(filter, qos) {
                subscriptions.unexpect();
                return Err(BrokerError::Other(format!("subscribe not queued: {error}")));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        answered_by(deadline, rx, "SUBACK", timeout).await
    }

    /// Waits up to `timeout` for a message, then takes the messages waiting, at most `max`
    /// (at least one); none when none came in time.
    pub async fn next_messages(
        &self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>, BrokerError> {
        let shared = &self.shared;
        let max = max.max(1);
        let mut deadline = None;
        loop {
            // Registered before looking, so a message that arrives in between still wakes us.
            let arrived = shared.arrived.notified();
            if shared.closing.load(Ordering::Acquire) {
                return Err(BrokerError::Closed);
            }
            let messages = shared.inbox().take(max);
            if !messages.is_empty() {
                return Ok(messages);
            }
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeout);
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Acknowledges a message from [`Connection::next_messages`]. A message from an earlier
    /// connection is not acknowledged: its packet id may now name another message, and the
    /// broker sends it again anyway.
    pub async fn ack(&self, id: u64) -> Result<(), BrokerError> {
        let publish = match self.shared.inbox().settle(id) {
            Settled::Ack(publish) => publish,
            Settled::Nothing => return Ok(()),
            Settled::Unknown => {
                return Err(BrokerError::Other(format!(
                    "message {id} is unknown or already acknowledged"
                )));
            }
        };
        self.shared
            .client
            .ack(&publish)
            .await
            .map_err(|e| BrokerError::Unreachable(format!("acknowledgement not queued: {e}")))
    }

    /// Waits until the broker has accepted a subscription on this connection.
    pub async fn wait_subscribed(&self) -> Result<(), BrokerError> {
        let mut subscribed = self.shared.subscribed.subscribe();
        let mut done = self.shared.done.subscribe();
        tokio::select! {
            accepted = subscribed.wait_for(|count| *count > 0) => accepted.map(|_| ()).map_err(|_| BrokerError::Closed),
            _ = done.wait_for(|done| *done) => Err(BrokerError::Closed),
        }
    }

    pub fn max_payload_bytes(&self) -> u32 {
        u32::try_from(self.shared.max_payload).unwrap_or(u32::MAX)
    }

    /// Sends DISCONNECT (no UNSUBSCRIBE: a persistent session survives) after whatever is
    /// already queued (acknowledgements included), waits briefly for the event loop to end,
    /// and fails whatever still waits.
    pub async fn disconnect(&self) {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        shared.arrived.notify_waiters();
        if shared.client.try_disconnect().is_ok() {
            let mut done = shared.done.subscribe();
            let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, done.wait_for(|done| *done)).await;
        }
        shared.acks().fail_all(BrokerError::Closed);
        shared.subscriptions().fail_all(BrokerError::Closed);
    }
}

impl Shared {
    fn acks(&self) -> MutexGuard<'_, AckMatcher> {
        // None of these holds an invariant a panic elsewhere could break halfway.
        self.acks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refuses work when closing, and while reconnecting: a request queued then would still
    /// be sent after its caller was told it failed.
    fn usable(&self) -> Result<(), BrokerError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        if !self.connected.load(Ordering::Acquire) {
            return Err(BrokerError::Unreachable(format!(
                "not connected to {}; reconnecting",
                self.label
            )));
        }
        Ok(())
    }

    /// After a reconnect: renew every subscription.
    fn resubscribe(&self) {
        let mut subscriptions = self.subscriptions();
        let filters = subscriptions.filters();
        for (filter, qos) in filters {
            subscriptions.expect(None);
            if let Err(error) = self.client.try_subscribe(filter.clone(), qos) {
                subscriptions.unexpect();
                tracing::error!(connection = %self.label, filter, "cannot renew the subscription: {error}");
            }
        }
    }
}

/// Queues a request with rumqttc, waiting for room in its channel until `deadline`.
async fn queued_by(
    deadline: tokio::time::Instant,
    queued: impl Future<Output = Result<(), rumqttc::ClientError>>,
) -> Result<(), BrokerError> {
    match tokio::time::timeout_at(deadline, queued).await {
        Err(_) => Err(BrokerError::Timeout("the request queue stayed full".into())),
        Ok(Err(e)) => Err(BrokerError::Other(format!("request not queued: {e}"))),
        Ok(Ok(())) => Ok(()),
    }
}

/// Waits until `deadline` for the event loop's answer to a request; on timeout, says which
/// `answer` did not come within `timeout`.
async fn answered_by(
    deadline: tokio::time::Instant,
    rx: oneshot::Receiver<Result<(), BrokerError>>,
    answer: &str,
    timeout: Duration,
) -> Result<(), BrokerError> {
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(BrokerError::Closed),
        Err(_) => Err(BrokerError::Timeout(format!(
            "no {answer} within {} ms",
            timeout.as_millis()
        ))),
    }
}

fn mqtt_options(options: ConnectOptions, max_payload: usize) -> Result<MqttOptions, BrokerError> {
    if options.client_id.is_empty() {
        return Err(BrokerError::invalid(Field::ClientId, "is empty"));
    }
    if options.host.is_empty() {
        return Err(BrokerError::invalid(Field::Host, "is empty"));
    }
    let mut mqtt = MqttOptions::new(options.client_id, options.host, options.port);
    mqtt.set_keep_alive(options.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(options.clean_session)
        // Received messages are acknowledged when the component says so, not on arrival.
        .set_manual_acks(true)
        .set_max_packet_size(
            max_payload + PUBLISH_OVERHEAD,
            max_payload + PUBLISH_OVERHEAD,
        );
    if let Some(username) = options.username {
        mqtt.set_credentials(username, options.password.unwrap_or_default());
    }
    if options.tls {
        let config = tls::client_config(&tls::TlsMaterial {
            ca_cert: options.ca_cert.as_deref(),
            client_cert: options.client_cert.as_deref(),
            client_key: options.client_key.as_deref(),
        })?;
        mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    Ok(mqtt)
}

/// Drives the connection until it is closed: reports the first connect to `first`,
/// resolves publish waiters, reconnects after any loss.
async fn run(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    first: oneshot::Sender<Result<(), BrokerError>>,
) {
    // Marks the task done however it ends, including by abort, and wakes readers.
    struct Done<'a>(&'a Shared);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.done.send_replace(true);
            self.0.arrived.notify_waiters();
        }
    }
    let _done = Done(&shared);

    let mut first = Some(first);
    let mut backoff = RECONNECT_FIRST;
    loop {
        let polled = eventloop.poll().await;
        tracing::trace!(connection = %shared.label, event = ?polled);
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff = RECONNECT_FIRST;
                match first.take() {
                    Some(first) => {
                        tracing::debug!(connection = %shared.label, "connected");
                        shared.connected.store(true, Ordering::Release);
                        let _ = first.send(Ok(()));
                    }
                    None => {
                        tracing::info!(connection = %shared.label, session_present = connack.session_present, "reconnected");
                        shared.acks().reconnected(connack.session_present);
                        shared.subscriptions().reconnected(connack.session_present);
                        shared.inbox().reconnected(connack.session_present);
                        shared.resubscribe();
                        shared.connected.store(true, Ordering::Release);
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if shared.inbox().arrived(publish, &shared.label) {
                    shared.arrived.notify_one();
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.acks().written(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => shared.acks().collided(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => shared.acks().acknowledged(ack.pkid),
            Ok(Event::Incoming(Packet::PubComp(comp))) => shared.acks().acknowledged(comp.pkid),
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => shared.subscriptions().written(pkid),
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let refused = suback
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure));
                shared
                    .subscriptions()
                    .acknowledged(suback.pkid, refused, &shared.label);
                if !refused {
                    shared.subscribed.send_modify(|count| *count += 1);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                shared.connected.store(false, Ordering::Release);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                shared.connected.store(false, Ordering::Release);
                let error = classify(error);
                if let Some(first) = first.take() {
                    let _ = first.send(Err(error));
                    return;
                }
                if shared.closing.load(Ordering::Acquire) {
                    return;
                }
                // Requests rumqttc pulled back from its channel; it drops them if the broker
                // starts a new session.
                let drained_publishes = eventloop
                    .pending
                    .iter()
                    .filter(|request| {
                        matches!(request, Request::Publish(p) if p.pkid == 0 && p.qos != QoS::AtMostOnce)
                    })
                    .count();
                let drained_subscribes = eventloop
                    .pending
                    .iter()
                    .filter(|request| matches!(request, Request::Subscribe(_)))
                    .count();
                shared.acks().disconnected(drained_publishes);
                shared.subscriptions().disconnected(drained_subscribes);
                tracing::warn!(connection = %shared.label, retry_in = ?backoff, "connection lost: {error}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Sorts rumqttc's connection errors into what the component can act on.
fn classify(error: ConnectionError) -> BrokerError {
    // Under TLS 1.3 the server rejects a client certificate after the client's handshake has
    // finished, so the alert surfaces from the first MQTT read: look for it at any depth.
    if let Some(tls) = rustls_cause(&error) {
        return BrokerError::Tls(tls.to_string());
    }
    match error {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => {
                BrokerError::NotAuthorized("bad user name or password".into())
            }
            ConnectReturnCode::NotAuthorized => BrokerError::NotAuthorized("not authorized".into()),
            ConnectReturnCode::BadClientId => {
                BrokerError::NotAuthorized("client ID rejected".into())
            }
            ConnectReturnCode::ServiceUnavailable => {
                BrokerError::Unreachable("broker says service unavailable".into())
            }
            other => BrokerError::Other(format!("connection refused: {other:?}")),
        },
        ConnectionError::Tls(e) => BrokerError::Tls(e.to_string()),
        ConnectionError::Io(e) => BrokerError::Unreachable(e.to_string()),
        ConnectionError::NetworkTimeout => BrokerError::Timeout("connecting to the broker".into()),
        ConnectionError::FlushTimeout => BrokerError::Timeout("writing to the broker".into()),
        ConnectionError::RequestsDone => BrokerError::Closed,
        other => BrokerError::Other(other.to_string()),
    }
}

/// The `rustls::Error` behind an error, if any. rustls errors travel inside `io::Error`s,
/// whose `source()` skips the wrapped error, so those are opened with `get_ref`.
fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if let Some(tls) = wrapped.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        next = error.source();
    }
    None
}
