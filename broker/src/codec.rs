//! MQTT on the wire, in the version the connection speaks: the client's own packets
//! (`packet`) written and read through rumqttc's MQTT 5 or MQTT 3.1.1 codec. This is the one
//! module that names rumqttc; its types stop here. At MQTT 3.1.1 properties are left out
//! going out and reason codes come in as MQTT 3.1.1 has them (success, or a CONNACK return
//! code, or SUBACK's 0x80). rumqttc decodes reason codes into enums and keeps their numbers
//! to itself, so the numbers are put back here (`reason` says what each one means).

use bytes::BytesMut;
use rumqttc::mqttbytes::{self as mqttbytes4, v4};
use rumqttc::v5::mqttbytes::v5::{
    self, ConnectReturnCode, DisconnectReasonCode, PubAckReason, PubRecReason, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::{self as mqttbytes5, QoS as QoS5};

use crate::error::BrokerError;
use crate::packet::{Ack, ConnAck, Incoming, Outgoing, Publish, Reason, SubAck};
use crate::{MessageProperties, QoS};

/// The MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, what Dapr's binding speaks.
    #[default]
    V311,
    /// MQTT 5.0.
    V5,
}

/// Encodes a packet into `buffer`; `TooLarge` if it is over `max_packet` bytes.
pub(crate) fn write(
    version: ProtocolVersion,
    packet: &Outgoing,
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<(), BrokerError> {
    let too_large = |e: &dyn std::fmt::Display| BrokerError::TooLarge(e.to_string());
    match version {
        ProtocolVersion::V5 => to_v5(packet)
            .write(buffer, Some(u32::try_from(max_packet).unwrap_or(u32::MAX)))
            .map(drop)
            .map_err(|e| too_large(&e)),
        ProtocolVersion::V311 => to_v4(packet)?
            .write(buffer, max_packet)
            .map(drop)
            .map_err(|e| too_large(&e)),
    }
}

/// Takes one packet from the front of `buffer`; `None` while it holds only part of one.
pub(crate) fn read(
    version: ProtocolVersion,
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<Incoming>, BrokerError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        BrokerError::Other(format!("unreadable packet from the broker: {e}"))
    };
    match version {
        ProtocolVersion::V5 => {
            match v5::Packet::read(buffer, Some(u32::try_from(max_packet).unwrap_or(u32::MAX))) {
                Ok(packet) => from_v5(packet).map(Some),
                Err(mqttbytes5::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(unreadable(&e)),
            }
        }
        ProtocolVersion::V311 => match v4::Packet::read(buffer, max_packet) {
            Ok(packet) => from_v4(packet).map(Some),
            Err(mqttbytes4::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(unreadable(&e)),
        },
    }
}

/// The size of a PUBLISH on the wire at MQTT 5, with its packet id (an upper bound at
/// MQTT 3.1.1, which has no properties).
pub(crate) fn publish_size(publish: &Publish) -> usize {
    let mut wire = publish_to_v5(publish);
    if wire.qos != QoS5::AtMostOnce {
        wire.pkid = wire.pkid.max(1);
    }
    wire.size()
}

fn qos_to_v5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn qos_from_v5(qos: QoS5) -> QoS {
    match qos {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(qos: QoS) -> mqttbytes4::QoS {
    match qos {
        QoS::AtMostOnce => mqttbytes4::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes4::QoS::ExactlyOnce,
    }
}

fn qos_from_v4(qos: mqttbytes4::QoS) -> QoS {
    match qos {
        mqttbytes4::QoS::AtMostOnce => QoS::AtMostOnce,
        mqttbytes4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mqttbytes4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The number a QoS has on the wire: SUBACK grants it as its code.
fn qos_code(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// The MQTT 5 form of a packet this client sends.
fn to_v5(packet: &Outgoing) -> v5::Packet {
    match packet {
        Outgoing::Connect(connect) => v5::Packet::Connect(
            v5::Connect {
                keep_alive: connect.keep_alive,
                client_id: connect.client_id.clone(),
                clean_start: connect.clean_start,
                properties: Some(v5::ConnectProperties {
                    session_expiry_interval: connect.session_expiry,
                    max_packet_size: connect.max_packet_size,
                    ..v5::ConnectProperties::new()
                }),
            },
            None,
            connect
                .login
                .as_ref()
                .map(|login| v5::Login::new(login.username.clone(), login.password.clone())),
        ),
        Outgoing::Publish(publish) => v5::Packet::Publish(publish_to_v5(publish)),
        Outgoing::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(*pkid, None)),
        Outgoing::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(*pkid, None)),
        Outgoing::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(*pkid, None)),
        Outgoing::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(*pkid, None)),
        Outgoing::Subscribe(subscribe) => {
            let mut wire = v5::Subscribe::new(
                v5::Filter::new(subscribe.filter.clone(), qos_to_v5(subscribe.qos)),
                None,
            );
            wire.pkid = subscribe.pkid;
            v5::Packet::Subscribe(wire)
        }
        Outgoing::PingReq => v5::Packet::PingReq(v5::PingReq),
        Outgoing::Disconnect => v5::Packet::Disconnect(v5::Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )),
    }
}

fn publish_to_v5(publish: &Publish) -> v5::Publish {
    let properties = &publish.properties;
    v5::Publish {
        dup: publish.dup,
        qos: qos_to_v5(publish.qos),
        retain: publish.retain,
        topic: publish.topic.clone(),
        pkid: publish.pkid,
        payload: publish.payload.clone(),
        properties: (*properties != MessageProperties::default()).then(|| v5::PublishProperties {
            payload_format_indicator: properties.utf8_payload.then_some(1),
            message_expiry_interval: properties.expiry,
            topic_alias: None,
            response_topic: properties.response_topic.clone(),
            correlation_data: properties.correlation_data.clone(),
            user_properties: properties.user_properties.clone(),
            subscription_identifiers: Vec::new(),
            content_type: properties.content_type.clone(),
        }),
    }
}

/// An MQTT 5 packet from the broker in the client's terms.
fn from_v5(packet: v5::Packet) -> Result<Incoming, BrokerError> {
    Ok(match packet {
        v5::Packet::ConnAck(connack) => {
            let properties = connack.properties;
            let property =
                |f: fn(&v5::ConnAckProperties) -> Option<u32>| properties.as_ref().and_then(f);
            Incoming::ConnAck(ConnAck {
                session_present: connack.session_present,
                code: connect_code(connack.code),
                receive_maximum: properties.as_ref().and_then(|p| p.receive_max),
                max_packet_size: property(|p| p.max_packet_size),
                session_expiry: property(|p| p.session_expiry_interval),
                shared_subscription_available: properties
                    .as_ref()
                    .and_then(|p| p.shared_subscription_available)
                    .map(|available| available != 0),
                reason_string: properties.and_then(|p| p.reason_string),
            })
        }
        v5::Packet::Publish(publish) => {
            let properties = publish.properties.unwrap_or_default();
            Incoming::Publish(Publish {
                dup: publish.dup,
                qos: qos_from_v5(publish.qos),
                retain: publish.retain,
                topic: publish.topic,
                pkid: publish.pkid,
                payload: publish.payload,
                properties: MessageProperties {
                    expiry: properties.message_expiry_interval,
                    content_type: properties.content_type,
                    response_topic: properties.response_topic,
                    correlation_data: properties.correlation_data,
                    user_properties: properties.user_properties,
                    utf8_payload: properties.payload_format_indicator == Some(1),
                },
            })
        }
        v5::Packet::PubAck(ack) => Incoming::PubAck(Ack {
            pkid: ack.pkid,
            reason: Reason {
                code: puback_code(ack.reason),
                text: ack.properties.and_then(|p| p.reason_string),
            },
        }),
        v5::Packet::PubRec(rec) => Incoming::PubRec(Ack {
            pkid: rec.pkid,
            reason: Reason {
                code: pubrec_code(rec.reason),
                text: rec.properties.and_then(|p| p.reason_string),
            },
        }),
        v5::Packet::PubRel(rel) => Incoming::PubRel(rel.pkid),
        v5::Packet::PubComp(comp) => Incoming::PubComp(comp.pkid),
        v5::Packet::SubAck(suback) => Incoming::SubAck(SubAck {
            pkid: suback.pkid,
            codes: suback
                .return_codes
                .into_iter()
                .map(subscribe_code)
                .collect(),
            text: suback.properties.and_then(|p| p.reason_string),
        }),
        v5::Packet::PingResp(_) => Incoming::PingResp,
        v5::Packet::Disconnect(disconnect) => Incoming::Disconnect(Reason {
            code: disconnect.reason_code as u8,
            text: disconnect.properties.and_then(|p| p.reason_string),
        }),
        other => return Err(never_received(&other)),
    })
}

/// The MQTT 3.1.1 form of a packet this client sends.
fn to_v4(packet: &Outgoing) -> Result<v4::Packet, BrokerError> {
    Ok(match packet {
        Outgoing::Connect(connect) => {
            let mut wire = v4::Connect::new(connect.client_id.clone());
            wire.keep_alive = connect.keep_alive;
            wire.clean_session = connect.clean_start;
            wire.login = connect
                .login
                .as_ref()
                .map(|login| v4::Login::new(login.username.clone(), login.password.clone()));
            v4::Packet::Connect(wire)
        }
        Outgoing::Publish(publish) => v4::Packet::Publish(v4::Publish {
            dup: publish.dup,
            qos: qos_to_v4(publish.qos),
            retain: publish.retain,
            topic: std::str::from_utf8(&publish.topic)
                .map_err(|_| BrokerError::Other("the topic is not UTF-8".into()))?
                .to_owned(),
            pkid: publish.pkid,
            payload: publish.payload.clone(),
        }),
        Outgoing::PubAck(pkid) => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Outgoing::PubRec(pkid) => v4::Packet::PubRec(v4::PubRec::new(*pkid)),
        Outgoing::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(*pkid)),
        Outgoing::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(*pkid)),
        Outgoing::Subscribe(subscribe) => {
            let mut wire = v4::Subscribe::new(subscribe.filter.clone(), qos_to_v4(subscribe.qos));
            wire.pkid = subscribe.pkid;
            v4::Packet::Subscribe(wire)
        }
        Outgoing::PingReq => v4::Packet::PingReq,
        Outgoing::Disconnect => v4::Packet::Disconnect,
    })
}

/// An MQTT 3.1.1 packet from the broker in the client's terms.
fn from_v4(packet: v4::Packet) -> Result<Incoming, BrokerError> {
    Ok(match packet {
        v4::Packet::ConnAck(connack) => Incoming::ConnAck(ConnAck {
            session_present: connack.session_present,
            code: match connack.code {
                v4::ConnectReturnCode::Success => 0,
                v4::ConnectReturnCode::RefusedProtocolVersion => 1,
                v4::ConnectReturnCode::BadClientId => 2,
                v4::ConnectReturnCode::ServiceUnavailable => 3,
                v4::ConnectReturnCode::BadUserNamePassword => 4,
                v4::ConnectReturnCode::NotAuthorized => 5,
            },
            receive_maximum: None,
            max_packet_size: None,
            session_expiry: None,
            reason_string: None,
            shared_subscription_available: None,
        }),
        v4::Packet::Publish(publish) => Incoming::Publish(Publish {
            dup: publish.dup,
            qos: qos_from_v4(publish.qos),
            retain: publish.retain,
            topic: publish.topic.into_bytes().into(),
            pkid: publish.pkid,
            payload: publish.payload,
            properties: MessageProperties::default(),
        }),
        v4::Packet::PubAck(ack) => Incoming::PubAck(Ack {
            pkid: ack.pkid,
            reason: Reason::default(),
        }),
        v4::Packet::PubRec(rec) => Incoming::PubRec(Ack {
            pkid: rec.pkid,
            reason: Reason::default(),
        }),
        v4::Packet::PubRel(rel) => Incoming::PubRel(rel.pkid),
        v4::Packet::PubComp(comp) => Incoming::PubComp(comp.pkid),
        v4::Packet::SubAck(suback) => Incoming::SubAck(SubAck {
            pkid: suback.pkid,
            codes: suback
                .return_codes
                .into_iter()
                .map(|code| match code {
                    v4::SubscribeReasonCode::Success(qos) => qos_code(qos_from_v4(qos)),
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
            text: None,
        }),
        v4::Packet::PingResp => Incoming::PingResp,
        other => return Err(never_received(&other)),
    })
}

fn never_received(packet: &dyn std::fmt::Debug) -> BrokerError {
    BrokerError::Other(format!(
        "the broker sent a packet a client never receives: {packet:?}"
    ))
}

/// CONNACK's code as MQTT 5 numbers it (section 3.2.2.2).
fn connect_code(code: ConnectReturnCode) -> u8 {
    use ConnectReturnCode as C;
    match code {
        C::Success => 0x00,
        // MQTT 3.1.1's, which rumqttc's MQTT 5 decoder never returns.
        C::RefusedProtocolVersion => 0x01,
        C::BadClientId => 0x02,
        C::ServiceUnavailable => 0x03,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

/// PUBACK's code (MQTT 5 section 3.4.2.1).
fn puback_code(reason: PubAckReason) -> u8 {
    use PubAckReason as R;
    match reason {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// PUBREC's code (MQTT 5 section 3.5.2.1): PUBACK's codes, in a type of their own.
fn pubrec_code(reason: PubRecReason) -> u8 {
    use PubRecReason as R;
    puback_code(match reason {
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

/// SUBACK's code for one filter (MQTT 5 section 3.9.3).
fn subscribe_code(code: SubscribeReasonCode) -> u8 {
    use SubscribeReasonCode as S;
    match code {
        S::Success(qos) => qos_code(qos_from_v5(qos)),
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::packet::{Connect, Login, Subscribe};

    /// Reads what a broker wrote with rumqttc's MQTT 5 codec.
    fn read_v5(packet: &v5::Packet) -> Incoming {
        let mut buffer = BytesMut::new();
        packet.write(&mut buffer, None).expect("encodes");
        read(ProtocolVersion::V5, &mut buffer, 1 << 20)
            .expect("decodes")
            .expect("a whole packet")
    }

    fn read_v4(packet: &v4::Packet) -> Incoming {
        let mut buffer = BytesMut::new();
        packet.write(&mut buffer, 1 << 20).expect("encodes");
        read(ProtocolVersion::V311, &mut buffer, 1 << 20)
            .expect("decodes")
            .expect("a whole packet")
    }

    /// The bytes of a packet this client writes.
    fn written(version: ProtocolVersion, packet: &Outgoing) -> BytesMut {
        let mut buffer = BytesMut::new();
        write(version, packet, &mut buffer, 1 << 20).expect("encodes");
        buffer
    }

    fn publish(properties: MessageProperties) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: Bytes::from_static(b"a/b"),
            pkid: 7,
            payload: Bytes::from_static(b"payload"),
            properties,
        }
    }

    #[test]
    fn a_311_publish_reads_as_ours_and_writes_back_byte_for_byte() {
        let mut theirs = v4::Publish::new("a/b", mqttbytes4::QoS::AtLeastOnce, b"payload".to_vec());
        theirs.pkid = 7;
        theirs.retain = true;
        let Incoming::Publish(ours) = read_v4(&v4::Packet::Publish(theirs.clone())) else {
            panic!("expected PUBLISH");
        };
        assert_eq!(ours, publish(MessageProperties::default()));
        let mut expected = BytesMut::new();
        v4::Packet::Publish(theirs)
            .write(&mut expected, 1 << 20)
            .expect("encodes");
        assert_eq!(
            written(ProtocolVersion::V311, &Outgoing::Publish(ours)),
            expected
        );
    }

    #[test]
    fn mqtt5_publish_properties_go_out_and_come_back_unchanged() {
        let sent = publish(MessageProperties {
            expiry: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("replies".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
            utf8_payload: true,
        });
        let mut buffer = written(ProtocolVersion::V5, &Outgoing::Publish(sent.clone()));
        assert_eq!(buffer.len(), publish_size(&sent));
        let theirs = v5::Packet::read(&mut buffer, None).expect("a broker reads it");
        assert_eq!(read_v5(&theirs), Incoming::Publish(sent));
    }

    #[test]
    fn mqtt_311_leaves_properties_out_and_the_login_in() {
        let connect = Connect {
            client_id: "c".into(),
            keep_alive: 30,
            clean_start: false,
            login: Some(Login {
                username: "u".into(),
                password: "p".into(),
            }),
            session_expiry: Some(3600),
            max_packet_size: Some(1024),
        };
        let mut buffer = written(ProtocolVersion::V311, &Outgoing::Connect(connect));
        match v4::Packet::read(&mut buffer, 1 << 20).expect("a broker reads it") {
            v4::Packet::Connect(theirs) => {
                assert_eq!(
                    (
                        theirs.client_id.as_str(),
                        theirs.keep_alive,
                        theirs.clean_session
                    ),
                    ("c", 30, false)
                );
                let login = theirs.login.expect("a login");
                assert_eq!(
                    (login.username.as_str(), login.password.as_str()),
                    ("u", "p")
                );
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        let with_properties = publish(MessageProperties {
            content_type: Some("text/plain".into()),
            ..MessageProperties::default()
        });
        let mut buffer = written(ProtocolVersion::V311, &Outgoing::Publish(with_properties));
        assert!(matches!(
            v4::Packet::read(&mut buffer, 1 << 20),
            Ok(v4::Packet::Publish(p)) if p.topic == "a/b" && p.payload == "payload"
        ));
    }

    #[test]
    fn a_login_never_shows_its_password() {
        let login = Login {
            username: "user".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
    }

    #[test]
    fn connack_codes_are_the_numbers_on_the_wire() {
        use ConnectReturnCode as C;
        for code in [
            C::Success,
            C::UnspecifiedError,
            C::MalformedPacket,
            C::ProtocolError,
            C::ImplementationSpecificError,
            C::UnsupportedProtocolVersion,
            C::ClientIdentifierNotValid,
            C::BadUserNamePassword,
            C::NotAuthorized,
            C::ServerUnavailable,
            C::ServerBusy,
            C::Banned,
            C::BadAuthenticationMethod,
            C::TopicNameInvalid,
            C::PacketTooLarge,
            C::QuotaExceeded,
            C::PayloadFormatInvalid,
            C::RetainNotSupported,
            C::QoSNotSupported,
            C::UseAnotherServer,
            C::ServerMoved,
            C::ConnectionRateExceeded,
        ] {
            let packet = v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code,
                properties: None,
            });
            let mut buffer = BytesMut::new();
            packet.write(&mut buffer, None).expect("encodes");
            // Fixed header, remaining length, acknowledge flags, then the code.
            let on_the_wire = buffer[3];
            match read_v5(&packet) {
                Incoming::ConnAck(ours) => assert_eq!(ours.code, on_the_wire, "{code:?}"),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        for (code, number) in [
            (v4::ConnectReturnCode::Success, 0),
            (v4::ConnectReturnCode::RefusedProtocolVersion, 1),
            (v4::ConnectReturnCode::BadClientId, 2),
            (v4::ConnectReturnCode::ServiceUnavailable, 3),
            (v4::ConnectReturnCode::BadUserNamePassword, 4),
            (v4::ConnectReturnCode::NotAuthorized, 5),
        ] {
            let packet = v4::Packet::ConnAck(v4::ConnAck::new(code, true));
            let mut buffer = BytesMut::new();
            packet.write(&mut buffer, 100).expect("encodes");
            assert_eq!(buffer[3], number, "{code:?}");
            assert!(matches!(
                read_v4(&packet),
                Incoming::ConnAck(ours) if ours.code == number && ours.session_present
            ));
        }
    }

    #[test]
    fn acknowledgement_reasons_are_the_numbers_on_the_wire() {
        use PubAckReason as R;
        for reason in [
            R::NoMatchingSubscribers,
            R::UnspecifiedError,
            R::ImplementationSpecificError,
            R::NotAuthorized,
            R::TopicNameInvalid,
            R::PacketIdentifierInUse,
            R::QuotaExceeded,
            R::PayloadFormatInvalid,
        ] {
            let packet = v5::Packet::PubAck(v5::PubAck {
                pkid: 9,
                reason,
                properties: Some(v5::PubAckProperties {
                    reason_string: Some("why".into()),
                    user_properties: Vec::new(),
                }),
            });
            let mut buffer = BytesMut::new();
            packet.write(&mut buffer, None).expect("encodes");
            // Fixed header, remaining length, packet id, then the reason code.
            let expected = Ack {
                pkid: 9,
                reason: Reason {
                    code: buffer[4],
                    text: Some("why".into()),
                },
            };
            assert_eq!(read_v5(&packet), Incoming::PubAck(expected.clone()));
            let rec = v5::Packet::PubRec(v5::PubRec {
                pkid: 9,
                reason: match reason {
                    R::NoMatchingSubscribers => PubRecReason::NoMatchingSubscribers,
                    R::UnspecifiedError => PubRecReason::UnspecifiedError,
                    R::ImplementationSpecificError => PubRecReason::ImplementationSpecificError,
                    R::NotAuthorized => PubRecReason::NotAuthorized,
                    R::TopicNameInvalid => PubRecReason::TopicNameInvalid,
                    R::PacketIdentifierInUse => PubRecReason::PacketIdentifierInUse,
                    R::QuotaExceeded => PubRecReason::QuotaExceeded,
                    R::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
                    R::Success => PubRecReason::Success,
                },
                properties: Some(v5::PubRecProperties {
                    reason_string: Some("why".into()),
                    user_properties: Vec::new(),
                }),
            });
            assert_eq!(read_v5(&rec), Incoming::PubRec(expected));
        }
    }

    #[test]
    fn suback_codes_are_the_numbers_on_the_wire() {
        use SubscribeReasonCode as S;
        let codes = vec![
            S::Success(QoS5::AtMostOnce),
            S::Success(QoS5::AtLeastOnce),
            S::Success(QoS5::ExactlyOnce),
            S::Unspecified,
            S::ImplementationSpecific,
            S::NotAuthorized,
            S::TopicFilterInvalid,
            S::PkidInUse,
            S::QuotaExceeded,
            S::SharedSubscriptionsNotSupported,
            S::SubscriptionIdNotSupported,
            S::WildcardSubscriptionsNotSupported,
        ];
        let packet = v5::Packet::SubAck(v5::SubAck {
            pkid: 3,
            return_codes: codes,
            properties: None,
        });
        let mut buffer = BytesMut::new();
        packet.write(&mut buffer, None).expect("encodes");
        // Fixed header, remaining length, packet id, an empty property length, the codes.
        let on_the_wire = buffer[5..].to_vec();
        assert_eq!(
            read_v5(&packet),
            Incoming::SubAck(SubAck {
                pkid: 3,
                codes: on_the_wire,
                text: None,
            })
        );
        let v311 = v4::Packet::SubAck(v4::SubAck::new(
            4,
            vec![
                v4::SubscribeReasonCode::Success(mqttbytes4::QoS::ExactlyOnce),
                v4::SubscribeReasonCode::Failure,
            ],
        ));
        assert_eq!(
            read_v4(&v311),
            Incoming::SubAck(SubAck {
                pkid: 4,
                codes: vec![2, 0x80],
                text: None,
            })
        );
    }

    #[test]
    fn a_subscribe_and_the_acknowledgements_this_client_writes_are_what_a_broker_reads() {
        let subscribe = Outgoing::Subscribe(Subscribe {
            pkid: 5,
            filter: "t/#".into(),
            qos: QoS::ExactlyOnce,
        });
        let mut buffer = written(ProtocolVersion::V5, &subscribe);
        match v5::Packet::read(&mut buffer, None).expect("a broker reads it") {
            v5::Packet::Subscribe(theirs) => {
                assert_eq!(theirs.pkid, 5);
                assert_eq!(theirs.filters, [v5::Filter::new("t/#", QoS5::ExactlyOnce)]);
            }
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
        let mut buffer = written(ProtocolVersion::V311, &Outgoing::PubRec(11));
        assert_eq!(
            v4::Packet::read(&mut buffer, 100).expect("a broker reads it"),
            v4::Packet::PubRec(v4::PubRec::new(11))
        );
    }

    #[test]
    fn a_server_disconnect_keeps_its_code_and_words() {
        let packet = v5::Packet::Disconnect(v5::Disconnect {
            reason_code: DisconnectReasonCode::ServerShuttingDown,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some("maintenance".into()),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        });
        assert_eq!(
            read_v5(&packet),
            Incoming::Disconnect(Reason {
                code: 0x8B,
                text: Some("maintenance".into()),
            })
        );
    }

    #[test]
    fn a_packet_only_a_broker_receives_is_refused() {
        let mut buffer = BytesMut::new();
        v4::Packet::PingReq.write(&mut buffer, 10).expect("encodes");
        let error = read(ProtocolVersion::V311, &mut buffer, 10).expect_err("refused");
        assert!(error.to_string().contains("never receives"), "{error}");
    }

    #[test]
    fn half_a_packet_is_not_a_packet_yet() {
        let mut buffer = BytesMut::new();
        v4::Packet::PubAck(v4::PubAck::new(1))
            .write(&mut buffer, 100)
            .expect("encodes");
        let mut half = buffer.split_to(2);
        assert!(matches!(
            read(ProtocolVersion::V311, &mut half, 100),
            Ok(None)
        ));
        let mut v5_half = BytesMut::from(&[0x40u8][..]);
        assert!(matches!(
            read(ProtocolVersion::V5, &mut v5_half, 100),
            Ok(None)
        ));
    }
}
