//! What a broker operation can fail with. The cases mirror the WIT `broker.error` variant;
//! the conversions to and from the generated types are left to whoever implements the WIT
//! (the native host, the broker plug).

/// A connect option that `broker::error.invalid-option` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    CaCert,
    ClientCert,
    ClientKey,
    ClientId,
    Host,
    Path,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wit_name())
    }
}

impl Field {
    /// The field's name in the WIT `connect-options` record.
    pub fn wit_name(self) -> &'static str {
        match self {
            Field::CaCert => "ca-cert",
            Field::ClientCert => "client-cert",
            Field::ClientKey => "client-key",
            Field::ClientId => "client-id",
            Field::Host => "host",
            Field::Path => "path",
        }
    }
}

/// Why a broker operation failed. `Unreachable` and `Timeout` may succeed if retried; a
/// publish that failed with either was not sent. `Unconfirmed` means a publish was sent and
/// its acknowledgement did not come: the broker may have it, so it is not retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("connect option {field}: {reason}")]
    InvalidOption { field: Field, reason: String },
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("tls handshake with the broker failed: {0}")]
    Tls(String),
    #[error("broker refused the connection: {0}")]
    NotAuthorized(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the broker may have the message, but did not confirm it: {0}")]
    Unconfirmed(String),
    #[error("too large: {0}")]
    TooLarge(String),
    /// MQTT 5: the broker answered with a reason code that refuses the request.
    #[error("{0}")]
    Rejected(Rejection),
    #[error("the connection is closed because the binding is shutting down")]
    Closed,
    #[error("{0}")]
    Other(String),
}

impl BrokerError {
    /// The WIT's rule (`broker.error`): `unreachable` and `timeout` may succeed if retried
    /// later, and a publish that failed with either was not sent. Everything else fails the
    /// same way until something changes, or (`unconfirmed`) must not be repeated blindly,
    /// or (`closed`) means stop.
    pub fn is_retryable(&self) -> bool {
        match self {
            BrokerError::Unreachable(_) | BrokerError::Timeout(_) => true,
            BrokerError::Rejected(rejection) => rejection.retryable,
            _ => false,
        }
    }

    pub fn invalid(field: Field, reason: impl Into<String>) -> Self {
        BrokerError::InvalidOption {
            field,
            reason: reason.into(),
        }
    }
}

/// An MQTT 5 reason code with which the broker refused a publish or a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason code, 0x80 or above.
    pub code: u8,
    /// The code's name as the MQTT 5 standard gives it, and the broker's reason string.
    pub reason: String,
    /// Whether the same request may succeed later (quota exceeded, say); otherwise it fails
    /// the same way until the request or the broker's configuration changes.
    pub retryable: bool,
}

impl Rejection {
    pub fn new(code: u8, name: &str, retryable: bool) -> Self {
        Self {
            code,
            reason: name.to_string(),
            retryable,
        }
    }

    /// Refused as not authorized (MQTT 5 reason code 0x87, the one a PUBACK, PUBREC or
    /// SUBACK uses for it).
    pub fn is_not_authorized(&self) -> bool {
        self.code == 0x87
    }

    /// Adds the broker's reason string (MQTT 5), if it sent one, to the code's name.
    pub fn add_reason_string(&mut self, reason_string: Option<String>) {
        if let Some(text) = reason_string.filter(|text| !text.is_empty()) {
            self.reason = format!("{}: {text}", self.reason);
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let advice = if self.retryable {
            "trying again later may succeed"
        } else {
            "trying again will fail the same way"
        };
        write!(
            f,
            "the broker refused it with reason code {:#04x} ({}); {advice}",
            self.code, self.reason
        )
    }
}
