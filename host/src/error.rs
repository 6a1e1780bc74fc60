//! The errors of the embedding API: what a binding call can fail with (and, from the broker
//! crate, what a broker operation can). They mirror the WIT `error` variants; the
//! conversions to and from the generated types live in `imports` and `binding`, once each.

pub use mqtt_binding_broker::{BrokerError, Rejection};

/// An error and its causes on one line, each said once (`a: b: c`).
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why a call into a binding failed.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// A metadata field is missing or invalid; the text names it.
    #[error("{0}")]
    InvalidMetadata(String),
    /// The request is unusable (operation, per-request metadata).
    #[error("{0}")]
    InvalidRequest(String),
    /// The broker operation failed after the component's retries.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the binding was called before init succeeded")]
    NotInitialized,
    /// The component trapped or could not be run; the binding is unusable.
    #[error("the binding's component failed")]
    Component(#[source] anyhow::Error),
}

impl BindingError {
    /// Whether the call may succeed if made again later: a broker error that is retryable
    /// ([`BrokerError::is_retryable`]). Bad metadata, TLS or credentials will not change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BindingError::Broker(error) if error.is_retryable())
    }
}
