//! The input policy against a scripted host: what is delivered, retried, dead-lettered,
//! answered and acknowledged, in which order, one at a time and concurrently.

use std::time::Duration;

use super::*;
use crate::host::Rejection;
use crate::scripted::{Call, Scripted, config, message};

fn failed(reason: &str) -> crate::host::Answer<Vec<u8>> {
    Err(DeliveryError::Failed(reason.into()))
}

fn payloads(delivered: &[(String, u32)]) -> Vec<&str> {
    delivered
        .iter()
        .map(|(payload, _)| payload.as_str())
        .collect()
}

#[test]
fn each_message_is_delivered_in_order_then_acknowledged() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
    ]);
    host.batch([message(3, "c", Qos::ExactlyOnce)]);
    read(&host, &config(&[])).expect("ends at shutdown");
    let calls = host.calls();
    assert_eq!(calls[0], Call::Subscribed("in".into()));
    let settled: Vec<&Call> = calls
        .iter()
        .filter(|call| matches!(call, Call::Delivered { .. } | Call::Acked(_)))
        .collect();
    let expected: Vec<Call> = vec![
        delivered("a", 1, "1"),
        Call::Acked(1),
        delivered("b", 1, "1"),
        Call::Acked(2),
        delivered("c", 1, "2"),
        Call::Acked(3),
    ];
    assert_eq!(settled, expected.iter().collect::<Vec<_>>());
}

/// A delivery of a plain message at this QoS: at QoS 1 and 2 the host is asked to
/// acknowledge it on acceptance.
fn delivered(payload: &str, attempt: u32, qos: &str) -> Call {
    Call::Delivered {
        payload: payload.into(),
        attempt,
        ack: qos != "0",
    }
}

#[test]
fn a_run_of_plain_messages_goes_to_the_host_in_one_call_and_a_refused_one_goes_on_alone() {
    let host = Scripted::default();
    let mut request = message(3, "question", Qos::AtLeastOnce);
    request.properties.response_topic = Some("replies/7".into());
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
        request,
        message(4, "c", Qos::AtLeastOnce),
        message(5, "d", Qos::AtMostOnce),
    ]);
    host.answer("b", 1, failed("500"));
    host.answer("question", 1, Ok(Some(b"answer".to_vec())));
    read(&host, &config(&[("backOffMaxRetries", "1")])).expect("ends at shutdown");
    // a and b in one call (b refused, so c never reached it); b's retry on its own; the
    // request on its own, as its answer is published before it is acknowledged; then c and
    // d in one call.
    assert_eq!(host.runs(), [2, 2]);
    assert_eq!(
        host.delivered(),
        [
            ("a".into(), 1),
            ("b".into(), 1),
            ("b".into(), 2),
            ("question".into(), 1),
            ("c".into(), 1),
            ("d".into(), 1),
        ]
    );
    assert_eq!(host.acked(), [1, 2, 3, 4]);
    assert_eq!(host.published().len(), 1);
}

#[test]
fn qos_0_messages_are_delivered_without_an_acknowledgement() {
    let host = Scripted::default();
    host.batch([message(1, "a", Qos::AtMostOnce)]);
    read(&host, &config(&[])).expect("ends at shutdown");
    assert_eq!(payloads(&host.delivered()), ["a"]);
    assert_eq!(host.acked(), Vec::<u64>::new());
}

#[test]
fn a_failed_delivery_is_retried_after_the_interval_then_acknowledged_once() {
    let host = Scripted::default();
    host.batch([message(1, "a", Qos::AtLeastOnce)]);
    host.answer("a", 1, failed("500"));
    host.answer("a", 2, failed("503"));
    let config = config(&[("backOffMaxRetries", "2"), ("backOffInterval", "250ms")]);
    read(&host, &config).expect("ends at shutdown");
    assert_eq!(
        host.delivered(),
        [("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]
    );
    let slept: Vec<Duration> = host
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::Slept(wait) => Some(wait),
            _ => None,
        })
        .collect();
    assert_eq!(slept, [Duration::from_millis(250); 2]);
    assert_eq!(host.acked(), [1]);
    assert!(host.given_up().is_empty());
}

#[test]
fn without_a_dead_letter_topic_a_message_whose_retries_are_spent_stays_unacknowledged() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
    ]);
    host.answer("a", 1, failed("500"));
    host.answer("a", 2, failed("500 again"));
    read(&host, &config(&[("backOffMaxRetries", "1")])).expect("ends at shutdown");
    assert_eq!(host.given_up(), [GivenUp::LeftUnacknowledged]);
    // The next message is not held up by it.
    assert_eq!(host.acked(), [2]);
    assert!(
        host.calls().iter().any(|call| matches!(
            call,
            Call::Logged(Level::Error, text) if text.contains("failed 2 times, last: 500 again")
        )),
        "{:?}",
        host.calls()
    );
}

#[test]
fn a_dead_lettered_message_is_acknowledged_only_after_the_dead_letter_topic_has_it() {
    let host = Scripted::default();
    let mut poison = message(1, "poison", Qos::AtMostOnce);
    poison.properties.content_type = Some("text/plain".into());
    host.batch([poison, message(2, "b", Qos::AtLeastOnce)]);
    host.answer("poison", 1, failed("400"));
    host.answer("b", 1, failed("400"));
    read(&host, &config(&[("deadLetterTopic", "dead")])).expect("ends at shutdown");
    let published = host.published();
    assert_eq!(published.len(), 2);
    let (publish, payload) = &published[0];
    assert_eq!(payload, "poison");
    assert_eq!(publish.topic, "dead");
    // QoS 1 at least, whatever the message came at; its properties go along.
    assert_eq!(publish.qos, Qos::AtLeastOnce);
    assert_eq!(
        publish.properties.content_type.as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        host.given_up(),
        [GivenUp::DeadLettered, GivenUp::DeadLettered]
    );
    let calls = host.calls();
    let published_b = calls
        .iter()
        .position(|call| matches!(call, Call::Published { payload, .. } if payload == "b"))
        .expect("b published");
    let acked_b = calls
        .iter()
        .position(|call| *call == Call::Acked(2))
        .expect("b acknowledged");
    assert!(published_b < acked_b, "{calls:?}");
}

#[test]
fn a_dead_letter_topic_that_refuses_leaves_the_message_unacknowledged() {
    let host = Scripted::default();
    host.batch([message(1, "poison", Qos::AtLeastOnce)]);
    host.answer("poison", 1, failed("400"));
    host.publish_results([Err(BrokerError::NotAuthorized("ACL".into()))]);
    read(&host, &config(&[("deadLetterTopic", "dead")])).expect("ends at shutdown");
    assert_eq!(host.given_up(), [GivenUp::LeftUnacknowledged]);
    assert!(host.acked().is_empty());
}

#[test]
fn an_mqtt5_request_is_answered_on_its_response_topic_before_it_is_acknowledged() {
    let host = Scripted::default();
    let mut request = message(1, "question", Qos::AtLeastOnce);
    request.properties.response_topic = Some("replies/7".into());
    request.properties.correlation_data = Some(vec![0xff, 0x01]);
    host.batch([request]);
    host.answer("question", 1, Ok(Some(b"answer".to_vec())));
    read(&host, &config(&[("qos", "0")])).expect("ends at shutdown");
    let published = host.published();
    let (publish, payload) = &published[0];
    assert_eq!(
        (publish.topic.as_str(), payload.as_str()),
        ("replies/7", "answer")
    );
    assert_eq!(publish.qos, Qos::AtLeastOnce);
    assert_eq!(
        publish.properties.correlation_data.as_deref(),
        Some(&[0xff, 0x01][..])
    );
    assert_eq!(host.acked(), [1]);
}

#[test]
fn a_response_that_cannot_be_published_leaves_the_request_for_the_broker() {
    let host = Scripted::default();
    let mut request = message(1, "question", Qos::AtLeastOnce);
    request.properties.response_topic = Some("replies/7".into());
    host.batch([request]);
    host.answer("question", 1, Ok(Some(b"answer".to_vec())));
    host.publish_results([Err(BrokerError::TooLarge("over the limit".into()))]);
    read(&host, &config(&[])).expect("ends at shutdown");
    assert!(host.acked().is_empty());
}

#[test]
fn shutdown_during_a_delivery_leaves_it_and_the_rest_of_the_batch_unacknowledged() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
        message(3, "c", Qos::AtLeastOnce),
    ]);
    host.answer("b", 1, Err(DeliveryError::Stopped));
    read(&host, &config(&[])).expect("ends at shutdown");
    // One run of three, of which c was given back undelivered.
    assert_eq!(host.runs(), [3]);
    assert_eq!(payloads(&host.delivered()), ["a", "b"]);
    assert_eq!(host.acked(), [1]);
}

#[test]
fn shutdown_during_the_wait_before_a_retry_stops_reading() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
    ]);
    host.answer("a", 1, failed("500"));
    host.stop_sleeping();
    read(&host, &config(&[("backOffMaxRetries", "-1")])).expect("ends at shutdown");
    assert_eq!(payloads(&host.delivered()), ["a"]);
    assert!(host.acked().is_empty());
}

#[test]
fn subscribing_is_retried_while_it_may_pass_and_a_refusal_is_returned() {
    let host = Scripted::default();
    host.subscribe_results([
        Err(BrokerError::Timeout("no SUBACK".into())),
        Err(BrokerError::Unreachable("down".into())),
    ]);
    read(&host, &config(&[])).expect("subscribed on the third try, then shutdown");
    let subscribed = host
        .calls()
        .iter()
        .filter(|call| matches!(call, Call::Subscribed(_)))
        .count();
    assert_eq!(subscribed, 3);

    let refused = BrokerError::Rejected(Rejection {
        reason_code: 0x87,
        reason: "not authorized".into(),
        retryable: false,
    });
    let host = Scripted::default();
    host.subscribe_results([Err(refused.clone())]);
    assert_eq!(read(&host, &config(&[])), Err(refused));

    let host = Scripted::default();
    host.subscribe_results([Err(BrokerError::Closed)]);
    assert_eq!(read(&host, &config(&[])), Ok(()));
}

#[test]
fn a_share_group_subscribes_to_the_shared_subscription_and_a_refusal_names_the_field() {
    let host = Scripted::default();
    let config = config(&[("sharedSubscriptionGroup", "replicas")]);
    read(&host, &config).expect("subscribed, then shutdown");
    assert!(
        host.calls()
            .contains(&Call::Subscribed("$share/replicas/in".to_string())),
        "{:?}",
        host.calls()
    );

    let refused = |reason: &str| {
        BrokerError::Rejected(Rejection {
            reason_code: 0x9E,
            reason: reason.into(),
            retryable: false,
        })
    };
    let host = Scripted::default();
    host.subscribe_results([Err(refused("shared subscriptions not supported"))]);
    assert_eq!(
        read(&host, &config),
        Err(refused(
            r#"metadata field "sharedSubscriptionGroup": the broker refused the shared subscription "$share/replicas/in": shared subscriptions not supported"#
        ))
    );
    let by_hand = crate::scripted::config(&[]);
    let by_hand = Config {
        topic: "$share/g/in".into(),
        ..by_hand
    };
    let host = Scripted::default();
    host.subscribe_results([Err(refused("no"))]);
    assert_eq!(
        read(&host, &by_hand),
        Err(refused(
            r#"metadata field "topic": the broker refused the shared subscription "$share/g/in": no"#
        ))
    );
}

#[test]
fn concurrent_answers_out_of_order_are_acknowledged_in_arrival_order() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
        message(3, "c", Qos::AtLeastOnce),
    ]);
    read(&host, &config(&[("concurrency", "3")])).expect("ends at shutdown");
    // All three were in delivery at once; the scripted host answers the newest first.
    assert_eq!(payloads(&host.delivered()), ["a", "b", "c"]);
    assert_eq!(host.acked(), [1, 2, 3]);
    let calls = host.calls();
    let first_ack = calls
        .iter()
        .position(|call| matches!(call, Call::Acked(_)))
        .expect("acknowledged");
    let last_delivery = calls
        .iter()
        .rposition(|call| matches!(call, Call::Delivered { .. }))
        .expect("delivered");
    assert!(last_delivery < first_ack, "{calls:?}");
}

#[test]
fn concurrent_deliveries_keep_at_most_the_limit_in_flight() {
    let host = Scripted::default();
    host.batch((1..=5).map(|id| message(id, &id.to_string(), Qos::AtLeastOnce)));
    read(&host, &config(&[("concurrency", "2")])).expect("ends at shutdown");
    let mut in_flight = 0usize;
    let mut most = 0;
    for call in host.calls() {
        match call {
            Call::Delivered { .. } => in_flight += 1,
            Call::Acked(_) => in_flight -= 1,
            _ => {}
        }
        most = most.max(in_flight);
    }
    assert_eq!(most, 2);
    assert_eq!(host.acked(), [1, 2, 3, 4, 5]);
}

#[test]
fn a_concurrent_retry_waits_its_interval_while_others_go_on() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
    ]);
    host.answer("a", 1, failed("500"));
    let config = config(&[
        ("concurrency", "2"),
        ("backOffMaxRetries", "1"),
        ("backOffInterval", "2s"),
    ]);
    let started = host.now();
    read(&host, &config).expect("ends at shutdown");
    assert_eq!(
        host.delivered(),
        [("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]
    );
    assert!(host.now() - started >= Duration::from_secs(2));
    // b was answered first, but waits for a, which came before it.
    assert_eq!(host.acked(), [1, 2]);
}

#[test]
fn a_concurrent_message_whose_retries_are_spent_is_dead_lettered_in_its_turn() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
    ]);
    host.answer("a", 1, failed("500"));
    read(
        &host,
        &config(&[("concurrency", "2"), ("deadLetterTopic", "dead")]),
    )
    .expect("ends at shutdown");
    assert_eq!(host.given_up(), [GivenUp::DeadLettered]);
    assert_eq!(host.published()[0].1, "a");
    assert_eq!(host.acked(), [1, 2]);
}

#[test]
fn concurrent_shutdown_leaves_what_waits_behind_an_unsettled_message_unacknowledged() {
    let host = Scripted::default();
    host.batch([
        message(1, "a", Qos::AtLeastOnce),
        message(2, "b", Qos::AtLeastOnce),
        message(3, "c", Qos::AtLeastOnce),
    ]);
    // The newest answers first: c is accepted, then b's delivery is stopped by shutdown;
    // a was never answered, so c, settled, still waits behind it.
    host.answer("b", 1, Err(DeliveryError::Stopped));
    read(&host, &config(&[("concurrency", "3")])).expect("ends at shutdown");
    assert!(host.acked().is_empty(), "{:?}", host.calls());
}
