//! The errors of the embedding API: what a binding call can fail with (and, from the broker
//! crate, what a broker operation can). They mirror the WIT `error` variants; the
//! conversions to and from the generated types live in `imports` and `binding`, once each.

pub use mqtt_binding_broker::{BrokerError, Field, Rejection};

/// An error and its causes on one line, each said once (`a: b: c`).
#[cfg(any(feature = "sidecar", feature = "pluggable"))]
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
    /// What this failure comes to for a caller: the one classification of failures. Each
    /// face turns kinds into its own codes with one table (`pluggable::instances`'s
    /// statuses, say); whether to try again is [`Kind::is_retryable`].
    pub fn kind(&self) -> Kind {
        match self {
            BindingError::InvalidMetadata(_) | BindingError::InvalidRequest(_) => Kind::Invalid,
            BindingError::Broker(error) => broker_kind(error),
            // A call before init is the host's mistake, not the caller's.
            BindingError::NotInitialized | BindingError::Component(_) => Kind::Internal,
        }
    }

    /// Whether the call may succeed if made again later, unchanged.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// What a failure comes to for a caller, whatever the face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The metadata, the request or a connect option is unusable: it fails the same way
    /// until it changes.
    Invalid,
    /// The broker refused the credentials, or the request as not authorized.
    NotAuthorized,
    /// Not sent, and never will be (the broker unreachable, the time out before the
    /// write): trying again may succeed and makes no second copy.
    Unavailable,
    /// Sent, and not confirmed: the broker may have it.
    Unconfirmed,
    /// Larger than the host's or the broker's limit.
    TooLarge,
    /// The broker refused it with a reason code; `retryable` when it may pass later
    /// (quota exceeded).
    Rejected { retryable: bool },
    /// The binding is shutting down.
    Stopped,
    /// TLS, a failed component, or anything else the caller cannot mend.
    Internal,
}

impl Kind {
    pub fn is_retryable(self) -> bool {
        matches!(self, Kind::Unavailable | Kind::Rejected { retryable: true })
    }
}

/// The kind of a broker failure: its WIT case, and for a refusal its reason code.
fn broker_kind(error: &BrokerError) -> Kind {
    match error {
        BrokerError::InvalidOption { .. } => Kind::Invalid,
        BrokerError::NotAuthorized(_) => Kind::NotAuthorized,
        BrokerError::Unreachable(_) | BrokerError::Timeout(_) => Kind::Unavailable,
        BrokerError::Unconfirmed(_) => Kind::Unconfirmed,
        BrokerError::TooLarge(_) => Kind::TooLarge,
        BrokerError::Rejected(rejection) if rejection.is_not_authorized() => Kind::NotAuthorized,
        BrokerError::Rejected(rejection) => Kind::Rejected {
            retryable: rejection.retryable,
        },
        BrokerError::Closed => Kind::Stopped,
        BrokerError::Tls(_) | BrokerError::Other(_) => Kind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: u8, retryable: bool) -> BindingError {
        BindingError::Broker(BrokerError::Rejected(Rejection {
            code,
            reason: "r".into(),
            retryable,
        }))
    }

    #[test]
    fn only_what_was_not_sent_or_may_pass_later_is_retryable() {
        let retryable = [
            BindingError::Broker(BrokerError::Unreachable("down".into())),
            BindingError::Broker(BrokerError::Timeout("window full".into())),
            rejected(0x97, true),
        ];
        for error in &retryable {
            assert!(error.is_retryable(), "{error:?}");
        }
        let terminal = [
            BindingError::InvalidMetadata("qos".into()),
            BindingError::Broker(BrokerError::Unconfirmed("no PUBACK".into())),
            BindingError::Broker(BrokerError::Closed),
            BindingError::Broker(BrokerError::Tls("untrusted".into())),
            rejected(0x80, false),
            BindingError::NotInitialized,
        ];
        for error in &terminal {
            assert!(!error.is_retryable(), "{error:?}");
        }
    }

    #[test]
    fn a_refusal_as_not_authorized_is_not_authorized_whatever_the_packet() {
        assert_eq!(rejected(0x87, false).kind(), Kind::NotAuthorized);
        assert_eq!(
            BindingError::Broker(BrokerError::NotAuthorized("bad password".into())).kind(),
            Kind::NotAuthorized
        );
        assert_eq!(
            rejected(0x97, true).kind(),
            Kind::Rejected { retryable: true }
        );
    }
}
