//! One binding's broker connection, in one place: opened by the first instance that
//! connects (after the operator's allow-list, and with the binding's claim on its client
//! ID), joined by the binding's other instances, read for status and figures, and closed
//! once. One connection serves both directions: the client ID is used exactly, with no
//! per-direction suffix. The `connect` and `join` imports and `Binding` go through here;
//! nothing else holds the connection.
//!
//! The slot reaches the network only through [`Connector`], which the broker settings are;
//! its unit tests put a fake in their place.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerSettings, ConnectOptions, Connection};
use crate::broker_policy::{self, AllowedBroker};
use crate::client_ids::{Claim, ClientIds};
use crate::error::{BrokerError, Field};

/// What makes, tests and ends a broker connection: [`BrokerSettings`] with the real
/// [`Connection`]; a fake in the unit tests.
pub(crate) trait Connector: Send + Sync + 'static {
    type Connection: Clone + Send + Sync + 'static;

    fn connect(
        &self,
        options: ConnectOptions,
    ) -> impl Future<Output = Result<Self::Connection, BrokerError>> + Send;

    /// Whether `connection` is open or reconnecting (not closed for good).
    fn is_open(connection: &Self::Connection) -> bool;

    /// Disconnects cleanly.
    fn disconnect(connection: Self::Connection) -> impl Future<Output = ()> + Send;
}

impl Connector for BrokerSettings {
    type Connection = Connection;

    fn connect(
        &self,
        options: ConnectOptions,
    ) -> impl Future<Output = Result<Connection, BrokerError>> + Send {
        Connection::connect(options, self)
    }

    fn is_open(connection: &Connection) -> bool {
        connection.is_open()
    }

    async fn disconnect(connection: Connection) {
        connection.disconnect().await;
    }
}

pub(crate) struct ConnectionSlot<C: Connector = BrokerSettings> {
    /// The binding's name, for logs and the client-ID claim.
    binding: String,
    connector: C,
    /// Where the component may connect (`None`: anywhere).
    allowed_brokers: Option<Vec<AllowedBroker>>,
    /// The client IDs of every binding of the runtime, and this binding's hold on its own.
    client_ids: Arc<ClientIds>,
    claim: Mutex<Option<Claim>>,
    /// The binding's shutdown: a connect under way gives up.
    shutdown: CancellationToken,
    open: tokio::sync::Mutex<Option<C::Connection>>,
}

impl<C: Connector> ConnectionSlot<C> {
    pub fn new(
        binding: String,
        connector: C,
        allowed_brokers: Option<Vec<AllowedBroker>>,
        client_ids: Arc<ClientIds>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            binding,
            connector,
            allowed_brokers,
            client_ids,
            claim: Mutex::new(None),
            shutdown,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// The binding's connection: the open one, or a new one to the broker `options` name if
    /// the operator allows it. Instances that connect at once wait for one another, so the
    /// binding never has two.
    pub async fn open(&self, options: ConnectOptions) -> Result<C::Connection, BrokerError> {
        // The operator's policy comes before anything touches the network, and covers
        // every broker of a failover list.
        let servers = std::iter::once((&options.host, options.port)).chain(
            options
                .failover
                .iter()
                .map(|server| (&server.host, server.port)),
        );
        for (host, port) in servers {
            if let Err(reason) = broker_policy::check(self.allowed_brokers.as_deref(), host, port) {
                tracing::error!(binding = %self.binding, "{reason}");
                return Err(BrokerError::invalid(Field::Host, reason));
            }
        }
        let mut open = self.open.lock().await;
        if let Some(connection) = open.as_ref().filter(|open| C::is_open(open)) {
            return Ok(connection.clone());
        }
        tracing::debug!(binding = %self.binding, ?options, "connecting");
        let claim = self.client_ids.claim(
            &options.host,
            options.port,
            &options.client_id,
            &self.binding,
        );
        *lock(&self.claim) = Some(claim);
        let connection = tokio::select! {
            connected = self.connector.connect(options) => connected?,
            () = self.shutdown.cancelled() => return Err(BrokerError::Closed),
        };
        *open = Some(connection.clone());
        Ok(connection)
    }

    /// The open connection, for an instance that did not open it; `closed` if there is
    /// none (the first instance has not connected, or the binding is shutting down).
    pub async fn join(&self) -> Result<C::Connection, BrokerError> {
        let open = self.current().await.filter(C::is_open);
        match open {
            Some(connection) => {
                tracing::debug!(binding = %self.binding, "joining the binding's connection");
                Ok(connection)
            }
            None => Err(BrokerError::Closed),
        }
    }

    /// The connection, open or reconnecting; `None` before the first connect and after
    /// `close`.
    pub async fn current(&self) -> Option<C::Connection> {
        self.open.lock().await.clone()
    }

    /// Disconnects cleanly (no UNSUBSCRIBE, so a persistent session survives) and lets go
    /// of the client ID; later calls find no connection.
    pub async fn close(&self) {
        let connection = self.open.lock().await.take();
        if let Some(connection) = connection {
            C::disconnect(connection).await;
        }
        lock(&self.claim).take();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use rumqttc::Packet;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::broker::fake::{FakeBroker, WAIT};

    /// Connects without a network. Each connect takes a permit from `admit` first (so a
    /// test can hold connects back), then fails if the host is `unreachable.invalid`.
    struct Fake {
        admit: Semaphore,
        connects: AtomicUsize,
        disconnects: Arc<AtomicUsize>,
    }

    #[derive(Clone)]
    struct FakeConnection {
        number: usize,
        open: Arc<AtomicBool>,
        disconnects: Arc<AtomicUsize>,
    }

    impl Fake {
        fn admitting(permits: usize) -> Self {
            Self {
                admit: Semaphore::new(permits),
                connects: AtomicUsize::new(0),
                disconnects: Arc::default(),
            }
        }
    }

    impl Connector for Fake {
        type Connection = FakeConnection;

        async fn connect(&self, options: ConnectOptions) -> Result<FakeConnection, BrokerError> {
            self.admit.acquire().await.expect("open").forget();
            let number = self.connects.fetch_add(1, Ordering::SeqCst) + 1;
            if options.host == "unreachable.invalid" {
                return Err(BrokerError::Unreachable("no such host".into()));
            }
            Ok(FakeConnection {
                number,
                open: Arc::new(AtomicBool::new(true)),
                disconnects: self.disconnects.clone(),
            })
        }

        fn is_open(connection: &FakeConnection) -> bool {
            connection.open.load(Ordering::SeqCst)
        }

        async fn disconnect(connection: FakeConnection) {
            connection.open.store(false, Ordering::SeqCst);
            connection.disconnects.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn options(host: &str) -> ConnectOptions {
        ConnectOptions {
            transport: crate::broker::Transport::Tcp,
            host: host.into(),
            port: 1883,
            path: String::new(),
            failover: Vec::new(),
            protocol: crate::broker::ProtocolVersion::V311,
            client_id: "orders-app".into(),
            username: None,
            password: None,
            clean_session: true,
            session_expiry: None,
            keep_alive: std::time::Duration::from_secs(30),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            connect_timeout: WAIT,
        }
    }

    /// A slot over a fake that admits `permits` connects, with no allow-list, a client-ID
    /// table of its own and no shutdown.
    fn fake_slot(permits: usize) -> ConnectionSlot<Fake> {
        ConnectionSlot::new(
            "orders".into(),
            Fake::admitting(permits),
            None,
            Arc::default(),
            CancellationToken::new(),
        )
    }

    fn connects(slot: &ConnectionSlot<Fake>) -> usize {
        slot.connector.connects.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn instances_that_open_at_once_share_one_connect() {
        let slot = fake_slot(0);
        let first = slot.open(options("broker.test"));
        let second = slot.open(options("broker.test"));
        let release = async {
            // Both are waiting (one inside the connect, one for it) before it may finish.
            tokio::task::yield_now().await;
            slot.connector.admit.add_permits(2);
        };
        let (first, second, ()) = tokio::join!(first, second, release);
        let (first, second) = (first.expect("opened"), second.expect("opened"));
        assert_eq!((first.number, second.number), (1, 1));
        assert_eq!(connects(&slot), 1);
        assert_eq!(slot.join().await.expect("joined").number, 1);
    }

    #[tokio::test]
    async fn a_join_before_any_open_and_after_close_finds_no_connection() {
        let slot = fake_slot(1);
        assert_eq!(slot.join().await.err(), Some(BrokerError::Closed));
        slot.open(options("broker.test")).await.expect("opened");
        slot.close().await;
        assert_eq!(slot.connector.disconnects.load(Ordering::SeqCst), 1);
        assert!(slot.current().await.is_none());
        assert_eq!(slot.join().await.err(), Some(BrokerError::Closed));
        // Closing again disconnects nothing more.
        slot.close().await;
        assert_eq!(slot.connector.disconnects.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_for_good_is_replaced_by_the_next_open() {
        let slot = fake_slot(2);
        let first = slot.open(options("broker.test")).await.expect("opened");
        first.open.store(false, Ordering::SeqCst);
        assert_eq!(slot.join().await.err(), Some(BrokerError::Closed));
        let second = slot.open(options("broker.test")).await.expect("opened");
        assert_eq!(second.number, 2);
        assert_eq!(slot.join().await.expect("joined").number, 2);
    }

    #[tokio::test]
    async fn a_failed_connect_leaves_no_connection_and_the_next_open_tries_again() {
        let slot = fake_slot(2);
        let failed = slot.open(options("unreachable.invalid")).await.err();
        assert!(
            failed.as_ref().is_some_and(BrokerError::is_retryable),
            "{failed:?}"
        );
        assert!(slot.current().await.is_none());
        slot.open(options("broker.test")).await.expect("opened");
        assert_eq!(connects(&slot), 2);
    }

    #[tokio::test]
    async fn a_broker_the_operator_does_not_allow_is_refused_before_any_connect() {
        let allowed: AllowedBroker = "mqtt.example.com".parse().expect("a pattern");
        let slot = ConnectionSlot::new(
            "orders".into(),
            Fake::admitting(1),
            Some(vec![allowed]),
            Arc::default(),
            CancellationToken::new(),
        );
        let refused = slot.open(options("broker.test")).await.err();
        assert!(
            matches!(
                &refused,
                Some(BrokerError::InvalidOption {
                    field: Field::Host,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(connects(&slot), 0);
        assert!(slot.current().await.is_none());
        slot.open(options("mqtt.example.com"))
            .await
            .expect("the allowed one");
    }

    #[tokio::test]
    async fn a_connect_under_way_gives_up_at_shutdown() {
        let shutdown = CancellationToken::new();
        let slot = ConnectionSlot::new(
            "orders".into(),
            Fake::admitting(0),
            None,
            Arc::default(),
            shutdown.clone(),
        );
        let opening = slot.open(options("broker.test"));
        shutdown.cancel();
        let outcome = tokio::time::timeout(WAIT, opening).await.expect("ended");
        assert_eq!(outcome.err(), Some(BrokerError::Closed));
        assert!(slot.current().await.is_none());
    }

    #[tokio::test]
    async fn the_client_id_is_held_from_open_until_close() {
        let client_ids = Arc::<ClientIds>::default();
        let slot = ConnectionSlot::new(
            "orders".into(),
            Fake::admitting(1),
            None,
            client_ids.clone(),
            CancellationToken::new(),
        );
        let holder = || client_ids.holder("broker.test", 1883, "orders-app");
        assert_eq!(holder(), None);
        slot.open(options("broker.test")).await.expect("opened");
        assert_eq!(holder().as_deref(), Some("orders"));
        slot.close().await;
        assert_eq!(holder(), None);
    }

    /// The real connector: the slot's connection is the broker's, and `close` sends
    /// DISCONNECT.
    #[tokio::test]
    async fn with_the_broker_settings_the_slot_connects_and_disconnects_for_real() {
        let broker = FakeBroker::start().await;
        let slot = ConnectionSlot::new(
            "orders".into(),
            BrokerSettings::default(),
            None,
            Arc::default(),
            CancellationToken::new(),
        );
        let opening = async { slot.open(broker.options()).await };
        let (opened, mut link) = tokio::join!(opening, broker.accept(false));
        let first = opened.expect("connected");
        let joined = slot.join().await.expect("joined");
        assert!(first.same(&joined));
        let closing = async { slot.close().await };
        let ((), packet) = tokio::join!(closing, async {
            tokio::time::timeout(WAIT, link.next())
                .await
                .expect("a packet")
        });
        assert!(matches!(packet, Packet::Disconnect), "{packet:?}");
        assert!(slot.current().await.is_none());
    }
}
