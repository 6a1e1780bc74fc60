//! One binding's broker connection, in one place: opened by the first instance that
//! connects (after the operator's allow-list, and with the binding's claim on its client
//! ID), joined by the binding's other instances, read for status and figures, and closed
//! once. One connection serves both directions: the client ID is used exactly, with no
//! per-direction suffix. The `connect` and `join` imports and `Binding` go through here;
//! nothing else holds the connection.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerSettings, ConnectOptions, Connection};
use crate::broker_policy::{self, AllowedBroker};
use crate::client_ids::{Claim, ClientIds};
use crate::error::{BrokerError, Field};

pub(crate) struct ConnectionSlot {
    /// The binding's name, for logs and the client-ID claim.
    binding: String,
    settings: BrokerSettings,
    /// Where the component may connect (`None`: anywhere).
    allowed_brokers: Option<Vec<AllowedBroker>>,
    /// The client IDs of every binding of the runtime, and this binding's hold on its own.
    client_ids: Arc<ClientIds>,
    claim: Mutex<Option<Claim>>,
    /// The binding's shutdown: a connect under way gives up.
    shutdown: CancellationToken,
    open: tokio::sync::Mutex<Option<Connection>>,
}

impl ConnectionSlot {
    pub fn new(
        binding: String,
        settings: BrokerSettings,
        allowed_brokers: Option<Vec<AllowedBroker>>,
        client_ids: Arc<ClientIds>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            binding,
            settings,
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
    pub async fn open(&self, options: ConnectOptions) -> Result<Connection, BrokerError> {
        // The operator's policy comes before anything touches the network.
        if let Err(reason) =
            broker_policy::check(self.allowed_brokers.as_deref(), &options.host, options.port)
        {
            tracing::error!(binding = %self.binding, "{reason}");
            return Err(BrokerError::invalid(Field::Host, reason));
        }
        let mut open = self.open.lock().await;
        if let Some(connection) = open.as_ref().filter(|open| open.is_open()) {
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
            connected = Connection::connect(options, &self.settings) => connected?,
            () = self.shutdown.cancelled() => return Err(BrokerError::Closed),
        };
        *open = Some(connection.clone());
        Ok(connection)
    }

    /// The open connection, for an instance that did not open it; `closed` if there is
    /// none (the first instance has not connected, or the binding is shutting down).
    pub async fn join(&self) -> Result<Connection, BrokerError> {
        let open = self.current().await.filter(Connection::is_open);
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
    pub async fn current(&self) -> Option<Connection> {
        self.open.lock().await.clone()
    }

    /// Disconnects cleanly (no UNSUBSCRIBE, so a persistent session survives); later
    /// calls find no connection.
    pub async fn close(&self) {
        let connection = self.open.lock().await.take();
        if let Some(connection) = connection {
            connection.disconnect().await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use rumqttc::Packet;

    use super::*;
    use crate::broker::fake::{FakeBroker, WAIT};

    fn slot(allowed: Option<Vec<AllowedBroker>>) -> ConnectionSlot {
        ConnectionSlot::new(
            "orders".into(),
            BrokerSettings::default(),
            allowed,
            Arc::default(),
            CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn the_first_open_connects_and_later_ones_and_joins_share_it_until_close() {
        let broker = FakeBroker::start().await;
        let slot = slot(None);
        assert_eq!(slot.join().await.err(), Some(BrokerError::Closed));
        let opening = async { slot.open(broker.options()).await };
        let (opened, mut link) = tokio::join!(opening, broker.accept(false));
        let first = opened.expect("connected");
        let again = slot.open(broker.options()).await.expect("the same one");
        let joined = slot.join().await.expect("joined");
        assert!(first.same(&again) && first.same(&joined));
        let closing = async { slot.close().await };
        let ((), packet) = tokio::join!(closing, async {
            tokio::time::timeout(WAIT, link.next())
                .await
                .expect("a packet")
        });
        assert!(matches!(packet, Packet::Disconnect), "{packet:?}");
        assert!(slot.current().await.is_none());
        assert_eq!(slot.join().await.err(), Some(BrokerError::Closed));
    }

    #[tokio::test]
    async fn a_broker_the_operator_does_not_allow_is_refused_before_any_connect() {
        let broker = FakeBroker::start().await;
        let allowed: AllowedBroker = "mqtt.example.com".parse().expect("a pattern");
        let slot = slot(Some(vec![allowed]));
        let refused = slot.open(broker.options()).await.err();
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
        assert!(slot.current().await.is_none());
    }

    #[tokio::test]
    async fn a_connect_gives_up_at_shutdown() {
        // A listener that never answers CONNECT.
        let broker = FakeBroker::start().await;
        let shutdown = CancellationToken::new();
        let slot = ConnectionSlot::new(
            "orders".into(),
            BrokerSettings::default(),
            None,
            Arc::default(),
            shutdown.clone(),
        );
        let opening = slot.open(broker.options());
        shutdown.cancel();
        let outcome = tokio::time::timeout(WAIT, opening).await.expect("ended");
        assert_eq!(outcome.err(), Some(BrokerError::Closed));
    }
}
