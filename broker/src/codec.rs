//! MQTT on the wire, in the version the connection speaks. Everything above this module
//! works with one set of packets, rumqttc's MQTT 5 types, which carry everything MQTT 3.1.1
//! does and more; here they are written and read as MQTT 5 directly, or as MQTT 3.1.1
//! through rumqttc's 3.1.1 codec (properties and reason codes left out going out, plain
//! success codes filled in coming in).

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    self, ConnAck, ConnectReturnCode, Packet, PubAck, PubAckReason, PubComp, PubRec, PubRecReason,
    PubRel, Publish, SubAck, SubscribeReasonCode,
};

use crate::QoS;
use crate::error::BrokerError;

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
pub(super) fn write(
    version: ProtocolVersion,
    packet: &Packet,
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<(), BrokerError> {
    let too_large = |e: &dyn std::fmt::Display| BrokerError::TooLarge(e.to_string());
    match version {
        ProtocolVersion::V5 => packet
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
pub(super) fn read(
    version: ProtocolVersion,
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<Packet>, BrokerError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        BrokerError::Other(format!("unreadable packet from the broker: {e}"))
    };
    match version {
        ProtocolVersion::V5 => {
            match Packet::read(buffer, Some(u32::try_from(max_packet).unwrap_or(u32::MAX))) {
                Ok(packet) => Ok(Some(packet)),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(unreadable(&e)),
            }
        }
        ProtocolVersion::V311 => match v4::Packet::read(buffer, max_packet) {
            Ok(packet) => from_v4(packet).map(Some),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(unreadable(&e)),
        },
    }
}

pub(super) fn qos_to_v5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

pub(super) fn qos_from_v5(qos: QoS5) -> QoS {
    match qos {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// QoS between the two codecs' types, which are distinct.
fn qos_v4_to_v5(qos: rumqttc::mqttbytes::QoS) -> QoS5 {
    match qos {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS5::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS5::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

fn qos_v5_to_v4(qos: QoS5) -> rumqttc::mqttbytes::QoS {
    match qos {
        QoS5::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS5::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS5::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The 3.1.1 form of a packet this client sends.
fn to_v4(packet: &Packet) -> Result<v4::Packet, BrokerError> {
    Ok(match packet {
        Packet::Connect(connect, _, login) => {
            let mut v4_connect = v4::Connect::new(connect.client_id.clone());
            v4_connect.keep_alive = connect.keep_alive;
            v4_connect.clean_session = connect.clean_start;
            v4_connect.login = login
                .as_ref()
                .map(|login| v4::Login::new(login.username.clone(), login.password.clone()));
            v4::Packet::Connect(v4_connect)
        }
        Packet::Publish(publish) => v4::Packet::Publish(v4::Publish {
            dup: publish.dup,
            qos: qos_v5_to_v4(publish.qos),
            retain: publish.retain,
            topic: std::str::from_utf8(&publish.topic)
                .map_err(|_| BrokerError::Other("the topic is not UTF-8".into()))?
                .to_owned(),
            pkid: publish.pkid,
            payload: publish.payload.clone(),
        }),
        Packet::PubAck(ack) => v4::Packet::PubAck(v4::PubAck::new(ack.pkid)),
        Packet::PubRec(rec) => v4::Packet::PubRec(v4::PubRec::new(rec.pkid)),
        Packet::PubRel(rel) => v4::Packet::PubRel(v4::PubRel::new(rel.pkid)),
        Packet::PubComp(comp) => v4::Packet::PubComp(v4::PubComp::new(comp.pkid)),
        Packet::Subscribe(subscribe) => {
            let mut v4_subscribe = v4::Subscribe::new_many(
                subscribe
                    .filters
                    .iter()
                    .map(|f| v4::SubscribeFilter::new(f.path.clone(), qos_v5_to_v4(f.qos))),
            );
            v4_subscribe.pkid = subscribe.pkid;
            v4::Packet::Subscribe(v4_subscribe)
        }
        Packet::PingReq(_) => v4::Packet::PingReq,
        Packet::Disconnect(_) => v4::Packet::Disconnect,
        other => {
            return Err(BrokerError::Other(format!(
                "no MQTT 3.1.1 form for {other:?}"
            )));
        }
    })
}

/// A 3.1.1 packet from the broker in the common form.
fn from_v4(packet: v4::Packet) -> Result<Packet, BrokerError> {
    Ok(match packet {
        v4::Packet::ConnAck(connack) => Packet::ConnAck(ConnAck {
            session_present: connack.session_present,
            code: match connack.code {
                v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
                v4::ConnectReturnCode::RefusedProtocolVersion => {
                    ConnectReturnCode::RefusedProtocolVersion
                }
                v4::ConnectReturnCode::BadClientId => ConnectReturnCode::BadClientId,
                v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServiceUnavailable,
                v4::ConnectReturnCode::BadUserNamePassword => {
                    ConnectReturnCode::BadUserNamePassword
                }
                v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            },
            properties: None,
        }),
        v4::Packet::Publish(publish) => Packet::Publish(Publish {
            dup: publish.dup,
            qos: qos_v4_to_v5(publish.qos),
            retain: publish.retain,
            topic: Bytes::from(publish.topic.into_bytes()),
            pkid: publish.pkid,
            payload: publish.payload,
            properties: None,
        }),
        v4::Packet::PubAck(ack) => Packet::PubAck(PubAck {
            pkid: ack.pkid,
            reason: PubAckReason::Success,
            properties: None,
        }),
        v4::Packet::PubRec(rec) => Packet::PubRec(PubRec {
            pkid: rec.pkid,
            reason: PubRecReason::Success,
            properties: None,
        }),
        v4::Packet::PubRel(rel) => Packet::PubRel(PubRel::new(rel.pkid, None)),
        v4::Packet::PubComp(comp) => Packet::PubComp(PubComp::new(comp.pkid, None)),
        v4::Packet::SubAck(suback) => Packet::SubAck(SubAck {
            pkid: suback.pkid,
            return_codes: suback
                .return_codes
                .into_iter()
                .map(|code| match code {
                    v4::SubscribeReasonCode::Success(qos) => {
                        SubscribeReasonCode::Success(qos_v4_to_v5(qos))
                    }
                    v4::SubscribeReasonCode::Failure => SubscribeReasonCode::Failure,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::PingResp => Packet::PingResp(v5::PingResp),
        other => {
            return Err(BrokerError::Other(format!(
                "the broker sent a packet a client never receives: {other:?}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_v4(packet: v4::Packet) -> Packet {
        let mut buffer = BytesMut::new();
        packet.write(&mut buffer, 1 << 20).expect("encodes");
        read(ProtocolVersion::V311, &mut buffer, 1 << 20)
            .expect("decodes")
            .expect("a whole packet")
    }

    #[test]
    fn a_311_publish_reads_as_the_common_publish_and_writes_back_byte_for_byte() {
        let mut publish = v4::Publish::new("a/b", rumqttc::QoS::AtLeastOnce, b"payload".to_vec());
        publish.pkid = 7;
        publish.retain = true;
        let common = round_trip_v4(v4::Packet::Publish(publish.clone()));
        let mut ours = BytesMut::new();
        write(ProtocolVersion::V311, &common, &mut ours, 1 << 20).expect("encodes");
        let mut theirs = BytesMut::new();
        v4::Packet::Publish(publish)
            .write(&mut theirs, 1 << 20)
            .expect("encodes");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_311_suback_failure_reads_as_a_failure() {
        let suback = v4::SubAck::new(
            3,
            vec![
                v4::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
                v4::SubscribeReasonCode::Failure,
            ],
        );
        match round_trip_v4(v4::Packet::SubAck(suback)) {
            Packet::SubAck(suback) => assert_eq!(
                suback.return_codes,
                [
                    SubscribeReasonCode::Success(QoS5::AtLeastOnce),
                    SubscribeReasonCode::Failure
                ]
            ),
            other => panic!("expected SUBACK, got {other:?}"),
        }
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
