//! What the `Connection` handles and the connection task share: the inbox, the connection
//! state flags and status, and the signals readers wait on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::inbox::Inbox;
use crate::error::BrokerError;

/// The state of a connection, for health and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub connected: bool,
    /// When the connection last came up, or was last lost.
    pub since: SystemTime,
    /// Why the last connection was lost, or the last reconnect failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub inbox: Mutex<Inbox>,
    /// Woken when the inbox gets a message or the connection closes.
    pub arrived: tokio::sync::Notify,
    pub connected: AtomicBool,
    pub closing: AtomicBool,
    pub status: Mutex<LinkStatus>,
    /// Becomes `true` when the connection task has ended, however it ended.
    pub done: tokio::sync::watch::Sender<bool>,
    /// Counts the subscriptions the broker has accepted (SUBACKs), renewals included.
    pub subscribed: tokio::sync::watch::Sender<u64>,
    pub max_payload: usize,
    /// The largest packet the broker accepts (its MQTT 5 maximum packet size, else ours).
    pub broker_max_packet: std::sync::atomic::AtomicUsize,
    /// The broker said in its CONNACK that it has no shared subscriptions (MQTT 5).
    pub shares_unavailable: AtomicBool,
    pub label: String,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // None of these holds an invariant a panic elsewhere could break halfway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(super) fn inbox(&self) -> MutexGuard<'_, Inbox> {
        lock(&self.inbox)
    }

    /// Refuses work when closing, and while reconnecting: a request queued then would wait
    /// for a connection its caller knows nothing of.
    pub(super) fn usable(&self) -> Result<(), BrokerError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        if !self.connected.load(Ordering::Acquire) {
            return Err(BrokerError::Unreachable(format!(
                "not connected to {}, reconnecting; the message was not sent",
                self.label
            )));
        }
        Ok(())
    }

    pub(super) fn set_connected(&self) {
        self.connected.store(true, Ordering::Release);
        let mut status = lock(&self.status);
        status.connected = true;
        status.since = SystemTime::now();
    }

    pub(super) fn set_lost(&self, error: &BrokerError) {
        self.connected.store(false, Ordering::Release);
        let mut status = lock(&self.status);
        if status.connected {
            status.since = SystemTime::now();
        }
        status.connected = false;
        status.last_error = Some(error.to_string());
    }
}
