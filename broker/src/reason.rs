//! What the broker's reason codes mean to a caller (MQTT 5 section 2.4, and the CONNACK
//! return codes of MQTT 3.1.1): the code and its name as the standard writes them, and
//! whether trying again later can help. rumqttc decodes the codes into enums but keeps
//! their numbers to itself, so the table is here.

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, PubAckReason, PubRecReason, SubscribeReasonCode,
};

use super::codec::ProtocolVersion;
use crate::error::{BrokerError, Rejection};

/// A CONNACK that refused the connection, as the error `connect` returns.
pub(super) fn connect_refused(
    version: ProtocolVersion,
    code: ConnectReturnCode,
    reason_string: Option<&str>,
) -> BrokerError {
    use ConnectReturnCode as C;
    let (number, name) = match code {
        C::Success => (0x00, "success"),
        // MQTT 3.1.1's return codes, 1 to 5.
        C::RefusedProtocolVersion => (0x01, "unacceptable protocol version"),
        C::BadClientId => (0x02, "client ID rejected"),
        C::ServiceUnavailable => (0x03, "broker says service unavailable"),
        C::UnspecifiedError => (0x80, "unspecified error"),
        C::MalformedPacket => (0x81, "malformed packet"),
        C::ProtocolError => (0x82, "protocol error"),
        C::ImplementationSpecificError => (0x83, "implementation specific error"),
        C::UnsupportedProtocolVersion => (0x84, "unsupported protocol version"),
        C::ClientIdentifierNotValid => (0x85, "client identifier not valid"),
        C::BadUserNamePassword => (0x86, "bad user name or password"),
        C::NotAuthorized => (0x87, "not authorized"),
        C::ServerUnavailable => (0x88, "server unavailable"),
        C::ServerBusy => (0x89, "server busy"),
        C::Banned => (0x8A, "banned"),
        C::BadAuthenticationMethod => (0x8C, "bad authentication method"),
        C::TopicNameInvalid => (0x90, "topic name invalid"),
        C::PacketTooLarge => (0x95, "packet too large"),
        C::QuotaExceeded => (0x97, "quota exceeded"),
        C::PayloadFormatInvalid => (0x99, "payload format invalid"),
        C::RetainNotSupported => (0x9A, "retain not supported"),
        C::QoSNotSupported => (0x9B, "QoS not supported"),
        C::UseAnotherServer => (0x9C, "use another server"),
        C::ServerMoved => (0x9D, "server moved"),
        C::ConnectionRateExceeded => (0x9F, "connection rate exceeded"),
    };
    let because = match reason_string {
        Some(text) => format!(" ({text})"),
        None => String::new(),
    };
    // MQTT 3.1.1's codes are a short list whose names say it all; MQTT 5's are many.
    let text = match version {
        ProtocolVersion::V311 => format!("{name}{because}"),
        ProtocolVersion::V5 => format!("reason code {number:#04x}, {name}{because}"),
    };
    match code {
        C::BadClientId
        | C::ClientIdentifierNotValid
        | C::BadUserNamePassword
        | C::NotAuthorized
        | C::Banned
        | C::BadAuthenticationMethod => BrokerError::NotAuthorized(text),
        C::ServiceUnavailable
        | C::ServerUnavailable
        | C::ServerBusy
        | C::ConnectionRateExceeded
        | C::QuotaExceeded => BrokerError::Unreachable(text),
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => BrokerError::Other(format!(
            "{text}; the broker does not speak the MQTT version asked for (metadata field \"protocolVersion\")"
        )),
        _ => BrokerError::Other(text),
    }
}

/// A PUBACK's reason: `None` when the broker took the message ("no matching subscribers"
/// included: it has the message, nobody wanted it).
pub(super) fn puback(reason: PubAckReason) -> Option<Rejection> {
    use PubAckReason as R;
    let (code, name, retryable) = match reason {
        R::Success | R::NoMatchingSubscribers => return None,
        R::UnspecifiedError => (0x80, "unspecified error", false),
        R::ImplementationSpecificError => (0x83, "implementation specific error", false),
        R::NotAuthorized => (0x87, "not authorized", false),
        R::TopicNameInvalid => (0x90, "topic name invalid", false),
        R::PacketIdentifierInUse => (0x91, "packet identifier in use", true),
        R::QuotaExceeded => (0x97, "quota exceeded", true),
        R::PayloadFormatInvalid => (0x99, "payload format invalid", false),
    };
    Some(Rejection::new(code, name, retryable))
}

/// A PUBREC's reason, as for [`puback`]: the same codes, in a type of their own.
pub(super) fn pubrec(reason: PubRecReason) -> Option<Rejection> {
    use PubRecReason as R;
    puback(match reason {
        R::Success => PubAckReason::Success,
        R::NoMatchingSubscribers => PubAckReason::NoMatchingSubscribers,
        R::UnspecifiedError => PubAckReason::UnspecifiedError,
        R::ImplementationSpecificError => PubAckReason::ImplementationSpecificError,
        R::NotAuthorized => PubAckReason::NotAuthorized,
        R::TopicNameInvalid => PubAckReason::TopicNameInvalid,
        R::PacketIdentifierInUse => PubAckReason::PacketIdentifierInUse,
        R::QuotaExceeded => PubAckReason::QuotaExceeded,
        R::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
    })
}

/// A SUBACK's code for one filter: `None` when the subscription was granted.
pub(super) fn suback(code: SubscribeReasonCode) -> Option<Rejection> {
    use SubscribeReasonCode as S;
    let (code, name, retryable) = match code {
        S::Success(_) => return None,
        S::Failure | S::Unspecified => (0x80, "unspecified error", false),
        S::ImplementationSpecific => (0x83, "implementation specific error", false),
        S::NotAuthorized => (0x87, "not authorized", false),
        S::TopicFilterInvalid => (0x8F, "topic filter invalid", false),
        S::PkidInUse => (0x91, "packet identifier in use", true),
        S::QuotaExceeded => (0x97, "quota exceeded", true),
        S::SharedSubscriptionsNotSupported => (0x9E, "shared subscriptions not supported", false),
        S::SubscriptionIdNotSupported => (0xA1, "subscription identifiers not supported", false),
        S::WildcardSubscriptionsNotSupported => {
            (0xA2, "wildcard subscriptions not supported", false)
        }
    };
    Some(Rejection::new(code, name, retryable))
}

/// A server DISCONNECT's reason, for the log.
pub(super) fn disconnect(code: DisconnectReasonCode) -> String {
    format!("reason code {:#04x}, {code:?}", code as u8)
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::QoS;

    use super::*;

    #[test]
    fn acknowledgements_that_keep_the_message_are_not_refusals() {
        assert_eq!(puback(PubAckReason::Success), None);
        assert_eq!(puback(PubAckReason::NoMatchingSubscribers), None);
        assert_eq!(pubrec(PubRecReason::NoMatchingSubscribers), None);
        assert_eq!(suback(SubscribeReasonCode::Success(QoS::AtLeastOnce)), None);
    }

    #[test]
    fn refusals_name_their_code_and_whether_to_retry() {
        let quota = puback(PubAckReason::QuotaExceeded).expect("a refusal");
        assert_eq!((quota.code, quota.retryable), (0x97, true));
        let denied = pubrec(PubRecReason::NotAuthorized).expect("a refusal");
        assert_eq!(
            denied.to_string(),
            "the broker refused it with reason code 0x87 (not authorized); trying again will fail the same way"
        );
        let shared =
            suback(SubscribeReasonCode::SharedSubscriptionsNotSupported).expect("a refusal");
        assert_eq!((shared.code, shared.retryable), (0x9E, false));
    }

    #[test]
    fn connack_codes_map_to_what_a_caller_can_do() {
        let denied = connect_refused(
            ProtocolVersion::V5,
            ConnectReturnCode::BadUserNamePassword,
            None,
        );
        assert_eq!(
            denied,
            BrokerError::NotAuthorized("reason code 0x86, bad user name or password".into())
        );
        let busy = connect_refused(
            ProtocolVersion::V5,
            ConnectReturnCode::ServerBusy,
            Some("try later"),
        );
        assert_eq!(
            busy,
            BrokerError::Unreachable("reason code 0x89, server busy (try later)".into())
        );
        assert!(busy.is_retryable());
        let v311 = connect_refused(
            ProtocolVersion::V311,
            ConnectReturnCode::NotAuthorized,
            None,
        );
        assert_eq!(v311, BrokerError::NotAuthorized("not authorized".into()));
    }
}
