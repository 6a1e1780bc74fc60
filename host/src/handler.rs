//! The application side of the embedding API: what an input binding delivers ([`Event`])
//! and to whom ([`EventHandler`]).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::payload::Received;

/// One event for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The message payload: the bytes as they came off the socket, shared, not copied.
    pub data: Bytes,
    pub metadata: Metadata,
    /// Which delivery of this message this is: 1 for the first, 2 for the first retry.
    pub attempt: u32,
}

/// An event's metadata (docs/BEHAVIOUR.md, "Input binding"): `topic`, `retained`, `qos`,
/// `duplicate`, then at MQTT 5 the properties the message carries. Read from the received
/// message as it is iterated, borrowed wherever it can be, so that delivering an event makes
/// no strings: an application pays only for what it keeps.
#[derive(Clone)]
pub struct Metadata(Arc<Received>);

impl Metadata {
    pub(crate) fn of(received: Arc<Received>) -> Self {
        Self(received)
    }

    /// The pairs, in order; a name may repeat (a user property given twice).
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.0.message().event_metadata()
    }

    /// The first value under `name`.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.iter()
            .find(|(pair, _)| pair == name)
            .map(|(_, value)| value)
    }

    /// The pairs as owned strings, for a consumer that keeps them.
    pub fn owned(&self) -> impl Iterator<Item = (String, String)> {
        self.iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
    }

    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.owned().collect()
    }
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Metadata {}

/// What the application answered to an event it accepted: the data of its answer, if it
/// gave any. When the event was an MQTT 5 request (it has a `responseTopic`), the binding
/// publishes that data to the response topic before it acknowledges the request.
pub type Answer = Option<Vec<u8>>;

/// The future an [`EventHandler`] returns.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<Answer, String>> + Send + 'a>>;

/// The application that receives the input binding's events. `Ok` means accepted (the
/// message is then acknowledged to the broker), with the application's answer; `Err`
/// carries the reason it was not.
pub trait EventHandler: Send + Sync + 'static {
    fn deliver(&self, event: Event) -> Delivery<'_>;
}
