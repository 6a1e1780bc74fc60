//! The application side of the embedding API: what an input binding delivers ([`Event`])
//! and to whom ([`EventHandler`]).

use std::future::Future;
use std::pin::Pin;

/// One event for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub data: Vec<u8>,
    pub metadata: Vec<(String, String)>,
}

/// The future an [`EventHandler`] returns.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The application that receives the input binding's events. `Ok` means accepted (the
/// message is then acknowledged to the broker); `Err` carries the reason it was not.
pub trait EventHandler: Send + Sync + 'static {
    fn deliver(&self, event: Event) -> Delivery<'_>;
}
