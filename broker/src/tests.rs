//! The connection task against the scripted broker of `fake`: resends after a reconnect,
//! new sessions, silence, stray acknowledgements, and callers that give up.

use std::time::Duration;

use rumqttc::{Packet, PubAck, PubComp, PubRec};

use super::fake::{FakeBroker, WAIT};
use super::{BrokerSettings, Connection, PublishRequest};
use crate::QoS;
use crate::error::BrokerError;

fn request(payload: &str, qos: QoS) -> PublishRequest {
    PublishRequest {
        topic: "t".into(),
        payload: payload.as_bytes().to_vec().into(),
        qos,
        retain: false,
        properties: Default::default(),
    }
}

fn spawn_publish(
    connection: &Connection,
    payload: &str,
    qos: QoS,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<(), BrokerError>> {
    let (connection, request) = (connection.clone(), request(payload, qos));
    tokio::spawn(async move { connection.publish(request, timeout).await })
}

async fn outcome(
    publishing: tokio::task::JoinHandle<Result<(), BrokerError>>,
) -> Result<(), BrokerError> {
    tokio::time::timeout(WAIT, publishing)
        .await
        .expect("the publish answered in time")
        .expect("the publish task")
}

#[tokio::test]
async fn lost_before_the_puback_with_a_surviving_session_is_resent_with_dup_and_answered() {
    let broker = FakeBroker::start().await;
    let (connection, mut first) = broker.connect(BrokerSettings::default()).await;
    let publishing = spawn_publish(&connection, "a", QoS::AtLeastOnce, WAIT);
    let sent = first.publish().await;
    assert!(!sent.dup);
    drop(first);
    let mut second = broker.accept(true).await;
    let resent = second.publish().await;
    assert_eq!(
        (resent.pkid, resent.dup, &resent.payload[..]),
        (sent.pkid, true, &b"a"[..])
    );
    second.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
    assert_eq!(outcome(publishing).await, Ok(()));
}

#[tokio::test]
async fn lost_before_the_puback_with_a_new_session_fails_as_unconfirmed_and_is_not_resent() {
    let broker = FakeBroker::start().await;
    let (connection, mut first) = broker.connect(BrokerSettings::default()).await;
    let publishing = spawn_publish(&connection, "a", QoS::AtLeastOnce, WAIT);
    first.publish().await;
    drop(first);
    let mut second = broker.accept(false).await;
    match outcome(publishing).await {
        Err(BrokerError::Unconfirmed(text)) => assert!(text.contains("new session"), "{text}"),
        other => panic!("expected unconfirmed, got {other:?}"),
    }
    // The next packet on the new connection is the next request, not a resend.
    let next = spawn_publish(&connection, "b", QoS::AtLeastOnce, WAIT);
    let sent = second.publish().await;
    assert_eq!((&sent.payload[..], sent.dup), (&b"b"[..], false));
    second.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
    assert_eq!(outcome(next).await, Ok(()));
}

#[tokio::test]
async fn an_acknowledgement_for_an_id_nobody_owns_answers_nobody() {
    let broker = FakeBroker::start().await;
    let (connection, mut link) = broker.connect(BrokerSettings::default()).await;
    let publishing = connection.publish(request("a", QoS::AtLeastOnce), WAIT);
    tokio::pin!(publishing);
    let sent = tokio::select! {
        answered = &mut publishing => panic!("answered before it was written: {answered:?}"),
        sent = link.publish() => sent,
    };
    link.write(Packet::PubAck(PubAck::new(sent.pkid.wrapping_add(1))))
        .await;
    link.write(Packet::PubComp(PubComp::new(sent.pkid))).await;
    // A message after the stray acknowledgements: once it is in, they were handled.
    let mut barrier = rumqttc::Publish::new("barrier", rumqttc::QoS::AtMostOnce, b"".to_vec());
    barrier.pkid = 0;
    link.write(Packet::Publish(barrier)).await;
    tokio::select! {
        biased;
        answered = &mut publishing => panic!("answered by another id's acknowledgement: {answered:?}"),
        messages = connection.next_messages(1, WAIT) => {
            assert_eq!(messages.expect("the barrier").len(), 1);
        }
    }
    link.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
    assert_eq!(
        tokio::time::timeout(WAIT, publishing)
            .await
            .expect("answered"),
        Ok(())
    );
}

#[tokio::test]
async fn qos2_completes_on_pubcomp_after_pubrel() {
    let broker = FakeBroker::start().await;
    let (connection, mut link) = broker.connect(BrokerSettings::default()).await;
    let publishing = connection.publish(request("a", QoS::ExactlyOnce), WAIT);
    tokio::pin!(publishing);
    let sent = tokio::select! {
        answered = &mut publishing => panic!("answered before it was written: {answered:?}"),
        sent = link.publish() => sent,
    };
    link.write(Packet::PubRec(PubRec::new(sent.pkid))).await;
    let released = tokio::select! {
        answered = &mut publishing => panic!("answered on PUBREC: {answered:?}"),
        packet = link.read() => packet,
    };
    match released {
        Packet::PubRel(rel) => assert_eq!(rel.pkid, sent.pkid),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // The PUBREC was handled (PUBREL came back); the publish must still be waiting.
    tokio::select! {
        biased;
        answered = &mut publishing => panic!("answered on PUBREC: {answered:?}"),
        () = tokio::task::yield_now() => {}
    }
    link.write(Packet::PubComp(PubComp::new(sent.pkid))).await;
    assert_eq!(
        tokio::time::timeout(WAIT, publishing)
            .await
            .expect("answered"),
        Ok(())
    );
}

#[tokio::test]
async fn a_caller_that_gave_up_before_its_write_is_never_written() {
    let broker = FakeBroker::start().await;
    let settings = BrokerSettings {
        max_in_flight: 1,
        ..BrokerSettings::default()
    };
    let (connection, mut link) = broker.connect(settings).await;
    let first = spawn_publish(&connection, "a", QoS::AtLeastOnce, WAIT);
    let sent = link.publish().await;
    // The window is full: this one waits for room, and its caller gives up first.
    let waiting = spawn_publish(
        &connection,
        "b",
        QoS::AtLeastOnce,
        Duration::from_millis(200),
    );
    match outcome(waiting).await {
        Err(BrokerError::Timeout(text)) => assert!(text.contains("not sent"), "{text}"),
        other => panic!("expected a timeout saying not sent, got {other:?}"),
    }
    link.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
    assert_eq!(outcome(first).await, Ok(()));
    let third = spawn_publish(&connection, "c", QoS::AtLeastOnce, WAIT);
    let next = link.publish().await;
    assert_eq!(
        &next.payload[..],
        b"c",
        "b was abandoned and must never be written"
    );
    link.write(Packet::PubAck(PubAck::new(next.pkid))).await;
    assert_eq!(outcome(third).await, Ok(()));
}

#[tokio::test]
async fn a_broker_that_goes_silent_is_dropped_and_reconnected() {
    let broker = FakeBroker::start().await;
    let settings = BrokerSettings {
        response_timeout: Duration::from_millis(300),
        ..BrokerSettings::default()
    };
    let (connection, mut silent) = broker.connect(settings).await;
    let publishing = spawn_publish(&connection, "a", QoS::AtLeastOnce, WAIT);
    let sent = silent.publish().await;
    // No answer, and the socket stays open: the client must give up on it by itself.
    let mut second = broker.accept(true).await;
    let resent = second.publish().await;
    assert_eq!((resent.pkid, resent.dup), (sent.pkid, true));
    second.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
    assert_eq!(outcome(publishing).await, Ok(()));
    let status = connection.status();
    assert!(status.connected, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("no answer from the broker within 300 ms")),
        "{status:?}"
    );
    drop(silent);
}

/// MQTT 5 against a scripted broker: what mosquitto 2.0 never sends (a DISCONNECT with a
/// reason, a PUBACK with a reason string), written with rumqttc's MQTT 5 codec.
/// A failover list: `host` first, then each server in order, on every attempt.
mod failover {
    use rumqttc::ConnectReturnCode;

    use super::*;
    use crate::Server;

    fn server(broker: &FakeBroker) -> Server {
        Server {
            host: "127.0.0.1".into(),
            port: broker.port,
            path: String::new(),
        }
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        FakeBroker::start().await.port
    }

    #[tokio::test]
    async fn a_broker_that_refuses_for_now_hands_the_connection_to_the_next_every_time() {
        let (first, second) = (FakeBroker::start().await, FakeBroker::start().await);
        let mut options = first.options();
        options.failover = vec![server(&second)];
        let connecting =
            tokio::spawn(
                async move { Connection::connect(options, &BrokerSettings::default()).await },
            );
        first.refuse(ConnectReturnCode::ServiceUnavailable).await;
        let accepted = second.accept(false).await;
        let connection = tokio::time::timeout(WAIT, connecting)
            .await
            .expect("connected in time")
            .expect("the connect task")
            .expect("connected to the second broker");
        assert!(connection.status().connected);
        // Lost: the next round starts at the first broker again, then moves on.
        drop(accepted);
        first.refuse(ConnectReturnCode::ServiceUnavailable).await;
        let mut again = second.accept(true).await;
        // Until it reads the CONNACK, the connection refuses publishes at once.
        tokio::time::timeout(WAIT, async {
            while !connection.status().connected {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("reconnected in time");
        let publishing = spawn_publish(&connection, "a", QoS::AtLeastOnce, WAIT);
        let sent = again.publish().await;
        again.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
        assert_eq!(outcome(publishing).await, Ok(()));
    }

    #[tokio::test]
    async fn when_none_answers_the_error_says_what_each_said() {
        let mut options = FakeBroker::start().await.options();
        let (first, second) = (closed_port().await, closed_port().await);
        options.port = first;
        options.failover = vec![Server {
            host: "127.0.0.1".into(),
            port: second,
            path: String::new(),
        }];
        match Connection::connect(options, &BrokerSettings::default()).await {
            Err(BrokerError::Unreachable(text)) => {
                assert!(
                    text.starts_with("none of the 2 brokers accepted the connection: "),
                    "{text}"
                );
                for port in [first, second] {
                    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
                }
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refusal_that_retrying_will_not_change_is_the_answer() {
        let first = FakeBroker::start().await;
        let mut options = first.options();
        options.failover = vec![Server {
            host: "127.0.0.1".into(),
            port: closed_port().await,
            path: String::new(),
        }];
        let connecting =
            tokio::spawn(
                async move { Connection::connect(options, &BrokerSettings::default()).await },
            );
        first.refuse(ConnectReturnCode::NotAuthorized).await;
        let refused = tokio::time::timeout(WAIT, connecting)
            .await
            .expect("answered in time")
            .expect("the connect task");
        assert!(
            matches!(refused, Err(BrokerError::NotAuthorized(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn every_server_of_the_list_is_checked_before_connecting() {
        let mut options = FakeBroker::start().await.options();
        options.failover = vec![Server {
            host: String::new(),
            port: 1883,
            path: String::new(),
        }];
        match Connection::connect(options, &BrokerSettings::default()).await {
            Err(BrokerError::InvalidOption { field, reason }) => {
                assert_eq!(
                    (field, reason.as_str()),
                    (crate::Field::Host, "failover server 1: is empty")
                );
            }
            other => panic!("expected an invalid option, got {other:?}"),
        }
    }
}

mod mqtt5 {
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
        DisconnectReasonCode, Packet, PubAck, PubAckProperties, PubAckReason,
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::super::{Connection, ProtocolVersion};
    use super::*;

    struct Scripted {
        stream: tokio::net::TcpStream,
        buffer: BytesMut,
    }

    impl Scripted {
        async fn read(&mut self) -> Packet {
            loop {
                match Packet::read(&mut self.buffer, None) {
                    Ok(packet) => return packet,
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("the client sent garbage: {e}"),
                }
                let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buffer))
                    .await
                    .expect("in time")
                    .expect("read");
                assert!(read > 0, "the client closed the connection");
            }
        }

        async fn write(&mut self, packet: Packet) {
            let mut out = BytesMut::new();
            packet.write(&mut out, None).expect("encodes");
            self.stream.write_all(&out).await.expect("write");
        }
    }

    async fn connected() -> (Connection, Scripted) {
        connected_saying(None).await
    }

    /// Connected to a broker whose CONNACK says `shared_subscription_available`.
    async fn connected_saying(shared_subscription_available: Option<u8>) -> (Connection, Scripted) {
        let broker = FakeBroker::start().await;
        let mut options = broker.options();
        options.protocol = ProtocolVersion::V5;
        let connecting =
            tokio::spawn(
                async move { Connection::connect(options, &BrokerSettings::default()).await },
            );
        let (stream, _) = tokio::time::timeout(WAIT, broker.listener.accept())
            .await
            .expect("connected in time")
            .expect("accept");
        let mut scripted = Scripted {
            stream,
            buffer: BytesMut::new(),
        };
        assert!(matches!(scripted.read().await, Packet::Connect(..)));
        scripted
            .write(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
                properties: Some(ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: Some(10),
                    max_qos: None,
                    retain_available: None,
                    max_packet_size: None,
                    assigned_client_identifier: None,
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: None,
                    subscription_identifiers_available: None,
                    shared_subscription_available,
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                }),
            }))
            .await;
        let connection = connecting.await.expect("task").expect("connected");
        (connection, scripted)
    }

    #[tokio::test]
    async fn a_puback_reason_string_goes_into_the_error() {
        let (connection, mut broker) = connected().await;
        let publishing = spawn_publish(&connection, "a", QoS::AtLeastOnce, WAIT);
        let Packet::Publish(publish) = broker.read().await else {
            panic!("expected PUBLISH");
        };
        broker
            .write(Packet::PubAck(PubAck {
                pkid: publish.pkid,
                reason: PubAckReason::QuotaExceeded,
                properties: Some(PubAckProperties {
                    reason_string: Some("over the daily quota".into()),
                    user_properties: Vec::new(),
                }),
            }))
            .await;
        match outcome(publishing).await {
            Err(BrokerError::Rejected(rejection)) => {
                assert_eq!(rejection.code, 0x97);
                assert!(rejection.retryable);
                assert_eq!(rejection.reason, "quota exceeded: over the daily quota");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        let next = spawn_publish(&connection, "b", QoS::AtLeastOnce, WAIT);
        let Packet::Publish(publish) = broker.read().await else {
            panic!("expected PUBLISH");
        };
        broker
            .write(Packet::PubAck(PubAck {
                pkid: publish.pkid,
                reason: PubAckReason::NoMatchingSubscribers,
                properties: None,
            }))
            .await;
        assert_eq!(
            outcome(next).await,
            Ok(()),
            "no matching subscribers: the broker has it"
        );
    }

    #[tokio::test]
    async fn a_broker_without_shared_subscriptions_is_not_asked_for_one() {
        let (connection, mut broker) = connected_saying(Some(0)).await;
        let refused = connection
            .subscribe("$share/g/a".into(), QoS::AtLeastOnce, WAIT)
            .await;
        match refused {
            Err(BrokerError::Rejected(rejection)) => {
                assert_eq!((rejection.code, rejection.retryable), (0x9E, false));
                assert_eq!(
                    rejection.reason,
                    "shared subscriptions not supported: the broker's CONNACK says Shared Subscription Available = 0"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // A plain subscription still goes to the broker; the refused one never did.
        let subscribing = tokio::spawn({
            let connection = connection.clone();
            async move {
                connection
                    .subscribe("a".into(), QoS::AtLeastOnce, WAIT)
                    .await
            }
        });
        match broker.read().await {
            Packet::Subscribe(subscribe) => assert_eq!(subscribe.filters[0].path, "a"),
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
        drop(subscribing);
    }

    #[tokio::test]
    async fn a_server_disconnect_is_reported_with_its_reason() {
        let (connection, mut broker) = connected().await;
        broker
            .write(Packet::Disconnect(Disconnect {
                reason_code: DisconnectReasonCode::SessionTakenOver,
                properties: Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some("another client took the ID".into()),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            }))
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let error = loop {
            if let Some(error) = connection.status().last_error {
                break error;
            }
            assert!(tokio::time::Instant::now() < deadline, "never lost");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            error.contains("reason code 0x8e, session taken over: another client took the ID"),
            "{error}"
        );
    }
}
