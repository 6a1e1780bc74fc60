//! One MQTT connection over rumqttc: the client handle, its event-loop task, and the
//! matching of each publish to its acknowledgement. What the component may ask of it is in
//! `wit/binding.wit` (`broker.connection`); turning WIT values into these calls is left to
//! `imports`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, Publish, QoS, Request, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{BrokerError, Field};
use crate::tls;

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
        Self { max_payload_bytes: 16 * 1024 * 1024 }
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

/// A message received on a subscription, waiting for the component.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub duplicate: bool,
    /// The connection (counting reconnects) it arrived on.
    generation: u64,
}

impl Connection {
    /// Connects and waits for the broker to accept (CONNACK 0), at most
    /// `options.connect_timeout`.
    pub async fn connect(options: ConnectOptions, settings: &BrokerSettings) -> Result<Self, BrokerError> {
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
        let task = Arc::new(AbortOnDrop(tokio::spawn(run(eventloop, shared.clone(), first_tx))));
        let connection = Connection { shared, _task: task };
        match tokio::time::timeout(connect_timeout, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(connection),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(BrokerError::Other("the connection task ended before connecting".into())),
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

    /// Publishes and waits for the acknowledgement that the QoS calls for, at most `timeout`.
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
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + timeout;
        let queued = tokio::time::timeout_at(deadline, async {
            let _order = shared.send_order.lock().await;
            shared.acks().queued(tx);
            let sent = shared.client.publish(topic, qos, retain, payload).await;
            if sent.is_err() {
                shared.acks().unqueued();
            }
            sent
        })
        .await;
        match queued {
            Err(_) => return Err(BrokerError::Timeout("the request queue stayed full".into())),
            Ok(Err(e)) => return Err(BrokerError::Other(format!("publish not queued: {e}"))),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Err(BrokerError::Timeout(format!(
                "no acknowledgement from the broker within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Subscribes and waits for the SUBACK, at most `timeout`. The subscription is renewed
    /// after every reconnect, whatever this call returns.
    pub async fn subscribe(&self, filter: String, qos: QoS, timeout: Duration) -> Result<(), BrokerError> {
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
            subscriptions.expected.push_back(Some(tx));
            if let Err(error) = shared.client.try_subscribe(filter, qos) {
                subscriptions.expected.pop_back();
                return Err(BrokerError::Other(format!("subscribe not queued: {error}")));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Err(BrokerError::Timeout(format!("no SUBACK within {} ms", timeout.as_millis()))),
        }
    }

    /// Waits up to `timeout` for the next message; `None` when none came.
    pub async fn next_message(&self, timeout: Duration) -> Result<Option<Message>, BrokerError> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a message that arrives in between still wakes us.
            let arrived = shared.arrived.notified();
            if shared.closing.load(Ordering::Acquire) {
                return Err(BrokerError::Closed);
            }
            if let Some(message) = shared.inbox().take() {
                return Ok(Some(message));
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Acknowledges a message from [`Connection::next_message`]. A message from an earlier
    /// connection is not acknowledged: its packet id may now name another message, and the
    /// broker sends it again anyway.
    pub async fn ack(&self, id: u64) -> Result<(), BrokerError> {
        let publish = match self.shared.inbox().settle(id) {
            Settled::Ack(publish) => publish,
            Settled::Nothing => return Ok(()),
            Settled::Unknown => {
                return Err(BrokerError::Other(format!("message {id} is unknown or already acknowledged")));
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
        self.acks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Refuses work when closing, and while reconnecting: a request queued then would still
    /// be sent after its caller was told it failed.
    fn usable(&self) -> Result<(), BrokerError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        if !self.connected.load(Ordering::Acquire) {
            return Err(BrokerError::Unreachable(format!("not connected to {}; reconnecting", self.label)));
        }
        Ok(())
    }

    /// After a reconnect: renew every subscription.
    fn resubscribe(&self) {
        let mut subscriptions = self.subscriptions();
        let filters = subscriptions.filters.clone();
        for (filter, qos) in filters {
            subscriptions.expected.push_back(None);
            if let Err(error) = self.client.try_subscribe(filter.clone(), qos) {
                subscriptions.expected.pop_back();
                tracing::error!(connection = %self.label, filter, "cannot renew the subscription: {error}");
            }
        }
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
        .set_max_packet_size(max_payload + PUBLISH_OVERHEAD, max_payload + PUBLISH_OVERHEAD);
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
                let refused = suback.return_codes.iter().any(|code| matches!(code, SubscribeReasonCode::Failure));
                shared.subscriptions().acknowledged(suback.pkid, refused, &shared.label);
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
                    .filter(|request| matches!(request, Request::Publish(p) if p.pkid == 0))
                    .count();
                let drained_subscribes =
                    eventloop.pending.iter().filter(|request| matches!(request, Request::Subscribe(_))).count();
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
        let wrapped = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if let Some(tls) = wrapped.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        next = error.source();
    }
    None
}

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

/// Matches publishes to their acknowledgements. rumqttc gives no per-publish handle: it
/// reports `Outgoing::Publish(pkid)` as it writes each request, in the order requests were
/// queued, and later the PUBACK/PUBCOMP for that pkid. The matcher keeps the waiters in the
/// same order and pairs them up.
#[derive(Debug, Default)]
struct AckMatcher {
    /// Waiters whose requests are queued but not yet written, oldest first.
    queued: VecDeque<Waiter>,
    /// Waiters of written QoS 1/2 publishes, by packet id.
    in_flight: HashMap<u16, Waiter>,
    /// A publish rumqttc held back because its pkid was still in use (`AwaitAck`).
    collided: Option<(u16, Waiter)>,
    /// How many of the oldest `queued` requests rumqttc pulled back on a disconnect.
    drained: usize,
}

impl AckMatcher {
    fn queued(&mut self, waiter: Waiter) {
        self.queued.push_back(waiter);
    }

    /// The request of the newest waiter could not be queued after all.
    fn unqueued(&mut self) {
        self.queued.pop_back();
    }

    fn written(&mut self, pkid: u16) {
        if pkid == 0 {
            // QoS 0: written is all there is.
            if let Some(waiter) = self.queued.pop_front() {
                let _ = waiter.send(Ok(()));
            }
            self.drained = self.drained.saturating_sub(1);
            return;
        }
        if self.in_flight.contains_key(&pkid) {
            // A resend after reconnecting (MQTT 3.1.1 section 4.4): same packet, same waiter.
            return;
        }
        let waiter = match self.collided.take() {
            Some((held, waiter)) if held == pkid => Some(waiter),
            other => {
                self.collided = other;
                self.drained = self.drained.saturating_sub(1);
                self.queued.pop_front()
            }
        };
        if let Some(waiter) = waiter {
            self.in_flight.insert(pkid, waiter);
        }
    }

    fn collided(&mut self, pkid: u16) {
        if let Some(waiter) = self.queued.pop_front() {
            self.drained = self.drained.saturating_sub(1);
            self.collided = Some((pkid, waiter));
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(waiter) = self.in_flight.remove(&pkid) {
            let _ = waiter.send(Ok(()));
        }
    }

    fn disconnected(&mut self, drained: usize) {
        self.drained = drained;
    }

    /// Without a session the broker forgot every unacknowledged packet, and rumqttc dropped
    /// what it would have resent and what it pulled back from its queue: fail those waiters
    /// so callers can retry now instead of waiting out their timeouts.
    fn reconnected(&mut self, session_present: bool) {
        if !session_present {
            let lost = || BrokerError::Unreachable("connection lost before the broker acknowledged the message".into());
            for (_, waiter) in self.in_flight.drain() {
                let _ = waiter.send(Err(lost()));
            }
            if let Some((_, waiter)) = self.collided.take() {
                let _ = waiter.send(Err(lost()));
            }
            for waiter in self.queued.drain(..self.drained.min(self.queued.len())) {
                let _ = waiter.send(Err(lost()));
            }
        }
        self.drained = 0;
    }

    fn fail_all(&mut self, error: BrokerError) {
        let waiters = self.queued.drain(..).chain(self.in_flight.drain().map(|(_, w)| w));
        for waiter in waiters.chain(self.collided.take().map(|(_, w)| w)) {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

type SubWaiter = oneshot::Sender<Result<(), BrokerError>>;

/// The subscriptions to renew after a reconnect, and the matching of SUBSCRIBE requests to
/// their SUBACKs (same scheme as [`AckMatcher`]: rumqttc reports `Outgoing::Subscribe(pkid)`
/// in request order).
#[derive(Debug, Default)]
struct Subscriptions {
    filters: Vec<(String, QoS)>,
    /// One entry per queued SUBSCRIBE, oldest first: a caller waiting, or `None` for a
    /// renewal nobody waits for.
    expected: VecDeque<Option<SubWaiter>>,
    in_flight: HashMap<u16, SubWaiter>,
    drained: usize,
}

impl Subscriptions {
    fn record(&mut self, filter: &str, qos: QoS) {
        match self.filters.iter_mut().find(|(known, _)| known == filter) {
            Some(entry) => entry.1 = qos,
            None => self.filters.push((filter.to_string(), qos)),
        }
    }

    fn written(&mut self, pkid: u16) {
        self.drained = self.drained.saturating_sub(1);
        if let Some(Some(waiter)) = self.expected.pop_front() {
            self.in_flight.insert(pkid, waiter);
        }
    }

    fn acknowledged(&mut self, pkid: u16, refused: bool, label: &str) {
        let outcome = if refused {
            tracing::error!(connection = %label, "the broker refused a subscription");
            Err(BrokerError::NotAuthorized("the broker refused the subscription (SUBACK failure)".into()))
        } else {
            Ok(())
        };
        if let Some(waiter) = self.in_flight.remove(&pkid) {
            let _ = waiter.send(outcome);
        }
    }

    fn disconnected(&mut self, drained: usize) {
        self.drained = drained;
    }

    /// rumqttc never resends a SUBSCRIBE, and drops the ones it pulled back when the broker
    /// starts a new session: fail their callers (the renewal that follows subscribes again).
    fn reconnected(&mut self, session_present: bool) {
        let lost = || BrokerError::Unreachable("connection lost before the SUBACK".into());
        for (_, waiter) in self.in_flight.drain() {
            let _ = waiter.send(Err(lost()));
        }
        if !session_present {
            for waiter in self.expected.drain(..self.drained.min(self.expected.len())).flatten() {
                let _ = waiter.send(Err(lost()));
            }
        }
        self.drained = 0;
    }

    fn fail_all(&mut self, error: BrokerError) {
        let waiters = self.expected.drain(..).flatten().chain(self.in_flight.drain().map(|(_, w)| w));
        for waiter in waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

/// Received messages: queued in arrival order for the component, and remembered until
/// acknowledged.
#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Message>,
    /// What `ack` needs (packet id, QoS) for each QoS 1/2 message not yet acknowledged.
    unacked: HashMap<u64, (u64, Publish)>,
    next_id: u64,
    /// Counts connections: 0 for the first, +1 for each reconnect.
    generation: u64,
    /// QoS 1/2 messages of generations below this are dropped unread: the broker kept the
    /// session and sends them again (delivering both would break QoS 2's exactly-once).
    stale_below: u64,
    qos0_dropped: u64,
}

/// What acknowledging a message comes to.
#[derive(Debug)]
enum Settled {
    Ack(Publish),
    /// QoS 0, or a message of an earlier connection.
    Nothing,
    Unknown,
}

/// Most QoS 0 messages held for the component; more are dropped (QoS 1/2 are bounded by the
/// broker's in-flight window, since they are acknowledged only after delivery).
const INBOX_QOS0_LIMIT: usize = 100_000;

impl Inbox {
    /// Queues a message; `false` when it was dropped.
    fn arrived(&mut self, publish: Publish, label: &str) -> bool {
        if publish.qos == QoS::AtMostOnce && self.queue.len() >= INBOX_QOS0_LIMIT {
            self.qos0_dropped += 1;
            if self.qos0_dropped.is_power_of_two() {
                tracing::warn!(connection = %label, dropped = self.qos0_dropped, "inbox full: QoS 0 messages dropped");
            }
            return false;
        }
        self.next_id += 1;
        let id = self.next_id;
        if publish.qos != QoS::AtMostOnce {
            let mut receipt = Publish::new("", publish.qos, Vec::new());
            receipt.pkid = publish.pkid;
            self.unacked.insert(id, (self.generation, receipt));
        }
        self.queue.push_back(Message {
            id,
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            qos: publish.qos,
            retain: publish.retain,
            duplicate: publish.dup,
            generation: self.generation,
        });
        true
    }

    fn take(&mut self) -> Option<Message> {
        while let Some(message) = self.queue.pop_front() {
            if message.qos != QoS::AtMostOnce && message.generation < self.stale_below {
                self.unacked.remove(&message.id);
                continue;
            }
            return Some(message);
        }
        None
    }

    fn settle(&mut self, id: u64) -> Settled {
        match self.unacked.remove(&id) {
            Some((generation, publish)) if generation == self.generation => Settled::Ack(publish),
            Some(_) => Settled::Nothing,
            None if id > 0 && id <= self.next_id => Settled::Nothing,
            None => Settled::Unknown,
        }
    }

    fn reconnected(&mut self, session_present: bool) {
        self.generation += 1;
        if session_present {
            self.stale_below = self.generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(matcher: &mut AckMatcher) -> oneshot::Receiver<Result<(), BrokerError>> {
        let (tx, rx) = oneshot::channel();
        matcher.queued(tx);
        rx
    }

    fn outcome(rx: &mut oneshot::Receiver<Result<(), BrokerError>>) -> Option<Result<(), BrokerError>> {
        rx.try_recv().ok()
    }

    #[test]
    fn qos0_resolves_when_written() {
        let mut m = AckMatcher::default();
        let mut a = waiter(&mut m);
        assert_eq!(outcome(&mut a), None);
        m.written(0);
        assert_eq!(outcome(&mut a), Some(Ok(())));
    }

    #[test]
    fn qos1_resolves_on_its_own_ack_in_any_order() {
        let mut m = AckMatcher::default();
        let (mut a, mut b) = (waiter(&mut m), waiter(&mut m));
        m.written(1);
        m.written(2);
        m.acknowledged(2);
        assert_eq!((outcome(&mut a), outcome(&mut b)), (None, Some(Ok(()))));
        m.acknowledged(1);
        assert_eq!(outcome(&mut a), Some(Ok(())));
    }

    #[test]
    fn resend_after_reconnect_keeps_the_waiter() {
        let mut m = AckMatcher::default();
        let mut a = waiter(&mut m);
        m.written(7);
        m.disconnected(0);
        m.reconnected(true);
        let mut b = waiter(&mut m);
        m.written(7); // the resend, not b
        m.written(8);
        m.acknowledged(7);
        assert_eq!((outcome(&mut a), outcome(&mut b)), (Some(Ok(())), None));
        m.acknowledged(8);
        assert_eq!(outcome(&mut b), Some(Ok(())));
    }

    #[test]
    fn collided_publish_is_matched_when_written_later() {
        let mut m = AckMatcher::default();
        let mut a = waiter(&mut m);
        m.written(1);
        let mut b = waiter(&mut m);
        m.collided(1); // b got pkid 1 while a still holds it
        let mut c = waiter(&mut m);
        m.acknowledged(1);
        assert_eq!(outcome(&mut a), Some(Ok(())));
        m.written(1); // b, finally
        m.written(2); // c
        m.acknowledged(2);
        m.acknowledged(1);
        assert_eq!((outcome(&mut b), outcome(&mut c)), (Some(Ok(())), Some(Ok(()))));
    }

    #[test]
    fn new_session_fails_lost_waiters_and_keeps_later_ones() {
        let mut m = AckMatcher::default();
        let mut in_flight = waiter(&mut m);
        m.written(1);
        let mut drained = waiter(&mut m);
        let mut later = waiter(&mut m);
        m.disconnected(1);
        m.reconnected(false);
        assert!(matches!(outcome(&mut in_flight), Some(Err(BrokerError::Unreachable(_)))));
        assert!(matches!(outcome(&mut drained), Some(Err(BrokerError::Unreachable(_)))));
        assert_eq!(outcome(&mut later), None);
        m.written(1);
        m.acknowledged(1);
        assert_eq!(outcome(&mut later), Some(Ok(())));
    }

    #[test]
    fn abandoned_waiter_does_not_shift_the_others() {
        let mut m = AckMatcher::default();
        drop(waiter(&mut m)); // its caller timed out
        let mut b = waiter(&mut m);
        m.written(1);
        m.written(2);
        m.acknowledged(1);
        assert_eq!(outcome(&mut b), None);
        m.acknowledged(2);
        assert_eq!(outcome(&mut b), Some(Ok(())));
    }
}
