//! The application side of the embedding API: what an input binding delivers ([`Event`])
//! and to whom ([`EventHandler`]).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// One event for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The message payload: the bytes as they came off the socket, shared, not copied.
    pub data: Bytes,
    pub metadata: Vec<(String, String)>,
    /// Which delivery of this message this is: 1 for the first, 2 for the first retry.
    pub attempt: u32,
}

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
