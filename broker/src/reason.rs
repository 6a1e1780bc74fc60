//! What the broker's reason codes mean to a caller (MQTT 5 section 2.4, and the CONNACK
//! return codes of MQTT 3.1.1): the code and its name as the standard writes them, and
//! whether trying again later can help.

use super::codec::ProtocolVersion;
use crate::error::{BrokerError, Rejection};
use crate::packet::Reason;

/// SUBACK's "shared subscriptions not supported" (MQTT 5 section 3.9.3).
pub(super) const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;

/// The name MQTT 5 gives a reason code (section 2.4), in lower case. One number has one
/// name in every packet, but for 0x00: "success", and in DISCONNECT "normal disconnection".
fn name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x01 => "granted QoS 1",
        0x02 => "granted QoS 2",
        0x04 => "disconnect with will message",
        0x10 => "no matching subscribers",
        0x11 => "no subscription existed",
        0x18 => "continue authentication",
        0x19 => "re-authenticate",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x92 => "packet identifier not found",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "a code the standard does not define",
    }
}

/// Refusals of a publish or a subscription that may pass later: the broker is out of ids or
/// of quota for now.
fn retryable(code: u8) -> bool {
    matches!(code, 0x91 | 0x97)
}

/// A CONNACK that refused the connection, as the error `connect` returns.
pub(super) fn connect_refused(
    version: ProtocolVersion,
    code: u8,
    reason_string: Option<&str>,
) -> BrokerError {
    let because = match reason_string {
        Some(text) => format!(" ({text})"),
        None => String::new(),
    };
    // MQTT 3.1.1's codes are a short list whose names say it all; MQTT 5's are many.
    let text = match version {
        ProtocolVersion::V311 => {
            let name = match code {
                0x01 => "unacceptable protocol version",
                0x02 => "client ID rejected",
                0x03 => "broker says service unavailable",
                0x04 => "bad user name or password",
                0x05 => "not authorized",
                _ => "a code MQTT 3.1.1 does not define",
            };
            format!("{name}{because}")
        }
        ProtocolVersion::V5 => format!("reason code {code:#04x}, {}{because}", name(code)),
    };
    match (version, code) {
        (ProtocolVersion::V311, 0x02 | 0x04 | 0x05)
        | (ProtocolVersion::V5, 0x85 | 0x86 | 0x87 | 0x8A | 0x8C) => {
            BrokerError::NotAuthorized(text)
        }
        (ProtocolVersion::V311, 0x03) | (ProtocolVersion::V5, 0x88 | 0x89 | 0x97 | 0x9F) => {
            BrokerError::Unreachable(text)
        }
        (ProtocolVersion::V311, 0x01) | (ProtocolVersion::V5, 0x84) => BrokerError::Other(format!(
            "{text}; the broker does not speak the MQTT version asked for (metadata field \"protocolVersion\")"
        )),
        _ => BrokerError::Other(text),
    }
}

/// A PUBACK's or PUBREC's reason: `None` when the broker took the message ("no matching
/// subscribers" included: it has the message, nobody wanted it).
pub(super) fn publish_refused(reason: Reason) -> Option<Rejection> {
    if reason.code < 0x80 {
        return None;
    }
    let mut rejection = Rejection::new(reason.code, name(reason.code), retryable(reason.code));
    rejection.add_reason_string(reason.text);
    Some(rejection)
}

/// A SUBACK's answer for its filters: `None` when every one was granted.
pub(super) fn subscribe_refused(codes: &[u8], text: Option<String>) -> Option<Rejection> {
    let code = *codes.iter().find(|code| **code >= 0x80)?;
    let mut rejection = Rejection::new(code, name(code), retryable(code));
    rejection.add_reason_string(text);
    Some(rejection)
}

/// A server DISCONNECT's reason, for the log.
pub(super) fn disconnect(reason: &Reason) -> String {
    let name = match reason.code {
        0x00 => "normal disconnection",
        code => name(code),
    };
    let why = match &reason.text {
        Some(text) => format!(": {text}"),
        None => String::new(),
    };
    format!("reason code {:#04x}, {name}{why}", reason.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(code: u8) -> Reason {
        Reason { code, text: None }
    }

    #[test]
    fn acknowledgements_that_keep_the_message_are_not_refusals() {
        assert_eq!(publish_refused(reason(0x00)), None);
        assert_eq!(publish_refused(reason(0x10)), None);
        assert_eq!(subscribe_refused(&[0, 1, 2], None), None);
    }

    #[test]
    fn refusals_name_their_code_and_whether_to_retry() {
        let quota = publish_refused(reason(0x97)).expect("a refusal");
        assert_eq!((quota.code, quota.retryable), (0x97, true));
        let denied = publish_refused(reason(0x87)).expect("a refusal");
        assert_eq!(
            denied.to_string(),
            "the broker refused it with reason code 0x87 (not authorized); trying again will fail the same way"
        );
        let shared =
            subscribe_refused(&[1, 0x9E], Some("no $share here".into())).expect("a refusal");
        assert_eq!((shared.code, shared.retryable), (0x9E, false));
        assert_eq!(
            shared.reason,
            "shared subscriptions not supported: no $share here"
        );
    }

    #[test]
    fn connack_codes_map_to_what_a_caller_can_do() {
        let denied = connect_refused(ProtocolVersion::V5, 0x86, None);
        assert_eq!(
            denied,
            BrokerError::NotAuthorized("reason code 0x86, bad user name or password".into())
        );
        let busy = connect_refused(ProtocolVersion::V5, 0x89, Some("try later"));
        assert_eq!(
            busy,
            BrokerError::Unreachable("reason code 0x89, server busy (try later)".into())
        );
        assert!(busy.is_retryable());
        let v311 = connect_refused(ProtocolVersion::V311, 0x05, None);
        assert_eq!(v311, BrokerError::NotAuthorized("not authorized".into()));
        let unavailable = connect_refused(ProtocolVersion::V311, 0x03, None);
        assert!(unavailable.is_retryable());
        let version = connect_refused(ProtocolVersion::V311, 0x01, None);
        assert!(version.to_string().contains("protocolVersion"), "{version}");
    }

    #[test]
    fn a_server_disconnect_reads_as_the_standard_names_it() {
        assert_eq!(
            disconnect(&Reason {
                code: 0x8E,
                text: Some("another client took the ID".into()),
            }),
            "reason code 0x8e, session taken over: another client took the ID"
        );
        assert_eq!(
            disconnect(&reason(0)),
            "reason code 0x00, normal disconnection"
        );
    }
}
