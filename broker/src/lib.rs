//! One MQTT connection, for a native host and for a WebAssembly component alike (it builds
//! for `wasm32-wasip2`, where tokio's networking runs over `wasi:sockets`): the handle that
//! callers share (`Connection`). The connection task that owns the socket is `driver`; the
//! network connection itself is `link`; which request an answer belongs to is `outbox`'s,
//! received messages are `inbox`'s, and what the handle and the task share is `shared`'s.
//! Turning WIT values into these calls is left to whoever implements the WIT `broker`
//! interface: the native host's `imports`, and the broker plug.
//!
//! The packets are the client's own (`packet`), the same for both MQTT versions; rumqttc
//! provides the MQTT 3.1.1 and MQTT 5 codecs, and only `codec` names it. Its event loop is not used: it assigns packet
//! ids itself and reports writes through an event queue that outlives a lost connection,
//! so a request's acknowledgement could only be inferred. Here the connection task assigns
//! every packet id and owns the socket, so an answer is paired with the packet that
//! carried it by construction (see `outbox` for the invariants).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod backoff;
mod codec;
mod driver;
mod error;
pub mod event;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
mod inbox;
mod link;
mod outbox;
mod packet;
mod reason;
mod shared;
#[cfg(test)]
mod tests;
mod tls;

pub use backoff::Backoff;
pub use error::{BrokerError, Field, Rejection};

pub use codec::ProtocolVersion;
use driver::{Command, Driver, Timing};
pub use inbox::Message;
use inbox::{Inbox, Settled};
use link::Endpoint;
use outbox::{Job, Outbox, Ticket};
use packet::{Connect, Login, Publish};
pub use shared::LinkStatus;
use shared::{Shared, lock};

/// How long `disconnect` waits for the connection task to say goodbye.
const DISCONNECT_WAIT: Duration = Duration::from_secs(3);
/// Commands queued towards the connection task before callers wait for room.
const COMMAND_CAPACITY: usize = 1024;
/// MQTT fixed header (up to 5 bytes), topic length prefix and packet id, on top of topic and
/// payload.
const PUBLISH_OVERHEAD: usize = 5 + 2 + 65_535 + 2;

/// MQTT quality of service (MQTT 3.1.1 section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// QoS 0: fire and forget.
    AtMostOnce,
    /// QoS 1: acknowledged by PUBACK; may arrive more than once.
    AtLeastOnce,
    /// QoS 2: the four-way handshake ending in PUBCOMP; arrives exactly once.
    ExactlyOnce,
}

/// Host-wide limits and behaviour for broker connections.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Largest payload accepted by `publish`, in bytes.
    pub max_payload_bytes: u32,
    /// Most QoS 1/2 publishes written and not yet acknowledged, per connection; more wait
    /// their turn.
    pub max_in_flight: u16,
    /// How long the broker may stay silent while it owes an answer (an acknowledgement, a
    /// SUBACK, a PINGRESP) before the connection is declared dead and reconnected. Keep it
    /// below the component's publish timeout (10 s), so that a dead link is found first.
    pub response_timeout: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            max_payload_bytes: 16 * 1024 * 1024,
            max_in_flight: 128,
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// How MQTT travels to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSockets over TCP, to [`ConnectOptions::path`].
    Ws,
    /// WebSockets over TLS.
    Wss,
}

/// Everything needed to open a connection (the WIT `connect-options`).
pub struct ConnectOptions {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// `Ws` and `Wss`: the HTTP path (and query) of the WebSocket endpoint.
    pub path: String,
    /// More brokers, tried in order after `host` and `port` (connecting, and after every
    /// loss); everything else here applies to them all.
    pub failover: Vec<Server>,
    pub protocol: ProtocolVersion,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT 3.1.1's clean session; MQTT 5's clean start.
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after the connection closes, in
    /// seconds (`u32::MAX`: for ever). `None` sends none (0: the session ends with the
    /// connection). Not sent at MQTT 3.1.1, where `clean_session` alone decides.
    pub session_expiry: Option<u32>,
    pub keep_alive: Duration,
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub connect_timeout: Duration,
}

/// One broker of a failover list (the WIT `server`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// As [`ConnectOptions::path`].
    pub path: String,
}

impl std::fmt::Debug for ConnectOptions {
    /// Shows where and who, never the password or the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("transport", &self.transport)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("failover", &self.failover)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("clean_session", &self.clean_session)
            .field("session_expiry", &self.session_expiry)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

/// One publish, as the component asked for it.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties; not sent at MQTT 3.1.1.
    pub properties: MessageProperties,
}

/// The MQTT 5 properties of a message, sent with a publish or received with a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Message expiry interval in seconds: sent, how long the broker may hold the message;
    /// received, what is left of it.
    pub expiry: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// User properties in order; names may repeat.
    pub user_properties: Vec<(String, String)>,
    /// The payload format indicator: `true` when the payload is UTF-8 text.
    pub utf8_payload: bool,
}

/// An open connection. Clones share it; when the last clone is dropped the connection
/// task stops. [`Connection::disconnect`] first sends DISCONNECT.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    // Held for its `Drop`: the connection task ends with the last clone.
    task: Arc<AbortOnDrop>,
}

/// Aborts the connection task when the connection goes away.
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
        let max_payload = settings.max_payload_bytes as usize;
        let keep_alive = options.keep_alive.max(Duration::from_secs(1));
        let endpoints = endpoints(options, max_payload)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            arrived: tokio::sync::Notify::new(),
            connected: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            status: Mutex::new(LinkStatus {
                connected: false,
                since: SystemTime::now(),
                last_error: None,
            }),
            done: tokio::sync::watch::Sender::new(false),
            subscribed: tokio::sync::watch::Sender::new(0),
            max_payload,
            broker_max_packet: std::sync::atomic::AtomicUsize::new(usize::MAX),
            shares_unavailable: AtomicBool::new(false),
            label,
        });
        let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
        let driver = Driver {
            shared: shared.clone(),
            commands: receiver,
            endpoints,
            outbox: Outbox::new(usize::from(settings.max_in_flight)),
            timing: Timing {
                keep_alive,
                response_timeout: settings.response_timeout,
            },
            filters: Vec::new(),
            generation: 0,
        };
        let (first_tx, first_rx) = oneshot::channel();
        // The task, and with it the inbox, runs from the first CONNACK on: messages of a
        // persistent session that arrive before anyone subscribes are kept, not dropped.
        let task = Arc::new(AbortOnDrop(tokio::spawn(driver.run(first_tx))));
        let connection = Connection {
            shared,
            commands,
            task,
        };
        match first_rx.await {
            Ok(Ok(())) => Ok(connection),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(BrokerError::Other(
                "the connection task ended before connecting".into(),
            )),
        }
    }

    /// Whether the connection can still be used (it is not closed or closing).
    pub fn is_open(&self) -> bool {
        !self.shared.closing.load(Ordering::Acquire) && !*self.shared.done.borrow()
    }

    /// Whether the connection is up, since when, and why it was last lost.
    pub fn status(&self) -> LinkStatus {
        lock(&self.shared.status).clone()
    }

    /// Whether `other` is a clone of this very connection (for tests of who shares one).
    #[cfg(any(test, feature = "test-support"))]
    pub fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Messages received and not yet taken by a reader, and connections after the first.
    pub fn traffic(&self) -> (usize, u64) {
        let inbox = self.shared.inbox();
        (inbox.waiting(), inbox.reconnects())
    }

    /// Publishes and waits, at most `timeout`, for what the QoS calls for: at QoS 0 until the
    /// request is queued (it is written before anything queued later, DISCONNECT included);
    /// at QoS 1 and 2 until the broker's PUBACK or PUBCOMP for this very packet.
    ///
    /// A failure says whether the message may have reached the broker: `unconfirmed` when
    /// it was written and no acknowledgement came; any other error means it was not
    /// written and never will be.
    pub async fn publish(
        &self,
        request: PublishRequest,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        if request.payload.len() > shared.max_payload {
            return Err(BrokerError::TooLarge(format!(
                "payload of {} bytes is over the limit of {} bytes",
                request.payload.len(),
                shared.max_payload
            )));
        }
        shared.usable()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let publish = Publish {
            dup: false,
            qos: request.qos,
            retain: request.retain,
            topic: Bytes::from(request.topic.into_bytes()),
            pkid: 0,
            payload: request.payload,
            properties: request.properties,
        };
        // Refused here, not sent: a QoS 0 caller is answered before the write.
        let broker_max = shared.broker_max_packet.load(Ordering::Acquire);
        let size = codec::publish_size(&publish);
        if size > broker_max {
            return Err(BrokerError::TooLarge(format!(
                "the message makes a packet of {size} bytes, over the broker's maximum packet size of {broker_max} bytes"
            )));
        }
        let ticket = Arc::new(Ticket::default());
        if request.qos == QoS::AtMostOnce {
            let job = Job {
                publish,
                ticket,
                reply: None,
            };
            return self.send(Command::Publish(job), deadline).await;
        }
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            publish,
            ticket: ticket.clone(),
            reply: Some(reply),
        };
        self.send(Command::Publish(job), deadline).await?;
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(outcome)) => outcome,
            // The connection task ended without answering.
            Ok(Err(_)) if ticket.abandon() => Err(BrokerError::Closed),
            Ok(Err(_)) => Err(BrokerError::Unconfirmed(
                "the message was sent, but the connection closed before the broker acknowledged it"
                    .into(),
            )),
            Err(_) if ticket.abandon() => Err(BrokerError::Timeout(format!(
                "the message was not sent within {} ms (the connection was down or its in-flight window full); it will not be sent",
                timeout.as_millis()
            ))),
            Err(_) => Err(BrokerError::Unconfirmed(format!(
                "the message was sent, but no acknowledgement came within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Subscribes and waits for the SUBACK, at most `timeout`. The subscription is renewed
    /// after every reconnect, whatever this call returns. A shared subscription
    /// (`$share/...`) to a broker whose CONNACK said it has none is refused here, as its
    /// SUBACK would (0x9E).
    /// Whether the broker takes shared subscriptions: false when its MQTT 5 CONNACK said
    /// "Shared Subscription Available" = 0.
    pub fn shared_subscriptions_available(&self) -> bool {
        !self.shared.shares_unavailable.load(Ordering::Acquire)
    }

    pub async fn subscribe(
        &self,
        filter: String,
        qos: QoS,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        if filter.starts_with("$share/") && !self.shared_subscriptions_available() {
            return Err(BrokerError::Rejected(Rejection::new(
                reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                "shared subscriptions not supported: the broker's CONNACK says Shared Subscription Available = 0",
                false,
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, outcome) = oneshot::channel();
        self.send(Command::Subscribe { filter, qos, reply }, deadline)
            .await?;
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Err(BrokerError::Timeout(format!(
                "no SUBACK within {} ms",
                timeout.as_millis()
            ))),
        }
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

    /// Returns once a message waits to be taken with [`Connection::next_messages`], or the
    /// connection is closing.
    pub async fn message_waiting(&self) {
        let shared = &self.shared;
        loop {
            // Registered before looking, so a message that arrives in between still wakes us.
            let arrived = shared.arrived.notified();
            if shared.closing.load(Ordering::Acquire) || shared.inbox().waiting() > 0 {
                return;
            }
            arrived.await;
        }
    }

    /// Acknowledges a message from [`Connection::next_messages`]. A message from an earlier
    /// connection is not acknowledged: its packet id may now name another message, and the
    /// broker sends it again anyway.
    pub async fn ack(&self, id: u64) -> Result<(), BrokerError> {
        let command = match self.shared.inbox().settle(id) {
            Settled::Ack {
                pkid,
                qos,
                generation,
            } => Command::Ack {
                pkid,
                qos,
                generation,
            },
            Settled::Nothing => return Ok(()),
            Settled::Unknown => {
                return Err(BrokerError::Other(format!(
                    "message {id} is unknown or already acknowledged"
                )));
            }
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| BrokerError::Closed)
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

    /// Stops reading without closing: from now on [`Connection::next_messages`] answers
    /// `Closed` (and [`Connection::message_waiting`] returns), while acknowledgements asked
    /// for still go out, before the DISCONNECT of a later [`Connection::disconnect`]. For a
    /// reader that has had all it wanted (`read --count`).
    pub fn stop_reading(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.arrived.notify_waiters();
    }

    /// Sends DISCONNECT (no UNSUBSCRIBE: a persistent session survives) after whatever is
    /// already queued (acknowledgements included), and waits briefly for the connection
    /// task to end; every request still open is answered.
    pub async fn disconnect(&self) {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        shared.arrived.notify_waiters();
        let mut done = shared.done.subscribe();
        let said_goodbye = async {
            let _ = self.commands.send(Command::Disconnect).await;
            let _ = done.wait_for(|done| *done).await;
        };
        if tokio::time::timeout(DISCONNECT_WAIT, said_goodbye)
            .await
            .is_err()
        {
            self.task.0.abort();
        }
    }

    /// Hands a command to the connection task, waiting for room until `deadline`.
    async fn send(
        &self,
        command: Command,
        deadline: tokio::time::Instant,
    ) -> Result<(), BrokerError> {
        let command = match self.commands.try_send(command) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(BrokerError::Closed),
            Err(mpsc::error::TrySendError::Full(command)) => command,
        };
        match tokio::time::timeout_at(deadline, self.commands.send(command)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::Closed),
            Err(_) => Err(BrokerError::Timeout(
                "the connection's request queue stayed full; the request was not sent".into(),
            )),
        }
    }
}

/// The endpoints of a connection, in the order they are tried: where, how (TLS), and the
/// CONNECT packet.
fn endpoints(options: ConnectOptions, max_payload: usize) -> Result<Arc<[Endpoint]>, BrokerError> {
    if options.client_id.is_empty() {
        return Err(BrokerError::invalid(Field::ClientId, "is empty"));
    }
    let servers = std::iter::once(Server {
        host: options.host.clone(),
        port: options.port,
        path: options.path.clone(),
    })
    .chain(options.failover.iter().cloned());
    for (n, server) in servers.clone().enumerate() {
        let which = if n == 0 {
            String::new()
        } else {
            format!("failover server {n}: ")
        };
        if server.host.is_empty() {
            return Err(BrokerError::invalid(
                Field::Host,
                format!("{which}is empty"),
            ));
        }
        if matches!(options.transport, Transport::Ws | Transport::Wss)
            && !server.path.starts_with('/')
        {
            return Err(BrokerError::invalid(
                Field::Path,
                format!(
                    "{which}expected a path starting with /, got {:?}",
                    server.path
                ),
            ));
        }
    }
    let tls = if matches!(options.transport, Transport::Tls | Transport::Wss) {
        Some(tls::client_config(&tls::TlsMaterial {
            ca_cert: options.ca_cert.as_deref(),
            client_cert: options.client_cert.as_deref(),
            client_key: options.client_key.as_deref(),
        })?)
    } else {
        None
    };
    let connect = Connect {
        keep_alive: u16::try_from(options.keep_alive.as_secs().max(1)).unwrap_or(u16::MAX),
        client_id: options.client_id,
        clean_start: options.clean_session,
        login: options.username.map(|username| Login {
            username,
            password: options.password.unwrap_or_default(),
        }),
        session_expiry: options.session_expiry,
        // What this client reads (its own payload limit plus headers), so that the broker
        // drops larger messages instead of breaking the connection with them.
        max_packet_size: u32::try_from(max_payload + PUBLISH_OVERHEAD).ok(),
    };
    let websocket = matches!(options.transport, Transport::Ws | Transport::Wss);
    Ok(servers
        .map(|server| Endpoint {
            host: server.host,
            port: server.port,
            tls: tls.clone(),
            websocket_path: websocket.then_some(server.path),
            version: options.protocol,
            connect: connect.clone(),
            connect_timeout: options.connect_timeout,
            max_packet: max_payload + PUBLISH_OVERHEAD,
        })
        .collect())
}
